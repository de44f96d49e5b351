//! `analyze` and `diff`: open snapshots, take the generic census, hand the heap to the runtime
//! found in it (`runtime`), and turn two censuses into findings.

use std::path::Path;

use serde::Serialize;

use crate::census::{self, Census};
use crate::findings::{
    Findings, Interval, NativeGrowth, ProcessRef, Rss, Runtime, Suspect, SuspectKind, TypeGrowth,
    Verdict,
};
use crate::image::{self, CoreFile, MemoryImage, ProcessInfo};
use crate::runtime::{self, HeapCensus};
use crate::util::{human_bytes, human_delta};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error("the snapshots are of different processes ({before} and {after}); diff two snapshots of one process, taken in order")]
    DifferentProcess { before: String, after: String },
    #[error(transparent)]
    OverBudget(#[from] crate::budget::OverBudget),
    #[error("{path}: {source}")]
    Hprof {
        path: String,
        #[source]
        source: crate::jvm::Error,
    },
    #[error("{hprof} is an HPROF heap dump but {other} is not: diff two dumps of one JVM, or two cores of one process")]
    MixedSnapshots { hprof: String, other: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Growth of native memory (heap + anonymous mappings) that counts as a leak on its own:
/// at least this many bytes...
const NATIVE_LEAK_BYTES: i64 = 4 << 20;
/// ...and at least this fraction of what was there before.
const NATIVE_LEAK_FRACTION: f64 = 0.10;
/// Below this, native memory is steady.
const NATIVE_STEADY_BYTES: i64 = 1 << 20;
/// A symbol whose pointer count grows by at least this many words and this fraction is a suspect.
const SYMBOL_SUSPECT_WORDS: i64 = 1000;
const SYMBOL_SUSPECT_FRACTION: f64 = 0.20;
const MAX_SUSPECTS: usize = 10;
const MAX_TYPES: usize = 30;

/// The census of one snapshot, as `analyze` prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    pub runtime: Runtime,
    #[serde(flatten)]
    pub census: Census,
    /// The heap census of the runtime found in the snapshot (`"python": {…}`), if any.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub heap: Option<HeapCensus>,
}

impl Analysis {
    /// The CPython heap census, when the process is a CPython interpreter.
    pub fn python(&self) -> Option<&crate::python::PyCensus> {
        match &self.heap {
            Some(HeapCensus::Python(p)) => Some(p),
            None => None,
        }
    }
}

/// The census of one HPROF heap dump, as `analyze` prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HprofAnalysis {
    pub runtime: Runtime,
    pub jvm: crate::jvm::JvmCensus,
}

fn load_hprof(path: &Path, file: &crate::jvm::HprofFile) -> Result<crate::jvm::JvmHeap> {
    crate::jvm::load(file.bytes()).map_err(|source| match source {
        crate::jvm::Error::OverBudget(b) => Error::OverBudget(b),
        source => Error::Hprof {
            path: path.display().to_string(),
            source,
        },
    })
}

/// The census of `path` when it is an HPROF heap dump; `Ok(None)` when it is not.
pub fn analyze_hprof_path(path: &Path) -> Result<Option<HprofAnalysis>> {
    let Some(file) = crate::jvm::HprofFile::open(path)? else {
        return Ok(None);
    };
    let heap = load_hprof(path, &file)?;
    Ok(Some(HprofAnalysis {
        runtime: Runtime {
            kind: "hotspot".into(),
            version: heap.version.clone(),
        },
        jvm: heap.census(),
    }))
}

/// Anonymous memory one HPROF load needs at its peak, per byte of HPROF: measured at 1.06
/// (bench/jvm-dump.sh: `analyze` of a 1051 MiB dump peaked at 1119 MiB), with a margin.
const HPROF_LOAD_PER_BYTE: f64 = 1.3;

/// Whether two loads of dumps of these sizes fit `budget` at once.
fn both_fit(a: usize, b: usize, budget: Option<u64>) -> bool {
    budget.is_none_or(|budget| (a + b) as f64 * HPROF_LOAD_PER_BYTE <= budget as f64)
}

/// The findings of two HPROF dumps of one JVM; `Ok(None)` when neither is one.
pub fn diff_hprof_paths(before: &Path, after: &Path) -> Result<Option<Findings>> {
    let (a, b) = (
        crate::jvm::HprofFile::open(before)?,
        crate::jvm::HprofFile::open(after)?,
    );
    let (a, b) = match (a, b) {
        (None, None) => return Ok(None),
        (Some(a), Some(b)) => (a, b),
        (a, _) => {
            let (hprof, other) = if a.is_some() {
                (before, after)
            } else {
                (after, before)
            };
            return Err(Error::MixedSnapshots {
                hprof: hprof.display().to_string(),
                other: other.display().to_string(),
            });
        }
    };
    // The two heaps on the two cores, where the memory budget holds both at once; else one after
    // the other (what a load keeps is small: its census and named collections).
    let (ha, hb) = if both_fit(a.bytes().len(), b.bytes().len(), crate::budget::budget()) {
        let (ha, hb) = std::thread::scope(|s| {
            let ha = s.spawn(|| load_hprof(before, &a));
            let hb = load_hprof(after, &b);
            (ha.join(), hb)
        });
        (
            ha.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
            hb?,
        )
    } else {
        let ha = load_hprof(before, &a)?;
        (ha, load_hprof(after, &b)?)
    };
    let c = crate::jvm::compare(&ha, &hb);
    Ok(Some(Findings {
        verdict: c.verdict,
        summary: c.summary,
        runtime: c.runtime,
        interval: Interval { seconds: c.seconds },
        suspects: c.suspects,
        types: c.types,
        notes: c.notes,
        runtime_heap: Some(crate::findings::Rss {
            before: ha.total_bytes(),
            after: hb.total_bytes(),
        }),
        ..Findings::default()
    }))
}

/// Open and take the census of one snapshot.
pub fn analyze_path(path: &Path, sysroot: Option<&Path>) -> Result<Analysis> {
    let core = CoreFile::open(path, sysroot)?;
    analyze_image(&core, sysroot)
}

/// The generic census and the runtime's heap census, each on its own core.
pub fn analyze_image(image: &dyn MemoryImage, sysroot: Option<&Path>) -> Result<Analysis> {
    let (mut census, heap) = std::thread::scope(|s| {
        let heap = s.spawn(|| {
            let mut notes = Vec::new();
            runtime::census(image, &mut notes).map(|h| (h, notes))
        });
        let census = census::take(image, sysroot);
        (census, heap.join())
    });
    let (heap, notes) = heap.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    census.notes.extend(notes);
    Ok(Analysis {
        runtime: heap.as_ref().map_or_else(
            || Runtime {
                kind: "native".into(),
                version: None,
            },
            HeapCensus::runtime,
        ),
        census,
        heap,
    })
}

/// Diff two snapshot files of one process.
pub fn diff_paths(before: &Path, after: &Path, sysroot: Option<&Path>) -> Result<Findings> {
    diff_paths_traced(before, after, sysroot, 0)
}

/// The same, where an allocation tracer started after A used `tracer_bytes` of native memory
/// at B: left out of the native growth, said in a note.
pub fn diff_paths_traced(
    before: &Path,
    after: &Path,
    sysroot: Option<&Path>,
    tracer_bytes: u64,
) -> Result<Findings> {
    if let Some(f) = diff_hprof_paths(before, after)? {
        return Ok(f);
    }
    let a = CoreFile::open(before, sysroot)?;
    let b = CoreFile::open(after, sysroot)?;
    diff_images_traced(&a, &b, sysroot, tracer_bytes)
}

pub fn diff_images(
    before: &dyn MemoryImage,
    after: &dyn MemoryImage,
    sysroot: Option<&Path>,
) -> Result<Findings> {
    diff_images_traced(before, after, sysroot, 0)
}

fn diff_images_traced(
    before: &dyn MemoryImage,
    after: &dyn MemoryImage,
    sysroot: Option<&Path>,
    tracer_bytes: u64,
) -> Result<Findings> {
    check_same_process(before.info(), after.info())?;
    let (ca, cb) = std::thread::scope(|s| {
        let ha = s.spawn(|| census::take(before, sysroot));
        let cb = census::take(after, sysroot);
        (ha.join(), cb)
    });
    // Running the census again after a panic would only panic again: surface the first one.
    let ca = ca.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let mut findings = diff_census(&ca, &cb);
    findings.native.tracer_after = tracer_bytes;
    if tracer_bytes > 0 {
        findings.notes.push(format!(
            "tracemalloc (allocation sites) ran between the snapshots and used {} at B, more with its mallocs' overhead: native memory growth is its as much as the process's, and is not judged",
            human_bytes(tracer_bytes)
        ));
    }
    runtime::refine(&mut findings, before, after)?;
    Ok(findings)
}

/// Two snapshots are of one process when PID, start time and executable agree where both know them.
fn check_same_process(a: &ProcessInfo, b: &ProcessInfo) -> Result<()> {
    let differ = |x: Option<&str>, y: Option<&str>| matches!((x, y), (Some(x), Some(y)) if x != y);
    let start_differs = matches!((a.start_time, b.start_time), (Some(x), Some(y)) if x != y);
    if a.pid != b.pid || start_differs || differ(a.exe.as_deref(), b.exe.as_deref()) {
        let show = |p: &ProcessInfo| {
            format!(
                "pid {} {}",
                p.pid,
                p.exe.as_deref().or(p.comm.as_deref()).unwrap_or("?")
            )
        };
        return Err(Error::DifferentProcess {
            before: show(a),
            after: show(b),
        });
    }
    Ok(())
}

/// Generic findings from two censuses: native-memory growth and the symbols pointed at more often.
pub fn diff_census(a: &Census, b: &Census) -> Findings {
    let native = NativeGrowth {
        heap_before: a.native.heap,
        heap_after: b.native.heap,
        anonymous_before: a.native.anonymous,
        anonymous_after: b.native.anonymous,
        tracer_after: 0,
    };
    let mut notes = Vec::new();
    for n in a.notes.iter().chain(&b.notes) {
        if !notes.contains(n) {
            notes.push(n.clone());
        }
    }
    let interval = match (a.process.captured_at, b.process.captured_at) {
        (Some(x), Some(y)) => {
            if y < x {
                notes.push("the second snapshot is older than the first: growth is reported as after − before".into());
            }
            y - x
        }
        _ => 0.0,
    };

    // Per-symbol pointer counts in both snapshots.
    let mut types: Vec<TypeGrowth> = Vec::new();
    let before: std::collections::HashMap<&str, u64> = a
        .pointers
        .iter()
        .map(|p| (p.name.as_str(), p.count))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for p in &b.pointers {
        seen.insert(p.name.as_str());
        types.push(TypeGrowth {
            name: p.name.clone(),
            count_before: before.get(p.name.as_str()).copied().unwrap_or(0),
            count_after: p.count,
            bytes_before: 0,
            bytes_after: 0,
        });
    }
    for p in &a.pointers {
        if !seen.contains(p.name.as_str()) {
            types.push(TypeGrowth {
                name: p.name.clone(),
                count_before: p.count,
                count_after: 0,
                bytes_before: 0,
                bytes_after: 0,
            });
        }
    }
    types.sort_by(|x, y| {
        y.count_growth()
            .cmp(&x.count_growth())
            .then_with(|| x.name.cmp(&y.name))
    });

    let native_before = (native.heap_before + native.anonymous_before) as i64;
    let native_growth = (native.heap_after + native.anonymous_after) as i64 - native_before;
    let mut suspects = Vec::new();
    if native_growth > NATIVE_STEADY_BYTES {
        suspects.push(native_suspect(&native));
    }
    let objects: std::collections::HashMap<&str, &str> = b
        .pointers
        .iter()
        .map(|p| (p.name.as_str(), p.object.as_str()))
        .collect();
    for t in types.iter().filter(|t| symbol_grew(t)).take(MAX_SUSPECTS) {
        suspects.push(Suspect {
            kind: SuspectKind::Type,
            path: t.name.clone(),
            type_name: objects
                .get(t.name.as_str())
                .map(|o| o.rsplit('/').next().unwrap_or(o).to_owned())
                .unwrap_or_default(),
            count_before: t.count_before,
            count_after: t.count_after,
            retained_bytes_before: 0,
            retained_bytes_after: 0,
            referrers: Vec::new(),
            address: None,
            allocation_sites: Vec::new(),
        });
    }
    let native_leak = native_growth >= NATIVE_LEAK_BYTES
        && native_growth as f64 >= NATIVE_LEAK_FRACTION * native_before as f64;
    let verdict = if native_leak {
        Verdict::Leak
    } else if native_growth < NATIVE_STEADY_BYTES && !types.iter().any(symbol_grew) {
        Verdict::NoLeak
    } else {
        Verdict::Inconclusive
    };
    let summary = generic_summary(verdict, native_growth, &suspects);
    types.retain(|t| t.count_growth() != 0);
    types.truncate(MAX_TYPES);
    Findings {
        verdict,
        summary,
        runtime: Runtime {
            kind: "native".into(),
            version: None,
        },
        process: ProcessRef {
            pid: b.process.pid,
            exe: b.process.exe.clone(),
        },
        interval: Interval { seconds: interval },
        rss: Rss {
            before: a.rss,
            after: b.rss,
        },
        suspects,
        types,
        native,
        notes,
        runtime_heap: None,
        timeline: None,
    }
}

fn symbol_grew(t: &TypeGrowth) -> bool {
    let g = t.count_growth();
    g >= SYMBOL_SUSPECT_WORDS && g as f64 >= SYMBOL_SUSPECT_FRACTION * t.count_before as f64
}

/// The native-memory suspect: the brk heap when it grew most, else anonymous mappings.
pub fn native_suspect(n: &NativeGrowth) -> Suspect {
    let heap = n.heap_after as i64 - n.heap_before as i64;
    let anon = n.anonymous_after as i64 - n.anonymous_before as i64;
    let path = if heap >= anon {
        "native heap ([heap], malloc)"
    } else {
        "native anonymous mappings (mmap, malloc arenas)"
    };
    Suspect {
        kind: SuspectKind::Native,
        path: path.into(),
        type_name: "native".into(),
        count_before: 0,
        count_after: 0,
        retained_bytes_before: n.heap_before + n.anonymous_before,
        retained_bytes_after: n.heap_after + n.anonymous_after,
        referrers: Vec::new(),
        address: None,
        allocation_sites: Vec::new(),
    }
}

fn generic_summary(verdict: Verdict, native_growth: i64, suspects: &[Suspect]) -> String {
    let top = suspects.iter().find(|s| s.kind == SuspectKind::Type);
    let native = format!("native memory {}", human_delta(native_growth));
    match (verdict, top) {
        (Verdict::Leak, Some(t)) => format!(
            "{native}; most grown pointer target: {} +{}",
            t.path,
            t.count_growth()
        ),
        (Verdict::Leak, None) => native,
        (Verdict::NoLeak, _) => format!("no growth: {native}"),
        (Verdict::Inconclusive, Some(t)) => format!(
            "{native}; {} +{} pointers, not enough to call a leak",
            t.path,
            t.count_growth()
        ),
        (Verdict::Inconclusive, None) => format!(
            "{native}: below the leak threshold ({})",
            human_bytes(NATIVE_LEAK_BYTES as u64)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_dumps_load_at_once_only_where_the_budget_holds_both() {
        let gib = 1usize << 30;
        assert!(both_fit(gib, gib, None), "no budget");
        assert!(both_fit(gib / 2, gib / 2, Some(2 << 30)));
        assert!(
            !both_fit(gib, gib, Some(2 << 30)),
            "two 1 GiB dumps in 2 GiB: one at a time"
        );
    }
    use crate::census::{NativeMemory, PointerCount};

    fn census(heap: u64, ptrs: &[(&str, u64)]) -> Census {
        Census {
            process: ProcessInfo {
                pid: 7,
                captured_at: Some(100.0),
                ..Default::default()
            },
            rss: heap,
            rss_estimated: false,
            scanned_bytes: 0,
            pointer_words: 0,
            pointers: ptrs
                .iter()
                .map(|(n, c)| PointerCount {
                    name: (*n).into(),
                    object: "/bin/x".into(),
                    section: None,
                    count: *c,
                })
                .collect(),
            native: NativeMemory {
                heap,
                anonymous: 0,
                mappings: Vec::new(),
            },
            symbol_sources: Vec::new(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn a_runtime_census_is_under_its_key() {
        let py = crate::python::PyCensus {
            version: "3.11.7".into(),
            objects: 3,
            bytes: 96,
            types: Vec::new(),
            containers: Vec::new(),
            notes: Vec::new(),
        };
        let heap = HeapCensus::Python(py);
        let a = Analysis {
            runtime: heap.runtime(),
            census: census(1 << 20, &[]),
            heap: Some(heap),
        };
        assert_eq!(a.python().map(|p| p.objects), Some(3));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["python"]["version"], "3.11.7");
        assert_eq!(json["runtime"]["kind"], "cpython");
        let native = Analysis { heap: None, ..a };
        let json = serde_json::to_value(&native).unwrap();
        assert!(json.get("python").is_none());
    }

    #[test]
    fn native_growth_is_a_leak() {
        let f = diff_census(&census(10 << 20, &[]), &census(40 << 20, &[]));
        assert_eq!(f.verdict, Verdict::Leak);
        assert_eq!(f.suspects[0].kind, SuspectKind::Native);
    }

    #[test]
    fn steady_process_is_no_leak() {
        let f = diff_census(
            &census(10 << 20, &[("A", 5000)]),
            &census(10 << 20, &[("A", 5001)]),
        );
        assert_eq!(f.verdict, Verdict::NoLeak);
        assert!(f.suspects.is_empty());
    }

    #[test]
    fn symbol_growth_without_memory_growth_is_inconclusive() {
        let f = diff_census(
            &census(10 << 20, &[("vtable for W+0x10", 100)]),
            &census(10 << 20, &[("vtable for W+0x10", 5000)]),
        );
        assert_eq!(f.verdict, Verdict::Inconclusive);
        assert_eq!(f.suspects[0].path, "vtable for W+0x10");
        assert_eq!(f.suspects[0].count_growth(), 4900);
    }

    #[test]
    fn different_processes_are_refused() {
        let a = ProcessInfo {
            pid: 1,
            start_time: Some(5),
            ..Default::default()
        };
        let b = ProcessInfo {
            pid: 1,
            start_time: Some(6),
            ..Default::default()
        };
        assert!(matches!(
            check_same_process(&a, &b),
            Err(Error::DifferentProcess { .. })
        ));
        assert!(check_same_process(&a, &a).is_ok());
    }
}
