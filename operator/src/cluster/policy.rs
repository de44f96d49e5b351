//! Which pods are hunted and how: the LeakWatch that governs a pod (the first valid one by name
//! that selects it), its thresholds and snapshot policy, or the capture annotation with the
//! agent's defaults. The agent's captures and the controller's alert routing both read it here,
//! so they never disagree.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::selector;
use super::workload;
use crate::crd::{LeakWatch, LeakWatchSpec};
use crate::node::Thresholds;
use crate::units::{parse_duration, parse_size};

/// How the hunt of one container is configured, from its LeakWatch or the annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub thresholds: Thresholds,
    pub max_snapshot_size: u64,
    pub keep_snapshots: Option<Duration>,
    /// Record CaptureFailed/CaptureSkipped Events on the pod.
    pub events: bool,
    /// Trace where the growth is allocated (LeakWatch `allocationSites`; never by annotation).
    pub allocation_sites: bool,
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
        allocation_sites: spec.allocation_sites,
    })
}

/// A pod's capture policy: the first valid LeakWatch (by name) in its namespace that selects it
/// and names its container (or none), else the annotation with the agent's defaults, else none.
pub fn policy_for(
    pod: &Pod,
    container: &str,
    watches: &[Arc<LeakWatch>],
    defaults: &Policy,
) -> Option<Policy> {
    let ns = pod.namespace().unwrap_or_default();
    let chosen = select_watch(
        watches.iter().map(|w| w.as_ref()),
        &ns,
        pod.labels(),
        Some(container),
    );
    if let Some(p) = chosen.and_then(|w| policy_of(&w.spec, defaults.events)) {
        return Some(p);
    }
    workload::capture_annotated(pod).then(|| defaults.clone())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Retention, WatchThresholds};

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
                    allocation_sites: false,
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
            allocation_sites: false,
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
