//! HPROF analysis against real JVMs: `tests/workloads/Shapes.java` compiled at test time, run on
//! this host's HotSpot, dumped twice with `jcmd GC.heap_dump` (live objects, as leakhunt asks
//! for), then analysed and diffed. Skipped with a message where no JDK is installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../tests/workloads/java.rs"]
mod java;
#[path = "../../tests/workloads/jvmroot.rs"]
mod jvmroot;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_analyzer, Workload};
use leakhunt_analyzer::analysis;
use leakhunt_analyzer::findings::{Findings, SuspectKind, Verdict};
use leakhunt_analyzer::jvm::attach;
use std::time::Duration;

/// Run `scenario` on collector `gc`, dump after `first` units and again after `second` more,
/// with leakhunt's own heap dump (HotSpot attach, zstd).
fn dumps(
    scenario: &str,
    first: u32,
    second: u32,
    dir: &Path,
    gc: &str,
) -> Option<(PathBuf, PathBuf)> {
    let mut w = jvm(&[gc], scenario)?;
    let mut dump = |n: u32, name: &str| {
        assert_eq!(w.send(&format!("step {n}")), "ok");
        let path = dir.join(format!("{scenario}-{name}.hprof.zst"));
        heap_dump(w.pid(), &path).unwrap();
        path
    };
    let a = dump(first, "a");
    let b = dump(second, "b");
    Some((a, b))
}

/// `java FLAGS -cp CLASSES Shapes SCENARIO`, ready for steps.
fn jvm(flags: &[&str], scenario: &str) -> Option<Workload> {
    let cp = java::shapes_classes()?;
    Some(Workload::start(
        Command::new("java")
            .arg("-Xmx256m")
            .args(flags)
            .arg("-cp")
            .arg(&cp)
            .args(["Shapes", scenario]),
    ))
}

/// Dumps one at a time, so that what one leaves in /tmp is not taken for another's in flight.
static DUMPING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heap_dump(pid: i32, output: &Path) -> Result<attach::HeapDump, attach::Error> {
    let _one = DUMPING.lock().unwrap_or_else(|e| e.into_inner());
    dump_now(pid, output)
}

fn dump_now(pid: i32, output: &Path) -> Result<attach::HeapDump, attach::Error> {
    attach::heap_dump(
        pid,
        &attach::DumpOptions {
            output: output.to_path_buf(),
            max_bytes: None,
            timeout: Duration::from_secs(120),
        },
    )
}

fn diff(scenario: &str, first: u32, second: u32) -> Option<Findings> {
    diff_on("-XX:+UseSerialGC", scenario, first, second)
}

/// [`diff`] on the collector `gc` (a `-XX:+Use…GC` flag).
fn diff_on(gc: &str, scenario: &str, first: u32, second: u32) -> Option<Findings> {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = dumps(scenario, first, second, dir.path(), gc)?;
    Some(analysis::diff_paths(&a, &b, None).unwrap())
}

fn describe(f: &Findings) -> String {
    let mut s = format!("{:?}: {}\n", f.verdict, f.summary);
    for x in &f.suspects {
        s += &format!(
            "  {} ({}) {} -> {} items, retained {} -> {}  via {:?}\n",
            x.path,
            x.type_name,
            x.count_before,
            x.count_after,
            x.retained_bytes_before,
            x.retained_bytes_after,
            x.referrers
        );
    }
    for n in &f.notes {
        s += &format!("  note: {n}\n");
    }
    s
}

/// A leak named by its static field, with its exact logical growth.
fn leak(scenario: &str, path: &str, type_name: &str) {
    leak_on("-XX:+UseSerialGC", scenario, path, type_name);
}

fn leak_on(gc: &str, scenario: &str, path: &str, type_name: &str) {
    let Some(f) = diff_on(gc, scenario, 1000, 2000) else {
        return;
    };
    let d = describe(&f);
    assert_eq!(f.verdict, Verdict::Leak, "{d}");
    assert_eq!(f.runtime.kind, "hotspot", "{d}");
    let top = &f.suspects[0];
    assert_eq!(top.kind, SuspectKind::Container, "{d}");
    assert_eq!(top.path, path, "{d}");
    assert_eq!(top.type_name, type_name, "{d}");
    assert_eq!(top.count_growth(), 2000, "{d}");
    assert!(top.retained_growth() > 2000 * 64, "{d}");
    assert!(f.summary.starts_with(path), "{d}");
    assert!(f.interval.seconds >= 0.0, "{d}");
}

#[test]
fn static_hashmap_leak_is_named_by_its_field() {
    leak("static-map", "Shapes.CACHE", "java.util.HashMap");
}

#[test]
fn g1_and_parallel_dumps_name_the_same_leak() {
    for gc in ["-XX:+UseG1GC", "-XX:+UseParallelGC"] {
        leak_on(gc, "static-map", "Shapes.CACHE", "java.util.HashMap");
    }
}

/// Shapes on Debian testing's HotSpot `version`, chrooted as a container's JVM is: its classes
/// copied into the root, dumped from outside through `/proc/PID/root`.
fn diff_chrooted(version: u32, gc: &str, scenario: &str) -> Option<Findings> {
    let cp = java::shapes_classes()?;
    let root = jvmroot::jvmroot();
    let app = tempfile::Builder::new()
        .prefix("leakhunt-shapes-")
        .tempdir_in(root.join("tmp"))
        .unwrap();
    for e in std::fs::read_dir(&cp).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), app.path().join(e.file_name())).unwrap();
    }
    let inside = Path::new("/tmp").join(app.path().file_name().unwrap());
    let mut w = Workload::start(&mut jvmroot::chrooted_java(
        &root,
        version,
        &[
            "-Xmx256m",
            gc,
            "-cp",
            inside.to_str().unwrap(),
            "Shapes",
            scenario,
        ],
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut dump = |n: u32, name: &str| {
        assert_eq!(w.send(&format!("step {n}")), "ok");
        let path = dir
            .path()
            .join(format!("{scenario}-{version}-{name}.hprof.zst"));
        heap_dump(w.pid(), &path).unwrap();
        path
    };
    let a = dump(1000, "a");
    let b = dump(2000, "b");
    Some(analysis::diff_paths(&a, &b, None).unwrap())
}

#[test]
fn hotspot_21_and_25_name_the_leak_with_g1_and_serial() {
    for (version, gc) in [
        (21, "-XX:+UseG1GC"),
        (25, "-XX:+UseSerialGC"),
        (25, "-XX:+UseG1GC"),
    ] {
        let Some(f) = diff_chrooted(version, gc, "static-map") else {
            return;
        };
        let d = format!("HotSpot {version} {gc}: {}", describe(&f));
        assert_eq!(f.verdict, Verdict::Leak, "{d}");
        assert!(
            f.runtime
                .version
                .as_deref()
                .is_some_and(|v| v.starts_with(&format!("{version}."))),
            "{d}"
        );
        assert_eq!(f.suspects[0].path, "Shapes.CACHE", "{d}");
        assert_eq!(f.suspects[0].type_name, "java.util.HashMap", "{d}");
        assert_eq!(f.suspects[0].count_growth(), 2000, "{d}");
    }
}

#[test]
fn listeners_of_a_singleton_are_named_through_its_instance() {
    leak(
        "listeners",
        "Shapes$Bus.INSTANCE.listeners",
        "java.util.ArrayList",
    );
}

#[test]
fn concurrent_map_counts_its_entries() {
    leak(
        "concurrent",
        "Shapes.CONCURRENT",
        "java.util.concurrent.ConcurrentHashMap",
    );
}

#[test]
fn a_static_thread_locals_value_is_named_by_the_thread_local() {
    leak(
        "threadlocal",
        "Shapes.SCRATCH<value in a java.lang.Thread>",
        "java.util.ArrayList",
    );
}

#[test]
fn set_deque_and_queue_count_their_items() {
    leak("set", "Shapes.SEEN", "java.util.HashSet");
    leak("deque", "Shapes.PENDING", "java.util.ArrayDeque");
    leak(
        "queue",
        "Shapes.QUEUE",
        "java.util.concurrent.LinkedBlockingQueue",
    );
}

fn no_leak(scenario: &str, first: u32, second: u32) {
    let Some(f) = diff(scenario, first, second) else {
        return;
    };
    assert_eq!(f.verdict, Verdict::NoLeak, "{scenario}: {}", describe(&f));
}

#[test]
fn a_full_bounded_cache_is_not_a_leak() {
    no_leak("bounded", 2000, 3000);
}

#[test]
fn churn_is_not_a_leak() {
    no_leak("churn", 1000, 2000);
}

#[test]
fn a_large_steady_heap_is_not_a_leak() {
    no_leak("steady", 1000, 2000);
}

#[test]
fn direct_buffer_memory_is_named_by_the_collection_that_holds_it() {
    let Some(f) = diff("direct", 1000, 2000) else {
        return;
    };
    let d = describe(&f);
    assert_eq!(f.verdict, Verdict::Leak, "{d}");
    assert!(
        f.summary
            .starts_with("Shapes.DIRECT (java.util.ArrayList) grew from 1000 to 3000"),
        "{d}"
    );
    assert!(
        f.summary.contains("+31.2 MiB of direct buffer memory"),
        "{d}"
    );
    let native = f
        .suspects
        .iter()
        .find(|s| s.kind == SuspectKind::Native && s.path == "Shapes.DIRECT")
        .expect(&d);
    // Exactly the capacity of the 2000 buffers added: 16 KiB each.
    assert_eq!(native.retained_growth(), 2000 * 16384, "{d}");
    assert_eq!(native.count_growth(), 2000, "{d}");
}

#[test]
fn direct_buffers_dropped_after_use_are_not_a_leak() {
    no_leak("direct-churn", 1000, 2000);
}

#[test]
fn a_class_loader_leak_names_the_class_loaded_again() {
    let Some(f) = diff("loaders", 20, 40) else {
        return;
    };
    let d = describe(&f);
    assert_eq!(f.verdict, Verdict::Leak, "{d}");
    assert!(f.summary.starts_with("class loaders leak"), "{d}");
    assert!(f.summary.contains("java.net.URLClassLoader"), "{d}");
    assert!(f.summary.contains("60 of them define Shapes$Plugin"), "{d}");
    let s = f
        .suspects
        .iter()
        .find(|s| s.type_name == "java.net.URLClassLoader")
        .expect(&d);
    assert_eq!(s.kind, SuspectKind::Native, "{d}");
    assert_eq!(s.count_growth(), 40, "{d}");
}

#[test]
fn threads_that_multiply_are_a_leak() {
    let Some(f) = diff("threads", 20, 40) else {
        return;
    };
    let d = describe(&f);
    assert_eq!(f.verdict, Verdict::Leak, "{d}");
    assert!(f.summary.starts_with("threads leak"), "{d}");
    let s = f
        .suspects
        .iter()
        .find(|s| s.path == "live threads")
        .expect(&d);
    assert_eq!(s.count_growth(), 40, "{d}");
    assert!(
        s.referrers[0].contains("+40 threads of class java.lang.Thread"),
        "{d}"
    );
}

#[test]
fn a_list_held_only_by_a_running_thread_is_inconclusive() {
    let Some(f) = diff("local", 1000, 2000) else {
        return;
    };
    let d = describe(&f);
    assert_eq!(f.verdict, Verdict::Inconclusive, "{d}");
    let top = &f.suspects[0];
    assert_eq!(top.type_name, "java.util.ArrayList", "{d}");
    assert_eq!(top.count_growth(), 2000, "{d}");
    assert!(top.path.contains("held by a thread's stack"), "{d}");
}

#[test]
fn analyze_prints_the_class_histogram_and_the_largest_collections() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_, b)) = dumps("static-map", 100, 2900, dir.path(), "-XX:+UseSerialGC") else {
        return;
    };
    let (code, out, err) = run_analyzer(&["analyze", b.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Java heap (HotSpot 17."), "{out}");
    let quotes = out
        .lines()
        .find(|l| l.ends_with("  Shapes$Quote"))
        .unwrap_or_else(|| panic!("no Shapes$Quote row in\n{out}"));
    assert_eq!(quotes.split_whitespace().next(), Some("3000"), "{out}");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("3000 ")
            && l.ends_with("Shapes.CACHE (java.util.HashMap)")),
        "{out}"
    );
    let (code, json, err) = run_analyzer(&["analyze", "--format", "json", b.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["runtime"]["kind"], "hotspot");
    assert!(v["jvm"]["objects"].as_u64().unwrap() > 3000, "{json}");
}

#[test]
fn compressed_dumps_are_read_and_bad_ones_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let Some((a, b)) = dumps("static-map", 100, 200, dir.path(), "-XX:+UseSerialGC") else {
        return;
    };
    // Uncompressed, as jcmd and jmap write them.
    let ub = dir.path().join("b.hprof");
    let data = zstd::decode_all(&std::fs::read(&b).unwrap()[..]).unwrap();
    std::fs::write(&ub, &data).unwrap();
    let f = analysis::diff_paths(&a, &ub, None).unwrap();
    assert_eq!(f.suspects[0].count_growth(), 200, "{}", describe(&f));

    // Truncated in the middle of the heap dump: a clear error naming the file.
    let cut = dir.path().join("cut.hprof");
    std::fs::write(&cut, &data[..data.len() * 2 / 3]).unwrap();
    let (code, _, err) = run_analyzer(&["analyze", cut.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cut.hprof") && err.contains("truncated HPROF file"),
        "{err}"
    );

    // A dump and a core cannot be diffed.
    let exe = std::fs::canonicalize("/proc/self/exe").unwrap();
    let e = analysis::diff_paths(&a, &exe, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is an HPROF heap dump but"), "{e}");

    // Damage anywhere: never a panic, and a bounded answer.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        let mut bad = data.clone();
        for _ in 0..(1 + round % 16) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = 19 + (seed as usize) % (bad.len() - 19);
            bad[at] = (seed >> 32) as u8;
        }
        let _ = leakhunt_analyzer::jvm::load(&bad).map(|h| h.census());
    }
}

/// The `hprof` fuzz target's entry on a real dump with deterministic cuts and patches (lengths,
/// counts, ids, tags): it must come back every time. `make fuzz` runs it under libFuzzer for longer.
#[test]
fn fuzz_entry_reads_cut_and_patched_dumps() {
    use leakhunt_analyzer::fuzzing::{hprof, HprofSeed};
    let dir = tempfile::tempdir().unwrap();
    let Some((a, _)) = dumps("static-map", 200, 10, dir.path(), "-XX:+UseSerialGC") else {
        return;
    };
    let data = zstd::decode_all(&std::fs::read(&a).unwrap()[..]).unwrap();
    let seed = HprofSeed::new(data).expect("a real dump loads");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..96u64 {
        let mut input = Vec::new();
        if round % 4 == 0 {
            input.extend_from_slice(&((next() as u32) | 0x8000_0000).to_be_bytes());
        }
        for _ in 0..(1 + round / 2) {
            let v = next();
            input.extend_from_slice(&(v as u32).to_le_bytes());
            // Small counts, huge counts and plausible ids by turns.
            let word = match round % 3 {
                0 => (v >> 32) as u32 & 0xff,
                1 => (v >> 32) as u32 | 0x7000_0000,
                _ => (v >> 32) as u32,
            };
            input.extend_from_slice(&word.to_be_bytes());
        }
        hprof(&seed, &input);
    }
}

/// leakhunt's dump and jcmd's of one JVM in one state hold the same objects; the file is 0600,
/// and nothing of leakhunt's is left in the JVM's /tmp.
#[test]
fn leakhunt_dump_matches_jcmd_and_leaves_nothing() {
    let Some(mut w) = jvm(&["-XX:+UseSerialGC"], "static-map") else {
        return;
    };
    assert_eq!(w.send("step 500"), "ok");
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.hprof.zst");
    let one = DUMPING.lock().unwrap_or_else(|e| e.into_inner());
    let d = dump_now(w.pid(), &ours).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&ours).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        d.hprof_bytes > d.file_bytes && d.pause > Duration::ZERO,
        "{d:?}"
    );
    let leftovers: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".leakhunt-{}-", std::process::id())))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(one);
    let jcmd = |opts: &[&str], name: &str| {
        let path = dir.path().join(name);
        let out = Command::new("jcmd")
            .arg(w.pid().to_string())
            .arg("GC.heap_dump")
            .args(opts)
            .arg(&path)
            .output()
            .expect("jcmd");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{said}");
        path
    };
    let theirs = jcmd(&[], "jcmd.hprof");
    // jcmd's gzip (HotSpot 15+: members of its own) is read as well.
    let gz = jcmd(&["-gz=1"], "jcmd.hprof.gz");
    let census = |p: &Path| analysis::analyze_hprof_path(p).unwrap().unwrap().jvm;
    let (a, b) = (census(&ours), census(&theirs));
    assert_eq!(quotes_in(&census(&gz)), Some(500));
    assert_eq!(quotes_in(&a), Some(500));
    assert_eq!(quotes_in(&a), quotes_in(&b));
    let diff = a.objects.abs_diff(b.objects) as f64 / b.objects as f64;
    assert!(diff < 0.02, "{} vs {} objects", a.objects, b.objects);
    assert_eq!(a.version, b.version);
}

fn quotes_in(c: &leakhunt_analyzer::jvm::JvmCensus) -> Option<u64> {
    c.classes
        .iter()
        .find(|t| t.name == "Shapes$Quote")
        .map(|t| t.count)
}

/// A JVM that disables attach, or would die of SIGQUIT, is refused before it is signalled, and
/// lives on; one without performance counters that ignores the trigger times out clearly.
#[test]
fn refusing_jvms_are_refused_and_live_on() {
    let dir = tempfile::tempdir().unwrap();
    for (flags, want) in [
        (
            vec!["-XX:+DisableAttachMechanism"],
            "DisableAttachMechanism",
        ),
        (vec!["-Xrs"], "-Xrs"),
        (
            vec!["-XX:-UsePerfData", "-XX:+DisableAttachMechanism"],
            "did not open its attach socket",
        ),
    ] {
        let Some(mut w) = jvm(&flags, "static-map") else {
            return;
        };
        let out = dir.path().join("refused.hprof.zst");
        let e = heap_dump(w.pid(), &out).unwrap_err().to_string();
        assert!(e.contains(want), "{flags:?}: {e}");
        assert!(!out.exists());
        // SIGQUIT without an attach listener prints a thread dump to the JVM's output.
        assert!(
            leakhunt_analyzer::jvm::perf::is_jvm(w.pid()),
            "{flags:?}: the JVM must live on"
        );
        if want != "did not open its attach socket" {
            assert_eq!(
                w.send("step 1"),
                "ok",
                "{flags:?}: it must not have been signalled"
            );
        }
    }
}

/// A JVM of another user (nobody): root attaches, the JVM writes into a directory made its own,
/// and the dump is read.
#[test]
fn a_jvm_of_another_user_is_dumped() {
    use std::os::unix::process::CommandExt;
    let Some(cp) = java::shapes_classes() else {
        return;
    };
    let open = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&cp).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), open.path().join(e.file_name())).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut w = Workload::start(
        Command::new("java")
            .args(["-Xmx64m", "-cp"])
            .arg(open.path())
            .args(["Shapes", "static-map"])
            .current_dir("/")
            .uid(65534)
            .gid(65534),
    );
    assert_eq!(w.send("step 50"), "ok");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nobody.hprof.zst");
    heap_dump(w.pid(), &out).unwrap();
    let c = analysis::analyze_hprof_path(&out).unwrap().unwrap().jvm;
    assert!(
        c.classes
            .iter()
            .any(|t| t.name == "Shapes$Quote" && t.count == 50),
        "{:?}",
        &c.classes[..5]
    );
}
