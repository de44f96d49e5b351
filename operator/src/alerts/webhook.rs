//! Webhook bodies: leakhunt's JSON object, or Slack's incoming-webhook format.

use serde_json::{json, Value};

use super::{Alert, AlertKind};

/// Slack truncates nothing for us: a section's text over 3000 characters is rejected outright.
const SLACK_SECTION_MAX: usize = 3000;
/// A section field's text may hold at most 2000.
const SLACK_FIELD_MAX: usize = 2000;

/// `{"kind":"LeakDetected","namespace":..,"workload":..,"report":..,"summary":..,"suspect":..,
/// "growth":..,"verdict":..,"predictedOOMTime":..,"oomKills":..,"time":"RFC3339"}`. Absent
/// values are `null`, so every payload has the same keys.
pub fn json_payload(alert: &Alert) -> Value {
    json!({
        "kind": alert.kind.as_str(),
        "namespace": alert.namespace,
        "workload": alert.workload,
        "report": alert.report,
        "summary": alert.summary,
        "suspect": alert.suspect,
        "growth": alert.growth,
        "verdict": alert.verdict,
        "predictedOOMTime": alert.predicted_oom.map(|t| t.to_string()),
        "oomKills": alert.oom_kills,
        "time": alert.time.to_string(),
    })
}

/// `{"text": one line, "blocks": [...]}`: `text` is what notifications and clients without
/// blocks show; the blocks are the summary an on-call engineer reads first — what happened, then
/// verdict, suspect, growth and time to OOM side by side, then the two commands that open the
/// report (as YAML, and as the HTML page with its memory timeline).
pub fn slack_payload(alert: &Alert) -> Value {
    let mut fields = Vec::new();
    let mut field = |name: &str, value: String| {
        let text: String = format!("*{name}*\n{value}")
            .chars()
            .take(SLACK_FIELD_MAX)
            .collect();
        fields.push(json!({"type": "mrkdwn", "text": text}));
    };
    if let Some(v) = &alert.verdict {
        field("Verdict", escape(v));
    }
    if let Some(s) = &alert.suspect {
        field("Suspect", format!("`{}`", escape(s)));
    }
    if let Some(g) = &alert.growth {
        field("Growth", escape(g));
    }
    if let Some(oom) = alert.predicted_oom {
        field("Time to OOM", time_to(alert.time, oom));
    }
    if alert.oom_kills > 0 {
        field("OOM kills", alert.oom_kills.to_string());
    }
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": slack_section(alert)},
    })];
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": open_commands(alert)}],
    }));
    json!({"text": slack_text(alert), "blocks": blocks})
}

/// `in 2m 10s (22:04:05 UTC)`, or `passed (…)` once it is.
fn time_to(now: k8s_openapi::jiff::Timestamp, at: k8s_openapi::jiff::Timestamp) -> String {
    let secs = at.as_second() - now.as_second();
    let clock = at.strftime("%H:%M:%S UTC");
    match secs {
        s if s < 0 => format!("passed ({clock})"),
        s if s < 120 => format!("in {s} s ({clock})"),
        s if s < 7200 => format!("in {}m {}s ({clock})", s / 60, s % 60),
        s => format!("in {}h {}m ({clock})", s / 3600, (s % 3600) / 60),
    }
}

/// The report, as YAML and as the HTML page.
fn open_commands(alert: &Alert) -> String {
    let (ns, name) = (escape(&alert.namespace), escape(&alert.report));
    format!(
        "`kubectl -n {ns} get leakreport {name} -o yaml` · `leakhunt report -n {ns} {name} --html {name}.html`"
    )
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
            verdict: Some("Leak".into()),
            predicted_oom: None,
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
                "verdict": "Leak",
                "predictedOOMTime": null,
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
        let mut alert = leak();
        alert.predicted_oom = Some(Timestamp::from_second(1_767_225_600 + 130).unwrap());
        let v = slack_payload(&alert);
        assert_eq!(
            v["text"],
            ":rotating_light: LeakDetected shop/Deployment/leaky-flask: __main__.Profiler.results +2000 items +180KiB (2 OOM kills)"
        );
        assert_eq!(v["blocks"][0]["type"], "section");
        assert_eq!(v["blocks"][0]["text"]["type"], "mrkdwn");
        assert_eq!(
            v["blocks"][0]["text"]["text"],
            ":rotating_light: *LeakDetected* in `shop`: *Deployment/leaky-flask*\n\
             __main__.Profiler.results grows by 2000 items (+180KiB) between snapshots."
        );
        let fields: Vec<&str> = v["blocks"][1]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "*Verdict*\nLeak",
                "*Suspect*\n`__main__.Profiler.results`",
                "*Growth*\n+2000 items +180KiB",
                "*Time to OOM*\nin 2m 10s (00:02:10 UTC)",
                "*OOM kills*\n2",
            ]
        );
        assert_eq!(v["blocks"][2]["type"], "context");
        assert_eq!(
            v["blocks"][2]["elements"][0]["text"],
            "`kubectl -n shop get leakreport deployment-leaky-flask -o yaml` · `leakhunt report -n shop deployment-leaky-flask --html deployment-leaky-flask.html`"
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
        // Nor in the fields or the commands: a suspect or report name cannot ping a channel.
        a.suspect = Some("<!here> x".into());
        a.report = "r<!channel>".into();
        assert!(!slack_payload(&a).to_string().contains('<'));
        a.summary = "x".repeat(5000);
        let section = slack_section(&a);
        assert_eq!(section.chars().count(), SLACK_SECTION_MAX);
    }
}
