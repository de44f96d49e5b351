//! `leakhunt analyze-job`: diffs a snapshot pair on the node that holds it and writes the
//! findings into the LeakReport's status — the only thing its ServiceAccount may change.

use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};

use super::reports::{self, now};
use crate::crd::{Incident, LeakReport, LeakReportStatus, Phase, Verdict};
use leakhunt_analyzer::findings::Findings;

#[derive(Debug, Clone)]
pub struct AnalyzeJob {
    pub namespace: String,
    pub report: String,
    pub before: PathBuf,
    pub after: PathBuf,
    pub sha256_before: Option<String>,
    pub sha256_after: Option<String>,
}

/// Checks a snapshot against the digest the agent recorded: a file changed or replaced since
/// the capture is not analysed.
fn verify(path: &Path, want: Option<&str>) -> Result<(), String> {
    let got =
        crate::hunt::report::sha256_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match want {
        Some(w) if !w.eq_ignore_ascii_case(&got) => Err(format!(
            "{} does not match the recorded SHA-256 (recorded {w}, now {got})",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// The status after a successful diff: findings, phase, conditions, incident.
pub fn record_findings(s: &mut LeakReportStatus, f: &Findings, now_ts: Timestamp) {
    let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now_ts);
    s.apply_findings(f);
    s.phase = Phase::Analysed;
    let summary = s.summary.clone().unwrap_or_else(|| "analysed".into());
    s.set_condition("Analysed", true, "DiffDone", &summary, t.clone());
    let leak = s.verdict == Some(Verdict::Leak);
    s.set_condition(
        "LeakDetected",
        leak,
        if leak {
            "Accumulates"
        } else {
            "NothingAccumulates"
        },
        &summary,
        t.clone(),
    );
    s.notes = f.notes.iter().take(20).cloned().collect();
    s.push_incident(Incident {
        time: t,
        reason: if leak { "LeakDetected" } else { "Analysed" }.into(),
        message: summary,
    });
}

/// Whether the report still waits for this pair (a new hunt may have replaced it).
fn awaits(s: &LeakReportStatus, sha_after: Option<&str>) -> bool {
    s.phase == Phase::Analyzing
        && sha_after.is_none_or(|sha| s.snapshots.iter().any(|r| r.role == "B" && r.sha256 == sha))
}

/// Runs the analysis and writes the outcome; an analysis failure is written too, then returned.
pub async fn run(client: Client, job: AnalyzeJob) -> anyhow::Result<()> {
    let api: Api<LeakReport> = Api::namespaced(client, &job.namespace);
    let started = std::time::Instant::now();
    let j = job.clone();
    let analysis = tokio::task::spawn_blocking(move || -> Result<Findings, String> {
        verify(&j.before, j.sha256_before.as_deref())?;
        verify(&j.after, j.sha256_after.as_deref())?;
        leakhunt_analyzer::analysis::diff_paths(&j.before, &j.after, None)
            .map_err(|e| crate::hunt::snapshot::error_chain(&e))
    })
    .await
    .map_err(|e| anyhow::anyhow!("analysis thread: {e}"))?;
    let sha_after = job.sha256_after.clone();
    match analysis {
        Ok(findings) => {
            tracing::info!(report = %job.report, verdict = ?findings.verdict, seconds = started.elapsed().as_secs_f64(), "analysed");
            let written = reports::update_status(&api, &job.report, |s| {
                if !awaits(s, sha_after.as_deref()) {
                    return false;
                }
                record_findings(s, &findings, Timestamp::now());
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
            reports::update_status(&api, &job.report, |s| {
                if !awaits(s, sha_after.as_deref()) {
                    return false;
                }
                s.phase = Phase::Failed;
                s.set_condition("Analysed", false, "AnalysisFailed", &message, now());
                s.push_incident(Incident {
                    time: now(),
                    reason: "AnalysisFailed".into(),
                    message: message.clone(),
                });
                true
            })
            .await?;
            Err(anyhow::anyhow!("analysis failed: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        record_findings(&mut s, &f, Timestamp::UNIX_EPOCH);
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
