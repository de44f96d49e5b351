//! Prometheus metrics, all under one `leakhunt_` registry, served as OpenMetrics on `/metrics`.
//!
//! `Metrics` is a cheap handle (an `Arc`): clone it into every controller, the agent and the HTTP
//! server. Per-workload series are removed with `forget_workload` when the workload goes, so
//! the series count follows the cluster, not its history; per-container memory series likewise
//! with `forget_container` when the container goes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of `encode`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A capture is a ptrace stop plus a memory copy: tens of milliseconds for a small process,
/// up to a minute for gigabytes.
const CAPTURE_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// An analysis walks two snapshots: a second for a small heap, minutes for a big one.
const ANALYSIS_BUCKETS: [f64; 10] = [0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    namespace: String,
    workload: String,
}

/// A watched container, as the dashboard groups it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerLabels {
    pub namespace: String,
    pub workload: String,
    pub pod: String,
    pub container: String,
}

/// One sample of a watched container's memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContainerMemory {
    pub working_set: i64,
    pub limit: Option<i64>,
    /// Seconds until the working set reaches the limit at its current rate; None when not growing.
    pub seconds_to_oom: Option<f64>,
}

/// Container IDs forgotten are remembered, so that a sample still queued for the writer does
/// not bring a gone container's series back; the set is cleared beyond this (IDs never recur).
const FORGOTTEN_MAX: usize = 4096;

#[derive(Default)]
struct Containers {
    labels: HashMap<String, ContainerLabels>,
    forgotten: HashSet<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    sink: String,
    result: &'static str,
}

/// How a capture ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CaptureOutcome {
    /// The snapshot was written.
    Ok,
    /// It was attempted and failed.
    Failed,
    /// It was not attempted (cooldown, size cap, not opted in).
    Skipped,
}

impl CaptureOutcome {
    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureOutcome::Ok => "ok",
            CaptureOutcome::Failed => "failed",
            CaptureOutcome::Skipped => "skipped",
        }
    }
}

impl fmt::Display for CaptureOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

struct Inner {
    registry: Registry,
    oom_kills: Family<WorkloadLabels, Counter>,
    leak_detected: Family<WorkloadLabels, Gauge>,
    capture_duration: HistogramFamily<RoleLabels>,
    captures: Family<ResultLabels, Counter>,
    analysis_duration: Histogram,
    reconcile_errors: Family<ControllerLabels, Counter>,
    alerts_sent: Family<AlertLabels, Counter>,
    watched_pods: Gauge,
    reports: Gauge,
    working_set: Family<ContainerLabels, Gauge>,
    memory_limit: Family<ContainerLabels, Gauge>,
    time_to_oom: Family<ContainerLabels, Gauge<f64, AtomicU64>>,
    containers: Mutex<Containers>,
}

/// leakhunt's metrics. Clones share the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("leakhunt");
        let oom_kills = Family::<WorkloadLabels, Counter>::default();
        registry.register(
            "oom_kills",
            "OOM kills seen, per workload (containers and worker processes alike)",
            oom_kills.clone(),
        );
        let leak_detected = Family::<WorkloadLabels, Gauge>::default();
        registry.register(
            "leak_detected",
            "1 when the workload's latest analysis found a leak, else 0",
            leak_detected.clone(),
        );
        let capture_duration: HistogramFamily<RoleLabels> =
            Family::new_with_constructor(|| Histogram::new(CAPTURE_BUCKETS));
        registry.register_with_unit(
            "capture_duration",
            "Time to capture one snapshot, by role (A baseline, B near the limit)",
            Unit::Seconds,
            capture_duration.clone(),
        );
        let captures = Family::<ResultLabels, Counter>::default();
        registry.register(
            "captures",
            "Snapshot captures by result (ok, failed, skipped)",
            captures.clone(),
        );
        let analysis_duration = Histogram::new(ANALYSIS_BUCKETS);
        registry.register_with_unit(
            "analysis_duration",
            "Time to analyse one snapshot pair",
            Unit::Seconds,
            analysis_duration.clone(),
        );
        let reconcile_errors = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile failures, by controller",
            reconcile_errors.clone(),
        );
        let alerts_sent = Family::<AlertLabels, Counter>::default();
        registry.register(
            "alerts_sent",
            "Alerts sent, by sink (webhook, alertmanager, events) and result (ok, failed)",
            alerts_sent.clone(),
        );
        let watched_pods = Gauge::default();
        registry.register(
            "watched_pods",
            "Pods whose memory is being watched",
            watched_pods.clone(),
        );
        let reports = Gauge::default();
        registry.register("reports", "LeakReports that exist", reports.clone());
        let working_set = Family::<ContainerLabels, Gauge>::default();
        registry.register_with_unit(
            "container_working_set",
            "Working set of a watched container (usage less inactive file pages), as the agent samples it",
            Unit::Bytes,
            working_set.clone(),
        );
        let memory_limit = Family::<ContainerLabels, Gauge>::default();
        registry.register_with_unit(
            "container_memory_limit",
            "Memory limit of a watched container's cgroup",
            Unit::Bytes,
            memory_limit.clone(),
        );
        let time_to_oom = Family::<ContainerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "container_time_to_oom",
            "Predicted time until a watched container reaches its limit at its current growth (absent when not growing)",
            Unit::Seconds,
            time_to_oom.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                oom_kills,
                leak_detected,
                capture_duration,
                captures,
                analysis_duration,
                reconcile_errors,
                alerts_sent,
                watched_pods,
                reports,
                working_set,
                memory_limit,
                time_to_oom,
                containers: Mutex::default(),
            }),
        }
    }

    pub fn oom_kill(&self, namespace: &str, workload: &str) {
        self.inner
            .oom_kills
            .get_or_create(&workload_labels(namespace, workload))
            .inc();
    }

    pub fn leak_detected(&self, namespace: &str, workload: &str, leak: bool) {
        self.inner
            .leak_detected
            .get_or_create(&workload_labels(namespace, workload))
            .set(i64::from(leak));
    }

    /// Creates a workload's kill counter at 0, so that `increase()` sees its first kill.
    pub fn workload_seen(&self, namespace: &str, workload: &str) {
        let _ = self
            .inner
            .oom_kills
            .get_or_create(&workload_labels(namespace, workload));
    }

    /// Drops a gone workload's series.
    pub fn forget_workload(&self, namespace: &str, workload: &str) {
        let labels = workload_labels(namespace, workload);
        self.inner.oom_kills.remove(&labels);
        self.inner.leak_detected.remove(&labels);
    }

    /// Creates the capture series at 0 (both roles, every result), so that the first capture is
    /// an increase `rate()` sees rather than a series born at 1.
    pub fn agent_started(&self) {
        for role in ["A", "B"] {
            let _ = self
                .inner
                .capture_duration
                .get_or_create(&RoleLabels { role: role.into() });
        }
        for result in [
            CaptureOutcome::Ok,
            CaptureOutcome::Failed,
            CaptureOutcome::Skipped,
        ] {
            let _ = self.inner.captures.get_or_create(&ResultLabels {
                result: result.as_str(),
            });
        }
    }

    /// Creates a sink's alert counters at 0, for the same reason.
    pub fn sink_started(&self, sink: &str) {
        for result in ["ok", "failed"] {
            let _ = self.inner.alerts_sent.get_or_create(&AlertLabels {
                sink: sink.into(),
                result,
            });
        }
    }

    /// Creates a controller's error counter at 0, so that `rate()` and `increase()` see its first error
    /// and a dashboard shows a healthy controller as 0 rather than no data.
    pub fn controller_started(&self, controller: &str) {
        let _ = self
            .inner
            .reconcile_errors
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            });
    }

    /// A watched container's memory, keyed by its container ID (its labels may change: a pod
    /// adopted by another workload).
    pub fn container_memory(&self, id: &str, labels: ContainerLabels, m: ContainerMemory) {
        let mut containers = self.containers();
        if containers.forgotten.contains(id) {
            return;
        }
        if let Some(old) = containers.labels.get(id).filter(|old| **old != labels) {
            self.remove_container_series(old);
        }
        self.inner
            .working_set
            .get_or_create(&labels)
            .set(m.working_set);
        match m.limit {
            Some(limit) => {
                self.inner.memory_limit.get_or_create(&labels).set(limit);
            }
            None => {
                self.inner.memory_limit.remove(&labels);
            }
        }
        match m.seconds_to_oom.filter(|s| s.is_finite()) {
            Some(secs) => {
                self.inner.time_to_oom.get_or_create(&labels).set(secs);
            }
            None => {
                self.inner.time_to_oom.remove(&labels);
            }
        }
        containers.labels.insert(id.to_string(), labels);
    }

    /// Drops a gone (or no longer watched) container's memory series.
    pub fn forget_container(&self, id: &str) {
        let mut containers = self.containers();
        if let Some(labels) = containers.labels.remove(id) {
            self.remove_container_series(&labels);
        }
        if containers.forgotten.len() >= FORGOTTEN_MAX {
            containers.forgotten.clear();
        }
        containers.forgotten.insert(id.to_string());
    }

    /// A container watched again after `forget_container` (its LeakWatch came back).
    pub fn watch_container(&self, id: &str) {
        let mut containers = self.containers();
        containers.forgotten.remove(id);
    }

    /// The container table; a panic elsewhere while it was held leaves it usable (plain maps).
    fn containers(&self) -> std::sync::MutexGuard<'_, Containers> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn remove_container_series(&self, labels: &ContainerLabels) {
        self.inner.working_set.remove(labels);
        self.inner.memory_limit.remove(labels);
        self.inner.time_to_oom.remove(labels);
    }

    /// Counts a capture; its duration is observed unless it was skipped (nothing was timed).
    pub fn capture(&self, role: &str, duration: Duration, result: CaptureOutcome) {
        if result != CaptureOutcome::Skipped {
            self.inner
                .capture_duration
                .get_or_create(&RoleLabels { role: role.into() })
                .observe(duration.as_secs_f64());
        }
        self.inner
            .captures
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }

    pub fn analysis(&self, duration: Duration) {
        self.inner.analysis_duration.observe(duration.as_secs_f64());
    }

    pub fn reconcile_error(&self, controller: &str) {
        self.inner
            .reconcile_errors
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .inc();
    }

    /// `sink` is `alerts::Sink::as_str()`, or `events` for Kubernetes Events.
    pub fn alert_sent(&self, sink: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.inner
            .alerts_sent
            .get_or_create(&AlertLabels {
                sink: sink.into(),
                result,
            })
            .inc();
    }

    pub fn set_watched_pods(&self, n: usize) {
        self.inner
            .watched_pods
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_reports(&self, n: usize) {
        self.inner.reports.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition, `# EOF` included.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Formatting into a String cannot fail; an error here could only come from a metric's
        // own encoder, and a partial page is still better than none for a scrape.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

fn workload_labels(namespace: &str, workload: &str) -> WorkloadLabels {
    WorkloadLabels {
        namespace: namespace.into(),
        workload: workload.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_names_labels_and_values() {
        let m = Metrics::new();
        let shared = m.clone();
        m.oom_kill("shop", "Deployment/leaky-flask");
        shared.oom_kill("shop", "Deployment/leaky-flask");
        m.leak_detected("shop", "Deployment/leaky-flask", true);
        m.capture("A", Duration::from_millis(70), CaptureOutcome::Ok);
        m.capture("B", Duration::from_secs(3), CaptureOutcome::Failed);
        m.capture("B", Duration::ZERO, CaptureOutcome::Skipped);
        m.analysis(Duration::from_secs(2));
        m.reconcile_error("leakreport");
        m.alert_sent("webhook", true);
        m.alert_sent("alertmanager", false);
        m.set_watched_pods(7);
        m.set_reports(3);
        m.controller_started("pods");
        let fresh = Metrics::new();
        fresh.agent_started();
        fresh.sink_started("webhook");
        let text0 = fresh.encode();
        for line in [
            r#"leakhunt_capture_duration_seconds_count{role="A"} 0"#,
            r#"leakhunt_capture_duration_seconds_count{role="B"} 0"#,
            r#"leakhunt_captures_total{result="skipped"} 0"#,
            r#"leakhunt_alerts_sent_total{sink="webhook",result="failed"} 0"#,
        ] {
            assert!(
                text0.lines().any(|l| l == line),
                "missing {line:?} in\n{text0}"
            );
        }
        let labels = ContainerLabels {
            namespace: "shop".into(),
            workload: "Deployment/leaky-flask".into(),
            pod: "leaky-flask-7d9f-x2".into(),
            container: "app".into(),
        };
        let memory = ContainerMemory {
            working_set: 100 << 20,
            limit: Some(256 << 20),
            seconds_to_oom: Some(90.5),
        };
        m.container_memory("c1", labels, memory);
        let text = m.encode();
        for line in [
            "# TYPE leakhunt_oom_kills counter",
            r#"leakhunt_oom_kills_total{namespace="shop",workload="Deployment/leaky-flask"} 2"#,
            r#"leakhunt_leak_detected{namespace="shop",workload="Deployment/leaky-flask"} 1"#,
            "# UNIT leakhunt_capture_duration_seconds seconds",
            r#"leakhunt_capture_duration_seconds_bucket{le="0.1",role="A"} 1"#,
            r#"leakhunt_capture_duration_seconds_bucket{le="0.05",role="A"} 0"#,
            r#"leakhunt_capture_duration_seconds_count{role="B"} 1"#,
            r#"leakhunt_captures_total{result="ok"} 1"#,
            r#"leakhunt_captures_total{result="failed"} 1"#,
            r#"leakhunt_captures_total{result="skipped"} 1"#,
            r#"leakhunt_analysis_duration_seconds_bucket{le="2.5"} 1"#,
            "leakhunt_analysis_duration_seconds_sum 2.0",
            r#"leakhunt_reconcile_errors_total{controller="leakreport"} 1"#,
            r#"leakhunt_alerts_sent_total{sink="webhook",result="ok"} 1"#,
            r#"leakhunt_alerts_sent_total{sink="alertmanager",result="failed"} 1"#,
            "leakhunt_watched_pods 7",
            "leakhunt_reports 3",
            r#"leakhunt_reconcile_errors_total{controller="pods"} 0"#,
            "# UNIT leakhunt_container_working_set_bytes bytes",
            r#"leakhunt_container_working_set_bytes{namespace="shop",workload="Deployment/leaky-flask",pod="leaky-flask-7d9f-x2",container="app"} 104857600"#,
            r#"leakhunt_container_memory_limit_bytes{namespace="shop",workload="Deployment/leaky-flask",pod="leaky-flask-7d9f-x2",container="app"} 268435456"#,
            r#"leakhunt_container_time_to_oom_seconds{namespace="shop",workload="Deployment/leaky-flask",pod="leaky-flask-7d9f-x2",container="app"} 90.5"#,
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        m.leak_detected("shop", "Deployment/leaky-flask", false);
        assert!(m.encode().contains(
            r#"leakhunt_leak_detected{namespace="shop",workload="Deployment/leaky-flask"} 0"#
        ));
        m.forget_container("c1");
        m.forget_workload("shop", "Deployment/leaky-flask");
        assert!(!m.encode().contains("leaky-flask"));
    }

    fn labels(pod: &str) -> ContainerLabels {
        ContainerLabels {
            namespace: "shop".into(),
            workload: "Deployment/api".into(),
            pod: pod.into(),
            container: "app".into(),
        }
    }

    #[test]
    fn container_series_follow_the_container() {
        let m = Metrics::new();
        let growing = ContainerMemory {
            working_set: 10,
            limit: Some(100),
            seconds_to_oom: Some(30.0),
        };
        m.container_memory("c1", labels("api-1"), growing);
        m.container_memory("c2", labels("api-2"), growing);
        // Growth stopped, the limit removed: those series go, the working set stays.
        let flat = ContainerMemory {
            working_set: 12,
            limit: None,
            seconds_to_oom: None,
        };
        m.container_memory("c1", labels("api-1"), flat);
        let text = m.encode();
        assert!(text.contains(r#"leakhunt_container_working_set_bytes{namespace="shop",workload="Deployment/api",pod="api-1",container="app"} 12"#));
        assert!(!text.contains(r#"leakhunt_container_memory_limit_bytes{namespace="shop",workload="Deployment/api",pod="api-1""#));
        assert!(!text.contains(r#"leakhunt_container_time_to_oom_seconds{namespace="shop",workload="Deployment/api",pod="api-1""#));
        assert!(text.contains(r#"leakhunt_container_time_to_oom_seconds{namespace="shop",workload="Deployment/api",pod="api-2",container="app"} 30.0"#));
        // Gone; a sample still queued for it brings nothing back.
        m.forget_container("c1");
        m.container_memory("c1", labels("api-1"), growing);
        let text = m.encode();
        assert!(!text.contains("api-1"), "{text}");
        assert!(text.contains("api-2"));
        m.watch_container("c1");
        m.container_memory("c1", labels("api-1"), growing);
        assert!(m.encode().contains("api-1"));
        // Relabelled (another workload adopted the pod): the old series go.
        let mut adopted = labels("api-2");
        adopted.workload = "Deployment/api-v2".into();
        m.container_memory("c2", adopted, growing);
        let text = m.encode();
        assert!(
            !text.contains(r#"workload="Deployment/api",pod="api-2""#),
            "{text}"
        );
        assert!(text.contains(r#"workload="Deployment/api-v2",pod="api-2""#));
    }
}
