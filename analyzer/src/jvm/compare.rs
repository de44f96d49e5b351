//! Diffing two dumps of one JVM: collections matched by their path from a GC root (objects move
//! at every collection), ranked by retained growth, with the verdict's discipline of the CPython
//! diff: a full bounded cache or churn is not a leak.

use super::{Container, Footprint, JvmHeap};
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

/// Direct buffer memory a collection gained, at least this much, is a leak of native memory
/// (with the collection accumulating entries, reached from a class).
const NATIVE_LEAK_BYTES: i64 = 1 << 20;
/// At least this many more live class loaders of one class, each defining classes, is a class
/// loader leak (metaspace).
const LOADERS_MIN: i64 = 8;
/// Live threads that grew by at least this many and at least doubled are a thread leak.
const THREADS_MIN: i64 = 16;

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
    let outside = Outside::of(before, after, &mut notes);
    let (verdict, summary) = judge(
        &mut suspects,
        &settled,
        &types,
        heap_growth,
        steady,
        &outside,
        &mut notes,
    );
    suspects.extend(outside.suspects());
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

/// Each collection of the second dump with the first's on the same path, where it is of the same
/// type (objects move: a path is what stays).
fn matched<'a>(
    before: &'a JvmHeap,
    after: &'a JvmHeap,
) -> impl Iterator<Item = (&'a String, &'a Container, Option<&'a Container>)> {
    after.containers().iter().map(move |(path, c)| {
        let prev = before
            .containers()
            .get(path)
            .filter(|p| p.type_name == c.type_name);
        (path, c, prev)
    })
}

/// Collections on one path in both dumps (or new at B) that gained items and retained bytes,
/// largest retained growth first; the bool says no class reaches it.
fn grown(before: &JvmHeap, after: &JvmHeap) -> Vec<(Suspect, bool)> {
    let mut out: Vec<(Suspect, bool)> = matched(before, after)
        .filter_map(|(path, c, prev)| {
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

/// What grew outside the Java heap between two dumps.
struct Outside {
    /// Collections holding more direct buffer memory, the most first, outermost only; the bool
    /// says a class reaches it.
    direct: Vec<(Suspect, bool)>,
    /// All reachable direct buffers: count and bytes, before and after.
    direct_total: ((u64, u64), (u64, u64)),
    /// Class loaders of one class that multiplied, defining classes.
    loaders: Option<Suspect>,
    threads: Option<Suspect>,
}

impl Outside {
    fn of(before: &JvmHeap, after: &JvmHeap, notes: &mut Vec<String>) -> Outside {
        let (fa, fb) = (before.footprint(), after.footprint());
        let mut direct: Vec<(Suspect, bool)> = matched(before, after)
            .filter_map(|(path, c, prev)| {
                let (items, native) = prev.map_or((0, 0), |p| (p.items, p.native));
                (c.native > native && (c.native - native) as i64 >= LEAK_MIN_BYTES).then(|| {
                    let mut referrers = c.referrers.clone();
                    referrers.push("its direct buffers' memory (outside the Java heap)".into());
                    (
                        Suspect {
                            kind: SuspectKind::Native,
                            path: path.clone(),
                            type_name: "direct ByteBuffer memory".into(),
                            count_before: items,
                            count_after: c.items,
                            retained_bytes_before: native,
                            retained_bytes_after: c.native,
                            referrers,
                            address: None,
                            allocation_sites: Vec::new(),
                        },
                        !c.from_class,
                    )
                })
            })
            .collect();
        direct.sort_by(|(a, _), (b, _)| {
            b.retained_growth()
                .cmp(&a.retained_growth())
                .then_with(|| a.path.cmp(&b.path))
        });
        // A holder inside another holder: the outermost names it.
        let (kept, settled) = outermost(direct, MAX_SUSPECTS);
        let direct = kept.into_iter().zip(settled).collect();
        let out = Outside {
            direct,
            direct_total: (
                (fa.direct.count, fa.direct.bytes),
                (fb.direct.count, fb.direct.bytes),
            ),
            loaders: loader_growth(fa, fb),
            threads: thread_growth(fa, fb),
        };
        if fb.mapped.bytes > fa.mapped.bytes {
            notes.push(format!(
                "mapped file buffers: {} → {} ({}), memory of the page cache, not of the JVM",
                fa.mapped.count,
                fb.mapped.count,
                human_delta(fb.mapped.bytes as i64 - fa.mapped.bytes as i64)
            ));
        }
        if fb.classes != fa.classes && out.loaders.is_none() {
            notes.push(format!(
                "classes loaded (metaspace): {} → {}",
                fa.classes, fb.classes
            ));
        }
        out
    }

    fn direct_growth(&self) -> i64 {
        self.direct_total.1 .1 as i64 - self.direct_total.0 .1 as i64
    }

    /// The threads and loaders that grew, as suspects after the heap's.
    fn suspects(&self) -> Vec<Suspect> {
        let mut out: Vec<Suspect> = self.direct.iter().map(|d| d.0.clone()).collect();
        out.extend(self.loaders.iter().cloned());
        out.extend(self.threads.iter().cloned());
        out
    }
}

/// The class loaders of one class that multiplied between the dumps, each defining classes.
fn loader_growth(fa: &Footprint, fb: &Footprint) -> Option<Suspect> {
    fb.loaders
        .iter()
        .filter(|g| g.class != "<bootstrap>")
        .filter_map(|g| {
            let prev = fa.loaders.iter().find(|p| p.class == g.class);
            let (loaders, classes) = prev.map_or((0, 0), |p| (p.loaders, p.classes));
            let more = g.loaders as i64 - loaders as i64;
            (more >= LOADERS_MIN && g.classes > classes).then_some((more, g, loaders, classes))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.class.cmp(&a.1.class)))
        .map(|(more, g, loaders, classes)| {
            let mut referrers = vec![format!(
                "{} → {} live loaders of class {} (+{more})",
                loaders, g.loaders, g.class
            )];
            if let Some((name, copies)) = g.most_defined.as_ref().filter(|m| m.1 > 1) {
                referrers.push(format!("{copies} of them define {name}"));
            }
            Suspect {
                kind: SuspectKind::Native,
                path: format!("classes of {} loaders (metaspace)", g.class),
                type_name: g.class.clone(),
                count_before: classes,
                count_after: g.classes,
                retained_bytes_before: 0,
                retained_bytes_after: 0,
                referrers,
                address: None,
                allocation_sites: Vec::new(),
            }
        })
}

/// Live threads that at least doubled, by THREADS_MIN or more.
fn thread_growth(fa: &Footprint, fb: &Footprint) -> Option<Suspect> {
    let (a, b) = (fa.threads_total() as i64, fb.threads_total() as i64);
    if b - a < THREADS_MIN || b < 2 * a {
        return None;
    }
    // The class whose threads multiplied most.
    let top = fb
        .threads
        .iter()
        .map(|t| {
            let prev = fa
                .threads
                .iter()
                .find(|p| p.name == t.name)
                .map_or(0, |p| p.count);
            (t.count as i64 - prev as i64, &t.name)
        })
        .max_by(|x, y| x.0.cmp(&y.0).then_with(|| y.1.cmp(x.1)))?;
    Some(Suspect {
        kind: SuspectKind::Native,
        path: "live threads".into(),
        type_name: "thread".into(),
        count_before: a as u64,
        count_after: b as u64,
        retained_bytes_before: 0,
        retained_bytes_after: 0,
        referrers: vec![format!(
            "+{} threads of class {}, each with its own stack outside the heap",
            top.0, top.1
        )],
        address: None,
        allocation_sites: Vec::new(),
    })
}

/// The summary of a collection whose direct buffers hold more native memory.
fn native_grew(s: &Suspect) -> String {
    format!(
        "{} grew from {} to {} entries, holding {} more of direct buffer memory (native, outside the Java heap)",
        s.path,
        s.count_before,
        s.count_after,
        human_delta(s.retained_growth())
    )
}

fn judge(
    suspects: &mut Vec<Suspect>,
    settled: &[bool],
    types: &[TypeGrowth],
    heap_growth: i64,
    steady: i64,
    outside: &Outside,
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
    let native_of = |path: &str| {
        outside
            .direct
            .iter()
            .find(|d| d.0.path == path)
            .map(|d| d.0.retained_growth())
    };
    let holding = |s: &Suspect| {
        native_of(&s.path)
            .filter(|&n| n >= NATIVE_LEAK_BYTES)
            .map(|n| {
                format!(
                    ", and {} of direct buffer memory outside the heap",
                    human_delta(n)
                )
            })
            .unwrap_or_default()
    };
    let native_leak = outside.direct.iter().find(|(s, settled)| {
        *settled && s.count_growth() > 0 && s.retained_growth() >= NATIVE_LEAK_BYTES
    });
    let mut ranked = suspects.iter().zip(settled);
    let heap_leak = ranked.clone().find(|(s, settled)| **settled && leaking(s));
    // Loaders that multiply cost metaspace and their own structures beyond what the heap shows
    // of them: a small heap growth beside them is theirs (the objects of their classes).
    let heap_leak = heap_leak.filter(|(h, _)| {
        outside.loaders.is_none() || h.retained_growth() >= crate::heap::rank::LEAK_BIG_BYTES
    });
    match (heap_leak, native_leak) {
        // The larger of the two names the leak; both stay suspects.
        (Some((h, _)), Some((n, _)))
            if n.retained_growth() > h.retained_growth() && native_of(&h.path).is_none() =>
        {
            return (Verdict::Leak, native_grew(n));
        }
        (Some((h, _)), _) => return (Verdict::Leak, format!("{}{}", grew(h), holding(h))),
        (None, Some((n, _))) => return (Verdict::Leak, native_grew(n)),
        (None, None) => {}
    }
    if let Some(l) = &outside.loaders {
        return (
            Verdict::Leak,
            format!(
                "class loaders leak: {} ({} → {} classes in metaspace)",
                l.referrers.join(", "),
                l.count_before,
                l.count_after
            ),
        );
    }
    if let Some(t) = &outside.threads {
        return (
            Verdict::Leak,
            format!(
                "threads leak: {} → {} live threads ({})",
                t.count_before,
                t.count_after,
                t.referrers.join(", ")
            ),
        );
    }
    if outside.direct_growth() >= NATIVE_LEAK_BYTES {
        let ((ca, ba), (cb, bb)) = outside.direct_total;
        notes.push(format!(
            "direct buffers: {ca} → {cb}, {} → {}, held by no collection that accumulates",
            crate::util::human_bytes(ba),
            crate::util::human_bytes(bb)
        ));
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
