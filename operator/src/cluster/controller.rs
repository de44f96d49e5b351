//! `leakhunt operator`: counts OOM kills from pod statuses into LeakReports, runs the analyzer
//! Job when the agent has a snapshot pair, marks failed analyses, sends alerts, cleans up.
//!
//! Level-based: every decision is made from what the API server holds now (a kill is counted
//! when its key is not yet in the report; a Job is created when the report's pair has none), so
//! a restart, a lost watch or a second replica neither loses nor duplicates anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};

use super::job_spec::{self, JobOutcome, JobTemplate};
use super::kills::{container_kills, memory_limit, ContainerKill};
use super::report_api::{self, is_status, new_report, now};
use super::selector;
use super::workload::{self, ApiLookup};
use crate::alerts::{Alert, AlertConfig, AlertKind, Notifier, RateLimiter};
use crate::crd::{Incident, LeakReport, LeakReportStatus, LeakWatch, Phase, Verdict};
use crate::metrics::Metrics;
use crate::status::{self, Reason};

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

/// Runs the operator until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
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

fn pod_apis(ctx: &Context) -> Vec<Api<Pod>> {
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

/// Pods are streamed, not cached: the operator keeps no copy of every pod (memory stays flat
/// with thousands), only the keys of kills it has counted.
async fn watch_pods(ctx: Arc<Context>) {
    let streams = pod_apis(&ctx).into_iter().map(|api| {
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
async fn announce_kill(
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

fn alert_of(
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
        oom_kills: status.oom_kills,
        time: k8s_openapi::jiff::Timestamp::now(),
    }
}

/// Whether the agent may capture this pod: the annotation, or a LeakWatch in its namespace.
fn capture_enabled(pod: &Pod, watches: &[LeakWatch]) -> bool {
    let ns = pod.namespace().unwrap_or_default();
    workload::capture_annotated(pod)
        || super::policy::select_watch(watches, &ns, pod.labels(), None).is_some()
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

async fn analyzing(
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
async fn announce_failure(ctx: &Context, report: &LeakReport) -> Result<(), Error> {
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
async fn announce_worker_kills(report: &LeakReport, ctx: &Context) -> Result<(), Error> {
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
async fn analysed(
    report: &LeakReport,
    status: &LeakReportStatus,
    ctx: &Context,
) -> Result<(), Error> {
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

/// Deletes analyzer Jobs whose report is gone (owner references cannot cross namespaces, so
/// the garbage collector does not). Finished Jobs go by their TTL.
async fn collect_garbage(ctx: Arc<Context>) {
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
async fn leakwatch_status(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let apis: Vec<Api<LeakWatch>> = if ctx.cfg.watch_namespaces.is_empty() {
            vec![Api::all(ctx.client.clone())]
        } else {
            ctx.cfg
                .watch_namespaces
                .iter()
                .map(|n| Api::namespaced(ctx.client.clone(), n))
                .collect()
        };
        for api in apis {
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
    let problems = super::policy::watch_problems(&w.spec);
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
