//! Alert delivery over real loopback sockets: a recording HTTP receiver with scripted answers,
//! a closed port, a silent server, and a real Alertmanager.

// Tests and their helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::jiff::Timestamp;
use leakhunt_operator::alerts::{
    alertmanager, webhook, Alert, AlertConfig, AlertKind, Notifier, Sink, WebhookFormat,
};
use serde_json::Value;
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
struct Received {
    method: String,
    path: String,
    content_type: String,
    body: Value,
}

/// An HTTP server on 127.0.0.1 that records every request and answers with the next scripted
/// status (200 once the script is used up).
struct Receiver {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(
            statuses.iter().copied().collect::<VecDeque<_>>(),
        ));
        let (log2, script2) = (log.clone(), script.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, script) = (log2.clone(), script2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (log, script) = (log.clone(), script.clone());
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let content_type = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let bytes = req.into_body().collect().await.unwrap().to_bytes();
                            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            log.lock().unwrap().push(Received {
                                method,
                                path,
                                content_type,
                                body,
                            });
                            let status = script.lock().unwrap().pop_front().unwrap_or(200);
                            let mut r =
                                Response::new(Full::new(Bytes::from_static(b"no such hook")));
                            *r.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }
}

fn leak_alert() -> Alert {
    Alert {
        kind: AlertKind::LeakDetected,
        namespace: "shop".into(),
        workload: "Deployment/leaky-flask".into(),
        report: "deployment-leaky-flask".into(),
        summary: "__main__.Profiler.results grows by 2000 items (+180KiB) between snapshots."
            .into(),
        suspect: Some("__main__.Profiler.results".into()),
        growth: Some("+2000 items +180KiB".into()),
        verdict: Some("Leak".into()),
        predicted_oom: None,
        oom_kills: 2,
        time: Timestamp::now(),
    }
}

fn webhook_config(url: String, format: WebhookFormat) -> AlertConfig {
    AlertConfig {
        webhook_url: Some(url),
        webhook_format: format,
        ..AlertConfig::default()
    }
}

fn alertmanager_config(base: String) -> AlertConfig {
    AlertConfig {
        alertmanager_url: Some(base),
        labels: BTreeMap::from([("team".to_string(), "checkout".to_string())]),
        ..AlertConfig::default()
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn json_webhook_gets_the_exact_body() {
    let rx = Receiver::start(&[]).await;
    let alert = leak_alert();
    let results = Notifier::default()
        .send(
            &webhook_config(rx.url("/hook/T0/secret"), WebhookFormat::Json),
            &alert,
        )
        .await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].0, Sink::Webhook);
    assert!(results[0].1.is_ok(), "{results:?}");
    let got = rx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/hook/T0/secret");
    assert_eq!(got[0].content_type, "application/json");
    assert_eq!(got[0].body, webhook::json_payload(&alert));
    assert_eq!(got[0].body["kind"], "LeakDetected");
    assert_eq!(got[0].body["oomKills"], 2);
    assert_eq!(got[0].body["time"], alert.time.to_string());
}

#[tokio::test]
async fn slack_webhook_gets_text_and_blocks() {
    let rx = Receiver::start(&[]).await;
    let results = Notifier::default()
        .send(
            &webhook_config(rx.url("/slack"), WebhookFormat::Slack),
            &leak_alert(),
        )
        .await;
    assert!(results[0].1.is_ok(), "{results:?}");
    let body = &rx.received()[0].body;
    assert_eq!(
        body["text"],
        ":rotating_light: LeakDetected shop/Deployment/leaky-flask: __main__.Profiler.results +2000 items +180KiB (2 OOM kills)"
    );
    assert_eq!(body["blocks"][0]["text"]["type"], "mrkdwn");
}

#[tokio::test]
async fn alertmanager_gets_an_array_with_identity_labels() {
    let rx = Receiver::start(&[]).await;
    // Trailing slash on the base URL, as people paste it.
    let results = Notifier::default()
        .send(&alertmanager_config(rx.url("/")), &leak_alert())
        .await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0, Sink::Alertmanager);
    assert!(results[0].1.is_ok(), "{results:?}");
    let got = rx.received();
    assert_eq!(got[0].path, "/api/v2/alerts");
    let alerts = got[0].body.as_array().expect("a JSON array");
    assert_eq!(alerts.len(), 1);
    let labels = &alerts[0]["labels"];
    assert_eq!(labels["alertname"], "WorkloadMemoryLeak");
    assert_eq!(labels["namespace"], "shop");
    assert_eq!(labels["workload"], "Deployment/leaky-flask");
    assert_eq!(labels["report"], "deployment-leaky-flask");
    assert_eq!(labels["severity"], "warning");
    assert_eq!(labels["team"], "checkout");
    assert_eq!(
        alerts[0]["annotations"]["suspect"],
        "__main__.Profiler.results"
    );
    assert!(alerts[0].get("endsAt").is_none());
}

#[tokio::test]
async fn retries_a_5xx_then_succeeds() {
    let rx = Receiver::start(&[500]).await;
    let t0 = Instant::now();
    let results = Notifier::default()
        .send(
            &webhook_config(rx.url("/h"), WebhookFormat::Json),
            &leak_alert(),
        )
        .await;
    assert!(results[0].1.is_ok(), "{results:?}");
    assert_eq!(rx.received().len(), 2, "one failure, one retry");
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "backed off before retrying"
    );
}

#[tokio::test]
async fn gives_up_after_three_5xx() {
    let rx = Receiver::start(&[503, 503, 503, 503]).await;
    let results = Notifier::default()
        .send(
            &webhook_config(rx.url("/h"), WebhookFormat::Json),
            &leak_alert(),
        )
        .await;
    let err = results[0].1.as_ref().unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "webhook http://{}: 503 Service Unavailable: no such hook",
            rx.addr
        )
    );
    assert_eq!(rx.received().len(), 3);
}

/// A 404 is final (not retried), reported in one line without the URL's path, and does not keep
/// the other sink from getting the alert.
#[tokio::test]
async fn a_404_is_final_and_the_other_sink_still_gets_the_alert() {
    let hook = Receiver::start(&[404]).await;
    let am = Receiver::start(&[]).await;
    let cfg = AlertConfig {
        webhook_url: Some(hook.url("/services/T0/B0/secret-token")),
        ..alertmanager_config(am.url(""))
    };
    let results = Notifier::default().send(&cfg, &leak_alert()).await;
    assert_eq!(results.len(), 2);
    let (sink, result) = &results[0];
    assert_eq!(*sink, Sink::Webhook);
    let err = result.as_ref().unwrap_err().to_string();
    assert_eq!(
        err,
        format!("webhook http://{}: 404 Not Found: no such hook", hook.addr)
    );
    assert!(!err.contains("secret-token"));
    assert_eq!(hook.received().len(), 1, "a 4xx is not retried");
    assert_eq!(results[1].0, Sink::Alertmanager);
    assert!(results[1].1.is_ok(), "{results:?}");
    assert_eq!(am.received().len(), 1);
}

#[tokio::test]
async fn a_closed_port_fails_fast_with_a_connect_error() {
    let port = closed_port();
    let t0 = Instant::now();
    let results = Notifier::new(Duration::from_secs(10))
        .send(
            &webhook_config(format!("http://127.0.0.1:{port}/h"), WebhookFormat::Json),
            &leak_alert(),
        )
        .await;
    let elapsed = t0.elapsed();
    let err = results[0].1.as_ref().unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("webhook http://127.0.0.1:{port}: ")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    // Three attempts with 0.5 s and 1 s pauses; nowhere near the 10 s timeout.
    assert!(
        elapsed >= Duration::from_millis(1500),
        "retried: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[tokio::test]
async fn a_silent_receiver_is_bounded_by_the_timeout() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    let t0 = Instant::now();
    let results = Notifier::new(Duration::from_millis(300))
        .send(
            &webhook_config(format!("http://{addr}/h"), WebhookFormat::Json),
            &leak_alert(),
        )
        .await;
    let err = results[0].1.as_ref().unwrap_err().to_string();
    assert_eq!(
        err,
        format!("webhook http://{addr}: no response within 300ms")
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    held.abort();
}

#[tokio::test]
async fn no_sinks_no_requests_and_bad_urls_are_reported() {
    let results = Notifier::default()
        .send(&AlertConfig::default(), &leak_alert())
        .await;
    assert!(results.is_empty());
    let results = Notifier::default()
        .send(
            &webhook_config("ftp://x/y".into(), WebhookFormat::Json),
            &leak_alert(),
        )
        .await;
    let err = results[0].1.as_ref().unwrap_err().to_string();
    assert_eq!(
        err,
        "webhook ftp://x: invalid URL: expected http:// or https:// and a host"
    );
}

// --- a real Alertmanager ---

/// `ALERTMANAGER_BIN`, else `alertmanager` on PATH, else where `make alertmanager` puts it.
fn alertmanager_bin() -> PathBuf {
    const HOW: &str = "build it with `make alertmanager` (tests/testenv.mk; needs Go), or point \
                       ALERTMANAGER_BIN at an Alertmanager binary";
    if let Some(p) = std::env::var_os("ALERTMANAGER_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "ALERTMANAGER_BIN={} is not a file: {HOW}",
            p.display()
        );
        return p;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("alertmanager"))
            .find(|p| p.is_file())
    });
    if let Some(p) = on_path {
        return p;
    }
    let cache = std::env::var_os("LEAKHUNT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/leakhunt")))
        .unwrap_or_default();
    let p = cache.join("tools/bin/alertmanager");
    assert!(
        p.is_file(),
        "no Alertmanager binary (not in ALERTMANAGER_BIN, on PATH, nor at {}): {HOW}",
        p.display()
    );
    p
}

/// Kills and reaps the Alertmanager when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Alertmanager on a free port and waits until it serves. The port is free when chosen,
/// not when bound: a test running alongside may take it, so a start that exits, or a port that
/// answers but is not Alertmanager's, is tried again on another.
async fn start_alertmanager(bin: &Path, dir: &Path, config: &Path) -> (Running, String) {
    let log_path = dir.join("alertmanager.log");
    for _attempt in 0..3 {
        let port = closed_port();
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Empty: no gossip cluster, so no listener beyond the web one.
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut running = Running(child);
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(running.0.try_wait(), Ok(Some(_))) {
                break; // could not listen: another port
            }
            if let Some((StatusCode::OK, _)) = get(&format!("{base}/-/ready")).await {
                let body = match get(&format!("{base}/api/v2/status")).await {
                    Some((StatusCode::OK, body)) => body,
                    _ => Bytes::new(),
                };
                let status: Value = serde_json::from_slice(&body).unwrap_or_default();
                if status.get("versionInfo").is_some() {
                    return (running, base);
                }
                break; // someone else's server on that port
            }
            assert!(
                Instant::now() < deadline,
                "Alertmanager not ready after 30 s; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(running);
    }
    panic!(
        "Alertmanager did not start on three ports; its last log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}

async fn get(url: &str) -> Option<(StatusCode, Bytes)> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let response = client.get(url.parse().ok()?).await.ok()?;
    let status = response.status();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

#[tokio::test]
async fn real_alertmanager_accepts_and_lists_the_alert() {
    let bin = alertmanager_bin();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    // Everything to a receiver with no integrations: nothing leaves the machine.
    std::fs::write(
        &config,
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let (_running, base) = start_alertmanager(&bin, dir.path(), &config).await;

    let alert = leak_alert();
    let results = Notifier::default()
        .send(&alertmanager_config(format!("{base}/")), &alert)
        .await;
    assert!(results[0].1.is_ok(), "{results:?}");

    // The API lists it once dispatched; allow a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&format!("{base}/api/v2/alerts"))
            .await
            .expect("GET alerts");
        assert_eq!(status, StatusCode::OK);
        let listed: Value = serde_json::from_slice(&body).unwrap();
        let ours = listed.as_array().unwrap().iter().find(|a| {
            a["labels"]["alertname"] == "WorkloadMemoryLeak"
                && a["labels"]["namespace"] == "shop"
                && a["labels"]["workload"] == "Deployment/leaky-flask"
        });
        if let Some(a) = ours {
            assert_eq!(a["labels"]["report"], "deployment-leaky-flask");
            assert_eq!(a["labels"]["team"], "checkout");
            assert_eq!(a["labels"]["severity"], "warning");
            assert_eq!(a["annotations"]["growth"], "+2000 items +180KiB");
            assert_eq!(a["status"]["state"], "active");
            let sent = alertmanager::payload(&alert, &BTreeMap::new());
            assert_eq!(
                a["annotations"]["summary"],
                sent[0]["annotations"]["summary"]
            );
            // No endsAt was sent: Alertmanager resolves it on its own timeout, in the future.
            let ends: Timestamp = a["endsAt"].as_str().unwrap().parse().unwrap();
            assert!(ends > Timestamp::now(), "{a}");
            break;
        }
        assert!(Instant::now() < deadline, "alert not listed: {listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
