//! The local hunt against real memory cgroups and real kernel OOM kills.
//!
//! Needs root and a writable memory controller (v1 `memory/` or v2 with `memory` in
//! `cgroup.controllers`) under /sys/fs/cgroup; each test says so and returns early otherwise.
//! Every cgroup and process a test makes is removed by a guard, also when the test fails.

// Tests and their helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/workloads/java.rs"]
mod java;
#[path = "../../tests/workloads/pyroot.rs"]
mod pyroot;

use pyroot::pyroot;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leakhunt_analyzer::findings::{Findings, Verdict as FindingsVerdict};
use leakhunt_operator::crd::{LeakReportStatus, Phase, SnapshotRecord, Verdict};
use leakhunt_operator::hunt::{self, Failure, HuntOptions, HuntOutcome, Levels, Target, Until};
use leakhunt_operator::node::{Cgroup, CgroupVersion, Hierarchy, KillSource, Level};
use leakhunt_operator::snapshot::{self, Captured, Snapshotter};
use leakhunt_operator::status::{self, Applied, Op, Role};

const ROOT: &str = "/sys/fs/cgroup";
const MIB: u64 = 1 << 20;

/// The tests share two cores with each other (and whatever else runs): one hunt at a time keeps
/// their timing (growth rates, thresholds crossed between samples) what the test expects.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn hierarchy() -> Option<Hierarchy> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to create memory cgroups");
        return None;
    }
    match Hierarchy::detect(Path::new(ROOT)) {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// Removes a cgroup made by a test (and anything left running in it).
struct CgroupGuard(Cgroup);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = self.0.kill_and_remove(Duration::from_secs(5));
    }
}

/// Kills and reaps a process a test started.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Records which process each snapshot is of; writes a small 0600 stand-in file instead of a
/// core and reports what the stand-in diff is told to, so the hunt's decisions are tested alone.
#[derive(Default)]
struct Recorder {
    taken: Mutex<Vec<(i32, PathBuf)>>,
    fail_diff: bool,
    /// SIGKILL the process right after its first snapshot: a worker that dies between A and B.
    kill_after_first: bool,
    /// Capture and diff with the real analyzer (still recording which process).
    real: bool,
    /// Parent PID of each snapshotted process, at capture time.
    parents: Mutex<Vec<i32>>,
    /// Creates this file after that many captures: opens a `gated_leaker`'s gate.
    gate: Option<(PathBuf, usize)>,
    /// How each real snapshot was taken, as the snapshot layer says (the hunt prints it).
    notes: Mutex<Vec<Option<String>>>,
}

impl Recorder {
    fn real() -> Recorder {
        Recorder {
            real: true,
            ..Default::default()
        }
    }

    fn gated(mut self, gate: &Path, after: usize) -> Recorder {
        self.gate = Some((gate.to_path_buf(), after));
        self
    }

    fn open_gate(&self, captures: usize) {
        if let Some((gate, after)) = &self.gate {
            if captures >= *after {
                std::fs::write(gate, b"").unwrap();
            }
        }
    }
}

impl Snapshotter for Recorder {
    fn estimate_size(&self, pid: i32) -> snapshot::Result<u64> {
        snapshot::Analyzer.estimate_size(pid)
    }

    fn capture(&self, pid: i32, output: &Path, max: u64) -> snapshot::Result<Captured> {
        if let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PPid:").and_then(|v| v.trim().parse().ok()))
        {
            self.parents.lock().unwrap().push(ppid);
        }
        if self.real {
            let c = snapshot::Analyzer.capture(pid, output, max)?;
            self.notes.lock().unwrap().push(c.note.clone());
            let mut taken = self.taken.lock().unwrap();
            taken.push((pid, c.path.clone()));
            self.open_gate(taken.len());
            return Ok(c);
        }
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| {
            snapshot::Error::Capture {
                pid,
                message: e.to_string(),
            }
        })?;
        std::fs::write(output, rss.as_bytes()).map_err(|e| snapshot::Error::Capture {
            pid,
            message: e.to_string(),
        })?;
        let mut taken = self.taken.lock().unwrap();
        taken.push((pid, output.to_path_buf()));
        self.open_gate(taken.len());
        if self.kill_after_first && taken.len() == 1 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(Captured {
            path: output.to_path_buf(),
            file_bytes: rss.len() as u64,
            memory_bytes: 0,
            stopped: Duration::ZERO,
            total: Duration::ZERO,
            note: None,
            jvm: None,
        })
    }

    fn diff(&self, before: &Path, after: &Path) -> snapshot::Result<Findings> {
        if self.real {
            return snapshot::Analyzer.diff(before, after);
        }
        if self.fail_diff {
            return Err(snapshot::Error::Diff {
                before: before.into(),
                after: after.into(),
                message: "stand-in analyzer failure".into(),
            });
        }
        Ok(Findings {
            verdict: FindingsVerdict::Inconclusive,
            summary: "stand-in diff".into(),
            ..Default::default()
        })
    }

    fn write_text(&self, findings: &Findings, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        if self.real {
            return snapshot::Analyzer.write_text(findings, out);
        }
        writeln!(out, "{}", findings.summary)
    }
}

fn options(name: &str, target: Target, limit: Option<u64>) -> (HuntOptions, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let opts = HuntOptions {
        target,
        memory_limit: limit,
        levels: Levels::default(),
        interval: Duration::from_millis(200),
        window: Duration::from_secs(10),
        snapshot_dir: tmp.path().join("snapshots"),
        max_snapshot_size: 1 << 30,
        keep_snapshots: false,
        report: Some(tmp.path().join("report.yaml")),
        html: Some(tmp.path().join("report.html")),
        cgroup_root: ROOT.into(),
        cgroup_parent: format!("leakhunt-test/{name}-{}", std::process::id()),
        proc_root: "/proc".into(),
        kernel_log: Some("/dev/kmsg".into()),
        until: Until::Oom,
        duration: Some(Duration::from_secs(60)),
        progress: false,
        allocation_sites: false,
    };
    (opts, tmp)
}

fn run(opts: &HuntOptions, snap: &dyn Snapshotter) -> (HuntOutcome, String) {
    let mut out = Vec::new();
    let outcome = hunt::run(opts, snap, &mut out, &AtomicBool::new(false)).expect("hunt runs");
    let text = String::from_utf8_lossy(&out).into_owned();
    eprintln!("{text}");
    (outcome, text)
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Python that leaks `step` MiB every `pause` seconds, touching every page.
fn leaker(step_mib: u32, pause: f64) -> String {
    format!("import time\nheld = []\nwhile True:\n    held.append(b'x' * ({step_mib} << 20))\n    time.sleep({pause})\n")
}

/// A leaker that stops growing at 90% of its cgroup's limit (working set, as the hunt reads it)
/// until `gate` exists, then grows on into the OOM kill. However late a loaded machine samples,
/// snapshot B comes before the kill; the test's Recorder opens the gate once it has B. It finds
/// its cgroup in the hierarchy the hunt uses (`h`).
fn gated_leaker(h: &Hierarchy, step_mib: u32, pause: f64, gate: &Path) -> String {
    let v2 = if h.version == CgroupVersion::V2 {
        "True"
    } else {
        "False"
    };
    format!(
        r#"import os, time
v2 = {v2}
rel = None
for line in open('/proc/self/cgroup'):
    _, controllers, path = line.rstrip('\n').split(':', 2)
    if (v2 and controllers == '') or (not v2 and 'memory' in controllers.split(',')):
        rel = path
d = {mount:?} + rel
if v2:
    files = ('memory.current', 'memory.max', 'inactive_file')
else:
    files = ('memory.usage_in_bytes', 'memory.limit_in_bytes', 'total_inactive_file')
def read(name):
    return open(os.path.join(d, name)).read().strip()
limit = int(read(files[1]))
def working_set():
    stat = dict(l.split() for l in read('memory.stat').splitlines())
    return int(read(files[0])) - int(stat.get(files[2], 0))
held = []
while True:
    if working_set() >= 0.9 * limit and not os.path.exists({gate:?}):
        time.sleep(0.01)
        continue
    held.append(b'x' * ({step_mib} << 20))
    time.sleep({pause})
"#,
        mount = h.path.display().to_string(),
        gate = gate.display().to_string()
    )
}

fn assert_cgroup_gone(opts: &HuntOptions, h: &Hierarchy) {
    let parent = h.cgroup(&opts.cgroup_parent);
    let leftovers: Vec<_> = std::fs::read_dir(&parent.dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "hunt left cgroups behind: {leftovers:?}"
    );
    let _ = std::fs::remove_dir(&parent.dir);
    // Shared by the tests running in parallel: goes with the last one.
    let _ = std::fs::remove_dir(h.cgroup("leakhunt-test").dir);
}

#[test]
fn leaker_is_oom_killed_and_named() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("b-taken");
    let (opts, _tmp) = options(
        "leaker",
        Target::Command(vec![
            python(),
            "-c".into(),
            gated_leaker(&h, 1, 0.05, &gate),
        ]),
        Some(64 * MIB),
    );
    let rec = Recorder::real().gated(&gate, 2);
    let (outcome, text) = run(&opts, &rec);
    assert_eq!(
        outcome.findings.as_ref().map(|f| f.verdict),
        Some(FindingsVerdict::Leak),
        "{text}"
    );

    // The command was the one killed, named by the kernel log (readable here) or its vanishing.
    assert!(!outcome.kills.is_empty(), "no OOM kill reported");
    let status = outcome.exit_status.expect("command exited");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let taken = rec.taken.lock().unwrap().clone();
    assert_eq!(taken.len(), 2, "snapshot A and B: {taken:?}");
    // Each snapshot says how long it stopped the process and how its memory was copied:
    // pre-copied while it ran, or (on a kernel with no write tracker) why not.
    let notes = rec.notes.lock().unwrap().clone();
    assert_eq!(notes.len(), 2);
    let yaml = std::fs::read_to_string(opts.report.as_ref().unwrap()).unwrap();
    for role in ["A", "B"] {
        assert!(
            yaml.contains(&format!("snapshot {role}: process stopped ")),
            "{yaml}"
        );
    }
    for n in &notes {
        let n = n.as_deref().unwrap_or_default();
        assert!(
            n.starts_with("pre-copied ") || n.starts_with("stopped for the whole copy: "),
            "{n}"
        );
    }
    let pid = taken[0].0;
    assert_eq!(taken[1].0, pid);
    let kill = &outcome.kills.last().unwrap();
    assert_eq!(kill.kill.pid, Some(pid), "{kill:?}");
    assert_eq!(kill.kill.comm.as_deref(), Some("python3"));
    assert!(kill.was_target);
    assert!(matches!(
        kill.kill.source,
        KillSource::KernelLog | KillSource::Disappeared
    ));
    assert!(
        text.contains(&format!("OOMKilled python3 (pid {pid})")),
        "{text}"
    );

    // The YAML report on disk carries the kill and the snapshot pair; the files are gone.
    let yaml = std::fs::read_to_string(opts.report.as_ref().unwrap()).unwrap();
    let report: leakhunt_operator::crd::LeakReport = serde_yaml::from_str(&yaml).unwrap();
    let st = report.status.unwrap();
    assert!(st.oom_kills >= 1);
    assert_eq!(
        st.last_oom_kill.as_ref().unwrap().process,
        format!("python3 (pid {pid})")
    );
    assert_eq!(st.snapshots.len(), 2);
    assert_eq!(st.phase, Phase::Analysed);
    for (_, path) in &taken {
        assert!(!path.exists(), "snapshot {path:?} not removed");
    }
    assert_same_as_agent(&st, outcome.findings.as_ref().unwrap());
    assert_cgroup_gone(&opts, &h);
}

/// The hunt's report is the one the cluster builds for the same pair: the agent's ops for A and
/// B (in pod `web-1`) and the analyzer Job's findings give the same status, but for what only a
/// cluster or only a hunt has (the samples, the kills the controller counts, where and when).
fn assert_same_as_agent(hunt: &LeakReportStatus, findings: &Findings) {
    let in_pod = |role| SnapshotRecord {
        pod: "web-1".into(),
        container: "app".into(),
        ..hunt.snapshot(role).unwrap().clone()
    };
    let (a, b) = (in_pod(Role::A), in_pod(Role::B));
    let mut agent = LeakReportStatus::default();
    let a_op = Op::SnapshotA {
        record: a.clone(),
        process: hunt.process.clone().unwrap(),
        cooldown: Duration::from_secs(600),
        message: String::new(),
    };
    let b_op = Op::SnapshotB {
        record: b.clone(),
        timeline: Vec::new(),
        message: String::new(),
    };
    for (op, at) in [(a_op, a.time.0), (b_op, b.time.0)] {
        assert_eq!(
            status::apply(&op, &mut agent, "web-1", "app", at),
            Applied::Changed
        );
    }
    status::analysed(&mut agent, findings, b.time.clone());

    // What differs by nature: samples, kills, places, times and sentences.
    let comparable = |s: &LeakReportStatus| {
        let mut s = s.clone();
        s.memory = Default::default();
        s.oom_kills = 0;
        s.last_oom_kill = None;
        s.counted_kills.clear();
        // How each snapshot was taken: the agent notes it from its own capture, not from ops.
        s.notes
            .retain(|n| !n.starts_with("thresholds:") && !n.starts_with("snapshot "));
        s.incidents.retain(|i| i.reason != "OOMKilled");
        for i in &mut s.incidents {
            i.time = b.time.clone();
            i.message.clear();
        }
        for c in &mut s.conditions {
            c.last_transition_time = b.time.clone();
            c.message.clear();
        }
        for r in &mut s.snapshots {
            r.pod.clear();
            r.container.clear();
        }
        s
    };
    assert_eq!(comparable(hunt), comparable(&agent));
}

/// A container-like cgroup: a parent that forks a leaking worker and survives its OOM kill.
#[test]
fn worker_killed_parent_survives() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let name = format!("leakhunt-test/container-{}", std::process::id());
    let cg = CgroupGuard(h.create(&name).unwrap());
    cg.0.set_limit(64 * MIB).unwrap();
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("b-taken");
    let script = format!(
        "import os, sys, time\npid = os.fork()\nif pid == 0:\n{}\nprint(pid, flush=True)\nos.waitpid(pid, 0)\nprint('worker gone', flush=True)\ntime.sleep(120)\n",
        gated_leaker(&h, 2, 0.05, &gate).lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
    );
    let mut parent = ChildGuard(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(cg.0.dir.join("cgroup.procs"))
            .args([python(), "-c".into(), script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let parent_pid = parent.0.id() as i32;
    let mut lines = BufReader::new(parent.0.stdout.take().unwrap()).lines();
    let worker_pid: i32 = lines.next().unwrap().unwrap().trim().parse().unwrap();

    let (opts, _tmp) = options("worker", Target::Pid(parent_pid), None);
    let rec = Recorder::default().gated(&gate, 2);
    let (outcome, _) = run(&opts, &rec);

    let taken = rec.taken.lock().unwrap().clone();
    assert!(
        taken.iter().all(|(p, _)| *p == worker_pid),
        "snapshots of the worker: {taken:?}"
    );
    let kill = outcome
        .kills
        .first()
        .expect("the worker's OOM kill is seen");
    assert_eq!(kill.kill.pid, Some(worker_pid));
    assert_eq!(outcome.report.status.as_ref().unwrap().oom_kills, 1);
    // The parent lives on, in the same cgroup.
    assert_eq!(lines.next().unwrap().unwrap(), "worker gone");
    assert!(Path::new(&format!("/proc/{parent_pid}")).exists());
    assert_eq!(cg.0.procs().unwrap(), vec![parent_pid]);
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
}

/// A master that respawns its leaking worker: when the worker dies between A and B, the hunt
/// starts over in the new worker and ends with a pair of it.
#[test]
fn respawned_worker_is_hunted_again() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("b-taken");
    let worker = gated_leaker(&h, 2, 0.1, &gate)
        .lines()
        .map(|l| format!("        {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    let script = format!(
        "import os, time\nfor _ in range(2):\n    pid = os.fork()\n    if pid == 0:\n{worker}\n    os.waitpid(pid, 0)\n"
    );
    let (mut opts, _tmp) = options(
        "respawn",
        Target::Command(vec![python(), "-c".into(), script]),
        Some(64 * MIB),
    );
    opts.until = Until::Report;
    opts.keep_snapshots = true;
    // A (voided by the kill), A of the new worker, B: then the worker may grow on.
    let rec = Recorder {
        kill_after_first: true,
        ..Default::default()
    }
    .gated(&gate, 3);
    let (outcome, _) = run(&opts, &rec);
    let taken = rec.taken.lock().unwrap().clone();
    let pids: Vec<i32> = taken.iter().map(|(p, _)| *p).collect();
    assert_eq!(pids.len(), 3, "A (voided), A, B: {pids:?}");
    assert_ne!(pids[0], pids[1], "the second A is of the new worker");
    assert_eq!(pids[1], pids[2]);
    assert!(!taken[0].1.exists(), "the void baseline is deleted");
    use std::os::unix::fs::PermissionsExt;
    for (_, kept) in &taken[1..] {
        let mode = std::fs::metadata(kept).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{kept:?} is readable by others");
    }
    let master = command_pid(&outcome).unwrap();
    assert!(!pids.contains(&master), "never the master");
    let st = outcome.report.status.unwrap();
    assert!(
        st.notes.iter().any(|n| n.contains("is void")),
        "{:?}",
        st.notes
    );
    assert_eq!(st.snapshots.len(), 2);
    assert!(st.snapshots.iter().all(|s| s.pid == i64::from(pids[1])));
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    assert_cgroup_gone(&opts, &h);
}

/// A service whose memory stays flat: no snapshot, no leak verdict.
#[test]
fn flat_process_is_no_leak() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let script = "import time\nheld = b'x' * (8 << 20)\nwhile True:\n    junk = [bytes(1000) for _ in range(1000)]\n    time.sleep(0.05)\n";
    let (mut opts, _tmp) = options(
        "flat",
        Target::Command(vec![python(), "-c".into(), script.into()]),
        Some(64 * MIB),
    );
    // The growth rate is judged over the last few seconds, after the interpreter's start-up ramp
    // (which a loaded machine can stretch over several seconds).
    opts.duration = Some(Duration::from_secs(12));
    opts.window = Duration::from_secs(4);
    let rec = Recorder::default();
    let (outcome, _) = run(&opts, &rec);
    assert!(rec.taken.lock().unwrap().is_empty());
    assert!(outcome.kills.is_empty());
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let st = outcome.report.status.unwrap();
    assert_eq!(st.verdict, Some(Verdict::NoLeak), "{:?}", st.summary);
    assert!(
        st.notes.iter().any(|n| n.contains("no snapshot was taken")),
        "{:?}",
        st.notes
    );
    assert!(outcome.samples >= 10);
    assert_cgroup_gone(&opts, &h);
}

#[test]
fn exit_before_b_is_an_error_that_says_what_was_captured() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("a-taken");
    // Grows to ~70% of the limit, then exits on its own once A is taken (or after 30 s).
    let script = format!(
        "import os, time\nheld = []\nfor _ in range(22):\n    held.append(b'x' * (2 << 20))\n    time.sleep(0.05)\nfor _ in range(3000):\n    if os.path.exists({gate:?}):\n        break\n    time.sleep(0.01)\n",
        gate = gate.display().to_string()
    );
    let (opts, _tmp) = options(
        "exits",
        Target::Command(vec![python(), "-c".into(), script]),
        Some(64 * MIB),
    );
    let rec = Recorder::default().gated(&gate, 1);
    let (outcome, _) = run(&opts, &rec);
    assert_eq!(rec.taken.lock().unwrap().len(), 1, "snapshot A only");
    let failure = outcome.failure.expect("failure");
    assert!(matches!(failure, Failure::ExitedBeforeB(_)), "{failure:?}");
    assert_eq!(failure.exit_code(), 4);
    let st = outcome.report.status.unwrap();
    assert_eq!(st.phase, Phase::Failed);
    assert!(
        st.notes
            .iter()
            .any(|n| n.contains("snapshot B was not taken")),
        "{:?}",
        st.notes
    );
    assert_cgroup_gone(&opts, &h);
}

#[test]
fn analyzer_failure_is_reported() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("b-taken");
    let (mut opts, _tmp) = options(
        "diff-fails",
        Target::Command(vec![
            python(),
            "-c".into(),
            gated_leaker(&h, 2, 0.05, &gate),
        ]),
        Some(64 * MIB),
    );
    opts.until = Until::Report;
    let rec = Recorder {
        fail_diff: true,
        ..Default::default()
    }
    .gated(&gate, 2);
    let (outcome, _) = run(&opts, &rec);
    let failure = outcome.failure.expect("failure");
    assert!(matches!(failure, Failure::Analysis(_)), "{failure:?}");
    assert_eq!(failure.exit_code(), 5);
    assert_cgroup_gone(&opts, &h);
}

#[test]
fn oversized_snapshot_is_skipped_with_the_reason() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let (mut opts, _tmp) = options(
        "too-big",
        Target::Command(vec![python(), "-c".into(), leaker(2, 0.05)]),
        Some(64 * MIB),
    );
    opts.max_snapshot_size = MIB;
    let rec = Recorder::default();
    let (outcome, _) = run(&opts, &rec);
    assert!(rec.taken.lock().unwrap().is_empty());
    let st = outcome.report.status.unwrap();
    assert!(
        st.notes
            .iter()
            .any(|n| n.contains("exceeds --max-snapshot-size")),
        "{:?}",
        st.notes
    );
    assert!(matches!(outcome.failure, Some(Failure::Capture(_))));
    assert_eq!(
        std::fs::read_dir(&opts.snapshot_dir).unwrap().count(),
        0,
        "no partial files"
    );
    assert_cgroup_gone(&opts, &h);
}

fn leakhunt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leakhunt"))
}

#[test]
fn cli_errors_have_clear_messages_and_exit_codes() {
    // No memory controller under this root.
    let tmp = tempfile::tempdir().unwrap();
    let out = leakhunt()
        .args(["hunt", "--memory-limit", "64Mi", "--cgroup-root"])
        .arg(tmp.path())
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no memory cgroup controller"));

    // Usage: thresholds that cannot be.
    for (args, says) in [
        (
            &["--baseline", "60%", "--near-limit", "50%"][..],
            "--baseline < --near-limit",
        ),
        (&["--baseline", "+5Mi"][..], "--baseline cannot be a growth"),
        (&["--near-limit", "lots"][..], "not a threshold"),
    ] {
        let out = leakhunt()
            .arg("hunt")
            .args(args)
            .args(["--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }

    // No permission to create cgroups: an unprivileged user.
    if hierarchy().is_some() && Path::new("/usr/bin/setpriv").exists() {
        // `leakhunt hunt ARGS` as user nobody.
        let as_nobody = |args: &[&str]| {
            Command::new("/usr/bin/setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_leakhunt"))
                .args(["hunt", "--snapshot-dir", "/tmp/leakhunt-nobody"])
                .args(args)
                .output()
                .unwrap()
        };
        let parent = format!("leakhunt-test/nobody-{}", std::process::id());
        let out = as_nobody(&[
            "--memory-limit",
            "64Mi",
            "--cgroup-parent",
            &parent,
            "--",
            "true",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("no permission to create cgroup"), "{err}");

        // Another user's process: said before anything is watched.
        let out = as_nobody(&["--pid", "1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("need root or CAP_SYS_PTRACE"), "{err}");
    }
}

#[test]
fn ctrl_c_cleans_up_cgroup_and_command() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let parent = format!("leakhunt-test/sigint-{}", std::process::id());
    let child = ChildGuard(
        leakhunt()
            .args([
                "hunt",
                "--memory-limit",
                "64Mi",
                "--quiet",
                "--cgroup-parent",
                &parent,
                "--",
            ])
            .args(["sleep", "300"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let hunt_pid = child.0.id();
    let cg = h.cgroup(&format!("{parent}/hunt-{hunt_pid}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while cg.procs().map(|p| p.is_empty()).unwrap_or(true) {
        assert!(
            Instant::now() < deadline,
            "command never appeared in {:?}",
            cg.dir
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sleeper = cg.procs().unwrap()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hunt_pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut child = child;
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(!cg.exists(), "cgroup left behind");
    assert!(
        !Path::new(&format!("/proc/{sleeper}")).exists(),
        "command left running"
    );
    let _ = std::fs::remove_dir(h.cgroup(&parent).dir);
    let _ = std::fs::remove_dir(h.cgroup("leakhunt-test").dir);
}

/// gunicorn with two workers serving the leaky Flask app under load: the snapshot pair is of a
/// worker (the master does not grow), and the analyzer finds what grows in it.
#[test]
fn gunicorn_workers_leak_master_does_not() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let venv = venv();
    let port = free_port();
    let app_dir =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../examples/leaky-flask");
    let (mut opts, _tmp) = options(
        "gunicorn",
        Target::Command(vec![
            "/usr/bin/env".into(),
            "PROFILER_LAPS=400".into(),
            format!("{}/bin/gunicorn", venv.display()),
            "--chdir".into(),
            app_dir.display().to_string(),
            "-w".into(),
            "2".into(),
            "-b".into(),
            format!("127.0.0.1:{port}"),
            "--log-level".into(),
            "warning".into(),
            "app:app".into(),
        ]),
        Some(128 * MIB),
    );
    opts.until = Until::Report;
    opts.duration = Some(Duration::from_secs(120));
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || drive_load(port, &stop, Duration::from_secs(120)))
        })
        .collect();
    let rec = Recorder::real();
    let (outcome, text) = run(&opts, &rec);
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = load.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("load: {sent} requests");

    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let st = outcome.report.status.as_ref().unwrap();
    let target = st.process.as_ref().expect("snapshotted process");
    let taken = rec.taken.lock().unwrap().clone();
    assert_eq!(taken.len(), 2, "{taken:?}");
    assert!(taken.iter().all(|(p, _)| i64::from(*p) == target.pid));
    // A worker: its parent is the gunicorn master, which is the command itself.
    let master = command_pid(&outcome).expect("master pid");
    assert_eq!(target.name, "gunicorn");
    assert_ne!(target.pid, i64::from(master), "not the master");
    assert_eq!(
        *rec.parents.lock().unwrap(),
        vec![master, master],
        "snapshots of a worker of the master"
    );
    // What grows in the worker.
    let findings = outcome.findings.as_ref().expect("findings");
    assert_eq!(findings.verdict, FindingsVerdict::Leak, "{text}");
    assert_eq!(st.verdict, Some(Verdict::Leak));
    let top = findings.suspects.first().expect("a suspect");
    assert!(
        top.path.ends_with("Profiler.results"),
        "top suspect {:?}\n{text}",
        top.path
    );
    assert!(st.suspects[0].path.ends_with("Profiler.results"));
    assert!(st
        .snapshots
        .iter()
        .all(|s| s.sha256.len() == 64 && s.size > 0));
    for (_, path) in &taken {
        assert!(!path.exists(), "snapshot {path:?} not removed");
    }
    assert_cgroup_gone(&opts, &h);
}

/// Memory that rose once and stayed: A is taken above the baseline, then (gated on A) the process
/// makes one more allocation and holds it; B comes at the end of the watch. The heap diff sees a
/// module dict that grew by an item retaining 12 MiB; the timeline shows one rise and a plateau,
/// so the verdict is no-leak, and the report says why.
#[test]
fn steady_process_above_baseline_is_not_a_leak() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("a-taken");
    // ~60% of the limit, flat, until A; then one 12 MiB allocation (to ~80%), flat again. The
    // churn frees what it makes.
    let script = format!(
        "import os, time\nheld = b'x' * (28 << 20)\nwhile not os.path.exists({gate:?}):\n    junk = [str(i) for i in range(20000)]\n    del junk\n    time.sleep(0.05)\nmore = b'y' * (12 << 20)\nwhile True:\n    junk = [str(i) for i in range(20000)]\n    del junk\n    time.sleep(0.05)\n",
        gate = gate.display().to_string()
    );
    let (mut opts, _tmp) = options(
        "steady",
        Target::Command(vec![python(), "-c".into(), script]),
        Some(64 * MIB),
    );
    opts.duration = Some(Duration::from_secs(6));
    opts.window = Duration::from_secs(8);
    // A sample every 500 ms: however slowly a loaded machine makes the allocation, it is one
    // step of a sample or three.
    opts.interval = Duration::from_millis(500);
    let rec = Recorder::real().gated(&gate, 1);
    let (outcome, text) = run(&opts, &rec);
    assert_eq!(
        rec.taken.lock().unwrap().len(),
        2,
        "A at the baseline, B at the end of the watch"
    );
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let findings = outcome.findings.expect("findings");
    assert_eq!(findings.verdict, FindingsVerdict::NoLeak, "{text}");
    let evidence = findings.timeline.as_ref().expect("timeline evidence");
    assert!(
        matches!(
            evidence.trend,
            leakhunt_analyzer::timeline::Trend::Step { .. }
        ),
        "{evidence:?}"
    );
    assert!(
        findings.summary.starts_with("memory rose once by 1")
            && findings.summary.contains("not a leak"),
        "{}",
        findings.summary
    );
    let st = outcome.report.status.unwrap();
    assert_eq!(st.verdict, Some(Verdict::NoLeak));
    assert_eq!(st.timeline.as_deref(), Some(evidence.sentence.as_str()));
    assert!(text.contains("memory rose once by"), "{text}");
    assert_cgroup_gone(&opts, &h);
}

/// The gunicorn master's pid: the process the hunt started (its report is named after it).
fn command_pid(outcome: &HuntOutcome) -> Option<i32> {
    outcome
        .report
        .metadata
        .name
        .as_ref()?
        .rsplit('-')
        .next()?
        .parse()
        .ok()
}

fn venv() -> PathBuf {
    let script =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../examples/setup-venv.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("examples/setup-venv.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Bounded loopback load: GET /metrics/... until stopped or the time is up.
fn drive_load(port: u16, stop: &AtomicBool, max: Duration) -> u64 {
    use std::io::Write;
    let deadline = Instant::now() + max;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!(
            "GET /metrics/app-{} HTTP/1.0\r\nHost: localhost\r\n\r\n",
            sent % 100
        );
        if s.write_all(req.as_bytes()).is_ok() {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            sent += 1;
        }
    }
    sent
}

/// A cgroup of the test's own, with no limit unless given, and a Python script started in it
/// (killed and removed when dropped).
struct Contained {
    cgroup: Cgroup,
    children: Vec<Child>,
}

impl Contained {
    fn new(h: &Hierarchy, name: &str, limit: Option<u64>) -> Contained {
        let cgroup = h
            .create(&format!("leakhunt-test/{name}-{}", std::process::id()))
            .unwrap();
        if let Some(l) = limit {
            cgroup.set_limit(l).unwrap();
        }
        Contained {
            cgroup,
            children: Vec::new(),
        }
    }

    /// Starts `script` in the cgroup; its pid, once the script runs (a running service: its
    /// interpreter is up when the hunt starts).
    fn start(&mut self, script: &str) -> i32 {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.cgroup.dir.join("cgroup.procs"))
            .args([
                python().as_str(),
                "-c",
                &format!("print('ready', flush=True)\n{script}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "pid {pid} never started");
        self.children.push(child);
        pid
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.cgroup.kill_and_remove(Duration::from_secs(5));
    }
}

/// Grows 2 MiB every 50 ms up to `cap_mib`, then holds it; exits once `gate` exists if given.
fn capped_leaker(cap_mib: u32, gate: Option<&Path>) -> String {
    let exit = gate
        .map(|g| {
            format!(
                "    if os.path.exists({:?}):\n        break\n",
                g.display().to_string()
            )
        })
        .unwrap_or_default();
    format!(
        "import os, time\nheld = []\nwhile True:\n{exit}    if len(held) * 2 < {cap_mib}:\n        held.append(b'x' * (2 << 20))\n    time.sleep(0.05)\n"
    )
}

/// The seed's wish: a running Python service with no memory limit, `--pid` and no other flag.
/// A bigger process beside it in its cgroup is not the one hunted.
#[test]
fn pid_without_a_limit_names_the_leak() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let mut c = Contained::new(&h, "nolimit", None);
    let _big = c.start("import time\nheld = b'x' * (150 << 20)\ntime.sleep(600)\n");
    let pid = c.start(&capped_leaker(120, None));
    let (mut opts, _tmp) = options("nolimit", Target::Pid(pid), None);
    opts.until = Until::Report;
    let rec = Recorder::real();
    let (outcome, text) = run(&opts, &rec);
    assert!(outcome.failure.is_none(), "{:?}\n{text}", outcome.failure);
    let taken = rec.taken.lock().unwrap().clone();
    assert_eq!(taken.len(), 2);
    assert!(taken.iter().all(|(p, _)| *p == pid), "{taken:?}");
    let (a, b) = (&outcome.snapshots[0], &outcome.snapshots[1]);
    assert!(
        b.working_set >= a.working_set + (64 << 20),
        "{} → {}",
        a.working_set,
        b.working_set
    );
    let findings = outcome.findings.expect("findings");
    assert_eq!(findings.verdict, FindingsVerdict::Leak, "{text}");
    assert!(findings.suspects[0].path.ends_with("held"), "{text}");
    let st = outcome.report.status.unwrap();
    assert!(
        st.notes.iter().any(|n| n
            == "thresholds: snapshot A now, B once grown by max(64MiB, 25% of its size at A) (or at the end of --duration 60s) (no memory limit: the default, on the process's RSS)"),
        "{:?}",
        st.notes
    );
    assert_eq!(st.memory.limit, None);
}

/// Sizes, growth and time instead of shares of a limit.
#[test]
fn pid_thresholds_as_sizes_growth_and_time() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    const M: u64 = 1 << 20;
    let mut c = Contained::new(&h, "levels", None);
    let pid = c.start(&capped_leaker(100, None));
    let (mut opts, _tmp) = options("levels", Target::Pid(pid), None);
    opts.until = Until::Report;
    opts.levels = Levels {
        baseline: Some(Level::Bytes(40 * M)),
        near_limit: Some(Level::Bytes(80 * M)),
        pair_after: None,
    };
    let (outcome, _) = run(&opts, &Recorder::default());
    let s = &outcome.snapshots;
    assert_eq!(s.len(), 2, "{:?}", outcome.failure);
    assert!(
        s[0].working_set >= 40 * M && s[1].working_set >= 80 * M,
        "{s:?}"
    );
    drop(c);

    let mut c = Contained::new(&h, "growth", None);
    let pid = c.start(&capped_leaker(100, None));
    let (mut opts, _tmp) = options("growth", Target::Pid(pid), None);
    opts.until = Until::Report;
    opts.levels.near_limit = Some(Level::Growth {
        bytes: 30 * M,
        of_a: 0.0,
    });
    let (outcome, _) = run(&opts, &Recorder::default());
    let s = &outcome.snapshots;
    assert_eq!(s.len(), 2, "{:?}", outcome.failure);
    assert!(s[1].working_set >= s[0].working_set + 30 * M, "{s:?}");
    drop(c);

    // Time: a service that does not grow, paired 2 s apart, is no leak.
    let mut c = Contained::new(&h, "timed", None);
    let pid = c.start("import time\nheld = b'x' * (20 << 20)\nwhile True:\n    junk = [str(i) for i in range(1000)]\n    time.sleep(0.05)\n");
    let (mut opts, _tmp) = options("timed", Target::Pid(pid), None);
    opts.until = Until::Report;
    opts.levels.pair_after = Some(Duration::from_secs(2));
    let rec = Recorder::real();
    let started = Instant::now();
    let (outcome, text) = run(&opts, &rec);
    assert_eq!(rec.taken.lock().unwrap().len(), 2, "{text}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let findings = outcome.findings.expect("findings");
    assert_ne!(findings.verdict, FindingsVerdict::Leak, "{text}");
}

/// `--pid` of a master: the worker that grows is hunted, in a cgroup with a limit (shares).
#[test]
fn pid_of_a_master_hunts_its_growing_worker() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let mut c = Contained::new(&h, "master", Some(160 * MIB));
    let worker = capped_leaker(150, None);
    let master = c.start(&format!(
        "import os, time\npid = os.fork()\nif pid == 0:\n    exec({worker:?})\nelse:\n    time.sleep(600)\n"
    ));
    let (mut opts, _tmp) = options("master", Target::Pid(master), None);
    opts.until = Until::Report;
    let rec = Recorder::default();
    let (outcome, _) = run(&opts, &rec);
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let taken = rec.taken.lock().unwrap().clone();
    assert_eq!(taken.len(), 2);
    assert!(
        taken.iter().all(|(p, _)| *p != master),
        "the worker, not the master"
    );
    assert_eq!(*rec.parents.lock().unwrap(), vec![master, master]);
    let st = outcome.report.status.unwrap();
    assert!(
        st.notes.iter().any(|n| n
            .starts_with("thresholds: snapshot A at 50% of the limit, B at 85% of the limit")
            && n.ends_with("(shares of the cgroup's memory limit)")),
        "{:?}",
        st.notes
    );
}

/// A `--pid` that exits after A: exit 4, and the report says what was captured.
#[test]
fn pid_that_exits_before_b_says_what_was_captured() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("a-taken");
    let mut c = Contained::new(&h, "pid-exits", None);
    // Something else lives on in the cgroup: the hunt ends with the process, not the cgroup.
    let _other = c.start("import time\ntime.sleep(600)\n");
    let pid = c.start(&capped_leaker(20, Some(&gate)));
    let (opts, _tmp) = options("pid-exits", Target::Pid(pid), None);
    let rec = Recorder::default().gated(&gate, 1);
    let (outcome, _) = run(&opts, &rec);
    assert_eq!(rec.taken.lock().unwrap().len(), 1, "A only");
    let failure = outcome.failure.expect("failure");
    assert!(matches!(failure, Failure::ExitedBeforeB(_)), "{failure:?}");
    assert_eq!(failure.exit_code(), 4);
    let st = outcome.report.status.unwrap();
    assert!(
        st.notes
            .iter()
            .any(|n| n.contains("snapshot B was not taken")),
        "{:?}",
        st.notes
    );
}

/// `--allocation-sites` on the seed's Flask service under CPython 3.14 (chrooted into Debian's
/// root, as a container's process): tracemalloc from snapshot A on, and the report names the
/// line that builds the tuples `Profiler.end` appends to `Profiler.results`; the verdict is
/// still the container's, not the native memory tracemalloc's own traces take.
#[test]
fn allocation_sites_name_the_line_that_builds_the_leaked_items() {
    let _serial = serial();
    let Some(_h) = hierarchy() else { return };
    let root = pyroot();
    assert!(
        root.join("usr/bin/python3.14").exists(),
        "no CPython 3.14 in {}: run make pyroot",
        root.display()
    );
    let app_dir = format!("tmp/leakhunt-hunt-test-{}", std::process::id());
    std::fs::create_dir_all(root.join(&app_dir)).unwrap();
    let app = root.join(&app_dir).join("app.py");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo"));
    std::fs::copy(manifest.join("../examples/leaky-flask/app.py"), &app).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Small requests (4 laps each) from two clients, and B at 60 % of a 160Mi limit: 64 MiB
    // between B and the kill, so tracing is safe up to 1.6 MiB/s of growth (traced 4× as fast,
    // 10 s to read the sites), and B comes 16 MiB after A. (With 256Mi a loaded machine's
    // requests did not reach A in 4 minutes.)
    let (mut opts, _tmp) = options(
        "sites",
        Target::Command(vec![
            "env".into(),
            format!("PORT={port}"),
            "PROFILER_LAPS=4".into(),
            "chroot".into(),
            root.display().to_string(),
            "python3.14".into(),
            format!("/{app_dir}/app.py"),
        ]),
        Some(160 * MIB),
    );
    opts.levels = Levels {
        baseline: Some(Level::Share(0.5)),
        near_limit: Some(Level::Share(0.6)),
        pair_after: None,
    };
    opts.allocation_sites = true;
    opts.until = Until::Report;
    opts.duration = Some(Duration::from_secs(240));
    let mut load = Command::new("python3")
        .arg(manifest.join("../examples/leaky-flask/load.py"))
        .args([
            "--port",
            &port.to_string(),
            "--threads",
            "2",
            "--seconds",
            "300",
        ])
        .args(["--give-up", "10", "--start-timeout", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("load.py");
    let (outcome, text) = run(&opts, &snapshot::Analyzer);
    let _ = load.kill();
    let _ = load.wait();
    let _ = std::fs::remove_dir_all(root.join(&app_dir));
    let findings = outcome.findings.as_ref().expect("findings");
    assert_eq!(findings.verdict, FindingsVerdict::Leak, "{text}");
    let top = &findings.suspects[0];
    assert!(top.path.ends_with("Profiler.results"), "{text}");
    let site = top.allocation_sites.first().expect("an allocation site");
    let appends = std::fs::read_to_string(manifest.join("../examples/leaky-flask/app.py"))
        .unwrap()
        .lines()
        .position(|l| l.trim_start().starts_with("timing = ("))
        .map(|i| i + 1)
        .expect("the line of app.py that builds a timing");
    assert!(
        site.frames[0].starts_with(&format!("app.py:{appends} in "))
            && site.percent_of_growth >= 90,
        "{site:?}\n{text}"
    );
    assert!(
        text.contains(&format!("items allocated at app.py:{appends} in ")),
        "{text}"
    );
    assert!(
        findings
            .notes
            .iter()
            .any(|n| n.contains("tracemalloc used")),
        "{:?}",
        findings.notes
    );
    let yaml = std::fs::read_to_string(opts.report.as_ref().unwrap()).unwrap();
    assert!(yaml.contains("allocationSites:"), "{yaml}");
    // `--html`: the same report as a page, the site under its suspect.
    let page = std::fs::read_to_string(opts.html.as_ref().unwrap()).expect("the HTML report");
    assert!(
        page.contains("Profiler.results")
            && page.contains(&format!("items allocated at app.py:{appends} in ")),
        "{page}"
    );
}

/// An unmodified JVM under a memory limit: both snapshots are heap dumps taken through HotSpot's
/// attach mechanism, and the report names the static field that grows, as a Java engineer would.
/// (About 10 MB/s: a dump needs about a tenth of the heap in native memory for its collection and
/// writer, which a faster leak at 85 % of the limit does not leave.)
#[test]
fn jvm_hunt_names_the_growing_static_field() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let Some(cp) = java::shapes_classes() else {
        return;
    };
    let (mut opts, _tmp) = options(
        "jvm",
        Target::Command(
            [
                "java",
                "-Xmx1g",
                "-XX:+UseSerialGC",
                "-cp",
                cp.to_str().unwrap(),
                "Shapes",
                "static-map",
                "run",
                "1000",
            ]
            .map(String::from)
            .to_vec(),
        ),
        Some(384 * MIB),
    );
    opts.until = Until::Report;
    let rec = Recorder::real();
    let (outcome, text) = run(&opts, &rec);
    assert!(outcome.failure.is_none(), "{:?}\n{text}", outcome.failure);
    let f = outcome.findings.as_ref().expect("findings");
    assert_eq!(f.verdict, FindingsVerdict::Leak, "{text}");
    assert_eq!(f.runtime.kind, "hotspot", "{text}");
    assert_eq!(f.suspects[0].path, "Shapes.CACHE", "{text}");
    assert_eq!(f.suspects[0].type_name, "java.util.HashMap", "{text}");
    assert!(f.suspects[0].count_growth() > 10_000, "{text}");
    // Two heap dumps, not cores: the diff read them as HPROF.
    assert!(text.contains("(hotspot 17."), "{text}");
    let taken = rec.taken.lock().unwrap().clone();
    assert_eq!(taken.len(), 2, "{taken:?}");
    for (_, path) in &taken {
        assert!(!path.exists(), "snapshot {path:?} not removed");
    }
    let st = outcome.report.status.unwrap();
    assert_eq!(st.phase, Phase::Analysed);
    // Its pools at both snapshots; -Xmx1g under a 384 MiB limit is called what it is.
    for role in ["A", "B"] {
        assert!(
            st.notes
                .iter()
                .any(|n| n.starts_with(&format!("JVM at snapshot {role}: heap "))),
            "{:?}",
            st.notes
        );
    }
    assert!(
        st.notes
            .iter()
            .any(|n| n.contains("the JVM may grow its heap to ")
                && n.contains("384 MiB limit")
                && n.contains("a misconfiguration")),
        "{:?}",
        st.notes
    );
    assert_cgroup_gone(&opts, &h);
}

/// A JVM whose -Xmx is far under its limit dies of its heap, not of the limit: the hunt reads
/// its old generation against its maximum, takes the pair before `OutOfMemoryError`, names the
/// field, and the timeline carries the heap.
#[test]
fn a_jvm_near_its_heap_ceiling_is_hunted_before_the_limit() {
    let _serial = serial();
    let Some(h) = hierarchy() else { return };
    let Some(cp) = java::shapes_classes() else {
        return;
    };
    let (mut opts, _tmp) = options(
        "jvm-ceiling",
        Target::Command(
            [
                "java",
                "-Xmx64m",
                "-XX:+UseSerialGC",
                "-cp",
                cp.to_str().unwrap(),
                "Shapes",
                "static-map",
                "run",
                "150",
            ]
            .map(String::from)
            .to_vec(),
        ),
        Some(1024 * MIB),
    );
    opts.until = Until::Report;
    let rec = Recorder::real();
    let (outcome, text) = run(&opts, &rec);
    assert!(outcome.failure.is_none(), "{:?}\n{text}", outcome.failure);
    let f = outcome.findings.as_ref().expect("findings");
    assert_eq!(f.verdict, FindingsVerdict::Leak, "{text}");
    assert_eq!(f.suspects[0].path, "Shapes.CACHE", "{text}");
    // B by the level, not at the end of the watch.
    assert!(!text.contains("at the end of the watch"), "{text}");
    let st = outcome.report.status.unwrap();
    // Both snapshots were taken far under the 1 GiB limit: by the heap's ceiling.
    for s in &st.snapshots {
        let at = st
            .memory
            .samples
            .iter()
            .rfind(|m| m.time.0 <= s.time.0)
            .map_or(0, |m| m.working_set);
        assert!(
            at < 400 * MIB as i64,
            "snapshot {} at {at} bytes\n{text}",
            s.role
        );
    }
    let heap: Vec<(i64, i64)> = st
        .memory
        .samples
        .iter()
        .filter_map(|m| m.java_heap.zip(m.java_heap_max))
        .collect();
    assert!(heap.len() >= 5, "{heap:?}\n{text}");
    assert!(heap.iter().all(|h| h.1 == 64 * MIB as i64), "{heap:?}");
    assert!(heap.last().unwrap().0 > heap[0].0, "{heap:?}");
    assert_cgroup_gone(&opts, &h);
}
