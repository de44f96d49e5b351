//! Diffing two heaps of one process: containers matched by address, ranked by retained growth;
//! a verdict that does not cry wolf (bounded caches, churn), and native growth kept apart.

use super::PyHeap;
use crate::findings::{NativeGrowth, Runtime, Suspect, SuspectKind, TypeGrowth, Verdict};
use crate::heap::rank::{
    accumulates, outermost, type_growth, type_suspect, LEAK_MIN_BYTES, MAX_SUSPECTS, MAX_TYPES,
};
use crate::util::human_delta;

/// Native growth not explained by Python objects, above which it is a suspect of its own.
const NATIVE_MIN_BYTES: u64 = 8 << 20;

/// What `diff` reports for two CPython heaps.
#[derive(Debug, Clone, PartialEq)]
pub struct PyComparison {
    pub runtime: Runtime,
    pub verdict: Verdict,
    pub summary: String,
    pub suspects: Vec<Suspect>,
    pub types: Vec<TypeGrowth>,
    pub notes: Vec<String>,
}

pub fn compare(before: &PyHeap, after: &PyHeap, native: &NativeGrowth) -> PyComparison {
    let mut notes = snapshot_notes(before, after);
    let (mut suspects, settled) = outermost(container_suspects(before, after), MAX_SUSPECTS);
    let types = type_growth(before.types(), after.types(), MAX_TYPES);
    let growth = Growth::measure(before, after, native);
    let top_container_growth = suspects.first().map(|s| s.retained_growth()).unwrap_or(0);
    let native_suspect = growth.native_is_suspect(top_container_growth);
    if native_suspect {
        suspects.insert(0, growth.native_suspect());
        suspects.truncate(MAX_SUSPECTS);
    }
    let (verdict, summary) = judge(
        &mut suspects,
        &settled,
        &types,
        &growth,
        native_suspect,
        &mut notes,
    );
    PyComparison {
        runtime: Runtime {
            kind: "cpython".into(),
            version: Some(after.version.clone()),
        },
        verdict,
        summary,
        suspects,
        types,
        notes,
    }
}

/// The notes of both heaps, and a warning when they are of two CPython versions.
fn snapshot_notes(before: &PyHeap, after: &PyHeap) -> Vec<String> {
    let mut notes = Vec::new();
    if before.version != after.version {
        notes.push(format!(
            "the snapshots report different CPython versions ({} and {}): are they of one process?",
            before.version, after.version
        ));
    }
    for n in before.notes.iter().map(|n| format!("before: {n}")) {
        notes.push(n);
    }
    for n in after.notes.iter().map(|n| format!("after: {n}")) {
        notes.push(n);
    }
    notes
}

/// Containers that gained items, matched by address and type, largest retained growth first; the
/// bool says no module reaches it.
fn container_suspects(before: &PyHeap, after: &PyHeap) -> Vec<(Suspect, bool)> {
    // One that no module reaches is matched by address alone, which free lists reuse (a list being
    // built by a running frame in B lands where a small list was in A): shown, but not called a
    // leak on this evidence.
    let mut suspects: Vec<(Suspect, bool)> = Vec::new();
    for (addr, c) in after.containers() {
        let tname = after.type_name(c.type_name);
        let prev = before
            .containers()
            .get(addr)
            .filter(|p| before.type_name(p.type_name) == tname);
        if !c.trusted || prev.is_some_and(|p| !p.trusted) {
            continue;
        }
        let (items_before, retained_before) = prev.map(|p| (p.items, p.retained)).unwrap_or((0, 0));
        if c.items <= items_before || c.retained <= retained_before {
            continue;
        }
        let (path, referrers) = match c.named.as_deref().or(prev.and_then(|p| p.named.as_deref())) {
            Some(n) => (n.path.clone(), n.referrers.clone()),
            None => (format!("<{tname} at {addr:#x}>"), Vec::new()),
        };
        let anonymous = path.starts_with('<');
        suspects.push((
            Suspect {
                kind: SuspectKind::Container,
                path,
                type_name: tname.to_string(),
                count_before: items_before,
                count_after: c.items,
                retained_bytes_before: retained_before,
                retained_bytes_after: c.retained,
                referrers,
                address: Some(*addr),
                allocation_sites: Vec::new(),
            },
            anonymous,
        ));
    }
    suspects.sort_by(|(a, _), (b, _)| {
        b.retained_growth()
            .cmp(&a.retained_growth())
            .then_with(|| b.count_growth().cmp(&a.count_growth()))
            .then_with(|| a.path.cmp(&b.path))
    });
    suspects
}

/// How much the Python objects grew, and the native memory they do not explain.
struct Growth {
    py: i64,
    native_before: u64,
    unexplained: i64,
    /// An allocation tracer ran between the snapshots: native growth is mostly its own.
    traced: bool,
}

impl Growth {
    fn measure(before: &PyHeap, after: &PyHeap, native: &NativeGrowth) -> Growth {
        let py = after.total_bytes() as i64 - before.total_bytes() as i64;
        let native_before = native.heap_before + native.anonymous_before;
        let native_after = native.heap_after + native.anonymous_after;
        // The caller's figure counts virtual sizes; thread stacks and (where recorded) RSS bound it.
        let mut native_growth = native_after as i64 - native_before as i64;
        native_growth = native_growth.min(after.native_bytes as i64 - before.native_bytes as i64);
        if let (Some(a), Some(b)) = (before.rss, after.rss) {
            native_growth = native_growth.min(b as i64 - a as i64);
        }
        // A tracer leakhunt started after A (tracemalloc) grew with the heap: not the process's.
        // What it reports is its hash tables; its many small mallocs cost more (about 3× here,
        // docs/python.md), so the rest of native growth is not judged at all (`traced`).
        native_growth -= native.tracer_after.min(i64::MAX as u64) as i64;
        Growth {
            py,
            native_before,
            unexplained: native_growth - py.max(0),
            traced: native.tracer_after > 0,
        }
    }

    /// Native growth big enough, and bigger than any container's, to be a suspect of its own.
    fn native_is_suspect(&self, top_container_growth: i64) -> bool {
        !self.traced
            && self.unexplained >= NATIVE_MIN_BYTES as i64
            && self.unexplained >= 2 * top_container_growth.max(0)
    }

    fn native_suspect(&self) -> Suspect {
        Suspect {
            kind: SuspectKind::Native,
            path: "native heap (malloc outside Python objects)".into(),
            type_name: "native".into(),
            count_before: 0,
            count_after: 0,
            retained_bytes_before: self.native_before,
            retained_bytes_after: self
                .native_before
                .saturating_add(self.unexplained.max(0) as u64),
            referrers: vec![
                "[heap] and anonymous mappings".into(),
                format!("Python objects grew by {}", human_delta(self.py)),
            ],
            address: None,
            allocation_sites: Vec::new(),
        }
    }
}

/// The verdict and its one-line summary; drops the small suspects of a heap that did not leak,
/// adds the growing type when no container explains the growth, and says why an unreached
/// container is not called a leak.
fn judge(
    suspects: &mut Vec<Suspect>,
    settled: &[bool],
    types: &[TypeGrowth],
    growth: &Growth,
    native_suspect: bool,
    notes: &mut Vec<String>,
) -> (Verdict, String) {
    let py_growth = growth.py;
    let leaking = |s: &Suspect| accumulates(s, py_growth);
    let top_type = types.first().filter(|t| t.bytes_growth() > 0);
    let ranked = || {
        suspects
            .iter()
            .skip(usize::from(native_suspect))
            .zip(settled)
    };
    let leak = ranked()
        .find(|(s, settled)| **settled && leaking(s))
        .map(|(s, _)| s);
    let unreached = ranked()
        .find(|(s, settled)| !**settled && leaking(s))
        .map(|(s, _)| s.clone());
    if let Some(s) = leak.filter(|_| !native_suspect) {
        (
            Verdict::Leak,
            format!(
                "{} ({}) grew from {} to {} items, retaining {} more",
                s.path,
                s.type_name,
                s.count_before,
                s.count_after,
                human_delta(s.retained_growth())
            ),
        )
    } else if native_suspect {
        (
            Verdict::Leak,
            format!(
                "native memory grew by {} outside Python objects (Python objects: {})",
                human_delta(growth.unexplained),
                human_delta(py_growth)
            ),
        )
    } else if let Some(s) = unreached {
        notes.push(format!(
            "{} is reached from no module, so the two snapshots cannot tell whether it is one object \
             that grew (a long-lived local, a C extension's) or a new one at a reused address (work \
             in progress in a running frame)",
            s.path
        ));
        (
            Verdict::Inconclusive,
            format!(
                "{} ({}) grew from {} to {} items, retaining {} more, but no module reaches it",
                s.path,
                s.type_name,
                s.count_before,
                s.count_after,
                human_delta(s.retained_growth())
            ),
        )
    } else if py_growth <= LEAK_MIN_BYTES * 8 {
        suspects.retain(|s| s.retained_growth() >= LEAK_MIN_BYTES);
        (
            Verdict::NoLeak,
            format!(
                "Python objects changed by {} and no container accumulated items",
                human_delta(py_growth)
            ),
        )
    } else {
        if let Some(t) = top_type {
            suspects.push(type_suspect(t));
        }
        (
            Verdict::Inconclusive,
            format!(
                "Python objects grew by {} but no single container accumulates them{}",
                human_delta(py_growth),
                top_type
                    .map(|t| format!(" (most growth: {} +{})", t.name, t.count_growth()))
                    .unwrap_or_default()
            ),
        )
    }
}
