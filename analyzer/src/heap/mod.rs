//! The object graph every runtime's heap is read into: a compact object table, edges in
//! compressed rows, the dominator tree for retained sizes and the breadth-first tree that names
//! objects by their shortest path from a root. CPython builds it by walking a core; the JVM by
//! reading an HPROF dump.

pub mod graph;
pub mod rank;
pub mod table;

use serde::Serialize;

/// Per-type totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeCount {
    pub name: String,
    pub count: u64,
    pub bytes: u64,
}
