//! `leakhunt analyze-job`: diffs a snapshot pair on the node that holds it and writes the
//! findings into the LeakReport's status — the only thing its ServiceAccount may change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::{Api, Client};

use super::report_api::{self, now};
use crate::crd::{LeakReport, LeakReportStatus, Phase};
use crate::snapshot::{error_chain, Analyzer, Snapshotter};
use crate::status::{self, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use leakhunt_analyzer::findings::Findings;
use leakhunt_analyzer::timeline::{self, Trend};

#[derive(Debug, Clone)]
pub struct AnalyzeJob {
    pub namespace: String,
    pub report: String,
    pub before: PathBuf,
    pub after: PathBuf,
    pub sha256_before: Option<String>,
    pub sha256_after: Option<String>,
    /// How long memory must stay flat after a one-time rise for it to count as a step.
    pub settle: Duration,
    /// Allocation tracing was on at B (`--tracer-bytes`).
    pub tracer_bytes: Option<u64>,
}

/// Samples reach the report every report interval (10 s by default): past the settle time, wait
/// this much longer for the ones that cover it.
const SAMPLE_SLACK: Duration = Duration::from_secs(25);

/// Checks a snapshot against the digest the agent recorded: a file changed or replaced since
/// the capture is not analysed.
fn verify(path: &Path, want: Option<&str>) -> Result<(), String> {
    let got = crate::snapshot::sha256_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match want {
        Some(w) if !w.eq_ignore_ascii_case(&got) => Err(format!(
            "{} does not match the recorded SHA-256 (recorded {w}, now {got})",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// The trend of the report's timeline (of B's pod) around its snapshot pair.
pub fn trend(s: &LeakReportStatus, settle: Duration) -> Trend {
    let (Some(a), Some(b)) = (s.snapshot(Role::A), s.snapshot(Role::B)) else {
        return Trend::Unknown;
    };
    let secs = |t: &Time| t.0.as_millisecond() as f64 / 1e3;
    let mut points = s.timeline(&b.pod, &b.container);
    // An OOM kill after B: what follows is a restarted container, not a plateau; judged with
    // the samples before it.
    let killed = s
        .last_oom_kill
        .as_ref()
        .map(|k| secs(&k.time))
        .filter(|&k| k >= secs(&b.time));
    if let Some(k) = killed {
        points.retain(|p| p.t < k);
    }
    let t = timeline::judge(&points, secs(&a.time), secs(&b.time), settle.as_secs_f64());
    match t {
        Trend::Pending { .. } if killed.is_some() => Trend::Unknown,
        t => t,
    }
}

/// Waits while the timeline shows a one-time rise too recent to tell from growth: until memory
/// has been flat for the settle time after it, grows again, or the samples that would say are
/// overdue. A report that cannot be read ends the wait (the write after it says why).
async fn settle(api: &Api<LeakReport>, job: &AnalyzeJob) {
    let deadline = std::time::Instant::now() + job.settle + SAMPLE_SLACK;
    let mut announced = false;
    loop {
        let Ok(Some(report)) = report_api::get_status_opt(api, &job.report).await else {
            return;
        };
        let s = report.status.unwrap_or_default();
        let t = trend(&s, job.settle);
        if !matches!(t, Trend::Pending { .. }) || std::time::Instant::now() >= deadline {
            return;
        }
        if !announced {
            announced = true;
            tracing::info!(report = %job.report, trend = %t.sentence().unwrap_or_default(), "waiting for the timeline before the verdict");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Whether the report still waits for this pair (a new hunt may have replaced it).
fn awaits(s: &LeakReportStatus, sha_after: Option<&str>) -> bool {
    s.phase == Phase::Analyzing
        && sha_after.is_none_or(|sha| s.snapshots.iter().any(|r| r.is(Role::B) && r.sha256 == sha))
}

/// Runs the analysis and writes the outcome; an analysis failure is written too, then returned.
pub async fn run(client: Client, job: AnalyzeJob) -> anyhow::Result<()> {
    let api: Api<LeakReport> = Api::namespaced(client, &job.namespace);
    let started = std::time::Instant::now();
    let j = job.clone();
    let analysis = tokio::task::spawn_blocking(move || -> Result<Findings, String> {
        verify(&j.before, j.sha256_before.as_deref())?;
        verify(&j.after, j.sha256_after.as_deref())?;
        Analyzer
            .diff_traced(&j.before, &j.after, j.tracer_bytes.unwrap_or(0))
            .map_err(|e| error_chain(&e))
    })
    .await
    .map_err(|e| anyhow::anyhow!("analysis thread: {e}"))?;
    let sha_after = job.sha256_after.clone();
    match analysis {
        Ok(findings) => {
            tracing::info!(report = %job.report, verdict = ?findings.verdict, seconds = started.elapsed().as_secs_f64(), "analysed");
            // Nothing for the timeline to clear in a no-leak.
            if findings.verdict != leakhunt_analyzer::findings::Verdict::NoLeak {
                settle(&api, &job).await;
            }
            let written = report_api::update_status(&api, &job.report, |s| {
                if !awaits(s, sha_after.as_deref()) {
                    return false;
                }
                let mut f = findings.clone();
                timeline::apply(&mut f, trend(s, job.settle));
                status::analysed(s, &f, now());
                if job.tracer_bytes.is_some() {
                    keep_address(s, &f);
                }
                true
            })
            .await?;
            if written.is_none() {
                tracing::warn!(report = %job.report, "the report no longer waits for this pair (deleted or re-hunted); findings dropped");
            }
            Ok(())
        }
        Err(message) => {
            tracing::error!(report = %job.report, %message, "analysis failed");
            report_api::update_status(&api, &job.report, |s| {
                if !awaits(s, sha_after.as_deref()) {
                    return false;
                }
                status::analysis_failed(s, &message, now());
                true
            })
            .await?;
            Err(anyhow::anyhow!("analysis failed: {message}"))
        }
    }
}

/// With allocation tracing on, the top container suspect keeps its address: the agent asks the
/// live process about the object there. (Otherwise no address is written: it says where a
/// process's memory is, which nobody else needs.)
fn keep_address(s: &mut LeakReportStatus, f: &Findings) {
    use leakhunt_analyzer::findings::SuspectKind;
    let Some((path, address)) = f
        .suspects
        .iter()
        .find(|x| x.kind == SuspectKind::Container && x.address.is_some())
        .and_then(|x| Some((x.path.as_str(), x.address?)))
    else {
        return;
    };
    if let Some(r) = s
        .suspects
        .iter_mut()
        .find(|r| r.kind == "container" && r.path == path)
    {
        r.address = Some(format!("{address:#x}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Verdict;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn findings_make_an_analysed_report() {
        let mut f = Findings {
            verdict: leakhunt_analyzer::findings::Verdict::Leak,
            summary: "__main__.Profiler.results (list) +2000 items".into(),
            ..Default::default()
        };
        f.suspects.push(
            serde_json::from_value(serde_json::json!({
                "kind": "container", "path": "__main__.Profiler.results", "type": "list",
                "countBefore": 1000, "countAfter": 3000, "retainedBytesBefore": 90112,
                "retainedBytesAfter": 270336, "referrers": []
            }))
            .unwrap(),
        );
        let mut s = LeakReportStatus {
            phase: Phase::Analyzing,
            ..Default::default()
        };
        assert!(awaits(&s, None));
        status::analysed(&mut s, &f, Time(Timestamp::UNIX_EPOCH));
        assert_eq!(s.phase, Phase::Analysed);
        assert_eq!(s.verdict, Some(Verdict::Leak));
        assert_eq!(s.suspects[0].path, "__main__.Profiler.results");
        assert_eq!(s.growth.as_deref(), Some("+2000 items +176KiB"));
        assert_eq!(s.incidents.last().unwrap().reason, "LeakDetected");
        assert!(s
            .conditions
            .iter()
            .any(|c| c.type_ == "LeakDetected" && c.status == "True"));
        assert!(!awaits(&s, None), "analysed once");
    }

    /// The report of a pod whose memory stepped once, 20 MiB at t=110 s, between A (100 s) and
    /// B (130 s): flat after it for `flat` seconds of samples.
    fn stepped(flat: i64) -> LeakReportStatus {
        use crate::crd::{MemorySample, SnapshotRecord};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let at = |secs| Time(Timestamp::from_second(secs).unwrap());
        let record = |role: &str, secs| SnapshotRecord {
            role: role.into(),
            node: "n".into(),
            time: at(secs),
            size: 1,
            memory: None,
            sha256: String::new(),
            path: None,
            pid: 7,
            pod: "web-1".into(),
            container: "app".into(),
            retain_until: None,
            tracer_bytes: None,
        };
        let mut s = LeakReportStatus {
            phase: Phase::Analyzing,
            snapshots: vec![record("A", 100), record("B", 130)],
            ..Default::default()
        };
        for t in 90..=110 + flat {
            let mib = if t < 110 { 40 } else { 60 };
            s.push_sample(MemorySample {
                time: at(t),
                working_set: mib << 20,
                pod: "web-1".into(),
                container: "app".into(),
                java_heap: None,
                java_heap_max: None,
            });
            // Another replica's samples share the report and must not count.
            s.push_sample(MemorySample {
                time: at(t),
                working_set: (t % 7) << 24,
                pod: "web-2".into(),
                container: "app".into(),
                java_heap: None,
                java_heap_max: None,
            });
        }
        s
    }

    #[test]
    fn a_step_then_flat_is_not_a_leak_in_the_report() {
        let settle = Duration::from_secs(30);
        assert!(matches!(trend(&stepped(10), settle), Trend::Pending { .. }));
        let s = stepped(40);
        let t = trend(&s, settle);
        assert!(matches!(t, Trend::Step { .. }), "{t:?}");
        let mut f = Findings {
            verdict: leakhunt_analyzer::findings::Verdict::Leak,
            summary: "__main__ (dict) grew from 8 to 9 items, retaining +20.0 MiB more".into(),
            ..Default::default()
        };
        timeline::apply(&mut f, t);
        let mut s = s;
        status::analysed(&mut s, &f, Time(Timestamp::UNIX_EPOCH));
        assert_eq!(s.verdict, Some(Verdict::NoLeak));
        let summary = s.summary.clone().unwrap();
        assert!(
            summary
                .starts_with("memory rose once by 20.0 MiB at 00:01:50 UTC and has been flat for"),
            "{summary}"
        );
        assert!(s.timeline.as_deref().unwrap().ends_with("not a leak"));
        assert_eq!(s.incidents.last().unwrap().reason, "Analysed");
        // No pair, no timeline: the diff's verdict stands.
        s.snapshots.clear();
        assert_eq!(trend(&s, settle), Trend::Unknown);
    }

    #[test]
    fn digest_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.core");
        std::fs::write(&p, b"core").unwrap();
        assert!(verify(&p, None).is_ok());
        let err = verify(&p, Some("00")).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        assert!(verify(&dir.path().join("missing"), None).is_err());
    }
}
