//! The generic census on real processes: a C++ program's objects counted through their vtables,
//! native heap growth measured, on cores from gcore and from the kernel.

// Tests and their helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{capture, compile, gcore, run_analyzer, Workload};
use leakhunt_analyzer::analysis;
use leakhunt_analyzer::findings::{SuspectKind, Verdict};

fn pointer_count(core: &Path, symbol: &str) -> u64 {
    let a = analysis::analyze_path(core, None).expect("analyze");
    a.census
        .pointers
        .iter()
        .filter(|p| p.name == symbol)
        .map(|p| p.count)
        .sum()
}

#[test]
fn vtable_pointers_count_objects_in_a_gcore_core() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile("widgets.cpp", dir.path());
    let mut w = Workload::start(&mut Command::new(&exe));
    w.send("widgets 20000");
    w.send("gadgets 700");
    let core = gcore(w.pid(), dir.path(), "a");
    let widgets = pointer_count(&core, "vtable for Widget+0x10");
    let gadgets = pointer_count(&core, "vtable for Gadget+0x10");
    // Every live object holds its vtable pointer; a few stale copies may sit in freed memory.
    assert!(
        (20000..20100).contains(&widgets),
        "vtable for Widget counted {widgets} times"
    );
    assert!(
        (700..720).contains(&gadgets),
        "vtable for Gadget counted {gadgets} times"
    );

    let (code, text, _) = run_analyzer(&["analyze", core.to_str().unwrap(), "--top", "5"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("vtable for Widget+0x10"),
        "text census lacks the vtable:\n{text}"
    );
}

#[test]
fn diff_reports_native_growth_and_the_growing_class() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile("widgets.cpp", dir.path());
    let mut w = Workload::start(&mut Command::new(&exe));
    w.send("widgets 1000");
    let a = gcore(w.pid(), dir.path(), "a");
    w.send("malloc 48");
    w.send("widgets 30000");
    let b = gcore(w.pid(), dir.path(), "b");

    let f = analysis::diff_paths(&a, &b, None).expect("diff");
    assert_eq!(f.verdict, Verdict::Leak, "{f:#?}");
    let native = f
        .suspects
        .iter()
        .find(|s| s.kind == SuspectKind::Native)
        .expect("a native suspect");
    let growth = native.retained_growth();
    // 48 MiB of malloc plus ~1.2 MiB of Widgets and the vector's growth.
    assert!(
        (48 << 20..56 << 20).contains(&growth),
        "native growth {growth} is not ≈ 48 MiB"
    );
    let vt = f
        .types
        .iter()
        .find(|t| t.name == "vtable for Widget+0x10")
        .expect("Widget vtable in types");
    assert!(
        (30000..30100).contains(&vt.count_growth()),
        "Widget growth {}",
        vt.count_growth()
    );
    assert!(f
        .suspects
        .iter()
        .any(|s| s.path == "vtable for Widget+0x10"));

    let (code, json, _) = run_analyzer(&[
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("diff JSON");
    assert_eq!(v["verdict"], "leak");
    assert!(
        v["suspects"][0]["retainedBytesAfter"].as_u64().unwrap()
            > v["suspects"][0]["retainedBytesBefore"].as_u64().unwrap()
    );
    assert!(v["rss"]["after"].as_u64().unwrap() > v["rss"]["before"].as_u64().unwrap());
}

#[test]
fn churn_is_not_a_leak() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile("widgets.cpp", dir.path());
    let mut w = Workload::start(&mut Command::new(&exe));
    w.send("widgets 2000");
    w.send("churn 10");
    let a = gcore(w.pid(), dir.path(), "a");
    w.send("churn 100000");
    let b = gcore(w.pid(), dir.path(), "b");
    let f = analysis::diff_paths(&a, &b, None).expect("diff");
    assert_eq!(f.verdict, Verdict::NoLeak, "{f:#?}");
}

#[test]
fn snapshots_of_different_processes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile("widgets.cpp", dir.path());
    let w1 = Workload::start(&mut Command::new(&exe));
    let w2 = Workload::start(&mut Command::new(&exe));
    let a = gcore(w1.pid(), dir.path(), "a");
    let b = gcore(w2.pid(), dir.path(), "b");
    let (code, _, err) = run_analyzer(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("different processes"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
}

/// Makes the kernel write cores as plain files in the process's directory while alive.
struct CorePattern(Option<String>);

impl CorePattern {
    fn plain() -> CorePattern {
        let path = "/proc/sys/kernel/core_pattern";
        let old = std::fs::read_to_string(path)
            .expect("read core_pattern")
            .trim_end()
            .to_owned();
        if old.starts_with('|') || old.contains('/') {
            std::fs::write(path, "core").expect("tests run as root to set core_pattern");
            CorePattern(Some(old))
        } else {
            CorePattern(None)
        }
    }
}

impl Drop for CorePattern {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write("/proc/sys/kernel/core_pattern", old);
        }
    }
}

/// Let the kernel dump the workload: SIGABRT with an unlimited core size.
fn kernel_core(exe: &Path, dir: &Path, setup: &[&str]) -> PathBuf {
    let _pattern = CorePattern::plain();
    let mut w = Workload::start(
        Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -c unlimited; exec {}", exe.display()))
            .current_dir(dir),
    );
    for cmd in setup {
        w.send(cmd);
    }
    let pid = w.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGABRT,
    )
    .unwrap();
    let _ = w.child.wait();
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern")
        .unwrap()
        .trim_end()
        .replace("%p", &pid.to_string());
    let uses_pid = std::fs::read_to_string("/proc/sys/kernel/core_uses_pid")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    let name = if uses_pid && !pattern.contains(&pid.to_string()) {
        format!("{pattern}.{pid}")
    } else {
        pattern
    };
    let core = dir.join(name);
    assert!(
        core.exists(),
        "the kernel wrote no core at {}",
        core.display()
    );
    core
}

#[test]
fn kernel_cores_are_read_with_missing_pages_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile("widgets.cpp", dir.path());
    let core = kernel_core(&exe, dir.path(), &["widgets 5000"]);
    let a = analysis::analyze_path(&core, None).expect("analyze kernel core");
    let widgets: u64 = a
        .census
        .pointers
        .iter()
        .filter(|p| p.name == "vtable for Widget+0x10")
        .map(|p| p.count)
        .sum();
    assert!(
        (5000..5050).contains(&widgets),
        "vtable for Widget counted {widgets} times"
    );
    assert_eq!(a.census.process.exe.as_deref(), exe.to_str());

    // Without the files (a sysroot that lacks them), the census says which pages are missing.
    let empty = tempfile::tempdir().unwrap();
    let a = analysis::analyze_path(&core, Some(empty.path())).expect("analyze with empty sysroot");
    assert!(
        a.census
            .notes
            .iter()
            .any(|n| n.contains("pages missing") && n.contains("libc.so")),
        "no missing-pages note: {:?}",
        a.census.notes
    );
}

#[test]
fn our_capture_gives_the_same_census_and_a_recorded_rss() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile("widgets.cpp", dir.path());
    let mut w = Workload::start(&mut Command::new(&exe));
    w.send("widgets 3000");
    let a = capture(w.pid(), dir.path(), "a");
    // gcore of the same, unchanged process sees the same words.
    let g = gcore(w.pid(), dir.path(), "g");
    assert_eq!(
        pointer_count(&a, "vtable for Widget+0x10"),
        pointer_count(&g, "vtable for Widget+0x10")
    );
    w.send("widgets 4000");
    w.send("malloc 20");
    let b = capture(w.pid(), dir.path(), "b");
    let f = analysis::diff_paths(&a, &b, None).expect("diff");
    let vt = f
        .types
        .iter()
        .find(|t| t.name == "vtable for Widget+0x10")
        .expect("Widget vtable");
    // Stale copies of vtable pointers in freed memory come and go: allow a few either way.
    assert!(
        (3990..4010).contains(&vt.count_growth()),
        "Widget growth {}",
        vt.count_growth()
    );
    // Our cores record RSS at capture time: the 20 MiB touched by malloc shows in it.
    let rss_growth = f.rss.after as i64 - f.rss.before as i64;
    assert!(
        (20 << 20..26 << 20).contains(&rss_growth),
        "RSS growth {rss_growth}"
    );
    assert!(f.interval.seconds > 0.0 && f.interval.seconds < 60.0);
    assert!(
        !f.notes.iter().any(|n| n.contains("RSS estimated")),
        "{:?}",
        f.notes
    );
}
