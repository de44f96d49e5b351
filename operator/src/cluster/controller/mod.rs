//! `leakhunt operator`: counts OOM kills from pod statuses into LeakReports, runs the analyzer
//! Job when the agent has a snapshot pair, marks failed analyses, sends alerts, cleans up.
//!
//! Level-based: every decision is made from what the API server holds now (a kill is counted
//! when its key is not yet in the report; a Job is created when the report's pair has none), so
//! a restart, a lost watch or a second replica neither loses nor duplicates anything.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::ListParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use super::job_spec::{self, JobTemplate};
use super::workload::ApiLookup;
use crate::alerts::{Alert, AlertConfig, Notifier, RateLimiter, Sink};
use crate::crd::{LeakReport, LeakWatch, Phase, Verdict};
use crate::metrics::Metrics;

mod analysis;
mod housekeeping;
mod pods;

use analysis::{analysed, analyzing, announce_failure, announce_worker_kills};
use housekeeping::{collect_garbage, leakwatch_status};
use pods::watch_pods;

#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Namespaces to watch; empty: all.
    pub watch_namespaces: Vec<String>,
    pub job: JobTemplate,
    pub alerts: AlertConfig,
    /// Pod name, for Events' reporting instance and the leader lease.
    pub instance: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("report {0} has no namespace")]
    NoNamespace(String),
}

pub struct Context {
    pub client: Client,
    pub cfg: OperatorConfig,
    pub metrics: Metrics,
    notifier: Notifier,
    limiter: Mutex<RateLimiter>,
    recorder: Recorder,
    lookup: ApiLookup,
    /// Kill keys known to be counted, so a pod that keeps its OOMKilled lastState costs no API
    /// call per update. Bounded: cleared when full (a miss costs one read of the report).
    counted: Mutex<HashSet<String>>,
    /// Analyzer Jobs whose duration was recorded.
    timed_jobs: Mutex<HashSet<String>>,
    /// Workload of each report (namespace, name) with metric series, so the series of deleted
    /// reports can be dropped.
    series: Mutex<HashMap<(String, String), String>>,
}

const COUNTED_CACHE_MAX: usize = 20_000;

impl Context {
    pub fn new(client: Client, cfg: OperatorConfig, metrics: Metrics) -> Arc<Context> {
        let reporter = Reporter {
            controller: "leakhunt-operator".into(),
            instance: Some(cfg.instance.clone()),
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            lookup: ApiLookup::new(client.clone()),
            notifier: Notifier::new(Duration::from_secs(10)),
            limiter: Mutex::new(RateLimiter::default()),
            counted: Mutex::new(HashSet::new()),
            timed_jobs: Mutex::new(HashSet::new()),
            series: Mutex::new(HashMap::new()),
            client,
            cfg,
            metrics,
        })
    }

    fn known_counted(&self, key: &str) -> bool {
        self.counted
            .lock()
            .map(|c| c.contains(key))
            .unwrap_or(false)
    }

    fn remember_counted(&self, key: &str) {
        if let Ok(mut c) = self.counted.lock() {
            if c.len() >= COUNTED_CACHE_MAX {
                c.clear();
            }
            c.insert(key.to_string());
        }
    }

    /// The LeakWatches of a namespace (none when they cannot be read: chart defaults apply).
    async fn watches_in(&self, namespace: &str) -> Vec<LeakWatch> {
        let api: Api<LeakWatch> = Api::namespaced(self.client.clone(), namespace);
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// Alert config for pods with these labels: the chart's, overridden by their LeakWatch.
    fn alert_config_from(
        &self,
        watches: &[LeakWatch],
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> AlertConfig {
        let routing = super::policy::select_watch(watches, namespace, labels, None)
            .and_then(|w| w.spec.alerts.as_ref());
        self.cfg.alerts.with_overrides(routing)
    }

    /// Alert config for pods with these labels, reading the namespace's LeakWatches.
    async fn alert_config(
        &self,
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> AlertConfig {
        let watches = self.watches_in(namespace).await;
        self.alert_config_from(&watches, namespace, labels)
    }

    async fn event(&self, reference: &ObjectReference, type_: EventType, reason: &str, note: &str) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: "Report".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, reason, "event not recorded");
        }
    }

    /// Sends an alert to the webhook and Alertmanager, at most once per cooldown per workload
    /// and kind; Events are recorded by the caller (they are rate-limited by the API server).
    async fn alert(&self, cfg: &AlertConfig, alert: Alert) {
        let allowed = self
            .limiter
            .lock()
            .map(|mut l| {
                l.allow(
                    (&alert.namespace, &alert.workload, alert.kind),
                    Instant::now(),
                    cfg.cooldown,
                )
            })
            .unwrap_or(true);
        if !allowed {
            tracing::info!(kind = %alert.kind, workload = %alert.workload, "alert rate-limited");
            return;
        }
        for (sink, result) in self.notifier.send(cfg, &alert).await {
            self.metrics.alert_sent(&sink.to_string(), result.is_ok());
            if let Err(e) = result {
                tracing::warn!(error = %e, %sink, "alert not delivered");
            }
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn reference_of<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    obj.object_ref(&())
}

fn workload_reference(report: &LeakReport) -> Option<ObjectReference> {
    let w = &report.spec.workload;
    Some(ObjectReference {
        api_version: Some(w.api_version.clone()),
        kind: Some(w.kind.clone()),
        name: Some(w.name.clone()),
        namespace: report.namespace(),
        uid: Some(w.uid.clone()?),
        ..Default::default()
    })
}

/// The API of `K` in each watched namespace, or across the cluster when none is given.
fn watched_apis<K>(ctx: &Context) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if ctx.cfg.watch_namespaces.is_empty() {
        vec![Api::all(ctx.client.clone())]
    } else {
        ctx.cfg
            .watch_namespaces
            .iter()
            .map(|ns| Api::namespaced(ctx.client.clone(), ns))
            .collect()
    }
}

/// Runs the operator until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    for controller in ["pods", "leakreports", "gc", "leakwatches"] {
        ctx.metrics.controller_started(controller);
    }
    for sink in [Sink::Webhook, Sink::Alertmanager] {
        ctx.metrics.sink_started(sink.as_str());
    }
    let pods = watch_pods(ctx.clone());
    let reports = report_controller(ctx.clone(), shutdown.clone());
    let gc = collect_garbage(ctx.clone());
    let watches = leakwatch_status(ctx.clone());
    tokio::select! {
        _ = pods => {}
        _ = reports => {}
        _ = gc => {}
        _ = watches => {}
        _ = shutdown => {}
    }
}

async fn report_controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let reports: Api<LeakReport> = Api::all(ctx.client.clone());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.cfg.job.namespace);
    Controller::new(reports, watcher::Config::default())
        .watches(
            jobs,
            watcher::Config::default().labels(job_spec::JOB_SELECTOR),
            |job: Job| {
                let (ns, name) = job
                    .annotations()
                    .get(job_spec::REPORT_ANNOTATION)?
                    .split_once('/')?;
                Some(ObjectRef::<LeakReport>::new(name).within(ns))
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "report reconcile");
            }
            futures::future::ready(())
        })
        .await;
}

fn error_policy(report: Arc<LeakReport>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error("leakreports");
    tracing::warn!(error = %error, report = %report.name_any(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

pub async fn reconcile(report: Arc<LeakReport>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = report
        .namespace()
        .ok_or_else(|| Error::NoNamespace(report.name_any()))?;
    let status = report.status.clone().unwrap_or_default();
    let display = &report.spec.workload.display;
    ctx.metrics.workload_seen(&namespace, display);
    ctx.metrics
        .leak_detected(&namespace, display, status.verdict == Some(Verdict::Leak));
    if let Ok(mut series) = ctx.series.lock() {
        series.insert((namespace.clone(), report.name_any()), display.clone());
    }
    if !status.unannounced_kills.is_empty() {
        announce_worker_kills(&report, &ctx).await?;
    }
    match status.phase {
        Phase::Analyzing => analyzing(&report, &status, &ctx).await,
        Phase::Analysed => {
            analysed(&report, &status, &ctx).await?;
            Ok(Action::requeue(Duration::from_secs(600)))
        }
        Phase::Failed => {
            announce_failure(&ctx, &report).await?;
            Ok(Action::requeue(Duration::from_secs(600)))
        }
        _ => Ok(Action::requeue(Duration::from_secs(600))),
    }
}
