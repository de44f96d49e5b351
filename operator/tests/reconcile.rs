//! Reconcile branches a real API server cannot be made to take on demand — a write conflict, a
//! report deleted under the operator, an analyzer Job that timed out or never wrote back, an
//! API server that is down — against a mocked one.
//!
//! The mock is a `tower` service behind a real `kube::Client`: it answers by method and path
//! from a table each test fills, records every request, and answers 404 (a `Status`, as the API
//! server does) for anything else. Nothing leaves the process.

// Tests and their helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Api, Client};
use leakhunt_operator::alerts::AlertConfig;
use leakhunt_operator::cluster::controller::{self, Context, OperatorConfig};
use leakhunt_operator::cluster::job_spec::{self, JobTemplate};
use leakhunt_operator::cluster::report_api;
use leakhunt_operator::crd::{
    LeakReport, LeakReportSpec, LeakReportStatus, LeakWatch, OomKillRecord, Phase, SnapshotRecord,
    Verdict, WorkloadRef,
};
use leakhunt_operator::metrics::Metrics;
use serde::Serialize;
use serde_json::{json, Value};

// ---- the mock API server ----

/// A request the mock received; `body` is `null` when there was none.
#[derive(Clone, Debug)]
struct Sent {
    method: String,
    path: String,
    body: Value,
}

/// How a route answers.
#[derive(Clone, Debug)]
enum Reply {
    Json(u16, Value),
    /// The request's own body, as a create or replace returns the object written.
    Echo(u16),
}

fn ok(object: impl Serialize) -> Reply {
    Reply::Json(200, serde_json::to_value(object).unwrap())
}

/// An error as the API server sends it: a `Status` object with the code.
fn failure(code: u16, reason: &str) -> Reply {
    Reply::Json(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("mock: {reason}"), "reason": reason, "code": code,
        }),
    )
}

struct Route {
    method: &'static str,
    /// A path; a `*` segment matches any one segment.
    pattern: String,
    /// Answered in turn; the last one repeats.
    replies: VecDeque<Reply>,
}

#[derive(Default)]
struct State {
    routes: Vec<Route>,
    otherwise: Option<Reply>,
    sent: Vec<Sent>,
}

#[derive(Clone, Default)]
struct MockApi(Arc<Mutex<State>>);

impl MockApi {
    /// Answers `method` on `pattern` with `replies` in turn (replacing an earlier such route).
    fn on(
        &self,
        method: &'static str,
        pattern: &str,
        replies: impl IntoIterator<Item = Reply>,
    ) -> &Self {
        let mut state = self.0.lock().unwrap();
        state
            .routes
            .retain(|r| !(r.method == method && r.pattern == pattern));
        state.routes.push(Route {
            method,
            pattern: pattern.to_string(),
            replies: replies.into_iter().collect(),
        });
        self
    }

    /// Answers every request no route takes with `reply` instead of 404.
    fn otherwise(&self, reply: Reply) -> &Self {
        self.0.lock().unwrap().otherwise = Some(reply);
        self
    }

    fn client(&self) -> Client {
        let mock = self.clone();
        let service = tower::service_fn(move |request: http::Request<Body>| {
            let mock = mock.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let (code, answer) = mock.answer(Sent {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                });
                let response = http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        });
        Client::new(service, "default")
    }

    fn answer(&self, sent: Sent) -> (u16, Value) {
        let mut state = self.0.lock().unwrap();
        state.sent.push(sent.clone());
        let route = state
            .routes
            .iter_mut()
            .find(|r| r.method == sent.method && path_matches(&r.pattern, &sent.path));
        let reply = match route {
            Some(r) if r.replies.len() > 1 => r.replies.pop_front(),
            Some(r) => r.replies.front().cloned(),
            None => None,
        };
        match reply
            .or_else(|| state.otherwise.clone())
            .unwrap_or_else(|| failure(404, "NotFound"))
        {
            Reply::Json(code, body) => (code, body),
            Reply::Echo(code) => (code, sent.body),
        }
    }

    /// Bodies of the requests sent so far with `method` to paths matching `pattern`.
    fn sent(&self, method: &str, pattern: &str) -> Vec<Value> {
        let state = self.0.lock().unwrap();
        state
            .sent
            .iter()
            .filter(|s| s.method == method && path_matches(pattern, &s.path))
            .map(|s| s.body.clone())
            .collect()
    }

    fn request_count(&self) -> usize {
        self.0.lock().unwrap().sent.len()
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let (pattern, path): (Vec<&str>, Vec<&str>) =
        (pattern.split('/').collect(), path.split('/').collect());
    pattern.len() == path.len() && pattern.iter().zip(&path).all(|(p, s)| *p == "*" || p == s)
}

// ---- the world the tests share ----

const NS: &str = "shop";
const REPORT: &str = "deployment-web";
const STATUS: &str =
    "/apis/leakhunt.dev/v1alpha1/namespaces/shop/leakreports/deployment-web/status";
const WATCHES: &str = "/apis/leakhunt.dev/v1alpha1/namespaces/shop/leakwatches";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/*/events";
const JOBS: &str = "/apis/batch/v1/namespaces/leakhunt/jobs";
const POD: &str = "/api/v1/namespaces/shop/pods/web-1";
const B_SHA: &str = "0123456789abcdef0123456789abcdef";

fn snapshot(role: &str, sha256: &str) -> SnapshotRecord {
    SnapshotRecord {
        role: role.into(),
        node: "node-1".into(),
        time: Time(Timestamp::now()),
        size: 1 << 20,
        memory: Some(8 << 20),
        sha256: sha256.into(),
        path: Some(format!(
            "/var/lib/leakhunt/snapshots/shop/{REPORT}/{role}.core.zst"
        )),
        pid: 42,
        pod: "web-1".into(),
        container: "app".into(),
        retain_until: None,
        tracer_bytes: None,
    }
}

/// The report of Deployment/web as the API server holds it, at `resource_version`, with the
/// pair A, B (B's digest `b_sha`).
fn report(phase: Phase, resource_version: &str, b_sha: &str) -> LeakReport {
    let mut workload = WorkloadRef::new("apps/v1", "Deployment", "web");
    workload.uid = Some("uid-of-web".into());
    let mut report = LeakReport::new(
        REPORT,
        LeakReportSpec {
            workload,
            container: Some("app".into()),
        },
    );
    report.metadata.namespace = Some(NS.into());
    report.metadata.uid = Some("uid-of-report".into());
    report.metadata.resource_version = Some(resource_version.into());
    report.status = Some(LeakReportStatus {
        phase,
        snapshots: vec![snapshot("A", "aaaaaaaaaaaaaaaaaaaa"), snapshot("B", b_sha)],
        ..Default::default()
    });
    report
}

fn job_path(b_sha: &str) -> String {
    format!("{JOBS}/{}", job_spec::job_name(&snapshot("B", b_sha)))
}

/// A finished analyzer Job: its condition `type_` is True, for `reason`.
fn finished_job(b_sha: &str, type_: &str, reason: &str, completed: Option<Timestamp>) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some(job_spec::job_name(&snapshot("B", b_sha))),
            namespace: Some("leakhunt".into()),
            ..Default::default()
        },
        spec: None,
        status: Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: type_.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                ..Default::default()
            }]),
            start_time: Some(Time(Timestamp::now() - SignedDuration::from_mins(10))),
            completion_time: completed.map(Time),
            ..Default::default()
        }),
    }
}

/// The report's analyzer Job, complete since `completed`.
fn serve_completed_job(api: &MockApi, completed: Timestamp) {
    api.on(
        "GET",
        &job_path(B_SHA),
        [ok(finished_job(
            B_SHA,
            "Complete",
            "CompletionsReached",
            Some(completed),
        ))],
    );
}

fn empty_list(kind: &str) -> Reply {
    Reply::Json(
        200,
        json!({ "apiVersion": "leakhunt.dev/v1alpha1", "kind": kind, "metadata": {}, "items": [] }),
    )
}

fn context(client: Client) -> Arc<Context> {
    let cfg = OperatorConfig {
        watch_namespaces: Vec::new(),
        job: JobTemplate {
            namespace: "leakhunt".into(),
            image: "leakhunt:test".into(),
            image_pull_policy: "IfNotPresent".into(),
            service_account: "leakhunt-analyzer".into(),
            snapshot_dir: "/var/lib/leakhunt/snapshots".into(),
            timeout: Duration::from_secs(600),
            ttl: Duration::from_secs(3600),
            memory_request: "256Mi".into(),
            memory_limit: "1Gi".into(),
            memory_max: "8Gi".into(),
            cpu_request: "100m".into(),
            cpu_limit: "1".into(),
            log: "info".into(),
            owner: None,
        },
        alerts: AlertConfig::default(),
        instance: "leakhunt-operator-0".into(),
    };
    Context::new(client, cfg, Metrics::new())
}

/// Routes a reconcile of the report takes besides Jobs and pods: the report's
/// status (read as `current`, written back as sent), LeakWatches (none) and Events.
fn serve_report(api: &MockApi, current: &LeakReport) {
    api.on("GET", STATUS, [ok(current)])
        .on("PUT", STATUS, [Reply::Echo(200)])
        .on("GET", WATCHES, [empty_list("LeakWatchList")])
        .on("POST", EVENTS, [Reply::Echo(201)]);
}

fn written_status(body: &Value) -> LeakReportStatus {
    serde_json::from_value(body["status"].clone()).unwrap()
}

/// The `Analysed` condition's status and message.
fn analysed_condition(s: &LeakReportStatus) -> (String, String) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Analysed")
        .expect("an Analysed condition");
    (c.status.clone(), c.message.clone())
}

// ---- status writes ----

#[tokio::test]
async fn status_write_retries_on_conflict() {
    let api = MockApi::default();
    // Between the first read and write, another writer counted an OOM kill.
    let mut fresher = report(Phase::Analyzing, "2", B_SHA);
    fresher.status.as_mut().unwrap().oom_kills = 3;
    api.on(
        "GET",
        STATUS,
        [ok(report(Phase::Analyzing, "1", B_SHA)), ok(&fresher)],
    )
    .on("PUT", STATUS, [failure(409, "Conflict"), Reply::Echo(200)]);
    let reports_api: Api<LeakReport> = Api::namespaced(api.client(), NS);

    let mut runs = 0;
    let written = report_api::update_status(&reports_api, REPORT, |s| {
        runs += 1;
        s.analysis_job = Some("leakhunt-analyze-x".into());
        true
    })
    .await
    .unwrap();

    assert_eq!(runs, 2);
    let puts = api.sent("PUT", STATUS);
    assert_eq!(puts.len(), 2);
    assert_eq!(puts[1]["metadata"]["resourceVersion"], "2");
    assert_eq!(puts[1]["status"]["analysisJob"], "leakhunt-analyze-x");
    // The retry changed the fresh read: the other writer's kill is kept.
    assert_eq!(puts[1]["status"]["oomKills"], 3);
    let written = written.expect("the report as written");
    assert_eq!(
        written.status.unwrap().analysis_job.as_deref(),
        Some("leakhunt-analyze-x")
    );
}

#[tokio::test]
async fn status_write_of_a_deleted_report_is_none() {
    let api = MockApi::default();
    let reports_api: Api<LeakReport> = Api::namespaced(api.client(), NS);
    let mut runs = 0;
    let written = report_api::update_status(&reports_api, REPORT, |_| {
        runs += 1;
        true
    })
    .await
    .unwrap();
    assert!(written.is_none());
    assert_eq!(runs, 0);
    assert_eq!(api.sent("GET", STATUS).len(), 1);
    assert!(api.sent("PUT", STATUS).is_empty());
}

// ---- the analyzer Job ----

#[tokio::test]
async fn failed_job_marks_report_failed() {
    let api = MockApi::default();
    let current = report(Phase::Analyzing, "1", B_SHA);
    serve_report(&api, &current);
    api.on(
        "GET",
        &job_path(B_SHA),
        [ok(finished_job(B_SHA, "Failed", "DeadlineExceeded", None))],
    );

    let action = controller::reconcile(Arc::new(current), context(api.client()))
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    let puts = api.sent("PUT", STATUS);
    assert_eq!(puts.len(), 1);
    let s = written_status(&puts[0]);
    assert_eq!(s.phase, Phase::Failed);
    let (status, message) = analysed_condition(&s);
    assert_eq!(status, "False");
    assert!(message.contains("did not finish within 600s"), "{message}");
    assert!(s.incidents.iter().any(|i| i.reason == "AnalysisFailed"));
    let events = api.sent("POST", EVENTS);
    assert!(
        events.iter().any(|e| e["reason"] == "AnalysisFailed"
            && e["type"] == "Warning"
            && e["regarding"]["kind"] == "LeakReport"),
        "{events:#?}"
    );
    assert!(
        api.sent("POST", JOBS).is_empty(),
        "a failed Job is not re-created"
    );
}

#[tokio::test]
async fn missing_job_is_created_once() {
    let api = MockApi::default();
    let current = report(Phase::Analyzing, "1", B_SHA);
    serve_report(&api, &current);
    api.on("POST", JOBS, [Reply::Echo(201)]);
    let ctx = context(api.client());

    let action = controller::reconcile(Arc::new(current.clone()), ctx.clone())
        .await
        .unwrap();

    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let created = api.sent("POST", JOBS);
    assert_eq!(created.len(), 1);
    let created: Job = serde_json::from_value(created[0].clone()).unwrap();
    let name = job_spec::job_name(&snapshot("B", B_SHA));
    assert_eq!(created.metadata.name.as_deref(), Some(name.as_str()));
    assert_eq!(created.metadata.namespace.as_deref(), Some("leakhunt"));
    let pod = created.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.node_name.as_deref(), Some("node-1"));
    let args = pod.containers[0].args.clone().unwrap();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--report" && w[1] == format!("{NS}/{REPORT}")),
        "{args:?}"
    );
    let puts = api.sent("PUT", STATUS);
    assert_eq!(puts.len(), 1);
    assert_eq!(
        written_status(&puts[0]).analysis_job.as_deref(),
        Some(name.as_str())
    );

    // The Job exists, but the read missed it (a lagging cache, another replica): the create
    // conflicts, which is no failure, and the recorded Job name is not written again.
    api.on("POST", JOBS, [failure(409, "AlreadyExists")]).on(
        "GET",
        STATUS,
        [Reply::Json(200, puts[0].clone())],
    );
    let action = controller::reconcile(Arc::new(current), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(api.sent("POST", JOBS).len(), 2);
    assert_eq!(api.sent("PUT", STATUS).len(), 1);
}

#[tokio::test]
async fn succeeded_job_without_findings_fails_the_report() {
    let api = MockApi::default();
    let current = report(Phase::Analyzing, "1", B_SHA);
    serve_report(&api, &current);
    serve_completed_job(&api, Timestamp::now() - SignedDuration::from_mins(5));

    let action = controller::reconcile(Arc::new(current.clone()), context(api.client()))
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    let puts = api.sent("PUT", STATUS);
    assert_eq!(puts.len(), 1);
    let s = written_status(&puts[0]);
    assert_eq!(s.phase, Phase::Failed);
    let (status, message) = analysed_condition(&s);
    assert_eq!(status, "False");
    assert!(
        message.contains("finished without writing findings"),
        "{message}"
    );

    // Just finished: its findings may be on their way (or in a cache not yet updated).
    let api = MockApi::default();
    serve_report(&api, &current);
    serve_completed_job(&api, Timestamp::now());
    let action = controller::reconcile(Arc::new(current), context(api.client()))
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert!(api.sent("PUT", STATUS).is_empty());
    assert!(api.sent("POST", EVENTS).is_empty());
}

/// A Job that wrote its findings is seen complete once the report is Analysed: its duration is
/// recorded then, once, and a Job already gone is not asked for again.
#[tokio::test]
async fn analysis_duration_is_recorded_once_the_report_is_analysed() {
    let api = MockApi::default();
    let current = report(Phase::Analysed, "1", B_SHA);
    serve_report(&api, &current);
    serve_completed_job(&api, Timestamp::now());
    let ctx = context(api.client());
    for _ in 0..2 {
        controller::reconcile(Arc::new(current.clone()), ctx.clone())
            .await
            .unwrap();
    }
    let text = ctx.metrics.encode();
    assert!(
        text.contains("leakhunt_analysis_duration_seconds_count 1"),
        "{text}"
    );
    assert_eq!(api.sent("GET", &job_path(B_SHA)).len(), 1);

    // No Job (cleaned up before this operator started): one look, then none.
    let api = MockApi::default();
    serve_report(&api, &current);
    let ctx = context(api.client());
    for _ in 0..2 {
        controller::reconcile(Arc::new(current.clone()), ctx.clone())
            .await
            .unwrap();
    }
    assert_eq!(api.sent("GET", &job_path(B_SHA)).len(), 1);
    assert!(ctx
        .metrics
        .encode()
        .contains("leakhunt_analysis_duration_seconds_count 0"));
}

#[tokio::test]
async fn failed_job_of_a_replaced_pair_leaves_the_report_alone() {
    // The cached report still shows the old pair, whose Job failed; the agent has since taken
    // a new pair, now being analysed. Failing the report would discard the new analysis.
    let api = MockApi::default();
    let old_sha = "fedcba9876543210fedcba9876543210";
    serve_report(&api, &report(Phase::Analyzing, "7", B_SHA));
    api.on(
        "GET",
        &job_path(old_sha),
        [ok(finished_job(
            old_sha,
            "Failed",
            "BackoffLimitExceeded",
            None,
        ))],
    );
    let cached = report(Phase::Analyzing, "5", old_sha);

    let ctx = context(api.client());

    controller::reconcile(Arc::new(cached.clone()), ctx.clone())
        .await
        .unwrap();

    assert!(
        api.sent("PUT", STATUS).is_empty(),
        "{:#?}",
        api.sent("PUT", STATUS)
    );
    assert!(api.sent("POST", EVENTS).is_empty());

    // Nor is the old pair's Job recorded as the new pair's.
    api.on("GET", &job_path(old_sha), [failure(404, "NotFound")])
        .on("POST", JOBS, [Reply::Echo(201)]);
    controller::reconcile(Arc::new(cached), ctx).await.unwrap();
    assert!(
        api.sent("PUT", STATUS).is_empty(),
        "{:#?}",
        api.sent("PUT", STATUS)
    );
}

#[tokio::test]
async fn api_server_down_is_an_error_not_a_loss() {
    let api = MockApi::default();
    api.otherwise(failure(503, "ServiceUnavailable"));
    let ctx = context(api.client());
    let mut leaked = report(Phase::Analysed, "1", B_SHA);
    leaked.status.as_mut().unwrap().verdict = Some(Verdict::Leak);
    let mut incomplete = report(Phase::Analyzing, "1", B_SHA);
    incomplete
        .status
        .as_mut()
        .unwrap()
        .snapshots
        .retain(|s| s.role == "A");

    for r in [report(Phase::Analyzing, "1", B_SHA), incomplete, leaked] {
        let phase = r.status.as_ref().unwrap().phase;
        let before = api.request_count();
        let error = controller::reconcile(Arc::new(r), ctx.clone())
            .await
            .expect_err("an unreachable API server fails the reconcile (it is retried)");
        assert!(
            matches!(&error, controller::Error::Kube(e) if report_api::is_status(e, 503)),
            "{phase:?}: {error}"
        );
        assert!(
            api.request_count() > before,
            "{phase:?}: the API server was asked"
        );
    }
    assert!(api.sent("PUT", STATUS).is_empty());
    assert!(api.sent("POST", JOBS).is_empty());
}

// ---- alerts ----

#[tokio::test]
async fn leak_is_alerted_once_per_pair() {
    let api = MockApi::default();
    let mut current = report(Phase::Analysed, "1", "abc");
    current.status.as_mut().unwrap().verdict = Some(Verdict::Leak);
    current.status.as_mut().unwrap().summary = Some("__main__.cache grows by 2000 items".into());
    serve_report(&api, &current);
    api.on("GET", POD, [ok(pod_web_1())]);
    let ctx = context(api.client());

    controller::reconcile(Arc::new(current), ctx.clone())
        .await
        .unwrap();

    let puts = api.sent("PUT", STATUS);
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0]["status"]["alertedSnapshot"], "abc");
    let events = api.sent("POST", EVENTS);
    assert!(
        events.iter().all(|e| e["reason"] == "LeakDetected"),
        "{events:#?}"
    );
    let regarding: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["regarding"]["kind"].as_str())
        .collect();
    assert_eq!(
        regarding,
        BTreeSet::from(["Deployment", "LeakReport", "Pod"])
    );
    assert!(events
        .iter()
        .all(|e| e["note"] == "__main__.cache grows by 2000 items"));

    // The report as written comes back through the watch: nothing more to say.
    let returned: LeakReport = serde_json::from_value(puts[0].clone()).unwrap();
    let before = api.request_count();
    controller::reconcile(Arc::new(returned), ctx)
        .await
        .unwrap();
    assert_eq!(api.sent("PUT", STATUS).len(), 1);
    assert_eq!(api.sent("POST", EVENTS).len(), events.len());
    assert_eq!(api.request_count(), before, "no API call at all");
}

fn pod_web_1() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-1".into()),
            namespace: Some(NS.into()),
            uid: Some("uid-of-web-1".into()),
            labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A report with worker kills the agent counted but nobody announced.
fn report_with_worker_kills(pids: &[i64]) -> LeakReport {
    let mut current = report(Phase::Watching, "1", "abc");
    let status = current.status.as_mut().unwrap();
    status.oom_kills = pids.len() as i64;
    status.unannounced_kills = pids
        .iter()
        .map(|pid| OomKillRecord {
            pod: "web-1".into(),
            container: "app".into(),
            process: format!("python3 (pid {pid})"),
            time: Time(Timestamp::now()),
        })
        .collect();
    current
}

#[tokio::test]
async fn worker_kills_are_announced_once() {
    let api = MockApi::default();
    let current = report_with_worker_kills(&[7, 8]);
    serve_report(&api, &current);
    api.on("PATCH", &format!("{EVENTS}/*"), [Reply::Echo(200)]);
    api.on("GET", POD, [ok(pod_web_1())]);
    let ctx = context(api.client());

    controller::reconcile(Arc::new(current), ctx.clone())
        .await
        .unwrap();

    // Taken off the queue in one write, before anything is announced.
    let puts = api.sent("PUT", STATUS);
    assert_eq!(puts.len(), 1);
    assert!(written_status(&puts[0]).unannounced_kills.is_empty());
    assert_eq!(
        written_status(&puts[0]).oom_kills,
        2,
        "counts are the agent's"
    );
    // The first kill's Events are created; the second is the same Event again (a series).
    let events = api.sent("POST", EVENTS);
    assert_eq!(events.len(), 3, "on pod, workload and report: {events:#?}");
    assert_eq!(api.sent("PATCH", &format!("{EVENTS}/*")).len(), 3);
    assert!(events.iter().all(|e| e["reason"] == "OOMKilled"));
    let regarding: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["regarding"]["kind"].as_str())
        .collect();
    assert_eq!(
        regarding,
        BTreeSet::from(["Deployment", "LeakReport", "Pod"])
    );
    assert!(events.iter().all(|e| e["note"]
        == "worker process python3 (pid 7) in container app of pod web-1 was OOM-killed; the container lives on"));
    assert_eq!(
        api.sent("GET", POD).len(),
        1,
        "the pod is read once per batch"
    );

    // The written report comes back through the watch: nothing more to say.
    let returned: LeakReport = serde_json::from_value(puts[0].clone()).unwrap();
    let before = api.request_count();
    controller::reconcile(Arc::new(returned), ctx)
        .await
        .unwrap();
    assert_eq!(api.request_count(), before, "no API call at all");
}

#[tokio::test]
async fn worker_kill_events_follow_the_leakwatch() {
    let api = MockApi::default();
    let current = report_with_worker_kills(&[7]);
    serve_report(&api, &current);
    api.on("GET", POD, [ok(pod_web_1())]);
    // The LeakWatch that governs web-1 turns Events off.
    let mut watch = LeakWatch::new(
        "web",
        serde_json::from_value(json!({
            "selector": { "matchLabels": { "app": "web" } },
            "alerts": { "events": false },
        }))
        .unwrap(),
    );
    watch.metadata.namespace = Some(NS.into());
    api.on(
        "GET",
        WATCHES,
        [Reply::Json(
            200,
            json!({ "apiVersion": "leakhunt.dev/v1alpha1", "kind": "LeakWatchList", "metadata": {}, "items": [watch] }),
        )],
    );
    let ctx = context(api.client());

    controller::reconcile(Arc::new(current), ctx).await.unwrap();

    assert_eq!(
        api.sent("PUT", STATUS).len(),
        1,
        "still taken off the queue"
    );
    assert!(api.sent("POST", EVENTS).is_empty());
}
