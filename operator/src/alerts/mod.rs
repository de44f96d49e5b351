//! Alert delivery beyond Kubernetes Events: a webhook (JSON or Slack-compatible) and the
//! Alertmanager v2 API, with a per-workload rate limit.
//!
//! The payload builders are pure functions (`webhook::json_payload`, `webhook::slack_payload`,
//! `alertmanager::payload`); `Notifier` only moves their bytes. Events are sent by the operator
//! itself with kube's `Recorder`; `AlertConfig::events` only carries the switch.

pub mod alertmanager;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::jiff::Timestamp;

use crate::crd::AlertRouting;

/// How long one POST may take, connect to last response byte, unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default minimum time between two alerts of one kind for one workload.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(600);
/// Pauses before the second and third attempt of a POST that failed to connect or got a 5xx.
const RETRY_BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_millis(1000)];
/// Enough of an error response to show the receiver's reason (`invalid_payload`), no more.
const MAX_ERROR_BODY: usize = 4096;
const MAX_ERROR_EXCERPT: usize = 200;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an alert did not reach one sink. Each renders as one self-contained line naming the sink
/// and the receiver's origin (never its path or credentials: a Slack webhook's path is its secret).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{sink} {url}: invalid URL: {reason}")]
    InvalidUrl {
        sink: Sink,
        url: String,
        reason: String,
    },
    #[error("{sink} {url}: https needs CA roots and none could be loaded: {reason}")]
    NoTls {
        sink: Sink,
        url: String,
        reason: String,
    },
    /// The receiver answered with a non-success status.
    #[error("{sink} {url}: {status}{}", excerpt.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    Status {
        sink: Sink,
        url: String,
        status: StatusCode,
        /// The start of the response body, one line, when there was one.
        excerpt: Option<String>,
    },
    /// No response: connection refused, reset, TLS failure, DNS... The hyper error's own
    /// Display is only "client error (Connect)"; its cause chain is flattened into `detail` so
    /// the line says what actually happened.
    #[error("{sink} {url}: {detail}")]
    Transport {
        sink: Sink,
        url: String,
        detail: String,
        connect: bool,
    },
    #[error("{sink} {url}: no response within {timeout:?}")]
    Timeout {
        sink: Sink,
        url: String,
        timeout: Duration,
    },
}

impl Error {
    /// Worth another attempt: the receiver may be starting or briefly overloaded. 4xx means the
    /// payload or URL is wrong and will stay wrong; a timeout already cost the whole budget.
    fn retryable(&self) -> bool {
        match self {
            Error::Status { status, .. } => status.is_server_error(),
            Error::Transport { connect, .. } => *connect,
            _ => false,
        }
    }
}

/// Where an alert goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sink {
    Webhook,
    Alertmanager,
}

impl Sink {
    /// Lowercase name, as in metrics labels and error lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Webhook => "webhook",
            Sink::Alertmanager => "alertmanager",
        }
    }
}

impl fmt::Display for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The webhook's body format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WebhookFormat {
    /// leakhunt's own camelCase JSON object.
    #[default]
    Json,
    /// Slack incoming-webhook format (`text` plus `blocks`); Mattermost and others accept it too.
    Slack,
}

impl FromStr for WebhookFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(WebhookFormat::Json),
            "slack" => Ok(WebhookFormat::Slack),
            other => Err(format!(
                "unknown webhook format {other:?}: expected \"json\" or \"slack\""
            )),
        }
    }
}

impl fmt::Display for WebhookFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
        })
    }
}

/// Where alerts go: the chart's defaults, possibly overridden per LeakWatch.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertConfig {
    /// Emit Kubernetes Events (sent by the operator via kube's Recorder, not by this module).
    pub events: bool,
    /// Webhook URL; `None` (or empty) sends no webhook.
    pub webhook_url: Option<String>,
    pub webhook_format: WebhookFormat,
    /// Alertmanager base URL; alerts go to `{base}/api/v2/alerts`.
    pub alertmanager_url: Option<String>,
    /// Extra Alertmanager labels (team, severity). They cannot replace the labels that identify
    /// the alert (alertname, namespace, workload, report).
    pub labels: BTreeMap<String, String>,
    /// Per-workload, per-kind rate limit.
    pub cooldown: Duration,
    /// URL prefixes a LeakWatch may send its alerts to. Whoever may create a LeakWatch could
    /// otherwise make the operator POST to any address it can reach (in-cluster services,
    /// cloud metadata); empty: LeakWatches may only switch sinks off.
    pub allowed_url_prefixes: Vec<String>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            events: true,
            webhook_url: None,
            webhook_format: WebhookFormat::Json,
            alertmanager_url: None,
            labels: BTreeMap::new(),
            cooldown: DEFAULT_COOLDOWN,
            allowed_url_prefixes: Vec::new(),
        }
    }
}

impl AlertConfig {
    /// Whether a LeakWatch may route alerts to `url`: switching a sink off (empty) always, a
    /// URL only under an allowed prefix, at a boundary (`https://hooks.slack.com` does not
    /// allow `https://hooks.slack.com.evil.example`).
    pub fn url_allowed(&self, url: &str) -> bool {
        let url = url.trim();
        url.is_empty()
            || self.allowed_url_prefixes.iter().any(|p| {
                !p.is_empty()
                    && url.strip_prefix(p.as_str()).is_some_and(|rest| {
                        p.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?', '#'])
                    })
            })
    }

    /// The LeakWatch URLs this config refuses, said for its status; `None` when all are allowed.
    pub fn refused_urls(&self, o: &AlertRouting) -> Option<String> {
        let refused: Vec<String> = [
            ("webhookUrl", &o.webhook_url),
            ("alertmanagerUrl", &o.alertmanager_url),
        ]
        .into_iter()
        .filter_map(|(field, url)| {
            let url = url.as_deref()?;
            (!self.url_allowed(url)).then(|| format!("alerts.{field} {url:?}"))
        })
        .collect();
        (!refused.is_empty()).then(|| {
            format!(
                "{} not under the operator's allowed URL prefixes (chart value alerts.allowedUrlPrefixes); the chart's receivers get these alerts",
                refused.join(" and ")
            )
        })
    }

    /// This config with a LeakWatch's routing laid over it, field by field: a set field wins, an
    /// unset one keeps the default; labels are merged, the LeakWatch's winning on a clash. An
    /// empty URL in the LeakWatch switches that sink off for its pods; a URL outside the allowed
    /// prefixes is ignored.
    pub fn with_overrides(&self, o: Option<&AlertRouting>) -> AlertConfig {
        let mut cfg = self.clone();
        cfg.webhook_url = non_empty(cfg.webhook_url);
        cfg.alertmanager_url = non_empty(cfg.alertmanager_url);
        let Some(o) = o else {
            return cfg;
        };
        if let Some(events) = o.events {
            cfg.events = events;
        }
        if let Some(url) = o.webhook_url.as_ref().filter(|u| self.url_allowed(u)) {
            cfg.webhook_url = non_empty(Some(url.clone()));
        }
        // The format goes with the URL: not over the chart's webhook when the URL was refused.
        let refused = o.webhook_url.as_ref().is_some_and(|u| !self.url_allowed(u));
        if let Some(slack) = o.slack.filter(|_| !refused) {
            cfg.webhook_format = if slack {
                WebhookFormat::Slack
            } else {
                WebhookFormat::Json
            };
        }
        if let Some(url) = o.alertmanager_url.as_ref().filter(|u| self.url_allowed(u)) {
            cfg.alertmanager_url = non_empty(Some(url.clone()));
        }
        cfg.labels
            .extend(o.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        cfg
    }
}

fn non_empty(url: Option<String>) -> Option<String> {
    url.map(|u| u.trim().to_string()).filter(|u| !u.is_empty())
}

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    LeakDetected,
    OomKilled,
    CaptureFailed,
    AnalysisFailed,
}

impl AlertKind {
    /// The name shown to people and used as the Event reason.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::LeakDetected => "LeakDetected",
            AlertKind::OomKilled => "OOMKilled",
            AlertKind::CaptureFailed => "CaptureFailed",
            AlertKind::AnalysisFailed => "AnalysisFailed",
        }
    }

    /// An OOM kill is an outage already; a leak is one on its way; a failed hunt needs a look
    /// but hurts nobody.
    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::OomKilled => "critical",
            AlertKind::LeakDetected | AlertKind::CaptureFailed | AlertKind::AnalysisFailed => {
                "warning"
            }
        }
    }

    /// Alertmanager `alertname`, in the naming style of Prometheus alerting rules.
    pub fn alertname(self) -> &'static str {
        match self {
            AlertKind::LeakDetected => "WorkloadMemoryLeak",
            AlertKind::OomKilled => "WorkloadOOMKilled",
            AlertKind::CaptureFailed => "LeakhuntCaptureFailed",
            AlertKind::AnalysisFailed => "LeakhuntAnalysisFailed",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert about one workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub kind: AlertKind,
    pub namespace: String,
    /// `Deployment/leaky-flask` (`WorkloadRef::display`).
    pub workload: String,
    /// The LeakReport's name.
    pub report: String,
    /// One sentence. Never string contents from the process: alerts leave the cluster.
    pub summary: String,
    /// The top suspect's path (`__main__.Profiler.results`).
    pub suspect: Option<String>,
    /// The top suspect's growth (`+2000 items +180KiB`).
    pub growth: Option<String>,
    /// The report's verdict (`Leak`, `NoLeak`, `Inconclusive`), once analysed.
    pub verdict: Option<String>,
    /// When the working set reaches the limit at its current rate.
    pub predicted_oom: Option<Timestamp>,
    pub oom_kills: i64,
    pub time: Timestamp,
}

/// Sends alerts over HTTP(S). One client (and so one connection pool) for every sink; cheap to
/// share behind an `Arc` or to clone.
#[derive(Clone, Debug)]
pub struct Notifier {
    client: Transport,
    timeout: Duration,
}

#[derive(Clone, Debug)]
enum Transport {
    /// http and https.
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
    /// http only: the system has no CA roots (a distroless image without ca-certificates), so
    /// https could verify nobody; plain-http receivers inside the cluster still work.
    Plain(Client<HttpConnector, Full<Bytes>>, String),
}

impl Notifier {
    /// A notifier whose every POST (connect, send, response) is bounded by `timeout`.
    pub fn new(timeout: Duration) -> Notifier {
        let mut http = HttpConnector::new();
        // The HTTPS connector below decides the scheme; this one only opens TCP.
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let builder = Client::builder(TokioExecutor::new());
        let client = match HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => {
                Transport::Tls(builder.build(b.https_or_http().enable_http1().wrap_connector(http)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no CA roots: alerts to https URLs will fail");
                let mut http = http;
                http.enforce_http(true);
                Transport::Plain(builder.build(http), e.to_string())
            }
        };
        Notifier { client, timeout }
    }

    /// Sends the alert to every sink `cfg` names (webhook, Alertmanager), concurrently, one
    /// result per sink in that order. A failing sink does not keep the others from getting the
    /// alert. A POST that cannot connect or gets a 5xx is tried up to three times (pauses 0.5 s,
    /// 1 s); a 4xx or a timeout is final. Rate limiting is the caller's (`RateLimiter`): it
    /// knows which alerts are new.
    pub async fn send(&self, cfg: &AlertConfig, alert: &Alert) -> Vec<(Sink, Result<()>)> {
        let webhook = non_empty(cfg.webhook_url.clone()).map(|url| {
            let body = match cfg.webhook_format {
                WebhookFormat::Json => webhook::json_payload(alert),
                WebhookFormat::Slack => webhook::slack_payload(alert),
            };
            (Sink::Webhook, url, body)
        });
        let am = non_empty(cfg.alertmanager_url.clone()).map(|base| {
            (
                Sink::Alertmanager,
                alertmanager::alerts_url(&base),
                alertmanager::payload(alert, &cfg.labels),
            )
        });
        let posts = webhook
            .into_iter()
            .chain(am)
            .map(|(sink, url, body)| async move {
                let result = self.post_with_retry(sink, &url, body.to_string()).await;
                (sink, result)
            });
        futures::future::join_all(posts).await
    }

    async fn post_with_retry(&self, sink: Sink, url: &str, body: String) -> Result<()> {
        let body = Bytes::from(body);
        let mut attempt = 0;
        loop {
            let result = self.post(sink, url, body.clone()).await;
            match (&result, RETRY_BACKOFF.get(attempt)) {
                (Err(e), Some(pause)) if e.retryable() => {
                    tracing::debug!(error = %e, attempt, "alert POST failed, retrying");
                    tokio::time::sleep(*pause).await;
                    attempt += 1;
                }
                _ => return result,
            }
        }
    }

    async fn post(&self, sink: Sink, url: &str, body: Bytes) -> Result<()> {
        let shown = origin(url);
        let uri: Uri =
            url.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| Error::InvalidUrl {
                    sink,
                    url: shown.clone(),
                    reason: e.to_string(),
                })?;
        match uri.scheme_str() {
            Some("http") | Some("https") if uri.host().is_some() => {}
            _ => {
                return Err(Error::InvalidUrl {
                    sink,
                    url: shown,
                    reason: "expected http:// or https:// and a host".into(),
                })
            }
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("leakhunt/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| Error::InvalidUrl {
                sink,
                url: shown.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let response = match &self.client {
                Transport::Tls(c) => c.request(request).await,
                Transport::Plain(c, why) => {
                    if uri.scheme_str() == Some("https") {
                        return Err(Error::NoTls {
                            sink,
                            url: shown.clone(),
                            reason: why.clone(),
                        });
                    }
                    c.request(request).await
                }
            }
            .map_err(|e| Error::Transport {
                sink,
                url: shown.clone(),
                detail: error_chain(&e),
                connect: e.is_connect(),
            })?;
            let status = response.status();
            // Read the body either way so the pooled connection can be reused; keep only a
            // bounded excerpt, and only for errors.
            let bytes = Limited::new(response.into_body(), MAX_ERROR_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                Ok(())
            } else {
                Err(Error::Status {
                    sink,
                    url: shown.clone(),
                    status,
                    excerpt: excerpt(&bytes),
                })
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                sink,
                url: shown,
                timeout: self.timeout,
            }),
        }
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new(DEFAULT_TIMEOUT)
    }
}

/// `scheme://host[:port]` of a URL, for error lines: the path and query of a webhook URL are
/// often its credential (Slack, Teams), and userinfo always is.
pub fn origin(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => match uri.port_u16() {
                Some(port) => format!("{scheme}://{host}:{port}"),
                None => format!("{scheme}://{host}"),
            },
            _ => "(invalid URL)".into(),
        },
        Err(_) => "(invalid URL)".into(),
    }
}

/// The error and its causes on one line, repeats dropped (hyper wraps io errors whose text
/// the wrapper already contains).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = e.source();
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// A short single-line, printable excerpt of a response body, if it has any text.
fn excerpt(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        return None;
    }
    let mut cut: String = line.chars().take(MAX_ERROR_EXCERPT).collect();
    if cut.len() < line.len() {
        cut.push('…');
    }
    Some(cut)
}

/// At most one alert per (namespace, workload, kind) per cooldown, so a crash-looping pod
/// OOM-killed every minute pages once, not sixty times an hour. Pure: the clock is passed in.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// When each key last let an alert through, and the cooldown that applied then.
    sent: HashMap<(String, String, AlertKind), (Instant, Duration)>,
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter::default()
    }

    /// Whether an alert for `key` may go out at `now`; if so, starts its cooldown. Keys whose
    /// cooldown is over are forgotten, so memory is bounded by the alerts of one cooldown.
    pub fn allow(
        &mut self,
        key: (&str, &str, AlertKind),
        now: Instant,
        cooldown: Duration,
    ) -> bool {
        // Each entry keeps its own cooldown, so a shorter one passed later cannot cut short
        // (nor a longer one extend) a window already started.
        self.sent
            .retain(|_, (at, window)| now.saturating_duration_since(*at) < *window);
        let (namespace, workload, kind) = key;
        let owned = (namespace.to_string(), workload.to_string(), kind);
        if self.sent.contains_key(&owned) {
            return false;
        }
        if !cooldown.is_zero() {
            self.sent.insert(owned, (now, cooldown));
        }
        true
    }

    /// Keys currently in cooldown.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_field_by_field_and_merge_labels() {
        let base = AlertConfig {
            events: true,
            webhook_url: Some("http://hooks.local/a".into()),
            webhook_format: WebhookFormat::Json,
            alertmanager_url: Some("http://am:9093".into()),
            labels: BTreeMap::from([
                ("team".into(), "platform".into()),
                ("env".into(), "prod".into()),
            ]),
            cooldown: Duration::from_secs(60),
            allowed_url_prefixes: Vec::new(),
        };
        assert_eq!(base.with_overrides(None), base);
        let o = AlertRouting {
            events: Some(false),
            webhook_url: None,
            slack: Some(true),
            alertmanager_url: Some(String::new()),
            labels: BTreeMap::from([("team".into(), "shop".into())]),
        };
        let cfg = base.with_overrides(Some(&o));
        assert!(!cfg.events);
        assert_eq!(cfg.webhook_url.as_deref(), Some("http://hooks.local/a"));
        assert_eq!(cfg.webhook_format, WebhookFormat::Slack);
        // An empty URL in the LeakWatch turns the chart's Alertmanager off for its pods.
        assert_eq!(cfg.alertmanager_url, None);
        assert_eq!(cfg.labels["team"], "shop");
        assert_eq!(cfg.labels["env"], "prod");
        assert_eq!(cfg.cooldown, Duration::from_secs(60));
    }

    #[test]
    fn leakwatch_urls_only_under_allowed_prefixes() {
        let base = AlertConfig {
            webhook_url: Some("http://hooks.local/a".into()),
            alertmanager_url: Some("http://am:9093".into()),
            allowed_url_prefixes: vec![
                "https://hooks.slack.com".into(),
                "http://alertmanager.monitoring:9093/".into(),
            ],
            ..Default::default()
        };
        let routing = |webhook: &str, am: &str| AlertRouting {
            webhook_url: Some(webhook.into()),
            alertmanager_url: Some(am.into()),
            ..Default::default()
        };
        let o = routing(
            "https://hooks.slack.com/services/T0/B0/x",
            "http://alertmanager.monitoring:9093/",
        );
        let cfg = base.with_overrides(Some(&o));
        assert_eq!(cfg.webhook_url, o.webhook_url);
        assert_eq!(cfg.alertmanager_url, o.alertmanager_url);
        assert_eq!(base.refused_urls(&o), None);

        // Elsewhere: ignored, the chart's receivers stay, and the status says why.
        let o = routing(
            "https://hooks.slack.com.evil.example/x",
            "http://169.254.169.254/latest",
        );
        let cfg = base.with_overrides(Some(&o));
        assert_eq!(cfg.webhook_url.as_deref(), Some("http://hooks.local/a"));
        assert_eq!(cfg.alertmanager_url.as_deref(), Some("http://am:9093"));
        let why = base.refused_urls(&o).unwrap();
        assert!(
            why.contains("alerts.webhookUrl") && why.contains("alerts.alertmanagerUrl"),
            "{why}"
        );

        // A refused URL does not change the format of the chart's webhook either.
        let o = AlertRouting {
            slack: Some(true),
            ..routing("http://169.254.169.254/", "")
        };
        assert_eq!(
            base.with_overrides(Some(&o)).webhook_format,
            WebhookFormat::Json
        );

        // Switching a sink off needs no permission; with no prefixes nothing else is allowed.
        assert_eq!(
            base.with_overrides(Some(&routing("", ""))).webhook_url,
            None
        );
        let closed = AlertConfig::default();
        assert!(!closed.url_allowed("https://hooks.slack.com/x"));
        assert!(closed.url_allowed(" "));
        assert!(base.url_allowed("https://hooks.slack.com"));
        assert!(base.url_allowed("https://hooks.slack.com?x=1"));
    }

    #[test]
    fn formats_kinds_and_names() {
        assert_eq!("Slack".parse::<WebhookFormat>(), Ok(WebhookFormat::Slack));
        assert_eq!("json".parse::<WebhookFormat>(), Ok(WebhookFormat::Json));
        assert!("xml".parse::<WebhookFormat>().is_err());
        assert_eq!(AlertKind::OomKilled.to_string(), "OOMKilled");
        assert_eq!(AlertKind::OomKilled.alertname(), "WorkloadOOMKilled");
        assert_eq!(AlertKind::OomKilled.severity(), "critical");
        assert_eq!(AlertKind::LeakDetected.alertname(), "WorkloadMemoryLeak");
        assert_eq!(
            AlertKind::CaptureFailed.alertname(),
            "LeakhuntCaptureFailed"
        );
        assert_eq!(
            AlertKind::AnalysisFailed.alertname(),
            "LeakhuntAnalysisFailed"
        );
        assert_eq!(
            origin("https://user:pw@hooks.slack.com/services/T0/B0/secret?x=1"),
            "https://hooks.slack.com"
        );
        assert_eq!(origin("http://127.0.0.1:9093/"), "http://127.0.0.1:9093");
        assert_eq!(origin("not a url"), "(invalid URL)");
    }

    #[test]
    fn rate_limit_per_key_and_bounded() {
        let mut rl = RateLimiter::new();
        let t0 = Instant::now();
        let cd = Duration::from_secs(600);
        let key = ("shop", "Deployment/leaky-flask", AlertKind::OomKilled);
        assert!(rl.allow(key, t0, cd));
        assert!(!rl.allow(key, t0 + Duration::from_secs(599), cd));
        // Another kind or workload has its own window.
        assert!(rl.allow(
            ("shop", "Deployment/leaky-flask", AlertKind::LeakDetected),
            t0,
            cd
        ));
        assert!(rl.allow(("shop", "Deployment/other", AlertKind::OomKilled), t0, cd));
        assert_eq!(rl.len(), 3);
        assert!(rl.allow(key, t0 + cd, cd));
        // The other two expired and were forgotten on that call.
        assert_eq!(rl.len(), 1);
        // A zero cooldown never limits and remembers nothing.
        let mut free = RateLimiter::new();
        assert!(free.allow(key, t0, Duration::ZERO));
        assert!(free.allow(key, t0, Duration::ZERO));
        assert!(free.is_empty());
    }

    #[test]
    fn error_lines_and_retry_policy() {
        let e = Error::Status {
            sink: Sink::Webhook,
            url: "http://x".into(),
            status: StatusCode::NOT_FOUND,
            excerpt: None,
        };
        assert_eq!(e.to_string(), "webhook http://x: 404 Not Found");
        assert!(!e.retryable());
        let e = Error::Status {
            sink: Sink::Alertmanager,
            url: "http://am".into(),
            status: StatusCode::BAD_GATEWAY,
            excerpt: Some("upstream down".into()),
        };
        assert_eq!(
            e.to_string(),
            "alertmanager http://am: 502 Bad Gateway: upstream down"
        );
        assert!(e.retryable());
        assert_eq!(
            excerpt(b"  invalid_payload\n\tmore "),
            Some("invalid_payload more".into())
        );
        assert_eq!(excerpt(b" \n"), None);
    }
}
