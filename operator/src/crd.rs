//! Custom resources of group `leakhunt.dev`, version `v1alpha1`: `LeakReport` (what was found
//! about one workload) and `LeakWatch` (which pods may be captured, and how).
//!
//! Every field's doc comment becomes its description in the schema (`kubectl explain`).
//! `leakhunt crdgen` prints both CRDs; `crds/` holds the committed output.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use kube::CustomResourceExt;
use leakhunt_analyzer::findings;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// At most this many memory samples of one container are kept in a report's status: the
/// timeline the analyzer Job weighs a heap diff against, recent samples dense, older ones thinned.
pub const MAX_SAMPLES: usize = 120;
/// At most this many samples in all (a workload's replicas share one report).
pub const MAX_ALL_SAMPLES: usize = 360;
/// At most this many incidents are kept; the oldest go first.
pub const MAX_INCIDENTS: usize = 20;
/// At most this many suspects and types are kept.
pub const MAX_SUSPECTS: usize = 10;
pub const MAX_TYPES: usize = 20;

/// What leakhunt found about one workload: its memory, its OOM kills and, when a snapshot pair
/// was captured, what grows between the two snapshots.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "leakhunt.dev",
    version = "v1alpha1",
    kind = "LeakReport",
    doc = "What leakhunt found about one workload: its memory against the limit, its OOM kills and, once a snapshot pair is analysed, what grows.",
    namespaced,
    status = "LeakReportStatus",
    shortname = "lr",
    category = "leakhunt",
    printcolumn = r#"{"name":"Workload","type":"string","jsonPath":".spec.workload.display"}"#,
    printcolumn = r#"{"name":"Verdict","type":"string","jsonPath":".status.verdict"}"#,
    printcolumn = r#"{"name":"Suspect","type":"string","jsonPath":".status.suspects[0].path"}"#,
    printcolumn = r#"{"name":"Growth","type":"string","jsonPath":".status.growth"}"#,
    printcolumn = r#"{"name":"OOMKills","type":"integer","jsonPath":".status.oomKills"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LeakReportSpec {
    /// The workload this report is about (its owner reference points there too).
    pub workload: WorkloadRef,
    /// The container the memory was watched in, when the workload has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// A workload: Deployment, StatefulSet, DaemonSet, Job, CronJob, a bare Pod, or for the local
/// hunt a Process.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// API version of the workload (`apps/v1`); empty for a local process.
    #[serde(default)]
    pub api_version: String,
    /// Kind of the workload (`Deployment`, `Pod`, `Process`).
    pub kind: String,
    /// Name of the workload (for a local process, its command line).
    pub name: String,
    /// UID of the workload object, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `Kind/name`, as shown in the Workload column.
    pub display: String,
}

impl WorkloadRef {
    pub fn new(api_version: &str, kind: &str, name: &str) -> WorkloadRef {
        WorkloadRef {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: None,
            display: format!("{kind}/{name}"),
        }
    }
}

/// Where a report is in its life.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Memory is being watched; no snapshot yet.
    #[default]
    Watching,
    /// Snapshot A (baseline) is taken; waiting for the near-limit threshold.
    Baseline,
    /// Both snapshots are taken; the analysis runs.
    Analyzing,
    /// The snapshot pair was analysed; verdict and suspects are set.
    Analysed,
    /// Capture or analysis failed; see the conditions and incidents for why.
    Failed,
}

/// The answer to "is something leaking?".
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    /// Something accumulates between the snapshots.
    Leak,
    /// Memory was compared and nothing accumulates.
    NoLeak,
    /// Not enough to say either way.
    #[default]
    Inconclusive,
}

impl From<findings::Verdict> for Verdict {
    fn from(v: findings::Verdict) -> Self {
        match v {
            findings::Verdict::Leak => Verdict::Leak,
            findings::Verdict::NoLeak => Verdict::NoLeak,
            findings::Verdict::Inconclusive => Verdict::Inconclusive,
        }
    }
}

/// Observed state of a LeakReport.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeakReportStatus {
    /// Where the hunt is: Watching, Baseline, Analyzing, Analysed or Failed.
    #[serde(default)]
    pub phase: Phase,
    /// Leak, NoLeak or Inconclusive, once there is something to judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// One sentence: the top suspect and its growth, or why there is no verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Growth of the top suspect, as shown in the Growth column (`+2000 items +180KiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth: Option<String>,
    /// What the memory timeline says about the growth between the snapshots: one rise then
    /// flat, a fill-and-empty sawtooth, or growth spread over time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<String>,
    /// The process the snapshots were taken of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessRef>,
    /// Accumulation points, largest retained growth first (at most 10).
    #[serde(default)]
    pub suspects: Vec<ReportSuspect>,
    /// Per-type counts and bytes in both snapshots, largest growth first (at most 20).
    #[serde(default)]
    pub types: Vec<ReportType>,
    /// The container's memory against its limit.
    #[serde(default)]
    pub memory: MemoryStatus,
    /// OOM kills counted for this workload (containers and worker processes alike).
    #[serde(default)]
    pub oom_kills: i64,
    /// The most recent OOM kill.
    #[serde(
        default,
        rename = "lastOOMKill",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_oom_kill: Option<OomKillRecord>,
    /// The snapshot pair: A (baseline) and B (near the limit).
    #[serde(default)]
    pub snapshots: Vec<SnapshotRecord>,
    /// What happened, oldest first (at most 20).
    #[serde(default)]
    pub incidents: Vec<Incident>,
    /// What was and was not captured or analysed, and why.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Standard conditions: `Captured`, `Analysed`, `LeakDetected`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The analyzer Job for the current snapshot pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_job: Option<String>,
    /// SHA-256 of the snapshot B whose leak was alerted, so an alert goes out once per analysis.
    /// (Before 0.2 it also held `failed:REASON:TIME`, now in `alertedFailure`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerted_snapshot: Option<String>,
    /// The failure last alerted (`REASON:TIME` of its incident), so it is alerted once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerted_failure: Option<String>,
    /// Keys of the OOM kills already counted (pod UID, container, container ID or worker PID), so
    /// that a restarted operator or agent never counts one twice (at most 200, newest last).
    #[serde(default)]
    pub counted_kills: Vec<String>,
    /// Worker-process OOM kills counted by the agent that the operator has yet to announce
    /// (Events, webhook, Alertmanager); the operator empties it (at most 20, newest last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unannounced_kills: Vec<OomKillRecord>,
}

/// At most this many counted-kill keys are kept: a kill stays in a pod's `lastState` until the
/// next one, so this covers that many pods of one workload crash-looping at once.
pub const MAX_COUNTED_KILLS: usize = 200;

/// A process inside the workload's container.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRef {
    /// Process ID on the node.
    pub pid: i64,
    /// Process ID the container sees (its own PID namespace), when it differs from the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_pid: Option<i64>,
    /// Process name (the kernel's comm).
    pub name: String,
    /// The command line, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// What accumulates, as in the analyzer's findings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportSuspect {
    /// `container` (a list, dict... that accumulates), `type` (instances multiply) or `native`.
    pub kind: String,
    /// Where it is held: `__main__.Profiler.results`, a symbol, `[heap]`.
    pub path: String,
    /// Type of the accumulating object (`list`, `dict`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// Items in snapshot A.
    pub count_before: i64,
    /// Items in snapshot B.
    pub count_after: i64,
    /// Bytes retained in snapshot A.
    pub retained_bytes_before: i64,
    /// Bytes retained in snapshot B.
    pub retained_bytes_after: i64,
    /// The chain from a root to the object, outermost first.
    #[serde(default)]
    pub referrers: Vec<String>,
    /// Where its growth was allocated (allocation sites on, CPython 3.14+), largest first:
    /// `items allocated at app.py:12 in Profiler.end (96 % of the growth)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocation_sites: Vec<String>,
    /// Its address in the process (`0x…`), while the agent is to read its allocation sites:
    /// written by the analysis only when tracing was on, removed once the sites are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Counts and bytes of one type in both snapshots.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportType {
    /// Type (or native symbol) name.
    pub name: String,
    /// Instances in snapshot A.
    pub count_before: i64,
    /// Instances in snapshot B.
    pub count_after: i64,
    /// Bytes in snapshot A.
    pub bytes_before: i64,
    /// Bytes in snapshot B.
    pub bytes_after: i64,
}

/// The container's memory as the kubelet sees it (working set = usage − inactive file).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStatus {
    /// The cgroup memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Working-set samples, oldest first: the recent ones dense, older ones thinned (at most 120).
    #[serde(default)]
    pub samples: Vec<MemorySample>,
    /// Working-set growth in bytes per minute over the sampling window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_per_minute: Option<i64>,
    /// When the working set reaches the limit at that rate.
    #[serde(
        default,
        rename = "predictedOOMTime",
        skip_serializing_if = "Option::is_none"
    )]
    pub predicted_oom_time: Option<Time>,
}

/// One working-set reading.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemorySample {
    /// When it was read.
    pub time: Time,
    /// Working set in bytes.
    pub working_set: i64,
    /// The pod it was read in (a workload's pods share one report).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// The container it was read in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// A JVM's heap in use in bytes (young and old generations), where the container runs one
    /// (its performance counters, read with no attach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub java_heap: Option<i64>,
    /// That JVM's heap maximum in bytes (-Xmx, or what MaxRAMPercentage made of the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub java_heap_max: Option<i64>,
}

/// An OOM kill.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OomKillRecord {
    /// The pod the kill happened in (empty for the local hunt).
    #[serde(default)]
    pub pod: String,
    /// The container the kill happened in.
    #[serde(default)]
    pub container: String,
    /// The process the kernel killed: `python3 (pid 4242)`.
    pub process: String,
    /// When the kill was seen.
    pub time: Time,
}

/// Appends `item`, dropping the oldest beyond `max`: every list in a status is bounded.
pub fn push_bounded<T>(list: &mut Vec<T>, item: T, max: usize) {
    list.push(item);
    let excess = list.len().saturating_sub(max);
    list.drain(..excess);
}

impl OomKillRecord {
    /// How a worker kill reads in incidents, Events and alerts.
    pub fn worker_message(&self) -> String {
        format!(
            "worker process {} in container {} of pod {} was OOM-killed; the container lives on",
            self.process, self.container, self.pod
        )
    }
}

/// One snapshot of the pair.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRecord {
    /// `A` (baseline threshold) or `B` (near-limit threshold).
    pub role: String,
    /// The node the snapshot file is on.
    pub node: String,
    /// When it was taken.
    pub time: Time,
    /// File size in bytes.
    pub size: i64,
    /// Bytes of process memory the snapshot holds, uncompressed: what the analysis maps, and what the
    /// analyzer Job is sized from (the file is compressed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Path of the file on the node (gone once analysed, unless retained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Process ID the snapshot is of.
    pub pid: i64,
    /// The pod the process ran in (empty for the local hunt).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// The container the process ran in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// The file is kept until then after analysis (LeakWatch retention); unset: it is deleted
    /// once the pair is analysed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<Time>,
    /// Bytes `tracemalloc` used in the target at this snapshot B (allocation sites on): the
    /// analysis leaves them out of the native growth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracer_bytes: Option<i64>,
}

/// Something that happened to the workload.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    /// When.
    pub time: Time,
    /// `OOMKilled`, `LeakDetected`, `SnapshotTaken`, `CaptureSkipped`, `CaptureFailed`, `AnalysisFailed`.
    pub reason: String,
    /// What, in a sentence.
    pub message: String,
}

/// `+2000 items +180KiB`: the Growth column. A part that was not measured (native memory has no
/// item count; a type census no retained size) is left out.
pub fn growth_label(items: i64, bytes: i64) -> String {
    match (items, bytes) {
        (0, b) => signed_bytes(b),
        (i, 0) => format!("{i:+} items"),
        (i, b) => format!("{i:+} items {}", signed_bytes(b)),
    }
}

/// `+180KiB`, `-3.2MiB`, `+12B`.
pub fn signed_bytes(bytes: i64) -> String {
    let sign = if bytes < 0 { "-" } else { "+" };
    format!("{sign}{}", human_bytes(bytes.unsigned_abs()))
}

/// `180KiB`, `3.2MiB`, `12B`: binary units, at most one decimal.
pub fn human_bytes(bytes: u64) -> String {
    format!("{:#}", leakhunt_analyzer::util::Bytes(bytes))
}

/// Sets (or replaces) a condition of this type in a list, keeping its transition time when the
/// status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = now;
        }
        c.status = status;
        c.reason = reason.into();
        c.message = message.into();
    } else {
        conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now,
            observed_generation: None,
        });
    }
}

/// Which pods leakhunt may capture memory of, and how. OOM kills are reported for every pod;
/// memory is captured only for pods a LeakWatch selects (or annotated `leakhunt.dev/capture: "true"`),
/// because a memory snapshot holds the process's secrets.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "leakhunt.dev",
    version = "v1alpha1",
    kind = "LeakWatch",
    doc = "Which pods leakhunt may capture memory of, and how (thresholds, cooldown, size cap, retention, alerts).",
    namespaced,
    status = "LeakWatchStatus",
    shortname = "lw",
    category = "leakhunt",
    printcolumn = r#"{"name":"Baseline","type":"string","jsonPath":".spec.thresholds.baseline"}"#,
    printcolumn = r#"{"name":"NearLimit","type":"string","jsonPath":".spec.thresholds.nearLimit"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.matchedPods"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LeakWatchSpec {
    /// Pods in this namespace whose memory may be captured.
    pub selector: LabelSelector,
    /// Only this container of the selected pods; all containers when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// When to take the snapshots.
    #[serde(default)]
    pub thresholds: WatchThresholds,
    /// Minimum time between two hunts of one workload, as a duration (`10m`).
    #[serde(default = "default_cooldown")]
    pub cooldown: String,
    /// Largest snapshot file to write, as a quantity (`512Mi`); larger captures are skipped.
    #[serde(default = "default_max_snapshot_size")]
    pub max_snapshot_size: String,
    /// How long snapshot files and reports are kept.
    #[serde(default)]
    pub retention: Retention,
    /// Alert routing for these pods, overriding the chart's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertRouting>,
    /// Where the growing objects were allocated (CPython 3.14+): at snapshot A the agent starts
    /// `tracemalloc` in the target through CPython's remote execution (PEP 768), a fixed script of
    /// leakhunt's; once the pair is analysed it reads where the top suspect's items were allocated
    /// and stops it. This runs code in the target and makes it slower and bigger while it traces
    /// (about 2× slower and 4× the memory per allocation on a Flask service): off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allocation_sites: bool,
}

fn default_cooldown() -> String {
    "10m".into()
}

fn default_max_snapshot_size() -> String {
    "1Gi".into()
}

/// Thresholds as percentages of the container's memory limit.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchThresholds {
    /// Snapshot A when the working set reaches this percentage of the limit.
    #[serde(default = "default_baseline")]
    pub baseline: i32,
    /// Snapshot B when the working set reaches this percentage of the limit.
    #[serde(default = "default_near_limit")]
    pub near_limit: i32,
}

fn default_baseline() -> i32 {
    50
}

fn default_near_limit() -> i32 {
    85
}

impl Default for WatchThresholds {
    fn default() -> Self {
        WatchThresholds {
            baseline: default_baseline(),
            near_limit: default_near_limit(),
        }
    }
}

/// Retention of snapshot files (reports live as long as their workload).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep snapshot files after analysis (they hold process memory: secrets).
    #[serde(default)]
    pub keep_snapshots: bool,
    /// Delete retained snapshot files after this duration (`24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_ttl: Option<String>,
}

/// Where alerts for the selected pods go.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertRouting {
    /// Emit Kubernetes Events (LeakDetected, OOMKilled) on the pod, workload and report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<bool>,
    /// A webhook URL that receives a JSON payload per alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Send the webhook payload in Slack's format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<bool>,
    /// An Alertmanager base URL; alerts go to its v2 API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager_url: Option<String>,
    /// Extra labels on Alertmanager alerts (team, severity).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Observed state of a LeakWatch.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeakWatchStatus {
    /// Pods the selector matches now.
    #[serde(default)]
    pub matched_pods: i64,
    /// Standard conditions: `Valid` (the spec parses).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Both CRDs as a multi-document YAML stream: what `leakhunt crdgen` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in [LeakReport::crd(), LeakWatch::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_has_columns_names_and_descriptions() {
        let crd = serde_json::to_value(LeakReport::crd()).unwrap();
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "lr");
        assert_eq!(crd["spec"]["names"]["categories"][0], "leakhunt");
        let version = &crd["spec"]["versions"][0];
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            ["Workload", "Verdict", "Suspect", "Growth", "OOMKills", "Age"]
        );
        assert!(version["subresources"]["status"].is_object());
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        for field in [
            "phase",
            "verdict",
            "summary",
            "suspects",
            "types",
            "memory",
            "oomKills",
            "lastOOMKill",
            "snapshots",
            "incidents",
            "conditions",
        ] {
            assert!(status[field].is_object(), "status.{field} missing");
        }
        assert!(status["memory"]["properties"]["predictedOOMTime"].is_object());
        let lw = serde_json::to_value(LeakWatch::crd()).unwrap();
        assert_eq!(lw["spec"]["names"]["shortNames"][0], "lw");
    }

    /// Every property of both schemas carries a description (it is what `kubectl explain` shows).
    #[test]
    fn every_field_is_documented() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (name, prop) in props {
                    let p = format!("{path}.{name}");
                    let top_level = path.is_empty()
                        && ["apiVersion", "kind", "metadata"].contains(&name.as_str());
                    // k8s-openapi's own types (Condition, LabelSelector) carry their upstream docs.
                    if prop.get("description").is_none() && !top_level {
                        missing.push(p.clone());
                    }
                    walk(&p, prop, missing);
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(inner) = schema.get(key) {
                    walk(path, inner, missing);
                }
            }
        }
        let mut missing = Vec::new();
        for crd in [LeakReport::crd(), LeakWatch::crd()] {
            let v = serde_json::to_value(crd).unwrap();
            walk(
                "",
                &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
                &mut missing,
            );
        }
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }

    /// `crds/` is the committed output of `leakhunt crdgen`; regenerate with
    /// `LEAKHUNT_UPDATE_CRDS=1 cargo test -p leakhunt-operator crds_are_current`.
    #[test]
    fn crds_are_current() {
        let path =
            std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
                .join("../crds/leakhunt.dev.yaml");
        let generated = crd_yaml().unwrap();
        if std::env::var_os("LEAKHUNT_UPDATE_CRDS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "crds/leakhunt.dev.yaml drifted from the Rust types: run `leakhunt crdgen > crds/leakhunt.dev.yaml`"
        );
    }

    #[test]
    fn bounded_lists_and_labels() {
        let mut s = LeakReportStatus::default();
        let t = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        for i in 0..100 {
            s.push_sample(MemorySample {
                time: t.clone(),
                working_set: i,
                pod: String::new(),
                container: String::new(),
                java_heap: None,
                java_heap_max: None,
            });
            s.push_incident(Incident {
                time: t.clone(),
                reason: "OOMKilled".into(),
                message: i.to_string(),
            });
        }
        assert!(s.memory.samples.len() <= MAX_SAMPLES);
        assert_eq!(s.memory.samples[0].working_set, 0, "the oldest stays");
        assert_eq!(s.memory.samples.last().unwrap().working_set, 99);
        assert_eq!(s.incidents.len(), MAX_INCIDENTS);
        assert_eq!(s.incidents.last().unwrap().message, "99");
        assert_eq!(growth_label(2000, 180 * 1024), "+2000 items +180KiB");
        assert_eq!(growth_label(0, 45 << 20), "+45MiB");
        assert_eq!(growth_label(1068740, 0), "+1068740 items");
        assert_eq!(signed_bytes(-3_355_443), "-3.2MiB");
        assert_eq!(human_bytes(12), "12B");
        assert_eq!(human_bytes(160 * 1024 * 1024), "160MiB");
    }

    #[test]
    fn conditions_keep_transition_time() {
        let mut s = LeakReportStatus::default();
        let t0 = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(100).unwrap());
        s.set_condition("Analysed", true, "DiffDone", "ok", t0.clone());
        s.set_condition("Analysed", true, "DiffDone", "again", t1.clone());
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].last_transition_time, t0);
        s.set_condition("Analysed", false, "Failed", "no", t1.clone());
        assert_eq!(s.conditions[0].last_transition_time, t1);
    }
}
