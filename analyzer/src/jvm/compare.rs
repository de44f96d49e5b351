//! Diffing two dumps of one JVM: collections matched by their path from a GC root (objects move
//! at every collection), ranked by retained growth, with the verdict's discipline of the CPython
//! diff: a full bounded cache or churn is not a leak.

use super::JvmHeap;
use crate::findings::{Runtime, Suspect, SuspectKind, TypeGrowth, Verdict};
use crate::heap::rank::{
    accumulates, outermost, type_growth, type_suspect, LEAK_MIN_BYTES, MAX_SUSPECTS, MAX_TYPES,
};
use crate::util::human_delta;

/// Heap growth below this, or below [`STEADY_SHARE`] of the heap, with no collection
/// accumulating, is a steady heap: the JVM's own caches (JIT, reflection, the attach listener's
/// first commands) add a few hundred KiB between two dumps of an idle process.
const STEADY_BYTES: i64 = 256 << 10;
/// ... as a fraction of the first dump's heap (1/50).
const STEADY_SHARE: i64 = 50;

/// What `diff` reports for two JVM heaps.
#[derive(Debug, Clone, PartialEq)]
pub struct JvmComparison {
    pub runtime: Runtime,
    pub verdict: Verdict,
    pub summary: String,
    pub suspects: Vec<Suspect>,
    pub types: Vec<TypeGrowth>,
    pub notes: Vec<String>,
    /// Seconds between the two dumps, from their headers.
    pub seconds: f64,
}

pub fn compare(before: &JvmHeap, after: &JvmHeap) -> JvmComparison {
    let mut notes: Vec<String> = Vec::new();
    if before.version != after.version {
        notes.push(format!(
            "the dumps report different Java versions ({} and {}): are they of one JVM?",
            before.version.as_deref().unwrap_or("?"),
            after.version.as_deref().unwrap_or("?")
        ));
    }
    notes.extend(before.notes().iter().map(|n| format!("before: {n}")));
    notes.extend(after.notes().iter().map(|n| format!("after: {n}")));
    let seconds = after.timestamp_ms.saturating_sub(before.timestamp_ms) as f64 / 1e3;
    if after.timestamp_ms < before.timestamp_ms {
        notes.push(
            "the second dump is older than the first: diff them in the order they were taken"
                .into(),
        );
    }
    let (mut suspects, settled) = outermost(grown(before, after), MAX_SUSPECTS);
    let types = type_growth(before.types(), after.types(), MAX_TYPES);
    let heap_growth = after.total_bytes() as i64 - before.total_bytes() as i64;
    let steady = STEADY_BYTES.max(before.total_bytes() as i64 / STEADY_SHARE);
    let (verdict, summary) = judge(
        &mut suspects,
        &settled,
        &types,
        heap_growth,
        steady,
        &mut notes,
    );
    JvmComparison {
        runtime: Runtime {
            kind: "hotspot".into(),
            version: after.version.clone(),
        },
        verdict,
        summary,
        suspects,
        types,
        notes,
        seconds,
    }
}

/// Collections on one path in both dumps (or new at B) that gained items and retained bytes,
/// largest retained growth first; the bool says no class reaches it.
fn grown(before: &JvmHeap, after: &JvmHeap) -> Vec<(Suspect, bool)> {
    let mut out: Vec<(Suspect, bool)> = after
        .containers()
        .iter()
        .filter_map(|(path, c)| {
            let prev = before
                .containers()
                .get(path)
                .filter(|p| p.type_name == c.type_name);
            let (items, retained) = prev.map_or((0, 0), |p| (p.items, p.retained));
            (c.items > items && c.retained > retained).then(|| {
                (
                    Suspect {
                        kind: SuspectKind::Container,
                        path: path.clone(),
                        type_name: c.type_name.clone(),
                        count_before: items,
                        count_after: c.items,
                        retained_bytes_before: retained,
                        retained_bytes_after: c.retained,
                        referrers: c.referrers.clone(),
                        address: None,
                        allocation_sites: Vec::new(),
                    },
                    !c.from_class,
                )
            })
        })
        .collect();
    out.sort_by(|(a, _), (b, _)| {
        b.retained_growth()
            .cmp(&a.retained_growth())
            .then_with(|| b.count_growth().cmp(&a.count_growth()))
            .then_with(|| a.path.cmp(&b.path))
    });
    out
}

fn judge(
    suspects: &mut Vec<Suspect>,
    settled: &[bool],
    types: &[TypeGrowth],
    heap_growth: i64,
    steady: i64,
    notes: &mut Vec<String>,
) -> (Verdict, String) {
    let leaking = |s: &Suspect| accumulates(s, heap_growth);
    let grew = |s: &Suspect| {
        format!(
            "{} ({}) grew from {} to {} entries, retaining {} more",
            s.path,
            s.type_name,
            s.count_before,
            s.count_after,
            human_delta(s.retained_growth())
        )
    };
    let mut ranked = suspects.iter().zip(settled);
    if let Some((s, _)) = ranked.clone().find(|(s, settled)| **settled && leaking(s)) {
        return (Verdict::Leak, grew(s));
    }
    if let Some((s, _)) = ranked.find(|(s, settled)| !**settled && leaking(s)) {
        notes.push(format!(
            "{} is held only from a thread's stack or a JNI reference, not from a class: a \
             collection a running method is still filling, or a leak in a long-lived thread; \
             the two dumps cannot tell which",
            s.path
        ));
        return (
            Verdict::Inconclusive,
            format!("{}, but no class reaches it", grew(s)),
        );
    }
    if heap_growth <= steady {
        suspects.retain(|s| s.retained_growth() >= LEAK_MIN_BYTES);
        return (
            Verdict::NoLeak,
            format!(
                "the Java heap changed by {} and no collection accumulated entries",
                human_delta(heap_growth)
            ),
        );
    }
    let top = types.first().filter(|t| t.bytes_growth() > 0);
    if let Some(t) = top {
        suspects.push(type_suspect(t));
    }
    (
        Verdict::Inconclusive,
        format!(
            "the Java heap grew by {} but no single collection accumulates it{}",
            human_delta(heap_growth),
            top.map(|t| format!(" (most growth: {} {:+})", t.name, t.count_growth()))
                .unwrap_or_default()
        ),
    )
}
