//! Housekeeping: expired reports and Jobs deleted, the metrics of deleted reports forgotten,
//! LeakWatch status kept current.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::{watched_apis, Context};
use crate::cluster::job_spec;
use crate::cluster::report_api::{is_status, now};
use crate::cluster::selector;
use crate::crd::{LeakReport, LeakWatch};

/// Deletes analyzer Jobs whose report is gone (owner references cannot cross namespaces, so
/// the garbage collector does not). Finished Jobs go by their TTL.
pub(super) async fn collect_garbage(ctx: Arc<Context>) {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.cfg.job.namespace);
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        forget_deleted_reports(&ctx).await;
        let list = match jobs
            .list(&ListParams::default().labels(job_spec::JOB_SELECTOR))
            .await
        {
            Ok(l) => l,
            Err(e) => {
                ctx.metrics.reconcile_error("gc");
                tracing::warn!(error = %e, "listing analyzer Jobs");
                continue;
            }
        };
        for j in list.items {
            let Some((ns, name)) = j
                .annotations()
                .get(job_spec::REPORT_ANNOTATION)
                .and_then(|r| r.split_once('/'))
            else {
                continue;
            };
            let reports: Api<LeakReport> = Api::namespaced(ctx.client.clone(), ns);
            if let Ok(None) = reports.get_opt(name).await {
                let dp = DeleteParams::background();
                match jobs.delete(&j.name_any(), &dp).await {
                    Ok(_) => {
                        tracing::info!(job = %j.name_any(), "deleted analyzer Job of a deleted report")
                    }
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => tracing::warn!(error = %e, "deleting analyzer Job"),
                }
            }
        }
    }
}

/// Drops the metric series of workloads whose report is gone (deleted with its workload), so a
/// deleted leaking workload stops firing `leak_detected`; counts the reports.
async fn forget_deleted_reports(ctx: &Context) {
    let api: Api<LeakReport> = Api::all(ctx.client.clone());
    let Ok(list) = api.list_metadata(&ListParams::default()).await else {
        return;
    };
    ctx.metrics.set_reports(list.items.len());
    let live: HashSet<(String, String)> = list
        .items
        .iter()
        .map(|r| (r.namespace().unwrap_or_default(), r.name_any()))
        .collect();
    let Ok(mut series) = ctx.series.lock() else {
        return;
    };
    series.retain(|report, display| {
        let keep = live.contains(report);
        if !keep {
            ctx.metrics.forget_workload(&report.0, display);
        }
        keep
    });
}

/// Keeps each LeakWatch's `matchedPods` and `Valid` condition current.
pub(super) async fn leakwatch_status(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        for api in watched_apis::<LeakWatch>(&ctx) {
            let Ok(list) = api.list(&ListParams::default()).await else {
                ctx.metrics.reconcile_error("leakwatches");
                continue;
            };
            for w in list.items {
                if let Err(e) = update_watch(&ctx, &w).await {
                    ctx.metrics.reconcile_error("leakwatches");
                    tracing::warn!(error = %e, watch = %w.name_any(), "LeakWatch status");
                }
            }
        }
    }
}

async fn update_watch(ctx: &Context, w: &LeakWatch) -> Result<(), kube::Error> {
    let ns = w.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let query = selector::to_query(&w.spec.selector);
    let matched = pods
        .list_metadata(&ListParams::default().labels(&query))
        .await?
        .items
        .len() as i64;
    let problems = crate::cluster::policy::watch_problems(&w.spec);
    let mut status = w.status.clone().unwrap_or_default();
    let before = status.clone();
    status.matched_pods = matched;
    let (valid, reason, message) = match problems {
        None => (true, "Valid", "the spec parses".to_string()),
        Some(p) => (false, "Invalid", p),
    };
    crate::crd::set_condition(
        &mut status.conditions,
        "Valid",
        valid,
        reason,
        &message,
        now(),
    );
    // URLs outside the allowed prefixes do not make the watch invalid (capture goes on); they
    // are ignored, and said so here.
    let refused = w
        .spec
        .alerts
        .as_ref()
        .and_then(|a| ctx.cfg.alerts.refused_urls(a));
    let (routed, reason, message) = match refused {
        None => (true, "Routed", "alerts go where the spec says".to_string()),
        Some(why) => (false, "URLNotAllowed", why),
    };
    crate::crd::set_condition(
        &mut status.conditions,
        "AlertsRouted",
        routed,
        reason,
        &message,
        now(),
    );
    if status == before {
        return Ok(());
    }
    let api: Api<LeakWatch> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &w.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}
