//! `leakhunt agent`: the node DaemonSet. Every interval it samples the memory cgroup of every
//! container of the pods on its node (the node library: v1/v2, cgroupfs/systemd layouts), counts
//! OOM kills of worker processes in containers that survive them, and for pods a LeakWatch
//! selects (or annotated `leakhunt.dev/capture: "true"`) takes snapshot A at the baseline
//! threshold and B near the limit, recording both in the workload's LeakReport.
//!
//! Sampling never waits for the API server: report writes go through a queue to one writer task,
//! captures run on blocking threads. The capture's memory is the agent's own (its cgroup), not
//! the pod's.

mod capture;
mod cleaner;
mod group;
mod sites;
mod suspect;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use super::policy::{policy_for, Policy};
use crate::crd::{LeakWatch, MemorySample, SnapshotRecord};
use crate::metrics::Metrics;
use crate::node::threshold::Action;
use crate::node::{
    kubelet, CgroupWatcher, Hierarchy, ProcessKey, ProcessMemory, Sample, ThresholdMachine,
    Thresholds,
};
use crate::sites::Tracer;
use crate::snapshot;
use crate::status::{Op, Role};
use crate::units::to_i64;
use cleaner::clean_snapshots;
use suspect::{judge, name_departed, Judgement, Suspect};
use writer::writer;

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

/// How often the kubelet's pod cgroup roots are searched for again once found.
const POD_ROOTS_SEARCH: Duration = Duration::from_secs(60);

/// After a refused snapshot A, the pod's containers do not capture again for this long.
const REFUSAL_BACKOFF: Duration = Duration::from_secs(60);

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
    role: Role,
    target: ProcessKey,
    result: Result<(SnapshotRecord, Duration), (bool, String)>,
    /// Allocation tracing, handed to the capture of B (which asks it for its memory first).
    tracer: Tracer,
    /// What asking it said.
    tracer_note: Option<String>,
    /// What the snapshot says beside itself, for the report: how it was taken when not as a
    /// core, and a JVM's pools at the time.
    notes: SnapshotNotes,
}

#[derive(Default)]
struct SnapshotNotes {
    taken: Option<String>,
    jvm: Option<leakhunt_analyzer::jvm::perf::JvmStats>,
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
    /// The JVM's pools at snapshot A, for what grew outside its heap by B.
    jvm_at_a: Option<leakhunt_analyzer::jvm::perf::JvmStats>,
    /// Time of the last sample, on the watcher's clock.
    last_t: f64,
    /// OOM kills not yet judged a worker's or the container's own.
    suspected_kills: Vec<Suspect>,
    /// Every sample's working set, thinned as it grows; sent with snapshot B.
    timeline: Vec<MemorySample>,
    /// `memory.oom.group` of the cgroup, read at the first sample that lists a process (runc
    /// writes it before the container's process starts).
    oom_group: Option<bool>,
    /// Processes the previous sample listed, and the largest of them: whether a group kill took
    /// workers, and which one the kernel chose.
    listed_before: usize,
    largest: Option<ProcessMemory>,
    /// Whether the container's group kill has been said.
    group_kill_told: bool,
    /// Allocation tracing in the container's target, from snapshot A to B.
    tracer: Tracer,
}

/// The containers of this node the agent samples, and those just gone whose group kill waits
/// for the pod status.
#[derive(Default)]
struct Seen {
    tracked: HashMap<String, Tracked>,
    group_kills: Vec<group::Candidate>,
}

/// Points in a container's timeline kept by the agent (a sample a second: the last two
/// minutes dense, the hours before thinned).
const TIMELINE_POINTS: usize = 240;

pub struct Agent {
    client: Client,
    cfg: AgentConfig,
    metrics: Metrics,
    recorder: Recorder,
    /// A snapshot A this node took before then belongs to an earlier agent: its hunt is lost.
    started: Timestamp,
}

impl Agent {
    /// The policy of pods opted in by annotation.
    fn defaults(&self) -> Policy {
        Policy {
            thresholds: self.cfg.thresholds,
            max_snapshot_size: self.cfg.max_snapshot_size,
            keep_snapshots: None,
            events: self.cfg.events,
            allocation_sites: false,
        }
    }

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
            started: Timestamp::now(),
        }
    }

    /// Runs until `shutdown`; `ready` is called once the first full sampling pass is done.
    pub async fn run(
        self,
        ready: impl Fn() + Send + 'static,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let hierarchy = Hierarchy::detect(&self.cfg.cgroup_root)?;
        self.metrics.agent_started();
        tracing::info!(node = %self.cfg.node_name, hierarchy = %hierarchy.path.display(), version = %hierarchy.version, "agent starting");
        snapshot::prepare_dir(&self.cfg.snapshot_dir).map_err(|e| {
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

        let mut seen = Seen::default();
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut first = true;
        let mut blocked: HashMap<String, Instant> = HashMap::new();
        let mut pod_cgroups = kubelet::PodCgroups::new(hierarchy, POD_ROOTS_SEARCH);
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
                        if let Some(t) = seen.tracked.get_mut(&container_id) {
                            t.machine.give_up(t.last_t);
                            t.snapshot_a = None;
                            t.tracer.stop_in_background();
                        }
                    }
                }
            }
            blocked.retain(|_, until| *until > Instant::now());
            self.pass(
                &mut pod_cgroups,
                &pods,
                &watches,
                &mut seen,
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
        pod_cgroups: &mut kubelet::PodCgroups,
        pods: &Store<Pod>,
        watches: &Store<LeakWatch>,
        seen: &mut Seen,
        writes: &mpsc::Sender<Write>,
        blocked: &HashMap<String, Instant>,
    ) {
        let Seen {
            tracked,
            group_kills: candidates,
        } = seen;
        let by_container = containers_on_node(&pods.state());
        let watch_list = watches.state();
        let cgroups = pod_cgroups.discover();
        let present: HashSet<String> = cgroups
            .iter()
            .filter_map(|(p, _)| p.container_id.clone())
            .collect();
        // A container that is gone (OOM-killed, restarted, deleted) voids its pending snapshot A.
        let mut gone = Vec::new();
        tracked.retain(|id, t| {
            let keep = present.contains(id);
            if !keep {
                self.metrics.forget_container(id);
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
                // A whole-container kill removes the cgroup within milliseconds, often before a
                // sample saw its counter rise: the pod status will say whether it was one.
                if t.oom_group == Some(true) && !t.group_kill_told {
                    let kills = t.watcher.logged_kills();
                    if let Some(process) =
                        group::victim(kills.first(), t.largest.as_ref(), t.listed_before)
                    {
                        candidates.push(group::Candidate {
                            write: write_of(id, t, Op::GroupKill { process }),
                            until: Instant::now() + group::WAIT,
                        });
                    }
                }
                t.tracer.stop_in_background();
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
        let all_pods = pods.state();
        let confirmed: Vec<group::Candidate> = candidates
            .extract_if(.., |c| group::oom_killed(&all_pods, &c.write.container_id))
            .collect();
        candidates.retain(|c| c.until > Instant::now());
        for c in confirmed {
            let _ = writes.send(c.write).await;
        }
        for (pod_cgroup, cgroup) in cgroups {
            let Some(id) = pod_cgroup.container_id.clone() else {
                continue;
            };
            let Some((pod, container)) = by_container.get(&id) else {
                continue;
            };
            let fresh = !tracked.contains_key(&id);
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
                jvm_at_a: None,
                last_t: 0.0,
                timeline: Vec::new(),
                oom_group: None,
                listed_before: 0,
                largest: None,
                group_kill_told: false,
                tracer: Tracer::Off,
            });
            t.pod = pod.clone();
            let policy = policy_for(pod, container, &watch_list, &self.defaults());
            if policy != t.policy {
                match &policy {
                    Some(p) => {
                        t.machine.thresholds = p.thresholds;
                        self.metrics.watch_container(&id);
                    }
                    None => self.metrics.forget_container(&id),
                }
                t.policy = policy;
            }
            if fresh && t.policy.is_some() {
                let op = Op::AgentStarted {
                    node: self.cfg.node_name.clone(),
                    started: self.started,
                };
                let _ = writes.send(write_of(&id, t, op)).await;
            }
            let sample = match t.watcher.sample() {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, container = %id, "sample");
                    continue;
                }
            };
            t.last_t = sample.t;
            let heap = sample.java_heap();
            leakhunt_analyzer::timeline::push_decimated(
                &mut t.timeline,
                MemorySample {
                    time: Time(Timestamp::now()),
                    working_set: to_i64(sample.memory.working_set()),
                    pod: t.pod.name_any(),
                    container: t.container.clone(),
                    java_heap: heap.map(|h| to_i64(h.0)),
                    java_heap_max: heap.map(|h| to_i64(h.1)),
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
        // Kills of processes in a container that lives on (workers): the container's own death
        // is the kubelet's to report, and the operator counts it from the pod status.
        let listed: Vec<i32> = sample.processes.iter().map(|p| p.key.pid).collect();
        if t.oom_group.is_none() && !listed.is_empty() {
            t.oom_group = Some(read_oom_group(&t.watcher.cgroup.dir));
        }
        suspect_kills(id, t, sample);
        if let Some(op) = group_kill_of(t, sample) {
            let _ = writes.send(write_of(id, t, op)).await;
        }
        t.listed_before = listed.len();
        t.largest = sample.processes.iter().max_by_key(|p| p.rss).cloned();
        judge_suspects(id, t, &listed, writes).await;
        let Some(policy) = t.policy.clone() else {
            return;
        };
        if let Some(message) = t.tracer.poll(false) {
            let _ = writes.try_send(write_of(id, t, Op::Note { message }));
        }
        // The first sample also makes the writer create the report; one that was dropped (queue
        // full, API down) is simply sent again an interval later.
        if t.last_write
            .is_none_or(|w| w.elapsed() >= self.cfg.report_interval)
        {
            t.last_write = Some(Instant::now());
            let _ = writes.try_send(write_of(id, t, sample_op(sample)));
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
        self.decide(id, t, sample, &policy, writes, hunt_blocked);
    }

    /// What the threshold machine calls for at this sample: a capture of A or B started, or A
    /// voided.
    fn decide(
        &self,
        id: &str,
        t: &mut Tracked,
        sample: &Sample,
        policy: &Policy,
        writes: &mpsc::Sender<Write>,
        hunt_blocked: bool,
    ) {
        let alive = sample.alive();
        // Containers are hunted at shares of their limit only (no process RSS), or of a JVM's
        // heap ceiling.
        let hunted = match t.machine.state() {
            crate::node::threshold::State::Baseline { target, .. } => Some(target),
            _ => sample.grower,
        };
        let obs = sample.observation_of(&alive, hunted, None);
        match t.machine.observe(&obs) {
            Some(Action::SnapshotA { .. }) if hunt_blocked => t.machine.give_up(sample.t),
            Some(Action::SnapshotA { target }) => {
                self.start_capture(id, t, Role::A, target, policy)
            }
            Some(Action::SnapshotB { target }) => {
                self.start_capture(id, t, Role::B, target, policy)
            }
            Some(Action::Reset { target, reason }) => {
                t.tracer.stop_in_background();
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
                let _ = writes.try_send(write_of(id, t, Op::Reset { message }));
            }
            None => {}
        }
    }
}

fn read_oom_group(dir: &std::path::Path) -> bool {
    std::fs::read_to_string(dir.join("memory.oom.group")).is_ok_and(|v| v.trim() == "1")
}

/// A sample that saw the whole container killed: said once.
fn group_kill_of(t: &mut Tracked, sample: &Sample) -> Option<Op> {
    if t.oom_group != Some(true) || t.group_kill_told || sample.kills.is_empty() {
        return None;
    }
    let process = group::victim(sample.kills.first(), t.largest.as_ref(), t.listed_before)?;
    t.group_kill_told = true;
    Some(Op::GroupKill { process })
}

/// An op of this container for the writer.
fn write_of(id: &str, t: &Tracked, op: Op) -> Write {
    Write {
        pod: t.pod.clone(),
        container: t.container.clone(),
        container_id: id.to_string(),
        op,
    }
}

/// The sample's kills become suspects: whether each was a worker's (the container lives on) is
/// judged once the process list has had time to show it.
fn suspect_kills(id: &str, t: &mut Tracked, sample: &Sample) {
    if sample.kills.is_empty() {
        return;
    }
    // With memory.oom.group (cgroup v2, set by recent kubelets) the kernel kills the whole
    // container at once: never a worker's kill.
    let oom_group = t.oom_group == Some(true);
    let victims: Vec<i32> = sample.kills.iter().filter_map(|k| k.pid).collect();
    let total = sample.memory.oom_kills;
    let n = sample.kills.len() as u64;
    for (i, kill) in sample.kills.iter().enumerate() {
        // The cgroup's own counter numbers its kills: unique even when the victim was too
        // short-lived to be named.
        let key = format!(
            "{}/{}/{id}/oom-{}",
            t.pod.uid().unwrap_or_default(),
            t.container,
            total.saturating_sub(n - 1 - i as u64)
        );
        t.suspected_kills.push(Suspect {
            key,
            kill: kill.clone(),
            listed: sample.processes.clone(),
            victims: victims.clone(),
            oom_group,
            waited: 0,
        });
    }
}

/// Judges the suspected kills against the processes listed now: a worker's kill is written,
/// the container's own left to the kubelet, the rest wait another sample.
async fn judge_suspects(id: &str, t: &mut Tracked, listed: &[i32], writes: &mpsc::Sender<Write>) {
    let mut undecided = Vec::new();
    for mut s in std::mem::take(&mut t.suspected_kills) {
        match judge(&s, Some(listed)) {
            Judgement::Worker => {
                name_departed(&mut s, listed);
                let process = s.kill.process_label();
                tracing::info!(pod = %t.pod.name_any(), container = %t.container, %process, "worker process OOM-killed; the container lives on");
                // Awaited, not tried: this op is the kill's only record.
                let op = Op::WorkerKill {
                    key: s.key,
                    process,
                };
                let _ = writes.send(write_of(id, t, op)).await;
            }
            Judgement::Container => {}
            Judgement::Undecided => {
                s.waited += 1;
                undecided.push(s);
            }
        }
    }
    t.suspected_kills = undecided;
}

fn sample_op(sample: &Sample) -> Op {
    Op::Sample {
        time: Timestamp::now(),
        working_set: to_i64(sample.memory.working_set()),
        limit: sample.memory.limit.and_then(|l| i64::try_from(l).ok()),
        growth_per_sec: sample.growth_per_sec,
        seconds_to_oom: sample.seconds_to_oom,
        java_heap: sample
            .java_heap()
            .map(|(used, max)| (to_i64(used), to_i64(max))),
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
