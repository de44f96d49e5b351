//! The findings contract (docs/design.md): what `diff` prints as JSON and what the operator stores in
//! `LeakReport.status`. Names, counts and sizes only — never the contents of strings from the process.

use serde::{Deserialize, Serialize};

/// The answer to "is something leaking?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Leak,
    NoLeak,
    #[default]
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Leak => "leak",
            Verdict::NoLeak => "no-leak",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// Which runtime the heap was understood as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    /// `cpython` or `native` (generic census only).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Interval {
    /// Seconds between the two snapshots, where both carry a time.
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Rss {
    pub before: u64,
    pub after: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuspectKind {
    /// A container object (list, dict, set, ...) that accumulates items.
    Container,
    /// A type whose instances multiply, where no single holder was found.
    Type,
    /// Memory outside the runtime's objects (malloc from native code, anonymous mappings).
    Native,
}

/// An accumulation point, ranked by retained growth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Suspect {
    pub kind: SuspectKind,
    /// Best label: `module.attr`, `module.Class.attr`, `lru_cache of module.func`, a symbol, `[heap]`.
    pub path: String,
    /// Type of the accumulating object (`list`, `dict`, a symbol for native census).
    #[serde(rename = "type")]
    pub type_name: String,
    pub count_before: u64,
    pub count_after: u64,
    pub retained_bytes_before: u64,
    pub retained_bytes_after: u64,
    /// The chain from a root to the object, outermost first.
    #[serde(default)]
    pub referrers: Vec<String>,
    /// Where the object is in the process (CPython objects do not move): what asks the live
    /// process about it later finds it by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<u64>,
    /// Where its growth was allocated (CPython 3.14+ with allocation sites on), largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocation_sites: Vec<AllocationSite>,
}

/// A group of a container's new items and the place that allocated them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationSite {
    /// Most recent frame first: `app.py:12 in Profiler.end`, then its callers.
    pub frames: Vec<String>,
    pub count: u64,
    pub bytes: u64,
    /// Of the container's growth between the snapshots, in percent.
    pub percent_of_growth: u32,
}

impl Suspect {
    pub fn count_growth(&self) -> i64 {
        self.count_after as i64 - self.count_before as i64
    }

    pub fn retained_growth(&self) -> i64 {
        self.retained_bytes_after as i64 - self.retained_bytes_before as i64
    }
}

impl std::fmt::Display for AllocationSite {
    /// `items allocated at app.py:12 in Profiler.end (96 % of the growth), called from …`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.frames.first().map(String::as_str).unwrap_or("?");
        write!(
            f,
            "items allocated at {at} ({} % of the growth",
            self.percent_of_growth
        )?;
        if let Some(caller) = self.frames.get(1) {
            write!(f, "), called from {caller}")
        } else {
            write!(f, ")")
        }
    }
}

/// Per-type (or per-symbol) counts and bytes in both snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeGrowth {
    pub name: String,
    pub count_before: u64,
    pub count_after: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl TypeGrowth {
    pub fn count_growth(&self) -> i64 {
        self.count_after as i64 - self.count_before as i64
    }

    pub fn bytes_growth(&self) -> i64 {
        self.bytes_after as i64 - self.bytes_before as i64
    }
}

/// Native memory: the brk heap and anonymous mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NativeGrowth {
    pub heap_before: u64,
    pub heap_after: u64,
    pub anonymous_before: u64,
    pub anonymous_after: u64,
    /// Native bytes at B that an allocation tracer leakhunt started after A uses (tracemalloc,
    /// for allocation sites): growth of the tracer's, not the process's own.
    #[serde(default)]
    pub tracer_after: u64,
}

/// Which process the snapshots are of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRef {
    pub pid: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

/// What `diff` concludes about two snapshots of one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Findings {
    pub verdict: Verdict,
    /// One line a person can read: the top suspect and its growth, or why there is no verdict.
    pub summary: String,
    pub runtime: Runtime,
    pub process: ProcessRef,
    pub interval: Interval,
    pub rss: Rss,
    pub suspects: Vec<Suspect>,
    pub types: Vec<TypeGrowth>,
    pub native: NativeGrowth,
    /// Caveats: missing pages, unsupported runtime versions, corrupted objects skipped.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The runtime's own heap at A and B (the reachable Java objects of two heap dumps), where the
    /// snapshots are dumps and hold no RSS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_heap: Option<Rss>,
    /// What the memory timeline around the pair says, where there was one (the hunt and the
    /// analyzer Job have it; a plain `diff` of two files does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<crate::timeline::TimelineEvidence>,
}
