//! The admin server on a real socket: probes, metrics, routing, shutdown.

// Tests and their helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use leakhunt_operator::http::{bind, serve_on, Health};
use leakhunt_operator::metrics::Metrics;

async fn call(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, String, String) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let response = client.request(req).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn probes_metrics_and_routing() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Metrics::new();
    let health = Health::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(
        listener,
        metrics.clone(),
        health.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    let (status, _, body) = call(addr, Method::GET, "/livez").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));

    let (status, _, body) = call(addr, Method::GET, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    );
    health.set_ready(true);
    let (status, _, body) = call(addr, Method::GET, "/readyz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    // Liveness does not depend on readiness.
    health.set_ready(false);
    assert_eq!(call(addr, Method::GET, "/livez").await.0, StatusCode::OK);
    assert_eq!(
        call(addr, Method::GET, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    metrics.oom_kill("shop", "Deployment/leaky-flask");
    let (status, content_type, body) = call(addr, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        body.contains(
            r#"leakhunt_oom_kills_total{namespace="shop",workload="Deployment/leaky-flask"} 1"#
        ),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    assert_eq!(
        call(addr, Method::GET, "/nope").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(addr, Method::GET, "/metrics/extra").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(addr, Method::POST, "/metrics").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let (status, _, body) = call(addr, Method::HEAD, "/livez").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));

    // Shutdown ends serve and frees the port.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn report_pages_only_when_given_and_read_only() {
    use leakhunt_operator::http::{serve_pages, Pages};
    use std::sync::Arc;
    // Without pages (the agent, the operator without --ui): no /reports.
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let plain = listener.local_addr().unwrap();
    let (stop1, stopped1) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_on(
        listener,
        Metrics::new(),
        Health::new(),
        async move {
            let _ = stopped1.await;
        },
    ));
    assert_eq!(
        call(plain, Method::GET, "/reports").await.0,
        StatusCode::NOT_FOUND
    );

    // The operator's pages answer for /reports and below, with the path they were asked.
    let pages: Pages = Arc::new(|path: String| {
        Box::pin(async move { (StatusCode::OK, format!("<p>{path}</p>")) })
    });
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop2, stopped2) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_pages(
        listener,
        Metrics::new(),
        Health::new(),
        Some(pages),
        async move {
            let _ = stopped2.await;
        },
    ));
    let (status, content_type, body) = call(addr, Method::GET, "/reports/shop/web").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert_eq!(body, "<p>/reports/shop/web</p>");
    assert_eq!(
        call(addr, Method::GET, "/reportsx").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(addr, Method::POST, "/reports").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        call(addr, Method::DELETE, "/reports/shop/web").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(call(addr, Method::GET, "/livez").await.0, StatusCode::OK);
    let _ = stop1.send(());
    let _ = stop2.send(());
}
