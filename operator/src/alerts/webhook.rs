//! Webhook bodies: leakhunt's JSON object, or Slack's incoming-webhook format.

use serde_json::{json, Value};

use super::{Alert, AlertKind};

/// Slack truncates nothing for us: a section's text over 3000 characters is rejected outright.
const SLACK_SECTION_MAX: usize = 3000;

/// `{"kind":"LeakDetected","namespace":..,"workload":..,"report":..,"summary":..,"suspect":..,
/// "growth":..,"oomKills":..,"time":"RFC3339"}`. Absent suspect and growth are `null`, so every
/// payload has the same keys.
pub fn json_payload(alert: &Alert) -> Value {
    json!({
        "kind": alert.kind.as_str(),
        "namespace": alert.namespace,
        "workload": alert.workload,
        "report": alert.report,
        "summary": alert.summary,
        "suspect": alert.suspect,
        "growth": alert.growth,
        "oomKills": alert.oom_kills,
        "time": alert.time.to_string(),
    })
}

/// `{"text": one line, "blocks": [a mrkdwn section]}`: `text` is what notifications and clients
/// without blocks show; the section adds the summary and how to look at the report.
pub fn slack_payload(alert: &Alert) -> Value {
    json!({
        "text": slack_text(alert),
        "blocks": [{
            "type": "section",
            "text": {"type": "mrkdwn", "text": slack_section(alert)},
        }],
    })
}

/// `:rotating_light: LeakDetected shop/Deployment/leaky-flask: __main__.Profiler.results +2000 items +180KiB (2 OOM kills)`
pub fn slack_text(alert: &Alert) -> String {
    let what = match (&alert.suspect, &alert.growth) {
        (Some(s), Some(g)) => format!("{s} {g}"),
        (Some(s), None) => s.clone(),
        (None, _) => alert.summary.clone(),
    };
    let line = format!(
        "{} {} {}/{}: {}{}",
        emoji(alert.kind),
        alert.kind,
        alert.namespace,
        alert.workload,
        one_line(&what),
        oom_suffix(alert.oom_kills),
    );
    escape(&line)
}

fn slack_section(alert: &Alert) -> String {
    let mut out = format!(
        "{} *{}* in `{}`: *{}*\n{}",
        emoji(alert.kind),
        escape(alert.kind.as_str()),
        escape(&alert.namespace),
        escape(&alert.workload),
        escape(&one_line(&alert.summary)),
    );
    if let Some(s) = &alert.suspect {
        out.push_str(&format!("\nSuspect: `{}`", escape(s)));
        if let Some(g) = &alert.growth {
            out.push_str(&format!(" {}", escape(g)));
        }
    }
    if alert.oom_kills > 0 {
        out.push_str(&format!("\nOOM kills: {}", alert.oom_kills));
    }
    out.push_str(&format!(
        "\nReport: `kubectl -n {} get leakreport {} -o yaml`",
        escape(&alert.namespace),
        escape(&alert.report)
    ));
    if out.chars().count() > SLACK_SECTION_MAX {
        out = out.chars().take(SLACK_SECTION_MAX - 1).collect();
        out.push('…');
    }
    out
}

fn emoji(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::LeakDetected => ":rotating_light:",
        AlertKind::OomKilled => ":boom:",
        AlertKind::CaptureFailed | AlertKind::AnalysisFailed => ":warning:",
    }
}

fn oom_suffix(n: i64) -> String {
    match n {
        n if n <= 0 => String::new(),
        1 => " (1 OOM kill)".into(),
        n => format!(" ({n} OOM kills)"),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Slack reads `<...>` as links and mentions (`<!channel>`), so the three characters it
/// reserves are escaped and nothing from a workload name can ping a channel.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    pub(crate) fn leak() -> Alert {
        Alert {
            kind: AlertKind::LeakDetected,
            namespace: "shop".into(),
            workload: "Deployment/leaky-flask".into(),
            report: "deployment-leaky-flask".into(),
            summary: "__main__.Profiler.results grows by 2000 items (+180KiB) between snapshots."
                .into(),
            suspect: Some("__main__.Profiler.results".into()),
            growth: Some("+2000 items +180KiB".into()),
            oom_kills: 2,
            time: Timestamp::from_second(1_767_225_600).unwrap(),
        }
    }

    #[test]
    fn json_payload_exact() {
        // Compared as values: key order on the wire is serde_json's business.
        assert_eq!(
            json_payload(&leak()),
            json!({
                "kind": "LeakDetected",
                "namespace": "shop",
                "workload": "Deployment/leaky-flask",
                "report": "deployment-leaky-flask",
                "summary": "__main__.Profiler.results grows by 2000 items (+180KiB) between snapshots.",
                "suspect": "__main__.Profiler.results",
                "growth": "+2000 items +180KiB",
                "oomKills": 2,
                "time": "2026-01-01T00:00:00Z"
            })
        );
        let mut oom = leak();
        oom.kind = AlertKind::OomKilled;
        oom.suspect = None;
        oom.growth = None;
        let v = json_payload(&oom);
        assert_eq!(v["kind"], "OOMKilled");
        assert!(v["suspect"].is_null() && v["growth"].is_null());
    }

    #[test]
    fn slack_payload_exact() {
        let v = slack_payload(&leak());
        assert_eq!(
            v["text"],
            ":rotating_light: LeakDetected shop/Deployment/leaky-flask: __main__.Profiler.results +2000 items +180KiB (2 OOM kills)"
        );
        assert_eq!(v["blocks"][0]["type"], "section");
        assert_eq!(v["blocks"][0]["text"]["type"], "mrkdwn");
        assert_eq!(
            v["blocks"][0]["text"]["text"],
            ":rotating_light: *LeakDetected* in `shop`: *Deployment/leaky-flask*\n\
             __main__.Profiler.results grows by 2000 items (+180KiB) between snapshots.\n\
             Suspect: `__main__.Profiler.results` +2000 items +180KiB\n\
             OOM kills: 2\n\
             Report: `kubectl -n shop get leakreport deployment-leaky-flask -o yaml`"
        );
    }

    #[test]
    fn slack_escapes_and_falls_back_to_summary() {
        let mut a = leak();
        a.kind = AlertKind::OomKilled;
        a.suspect = None;
        a.growth = None;
        a.oom_kills = 1;
        a.summary = "Killed <!channel> & \n more".into();
        let v = slack_payload(&a);
        assert_eq!(
            v["text"],
            ":boom: OOMKilled shop/Deployment/leaky-flask: Killed &lt;!channel&gt; &amp; more (1 OOM kill)"
        );
        let section = v["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(section.contains("Killed &lt;!channel&gt; &amp; more"));
        assert!(!section.contains('<'));
        a.summary = "x".repeat(5000);
        let section = slack_section(&a);
        assert_eq!(section.chars().count(), SLACK_SECTION_MAX);
    }
}
