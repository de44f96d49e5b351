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

/// A container as a census lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSummary {
    pub path: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub items: u64,
    pub retained_bytes: u64,
}

/// One heap's census as `analyze` prints it, whatever the runtime: `headline`, the `top` largest
/// types (the column named `type_word`), the largest containers by retained size (`container_word`:
/// what the runtime calls them), then the notes.
pub fn write_census(
    out: &mut dyn std::io::Write,
    top: usize,
    headline: &str,
    (type_word, types): (&str, &[TypeCount]),
    (container_word, containers): (&str, &[ContainerSummary]),
    notes: &[String],
) -> std::io::Result<()> {
    use crate::util::human_bytes;
    writeln!(out, "{headline}")?;
    writeln!(out, "{:>10}  {:>10}  {type_word}", "objects", "bytes")?;
    for t in types.iter().take(top) {
        writeln!(
            out,
            "{:>10}  {:>10}  {}",
            t.count,
            human_bytes(t.bytes),
            t.name
        )?;
    }
    writeln!(
        out,
        "{:>10}  {:>10}  largest {container_word} (retained)",
        "items", "retained"
    )?;
    for k in containers.iter().take(top.min(10)) {
        writeln!(
            out,
            "{:>10}  {:>10}  {} ({})",
            k.items,
            human_bytes(k.retained_bytes),
            k.path,
            k.type_name
        )?;
    }
    for note in notes {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}
