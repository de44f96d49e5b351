//! `leakhunt hunt`: the whole hunt on one host. Start a command in a fresh memory cgroup (or
//! watch a running process's cgroup), sample it, take snapshot A at the baseline threshold and B
//! near the limit of the process that grows, diff them, and report OOM kills as they happen.
//!
//! The decisions are the node library's ([`crate::node`]), so the agent hunts the same way.
//! `run` is the loop; [`steps`] what a sample sets off, [`finish`] the end, [`target`] the
//! process hunted.

pub mod cli;
mod finish;
pub mod output;
mod progress;

mod steps;
mod target;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use leakhunt_analyzer::findings::Findings;
use leakhunt_analyzer::timeline::Point;

use crate::crd::{human_bytes, LeakReport};
use crate::node::cgroup::{self, Hierarchy};
use crate::node::threshold::{Action, Level, State, ThresholdMachine, Thresholds};
use crate::node::{CgroupWatcher, OomKill, Sample};
use crate::sites;
use crate::snapshot::{self, Snapshotter};
use crate::status::{self, Role};
use crate::units::to_i64;
use progress::Progress;
use target::{describe_exit, hostname, reap_within, wait_for_first_sample, Launched};

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
    /// The report as an HTML page too.
    pub html: Option<PathBuf>,
    pub cgroup_root: PathBuf,
    /// Parent (relative to the memory hierarchy) of the cgroups created for commands.
    pub cgroup_parent: String,
    pub proc_root: PathBuf,
    pub kernel_log: Option<PathBuf>,
    pub until: Until,
    pub duration: Option<Duration>,
    pub progress: bool,
    /// CPython 3.14+: run leakhunt's tracemalloc scripts in the target from A on (PEP 768).
    pub allocation_sites: bool,
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
    /// A JVM's pools at snapshot A, for what grew outside its heap by B.
    jvm_at_a: Option<leakhunt_analyzer::jvm::perf::JvmStats>,
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
    /// `--allocation-sites`: tracemalloc in the target, and what it said before the verdict.
    tracer: sites::Tracer,
    site_notes: Vec<String>,
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
    let mut launched = target::launch(opts, &hierarchy)?;
    let mut watcher = launched.watcher(opts);
    // Give the child a moment to move itself in, then read the limit actually in force.
    let first = wait_for_first_sample(&mut watcher, &mut launched.child, launched.main_pid)?;
    let mut hunt = Hunt::begin(opts, snap, &launched, &first)?;
    hunt.announce(&launched, &watcher);
    let mut watch = Watch::new(hunt.thresholds, first);
    while let Some(sample) = watch.next_sample(&mut hunt, &mut watcher, &launched, out)? {
        if watch.step(&mut hunt, &sample, &mut launched, out, started) == Flow::Stop {
            break;
        }
        if watch.wait(&mut launched, opts.interval, cancel) == Flow::Stop {
            break;
        }
    }
    Ok(watch.wrap_up(hunt, &mut watcher, launched, out, started))
}

/// Whether the sampling loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// The sampling loop's own state: the threshold machine, the command's exit, sampling costs.
struct Watch {
    machine: ThresholdMachine,
    exit_status: Option<ExitStatus>,
    cost_total: Duration,
    cost_max: Duration,
    samples: u64,
    next_sample: Instant,
    /// The sample read before the loop (the first), used first.
    pending: Option<Sample>,
    interrupted: bool,
    duration_reached: bool,
}

impl Watch {
    fn new(thresholds: Thresholds, first: Sample) -> Watch {
        Watch {
            machine: ThresholdMachine::new(thresholds),
            exit_status: None,
            cost_total: Duration::ZERO,
            cost_max: Duration::ZERO,
            samples: 0,
            next_sample: Instant::now(),
            pending: Some(first),
            interrupted: false,
            duration_reached: false,
        }
    }

    /// The next sample, or none when the watched cgroup went away (`--pid`: the container
    /// was deleted). A failed read is the hunt's end, after reporting a diff already made.
    fn next_sample(
        &mut self,
        hunt: &mut Hunt,
        watcher: &mut CgroupWatcher,
        launched: &Launched,
        out: &mut dyn Write,
    ) -> Result<Option<Sample>, Error> {
        if let Some(s) = self.pending.take() {
            return Ok(Some(s));
        }
        let t0 = Instant::now();
        let s = match watcher.sample() {
            Ok(s) => s,
            Err(_) if !launched.cgroup.exists() => return Ok(None),
            Err(e) => {
                hunt.conclude(out, true);
                hunt.remove_snapshots();
                return Err(e.into());
            }
        };
        let cost = t0.elapsed();
        self.cost_total += cost;
        self.cost_max = self.cost_max.max(cost);
        self.samples += 1;
        Ok(Some(s))
    }

    /// One sample's work: record it, count its kills, let the threshold machine act, and say
    /// whether the hunt is over.
    fn step(
        &mut self,
        hunt: &mut Hunt,
        sample: &Sample,
        launched: &mut Launched,
        out: &mut dyn Write,
        started: Instant,
    ) -> Flow {
        hunt.record_sample(sample);
        hunt.poll_tracer();
        if !sample.kills.is_empty() {
            // A kill while a step was being watched ends the watching: judge with what there is.
            hunt.conclude(out, true);
        }
        hunt.handle_kills(sample, self.machine.state());
        hunt.conclude(out, false);

        // An empty cgroup is the end of the watch, not a restart: the command's own process
        // leaves cgroup.procs before it is reaped, and voiding A then would hide that it
        // exited before B. Nothing in it is judged either while the exit is slow to reap.
        let empty = sample.processes.is_empty();
        if empty {
            match launched.child.0.as_mut() {
                None => {
                    hunt.target_gone = true;
                    return Flow::Stop;
                }
                Some(child) => {
                    if let Some(status) = reap_within(child, Duration::from_secs(5)) {
                        self.exit_status = Some(status);
                        launched.child.0 = None;
                        return Flow::Stop;
                    }
                }
            }
        } else {
            self.act(hunt, sample, out);
        }
        hunt.show_progress(sample, self.machine.state());
        self.over(hunt, sample, out, started)
    }

    /// What the threshold machine calls for at this sample: snapshot A, B (and the diff), or
    /// voiding A.
    fn act(&mut self, hunt: &mut Hunt, sample: &Sample, out: &mut dyn Write) {
        let alive = sample.alive();
        let hunted = match self.machine.state() {
            State::Baseline { target, .. } => Some(target),
            _ => sample.grower,
        };
        let rss = hunted.and_then(|k| sample.process(k)).map(|p| p.rss);
        let observation = sample.observation_of(&alive, hunted, rss);
        match self.machine.observe(&observation) {
            Some(Action::SnapshotA { target }) if !hunt.snapshot(Role::A, target, sample) => {
                self.machine.give_up(sample.t);
            }
            Some(Action::SnapshotA { .. }) => {}
            Some(Action::SnapshotB { target }) => {
                let crossed = Instant::now();
                if hunt.snapshot(Role::B, target, sample) {
                    hunt.analyse(out, crossed);
                }
            }
            Some(Action::Reset { target, reason }) => hunt.void_baseline(target, reason),
            None => {}
        }
    }

    /// Is the hunt over: analysed (`--until report`, or `oom` and a kill came since), or
    /// `--duration` ran out and no verdict is still waiting for its samples?
    fn over(
        &mut self,
        hunt: &mut Hunt,
        sample: &Sample,
        out: &mut dyn Write,
        started: Instant,
    ) -> Flow {
        let opts = hunt.opts;
        if hunt.analysed_at.is_some()
            && (opts.until == Until::Report
                || (opts.until == Until::Oom && hunt.kill_after_analysis))
        {
            return Flow::Stop;
        }
        if let Some(limit) = opts.duration {
            if started.elapsed() >= limit && !self.duration_reached {
                self.duration_reached = true;
                hunt.progress
                    .event(&format!("--duration {:?} reached", limit));
                hunt.end_of_watch(&mut self.machine, sample, out);
            }
            // A verdict still watching a step gets its settle time (at most --window more).
            if self.duration_reached && hunt.judging.is_none() {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Sleeps until the next sample, waking early for a command that exits or Ctrl-C.
    fn wait(&mut self, launched: &mut Launched, interval: Duration, cancel: &AtomicBool) -> Flow {
        self.next_sample += interval;
        while Instant::now() < self.next_sample {
            if cancel.load(Ordering::Relaxed) {
                self.interrupted = true;
                return Flow::Stop;
            }
            if let Some(child) = launched.child.0.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit_status = Some(status);
                    launched.child.0 = None;
                    return Flow::Stop;
                }
            }
            std::thread::sleep(
                Duration::from_millis(20)
                    .min(self.next_sample.saturating_duration_since(Instant::now())),
            );
        }
        if self.next_sample < Instant::now() {
            self.next_sample = Instant::now();
        }
        Flow::Continue
    }

    /// The end: a last look for kills, the command reaped, the verdict without a diff, the
    /// report written, the snapshots removed, the summary printed, the cgroup removed.
    fn wrap_up(
        mut self,
        mut hunt: Hunt,
        watcher: &mut CgroupWatcher,
        mut launched: Launched,
        out: &mut dyn Write,
        started: Instant,
    ) -> HuntOutcome {
        let main_pid = launched.main_pid;
        // One last look: kills while the analysis ran, or the kill that ended the command.
        if !self.interrupted {
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(last) = watcher.sample() {
                hunt.record_sample(&last);
                hunt.handle_kills(&last, self.machine.state());
            }
        }
        hunt.conclude(out, true);
        // No verdict came to read the sites for: the target is left as it was.
        hunt.tracer.stop();
        if self.interrupted {
            hunt.failure.get_or_insert(Failure::Interrupted);
        } else if let Some(child) = launched.child.0.as_mut() {
            // The kill that ended the hunt may have been the command's own: let it be reaped (a
            // large process takes a while to exit under load; a live one is not waited for long).
            let own_kill = hunt.kills.iter().any(|k| k.kill.pid == Some(main_pid));
            let wait = Duration::from_millis(if own_kill { 5000 } else { 500 });
            if let Some(status) = reap_within(child, wait) {
                self.exit_status = Some(status);
                launched.child.0 = None;
            }
        }
        if let Some(status) = self.exit_status {
            hunt.progress.event(&format!(
                "`{}` (pid {main_pid}) {}",
                launched.shown(),
                describe_exit(status)
            ));
        }
        hunt.finish(&self.machine, self.exit_status);
        if let Some(path) = &hunt.opts.report {
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
        drop(launched);

        let mean = if self.samples > 0 {
            self.cost_total / self.samples as u32
        } else {
            Duration::ZERO
        };
        hunt.progress.event(&format!(
            "{} samples in {:.0}s, {:.2} ms each on average ({:.2} ms at most)",
            self.samples,
            started.elapsed().as_secs_f64(),
            mean.as_secs_f64() * 1e3,
            self.cost_max.as_secs_f64() * 1e3
        ));
        HuntOutcome {
            report: hunt.report,
            findings: hunt.findings,
            kills: hunt.kills,
            snapshots: hunt.outcome_snapshots,
            failure: hunt.failure,
            exit_status: self.exit_status,
            b_to_report: hunt.b_to_report,
            sample_cost: (mean, self.cost_max),
            samples: self.samples,
            elapsed: started.elapsed(),
        }
    }
}

impl<'a> Hunt<'a> {
    /// The hunt's state once the first sample has shown the limit in force: the thresholds
    /// resolved against it, the report named after the process.
    fn begin(
        opts: &'a HuntOptions,
        snap: &'a dyn Snapshotter,
        launched: &Launched,
        first: &Sample,
    ) -> Result<Hunt<'a>, Error> {
        let main_pid = launched.main_pid;
        let limit = first.memory.limit;
        let (thresholds, why) = opts.levels.resolve(limit).map_err(|message| {
            if limit.is_none() {
                Error::NoLimit {
                    pid: main_pid,
                    path: launched.cgroup.dir.clone(),
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
            report: output::new_report(&name, &launched.command_line, None),
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
            jvm_at_a: None,
            b_to_report: None,
            main_pid,
            main_comm: comm,
            history: Vec::new(),
            judging: None,
            clock0: Timestamp::now().as_millisecond() as f64 / 1e3 - first.t,
            tracer: sites::Tracer::Off,
            site_notes: Vec::new(),
            progress: Progress {
                enabled: opts.progress,
                tty: io::stderr().is_terminal(),
                pending: false,
            },
        };
        hunt.status().memory.limit = limit.map(to_i64);
        let plan = hunt.plan();
        hunt.status()
            .notes
            .push(format!("thresholds: {plan} ({why})"));
        Ok(hunt)
    }

    /// The thresholds in words, with `--duration`'s end.
    fn plan(&self) -> String {
        let mut plan = self.thresholds.describe();
        if let Some(d) = self.opts.duration {
            plan.push_str(&format!(
                " (or at the end of --duration {})",
                human_secs(d.as_secs_f64())
            ));
        }
        plan
    }

    /// The first line of progress: what is watched, where, under which limit, and the plan.
    fn announce(&mut self, launched: &Launched, watcher: &CgroupWatcher) {
        let cgroup = &launched.cgroup;
        let message = format!(
            "watching `{}` (pid {}) in cgroup {} {} ({}), {}; {}{}",
            launched.shown(),
            launched.main_pid,
            cgroup.version,
            cgroup.relative,
            cgroup.dir.display(),
            match self.limit {
                Some(l) => format!("limit {}", human_bytes(l)),
                None => "no limit".into(),
            },
            self.plan(),
            if watcher.reads_kernel_log() {
                ""
            } else {
                "; kernel log unreadable: killed processes are named from the cgroup's process list"
            },
        );
        self.progress.event(&message);
    }

    fn status(&mut self) -> &mut crate::crd::LeakReportStatus {
        self.report.status.get_or_insert_with(Default::default)
    }

    /// Applies a status op as the agent's writer does; a hunt's report has no pod.
    fn apply(&mut self, op: &status::Op) {
        status::apply(op, self.status(), "", "", Timestamp::now());
    }

    fn write_report(&mut self) {
        if let Some(path) = &self.opts.report {
            let _ = output::write_yaml(&self.report, path);
        }
        if let Some(path) = &self.opts.html {
            let _ = output::write_html(&self.report, path);
        }
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

fn human_secs(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0}s")
    } else {
        format!("{:.0}m", secs / 60.0)
    }
}
