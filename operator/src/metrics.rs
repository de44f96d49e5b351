//! Prometheus metrics, all under one `leakhunt_` registry, served as OpenMetrics on `/metrics`.
//!
//! `Metrics` is a cheap handle (an `Arc`): clone it into every controller, the agent and the HTTP
//! server. Per-workload series are removed with `forget_workload` when the workload goes, so
//! the series count follows the cluster, not its history.

use std::fmt;
use std::sync::Arc;
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
        m.forget_workload("shop", "Deployment/leaky-flask");
        assert!(!m.encode().contains("leaky-flask"));
    }
}
