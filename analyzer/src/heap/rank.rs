//! Ranking what grew between two heaps, the same way for every runtime: per-type growth, and the
//! outermost accumulation points among the containers that grew.

use rustc_hash::FxHashMap;

use super::TypeCount;
use crate::findings::{Suspect, SuspectKind, TypeGrowth};

/// A container must gain at least this many items ...
pub const LEAK_MIN_ITEMS: i64 = 32;
/// ... and this many retained bytes to be called a leak,
pub const LEAK_MIN_BYTES: i64 = 8 << 10;
/// ... or fewer items that retain at least this much and most of the heap's growth.
pub const LEAK_BIG_BYTES: i64 = 1 << 20;
pub const MAX_SUSPECTS: usize = 10;
pub const MAX_TYPES: usize = 30;

/// Whether container suspect `s` accumulates: many items, or few big ones that hold most of what
/// the runtime's heap gained (`heap_growth`).
pub fn accumulates(s: &Suspect, heap_growth: i64) -> bool {
    s.kind == SuspectKind::Container
        && s.count_growth() > 0
        && ((s.count_growth() >= LEAK_MIN_ITEMS && s.retained_growth() >= LEAK_MIN_BYTES)
            || (s.retained_growth() >= LEAK_BIG_BYTES
                && s.retained_growth().saturating_mul(2) >= heap_growth))
}

/// The type that grew most, as the suspect of a heap that grew with no container accumulating.
pub fn type_suspect(t: &TypeGrowth) -> Suspect {
    Suspect {
        kind: SuspectKind::Type,
        path: t.name.clone(),
        type_name: t.name.clone(),
        count_before: t.count_before,
        count_after: t.count_after,
        retained_bytes_before: t.bytes_before,
        retained_bytes_after: t.bytes_after,
        referrers: Vec::new(),
        address: None,
        allocation_sites: Vec::new(),
    }
}

/// Per-type growth by name, the largest byte growth first, at most `max`.
pub fn type_growth(before: &[TypeCount], after: &[TypeCount], max: usize) -> Vec<TypeGrowth> {
    let mut by_name: FxHashMap<&str, TypeGrowth> = FxHashMap::default();
    for (types, is_after) in [(before, false), (after, true)] {
        for t in types {
            let e = by_name
                .entry(t.name.as_str())
                .or_insert_with(|| TypeGrowth {
                    name: t.name.clone(),
                    count_before: 0,
                    count_after: 0,
                    bytes_before: 0,
                    bytes_after: 0,
                });
            if is_after {
                e.count_after += t.count;
                e.bytes_after += t.bytes;
            } else {
                e.count_before += t.count;
                e.bytes_before += t.bytes;
            }
        }
    }
    let mut types: Vec<TypeGrowth> = by_name
        .into_values()
        .filter(|t| t.count_growth() != 0 || t.bytes_growth() != 0)
        .collect();
    types.sort_by(|a, b| {
        b.bytes_growth()
            .cmp(&a.bytes_growth())
            .then_with(|| a.name.cmp(&b.name))
    });
    types.truncate(max);
    types
}

/// The outermost accumulation points of `suspects` (largest retained growth first; the bool
/// says no named root reaches it), at most `max`, with whether each is settled (reached from a
/// named root: a module, a class).
pub fn outermost(suspects: Vec<(Suspect, bool)>, max: usize) -> (Vec<Suspect>, Vec<bool>) {
    // A container inside a growing container grows with it: keep the outermost accumulation point
    // unless the inner one is named differently (the paths say which contains which).
    // Containers that gained less than this are noise (a temporary list of the last call).
    const MIN_SUSPECT_BYTES: i64 = 1024;
    let mut kept: Vec<(Suspect, bool)> = Vec::new();
    for (s, anonymous) in suspects
        .into_iter()
        .filter(|(s, _)| s.retained_growth() >= MIN_SUSPECT_BYTES)
    {
        let nested = kept.iter().any(|(k, _)| {
            s.path
                .strip_prefix(k.path.as_str())
                .is_some_and(|rest| rest.starts_with(['.', '[']))
                && s.retained_growth() <= k.retained_growth()
        });
        if !nested {
            kept.push((s, anonymous));
        }
        if kept.len() >= max {
            break;
        }
    }
    let settled: Vec<bool> = kept.iter().map(|(_, anonymous)| !anonymous).collect();
    (kept.into_iter().map(|(s, _)| s).collect(), settled)
}
