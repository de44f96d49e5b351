//! A LeakReport as one self-contained HTML page (`leakhunt report --html`, `leakhunt hunt
//! --html`): what an on-call engineer opens from a chat attachment or an air-gapped laptop. No
//! script, no external font, stylesheet or image: the charts are inline SVG (`charts.rs`), the
//! styles one `<style>`. Every string from the report is escaped — a class may be named
//! `<script>` — and the report holds names, counts and sizes only, never memory contents.

mod charts;
mod pages;

pub use pages::{index, pages};

use std::fmt::Write as _;

use crate::crd::{human_bytes, LeakReport, LeakReportStatus, Phase, ReportSuspect, Verdict};
use crate::status::Role;

/// `text` with the five characters HTML gives meaning escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330; margin: 0; background: #f5f6f8; }
main { max-width: 1040px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 20px; margin: 8px 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; border-bottom: 1px solid #d8dbe2; padding-bottom: 4px; }
.verdict { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600; color: #fff; background: #6b7280; }
.verdict.Leak { background: #c0392b; } .verdict.NoLeak { background: #2e7d32; } .verdict.Inconclusive { background: #b7791f; }
.evidence { font-size: 16px; margin: 10px 0; }
.meta { color: #5b6272; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e6e8ed; vertical-align: top; }
th { background: #eef0f4; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.path { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; word-break: break-all; }
.sub { color: #5b6272; font-size: 13px; }
.grow { color: #c0392b; font-weight: 600; }
figure { margin: 0; background: #fff; padding: 8px; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: #5b6272; font-size: 13px; padding: 4px 0 0; }
ul.notes li { margin: 2px 0; }
footer { color: #8a90a0; font-size: 12px; margin-top: 32px; }
"#;

/// A page's start, up to its opened `<main>`: the title (escaped here) and the one stylesheet.
fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} — leakhunt</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        escape(title)
    )
}

/// The footer: `leakhunt 0.1.0, 2026-12-04T22:50:00Z`.
pub fn generated_by() -> String {
    format!(
        "leakhunt {}, {}",
        env!("CARGO_PKG_VERSION"),
        k8s_openapi::jiff::Timestamp::now()
    )
}

/// The page for `report`; `generated` says when and by what (the footer).
pub fn render(report: &LeakReport, generated: &str) -> String {
    let default = LeakReportStatus::default();
    let s = report.status.as_ref().unwrap_or(&default);
    let name = report.metadata.name.clone().unwrap_or_default();
    let ns = report.metadata.namespace.clone().unwrap_or_default();
    let wl = &report.spec.workload;
    let mut h = String::with_capacity(64 << 10);
    h.push_str(&head(&format!(
        "{} {}/{}",
        verdict_word(s),
        wl.kind,
        wl.name
    )));
    // A local hunt's "workload" is a command line: `Process: python app.py`.
    let sep = if wl.kind == "Process" { ": " } else { "/" };
    let _ = write!(
        h,
        "<h1>{}{sep}{} <span class=\"verdict {}\" id=\"verdict\">{}</span></h1>\n\
         <p class=\"meta\">LeakReport <span class=\"path\">{}/{}</span> · phase {} · {} OOM kill{}</p>\n",
        escape(&wl.kind),
        escape(&wl.name),
        s.verdict.map(verdict_class).unwrap_or("none"),
        escape(&verdict_word(s)),
        escape(&ns),
        escape(&name),
        escape(&format!("{:?}", s.phase)),
        s.oom_kills,
        if s.oom_kills == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        h,
        "<p class=\"evidence\" id=\"evidence\">{}</p>",
        escape(&evidence(s))
    );
    timeline_section(&mut h, s);
    suspects_section(&mut h, s);
    types_section(&mut h, s);
    heaps_section(&mut h, s);
    incidents_section(&mut h, s);
    snapshots_section(&mut h, s);
    let _ = write!(
        h,
        "<footer>{}</footer>\n</main>\n</body>\n</html>\n",
        escape(generated)
    );
    h
}

fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Leak => "Leak",
        Verdict::NoLeak => "NoLeak",
        Verdict::Inconclusive => "Inconclusive",
    }
}

/// The badge: the verdict, or where the hunt is without one.
fn verdict_word(s: &LeakReportStatus) -> String {
    match (s.verdict, s.phase) {
        (Some(Verdict::Leak), _) => "leak".into(),
        (Some(Verdict::NoLeak), _) => "no leak".into(),
        (Some(Verdict::Inconclusive), _) => "inconclusive".into(),
        (None, Phase::Failed) => "analysis failed".into(),
        (None, Phase::Watching) if s.oom_kills > 0 => "OOM-killed, not captured".into(),
        (None, p) => format!("{p:?}").to_lowercase(),
    }
}

/// The verdict and its evidence, in one sentence.
fn evidence(s: &LeakReportStatus) -> String {
    let mut parts: Vec<String> = Vec::new();
    match (&s.summary, s.phase) {
        (Some(summary), _) => parts.push(summary.clone()),
        (None, Phase::Failed) => parts.push(
            s.conditions
                .iter()
                .find(|c| c.type_ == "Analysed")
                .map(|c| format!("The analysis failed: {}", c.message))
                .unwrap_or_else(|| "The analysis failed.".into()),
        ),
        (None, _) if s.snapshots.is_empty() && s.oom_kills > 0 => parts.push(format!(
            "{} OOM kill{} counted; no snapshot of its memory was taken{}",
            s.oom_kills,
            if s.oom_kills == 1 { "" } else { "s" },
            s.notes
                .first()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        )),
        (None, _) => parts.push("No verdict yet.".into()),
    }
    if let Some(t) = &s.timeline {
        parts.push(t.clone());
    }
    if let Some(oom) = &s.memory.predicted_oom_time {
        parts.push(format!("predicted OOM at {}", oom.0));
    }
    let mut sentence = parts.join("; ");
    if !sentence.ends_with('.') {
        sentence.push('.');
    }
    sentence
}

fn timeline_section(h: &mut String, s: &LeakReportStatus) {
    h.push_str("<h2>Memory timeline</h2>\n");
    match charts::timeline(s) {
        Some(Ok(svg)) => {
            let _ = writeln!(
                h,
                "<figure id=\"timeline\">{svg}<figcaption>Working set of each container against its limit \
                 ({} samples{}); A and B are the snapshots, ✕ an OOM kill, OOM the predicted kill.{}</figcaption></figure>",
                s.memory.samples.len(),
                s.memory
                    .limit
                    .map(|l| format!(", limit {}", human_bytes(l.max(0) as u64)))
                    .unwrap_or_default(),
                if s.memory.samples.iter().any(|m| m.java_heap.is_some()) {
                    " Dashed, in purple: the JVM's heap in use and its maximum (-Xmx)."
                } else {
                    ""
                }
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(h, "<p>The timeline could not be drawn: {}</p>", escape(&e));
        }
        None => h.push_str("<p>No memory samples in this report.</p>\n"),
    }
}

fn suspects_section(h: &mut String, s: &LeakReportStatus) {
    h.push_str("<h2>Suspects</h2>\n");
    if s.suspects.is_empty() {
        h.push_str("<p>No suspects.</p>\n");
        return;
    }
    h.push_str(
        "<table id=\"suspects\">\n<tr><th>#</th><th>Where</th><th>Type</th><th class=\"num\">Items</th><th class=\"num\">Retained</th></tr>\n",
    );
    for (i, x) in s.suspects.iter().enumerate() {
        suspect_row(h, i + 1, x);
    }
    h.push_str("</table>\n");
}

fn suspect_row(h: &mut String, n: usize, x: &ReportSuspect) {
    let items = x.count_after - x.count_before;
    let bytes = x.retained_bytes_after - x.retained_bytes_before;
    let _ = write!(
        h,
        "<tr class=\"suspect\"><td>{n}</td><td><span class=\"path\">{}</span> <span class=\"sub\">({})</span>",
        escape(&x.path),
        escape(&x.kind)
    );
    if !x.referrers.is_empty() {
        let chain: Vec<String> = x.referrers.iter().map(|r| escape(r)).collect();
        let _ = write!(h, "<div class=\"sub\">held by: {}</div>", chain.join(" → "));
    }
    for site in &x.allocation_sites {
        let _ = write!(h, "<div class=\"sub site\">{}</div>", escape(site));
    }
    let _ = writeln!(
        h,
        "</td><td class=\"path\">{}</td><td class=\"num\">{} → {} <span class=\"grow\">{}</span></td>\
         <td class=\"num\">{} → {} <span class=\"grow\">{}</span></td></tr>",
        escape(&x.type_name),
        x.count_before,
        x.count_after,
        signed(items),
        human_bytes(x.retained_bytes_before.max(0) as u64),
        human_bytes(x.retained_bytes_after.max(0) as u64),
        signed_bytes(bytes)
    );
}

fn types_section(h: &mut String, s: &LeakReportStatus) {
    h.push_str("<h2>Types that grew</h2>\n");
    if s.types.is_empty() {
        h.push_str("<p>No type census in this report.</p>\n");
        return;
    }
    match charts::types(s) {
        Some(Ok(svg)) => {
            let _ = writeln!(
                h,
                "<figure id=\"types-chart\">{svg}<figcaption>Bytes gained between the snapshots, by type.</figcaption></figure>"
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(h, "<p>The chart could not be drawn: {}</p>", escape(&e));
        }
        None => h.push_str("<p>No type gained bytes.</p>\n"),
    }
    h.push_str(
        "<table id=\"types\">\n<tr><th>Type</th><th class=\"num\">Instances</th><th class=\"num\">Bytes</th></tr>\n",
    );
    for t in &s.types {
        let _ = writeln!(
            h,
            "<tr><td class=\"path\">{}</td><td class=\"num\">{} → {} <span class=\"grow\">{}</span></td>\
             <td class=\"num\">{} → {} <span class=\"grow\">{}</span></td></tr>",
            escape(&t.name),
            t.count_before,
            t.count_after,
            signed(t.count_after - t.count_before),
            human_bytes(t.bytes_before.max(0) as u64),
            human_bytes(t.bytes_after.max(0) as u64),
            signed_bytes(t.bytes_after - t.bytes_before)
        );
    }
    h.push_str("</table>\n");
}

/// The runtime's heap (objects the analysis named) against native memory (suspects the generic
/// census found outside them).
fn heaps_section(h: &mut String, s: &LeakReportStatus) {
    if s.suspects.is_empty() && s.types.is_empty() {
        return;
    }
    let runtime: i64 = s.types.iter().map(|t| t.bytes_after - t.bytes_before).sum();
    let native: i64 = s
        .suspects
        .iter()
        .filter(|x| x.kind == "native")
        .map(|x| x.retained_bytes_after - x.retained_bytes_before)
        .sum();
    let _ = write!(
        h,
        "<h2>Runtime heap and native memory</h2>\n<table id=\"heaps\">\n\
         <tr><th>Where</th><th class=\"num\">Growth between the snapshots</th></tr>\n\
         <tr><td>runtime heap (the types above)</td><td class=\"num\">{}</td></tr>\n\
         <tr><td>native memory (native suspects)</td><td class=\"num\">{}</td></tr>\n</table>\n",
        signed_bytes(runtime),
        if s.suspects.iter().any(|x| x.kind == "native") {
            signed_bytes(native)
        } else {
            "none found growing".into()
        }
    );
}

fn incidents_section(h: &mut String, s: &LeakReportStatus) {
    h.push_str("<h2>Incidents</h2>\n");
    if s.incidents.is_empty() {
        h.push_str("<p>None.</p>\n");
        return;
    }
    h.push_str("<table id=\"incidents\">\n<tr><th>When</th><th>What</th><th></th></tr>\n");
    for i in &s.incidents {
        let _ = writeln!(
            h,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&i.time.0.to_string()),
            escape(&i.reason),
            escape(&i.message)
        );
    }
    h.push_str("</table>\n");
}

fn snapshots_section(h: &mut String, s: &LeakReportStatus) {
    h.push_str("<h2>Snapshots</h2>\n");
    if s.snapshots.is_empty() {
        h.push_str("<p>No snapshot was taken.</p>\n");
    } else {
        h.push_str(
            "<table id=\"snapshots\">\n<tr><th>Role</th><th>When</th><th>Of</th><th class=\"num\">File</th><th class=\"num\">Memory</th><th>SHA-256</th><th>File now</th></tr>\n",
        );
        for r in &s.snapshots {
            let role = if r.is(Role::A) {
                "A (baseline)"
            } else {
                "B (near the limit)"
            };
            let of = if r.pod.is_empty() {
                format!("pid {}", r.pid)
            } else {
                format!("pid {} in {}/{} on {}", r.pid, r.pod, r.container, r.node)
            };
            let _ = writeln!(
                h,
                "<tr><td>{role}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"path\">{}…</td><td>{}</td></tr>",
                escape(&r.time.0.to_string()),
                escape(&of),
                human_bytes(r.size.max(0) as u64),
                r.memory
                    .map(|m| human_bytes(m.max(0) as u64))
                    .unwrap_or_default(),
                escape(r.sha256.get(..16).unwrap_or(&r.sha256)),
                match &r.path {
                    Some(p) => format!("kept at <span class=\"path\">{}</span>", escape(p)),
                    None => "deleted after analysis".into(),
                }
            );
        }
        h.push_str("</table>\n");
    }
    if !s.notes.is_empty() {
        h.push_str("<h2>Notes: what was and was not captured or analysed, and why</h2>\n<ul class=\"notes\" id=\"notes\">\n");
        for n in &s.notes {
            let _ = writeln!(h, "<li>{}</li>", escape(n));
        }
        h.push_str("</ul>\n");
    }
}

fn signed(n: i64) -> String {
    if n >= 0 {
        format!("+{n}")
    } else {
        n.to_string()
    }
}

fn signed_bytes(n: i64) -> String {
    if n >= 0 {
        format!("+{}", human_bytes(n as u64))
    } else {
        format!("-{}", human_bytes(n.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests;
