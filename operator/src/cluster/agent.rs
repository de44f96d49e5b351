//! `leakhunt agent`: the node DaemonSet. Every interval it samples the memory cgroup of every
//! container of the pods on its node (the node library: v1/v2, cgroupfs/systemd layouts), counts
//! OOM kills of worker processes in containers that survive them, and for pods a LeakWatch
//! selects (or annotated `leakhunt.dev/capture: "true"`) takes snapshot A at the baseline
//! threshold and B near the limit, recording both in the workload's LeakReport.
//!
//! Sampling never waits for the API server: report writes go through a queue to one writer task,
//! captures run on blocking threads. The capture's memory is the agent's own (its cgroup), not
//! the pod's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::ListParams;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use super::operator::NOT_CAPTURED;
use super::reports::{self, new_report};
use super::selector;
use super::workload::{self, ApiLookup};
use crate::crd::{
    Incident, LeakReport, LeakReportStatus, LeakWatch, LeakWatchSpec, MemorySample, Phase,
    ProcessRef, SnapshotRecord,
};
use crate::hunt::cli::{parse_duration, parse_size};
use crate::hunt::snapshot::{Analyzer, Snapshotter};
use crate::metrics::{CaptureOutcome, Metrics};
use crate::node::threshold::{Action, Observation};
use crate::node::{
    kubelet, CgroupWatcher, Hierarchy, OomKill, ProcessKey, Sample, ThresholdMachine, Thresholds,
};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub cgroup_root: PathBuf,
    pub proc_root: PathBuf,
    pub snapshot_dir: PathBuf,
    pub interval: Duration,
    /// Default size cap of one snapshot file.
    pub max_snapshot_size: u64,
    /// Defaults for pods opted in by annotation; a LeakWatch overrides them.
    pub thresholds: Thresholds,
    /// How often memory samples are written into an opted-in workload's report.
    pub report_interval: Duration,
    /// Record Events where no LeakWatch overrides it (the chart's `alerts.events`).
    pub events: bool,
    /// `/dev/kmsg` to name killed processes; `None`: named from the vanished PID.
    pub kernel_log: Option<PathBuf>,
}

/// A hunt that started this long ago and never got its B no longer blocks other pods.
const CLAIM_STALE: Duration = Duration::from_secs(1800);

/// After a refused snapshot A, the pod's containers do not capture again for this long.
const REFUSAL_BACKOFF: Duration = Duration::from_secs(60);

/// How the hunt of one container is configured, from its LeakWatch or the annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub thresholds: Thresholds,
    pub max_snapshot_size: u64,
    pub keep_snapshots: Option<Duration>,
    /// Record CaptureFailed/CaptureSkipped Events on the pod.
    pub events: bool,
}

/// What is wrong with a LeakWatch spec, if anything (also shown in its `Valid` condition).
pub fn watch_problems(spec: &LeakWatchSpec) -> Option<String> {
    let mut problems = Vec::new();
    let t = &spec.thresholds;
    if !(1..=99).contains(&t.baseline) || !(1..=99).contains(&t.near_limit) {
        problems.push("thresholds must be percentages between 1 and 99".to_string());
    }
    if t.baseline >= t.near_limit {
        problems.push(format!(
            "thresholds.baseline ({}%) must be below thresholds.nearLimit ({}%)",
            t.baseline, t.near_limit
        ));
    }
    if let Err(e) = parse_duration(&spec.cooldown) {
        problems.push(format!("cooldown: {e}"));
    }
    if let Err(e) = parse_size(&spec.max_snapshot_size) {
        problems.push(format!("maxSnapshotSize: {e}"));
    }
    if let Some(ttl) = spec.retention.snapshot_ttl.as_deref() {
        if let Err(e) = parse_duration(ttl) {
            problems.push(format!("retention.snapshotTtl: {e}"));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// The policy a valid LeakWatch sets (Events as `events` unless it overrides them); `None` for
/// an invalid one (it selects nothing).
pub fn policy_of(spec: &LeakWatchSpec, events: bool) -> Option<Policy> {
    if watch_problems(spec).is_some() {
        return None;
    }
    let keep = spec.retention.keep_snapshots.then(|| {
        spec.retention
            .snapshot_ttl
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(Duration::from_secs(86_400))
    });
    Some(Policy {
        thresholds: Thresholds::shares(
            f64::from(spec.thresholds.baseline) / 100.0,
            f64::from(spec.thresholds.near_limit) / 100.0,
            parse_duration(&spec.cooldown).ok()?.as_secs_f64(),
        ),
        max_snapshot_size: parse_size(&spec.max_snapshot_size).ok()?,
        keep_snapshots: keep,
        events: spec
            .alerts
            .as_ref()
            .and_then(|a| a.events)
            .unwrap_or(events),
    })
}

/// A pod's capture policy: the first valid LeakWatch (by name) in its namespace that selects it
/// and names its container (or none), else the annotation with the agent's defaults, else none.
pub fn policy_for(
    pod: &Pod,
    container: &str,
    watches: &[Arc<LeakWatch>],
    cfg: &AgentConfig,
) -> Option<Policy> {
    let ns = pod.namespace().unwrap_or_default();
    let chosen = select_watch(
        watches.iter().map(|w| w.as_ref()),
        &ns,
        pod.labels(),
        Some(container),
    );
    if let Some(p) = chosen.and_then(|w| policy_of(&w.spec, cfg.events)) {
        return Some(p);
    }
    workload::capture_annotated(pod).then_some(Policy {
        thresholds: cfg.thresholds,
        max_snapshot_size: cfg.max_snapshot_size,
        keep_snapshots: None,
        events: cfg.events,
    })
}

/// The LeakWatch that governs pods with these labels (and this container, when known): among the
/// valid ones in the namespace that select them, the first by name. The agent's capture policy and
/// the operator's alert routing both use it, so they never disagree.
pub fn select_watch<'a>(
    watches: impl IntoIterator<Item = &'a LeakWatch>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    container: Option<&str>,
) -> Option<&'a LeakWatch> {
    watches
        .into_iter()
        .filter(|w| w.namespace().as_deref() == Some(namespace))
        .filter(|w| match (w.spec.container.as_deref(), container) {
            (Some(want), Some(c)) => want == c,
            _ => true,
        })
        .filter(|w| selector::matches(&w.spec.selector, labels))
        .filter(|w| watch_problems(&w.spec).is_none())
        .min_by_key(|w| w.name_any())
}

/// A change to a report, made by the writer task.
#[derive(Debug, Clone)]
pub enum Op {
    Sample {
        /// When it was read (the write may come later).
        time: Timestamp,
        working_set: i64,
        limit: Option<i64>,
        growth_per_sec: Option<f64>,
        seconds_to_oom: Option<f64>,
    },
    SnapshotA {
        record: SnapshotRecord,
        process: ProcessRef,
        cooldown: Duration,
    },
    SnapshotB {
        record: SnapshotRecord,
        /// The container's working set a sample per interval up to B: the timeline the
        /// analyzer Job weighs the diff against (the periodic samples are too sparse for it).
        timeline: Vec<MemorySample>,
    },
    /// Snapshot A is void (its process is gone, or an OOM kill came between).
    Reset { message: String },
    CaptureFailed {
        role: char,
        skipped: bool,
        message: String,
    },
    /// A process killed in a container that lives on: counted here, announced by the operator.
    WorkerKill { key: String, process: String },
}

/// What applying an op did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Changed,
    /// Snapshot A was refused: another pod of the workload is being hunted, or the workload's
    /// last analysis is within the cooldown.
    Refused,
}

/// Applies one op to a status: the agent's status building, pure and unit-tested.
pub fn apply(
    op: &Op,
    s: &mut LeakReportStatus,
    pod: &str,
    container: &str,
    now: Timestamp,
) -> Applied {
    let t = Time(now);
    match op {
        Op::Sample {
            time,
            working_set,
            limit,
            growth_per_sec,
            seconds_to_oom,
        } => {
            s.push_sample(MemorySample {
                time: Time(*time),
                working_set: *working_set,
                pod: pod.into(),
                container: container.into(),
            });
            if limit.is_some() {
                s.memory.limit = *limit;
            }
            s.memory.growth_per_minute = growth_per_sec.map(|g| (g * 60.0) as i64);
            s.memory.predicted_oom_time = seconds_to_oom
                .filter(|secs| secs.is_finite() && *secs >= 0.0 && *secs < 1e9)
                .map(|secs| Time(now + SignedDuration::from_secs_f64(secs)));
            Applied::Changed
        }
        Op::SnapshotA {
            record,
            process,
            cooldown,
        } => {
            // One hunt per workload at a time, and none within the cooldown of the last pair:
            // per-container state restarts with every container, the report does not.
            let age = |role: &str| {
                s.snapshots
                    .iter()
                    .find(|r| r.role == role)
                    .map(|r| now.duration_since(r.time.0).as_secs_f64())
            };
            let a_other_pod = s.snapshots.iter().any(|r| r.role == "A" && r.pod != pod);
            let stale = CLAIM_STALE.as_secs_f64();
            let claimed_by_other = match s.phase {
                Phase::Baseline => a_other_pod && age("A").is_some_and(|a| a < stale),
                Phase::Analyzing => age("B").is_some_and(|b| b < stale),
                _ => false,
            };
            let in_cooldown = matches!(s.phase, Phase::Analysed | Phase::Failed)
                && age("B").is_some_and(|b| b < cooldown.as_secs_f64());
            if claimed_by_other || in_cooldown {
                return Applied::Refused;
            }
            s.phase = Phase::Baseline;
            s.snapshots = vec![record.clone()];
            s.process = Some(process.clone());
            s.analysis_job = None;
            s.verdict = None;
            s.summary = None;
            s.growth = None;
            s.timeline = None;
            s.suspects.clear();
            s.types.clear();
            s.notes.retain(|n| !n.starts_with(NOT_CAPTURED));
            s.set_condition(
                "Captured",
                false,
                "Baseline",
                &format!(
                    "snapshot A of {} taken; waiting for the near-limit threshold",
                    process.name
                ),
                t.clone(),
            );
            s.push_incident(Incident {
                time: t,
                reason: "SnapshotTaken".into(),
                message: format!(
                    "snapshot A of {} (pid {}) in {pod}/{container}: {}",
                    process.name,
                    process.pid,
                    crate::crd::human_bytes(record.size.max(0) as u64)
                ),
            });
            Applied::Changed
        }
        Op::SnapshotB { record, timeline } => {
            let ours = s.phase == Phase::Baseline
                && s.snapshots
                    .iter()
                    .any(|r| r.role == "A" && r.pod == record.pod && r.pid == record.pid);
            if !ours {
                return Applied::Refused;
            }
            s.snapshots.retain(|r| r.role == "A");
            s.snapshots.push(record.clone());
            s.phase = Phase::Analyzing;
            // This container's sparse samples give way to its dense timeline, thinned to the bound.
            s.memory
                .samples
                .retain(|m| !(m.pod == pod && m.container == container));
            for m in timeline {
                s.push_sample(m.clone());
            }
            s.set_condition(
                "Captured",
                true,
                "PairTaken",
                "snapshots A and B taken",
                t.clone(),
            );
            s.push_incident(Incident {
                time: t,
                reason: "SnapshotTaken".into(),
                message: format!(
                    "snapshot B of pid {} in {pod}/{container} near the limit: {}",
                    record.pid,
                    crate::crd::human_bytes(record.size.max(0) as u64)
                ),
            });
            Applied::Changed
        }
        Op::Reset { message } => {
            if s.phase != Phase::Baseline || !s.snapshots.iter().any(|r| r.pod == pod) {
                return Applied::Unchanged;
            }
            s.phase = Phase::Watching;
            s.snapshots.clear();
            s.set_condition("Captured", false, "BaselineVoid", message, t.clone());
            s.push_incident(Incident {
                time: t,
                reason: "CaptureSkipped".into(),
                message: message.clone(),
            });
            Applied::Changed
        }
        Op::CaptureFailed {
            role,
            skipped,
            message,
        } => {
            let reason = if *skipped {
                "CaptureSkipped"
            } else {
                "CaptureFailed"
            };
            if *role == 'B' && s.phase == Phase::Baseline {
                s.phase = Phase::Failed;
            }
            s.set_condition("Captured", false, reason, message, t.clone());
            s.push_incident(Incident {
                time: t,
                reason: reason.into(),
                message: format!("snapshot {role} of {pod}/{container}: {message}"),
            });
            Applied::Changed
        }
        Op::WorkerKill { key, process } => {
            let record = crate::crd::OomKillRecord {
                pod: pod.into(),
                container: container.into(),
                process: process.clone(),
                time: t,
            };
            if s.count_kill(key, record.clone(), record.worker_message()) {
                crate::crd::push_bounded(
                    &mut s.unannounced_kills,
                    record,
                    crate::crd::MAX_INCIDENTS,
                );
                Applied::Changed
            } else {
                Applied::Unchanged
            }
        }
    }
}

/// One queued write.
struct Write {
    pod: Arc<Pod>,
    container: String,
    container_id: String,
    op: Op,
}

/// Answers from the writer to the sampling loop.
enum Feedback {
    /// Snapshot A was refused: give up this hunt and delete the file.
    Refused {
        container_id: String,
        pod_uid: String,
        path: PathBuf,
    },
}

struct Capture {
    role: char,
    target: ProcessKey,
    result: Result<(SnapshotRecord, Duration), (bool, String)>,
}

/// State of one container's cgroup.
struct Tracked {
    pod: Arc<Pod>,
    container: String,
    watcher: CgroupWatcher,
    machine: ThresholdMachine,
    policy: Option<Policy>,
    last_write: Option<Instant>,
    capturing: Option<tokio::task::JoinHandle<Capture>>,
    snapshot_a: Option<PathBuf>,
    /// Time of the last sample, on the watcher's clock.
    last_t: f64,
    /// OOM kills not yet judged a worker's or the container's own.
    suspected_kills: Vec<Suspect>,
    /// Every sample's working set, thinned as it grows; sent with snapshot B.
    timeline: Vec<MemorySample>,
}

/// Points in a container's timeline kept by the agent (a sample a second: the last two
/// minutes dense, the hours before thinned).
const TIMELINE_POINTS: usize = 240;

pub struct Agent {
    client: Client,
    cfg: AgentConfig,
    metrics: Metrics,
    recorder: Recorder,
}

impl Agent {
    pub fn new(client: Client, cfg: AgentConfig, metrics: Metrics) -> Agent {
        let reporter = Reporter {
            controller: "leakhunt-agent".into(),
            instance: Some(cfg.node_name.clone()),
        };
        Agent {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            cfg,
            metrics,
        }
    }

    /// Runs until `shutdown`; `ready` is called once the first full sampling pass is done.
    pub async fn run(
        self,
        ready: impl Fn() + Send + 'static,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let hierarchy = Hierarchy::detect(&self.cfg.cgroup_root)?;
        tracing::info!(node = %self.cfg.node_name, hierarchy = %hierarchy.path.display(), version = %hierarchy.version, "agent starting");
        crate::hunt::prepare_snapshot_dir(&self.cfg.snapshot_dir).map_err(|e| {
            anyhow::anyhow!(
                "snapshot directory {}: {e}",
                self.cfg.snapshot_dir.display()
            )
        })?;

        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let (pods, pod_writer) = reflector::store();
        let pod_stream = reflector::reflector(
            pod_writer,
            watcher(
                pods_api,
                watcher::Config::default().fields(&format!("spec.nodeName={}", self.cfg.node_name)),
            )
            .default_backoff(),
        )
        .for_each(|_| futures::future::ready(()));
        let watch_api: Api<LeakWatch> = Api::all(self.client.clone());
        let (watches, watch_writer) = reflector::store();
        let watch_stream = reflector::reflector(
            watch_writer,
            watcher(watch_api, watcher::Config::default()).default_backoff(),
        )
        .for_each(|_| futures::future::ready(()));
        tokio::spawn(pod_stream);
        tokio::spawn(watch_stream);
        pods.wait_until_ready()
            .await
            .map_err(|e| anyhow::anyhow!("pod cache: {e}"))?;
        watches
            .wait_until_ready()
            .await
            .map_err(|e| anyhow::anyhow!("LeakWatch cache: {e}"))?;

        let (write_tx, write_rx) = mpsc::channel::<Write>(1024);
        let (feedback_tx, mut feedback_rx) = mpsc::channel::<Feedback>(256);
        let writer = tokio::spawn(writer(
            self.client.clone(),
            self.metrics.clone(),
            write_rx,
            feedback_tx,
            self.cfg.node_name.clone(),
        ));
        let cleaner = tokio::spawn(clean_snapshots(
            self.client.clone(),
            self.cfg.clone(),
            pods.clone(),
        ));

        let mut tracked: HashMap<String, Tracked> = HashMap::new();
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut first = true;
        let mut blocked: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            while let Ok(fb) = feedback_rx.try_recv() {
                match fb {
                    Feedback::Refused {
                        container_id,
                        pod_uid,
                        path,
                    } => {
                        let _ = std::fs::remove_file(&path);
                        // The pod's next containers need not capture just to be refused again.
                        blocked.insert(pod_uid, Instant::now() + REFUSAL_BACKOFF);
                        if let Some(t) = tracked.get_mut(&container_id) {
                            t.machine.give_up(t.last_t);
                            t.snapshot_a = None;
                        }
                    }
                }
            }
            blocked.retain(|_, until| *until > Instant::now());
            self.pass(
                &hierarchy,
                &pods,
                &watches,
                &mut tracked,
                &write_tx,
                &blocked,
            )
            .await;
            if first {
                ready();
                first = false;
            }
        }
        drop(write_tx);
        cleaner.abort();
        let _ = writer.await;
        Ok(())
    }

    /// One sampling pass over every container cgroup on the node.
    async fn pass(
        &self,
        hierarchy: &Hierarchy,
        pods: &Store<Pod>,
        watches: &Store<LeakWatch>,
        tracked: &mut HashMap<String, Tracked>,
        writes: &mpsc::Sender<Write>,
        blocked: &HashMap<String, Instant>,
    ) {
        let by_container = containers_on_node(&pods.state());
        let watch_list = watches.state();
        let cgroups = kubelet::discover(hierarchy);
        let present: HashSet<String> = cgroups
            .iter()
            .filter_map(|(p, _)| p.container_id.clone())
            .collect();
        // A container that is gone (OOM-killed, restarted, deleted) voids its pending snapshot A.
        let mut gone = Vec::new();
        tracked.retain(|id, t| {
            let keep = present.contains(id);
            if !keep {
                // Kills judged with what the kill's sample showed: the container is gone now.
                for s in std::mem::take(&mut t.suspected_kills) {
                    if judge(&s, None) == Judgement::Worker {
                        gone.push(Write {
                            pod: t.pod.clone(),
                            container: t.container.clone(),
                            container_id: id.clone(),
                            op: Op::WorkerKill {
                                key: s.key,
                                process: s.kill.process_label(),
                            },
                        });
                    }
                }
                if let Some(path) = t.snapshot_a.take() {
                    let _ = std::fs::remove_file(path);
                    gone.push(Write {
                        pod: t.pod.clone(),
                        container: t.container.clone(),
                        container_id: id.clone(),
                        op: Op::Reset {
                            message: format!(
                                "snapshot A is void: container {} of pod {} ended before snapshot B",
                                t.container,
                                t.pod.name_any()
                            ),
                        },
                    });
                }
            }
            keep
        });
        for w in gone {
            let _ = writes.send(w).await;
        }
        for (pod_cgroup, cgroup) in cgroups {
            let Some(id) = pod_cgroup.container_id.clone() else {
                continue;
            };
            let Some((pod, container)) = by_container.get(&id) else {
                continue;
            };
            let t = tracked.entry(id.clone()).or_insert_with(|| Tracked {
                pod: pod.clone(),
                container: container.clone(),
                watcher: CgroupWatcher::new(
                    cgroup,
                    &self.cfg.proc_root,
                    self.cfg.kernel_log.as_deref(),
                    30.0,
                ),
                machine: ThresholdMachine::new(self.cfg.thresholds),
                policy: None,
                last_write: None,
                suspected_kills: Vec::new(),
                capturing: None,
                snapshot_a: None,
                last_t: 0.0,
                timeline: Vec::new(),
            });
            t.pod = pod.clone();
            let policy = policy_for(pod, container, &watch_list, &self.cfg);
            if policy != t.policy {
                if let Some(p) = &policy {
                    t.machine.thresholds = p.thresholds;
                }
                t.policy = policy;
            }
            let sample = match t.watcher.sample() {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, container = %id, "sample");
                    continue;
                }
            };
            t.last_t = sample.t;
            leakhunt_analyzer::timeline::push_decimated(
                &mut t.timeline,
                MemorySample {
                    time: Time(Timestamp::now()),
                    working_set: i64::try_from(sample.memory.working_set()).unwrap_or(i64::MAX),
                    pod: t.pod.name_any(),
                    container: t.container.clone(),
                },
                TIMELINE_POINTS,
            );
            let hunt_blocked = blocked.contains_key(&pod.uid().unwrap_or_default());
            self.on_sample(&id, t, &sample, writes, hunt_blocked).await;
        }
        self.metrics.set_watched_pods(tracked.len());
    }

    async fn on_sample(
        &self,
        id: &str,
        t: &mut Tracked,
        sample: &Sample,
        writes: &mpsc::Sender<Write>,
        hunt_blocked: bool,
    ) {
        let queue = |op: Op| Write {
            pod: t.pod.clone(),
            container: t.container.clone(),
            container_id: id.to_string(),
            op,
        };
        // Kills of processes in a container that lives on (workers): the container's own death
        // is the kubelet's to report, and the operator counts it from the pod status.
        let now: Vec<i32> = sample.processes.iter().map(|p| p.key.pid).collect();
        if !sample.kills.is_empty() {
            // With memory.oom.group (cgroup v2, set by recent kubelets) the kernel kills the
            // whole container at once: never a worker's kill.
            let oom_group = std::fs::read_to_string(t.watcher.cgroup.dir.join("memory.oom.group"))
                .is_ok_and(|v| v.trim() == "1");
            let victims: Vec<i32> = sample.kills.iter().filter_map(|k| k.pid).collect();
            let total = sample.memory.oom_kills;
            let n = sample.kills.len() as u64;
            for (i, kill) in sample.kills.iter().enumerate() {
                // The cgroup's own counter numbers its kills: unique even when the victim was
                // too short-lived to be named.
                let key = format!(
                    "{}/{}/{id}/oom-{}",
                    t.pod.uid().unwrap_or_default(),
                    t.container,
                    total.saturating_sub(n - 1 - i as u64)
                );
                t.suspected_kills.push(Suspect {
                    key,
                    kill: kill.clone(),
                    listed: now.clone(),
                    victims: victims.clone(),
                    oom_group,
                    waited: 0,
                });
            }
        }
        let mut undecided = Vec::new();
        for mut s in std::mem::take(&mut t.suspected_kills) {
            match judge(&s, Some(&now)) {
                Judgement::Worker => {
                    let process = s.kill.process_label();
                    tracing::info!(pod = %t.pod.name_any(), container = %t.container, %process, "worker process OOM-killed; the container lives on");
                    // Awaited, not tried: this op is the kill's only record.
                    let _ = writes
                        .send(queue(Op::WorkerKill {
                            key: s.key,
                            process,
                        }))
                        .await;
                }
                Judgement::Container => {}
                Judgement::Undecided => {
                    s.waited += 1;
                    undecided.push(s);
                }
            }
        }
        t.suspected_kills = undecided;
        let Some(policy) = t.policy.clone() else {
            return;
        };
        // The first sample also makes the writer create the report; one that was dropped (queue
        // full, API down) is simply sent again an interval later.
        if t.last_write
            .is_none_or(|w| w.elapsed() >= self.cfg.report_interval)
        {
            t.last_write = Some(Instant::now());
            let _ = writes.try_send(queue(sample_op(sample)));
        }

        // A capture in flight: collect it when done; no new decision meanwhile.
        if let Some(handle) = t.capturing.as_ref() {
            if !handle.is_finished() {
                return;
            }
            let Some(handle) = t.capturing.take() else {
                return;
            };
            let Ok(done) = handle.await else { return };
            self.captured(id, t, done, &policy, writes, sample).await;
            return;
        }
        let alive = sample.alive();
        let obs = Observation {
            now: sample.t,
            working_set: sample.memory.working_set(),
            limit: sample.memory.limit,
            oom_killed: !sample.kills.is_empty(),
            alive: &alive,
            grower: sample.grower,
            // Containers are hunted at shares of their limit only.
            process_rss: None,
        };
        match t.machine.observe(&obs) {
            Some(Action::SnapshotA { .. }) if hunt_blocked => t.machine.give_up(sample.t),
            Some(Action::SnapshotA { target }) => self.start_capture(id, t, 'A', target, &policy),
            Some(Action::SnapshotB { target }) => self.start_capture(id, t, 'B', target, &policy),
            Some(Action::Reset { target, reason }) => {
                if let Some(path) = t.snapshot_a.take() {
                    let _ = std::fs::remove_file(path);
                }
                let message = format!(
                    "snapshot A of pid {} is void ({}); hunting starts over",
                    target.pid,
                    match reason {
                        crate::node::threshold::ResetReason::TargetGone =>
                            "the process exited or was OOM-killed",
                        crate::node::threshold::ResetReason::OomKill =>
                            "an OOM kill happened in the container",
                    }
                );
                let _ = writes.try_send(queue(Op::Reset { message }));
            }
            None => {}
        }
    }

    fn start_capture(
        &self,
        id: &str,
        t: &mut Tracked,
        role: char,
        target: ProcessKey,
        policy: &Policy,
    ) {
        let ns = t.pod.namespace().unwrap_or_default();
        let dir = self.cfg.snapshot_dir.join(&ns).join(t.pod.name_any());
        let stamp = Timestamp::now().as_millisecond();
        // A retained snapshot carries its deadline in its name: the cleaner keeps it until then even
        // when a later hunt has replaced its record.
        let keep_until = policy.keep_snapshots.map(|k| {
            Timestamp::now()
                .as_second()
                .saturating_add(k.as_secs() as i64)
        });
        let keep = keep_until.map(|u| format!(".keep-{u}")).unwrap_or_default();
        let path = dir.join(format!("{}-{role}-{stamp}{keep}.core.zst", t.container));
        let node = self.cfg.node_name.clone();
        let pod = t.pod.name_any();
        let container = t.container.clone();
        let max = policy.max_snapshot_size;
        let keep = policy.keep_snapshots;
        tracing::info!(container = %id, pod = %pod, role = %role, pid = target.pid, "capturing");
        t.capturing = Some(tokio::task::spawn_blocking(move || {
            // The snapshot is of the memory as the capture began: the timeline is read so.
            let began = Timestamp::now();
            let result = capture_one(&dir, &path, target.pid, max).map(|(size, sha, took)| {
                (
                    SnapshotRecord {
                        role: role.to_string(),
                        node,
                        time: Time(began),
                        size,
                        sha256: sha,
                        path: Some(path.display().to_string()),
                        pid: i64::from(target.pid),
                        pod,
                        container,
                        retain_until: keep.map(|k| {
                            Time(Timestamp::now() + SignedDuration::try_from(k).unwrap_or_default())
                        }),
                    },
                    took,
                )
            });
            Capture {
                role,
                target,
                result,
            }
        }));
    }

    async fn captured(
        &self,
        id: &str,
        t: &mut Tracked,
        done: Capture,
        policy: &Policy,
        writes: &mpsc::Sender<Write>,
        sample: &Sample,
    ) {
        let queue = |op: Op| Write {
            pod: t.pod.clone(),
            container: t.container.clone(),
            container_id: id.to_string(),
            op,
        };
        let role = done.role;
        match done.result {
            Ok((record, took)) => {
                self.metrics
                    .capture(&role.to_string(), took, CaptureOutcome::Ok);
                let op = if role == 'A' {
                    t.snapshot_a = record.path.clone().map(PathBuf::from);
                    let name = sample
                        .process(done.target)
                        .map(|p| p.comm.clone())
                        .unwrap_or_else(|| "?".into());
                    Op::SnapshotA {
                        process: ProcessRef {
                            pid: i64::from(done.target.pid),
                            name,
                            // The program only: arguments may hold secrets (passwords,
                            // DSNs), and the report is readable by whoever may list reports.
                            command: crate::node::procs::cmdline(
                                &self.cfg.proc_root,
                                done.target.pid,
                            )
                            .and_then(|c| {
                                c.split_whitespace()
                                    .next()
                                    .map(|p| p.chars().take(256).collect())
                            }),
                        },
                        record,
                        cooldown: Duration::from_secs_f64(policy.thresholds.cooldown_secs),
                    }
                } else {
                    t.snapshot_a = None;
                    Op::SnapshotB {
                        record,
                        timeline: t.timeline.clone(),
                    }
                };
                let _ = writes.send(queue(op)).await;
            }
            Err((skipped, message)) => {
                let outcome = if skipped {
                    CaptureOutcome::Skipped
                } else {
                    CaptureOutcome::Failed
                };
                self.metrics
                    .capture(&role.to_string(), Duration::ZERO, outcome);
                tracing::warn!(container = %id, role = %role, %message, "capture failed");
                t.machine.give_up(sample.t);
                if let Some(path) = t.snapshot_a.take() {
                    let _ = std::fs::remove_file(path);
                }
                let reason = if skipped {
                    "CaptureSkipped"
                } else {
                    "CaptureFailed"
                };
                if t.policy.as_ref().is_some_and(|p| p.events) {
                    let ev = Event {
                        type_: EventType::Warning,
                        reason: reason.into(),
                        note: Some(format!(
                            "snapshot {role} of container {}: {message}",
                            t.container
                        )),
                        action: "Capture".into(),
                        secondary: None,
                    };
                    if let Err(e) = self.recorder.publish(&ev, &t.pod.object_ref(&())).await {
                        tracing::warn!(error = %e, "event not recorded");
                    }
                }
                let _ = writes
                    .send(queue(Op::CaptureFailed {
                        role,
                        skipped,
                        message,
                    }))
                    .await;
            }
        }
    }
}

/// Captures `pid` into `path` (0600, zstd, in a 0700 directory). `Err((skipped, message))`:
/// skipped when over the size cap or the free disk.
fn capture_one(
    dir: &Path,
    path: &Path,
    pid: i32,
    max: u64,
) -> Result<(i64, String, Duration), (bool, String)> {
    let analyzer = Analyzer;
    let estimate = analyzer
        .estimate_size(pid)
        .map_err(|e| (false, e.to_string()))?;
    if estimate > max {
        return Err((
            true,
            format!(
                "the process maps {} that a snapshot would hold, over the {} cap",
                crate::crd::human_bytes(estimate),
                crate::crd::human_bytes(max)
            ),
        ));
    }
    crate::hunt::prepare_snapshot_dir(dir)
        .map_err(|e| (false, format!("snapshot directory {}: {e}", dir.display())))?;
    if let Some(free) = crate::hunt::free_bytes(dir) {
        // zstd usually shrinks a heap several times; without room for the raw size, skip rather
        // than fill the node's disk.
        if free < estimate {
            return Err((
                true,
                format!(
                    "{} free on the snapshot volume, {} needed at worst",
                    crate::crd::human_bytes(free),
                    crate::crd::human_bytes(estimate)
                ),
            ));
        }
    }
    let captured = analyzer
        .capture(pid, path, max)
        .map_err(|e| (false, e.to_string()))?;
    let sha = crate::hunt::report::sha256_file(&captured.path)
        .map_err(|e| (false, format!("hashing {}: {e}", path.display())))?;
    Ok((
        i64::try_from(captured.file_bytes).unwrap_or(i64::MAX),
        sha,
        captured.total,
    ))
}

fn sample_op(sample: &Sample) -> Op {
    Op::Sample {
        time: Timestamp::now(),
        working_set: i64::try_from(sample.memory.working_set()).unwrap_or(i64::MAX),
        limit: sample.memory.limit.and_then(|l| i64::try_from(l).ok()),
        growth_per_sec: sample.growth_per_sec,
        seconds_to_oom: sample.seconds_to_oom,
    }
}

/// Container ID (without the runtime prefix) → (pod, container name), for running containers.
fn containers_on_node(pods: &[Arc<Pod>]) -> HashMap<String, (Arc<Pod>, String)> {
    let mut map = HashMap::new();
    for pod in pods {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        for cs in statuses.into_iter().flatten() {
            let Some(id) = cs.container_id.as_deref() else {
                continue;
            };
            let id = id.split_once("://").map(|(_, i)| i).unwrap_or(id);
            if !id.is_empty() {
                map.insert(id.to_string(), (pod.clone(), cs.name.clone()));
            }
        }
    }
    map
}

/// An OOM kill in a container, until it is judged a worker's (counted by the agent) or the
/// container's own (the kubelet reports that one, and the operator counts it from the pod status).
#[derive(Debug, Clone)]
struct Suspect {
    key: String,
    kill: OomKill,
    /// PIDs listed in the sample that saw the kill.
    listed: Vec<i32>,
    /// The named victims of that sample's kills.
    victims: Vec<i32>,
    /// The cgroup kills as a group (`memory.oom.group`).
    oom_group: bool,
    /// Samples that could not decide yet.
    waited: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judgement {
    Worker,
    Container,
    Undecided,
}

/// After this many samples with the victim still listed, it is judged as things stand.
const SUSPECT_SAMPLES: u32 = 5;

/// Whether a kill was a worker's: once its victim has left the cgroup (a killed process stays
/// listed while it exits), some process other than that sample's victims must still be there.
/// `now`: the PIDs listed now, `None` once the container is gone.
fn judge(s: &Suspect, now: Option<&[i32]>) -> Judgement {
    if s.oom_group {
        return Judgement::Container;
    }
    let Some(now) = now else {
        // Gone before a later sample: a named victim with others beside it was a worker.
        let others = s.listed.iter().any(|p| !s.victims.contains(p));
        return if s.kill.pid.is_some() && others {
            Judgement::Worker
        } else {
            Judgement::Container
        };
    };
    let victim_gone = match s.kill.pid {
        Some(pid) => !now.contains(&pid),
        // Unnamed: some process of the kill's sample has gone since.
        None => s.listed.iter().any(|p| !now.contains(p)),
    };
    if !victim_gone && s.waited < SUSPECT_SAMPLES {
        return Judgement::Undecided;
    }
    let lives_on = now
        .iter()
        .any(|p| !s.victims.contains(p) && Some(*p) != s.kill.pid);
    if lives_on {
        Judgement::Worker
    } else {
        Judgement::Container
    }
}

/// The writer task: resolves the workload, makes sure its report exists, applies ops in order.
async fn writer(
    client: Client,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Write>,
    feedback: mpsc::Sender<Feedback>,
    node: String,
) {
    let lookup = ApiLookup::new(client.clone());
    let mut ensured: HashSet<String> = HashSet::new();
    while let Some(w) = rx.recv().await {
        let namespace = w.pod.namespace().unwrap_or_default();
        // A transient API error is retried a few times; a capture's op must not be lost to one.
        let mut resolved = None;
        for attempt in 0..4u64 {
            match workload::resolve(&lookup, &w.pod).await {
                Ok(wl) => {
                    resolved = Some(wl);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, pod = %w.pod.name_any(), "owner lookup failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
                }
            }
        }
        let Some(wl) = resolved else {
            tracing::warn!(pod = %w.pod.name_any(), "workload unknown; op dropped");
            continue;
        };
        let name = workload::report_name(&wl);
        let key = format!("{namespace}/{name}");
        let api: Api<LeakReport> = Api::namespaced(client.clone(), &namespace);
        let pod_name = w.pod.name_any();
        let mut outcome = Applied::Unchanged;
        let mut result = Ok(None);
        // A worker kill's op is its only record: an API error is retried for about half a
        // minute. (Samples come again anyway; capture ops keep their order.)
        let attempts = if matches!(w.op, Op::WorkerKill { .. }) {
            5
        } else {
            1
        };
        for attempt in 0..attempts {
            if attempt > 0 {
                ensured.remove(&key);
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
            // Twice at most: a report deleted under us (its workload re-created under the same
            // name) is created again, once.
            for _ in 0..2 {
                if !ensured.contains(&key) {
                    match reports::ensure(&client, new_report(&namespace, &wl, Some(&w.container)))
                        .await
                    {
                        Ok(_) => {
                            if ensured.len() > 10_000 {
                                ensured.clear();
                            }
                            ensured.insert(key.clone());
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let mut ran = false;
                result = reports::update_status(&api, &name, |s| {
                    ran = true;
                    outcome = apply(&w.op, s, &pod_name, &w.container, Timestamp::now());
                    outcome == Applied::Changed
                })
                .await;
                if ran || result.is_err() {
                    break;
                }
                ensured.remove(&key);
            }
            if result.is_ok() {
                break;
            }
        }
        match result {
            Err(e) => {
                tracing::warn!(error = %e, report = %key, "status write failed");
                ensured.remove(&key);
            }
            Ok(Some(_)) => {
                if let Op::SnapshotB { .. } = &w.op {
                    tracing::info!(report = %key, node = %node, "snapshot pair recorded; analysis requested");
                }
                // Its Events and alerts are the operator's (status.unannouncedKills), which
                // knows the alert routing.
                if let Op::WorkerKill { .. } = &w.op {
                    metrics.oom_kill(&namespace, &wl.display);
                }
            }
            Ok(None) => {}
        }
        if outcome == Applied::Refused {
            if let Op::SnapshotA { record, .. } = &w.op {
                tracing::info!(report = %key, pod = %pod_name, "snapshot A refused: the workload is hunted elsewhere or cooling down");
                let _ = feedback
                    .send(Feedback::Refused {
                        container_id: w.container_id.clone(),
                        pod_uid: w.pod.uid().unwrap_or_default(),
                        path: record.path.clone().map(PathBuf::from).unwrap_or_default(),
                    })
                    .await;
            }
        }
    }
}

/// Deletes snapshot files no report still needs: every file under the snapshot directory that
/// no report on this node references while its pair is pending (Baseline, Analyzing) or retained.
/// Records of deleted files lose their path. Young unreferenced files are left a grace period:
/// their record may be on its way.
async fn clean_snapshots(client: Client, cfg: AgentConfig, pods: Store<Pod>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let api: Api<LeakReport> = Api::all(client.clone());
        let Ok(list) = api.list(&ListParams::default()).await else {
            continue;
        };
        let now_ts = Timestamp::now();
        let mut needed: HashSet<String> = HashSet::new();
        let mut stale: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for r in &list.items {
            let Some(s) = r.status.as_ref() else { continue };
            for rec in s.snapshots.iter().filter(|x| x.node == cfg.node_name) {
                let Some(path) = rec.path.clone() else {
                    continue;
                };
                let pending = matches!(s.phase, Phase::Baseline | Phase::Analyzing);
                let retained = rec.retain_until.as_ref().is_some_and(|u| u.0 > now_ts);
                if pending || retained {
                    needed.insert(path);
                } else {
                    stale
                        .entry((r.namespace().unwrap_or_default(), r.name_any()))
                        .or_default()
                        .push(path);
                }
            }
        }
        let live: HashSet<(String, String)> = pods
            .state()
            .iter()
            .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        for file in snapshot_files(&cfg.snapshot_dir, &live) {
            let key = file.display().to_string();
            if needed.contains(&key) || retained_by_name(&file, now_ts.as_second()) {
                continue;
            }
            let referenced = stale.values().any(|v| v.contains(&key));
            let young = std::fs::metadata(&file)
                .and_then(|m| m.modified())
                .map(|m| m.elapsed().unwrap_or_default() < Duration::from_secs(120))
                .unwrap_or(false);
            if referenced || !young {
                match std::fs::remove_file(&file) {
                    Ok(()) => tracing::info!(file = %key, "snapshot deleted"),
                    Err(e) => tracing::warn!(error = %e, file = %key, "snapshot not deleted"),
                }
            }
        }
        for ((ns, name), paths) in stale {
            let api: Api<LeakReport> = Api::namespaced(client.clone(), &ns);
            let _ = reports::update_status(&api, &name, |s| {
                let mut changed = false;
                for rec in s.snapshots.iter_mut() {
                    if rec.path.as_ref().is_some_and(|p| paths.contains(p))
                        && !Path::new(rec.path.as_deref().unwrap_or_default()).exists()
                    {
                        rec.path = None;
                        changed = true;
                    }
                }
                changed
            })
            .await;
        }
    }
}

/// Snapshot files two levels down (`<namespace>/<pod>/<file>.core.zst`). The empty directory of a
/// pod that is no longer on this node is removed (a live pod's may be about to receive a capture,
/// whose file has no name until it is complete).
fn snapshot_files(root: &Path, live: &HashSet<(String, String)>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let name = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string()
    };
    for ns in dirs(root).into_iter().filter(|p| p.is_dir()) {
        for pod in dirs(&ns).into_iter().filter(|p| p.is_dir()) {
            files.extend(dirs(&pod).into_iter().filter(|f| {
                let n = name(f);
                n.ends_with(".core.zst") || n.ends_with(".core")
            }));
            if !live.contains(&(name(&ns), name(&pod))) {
                let _ = std::fs::remove_dir(&pod);
            }
        }
    }
    files
}

/// Whether a file's name says it is retained past `now` (`….keep-<unix seconds>.core.zst`).
fn retained_by_name(file: &Path, now: i64) -> bool {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.split(".keep-")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .and_then(|t| t.parse::<i64>().ok())
        .is_some_and(|until| until > now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Retention, WatchThresholds};

    fn record(role: &str, pod: &str, pid: i64, secs: i64) -> SnapshotRecord {
        SnapshotRecord {
            role: role.into(),
            node: "n1".into(),
            time: Time(Timestamp::from_second(secs).unwrap()),
            size: 1 << 20,
            sha256: format!("{role}{pod}"),
            path: Some(format!("/s/{pod}-{role}")),
            pid,
            pod: pod.into(),
            container: "app".into(),
            retain_until: None,
        }
    }

    fn a_op(pod: &str, secs: i64) -> Op {
        Op::SnapshotA {
            record: record("A", pod, 7, secs),
            process: ProcessRef {
                pid: 7,
                name: "python3".into(),
                command: None,
            },
            cooldown: Duration::from_secs(600),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn pair_flow_and_claims() {
        let mut s = LeakReportStatus::default();
        s.notes.push(format!("{NOT_CAPTURED}: x"));
        assert_eq!(
            apply(&a_op("web-1", 100), &mut s, "web-1", "app", at(100)),
            Applied::Changed
        );
        assert_eq!(s.phase, Phase::Baseline);
        assert!(s.notes.is_empty(), "the not-captured note goes");
        // Another replica may not start while web-1 is hunted...
        assert_eq!(
            apply(&a_op("web-2", 110), &mut s, "web-2", "app", at(110)),
            Applied::Refused
        );
        // ...B of another process is refused, B of ours completes the pair.
        let other_b = Op::SnapshotB {
            record: record("B", "web-1", 8, 120),
            timeline: Vec::new(),
        };
        assert_eq!(
            apply(&other_b, &mut s, "web-1", "app", at(120)),
            Applied::Refused
        );
        // The periodic samples of both replicas, then B with web-1's dense timeline.
        let sample = |ws| Op::Sample {
            time: at(100 + 10 * ws),
            working_set: ws,
            limit: None,
            growth_per_sec: None,
            seconds_to_oom: None,
        };
        for (i, pod) in ["web-1", "web-2", "web-1", "web-2"].iter().enumerate() {
            apply(
                &sample(i as i64),
                &mut s,
                pod,
                "app",
                at(100 + 10 * i as i64),
            );
        }
        let dense: Vec<MemorySample> = (30..130)
            .map(|i| MemorySample {
                time: Time(at(i)),
                working_set: 1000 + i,
                pod: "web-1".into(),
                container: "app".into(),
            })
            .collect();
        let b = Op::SnapshotB {
            record: record("B", "web-1", 7, 130),
            timeline: dense,
        };
        assert_eq!(apply(&b, &mut s, "web-1", "app", at(130)), Applied::Changed);
        assert_eq!(s.phase, Phase::Analyzing);
        let web1 = s.timeline("web-1", "app");
        assert!(
            web1.iter().all(|p| p.bytes >= 1000),
            "the sparse samples gave way"
        );
        assert_eq!(web1.len(), 100);
        assert_eq!(
            s.timeline("web-2", "app").len(),
            2,
            "another replica's samples stay"
        );
        assert!(s.memory.samples.len() <= crate::crd::MAX_SAMPLES);
        assert_eq!(s.snapshots.len(), 2);
        assert_eq!(
            s.incidents
                .iter()
                .filter(|i| i.reason == "SnapshotTaken")
                .count(),
            2
        );
        // While the pair is analysed no new hunt starts, not even in a restarted container.
        assert_eq!(
            apply(&a_op("web-1", 140), &mut s, "web-1", "app", at(140)),
            Applied::Refused
        );
        // Analysed: any pod within the cooldown is refused; after it, allowed.
        s.phase = Phase::Analysed;
        assert_eq!(
            apply(&a_op("web-1", 200), &mut s, "web-1", "app", at(200)),
            Applied::Refused
        );
        assert_eq!(
            apply(&a_op("web-2", 200), &mut s, "web-2", "app", at(200)),
            Applied::Refused
        );
        assert_eq!(
            apply(&a_op("web-2", 800), &mut s, "web-2", "app", at(800)),
            Applied::Changed
        );
        assert_eq!(s.snapshots.len(), 1, "a new hunt replaces the old pair");
        // A stale claim (no B for 30 min) no longer blocks.
        assert_eq!(
            apply(&a_op("web-3", 3000), &mut s, "web-3", "app", at(3000)),
            Applied::Changed
        );
    }

    #[test]
    fn reset_failure_and_worker_kills() {
        let mut s = LeakReportStatus::default();
        apply(&a_op("web-1", 100), &mut s, "web-1", "app", at(100));
        let reset = Op::Reset {
            message: "void".into(),
        };
        assert_eq!(
            apply(&reset, &mut s, "web-2", "app", at(101)),
            Applied::Unchanged,
            "not web-2's hunt"
        );
        assert_eq!(
            apply(&reset, &mut s, "web-1", "app", at(101)),
            Applied::Changed
        );
        assert_eq!(s.phase, Phase::Watching);
        assert!(s.snapshots.is_empty());
        apply(&a_op("web-1", 200), &mut s, "web-1", "app", at(200));
        let fail = Op::CaptureFailed {
            role: 'B',
            skipped: true,
            message: "over the cap".into(),
        };
        apply(&fail, &mut s, "web-1", "app", at(210));
        assert_eq!(s.phase, Phase::Failed);
        assert_eq!(s.incidents.last().unwrap().reason, "CaptureSkipped");
        let kill = Op::WorkerKill {
            key: "u/app/c/pid-9".into(),
            process: "python3 (pid 9)".into(),
        };
        assert_eq!(
            apply(&kill, &mut s, "web-1", "app", at(220)),
            Applied::Changed
        );
        assert_eq!(
            apply(&kill, &mut s, "web-1", "app", at(221)),
            Applied::Unchanged,
            "counted once"
        );
        assert_eq!(s.oom_kills, 1);
        assert_eq!(s.last_oom_kill.as_ref().unwrap().process, "python3 (pid 9)");
        // Queued once for the operator to announce, bounded however many kills it misses.
        assert_eq!(s.unannounced_kills.len(), 1);
        assert_eq!(
            s.unannounced_kills[0].worker_message(),
            "worker process python3 (pid 9) in container app of pod web-1 was OOM-killed; the container lives on"
        );
        for i in 0..30 {
            let op = Op::WorkerKill {
                key: format!("u/app/c/oom-{i}"),
                process: format!("python3 (pid {})", 100 + i),
            };
            apply(&op, &mut s, "web-1", "app", at(230 + i));
        }
        assert_eq!(s.oom_kills, 31);
        assert_eq!(s.unannounced_kills.len(), crate::crd::MAX_INCIDENTS);
        assert_eq!(
            s.unannounced_kills.last().unwrap().process,
            "python3 (pid 129)"
        );
    }

    #[test]
    fn a_kill_is_a_workers_only_if_another_process_lives_on() {
        use Judgement::*;
        let suspect = |pid: Option<i32>, listed: &[i32], victims: &[i32]| Suspect {
            key: "k".into(),
            kill: OomKill {
                pid,
                comm: pid.map(|_| "python3".into()),
                kernel_usec: None,
                last_rss: None,
                source: crate::node::KillSource::KernelLog,
            },
            listed: listed.to_vec(),
            victims: victims.to_vec(),
            oom_group: false,
            waited: 0,
        };
        // A worker (7) beside its master (1): decided once 7 has left the cgroup.
        let worker = suspect(Some(7), &[1, 7], &[7]);
        assert_eq!(
            judge(&worker, Some(&[1, 7])),
            Undecided,
            "7 is still exiting"
        );
        assert_eq!(judge(&worker, Some(&[1])), Worker);
        assert_eq!(judge(&worker, Some(&[])), Container, "nobody lives on");
        assert_eq!(judge(&worker, None), Worker, "the container went later");
        // A one-process container: its own death, however long the exit takes.
        let alone = suspect(Some(7), &[7], &[7]);
        assert_eq!(judge(&alone, Some(&[7])), Undecided);
        let waited = Suspect {
            waited: SUSPECT_SAMPLES,
            ..alone.clone()
        };
        assert_eq!(judge(&waited, Some(&[7])), Container);
        assert_eq!(judge(&alone, None), Container);
        // Two victims at once, nobody else: neither was a worker.
        assert_eq!(
            judge(&suspect(Some(7), &[7, 8], &[7, 8]), Some(&[8])),
            Container
        );
        // Unnamed victim: decided once some listed process has gone.
        let unnamed = suspect(None, &[1, 7], &[]);
        assert_eq!(judge(&unnamed, Some(&[1, 7])), Undecided);
        assert_eq!(judge(&unnamed, Some(&[1])), Worker);
        assert_eq!(judge(&suspect(None, &[7], &[]), Some(&[])), Container);
        assert_eq!(
            judge(&unnamed, None),
            Container,
            "cannot tell: the kubelet reports it"
        );
        // A killed process never seen in a sample (named by the kernel log) beside others.
        assert_eq!(judge(&suspect(Some(9), &[1], &[9]), Some(&[1])), Worker);
        // memory.oom.group: the kernel killed the whole container.
        let group = Suspect {
            oom_group: true,
            ..worker.clone()
        };
        assert_eq!(judge(&group, Some(&[1])), Container);
    }

    #[test]
    fn retention_is_read_from_the_file_name() {
        assert!(retained_by_name(
            Path::new("/s/ns/p/app-A-1.keep-200.core.zst"),
            100
        ));
        assert!(!retained_by_name(
            Path::new("/s/ns/p/app-A-1.keep-200.core.zst"),
            300
        ));
        assert!(!retained_by_name(Path::new("/s/ns/p/app-A-1.core.zst"), 0));
        assert!(!retained_by_name(
            Path::new("/s/ns/p/app-A-1.keep-x.core.zst"),
            0
        ));
    }

    #[test]
    fn samples_predict_the_kill() {
        let mut s = LeakReportStatus::default();
        let op = Op::Sample {
            time: at(1000),
            working_set: 100,
            limit: Some(1000),
            growth_per_sec: Some(10.0),
            seconds_to_oom: Some(90.0),
        };
        apply(&op, &mut s, "p", "c", at(1000));
        assert_eq!(s.memory.growth_per_minute, Some(600));
        assert_eq!(s.memory.predicted_oom_time.as_ref().unwrap().0, at(1090));
        let flat = Op::Sample {
            time: at(1001),
            working_set: 100,
            limit: Some(1000),
            growth_per_sec: None,
            seconds_to_oom: Some(f64::INFINITY),
        };
        apply(&flat, &mut s, "p", "c", at(1001));
        assert!(s.memory.predicted_oom_time.is_none());
    }

    #[test]
    fn one_watch_governs_a_pod() {
        let watch = |name: &str, ns: &str, baseline: i32, container: Option<&str>| {
            let mut w = LeakWatch::new(
                name,
                LeakWatchSpec {
                    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                        match_labels: Some([("app".to_string(), "web".to_string())].into()),
                        match_expressions: None,
                    },
                    container: container.map(str::to_string),
                    thresholds: WatchThresholds {
                        baseline,
                        near_limit: 85,
                    },
                    cooldown: "10m".into(),
                    max_snapshot_size: "1Gi".into(),
                    retention: Retention::default(),
                    alerts: None,
                },
            );
            w.metadata.namespace = Some(ns.into());
            w
        };
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let watches = [
            watch("a-invalid", "shop", 95, None),
            watch("c-any", "shop", 50, None),
            watch("b-sidecar", "shop", 40, Some("sidecar")),
            watch("a-other-ns", "other", 50, None),
        ];
        let name = |c| select_watch(&watches, "shop", &labels, c).map(|w| w.name_any());
        assert_eq!(
            name(Some("app")).as_deref(),
            Some("c-any"),
            "invalid and other-container skipped"
        );
        assert_eq!(
            name(Some("sidecar")).as_deref(),
            Some("b-sidecar"),
            "first by name"
        );
        assert_eq!(
            name(None).as_deref(),
            Some("b-sidecar"),
            "container unknown: any"
        );
        assert!(select_watch(&watches, "empty", &labels, None).is_none());
    }

    #[test]
    fn watch_validation_and_policy() {
        let mut spec = LeakWatchSpec {
            selector: Default::default(),
            container: None,
            thresholds: WatchThresholds::default(),
            cooldown: "10m".into(),
            max_snapshot_size: "512Mi".into(),
            retention: Retention::default(),
            alerts: None,
        };
        let p = policy_of(&spec, true).unwrap();
        assert_eq!(
            p.thresholds.baseline,
            crate::node::threshold::Level::Share(0.5)
        );
        assert_eq!(p.max_snapshot_size, 512 << 20);
        assert_eq!(p.keep_snapshots, None);
        assert!(p.events, "the chart's setting when the watch is silent");
        assert!(!policy_of(&spec, false).unwrap().events);
        spec.alerts = Some(crate::crd::AlertRouting {
            events: Some(false),
            ..Default::default()
        });
        assert!(
            !policy_of(&spec, true).unwrap().events,
            "the watch overrides"
        );
        spec.thresholds.baseline = 90;
        assert!(watch_problems(&spec).unwrap().contains("must be below"));
        assert!(policy_of(&spec, true).is_none());
        spec.thresholds.baseline = 50;
        spec.cooldown = "soon".into();
        assert!(watch_problems(&spec).unwrap().contains("cooldown"));
    }
}
