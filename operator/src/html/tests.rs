use super::*;
use crate::crd::{Incident, LeakReportSpec, MemorySample, ReportType, SnapshotRecord, WorkloadRef};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(1_796_000_000 + secs).unwrap())
}

fn suspect(path: &str, referrers: usize, sites: usize) -> ReportSuspect {
    ReportSuspect {
        kind: "container".into(),
        path: path.into(),
        type_name: "list".into(),
        count_before: 1000,
        count_after: 3000,
        retained_bytes_before: 90_112,
        retained_bytes_after: 270_336,
        referrers: (0..referrers).map(|i| format!("module m{i}")).collect(),
        allocation_sites: (0..sites)
            .map(|i| format!("items allocated at app.py:{i} in f (10 % of the growth)"))
            .collect(),
        address: None,
    }
}

fn snapshot(role: &str, secs: i64) -> SnapshotRecord {
    SnapshotRecord {
        role: role.into(),
        node: "node-1".into(),
        time: at(secs),
        size: 10 << 20,
        memory: Some(40 << 20),
        sha256: "ab".repeat(32),
        path: None,
        pid: 4242,
        pod: "web-1".into(),
        container: "app".into(),
        retain_until: None,
        tracer_bytes: None,
    }
}

/// A report at every bound: 120 samples, 10 suspects, 20 types, incidents and notes.
fn full(samples: usize) -> LeakReport {
    let mut r = LeakReport::new(
        "deployment-web",
        LeakReportSpec {
            workload: WorkloadRef::new("apps/v1", "Deployment", "web"),
            container: None,
        },
    );
    r.metadata.namespace = Some("shop".into());
    let status = LeakReportStatus {
        phase: Phase::Analysed,
        verdict: Some(Verdict::Leak),
        summary: Some("__main__.Profiler.results (list) +2000 items".into()),
        timeline: Some("memory grew over the whole pair".into()),
        suspects: (0..10)
            .map(|i| suspect(&format!("__main__.s{i}"), 20, 5))
            .collect(),
        types: (0..20)
            .map(|i| ReportType {
                name: format!("type{i}"),
                count_before: 10,
                count_after: 10 + i,
                bytes_before: 1 << 20,
                bytes_after: (1 << 20) + i * (1 << 20),
            })
            .collect(),
        memory: crate::crd::MemoryStatus {
            limit: Some(160 << 20),
            samples: (0..samples)
                .map(|i| MemorySample {
                    time: at(i as i64),
                    working_set: (60 << 20) + (i as i64) * (512 << 10),
                    pod: "web-1".into(),
                    container: "app".into(),
                    java_heap: None,
                    java_heap_max: None,
                })
                .collect(),
            growth_per_minute: Some(30 << 20),
            predicted_oom_time: Some(at(samples as i64 + 20)),
        },
        oom_kills: 1,
        snapshots: vec![snapshot("A", 10), snapshot("B", 100)],
        incidents: (0..20)
            .map(|i| Incident {
                time: at(i),
                reason: if i == 5 { "OOMKilled" } else { "SnapshotTaken" }.into(),
                message: format!("incident {i}"),
            })
            .collect(),
        notes: (0..20).map(|i| format!("note {i}")).collect(),
        ..Default::default()
    };
    r.status = Some(status);
    r
}

/// The texts of the page's SVG `<text>` elements, trimmed.
fn texts(page: &str) -> Vec<String> {
    page.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

#[test]
fn a_full_report_has_every_section_one_point_per_sample_and_stays_small() {
    let page = render(&full(120), "leakhunt test");
    for id in [
        "verdict",
        "evidence",
        "timeline",
        "suspects",
        "types-chart",
        "types",
        "heaps",
        "incidents",
        "snapshots",
        "notes",
    ] {
        assert!(
            page.contains(&format!("id=\"{id}\"")),
            "section {id} missing"
        );
    }
    assert_eq!(page.matches("<circle").count(), 120, "one point per sample");
    // A and B marked, the predicted kill drawn, the limit labelled.
    let labels = texts(&page);
    for want in ["A", "B", "OOM", "limit 160 MiB"] {
        assert!(labels.iter().any(|t| t == want), "{want} not in {labels:?}");
    }
    assert!(page.contains("__main__.s0") && page.contains("held by: module m0 → module m1"));
    assert!(page.contains("items allocated at app.py:0 in f"));
    assert!(page.len() < 1 << 20, "{} bytes", page.len());
    // Self-contained: nothing fetched, nothing run.
    for banned in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(!page.contains(banned), "{banned}");
    }
}

#[test]
fn hostile_names_are_text_not_markup() {
    let mut r = full(3);
    let s = r.status.as_mut().unwrap();
    s.suspects[0].path = "<script>alert(1)</script>".into();
    s.suspects[0].referrers = vec!["\"><img src=x onerror=alert(2)>".into()];
    s.types[19].name = "<script>alert(3)</script>".into();
    s.notes.push("</li></ul><script>alert(4)</script>".into());
    r.spec.workload.name = "<b>web</b>".into();
    let page = render(&r, "<footer>");
    assert!(!page.contains("<script"), "a name became markup");
    assert!(!page.contains("<img"));
    assert!(!page.contains("<b>web"));
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    // In the chart's labels too (plotters escapes its text).
    assert!(page.contains("&lt;script&gt;alert(3)"));
}

#[test]
fn kill_only_and_failed_reports_say_what_there_is() {
    let mut r = full(0);
    let s = r.status.as_mut().unwrap();
    s.phase = Phase::Watching;
    s.verdict = None;
    s.summary = None;
    s.timeline = None;
    s.snapshots.clear();
    s.suspects.clear();
    s.types.clear();
    s.memory.predicted_oom_time = None;
    s.notes = vec!["memory is not captured: no LeakWatch selects pod web-1".into()];
    let page = render(&r, "t");
    assert!(page.contains("OOM-killed, not captured"));
    assert!(page.contains("no snapshot of its memory was taken (memory is not captured"));
    assert!(page.contains("No memory samples") && page.contains("No snapshot was taken"));

    let mut r = full(10);
    let s = r.status.as_mut().unwrap();
    s.phase = Phase::Failed;
    s.verdict = None;
    s.summary = None;
    s.set_condition(
        "Analysed",
        false,
        "AnalyzerOOMKilled",
        "the analyzer Job was OOM-killed at its 1Gi limit",
        at(0),
    );
    let page = render(&r, "t");
    assert!(page.contains("analysis failed"));
    assert!(page.contains("The analysis failed: the analyzer Job was OOM-killed at its 1Gi limit"));
}

#[test]
fn a_jvms_heap_and_its_maximum_are_drawn_with_the_working_set() {
    let mut r = full(30);
    let plain = render(&r, "leakhunt test");
    assert!(!plain.contains("Java heap max"), "no JVM, no heap line");
    let s = r.status.as_mut().unwrap();
    for (i, m) in s.memory.samples.iter_mut().enumerate() {
        m.java_heap = Some((20 << 20) + (i as i64) * (1 << 20));
        m.java_heap_max = Some(64 << 20);
    }
    let page = render(&r, "leakhunt test");
    assert!(
        page.contains("Java heap max 64 MiB"),
        "the -Xmx line is labelled"
    );
    assert!(page.contains("the JVM's heap in use and its maximum"));
    // One more line than without the JVM: the heap in use, dashed.
    assert!(page.matches("<polyline").count() > plain.matches("<polyline").count());
}
