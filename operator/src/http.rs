//! The admin HTTP server of the operator and the agent: `/metrics`, `/livez`, `/readyz`, and with
//! the operator's `--ui` the read-only report pages under `/reports` ([`Pages`]).
//!
//! Liveness and readiness are apart: `/livez` answers as long as the process serves HTTP (a
//! restart would not help otherwise), `/readyz` only once the component has done its start-up
//! work (CRDs found, caches synced) — `Health::set_ready`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::metrics::{self, Metrics};

/// A client that has not sent its request headers by then is dropped, so idle or slow
/// connections cannot pile up tasks.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
/// The report pages load nothing and run nothing: inline styles and SVG only.
const PAGE_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

/// Pages served under `/reports`: given the path, its status and HTML.
pub type Pages =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = (StatusCode, String)> + Send>> + Send + Sync>;

/// Readiness, shared between the component that knows and the server that tells. Clones share
/// the flag. Starts not ready.
#[derive(Clone, Debug, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Binds the admin address (port 0 picks a free port; see `local_addr`).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Binds `addr` and serves until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let listener = bind(addr).await?;
    serve_on(listener, metrics, health, shutdown).await
}

/// Serves on an already bound listener until `shutdown` completes, then lets open connections
/// finish their request (for at most a few seconds). One task per connection, HTTP/1.1.
pub async fn serve_on(
    listener: TcpListener,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_pages(listener, metrics, health, None, shutdown).await
}

/// [`serve_on`], with `pages` under `/reports` when given.
pub async fn serve_pages(
    listener: TcpListener,
    metrics: Metrics,
    health: Health,
    pages: Option<Pages>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        let extra = if pages.is_some() { ", /reports" } else { "" };
        tracing::info!(%addr, "serving /metrics, /livez, /readyz{extra}");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "admin server: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set stays as large as the open ones.
        while connections.try_join_next().is_some() {}
        let metrics = metrics.clone();
        let health = health.clone();
        let pages = pages.clone();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&req, &metrics, &health);
                let page = match (&response, &pages) {
                    (Route::Page, Some(p)) => Some(p(req.uri().path().to_string())),
                    _ => None,
                };
                async move {
                    Ok::<_, Infallible>(match (response, page) {
                        (_, Some(page)) => html(page.await),
                        (Route::Done(r), None) => r,
                        (Route::Page, None) => text(StatusCode::NOT_FOUND, "not found"),
                    })
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "admin server: connection ended with an error");
            }
        });
    }
    drop(listener);
    // Wakes every connection task; each finishes its in-flight request and closes.
    let _ = stop_tx.send(());
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("admin server: connections still open after the drain timeout, closed");
    }
    Ok(())
}

/// A response, or a report page to ask [`Pages`] for.
enum Route {
    Done(Response<Full<Bytes>>),
    Page,
}

/// The whole routing table; pure but for reading the metrics and the flag.
fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Route {
    // HEAD is GET without a body (hyper drops it); probes and curl -I use it.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Route::Done(r);
    }
    let path = req.uri().path();
    if path == "/reports" || path.starts_with("/reports/") {
        return Route::Page;
    }
    Route::Done(match path {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics.encode())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            r
        }
        "/livez" => text(StatusCode::OK, "ok"),
        "/readyz" if health.is_ready() => text(StatusCode::OK, "ok"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
}

fn html((status, body): (StatusCode, String)) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(HTML));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(PAGE_POLICY),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    r
}
