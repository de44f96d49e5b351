//! Alertmanager v2 API: `POST {base}/api/v2/alerts` with a JSON array of alerts.
//!
//! No `endsAt`: Alertmanager then resolves the alert after its `resolve_timeout`, which is what a
//! one-off event (a kill, a verdict) wants; a re-sent alert with the same labels refreshes it.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::Alert;

/// Labels that say which alert this is; configured labels cannot replace them, or two
/// workloads' alerts would merge into one in Alertmanager.
const IDENTITY_LABELS: [&str; 4] = ["alertname", "namespace", "workload", "report"];

/// `{base}/api/v2/alerts`, whether or not `base` ends in a slash.
pub fn alerts_url(base: &str) -> String {
    format!("{}/api/v2/alerts", base.trim().trim_end_matches('/'))
}

/// The request body: an array of one alert. `extra` labels (team, severity...) are added and
/// may override `severity`, not the identity labels.
pub fn payload(alert: &Alert, extra: &BTreeMap<String, String>) -> Value {
    let mut labels = Map::new();
    labels.insert("severity".into(), alert.kind.severity().into());
    for (k, v) in extra {
        if !IDENTITY_LABELS.contains(&k.as_str()) {
            labels.insert(k.clone(), v.as_str().into());
        }
    }
    labels.insert("alertname".into(), alert.kind.alertname().into());
    labels.insert("namespace".into(), alert.namespace.as_str().into());
    labels.insert("workload".into(), alert.workload.as_str().into());
    labels.insert("report".into(), alert.report.as_str().into());

    let mut annotations = Map::new();
    annotations.insert("summary".into(), alert.summary.as_str().into());
    annotations.insert("description".into(), description(alert).into());
    // Annotation values must be strings: absent ones are left out rather than sent as null.
    if let Some(s) = &alert.suspect {
        annotations.insert("suspect".into(), s.as_str().into());
    }
    if let Some(g) = &alert.growth {
        annotations.insert("growth".into(), g.as_str().into());
    }
    json!([{
        "labels": labels,
        "annotations": annotations,
        "startsAt": alert.time.to_string(),
    }])
}

fn description(alert: &Alert) -> String {
    let mut out = format!(
        "{} {}/{}: {}",
        alert.kind, alert.namespace, alert.workload, alert.summary
    );
    if let Some(s) = &alert.suspect {
        out.push_str(&format!(" Suspect: {s}"));
        if let Some(g) = &alert.growth {
            out.push_str(&format!(" ({g})"));
        }
        out.push('.');
    }
    if alert.oom_kills > 0 {
        out.push_str(&format!(" OOM kills: {}.", alert.oom_kills));
    }
    out.push_str(&format!(
        " See `kubectl -n {} get leakreport {} -o yaml`.",
        alert.namespace, alert.report
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::AlertKind;
    use k8s_openapi::jiff::Timestamp;

    fn leak() -> Alert {
        Alert {
            kind: AlertKind::LeakDetected,
            namespace: "shop".into(),
            workload: "Deployment/leaky-flask".into(),
            report: "deployment-leaky-flask".into(),
            summary: "__main__.Profiler.results grows by 2000 items.".into(),
            suspect: Some("__main__.Profiler.results".into()),
            growth: Some("+2000 items +180KiB".into()),
            verdict: Some("Leak".into()),
            predicted_oom: None,
            oom_kills: 2,
            time: Timestamp::from_second(1_767_225_600).unwrap(),
        }
    }

    #[test]
    fn url_with_or_without_slash() {
        assert_eq!(alerts_url("http://am:9093"), "http://am:9093/api/v2/alerts");
        assert_eq!(
            alerts_url("http://am:9093/"),
            "http://am:9093/api/v2/alerts"
        );
        assert_eq!(
            alerts_url("https://mon.example/alertmanager//"),
            "https://mon.example/alertmanager/api/v2/alerts"
        );
    }

    #[test]
    fn payload_exact() {
        let extra = BTreeMap::from([
            ("team".to_string(), "shop".to_string()),
            ("severity".to_string(), "page".to_string()),
            // Cannot rename the alert or move it to another namespace.
            ("alertname".to_string(), "Other".to_string()),
            ("namespace".to_string(), "elsewhere".to_string()),
        ]);
        assert_eq!(
            payload(&leak(), &extra),
            json!([{
                "labels": {
                    "alertname": "WorkloadMemoryLeak",
                    "namespace": "shop",
                    "workload": "Deployment/leaky-flask",
                    "report": "deployment-leaky-flask",
                    "severity": "page",
                    "team": "shop"
                },
                "annotations": {
                    "summary": "__main__.Profiler.results grows by 2000 items.",
                    "description": "LeakDetected shop/Deployment/leaky-flask: __main__.Profiler.results grows by 2000 items. Suspect: __main__.Profiler.results (+2000 items +180KiB). OOM kills: 2. See `kubectl -n shop get leakreport deployment-leaky-flask -o yaml`.",
                    "suspect": "__main__.Profiler.results",
                    "growth": "+2000 items +180KiB"
                },
                "startsAt": "2026-01-01T00:00:00Z"
            }])
        );
    }

    #[test]
    fn payload_without_suspect() {
        let mut a = leak();
        a.kind = AlertKind::OomKilled;
        a.suspect = None;
        a.growth = None;
        a.oom_kills = 0;
        let v = payload(&a, &BTreeMap::new());
        assert_eq!(v[0]["labels"]["alertname"], "WorkloadOOMKilled");
        assert_eq!(v[0]["labels"]["severity"], "critical");
        let ann = v[0]["annotations"].as_object().unwrap();
        assert!(!ann.contains_key("suspect") && !ann.contains_key("growth"));
        assert!(v[0].get("endsAt").is_none());
    }
}
