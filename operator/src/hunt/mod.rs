//! `leakhunt hunt`: the whole hunt on one host. Start a command in a fresh memory cgroup (or
//! watch a running process's cgroup), sample it, take snapshot A at the baseline threshold and B
//! near the limit of the process that grows, diff them, and report OOM kills as they happen.
//!
//! The decisions are the node library's ([`crate::node`]), so the agent hunts the same way.

pub mod cli;
pub mod output;

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use leakhunt_analyzer::findings::{Findings, Verdict as FindingsVerdict};
use leakhunt_analyzer::timeline::{self, Point, Trend};

use crate::crd::{
    human_bytes, signed_bytes, Incident, LeakReport, MemorySample, Phase, ProcessRef,
    SnapshotRecord, Verdict,
};
use crate::node::cgroup::{self, Cgroup, Hierarchy};
use crate::node::procs::{cmdline, ProcessKey};
use crate::node::threshold::{
    Action, Level, Observation, ResetReason, State, ThresholdMachine, Thresholds,
};
use crate::node::{CgroupWatcher, KillSource, OomKill, Sample};
use crate::snapshot::{self, Snapshotter};
use crate::status::{self, Reason, Role};

/// What to hunt in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Run this command in a new memory cgroup.
    Command(Vec<String>),
    /// Watch this process's existing memory cgroup.
    Pid(i32),
}

/// When the hunt ends by itself (besides the command exiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    /// After the analysis, at the next OOM kill in the cgroup.
    Oom,
    /// Right after the analysis.
    Report,
    /// Only when the command (or every process of the cgroup) exits.
    Exit,
}

/// The thresholds as given; what is left out follows from whether there is a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Levels {
    pub baseline: Option<Level>,
    pub near_limit: Option<Level>,
    pub pair_after: Option<Duration>,
}

impl Levels {
    /// The thresholds in force under `limit`, and why those. With a limit: A at 50 %, B at 85 %
    /// of it; without: A now, B once the process grew by max(64 MiB, 25 %). `--pair-after` makes
    /// A come now and B after that long at the latest.
    pub fn resolve(&self, limit: Option<u64>) -> Result<(Thresholds, &'static str), String> {
        let timed = self.pair_after.map(|d| d.as_secs_f64());
        let (baseline, near_limit, why) = match limit {
            Some(_) => (
                self.baseline.unwrap_or(if timed.is_some() {
                    Level::NOW
                } else {
                    Level::Share(0.5)
                }),
                Some(self.near_limit.unwrap_or(Level::Share(0.85))),
                "shares of the cgroup's memory limit",
            ),
            None => {
                if [self.baseline, self.near_limit]
                    .into_iter()
                    .flatten()
                    .any(Level::needs_limit)
                {
                    return Err("a threshold given as a share of the limit needs a limit: give sizes (--baseline 200Mi --near-limit 400Mi), growth (--near-limit +150Mi) or a time (--pair-after 60s)".into());
                }
                let near = match (self.near_limit, timed) {
                    (Some(l), _) => Some(l),
                    (None, Some(_)) => None,
                    (None, None) => Some(Level::GROWN),
                };
                let why = if self.baseline.is_none() && self.near_limit.is_none() && timed.is_none()
                {
                    "no memory limit: the default, on the process's RSS"
                } else {
                    "no memory limit: on the process's RSS"
                };
                (self.baseline.unwrap_or(Level::NOW), near, why)
            }
        };
        match (baseline, near_limit) {
            (Level::Growth { .. }, _) => {
                return Err(
                    "--baseline cannot be a growth (+SIZE): that is for --near-limit".into(),
                )
            }
            (Level::Share(a), Some(Level::Share(b))) if !(0.0 < a && a < b && b <= 1.0) => {
                return Err("need 0% < --baseline < --near-limit <= 100%".into())
            }
            (Level::Bytes(a), Some(Level::Bytes(b))) if a >= b => {
                return Err("--baseline must be below --near-limit".into())
            }
            _ => {}
        }
        Ok((
            Thresholds {
                baseline,
                near_limit,
                pair_after: timed,
                cooldown_secs: f64::INFINITY,
            },
            why,
        ))
    }
}

#[derive(Debug, Clone)]
pub struct HuntOptions {
    pub target: Target,
    pub memory_limit: Option<u64>,
    pub levels: Levels,
    pub interval: Duration,
    pub window: Duration,
    pub snapshot_dir: PathBuf,
    pub max_snapshot_size: u64,
    pub keep_snapshots: bool,
    pub report: Option<PathBuf>,
    pub cgroup_root: PathBuf,
    /// Parent (relative to the memory hierarchy) of the cgroups created for commands.
    pub cgroup_parent: String,
    pub proc_root: PathBuf,
    pub kernel_log: Option<PathBuf>,
    pub until: Until,
    pub duration: Option<Duration>,
    pub progress: bool,
}

/// Errors before hunting could start: nothing was captured, no report is written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error("cannot start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the snapshot directory {path}")]
    SnapshotDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the memory cgroup {path} of pid {pid} has no limit: {message}")]
    NoLimit {
        pid: i32,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Thresholds(String),
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: i32 },
    #[error("process {pid} belongs to uid {uid}: snapshots of another user's process need root or CAP_SYS_PTRACE")]
    NotPermitted { pid: i32, uid: u32 },
}

/// Why a hunt that ran did not complete. The report is still written and says what was captured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("the process exited before snapshot B ({0})")]
    ExitedBeforeB(String),
    #[error("capture failed: {0}")]
    Capture(String),
    #[error("analysis failed: {0}")]
    Analysis(String),
    #[error("interrupted")]
    Interrupted,
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::ExitedBeforeB(_) => 4,
            Failure::Capture(_) | Failure::Analysis(_) => 5,
            Failure::Interrupted => 130,
        }
    }
}

/// An OOM kill as the hunt saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillEvent {
    pub kill: OomKill,
    pub time: Timestamp,
    /// The process the snapshots were (being) taken of.
    pub was_target: bool,
}

/// A snapshot as taken.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotTaken {
    pub role: Role,
    pub pid: i32,
    pub comm: String,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub working_set: u64,
    /// When the sample that called for it was read (seconds since the epoch).
    pub at: f64,
}

/// What a hunt did.
#[derive(Debug, Clone)]
pub struct HuntOutcome {
    pub report: LeakReport,
    pub findings: Option<Findings>,
    pub kills: Vec<KillEvent>,
    /// Every snapshot taken, including baselines voided by a restart.
    pub snapshots: Vec<SnapshotTaken>,
    pub failure: Option<Failure>,
    /// The command's exit status, when it ran one and it exited.
    pub exit_status: Option<ExitStatus>,
    /// From the sample that crossed the near-limit threshold to the printed report.
    pub b_to_report: Option<Duration>,
    /// Mean and max time one sample took.
    pub sample_cost: (Duration, Duration),
    pub samples: u64,
    pub elapsed: Duration,
}

/// Removes the cgroup (SIGKILLing what is left in it) when the hunt ends, however it ends.
/// The parent goes too when no other hunt uses it.
struct CgroupGuard(Option<Cgroup>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            if let Err(e) = cg.kill_and_remove(Duration::from_secs(5)) {
                eprintln!("leakhunt: cleaning up cgroup {}: {e}", cg.dir.display());
            }
            if let Some(parent) = cg.dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// Kills and reaps the command if it is still running when the hunt ends.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stderr progress: one rewritten line on a terminal, plain lines otherwise.
struct Progress {
    enabled: bool,
    tty: bool,
    pending: bool,
}

impl Progress {
    fn line(&mut self, text: &str) {
        if !self.enabled {
            return;
        }
        let mut err = io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{text}");
            self.pending = true;
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    fn event(&mut self, text: &str) {
        let mut err = io::stderr().lock();
        if self.pending {
            let _ = write!(err, "\r\x1b[2K");
            self.pending = false;
        }
        let _ = writeln!(err, "leakhunt: {text}");
    }
}

struct Hunt<'a> {
    opts: &'a HuntOptions,
    snap: &'a dyn Snapshotter,
    report: LeakReport,
    node: String,
    limit: Option<u64>,
    thresholds: Thresholds,
    /// `--pid`: the process (and its children) ended.
    target_gone: bool,
    baseline: Option<SnapshotTaken>,
    after: Option<SnapshotTaken>,
    outcome_snapshots: Vec<SnapshotTaken>,
    findings: Option<Findings>,
    failure: Option<Failure>,
    kills: Vec<KillEvent>,
    analysed_at: Option<Instant>,
    kill_after_analysis: bool,
    peak_working_set: u64,
    b_to_report: Option<Duration>,
    progress: Progress,
    main_pid: i32,
    main_comm: Option<String>,
    /// The working-set timeline (seconds since the epoch), decimated as it grows: the
    /// verdict's evidence beside the heap diff, and of a hunt without snapshots.
    history: Vec<Point>,
    /// A diff waiting for the timeline to tell a one-time step from growth.
    judging: Option<Judging>,
    /// Seconds since the epoch at the watcher's zero: the timeline runs on the monotonic
    /// clock (a clock step must not fake a plateau), labelled with wall time.
    clock0: f64,
}

/// Findings of a snapshot pair, before the timeline has had its say.
struct Judging {
    findings: Findings,
    crossed: Instant,
    a: SnapshotTaken,
    b: SnapshotTaken,
    announced: bool,
}

/// Past the settle time, how long a step's verdict may still wait for its samples.
const SETTLE_SLACK: Duration = Duration::from_secs(15);

/// Points kept in the hunt's timeline.
const HISTORY_POINTS: usize = 4096;

/// Runs a hunt. `out` gets the printed report; `cancel` ends the hunt early (Ctrl-C).
pub fn run(
    opts: &HuntOptions,
    snap: &dyn Snapshotter,
    out: &mut dyn Write,
    cancel: &AtomicBool,
) -> Result<HuntOutcome, Error> {
    let started = Instant::now();
    let hierarchy = Hierarchy::detect(&opts.cgroup_root)?;
    snapshot::prepare_dir(&opts.snapshot_dir).map_err(|source| Error::SnapshotDir {
        path: opts.snapshot_dir.clone(),
        source,
    })?;

    let mut cgroup_guard = CgroupGuard(None);
    let mut child_guard = ChildGuard(None);
    let (cgroup, main_pid, command_line) = match &opts.target {
        Target::Command(argv) => {
            let name = format!(
                "{}/hunt-{}",
                opts.cgroup_parent.trim_matches('/'),
                std::process::id()
            );
            let cg = hierarchy.create(&name)?;
            cgroup_guard.0 = Some(cg.clone());
            if let Some(limit) = opts.memory_limit {
                cg.set_limit(limit)?;
            }
            let command_line = argv.join(" ");
            // The child moves itself into the cgroup before exec, so everything the command
            // allocates is charged there. Its own process group keeps Ctrl-C for us.
            let child = Command::new("/bin/sh")
                .arg("-c")
                .arg(r#"echo $$ > "$0" && exec "$@""#)
                .arg(cg.dir.join("cgroup.procs"))
                .args(argv)
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|source| Error::Spawn {
                    command: command_line.clone(),
                    source,
                })?;
            let pid = child.id() as i32;
            child_guard.0 = Some(child);
            (cg, pid, command_line)
        }
        Target::Pid(pid) => {
            if !opts.proc_root.join(pid.to_string()).exists() {
                return Err(Error::NoSuchProcess { pid: *pid });
            }
            check_permitted(&opts.proc_root, *pid)?;
            let cg = hierarchy.cgroup_of(&opts.proc_root, *pid)?;
            (
                cg,
                *pid,
                cmdline(&opts.proc_root, *pid).unwrap_or_else(|| format!("pid {pid}")),
            )
        }
    };

    let mut watcher = CgroupWatcher::new(
        cgroup.clone(),
        &opts.proc_root,
        opts.kernel_log.as_deref(),
        opts.window.as_secs_f64(),
    );
    if matches!(opts.target, Target::Pid(_)) {
        // The process and its children, not whatever else shares its cgroup (a session's, the
        // root's): they are who the snapshots are of.
        watcher.scope(main_pid);
    }
    // Give the child a moment to move itself in, then read the limit actually in force.
    let first = wait_for_first_sample(&mut watcher, &mut child_guard, main_pid)?;
    let limit = first.memory.limit;
    let (thresholds, why) = opts.levels.resolve(limit).map_err(|message| {
        if limit.is_none() {
            Error::NoLimit {
                pid: main_pid,
                path: cgroup.dir.clone(),
                message,
            }
        } else {
            Error::Thresholds(message)
        }
    })?;

    let comm = first
        .processes
        .iter()
        .find(|p| p.key.pid == main_pid)
        .map(|p| p.comm.clone());
    let name = output::report_name(comm.as_deref().unwrap_or("process"), main_pid);
    let comm = comm.filter(|c| c != "sh");
    let mut hunt = Hunt {
        opts,
        snap,
        report: output::new_report(&name, &command_line, None),
        node: hostname(),
        limit,
        thresholds,
        target_gone: false,
        baseline: None,
        after: None,
        outcome_snapshots: Vec::new(),
        findings: None,
        failure: None,
        kills: Vec::new(),
        analysed_at: None,
        kill_after_analysis: false,
        peak_working_set: 0,
        b_to_report: None,
        main_pid,
        main_comm: comm,
        history: Vec::new(),
        judging: None,
        clock0: Timestamp::now().as_millisecond() as f64 / 1e3 - first.t,
        progress: Progress {
            enabled: opts.progress,
            tty: io::stderr().is_terminal(),
            pending: false,
        },
    };
    hunt.status().memory.limit = limit.map(to_i64);
    let mut plan = thresholds.describe();
    if let Some(d) = opts.duration {
        plan.push_str(&format!(
            " (or at the end of --duration {})",
            human_secs(d.as_secs_f64())
        ));
    }
    hunt.status()
        .notes
        .push(format!("thresholds: {plan} ({why})"));
    // One line: a `python -c` script's command line has many.
    let shown: String = match command_line.split_once('\n') {
        Some((first, _)) => format!("{first} …"),
        None => command_line.clone(),
    }
    .chars()
    .take(200)
    .collect();
    hunt.progress.event(&format!(
        "watching `{shown}` (pid {main_pid}) in cgroup {} {} ({}), {}; {plan}{}",
        cgroup.version,
        cgroup.relative,
        cgroup.dir.display(),
        match limit {
            Some(l) => format!("limit {}", human_bytes(l)),
            None => "no limit".into(),
        },
        if watcher.reads_kernel_log() {
            ""
        } else {
            "; kernel log unreadable: killed processes are named from the cgroup's process list"
        },
    ));

    let mut machine = ThresholdMachine::new(thresholds);
    let mut exit_status = None;
    let mut cost_total = Duration::ZERO;
    let mut cost_max = Duration::ZERO;
    let mut samples = 0u64;
    let mut next_sample = Instant::now();
    let mut pending = Some(first);
    let mut interrupted = false;
    let mut duration_reached = false;

    loop {
        let sample = match pending.take() {
            Some(s) => s,
            None => {
                let t0 = Instant::now();
                let s = match watcher.sample() {
                    Ok(s) => s,
                    // The watched cgroup went away (pid mode: the container was deleted).
                    Err(_) if !cgroup.exists() => break,
                    Err(e) => {
                        // A diff already made is still reported, and the snapshots go.
                        hunt.conclude(out, true);
                        hunt.remove_snapshots();
                        return Err(e.into());
                    }
                };
                let cost = t0.elapsed();
                cost_total += cost;
                cost_max = cost_max.max(cost);
                samples += 1;
                s
            }
        };
        hunt.record_sample(&sample);
        if !sample.kills.is_empty() {
            // A kill while a step was being watched ends the watching: judge with what there is.
            hunt.conclude(out, true);
        }
        hunt.handle_kills(&sample, machine.state());
        hunt.conclude(out, false);

        // An empty cgroup is the end of the watch, not a restart: the command's own process
        // leaves cgroup.procs before it is reaped, and voiding A then would hide that it
        // exited before B. Nothing in it is judged either while the exit is slow to reap.
        let empty = sample.processes.is_empty();
        if empty {
            match child_guard.0.as_mut() {
                None => {
                    hunt.target_gone = true;
                    break;
                }
                Some(child) => {
                    if let Some(status) = reap_within(child, Duration::from_secs(5)) {
                        exit_status = Some(status);
                        child_guard.0 = None;
                        break;
                    }
                }
            }
        }

        let alive = sample.alive();
        let hunted = match machine.state() {
            State::Baseline { target, .. } => Some(target),
            _ => sample.grower,
        };
        let observation = Observation {
            now: sample.t,
            working_set: sample.memory.working_set(),
            limit: sample.memory.limit,
            oom_killed: !sample.kills.is_empty(),
            alive: &alive,
            grower: sample.grower,
            process_rss: hunted.and_then(|k| sample.process(k)).map(|p| p.rss),
        };
        let action = if empty {
            None
        } else {
            machine.observe(&observation)
        };
        match action {
            Some(Action::SnapshotA { target }) if !hunt.snapshot(Role::A, target, &sample) => {
                machine.give_up(sample.t);
            }
            Some(Action::SnapshotA { .. }) => {}
            Some(Action::SnapshotB { target }) => {
                let crossed = Instant::now();
                if hunt.snapshot(Role::B, target, &sample) {
                    hunt.analyse(out, crossed);
                }
            }
            Some(Action::Reset { target, reason }) => hunt.void_baseline(target, reason),
            None => {}
        }
        hunt.show_progress(&sample, machine.state());

        // Is the hunt over?
        if hunt.analysed_at.is_some()
            && (opts.until == Until::Report
                || (opts.until == Until::Oom && hunt.kill_after_analysis))
        {
            break;
        }
        if let Some(limit) = opts.duration {
            if started.elapsed() >= limit && !duration_reached {
                duration_reached = true;
                hunt.progress
                    .event(&format!("--duration {:?} reached", limit));
                hunt.end_of_watch(&mut machine, &sample, out);
            }
            // A verdict still watching a step gets its settle time (at most --window more).
            if duration_reached && hunt.judging.is_none() {
                break;
            }
        }

        // Sleep until the next sample, waking early for a command that exits or Ctrl-C.
        next_sample += opts.interval;
        let mut exited = false;
        while Instant::now() < next_sample {
            if cancel.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            if let Some(child) = child_guard.0.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exit_status = Some(status);
                    child_guard.0 = None;
                    exited = true;
                    break;
                }
            }
            std::thread::sleep(
                Duration::from_millis(20)
                    .min(next_sample.saturating_duration_since(Instant::now())),
            );
        }
        if interrupted {
            break;
        }
        if exited {
            break;
        }
        if next_sample < Instant::now() {
            next_sample = Instant::now();
        }
    }

    // One last look: kills while the analysis ran, or the kill that ended the command.
    if !interrupted {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(last) = watcher.sample() {
            hunt.record_sample(&last);
            hunt.handle_kills(&last, machine.state());
        }
    }
    hunt.conclude(out, true);
    if interrupted {
        hunt.failure.get_or_insert(Failure::Interrupted);
    } else if let Some(child) = child_guard.0.as_mut() {
        // The kill that ended the hunt may have been the command's own: let it be reaped (a
        // large process takes a while to exit under load; a live one is not waited for long).
        let own_kill = hunt.kills.iter().any(|k| k.kill.pid == Some(main_pid));
        let wait = Duration::from_millis(if own_kill { 5000 } else { 500 });
        if let Some(status) = reap_within(child, wait) {
            exit_status = Some(status);
            child_guard.0 = None;
        }
    }
    if let Some(status) = exit_status {
        hunt.progress.event(&format!(
            "`{shown}` (pid {main_pid}) {}",
            describe_exit(status)
        ));
    }
    hunt.finish(&machine, exit_status);
    if let Some(path) = &opts.report {
        if let Err(e) = output::write_yaml(&hunt.report, path) {
            hunt.progress.event(&format!(
                "cannot write the report to {}: {e}",
                path.display()
            ));
        } else {
            hunt.progress
                .event(&format!("LeakReport written to {}", path.display()));
        }
    }
    hunt.remove_snapshots();
    let _ = writeln!(out);
    hunt.write_summary(out);
    drop(child_guard);
    drop(cgroup_guard);

    let mean = if samples > 0 {
        cost_total / samples as u32
    } else {
        Duration::ZERO
    };
    hunt.progress.event(&format!(
        "{samples} samples in {:.0}s, {:.2} ms each on average ({:.2} ms at most)",
        started.elapsed().as_secs_f64(),
        mean.as_secs_f64() * 1e3,
        cost_max.as_secs_f64() * 1e3
    ));
    Ok(HuntOutcome {
        report: hunt.report,
        findings: hunt.findings,
        kills: hunt.kills,
        snapshots: hunt.outcome_snapshots,
        failure: hunt.failure,
        exit_status,
        b_to_report: hunt.b_to_report,
        sample_cost: (mean, cost_max),
        samples,
        elapsed: started.elapsed(),
    })
}

/// The command's exit status if it ends within `wait`.
fn reap_within(child: &mut Child, wait: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + wait;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// The first sample once the command is in its cgroup (or at once for `--pid`).
fn wait_for_first_sample(
    watcher: &mut CgroupWatcher,
    child: &mut ChildGuard,
    main_pid: i32,
) -> Result<Sample, Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sample = watcher.sample()?;
        let inside = sample.processes.iter().any(|p| p.key.pid == main_pid);
        let exited = child
            .0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if inside || exited || Instant::now() >= deadline {
            return Ok(sample);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Hunt<'_> {
    fn status(&mut self) -> &mut crate::crd::LeakReportStatus {
        self.report.status.get_or_insert_with(Default::default)
    }

    fn record_sample(&mut self, sample: &Sample) {
        // The command execs (sh → env → python): name the report after what finally runs.
        if let Some(p) = sample.processes.iter().find(|p| p.key.pid == self.main_pid) {
            if self.main_comm.as_deref() != Some(p.comm.as_str()) {
                self.main_comm = Some(p.comm.clone());
                self.report.metadata.name = Some(output::report_name(&p.comm, self.main_pid));
                self.report.spec.workload.display =
                    format!("Process/{} (pid {})", p.comm, self.main_pid);
            }
        }
        let ws = self.level(sample);
        self.peak_working_set = self.peak_working_set.max(ws);
        let now = Timestamp::now();
        let point = Point {
            t: self.clock0 + sample.t,
            bytes: ws,
        };
        timeline::push_decimated(&mut self.history, point, HISTORY_POINTS);
        let growth = sample.growth_per_sec;
        let eta = sample.seconds_to_oom;
        let status = self.status();
        status.push_sample(MemorySample {
            time: Time(now),
            working_set: to_i64(ws),
            pod: String::new(),
            container: String::new(),
        });
        status.memory.growth_per_minute = growth.map(|g| (g * 60.0) as i64);
        status.memory.predicted_oom_time = eta
            .and_then(|s| SignedDuration::try_from_secs_f64(s).ok())
            .and_then(|d| now.checked_add(d).ok())
            .map(Time);
    }

    fn handle_kills(&mut self, sample: &Sample, state: State) {
        let target = match state {
            State::Baseline { target, .. } => Some(target.pid),
            _ => self
                .after
                .as_ref()
                .or(self.baseline.as_ref())
                .map(|s| s.pid),
        };
        for kill in &sample.kills {
            let time = Timestamp::now();
            let label = kill.process_label();
            let how = match kill.source {
                KillSource::KernelLog => "named by the kernel log",
                KillSource::Disappeared => "the process that vanished from the cgroup",
                KillSource::Unknown => "the counter rose; no process could be named",
            };
            let rss = kill
                .last_rss
                .map(|r| format!(", last RSS {}", human_bytes(r)))
                .unwrap_or_default();
            let message = format!(
                "OOMKilled: {label} at {}{rss} ({how})",
                time.strftime("%H:%M:%S UTC")
            );
            self.progress.event(&message);
            let was_target = kill.pid.is_some() && kill.pid == target;
            if self.analysed_at.is_some() {
                self.kill_after_analysis = true;
            }
            self.kills.push(KillEvent {
                kill: kill.clone(),
                time,
                was_target,
            });
            let status = self.status();
            status.oom_kills += 1;
            status.last_oom_kill = Some(crate::crd::OomKillRecord {
                pod: String::new(),
                container: String::new(),
                process: label.clone(),
                time: Time(time),
            });
            status.push_incident(Incident {
                time: Time(time),
                reason: Reason::OomKilled.into(),
                message,
            });
        }
        if !sample.kills.is_empty() {
            self.write_report();
        }
    }

    /// Takes snapshot A or B of `target`; false if it was skipped or failed.
    fn snapshot(&mut self, role: Role, target: ProcessKey, sample: &Sample) -> bool {
        let pid = target.pid;
        let comm = sample
            .process(target)
            .map(|p| p.comm.clone())
            .unwrap_or_default();
        let ws = self.level(sample);
        let at = self.of_limit(ws);
        let cap = snapshot::Cap {
            bytes: self.opts.max_snapshot_size,
            name: "--max-snapshot-size",
        };
        let why_skip = snapshot::preflight(self.snap, pid, &self.opts.snapshot_dir, cap)
            .err()
            .map(|r| r.to_string());
        if let Some(reason) = why_skip {
            let message = format!("snapshot {role} of {comm} (pid {pid}) skipped: {reason}");
            self.progress.event(&message);
            self.note(Reason::CaptureSkipped, &message);
            self.failure.get_or_insert(Failure::Capture(message));
            self.status().phase = Phase::Failed;
            self.write_report();
            return false;
        }
        let path = self.opts.snapshot_dir.join(format!(
            "leakhunt-{}-{pid}-{role}.core.zst",
            std::process::id()
        ));
        let result = self.snap.capture(pid, &path, self.opts.max_snapshot_size);
        let captured = match result {
            Ok(c) => c,
            Err(e) => {
                // Never leave a partial file behind.
                let _ = fs::remove_file(&path);
                let message = format!("snapshot {role} of {comm} (pid {pid}) at {at} failed: {e}");
                self.progress.event(&message);
                self.note(Reason::CaptureFailed, &message);
                self.failure.get_or_insert(Failure::Capture(e.to_string()));
                self.status().phase = Phase::Failed;
                self.write_report();
                return false;
            }
        };
        let _ = fs::set_permissions(&captured.path, fs::Permissions::from_mode(0o600));
        let sha256 = snapshot::sha256_file(&captured.path).unwrap_or_default();
        let message = format!(
            "snapshot {role} of {comm} (pid {pid}) at {at}: {} file, {} of memory, process stopped {:.2}s",
            human_bytes(captured.file_bytes),
            human_bytes(captured.memory_bytes),
            captured.stopped.as_secs_f64()
        );
        self.progress.event(&message);
        let taken = SnapshotTaken {
            role,
            pid,
            comm: comm.clone(),
            path: captured.path.clone(),
            file_bytes: captured.file_bytes,
            working_set: ws,
            at: self.history.last().map_or(0.0, |p| p.t),
        };
        self.outcome_snapshots.push(taken.clone());
        let record = SnapshotRecord {
            role: role.into(),
            node: self.node.clone(),
            time: Time(Timestamp::now()),
            size: to_i64(captured.file_bytes),
            sha256,
            path: Some(captured.path.display().to_string()),
            pid: pid as i64,
            pod: String::new(),
            container: String::new(),
            retain_until: None,
        };
        let command = crate::node::procs::program(&self.opts.proc_root, pid);
        let status = self.status();
        status.snapshots.retain(|s| !s.is(role));
        status.snapshots.push(record);
        status.process = Some(ProcessRef {
            pid: pid as i64,
            name: comm,
            command,
        });
        status.phase = if role == Role::A {
            Phase::Baseline
        } else {
            Phase::Analyzing
        };
        status.push_incident(Incident {
            time: Time(Timestamp::now()),
            reason: Reason::SnapshotTaken.into(),
            message,
        });
        if role == Role::A {
            self.baseline = Some(taken);
        } else {
            self.after = Some(taken);
        }
        self.write_report();
        true
    }

    fn analyse(&mut self, out: &mut dyn Write, crossed: Instant) {
        let (Some(a), Some(b)) = (self.baseline.clone(), self.after.clone()) else {
            return;
        };
        match self.snap.diff(&a.path, &b.path) {
            Ok(findings) => {
                self.judging = Some(Judging {
                    findings,
                    crossed,
                    a,
                    b,
                    announced: false,
                });
                self.conclude(out, false);
            }
            Err(e) => {
                let message = e.to_string();
                self.progress.event(&message);
                status::analysis_failed(self.status(), &message, Time(Timestamp::now()));
                self.failure.get_or_insert(Failure::Analysis(message));
                self.analysed_at = Some(Instant::now());
                self.write_report();
            }
        }
    }

    /// Weighs the diff waiting in `judging` against the timeline and reports it. A step too
    /// recent to tell from growth waits for more samples, unless this is the `last` chance.
    fn conclude(&mut self, out: &mut dyn Write, last: bool) {
        let Some(j) = self.judging.as_mut() else {
            return;
        };
        let settle = self.opts.window.as_secs_f64();
        let trend = timeline::judge(&self.history, j.a.at, j.b.at, settle);
        // Nothing to clear in a no-leak; and samples that never come do not hold the report.
        let wait = j.findings.verdict != FindingsVerdict::NoLeak
            && j.crossed.elapsed() < self.opts.window + SETTLE_SLACK;
        if matches!(trend, Trend::Pending { .. }) && !last && wait {
            if !j.announced {
                j.announced = true;
                if let Some(s) = trend.sentence() {
                    self.progress.event(&format!(
                        "{s}; watching up to {settle:.0} s more before the verdict"
                    ));
                }
            }
            return;
        }
        let Some(Judging {
            mut findings,
            crossed,
            a,
            b,
            ..
        }) = self.judging.take()
        else {
            return;
        };
        timeline::apply(&mut findings, trend);
        let _ = writeln!(
            out,
            "\nleakhunt report: {} (pid {}), snapshot A at {} and B at {}",
            b.comm,
            b.pid,
            self.of_limit(a.working_set),
            self.of_limit(b.working_set),
        );
        let _ = self.snap.write_text(&findings, out);
        let _ = out.flush();
        self.b_to_report = Some(crossed.elapsed());
        self.analysed_at = Some(Instant::now());
        status::analysed(self.status(), &findings, Time(Timestamp::now()));
        self.findings = Some(findings);
        self.progress.event(&format!(
            "analysed in {:.1}s after the near-limit crossing",
            self.b_to_report.unwrap_or_default().as_secs_f64()
        ));
        self.write_report();
    }

    fn void_baseline(&mut self, target: ProcessKey, reason: ResetReason) {
        let why = match reason {
            ResetReason::TargetGone => "the process is gone (killed or restarted)",
            ResetReason::OomKill => "an OOM kill in the cgroup",
        };
        let message = format!(
            "snapshot A of pid {} is void: {why}; hunting again in the process that grows",
            target.pid
        );
        self.progress.event(&message);
        if let Some(a) = self.baseline.take() {
            let _ = fs::remove_file(&a.path);
        }
        self.note(Reason::BaselineReset, &message);
        let status = self.status();
        status.snapshots.retain(|s| !s.is(Role::A));
        status.phase = Phase::Watching;
        // A capture failure earlier in this hunt no longer stands in the way of a verdict.
        if matches!(self.failure, Some(Failure::Capture(_))) {
            self.failure = None;
        }
        self.write_report();
    }

    /// `--duration` ran out: a pending B is taken now, whatever the level.
    fn end_of_watch(
        &mut self,
        machine: &mut ThresholdMachine,
        sample: &Sample,
        out: &mut dyn Write,
    ) {
        if let State::Baseline { target, .. } = machine.state() {
            if sample.alive().contains(&target) {
                self.progress
                    .event("taking snapshot B at the end of the watch");
                let crossed = Instant::now();
                // The pair is complete: the machine must not reset or take B again while the
                // verdict waits for its samples.
                machine.paired(sample.t);
                if self.snapshot(Role::B, target, sample) {
                    self.analyse(out, crossed);
                }
            }
        }
    }

    fn finish(&mut self, machine: &ThresholdMachine, exit_status: Option<ExitStatus>) {
        let peak = self.peak_working_set;
        let limit = self.limit;
        let peak_text = format!(
            "{} peaked at {}",
            if limit.is_some() {
                "working set"
            } else {
                "memory"
            },
            self.of_limit(peak)
        );
        if self.findings.is_none() && self.failure.is_none() {
            let ended = exit_status.is_some() || !self.kills.is_empty() || self.target_gone;
            match (self.baseline.is_some(), ended) {
                (true, true) => {
                    self.failure = Some(Failure::ExitedBeforeB(format!(
                        "snapshot A was taken, {peak_text}, before B ({})",
                        self.thresholds.describe()
                    )))
                }
                (false, true)
                    if self.kills.iter().any(|k| k.kill.pid.is_some())
                        || exit_status.is_some_and(|s| !s.success()) =>
                {
                    self.failure = Some(Failure::ExitedBeforeB(format!(
                        "no snapshot was taken, {peak_text}"
                    )))
                }
                _ => {}
            }
        }
        let state = machine.state();
        let interrupted = self.failure == Some(Failure::Interrupted);
        let failure = self.failure.clone();
        // Start-up allocation is not growth: judge the second half of the watch (by time: the
        // older samples are thinned).
        let growth = {
            let mut w = crate::node::GrowthWindow::new(f64::INFINITY, usize::MAX);
            let (t0, t1) = (
                self.history.first().map_or(0.0, |p| p.t),
                self.history.last().map_or(0.0, |p| p.t),
            );
            for p in self.history.iter().filter(|p| p.t >= (t0 + t1) / 2.0) {
                w.push(p.t, p.bytes);
            }
            w.rate().map(|r| (r * 60.0) as i64).unwrap_or(0)
        };
        let analysed = self.findings.is_some();
        // Flat: at this rate the limit is more than an hour away; without a limit, under
        // max(1 MiB, 1 % of the peak) a minute.
        let flat = match limit {
            Some(l) => {
                let headroom = l.saturating_sub(self.history.last().map_or(0, |p| p.bytes));
                (growth as f64) < headroom as f64 / 60.0
            }
            None => (growth as f64) < (1u64 << 20).max(peak / 100) as f64,
        };
        let captured = match (&self.baseline, &self.after) {
            (Some(a), None) => {
                format!("snapshot A of pid {} only; snapshot B was not taken", a.pid)
            }
            (None, None) => "no snapshot was taken".into(),
            _ => "snapshots taken but not analysed".into(),
        };
        let status = self.status();
        if !analysed {
            // No analysis: judge from the working set alone, and say what was captured.
            status.notes.push(format!("{captured}: {peak_text}"));
            status.verdict = Some(
                if failure.is_none() && flat && !interrupted && status.oom_kills == 0 {
                    Verdict::NoLeak
                } else {
                    Verdict::Inconclusive
                },
            );
            status.summary = Some(match &failure {
                Some(f) => format!("{f}; {peak_text}"),
                None if flat => format!("no growth: {peak_text}, {}/min", signed_bytes(growth)),
                None => format!(
                    "growing {}/min but no snapshot pair: {peak_text}",
                    signed_bytes(growth)
                ),
            });
            if status.phase != Phase::Failed {
                status.phase = if failure.is_some() {
                    Phase::Failed
                } else {
                    Phase::Watching
                };
            }
            if matches!(state, State::Baseline { .. }) {
                status.phase = if failure.is_some() {
                    Phase::Failed
                } else {
                    Phase::Baseline
                };
            }
        }
        if let Some(f) = &failure {
            let now = Time(Timestamp::now());
            status.set_condition(
                status::ANALYSED,
                false,
                "HuntIncomplete",
                &f.to_string(),
                now,
            );
        }
    }

    fn remove_snapshots(&mut self) {
        if self.opts.keep_snapshots {
            return;
        }
        for s in &self.outcome_snapshots {
            let _ = fs::remove_file(&s.path);
        }
        if let Some(status) = self.report.status.as_mut() {
            for s in &mut status.snapshots {
                s.path = None;
            }
        }
    }

    fn write_summary(&mut self, out: &mut dyn Write) {
        let status = self.report.status.clone().unwrap_or_default();
        let verdict = status
            .verdict
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "verdict:   {verdict}");
        if let Some(s) = &status.summary {
            let _ = writeln!(out, "summary:   {s}");
        }
        if let Some(p) = &status.process {
            let _ = writeln!(out, "process:   {} (pid {})", p.name, p.pid);
        }
        let _ = writeln!(out, "OOM kills: {}", status.oom_kills);
        for k in &self.kills {
            let _ = writeln!(
                out,
                "  OOMKilled {} at {}{}",
                k.kill.process_label(),
                k.time.strftime("%H:%M:%S UTC"),
                if k.was_target {
                    " (the snapshotted process)"
                } else {
                    ""
                }
            );
        }
        for n in &status.notes {
            let _ = writeln!(out, "note:      {n}");
        }
        if let Some(f) = &self.failure {
            let _ = writeln!(out, "incomplete: {f}");
        }
        let _ = out.flush();
    }

    fn note(&mut self, reason: Reason, message: &str) {
        let status = self.status();
        status.notes.push(message.to_string());
        status.push_incident(Incident {
            time: Time(Timestamp::now()),
            reason: reason.into(),
            message: message.into(),
        });
    }

    fn write_report(&mut self) {
        if let Some(path) = &self.opts.report {
            let _ = output::write_yaml(&self.report, path);
        }
    }

    fn show_progress(&mut self, sample: &Sample, state: State) {
        if !self.progress.enabled {
            return;
        }
        let ws = self.level(sample);
        let rate = sample
            .growth_per_sec
            .filter(|_| self.limit.is_some())
            .map(|r| format!("{}/s", signed_bytes(r as i64)))
            .unwrap_or_else(|| "  ?".into());
        let eta = sample
            .seconds_to_oom
            .map(|s| format!("OOM in ~{:.0}s", s))
            .unwrap_or_else(|| "no OOM predicted".into());
        let top = sample
            .grower
            .and_then(|k| sample.process(k))
            .map(|p| format!("{} (pid {}) {}", p.comm, p.key.pid, human_bytes(p.rss)))
            .unwrap_or_default();
        let phase = match state {
            State::Idle => "",
            State::Baseline { .. } => " [A]",
            State::Done { analysed: true, .. } => " [A,B]",
            State::Done { .. } => " [stopped]",
        };
        let level = self.of_limit(ws);
        self.progress.line(&format!(
            "[{:5.0}s] {level}  {rate}  {eta}  grows: {top}{phase}",
            sample.t
        ));
    }

    /// What the hunt measures: the cgroup's working set under a limit, else the RSS of the
    /// processes hunted (`--pid` and its children).
    fn level(&self, sample: &Sample) -> u64 {
        match self.limit {
            Some(_) => sample.memory.working_set(),
            None => sample.processes.iter().map(|p| p.rss).sum(),
        }
    }

    /// `48MiB (75% of 64MiB)`, or `48MiB RSS` without a limit.
    fn of_limit(&self, bytes: u64) -> String {
        match self.limit {
            Some(l) => format!(
                "{} ({:.0}% of {})",
                human_bytes(bytes),
                100.0 * bytes as f64 / l.max(1) as f64,
                human_bytes(l)
            ),
            None => format!("{} RSS", human_bytes(bytes)),
        }
    }
}

/// Refuses a process of another user unless we may read its memory (root or CAP_SYS_PTRACE):
/// said at the start rather than as a failed capture at 50 %.
fn check_permitted(proc_root: &Path, pid: i32) -> Result<(), Error> {
    let field = |path: PathBuf, key: &str| -> Option<String> {
        fs::read_to_string(path)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    };
    let Some(uid) = field(proc_root.join(format!("{pid}/status")), "Uid:")
        .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
    else {
        return Ok(());
    };
    let me = nix::unistd::geteuid().as_raw();
    // CAP_SYS_PTRACE is bit 19 of the effective set.
    let ptrace = field(PathBuf::from("/proc/self/status"), "CapEff:")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|caps| caps & (1 << 19) != 0);
    if me == 0 || me == uid || ptrace {
        Ok(())
    } else {
        Err(Error::NotPermitted { pid, uid })
    }
}

fn human_secs(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0}s")
    } else {
        format!("{:.0}m", secs / 60.0)
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(9)) => "was killed (SIGKILL)".into(),
        (_, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".into(),
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
