//! The one builder of a `LeakReport`'s status: typed operations — a sample, snapshot A or B,
//! a void baseline, a failed capture, a worker's OOM kill, an analysis or its failure — applied
//! by one pure function that the local hunt, the node agent and the analyzer Job all call. The
//! strings the CRD carries (snapshot roles, incident reasons, condition types) have their
//! typed names here.

mod record;

use std::fmt;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use leakhunt_analyzer::findings::{self, Findings};

use crate::crd::{Incident, LeakReportStatus, MemorySample, Phase, ProcessRef, SnapshotRecord};

/// A hunt that started this long ago and never got its B no longer blocks other pods.
pub const CLAIM_STALE: Duration = Duration::from_secs(1800);

/// Which snapshot of a pair: `A` at the baseline, `B` near the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    A,
    B,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::A => "A",
            Role::B => "B",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Role> for String {
    fn from(r: Role) -> String {
        r.as_str().into()
    }
}

/// The reason of an incident (`status.incidents[].reason`), and of the Event or alert it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    OomKilled,
    LeakDetected,
    Analysed,
    SnapshotTaken,
    CaptureSkipped,
    CaptureFailed,
    AnalysisFailed,
    BaselineReset,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::OomKilled,
        Reason::LeakDetected,
        Reason::Analysed,
        Reason::SnapshotTaken,
        Reason::CaptureSkipped,
        Reason::CaptureFailed,
        Reason::AnalysisFailed,
        Reason::BaselineReset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OomKilled => "OOMKilled",
            Reason::LeakDetected => "LeakDetected",
            Reason::Analysed => "Analysed",
            Reason::SnapshotTaken => "SnapshotTaken",
            Reason::CaptureSkipped => "CaptureSkipped",
            Reason::CaptureFailed => "CaptureFailed",
            Reason::AnalysisFailed => "AnalysisFailed",
            Reason::BaselineReset => "BaselineReset",
        }
    }

    /// The reason a string of the CRD names, if it is one of ours.
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// A capture refused by policy is skipped; any other failure failed.
    pub fn capture(skipped: bool) -> Reason {
        if skipped {
            Reason::CaptureSkipped
        } else {
            Reason::CaptureFailed
        }
    }

    /// A failure that alerts (and stops the pair): a capture or the analysis.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Reason::AnalysisFailed | Reason::CaptureFailed | Reason::CaptureSkipped
        )
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.as_str().into()
    }
}

impl SnapshotRecord {
    pub fn is(&self, role: Role) -> bool {
        self.role == role.as_str()
    }

    /// Bytes the analysis maps: the uncompressed memory when recorded (a record written before
    /// `memory` existed has only its file size, a lower bound).
    pub fn analysed_bytes(&self) -> i64 {
        self.memory.unwrap_or(self.size).max(self.size)
    }
}

impl Incident {
    pub fn is(&self, reason: Reason) -> bool {
        self.reason == reason.as_str()
    }
}

impl LeakReportStatus {
    /// The record of snapshot A or B, if taken.
    pub fn snapshot(&self, role: Role) -> Option<&SnapshotRecord> {
        self.snapshots.iter().find(|r| r.is(role))
    }

    /// Whether memory of this workload is known not to be captured (no LeakWatch, no annotation).
    pub fn not_captured(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == CAPTURED && c.status == "False" && c.reason == NOT_SELECTED)
    }
}

/// The condition that says whether a pair is being captured.
pub const CAPTURED: &str = "Captured";
/// Its reason when no LeakWatch selects the pod and it lacks the capture annotation.
pub const NOT_SELECTED: &str = "NotSelected";

/// Marks the report as one whose memory is not captured: the `Captured` condition (reason
/// `NotSelected`) and the same sentence as a note, for `kubectl describe`.
pub fn not_captured(s: &mut LeakReportStatus, why: &str, now: Time) {
    let message = format!("memory is not captured: {why}");
    s.set_condition(CAPTURED, false, NOT_SELECTED, &message, now);
    if !s.notes.contains(&message) {
        s.notes.push(message);
    }
}

/// The condition that says whether the pair was analysed, and its reason when it was.
pub const ANALYSED: &str = "Analysed";
pub const PAIR_DIFFED: &str = "SnapshotPairDiffed";
/// The condition that says whether the analysis found a leak (reason: the verdict).
pub const LEAK_DETECTED: &str = "LeakDetected";
/// Notes a report holds at most.
pub const MAX_NOTES: usize = 20;

/// The findings of a snapshot pair, already weighed against the timeline: suspects, verdict,
/// phase `Analysed`, the `Analysed` and `LeakDetected` conditions, the analysis's notes (after
/// the hunt's own), and an incident (`LeakDetected` or `Analysed`).
pub fn analysed(s: &mut LeakReportStatus, f: &Findings, now: Time) {
    s.apply_findings(f);
    s.phase = Phase::Analysed;
    let summary = s.summary.clone().unwrap_or_else(|| "analysed".into());
    s.set_condition(ANALYSED, true, PAIR_DIFFED, &summary, now.clone());
    let leak = f.verdict == findings::Verdict::Leak;
    let verdict = match f.verdict {
        findings::Verdict::Leak => "Leak",
        findings::Verdict::NoLeak => "NoLeak",
        findings::Verdict::Inconclusive => "Inconclusive",
    };
    s.set_condition(LEAK_DETECTED, leak, verdict, &summary, now.clone());
    for n in &f.notes {
        if s.notes.len() >= MAX_NOTES {
            break;
        }
        if !s.notes.contains(n) {
            s.notes.push(n.clone());
        }
    }
    let reason = if leak {
        Reason::LeakDetected
    } else {
        Reason::Analysed
    };
    incident(s, reason, &summary, now);
}

/// The diff of a pair failed: phase `Failed`, the `Analysed` condition false, a note and an
/// incident that say why.
pub fn analysis_failed(s: &mut LeakReportStatus, message: &str, now: Time) {
    s.phase = Phase::Failed;
    s.set_condition(
        ANALYSED,
        false,
        Reason::AnalysisFailed.as_str(),
        message,
        now.clone(),
    );
    note(s, message);
    incident(s, Reason::AnalysisFailed, message, now);
}

/// A change to a report: what happened, applied by [`apply`].
#[derive(Debug, Clone)]
pub enum Op {
    Sample {
        /// When it was read (the write may come later).
        time: Timestamp,
        working_set: i64,
        limit: Option<i64>,
        growth_per_sec: Option<f64>,
        seconds_to_oom: Option<f64>,
        /// A JVM's heap in use and its maximum, where the container runs one.
        java_heap: Option<(i64, i64)>,
    },
    SnapshotA {
        record: SnapshotRecord,
        process: ProcessRef,
        cooldown: Duration,
        /// The incident's sentence: the caller knows what is worth saying (where, how large).
        message: String,
    },
    SnapshotB {
        record: SnapshotRecord,
        /// The container's working set a sample per interval up to B: the timeline the
        /// analyzer Job weighs the diff against (the periodic samples are too sparse for it).
        timeline: Vec<MemorySample>,
        /// The incident's sentence.
        message: String,
    },
    /// Snapshot A is void (its process is gone, or an OOM kill came between).
    Reset { message: String },
    /// The agent of `node` started at `started` and tracks this container afresh: a snapshot A of
    /// it taken there before then has lost its hunt (the agent keeps none across restarts) and is
    /// void, with that reason.
    AgentStarted { node: String, started: Timestamp },
    CaptureFailed {
        role: Role,
        skipped: bool,
        /// The whole sentence, naming what was captured: condition, note and incident.
        message: String,
    },
    /// A process killed in a container that lives on: counted here, announced by the operator.
    WorkerKill { key: String, process: String },
    /// The kernel killed every process of the container at once (`memory.oom.group`, the
    /// kubelet's default on cgroup v2) when `process`, one of several, grew past the limit. The
    /// kill itself is counted from the pod status; this says whose growth it was.
    GroupKill { process: String },
    /// What allocation tracing came to (started, skipped, refused): a note of the hunt.
    Note { message: String },
    /// Where the top container suspect of the pair whose B has `b_sha256` was allocated, read by
    /// the agent after the analysis; its address goes (it was there for this reading only).
    AllocationSites {
        b_sha256: String,
        sites: Vec<String>,
        notes: Vec<String>,
    },
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

/// Applies one op to a status: the status building of the agent and the hunt (which passes
/// no pod), pure and unit-tested.
pub fn apply(
    op: &Op,
    s: &mut LeakReportStatus,
    pod: &str,
    container: &str,
    now: Timestamp,
) -> Applied {
    let at = Place { pod, container };
    match op {
        Op::Sample {
            time,
            working_set,
            limit,
            growth_per_sec,
            seconds_to_oom,
            java_heap,
        } => {
            s.push_sample(MemorySample {
                time: Time(*time),
                working_set: *working_set,
                pod: pod.into(),
                container: container.into(),
                java_heap: java_heap.map(|h| h.0),
                java_heap_max: java_heap.map(|h| h.1),
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
            message,
        } => snapshot_a(s, at, record, process, *cooldown, message, now),
        Op::SnapshotB {
            record,
            timeline,
            message,
        } => snapshot_b(s, at, record, timeline, message, now),
        Op::Reset { message } => reset(s, at, message, now),
        Op::AgentStarted { node, started } => agent_started(s, at, node, *started, now),
        Op::CaptureFailed {
            role,
            skipped,
            message,
        } => capture_failed(s, at, *role, *skipped, message, now),
        Op::WorkerKill { key, process } => worker_kill(s, at, key, process, now),
        Op::GroupKill { process } => group_kill(s, at, process, now),
        Op::Note { message } => {
            note(s, message);
            Applied::Changed
        }
        Op::AllocationSites {
            b_sha256,
            sites,
            notes,
        } => allocation_sites(s, b_sha256, sites, notes),
    }
}

/// The allocation sites of the suspect the agent was asked to read, when the report still holds
/// that pair (a newer hunt is not given an older one's sites).
fn allocation_sites(
    s: &mut LeakReportStatus,
    b_sha256: &str,
    sites: &[String],
    notes: &[String],
) -> Applied {
    if s.snapshot(Role::B).is_none_or(|b| b.sha256 != b_sha256) {
        return Applied::Unchanged;
    }
    if let Some(suspect) = s.suspects.iter_mut().find(|x| x.address.is_some()) {
        suspect.allocation_sites = sites.to_vec();
        suspect.address = None;
    }
    for n in notes {
        note(s, n);
    }
    Applied::Changed
}

/// The pod and container an op comes from.
#[derive(Debug, Clone, Copy)]
struct Place<'a> {
    pod: &'a str,
    container: &'a str,
}

/// Snapshot A, unless another pod of the workload holds the report or its last pair is within
/// the cooldown.
fn snapshot_a(
    s: &mut LeakReportStatus,
    at: Place,
    record: &SnapshotRecord,
    process: &ProcessRef,
    cooldown: Duration,
    message: &str,
    now: Timestamp,
) -> Applied {
    let pod = at.pod;
    let t = Time(now);
    // One hunt per workload at a time, and none within the cooldown of the last pair:
    // per-container state restarts with every container, the report does not.
    let age = |role: Role| {
        s.snapshot(role)
            .map(|r| now.duration_since(r.time.0).as_secs_f64())
    };
    let a_other_pod = s.snapshots.iter().any(|r| r.is(Role::A) && r.pod != pod);
    let stale = CLAIM_STALE.as_secs_f64();
    let claimed_by_other = match s.phase {
        Phase::Baseline => a_other_pod && age(Role::A).is_some_and(|a| a < stale),
        Phase::Analyzing => age(Role::B).is_some_and(|b| b < stale),
        _ => false,
    };
    let in_cooldown = matches!(s.phase, Phase::Analysed | Phase::Failed)
        && age(Role::B).is_some_and(|b| b < cooldown.as_secs_f64());
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
    if matches!(s.phase, Phase::Analysed | Phase::Failed) {
        // A pair after a finished one: the notes were of that one.
        s.notes.clear();
    } else {
        // The hunt's own notes (thresholds, a void A) stay; not the not-captured one, whose
        // condition is set anew below.
        forget_not_captured(s);
    }
    s.set_condition(
        CAPTURED,
        false,
        "Baseline",
        &format!(
            "snapshot A of {} taken; waiting for the near-limit threshold",
            process.name
        ),
        t.clone(),
    );
    incident(s, Reason::SnapshotTaken, message, t);
    Applied::Changed
}

/// Drops the note that mirrors a `NotSelected` condition.
fn forget_not_captured(s: &mut LeakReportStatus) {
    let mirrored = s
        .conditions
        .iter()
        .find(|c| c.type_ == CAPTURED && c.reason == NOT_SELECTED)
        .map(|c| c.message.clone());
    if let Some(m) = mirrored {
        s.notes.retain(|n| *n != m);
    }
}

/// Adds an incident.
fn incident(s: &mut LeakReportStatus, reason: Reason, message: &str, time: Time) {
    s.push_incident(Incident {
        time,
        reason: reason.into(),
        message: message.to_string(),
    });
}

/// Adds a note once, within the bound.
fn note(s: &mut LeakReportStatus, message: &str) {
    if s.notes.len() < MAX_NOTES && !s.notes.iter().any(|n| n == message) {
        s.notes.push(message.to_string());
    }
}

/// Snapshot B of the process whose A the report holds.
fn snapshot_b(
    s: &mut LeakReportStatus,
    at: Place,
    record: &SnapshotRecord,
    timeline: &[MemorySample],
    message: &str,
    now: Timestamp,
) -> Applied {
    let Place { pod, container } = at;
    let t = Time(now);
    let ours = s.phase == Phase::Baseline
        && s.snapshots
            .iter()
            .any(|r| r.is(Role::A) && r.pod == record.pod && r.pid == record.pid);
    if !ours {
        return Applied::Refused;
    }
    s.snapshots.retain(|r| r.is(Role::A));
    s.snapshots.push(record.clone());
    s.phase = Phase::Analyzing;
    // This container's sparse samples give way to its dense timeline, thinned to the bound.
    // (The hunt has none: its samples are already dense.)
    if !timeline.is_empty() {
        s.memory
            .samples
            .retain(|m| !(m.pod == pod && m.container == container));
        for m in timeline {
            s.push_sample(m.clone());
        }
    }
    s.set_condition(
        CAPTURED,
        true,
        "PairTaken",
        "snapshots A and B taken",
        t.clone(),
    );
    incident(s, Reason::SnapshotTaken, message, t);
    Applied::Changed
}

/// Snapshot A of this pod is void.
fn reset(s: &mut LeakReportStatus, at: Place, message: &str, now: Timestamp) -> Applied {
    let pod = at.pod;
    let t = Time(now);
    if s.phase != Phase::Baseline || !s.snapshots.iter().any(|r| r.pod == pod) {
        return Applied::Unchanged;
    }
    s.phase = Phase::Watching;
    s.snapshots.clear();
    s.set_condition(CAPTURED, false, "BaselineVoid", message, t.clone());
    note(s, message);
    incident(s, Reason::BaselineReset, message, t);
    Applied::Changed
}

/// Voids a snapshot A of this container that an earlier agent of `node` took.
fn agent_started(
    s: &mut LeakReportStatus,
    at: Place,
    node: &str,
    started: Timestamp,
    now: Timestamp,
) -> Applied {
    let orphan = s.phase == Phase::Baseline
        && s.snapshots.iter().any(|r| {
            r.is(Role::A)
                && r.node == node
                && r.pod == at.pod
                && r.container == at.container
                && r.time.0 < started
        });
    if !orphan {
        return Applied::Unchanged;
    }
    let message = format!(
        "snapshot A of {}/{} is void: the agent on node {node} restarted before snapshot B; hunting starts over",
        at.pod, at.container
    );
    reset(s, at, &message, now)
}

/// A capture that failed or was refused.
fn capture_failed(
    s: &mut LeakReportStatus,
    _at: Place,
    role: Role,
    skipped: bool,
    message: &str,
    now: Timestamp,
) -> Applied {
    let t = Time(now);
    let reason = Reason::capture(skipped);
    if role == Role::B && s.phase == Phase::Baseline {
        s.phase = Phase::Failed;
    }
    s.set_condition(CAPTURED, false, reason.as_str(), message, t.clone());
    note(s, message);
    incident(s, reason, message, t);
    Applied::Changed
}

/// A worker killed in a container that lives on, counted once.
fn worker_kill(
    s: &mut LeakReportStatus,
    at: Place,
    key: &str,
    process: &str,
    now: Timestamp,
) -> Applied {
    let Place { pod, container } = at;
    let t = Time(now);
    let record = crate::crd::OomKillRecord {
        pod: pod.into(),
        container: container.into(),
        process: process.to_string(),
        time: t,
    };
    if s.count_kill(key, record.clone(), record.worker_message()) {
        crate::crd::push_bounded(&mut s.unannounced_kills, record, crate::crd::MAX_INCIDENTS);
        Applied::Changed
    } else {
        Applied::Unchanged
    }
}

/// Whose growth a whole-container OOM kill was, said once (the writer may send it again).
fn group_kill(s: &mut LeakReportStatus, at: Place, process: &str, now: Timestamp) -> Applied {
    let Place { pod, container } = at;
    let message = format!(
        "the kernel killed the whole container {container} of pod {pod} because memory.oom.group \
         is set; the worker that grew was {process}"
    );
    if s.incidents.iter().any(|i| i.message == message) {
        return Applied::Unchanged;
    }
    incident(s, Reason::OomKilled, &message, Time(now));
    Applied::Changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ReportSuspect;

    fn record(role: &str, pod: &str, pid: i64, secs: i64) -> SnapshotRecord {
        SnapshotRecord {
            role: role.into(),
            node: "n1".into(),
            time: Time(Timestamp::from_second(secs).unwrap()),
            size: 1 << 20,
            memory: None,
            sha256: format!("{role}{pod}"),
            path: Some(format!("/s/{pod}-{role}")),
            pid,
            pod: pod.into(),
            container: "app".into(),
            retain_until: None,
            tracer_bytes: None,
        }
    }

    fn a_op(pod: &str, secs: i64) -> Op {
        Op::SnapshotA {
            record: record("A", pod, 7, secs),
            process: ProcessRef {
                pid: 7,
                container_pid: None,
                name: "python3".into(),
                command: None,
            },
            cooldown: Duration::from_secs(600),
            message: format!("snapshot A of python3 (pid 7) in {pod}/app: 1MiB"),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn pair_flow_and_claims() {
        let mut s = LeakReportStatus::default();
        not_captured(&mut s, "x", Time(at(90)));
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
            message: "snapshot B".into(),
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
            java_heap: None,
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
                java_heap: None,
                java_heap_max: None,
            })
            .collect();
        let b = Op::SnapshotB {
            record: record("B", "web-1", 7, 130),
            timeline: dense,
            message: "snapshot B".into(),
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
            role: Role::B,
            skipped: true,
            message: "over the cap".into(),
        };
        apply(&fail, &mut s, "web-1", "app", at(210));
        assert_eq!(s.phase, Phase::Failed);
        assert_eq!(s.incidents.last().unwrap().reason, "CaptureSkipped");
        // An agent that restarts voids the A its predecessor took, and only that one.
        apply(&a_op("web-1", 300), &mut s, "web-1", "app", at(300));
        let started = |secs| Op::AgentStarted {
            node: "n1".into(),
            started: at(secs),
        };
        assert_eq!(
            apply(&started(299), &mut s, "web-1", "app", at(301)),
            Applied::Unchanged,
            "taken by this agent"
        );
        assert_eq!(
            apply(&started(400), &mut s, "web-1", "sidecar", at(401)),
            Applied::Unchanged,
            "another container's"
        );
        assert_eq!(
            apply(&started(400), &mut s, "web-1", "app", at(401)),
            Applied::Changed
        );
        assert_eq!(s.phase, Phase::Watching);
        assert!(s.snapshots.is_empty());
        assert!(s
            .incidents
            .last()
            .unwrap()
            .message
            .contains("restarted before snapshot B"));
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
    fn a_group_kill_names_the_worker_once_and_counts_nothing() {
        let mut s = LeakReportStatus::default();
        let op = Op::GroupKill {
            process: "gunicorn (pid 41), 180MiB when last sampled".into(),
        };
        assert_eq!(apply(&op, &mut s, "web-1", "app", at(10)), Applied::Changed);
        assert_eq!(
            apply(&op, &mut s, "web-1", "app", at(11)),
            Applied::Unchanged
        );
        assert_eq!(s.incidents.len(), 1);
        assert_eq!(
            s.incidents[0].message,
            "the kernel killed the whole container app of pod web-1 because memory.oom.group is set; \
             the worker that grew was gunicorn (pid 41), 180MiB when last sampled"
        );
        // The kill is the kubelet's to report and the pod status's to count.
        assert_eq!((s.oom_kills, s.unannounced_kills.len()), (0, 0));
    }

    #[test]
    fn allocation_sites_go_to_their_pair_only_and_take_the_address() {
        let mut s = LeakReportStatus::default();
        apply(&a_op("web-1", 100), &mut s, "web-1", "app", at(100));
        let b = Op::SnapshotB {
            record: record("B", "web-1", 7, 130),
            timeline: Vec::new(),
            message: "snapshot B".into(),
        };
        apply(&b, &mut s, "web-1", "app", at(130));
        s.suspects.push(ReportSuspect {
            kind: "container".into(),
            path: "__main__.data".into(),
            type_name: "list".into(),
            count_before: 1,
            count_after: 2,
            retained_bytes_before: 0,
            retained_bytes_after: 0,
            referrers: Vec::new(),
            allocation_sites: Vec::new(),
            address: Some("0x7f00".into()),
        });
        let sites = |sha: &str| Op::AllocationSites {
            b_sha256: sha.into(),
            sites: vec!["items allocated at grow.py:27 (99 % of the growth)".into()],
            notes: vec!["allocation sites: 990 of 1000 items traced".into()],
        };
        // Another pair's sites (an older hunt's agent task) change nothing.
        assert_eq!(
            apply(&sites("Bweb-2"), &mut s, "web-1", "app", at(140)),
            Applied::Unchanged
        );
        assert!(s.suspects[0].allocation_sites.is_empty());
        assert_eq!(
            apply(&sites("Bweb-1"), &mut s, "web-1", "app", at(140)),
            Applied::Changed
        );
        assert_eq!(s.suspects[0].allocation_sites.len(), 1);
        assert_eq!(s.suspects[0].address, None, "the address is gone once read");
        assert!(s.notes.iter().any(|n| n.contains("990 of 1000")));
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
            java_heap: Some((40, 64)),
        };
        apply(&op, &mut s, "p", "c", at(1000));
        assert_eq!(s.memory.growth_per_minute, Some(600));
        let last = s.memory.samples.last().unwrap();
        assert_eq!((last.java_heap, last.java_heap_max), (Some(40), Some(64)));
        assert_eq!(s.memory.predicted_oom_time.as_ref().unwrap().0, at(1090));
        let flat = Op::Sample {
            time: at(1001),
            working_set: 100,
            limit: Some(1000),
            growth_per_sec: None,
            seconds_to_oom: Some(f64::INFINITY),
            java_heap: None,
        };
        apply(&flat, &mut s, "p", "c", at(1001));
        assert!(s.memory.predicted_oom_time.is_none());
    }
}
