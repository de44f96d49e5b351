//! Pods: OOM kills read from container statuses, counted once into the workload's report and
//! announced.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::EventType;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};

use super::{reference_of, watched_apis, workload_reference, Context, Error};
use crate::alerts::{Alert, AlertConfig, AlertKind};
use crate::cluster::kills::{container_kills, memory_limit, ContainerKill};
use crate::cluster::report_api::{self, new_report, now};
use crate::cluster::workload;
use crate::crd::{LeakReport, LeakReportStatus, LeakWatch};

/// Pods are streamed, not cached: the operator keeps no copy of every pod (memory stays flat
/// with thousands), only the keys of kills it has counted.
pub(super) async fn watch_pods(ctx: Arc<Context>) {
    let streams = watched_apis::<Pod>(&ctx).into_iter().map(|api| {
        let ctx = ctx.clone();
        async move {
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            let mut watched: usize = 0;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => watched = 0,
                    Ok(watcher::Event::InitApply(pod)) => {
                        watched += 1;
                        on_pod(&ctx, pod).await;
                    }
                    Ok(watcher::Event::InitDone) => ctx.metrics.set_watched_pods(watched),
                    Ok(watcher::Event::Apply(pod)) => on_pod(&ctx, pod).await,
                    Ok(watcher::Event::Delete(_)) => {}
                    Err(e) => {
                        ctx.metrics.reconcile_error("pods");
                        tracing::warn!(error = %e, "pod watch (retrying)");
                    }
                }
            }
        }
    });
    futures::future::join_all(streams).await;
}

async fn on_pod(ctx: &Context, pod: Pod) {
    let kills: Vec<ContainerKill> = container_kills(&pod)
        .into_iter()
        .filter(|k| !ctx.known_counted(&k.key))
        .collect();
    if kills.is_empty() {
        return;
    }
    // One retry pass per event; a failure is retried on the pod's next update or the watch's
    // periodic relist, since the kill stays in lastState until the next one.
    if let Err(e) = count_kills(ctx, &pod, &kills).await {
        ctx.metrics.reconcile_error("pods");
        tracing::warn!(error = %e, pod = %pod.name_any(), "OOM kill not recorded yet");
    }
}

async fn count_kills(ctx: &Context, pod: &Pod, kills: &[ContainerKill]) -> Result<(), Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let wl = workload::resolve(&ctx.lookup, pod).await?;
    let container = kills.first().map(|k| k.container.as_str());
    let report = report_api::ensure(&ctx.client, new_report(&namespace, &wl, container)).await?;
    let api: Api<LeakReport> = Api::namespaced(ctx.client.clone(), &namespace);
    // Read once: whether the pod is captured, and where its alerts go.
    let watches = ctx.watches_in(&namespace).await;
    let captured = capture_enabled(pod, &watches);
    let limit = container.and_then(|c| memory_limit(pod, c));
    let mut counted_now: Vec<ContainerKill> = Vec::new();
    let written = report_api::update_status(&api, &report.name_any(), |s| {
        counted_now.clear();
        for k in kills {
            if s.count_kill(&k.key, k.record(now()), k.message()) {
                counted_now.push(k.clone());
            }
        }
        let mut changed = !counted_now.is_empty();
        if s.memory.limit.is_none() && limit.is_some() {
            s.memory.limit = limit;
            changed = true;
        }
        if !captured && !s.not_captured() && s.snapshots.is_empty() {
            let why = format!(
                "no LeakWatch selects pod {} and it lacks the annotation {}=\"true\"",
                pod.name_any(),
                workload::CAPTURE_ANNOTATION
            );
            crate::status::not_captured(s, &why, now());
            changed = true;
        }
        changed
    })
    .await?;
    for k in kills {
        ctx.remember_counted(&k.key);
    }
    let Some(report) = written else { return Ok(()) };
    let status = report.status.clone().unwrap_or_default();
    let alert_cfg = ctx.alert_config_from(&watches, &namespace, pod.labels());
    for k in &counted_now {
        ctx.metrics.oom_kill(&namespace, &wl.display);
        tracing::info!(namespace, workload = %wl.display, key = %k.key, "OOM kill counted");
        announce_kill(ctx, &alert_cfg, Some(pod), &report, &status, &k.message()).await;
    }
    Ok(())
}

/// An OOM kill, counted: Events on the pod (when known), workload and report, then the alert.
pub(super) async fn announce_kill(
    ctx: &Context,
    cfg: &AlertConfig,
    pod: Option<&Pod>,
    report: &LeakReport,
    status: &LeakReportStatus,
    note: &str,
) {
    if cfg.events {
        if let Some(pod) = pod {
            ctx.event(&reference_of(pod), EventType::Warning, "OOMKilled", note)
                .await;
        }
        if let Some(w) = workload_reference(report) {
            ctx.event(&w, EventType::Warning, "OOMKilled", note).await;
        }
        ctx.event(&reference_of(report), EventType::Warning, "OOMKilled", note)
            .await;
    }
    let summary = format!(
        "{} OOM-killed: {note} ({} kills so far)",
        report.spec.workload.display, status.oom_kills
    );
    ctx.alert(cfg, alert_of(AlertKind::OomKilled, report, status, summary))
        .await;
}

pub(super) fn alert_of(
    kind: AlertKind,
    report: &LeakReport,
    status: &LeakReportStatus,
    summary: String,
) -> Alert {
    Alert {
        kind,
        namespace: report.namespace().unwrap_or_default(),
        workload: report.spec.workload.display.clone(),
        report: report.name_any(),
        summary,
        suspect: status.suspects.first().map(|s| s.path.clone()),
        growth: status.growth.clone(),
        verdict: status.verdict.map(|v| format!("{v:?}")),
        predicted_oom: status.memory.predicted_oom_time.as_ref().map(|t| t.0),
        oom_kills: status.oom_kills,
        time: k8s_openapi::jiff::Timestamp::now(),
    }
}

/// Whether the agent may capture this pod: the annotation, or a LeakWatch in its namespace.
fn capture_enabled(pod: &Pod, watches: &[LeakWatch]) -> bool {
    let ns = pod.namespace().unwrap_or_default();
    workload::capture_annotated(pod)
        || crate::cluster::policy::select_watch(watches, &ns, pod.labels(), None).is_some()
}
