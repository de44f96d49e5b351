//! A report's snapshot pair: its analyzer Job run, watched and cleaned up; a failed capture or
//! analysis marked and announced once; a finished analysis announced.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::pods::{alert_of, announce_kill};
use super::{reference_of, workload_reference, Context, Error};
use crate::alerts::{AlertConfig, AlertKind};
use crate::cluster::job_spec::{self, JobOutcome};
use crate::cluster::report_api::{self, is_status, now};
use crate::crd::{Incident, LeakReport, LeakReportStatus, Phase, Verdict};
use crate::status::{self, Reason};

pub(super) async fn analyzing(
    report: &LeakReport,
    status: &LeakReportStatus,
    ctx: &Context,
) -> Result<Action, Error> {
    let namespace = report.namespace().unwrap_or_default();
    let api: Api<LeakReport> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = report.name_any();
    let Some((a, b)) = job_spec::pair(&status.snapshots) else {
        let msg = "the snapshot pair is incomplete (A and B on one node are needed)";
        mark_failed(ctx, report, None, "AnalysisFailed", msg).await?;
        return Ok(Action::await_change());
    };
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.cfg.job.namespace);
    let job_name = job_spec::job_name(b);
    let Some(existing) = jobs.get_opt(&job_name).await? else {
        let Some(job) = job_spec::analyzer_job(&ctx.cfg.job, report, a, b) else {
            let msg = "the snapshot files are not in one directory inside the snapshot directory";
            mark_failed(ctx, report, Some(&b.sha256), "AnalysisFailed", msg).await?;
            return Ok(Action::await_change());
        };
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => tracing::info!(report = %name, job = %job_name, "analyzer Job created"),
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
        report_api::update_status(&api, &name, |s| {
            if !still_awaits(s, Some(&b.sha256)) || s.analysis_job.as_deref() == Some(&job_name) {
                return false;
            }
            s.analysis_job = Some(job_name.clone());
            s.set_condition(
                "Analysed",
                false,
                "Analyzing",
                &format!("analyzer Job {job_name} runs"),
                now(),
            );
            true
        })
        .await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    match job_spec::outcome(&existing) {
        JobOutcome::Running => Ok(Action::requeue(Duration::from_secs(30))),
        JobOutcome::Succeeded => {
            record_job_duration(ctx, &existing);
            // The Job writes its findings before it exits; a Job that succeeded and left the
            // report analysing lost its write (it is retried never: say so).
            let finished = existing
                .status
                .as_ref()
                .and_then(|s| s.completion_time.clone());
            let late = finished.is_some_and(|t| {
                k8s_openapi::jiff::Timestamp::now()
                    .duration_since(t.0)
                    .as_secs()
                    > 30
            });
            if late {
                mark_failed(
                    ctx,
                    report,
                    Some(&b.sha256),
                    "AnalysisFailed",
                    "the analyzer Job finished without writing findings",
                )
                .await?;
                Ok(Action::await_change())
            } else {
                Ok(Action::requeue(Duration::from_secs(5)))
            }
        }
        JobOutcome::Failed { reason, message } => {
            record_job_duration(ctx, &existing);
            // The Job's condition does not say why its container died: its pod does.
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.cfg.job.namespace);
            let lp = ListParams::default().labels(&format!("job-name={}", existing.name_any()));
            let oom = match pods.list(&lp).await {
                Ok(list) => job_spec::oom_killed(&list.items),
                Err(e) => {
                    tracing::warn!(error = %e, job = %existing.name_any(), "cannot read the analyzer pods");
                    false
                }
            };
            if oom {
                let text =
                    job_spec::oom_text(job_spec::limit_of(&existing), &ctx.cfg.job.memory_max);
                mark_failed(ctx, report, Some(&b.sha256), "AnalyzerOOMKilled", &text).await?;
            } else {
                let text = job_spec::failure_text(&reason, &message, ctx.cfg.job.timeout);
                mark_failed(ctx, report, Some(&b.sha256), "AnalysisFailed", &text).await?;
            }
            Ok(Action::await_change())
        }
    }
}

/// The analysis's duration, from its Job, once. A Job that wrote its findings is seen complete
/// here, not while the report is analysing: the report is Analysed before its Job has exited, and
/// the Job's completion brings the report back (the controller watches the Jobs).
async fn time_analysis(status: &LeakReportStatus, ctx: &Context) {
    let Some(b) = status.snapshot(crate::status::Role::B) else {
        return;
    };
    let name = job_spec::job_name(b);
    if ctx.timed_jobs.lock().is_ok_and(|t| t.contains(&name)) {
        return;
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.cfg.job.namespace);
    match jobs.get_opt(&name).await {
        Ok(Some(job)) if matches!(job_spec::outcome(&job), JobOutcome::Succeeded) => {
            record_job_duration(ctx, &job);
        }
        // Gone (cleaned up, or this operator started after it): never asked for again.
        Ok(None) => {
            if let Ok(mut t) = ctx.timed_jobs.lock() {
                t.insert(name);
            }
        }
        // Still running (its completion brings the report back), or the API server erred.
        _ => {}
    }
}

fn record_job_duration(ctx: &Context, job: &Job) {
    let Some(s) = job.status.as_ref() else { return };
    let (Some(start), end) = (s.start_time.as_ref(), s.completion_time.as_ref()) else {
        return;
    };
    let end = end
        .map(|t| t.0)
        .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
    let name = job.name_any();
    let first = ctx.timed_jobs.lock().map(|mut t| {
        if t.len() > 10_000 {
            t.clear();
        }
        t.insert(name)
    });
    if first.unwrap_or(false) {
        let secs = end.duration_since(start.0).as_secs_f64().max(0.0);
        ctx.metrics.analysis(Duration::from_secs_f64(secs));
    }
}

/// Whether the report as read now still waits for the pair a decision was made on: the one
/// whose B is `b_sha256`, or with `None` still no complete pair. The report reconciled is a
/// cached copy; since it was read the agent may have started a new hunt with a new pair.
fn still_awaits(s: &LeakReportStatus, b_sha256: Option<&str>) -> bool {
    let pair = job_spec::pair(&s.snapshots);
    s.phase == Phase::Analyzing
        && match b_sha256 {
            Some(sha) => pair.is_some_and(|(_, b)| b.sha256 == sha),
            None => pair.is_none(),
        }
}

/// Marks the report failed (once) and says so in an Event and an alert. `b_sha256` names the
/// pair that failed (`None`: the pair is incomplete); a report analysing another pair by now is
/// left alone.
async fn mark_failed(
    ctx: &Context,
    report: &LeakReport,
    b_sha256: Option<&str>,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let namespace = report.namespace().unwrap_or_default();
    let api: Api<LeakReport> = Api::namespaced(ctx.client.clone(), &namespace);
    let written = report_api::update_status(&api, &report.name_any(), |s| {
        // Not the phase alone: the old pair's failed Job must not fail the new pair's analysis
        // (the analyzer Job checks the same before it writes).
        if !still_awaits(s, b_sha256) {
            return false;
        }
        s.phase = Phase::Failed;
        s.set_condition(status::ANALYSED, false, reason, message, now());
        s.push_incident(Incident {
            time: now(),
            reason: reason.into(),
            message: message.into(),
        });
        // Announced right below: mark it so the Failed reconcile does not announce it again.
        s.alerted_failure = last_failure(s).map(|(_, key)| key);
        true
    })
    .await?;
    if let Some(report) = written {
        notify_failure(ctx, &report).await;
    }
    Ok(())
}

/// The failure a Failed report shows: its last failure incident, and the key that names it for
/// the once-only alert (kept in `alertedFailure`).
fn last_failure(status: &LeakReportStatus) -> Option<(&Incident, String)> {
    let incident = status
        .incidents
        .iter()
        .rev()
        .find(|i| Reason::parse(&i.reason).is_some_and(Reason::is_failure))?;
    let key = format!("{}:{}", incident.reason, incident.time.0);
    Some((incident, key))
}

/// Whether this failure was alerted (also in the form an operator before 0.2 kept it).
fn failure_alerted(status: &LeakReportStatus, key: &str) -> bool {
    status.alerted_failure.as_deref() == Some(key)
        || status.alerted_snapshot.as_deref() == Some(format!("failed:{key}").as_str())
}

/// A Failed report — the analyzer Job failed or timed out, or it wrote its own failure, or
/// snapshot B could not be taken — is announced once: a Warning Event on the report, the
/// webhook and Alertmanager.
pub(super) async fn announce_failure(ctx: &Context, report: &LeakReport) -> Result<(), Error> {
    let status = report.status.clone().unwrap_or_default();
    let Some((_, key)) = last_failure(&status) else {
        return Ok(());
    };
    if failure_alerted(&status, &key) {
        return Ok(());
    }
    let namespace = report.namespace().unwrap_or_default();
    let api: Api<LeakReport> = Api::namespaced(ctx.client.clone(), &namespace);
    let written = report_api::update_status(&api, &report.name_any(), |s| {
        if s.phase != Phase::Failed || failure_alerted(s, &key) {
            return false;
        }
        s.alerted_failure = Some(key.clone());
        true
    })
    .await?;
    if let Some(report) = written {
        notify_failure(ctx, &report).await;
    }
    Ok(())
}

/// The Event and alert of a report's last failure.
async fn notify_failure(ctx: &Context, report: &LeakReport) {
    let status = report.status.clone().unwrap_or_default();
    let Some((incident, _)) = last_failure(&status) else {
        return;
    };
    let (reason, message) = (incident.reason.clone(), incident.message.clone());
    let namespace = report.namespace().unwrap_or_default();
    let pod = status
        .snapshots
        .iter()
        .rev()
        .map(|r| r.pod.as_str())
        .next()
        .unwrap_or_default();
    let labels = match pod_of(ctx, &namespace, pod).await {
        Some(p) => p.labels().clone(),
        None => Default::default(),
    };
    let cfg = ctx.alert_config(&namespace, &labels).await;
    if cfg.events {
        ctx.event(&reference_of(report), EventType::Warning, &reason, &message)
            .await;
    }
    let (kind, what) = if reason == Reason::AnalysisFailed.as_str() {
        (AlertKind::AnalysisFailed, "analysis")
    } else {
        (AlertKind::CaptureFailed, "capture")
    };
    let summary = format!(
        "{what} of {} failed: {message}",
        report.spec.workload.display
    );
    ctx.alert(&cfg, alert_of(kind, report, &status, summary))
        .await;
}

/// Worker processes the agent saw OOM-killed in containers that live on are announced like
/// container kills: Events on the pod, workload and report, the webhook and Alertmanager. Taken
/// off the queue first, so a restart never announces one twice.
pub(super) async fn announce_worker_kills(report: &LeakReport, ctx: &Context) -> Result<(), Error> {
    let namespace = report.namespace().unwrap_or_default();
    let api: Api<LeakReport> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut taken = Vec::new();
    let written = report_api::update_status(&api, &report.name_any(), |s| {
        taken = std::mem::take(&mut s.unannounced_kills);
        !taken.is_empty()
    })
    .await?;
    let Some(report) = written else {
        return Ok(());
    };
    let status = report.status.clone().unwrap_or_default();
    // Most batches are one pod's kills: read it (labels route the alert) once per pod.
    let mut pods: BTreeMap<String, (Option<Pod>, AlertConfig)> = BTreeMap::new();
    for kill in &taken {
        if !pods.contains_key(&kill.pod) {
            let pod = pod_of(ctx, &namespace, &kill.pod).await;
            let labels = pod.as_ref().map(|p| p.labels().clone()).unwrap_or_default();
            let cfg = ctx.alert_config(&namespace, &labels).await;
            pods.insert(kill.pod.clone(), (pod, cfg));
        }
        let (pod, cfg) = &pods[&kill.pod];
        let note = kill.worker_message();
        tracing::info!(namespace, workload = %report.spec.workload.display, %note, "worker OOM kill announced");
        announce_kill(ctx, cfg, pod.as_ref(), &report, &status, &note).await;
    }
    Ok(())
}

/// A leak verdict is announced once per snapshot pair: Events on the report, workload and pod,
/// the webhook and Alertmanager.
pub(super) async fn analysed(
    report: &LeakReport,
    status: &LeakReportStatus,
    ctx: &Context,
) -> Result<(), Error> {
    time_analysis(status, ctx).await;
    if status.verdict != Some(Verdict::Leak) {
        return Ok(());
    }
    let Some(b) = status.snapshot(crate::status::Role::B) else {
        return Ok(());
    };
    if status.alerted_snapshot.as_deref() == Some(b.sha256.as_str()) {
        return Ok(());
    }
    let namespace = report.namespace().unwrap_or_default();
    let api: Api<LeakReport> = Api::namespaced(ctx.client.clone(), &namespace);
    let sha = b.sha256.clone();
    // Mark first: a crash between mark and send loses one alert, never floods on restart loops.
    let written = report_api::update_status(&api, &report.name_any(), |s| {
        if s.alerted_snapshot.as_deref() == Some(sha.as_str()) {
            return false;
        }
        s.alerted_snapshot = Some(sha.clone());
        true
    })
    .await?;
    if written.is_none() {
        return Ok(());
    }
    let summary = status
        .summary
        .clone()
        .unwrap_or_else(|| format!("{} leaks memory", report.spec.workload.display));
    let pod = pod_of(ctx, &namespace, &b.pod).await;
    let pod_labels = pod.as_ref().map(|p| p.labels().clone()).unwrap_or_default();
    let cfg = ctx.alert_config(&namespace, &pod_labels).await;
    if cfg.events {
        ctx.event(
            &reference_of(report),
            EventType::Warning,
            "LeakDetected",
            &summary,
        )
        .await;
        if let Some(w) = workload_reference(report) {
            ctx.event(&w, EventType::Warning, "LeakDetected", &summary)
                .await;
        }
        if let Some(pod) = &pod {
            ctx.event(
                &reference_of(pod),
                EventType::Warning,
                "LeakDetected",
                &summary,
            )
            .await;
        }
    }
    ctx.alert(
        &cfg,
        alert_of(AlertKind::LeakDetected, report, status, summary),
    )
    .await;
    Ok(())
}

async fn pod_of(ctx: &Context, namespace: &str, name: &str) -> Option<Pod> {
    if name.is_empty() {
        return None;
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    api.get_opt(name).await.ok().flatten()
}
