//! Connections are bounded: headers must arrive in time, idle keep-alive
//! connections close, and one connection over the limit gets a clear 503;
//! an event stream stays open on its heartbeats.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::security_headers::assert_carries_them_once;
use crate::support::app::{spawn_app, TestApp};

/// A deadline for waiting on the server, far beyond the settings used, so
/// a server that never closes fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base_url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection; what it sent.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut all))
        .await
        .expect("the server closed the connection")
        .unwrap_or_default();
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn headers_that_never_finish_and_idle_keep_alive_are_closed() {
    let app = spawn_app(&[("header_timeout_secs", json!(1))]).await;
    // Headers started, never finished.
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    until_closed(&mut slow).await;
    // Nothing sent at all.
    let mut silent = connect(&app).await;
    until_closed(&mut silent).await;
    // One request answered, then idle on keep-alive.
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.shutdown().await;
}

#[tokio::test]
async fn an_event_stream_outlives_the_header_timeout() {
    let app = spawn_app(&[
        ("header_timeout_secs", json!(1)),
        ("heartbeat_secs", json!(1)),
    ])
    .await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Three heartbeats take three header timeouts: the stream is open all along.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches(": heartbeat").count() < 3 {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("a heartbeat")
            .unwrap();
        assert!(n > 0, "the stream was closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_connection_over_the_limit_gets_503_and_others_keep_working() {
    let app = spawn_app(&[
        ("max_connections", json!(3)),
        ("header_timeout_secs", json!(600)),
    ])
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&app).await);
    }
    // Accepted in order: one request on the last held connection proves
    // the server has taken all three.
    held[2]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = held[2].read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let refused = reqwest::Client::new()
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_carries_them_once("a connection over the bound", refused.headers());
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("connections"),
        "{body}"
    );

    // A slot freed is a slot taken again.
    held.truncate(1);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = reqwest::Client::new()
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no slot came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    app.shutdown().await;
}
