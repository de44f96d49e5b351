//! The analyzer Job: `leakhunt analyze-job` on the node that holds the snapshot pair, with the
//! snapshot directory mounted read-only and its own ServiceAccount (which may change only
//! LeakReport status).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::status::Role;
use crate::units::{human_bytes, parse_quantity};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, HostPathVolumeSource, PodSpec,
    PodTemplateSpec, ResourceRequirements, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::crd::{LeakReport, SnapshotRecord};

/// Annotation on a Job naming its report (`namespace/name`): Jobs live in the operator's
/// namespace, reports in the workload's, and owner references cannot cross namespaces.
pub const REPORT_ANNOTATION: &str = "leakhunt.dev/report";
/// Label selecting leakhunt's analyzer Jobs.
pub const JOB_SELECTOR: &str =
    "app.kubernetes.io/managed-by=leakhunt,app.kubernetes.io/component=analyzer";

/// The Job's writable scratch directory (its root filesystem is read-only).
const SCRATCH: &str = "/var/tmp/leakhunt";

/// How analyzer Jobs are made (from the operator's flags).
#[derive(Debug, Clone)]
pub struct JobTemplate {
    pub namespace: String,
    pub image: String,
    pub image_pull_policy: String,
    pub service_account: String,
    pub snapshot_dir: String,
    pub timeout: Duration,
    pub ttl: Duration,
    pub memory_request: String,
    /// The least memory limit a Job gets; a bigger pair gets more, up to `memory_max`.
    pub memory_limit: String,
    pub memory_max: String,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub log: String,
    /// The operator's Deployment: analyzer Jobs are owned by it, so they go when the chart goes.
    pub owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

/// What the analysis may hold per byte of memory in the two snapshots it diffs. Both heaps are
/// walked at once; for a CPython heap of 48-byte objects the analyzer's allocator peaks at 0.75
/// bytes a snapshot byte (the vectors' spare capacity counted: the budget counts what is
/// allocated), and the walk keeps room for its tables' next doubling. 1.5 leaves the budget
/// (85 % of the limit) room for denser heaps; measured with a 1.9 GB pair in the e2e test.
const JOB_BYTES_PER_SNAPSHOT_BYTE: f64 = 1.5;
/// The binary, the Kubernetes client and the page tables of the mapped snapshots.
const JOB_OVERHEAD: u64 = 128 << 20;
/// The analyzer refuses (a clear error in the report) past this share of its limit, before the
/// kernel would OOM-kill it.
const BUDGET_SHARE: f64 = 0.85;

/// The memory limit of the Job for a pair whose snapshots hold `a_size` and `b_size` bytes:
/// what the diff needs, never below the chart's limit `floor`, never above its maximum `max`.
pub fn job_memory(a_size: i64, b_size: i64, floor: u64, max: u64) -> u64 {
    let snapshots = (a_size.max(0) as u64).saturating_add(b_size.max(0) as u64);
    let need =
        ((snapshots as f64 * JOB_BYTES_PER_SNAPSHOT_BYTE) as u64).saturating_add(JOB_OVERHEAD);
    need.clamp(floor, max.max(floor))
}

/// `--memory-budget` for a Job limited to `limit` bytes.
pub fn job_budget(limit: u64) -> u64 {
    (limit as f64 * BUDGET_SHARE) as u64
}

/// The memory limit of an analyzer Job, in bytes.
pub fn limit_of(job: &Job) -> Option<u64> {
    let c = job
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?;
    let q = c.resources.as_ref()?.limits.as_ref()?.get("memory")?;
    parse_quantity(&q.0)
}

/// Whether the analyzer container of one of the Job's pods was OOM-killed.
pub fn oom_killed(pods: &[k8s_openapi::api::core::v1::Pod]) -> bool {
    pods.iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| c.name == "analyzer")
        .flat_map(|c| [c.state.as_ref(), c.last_state.as_ref()])
        .flatten()
        .filter_map(|s| s.terminated.as_ref())
        .any(|t| t.reason.as_deref() == Some("OOMKilled"))
}

/// The report's words for an OOM-killed analyzer Job: its limit, and what to raise.
pub fn oom_text(limit: Option<u64>, max: &str) -> String {
    let limit = limit.map_or_else(|| "its limit".into(), human_bytes);
    format!(
        "the analyzer Job was OOM-killed at its memory limit of {limit}: the snapshot pair needs more; raise the chart's analyzer.maxMemory (now {max}), which bounds the limit the operator sizes from the snapshots"
    )
}

/// One Job per snapshot pair: named after B's digest, so creating it twice is harmless.
pub fn job_name(b: &SnapshotRecord) -> String {
    let digest: String = b
        .sha256
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(16)
        .collect();
    format!("leakhunt-analyze-{}", digest.to_ascii_lowercase())
}

/// The pair A, B from a report's snapshots, when both are there and on one node.
pub fn pair(snapshots: &[SnapshotRecord]) -> Option<(&SnapshotRecord, &SnapshotRecord)> {
    let a = snapshots.iter().find(|s| s.is(Role::A))?;
    let b = snapshots.iter().find(|s| s.is(Role::B))?;
    (a.node == b.node && a.path.is_some() && b.path.is_some() && !b.sha256.is_empty())
        .then_some((a, b))
}

/// The one directory holding both snapshots (`<snapshot dir>/<namespace>/<pod>`), when it lies
/// inside the snapshot directory. The Job mounts only it: the analyzer parses untrusted memory
/// and sees no other workload's snapshots.
pub fn pair_dir(t: &JobTemplate, a: &SnapshotRecord, b: &SnapshotRecord) -> Option<String> {
    let parent = |r: &SnapshotRecord| {
        let p = std::path::Path::new(r.path.as_deref()?);
        let clean = p.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::RootDir
            )
        });
        clean.then(|| p.parent().map(|d| d.to_path_buf())).flatten()
    };
    let (da, db) = (parent(a)?, parent(b)?);
    (da == db && da.starts_with(&t.snapshot_dir) && da != std::path::Path::new(&t.snapshot_dir))
        .then(|| da.display().to_string())
}

/// The analyzer Job for a pair; `None` when the pair's files are not in one directory inside the
/// snapshot directory (the report is then failed rather than anything else mounted).
pub fn analyzer_job(
    t: &JobTemplate,
    report: &LeakReport,
    a: &SnapshotRecord,
    b: &SnapshotRecord,
) -> Option<Job> {
    let dir = pair_dir(t, a, b)?;
    let report_ref = format!(
        "{}/{}",
        report.namespace().unwrap_or_default(),
        report.name_any()
    );
    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name", "leakhunt"),
        ("app.kubernetes.io/managed-by", "leakhunt"),
        ("app.kubernetes.io/component", "analyzer"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let container = analyzer_container(t, &report_ref, a, b, &dir);
    let mut annotations = BTreeMap::new();
    annotations.insert(REPORT_ANNOTATION.to_string(), report_ref);
    Some(Job {
        metadata: ObjectMeta {
            name: Some(job_name(b)),
            namespace: Some(t.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations),
            owner_references: t.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // A failed analysis of the same bytes fails again; the report says why instead.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(t.timeout.as_secs().max(1) as i64),
            ttl_seconds_after_finished: Some(t.ttl.as_secs().min(i32::MAX as u64) as i32),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(analyzer_pod(t, container, &b.node, &dir)),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The analyzer container: its arguments, a memory limit sized to the pair, the pair's
/// directory read-only, and no privilege beyond reading root's files.
fn analyzer_container(
    t: &JobTemplate,
    report_ref: &str,
    a: &SnapshotRecord,
    b: &SnapshotRecord,
    dir: &str,
) -> Container {
    let parse = |q: &str| parse_quantity(q).unwrap_or(1 << 30);
    let limit = job_memory(
        a.analysed_bytes(),
        b.analysed_bytes(),
        parse(&t.memory_limit),
        parse(&t.memory_max),
    );
    let request = parse(&t.memory_request).min(limit);
    let (limit_q, request_q) = (limit.to_string(), request.to_string());
    let quantities = |cpu: &str, memory: &str| {
        let mut m = BTreeMap::new();
        m.insert("cpu".to_string(), Quantity(cpu.to_string()));
        m.insert("memory".to_string(), Quantity(memory.to_string()));
        Some(m)
    };
    let mut args = vec![
        "analyze-job".to_string(),
        "--report".into(),
        report_ref.to_string(),
        "--before".into(),
        a.path.clone().unwrap_or_default(),
        "--after".into(),
        b.path.clone().unwrap_or_default(),
        "--sha256-before".into(),
        a.sha256.clone(),
        "--sha256-after".into(),
        b.sha256.clone(),
        "--memory-budget".into(),
        job_budget(limit).to_string(),
    ];
    // Allocation tracing was on at B: its own memory is not the process's growth.
    if let Some(bytes) = b.tracer_bytes {
        args.extend(["--tracer-bytes".into(), bytes.max(0).to_string()]);
    }
    Container {
        name: "analyzer".into(),
        image: Some(t.image.clone()),
        image_pull_policy: Some(t.image_pull_policy.clone()),
        args: Some(args),
        env: Some(vec![
            EnvVar {
                name: "LEAKHUNT_LOG".into(),
                value: Some(t.log.clone()),
                ..Default::default()
            },
            // Compressed snapshots are read back through a temporary file. Not /tmp: the
            // snapshot directory may live below it on the host.
            EnvVar {
                name: "TMPDIR".into(),
                value: Some(SCRATCH.into()),
                ..Default::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            requests: quantities(&t.cpu_request, &request_q),
            limits: quantities(&t.cpu_limit, &limit_q),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "snapshots".into(),
                mount_path: dir.to_string(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "scratch".into(),
                mount_path: SCRATCH.into(),
                ..Default::default()
            },
        ]),
        // Root only to read the agent's 0600 root-owned files; no capability at all.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The analyzer's pod: on the node that holds the snapshots, which are mounted from the host.
fn analyzer_pod(t: &JobTemplate, container: Container, node: &str, dir: &str) -> PodSpec {
    PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(t.service_account.clone()),
        // The snapshots exist only on this node.
        node_name: Some(node.to_string()),
        tolerations: Some(vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }]),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "snapshots".into(),
                host_path: Some(HostPathVolumeSource {
                    path: dir.to_string(),
                    type_: Some("Directory".into()),
                }),
                ..Default::default()
            },
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// How a finished Job ended, from its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Running,
    Succeeded,
    /// With the reason: `DeadlineExceeded`, `BackoffLimitExceeded`...
    Failed {
        reason: String,
        message: String,
    },
}

pub fn outcome(job: &Job) -> JobOutcome {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    for c in conditions.iter().filter(|c| c.status == "True") {
        match c.type_.as_str() {
            "Complete" => return JobOutcome::Succeeded,
            "Failed" => {
                return JobOutcome::Failed {
                    reason: c.reason.clone().unwrap_or_else(|| "Failed".into()),
                    message: c.message.clone().unwrap_or_default(),
                }
            }
            _ => {}
        }
    }
    JobOutcome::Running
}

/// Why a Job failed, in the words a report shows.
pub fn failure_text(reason: &str, message: &str, timeout: Duration) -> String {
    match reason {
        "DeadlineExceeded" => format!(
            "the analyzer Job did not finish within {}s and was stopped",
            timeout.as_secs()
        ),
        "BackoffLimitExceeded" => "the analyzer Job failed (its container exited non-zero)".into(),
        _ if message.is_empty() => format!("the analyzer Job failed: {reason}"),
        _ => format!("the analyzer Job failed: {reason}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LeakReportSpec, WorkloadRef};
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn snap(role: &str, node: &str, sha: &str) -> SnapshotRecord {
        SnapshotRecord {
            role: role.into(),
            node: node.into(),
            time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            size: 1,
            memory: None,
            sha256: sha.into(),
            path: Some(format!(
                "/var/lib/leakhunt/snapshots/shop/r/{role}.core.zst"
            )),
            pid: 42,
            pod: "web-1".into(),
            container: "app".into(),
            retain_until: None,
            tracer_bytes: None,
        }
    }

    fn template() -> JobTemplate {
        JobTemplate {
            namespace: "leakhunt".into(),
            image: "leakhunt:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            service_account: "leakhunt-analyzer".into(),
            snapshot_dir: "/var/lib/leakhunt/snapshots".into(),
            timeout: Duration::from_secs(600),
            ttl: Duration::from_secs(3600),
            memory_request: "256Mi".into(),
            memory_limit: "1Gi".into(),
            memory_max: "8Gi".into(),
            cpu_request: "100m".into(),
            cpu_limit: "1".into(),
            log: "info".into(),
            owner: None,
        }
    }

    /// The report of Deployment `shop/web`.
    fn report() -> LeakReport {
        let mut report = LeakReport::new(
            "deployment-web",
            LeakReportSpec {
                workload: WorkloadRef::new("apps/v1", "Deployment", "web"),
                container: None,
            },
        );
        report.metadata.namespace = Some("shop".into());
        report
    }

    #[test]
    fn job_is_pinned_read_only_and_named_by_pair() {
        let report = report();
        let (a, b) = (
            snap("A", "node-1", "aa"),
            snap("B", "node-1", "0123456789abcdef0123"),
        );
        let job = analyzer_job(&template(), &report, &a, &b).unwrap();
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("leakhunt-analyze-0123456789abcdef")
        );
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(600));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.node_name.as_deref(), Some("node-1"));
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("leakhunt-analyzer")
        );
        let c = &pod.containers[0];
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert_eq!(mounts[0].read_only, Some(true));
        let args = c.args.as_ref().unwrap();
        assert!(args
            .windows(2)
            .any(|w| w[0] == "--report" && w[1] == "shop/deployment-web"));
        assert_eq!(
            job.metadata.annotations.as_ref().unwrap()[REPORT_ANNOTATION],
            "shop/deployment-web"
        );
    }

    #[test]
    fn only_the_pair_directory_inside_the_snapshot_dir_is_mounted() {
        let (mut a, mut b) = (snap("A", "n1", "aa"), snap("B", "n1", "bb"));
        assert_eq!(
            pair_dir(&template(), &a, &b).as_deref(),
            Some("/var/lib/leakhunt/snapshots/shop/r")
        );
        b.path = Some("/var/lib/leakhunt/snapshots/other/x/B.core.zst".into());
        assert!(pair_dir(&template(), &a, &b).is_none(), "two directories");
        a.path = Some("/etc/shadow".into());
        b.path = Some("/etc/passwd".into());
        assert!(
            pair_dir(&template(), &a, &b).is_none(),
            "outside the snapshot dir"
        );
        a.path = Some("/var/lib/leakhunt/snapshots/../../../etc/A".into());
        b.path = Some("/var/lib/leakhunt/snapshots/../../../etc/B".into());
        assert!(
            pair_dir(&template(), &a, &b).is_none(),
            "no way out through .."
        );
    }

    #[test]
    fn job_memory_follows_the_pair_within_floor_and_max() {
        let (gi, mi) = (1u64 << 30, 1u64 << 20);
        // Small pairs get the chart's limit; a 1 GiB pair gets what the diff needs.
        assert_eq!(job_memory(100 * mi as i64, 120 * mi as i64, gi, 8 * gi), gi);
        let big = job_memory(gi as i64, gi as i64, gi, 8 * gi);
        assert_eq!(big, 3 * gi + 128 * mi);
        assert_eq!(
            job_memory(20 * gi as i64, 20 * gi as i64, gi, 8 * gi),
            8 * gi
        );
        assert_eq!(job_memory(-1, -1, gi, 0), gi);
        assert!(job_budget(big) < big && job_budget(big) > big / 2);
    }

    #[test]
    fn a_big_pair_gets_a_bigger_job_and_a_budget() {
        let report = report();
        let mut a = snap("A", "n1", "aa");
        let mut b = snap("B", "n1", "bb");
        a.size = 1 << 30;
        b.size = 1 << 30;
        let job = analyzer_job(&template(), &report, &a, &b).unwrap();
        let limit = limit_of(&job).unwrap();
        assert_eq!(limit, job_memory(a.size, b.size, 1 << 30, 8 << 30));
        let args = job.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        let i = args.iter().position(|a| a == "--memory-budget").unwrap();
        assert_eq!(args[i + 1], job_budget(limit).to_string());
    }

    #[test]
    fn a_compressed_pair_is_sized_by_the_memory_it_holds() {
        // 90 MiB files of 1 GiB of memory each (zstd compresses a heap of small objects well): the
        // analysis maps the memory, so the Job gets more than the chart's 1 GiB floor.
        let report = report();
        let (mut a, mut b) = (snap("A", "n1", "aa"), snap("B", "n1", "bb"));
        for s in [&mut a, &mut b] {
            s.size = 90 << 20;
            s.memory = Some(1 << 30);
        }
        let limit = limit_of(&analyzer_job(&template(), &report, &a, &b).unwrap()).unwrap();
        assert_eq!(limit, job_memory(1 << 30, 1 << 30, 1 << 30, 8 << 30));
        assert!(limit > 2 << 30, "{limit}");
        // A record without `memory` (written before it existed) falls back to its file size.
        a.memory = None;
        assert_eq!(a.analysed_bytes(), 90 << 20);
    }

    #[test]
    fn an_oom_killed_analyzer_is_named() {
        use k8s_openapi::api::core::v1::{
            ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus,
        };
        let pod = |reason: &str| Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "analyzer".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            reason: Some(reason.into()),
                            exit_code: 137,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(oom_killed(&[pod("Error"), pod("OOMKilled")]));
        assert!(!oom_killed(&[pod("Error")]));
        let text = oom_text(Some(1 << 30), "8Gi");
        assert!(
            text.contains("1.0 GiB") && text.contains("analyzer.maxMemory"),
            "{text}"
        );
    }

    #[test]
    fn pair_needs_both_on_one_node() {
        let (a, b) = (snap("A", "n1", "aa"), snap("B", "n1", "bb"));
        assert!(pair(&[a.clone(), b.clone()]).is_some());
        assert!(pair(std::slice::from_ref(&a)).is_none());
        assert!(pair(&[a, snap("B", "n2", "bb")]).is_none());
    }

    #[test]
    fn outcomes() {
        let mut job = Job::default();
        assert_eq!(outcome(&job), JobOutcome::Running);
        job.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("DeadlineExceeded".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let JobOutcome::Failed { reason, message } = outcome(&job) else {
            panic!("not failed")
        };
        assert!(failure_text(&reason, &message, Duration::from_secs(600)).contains("600s"));
    }
}
