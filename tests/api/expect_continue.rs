//! A body the headers already condemn is refused from them alone: a client
//! that waits for `100 Continue` (RFC 9110 §10.1.1) gets the final answer
//! instead, and the connection closes, its body unread.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::app::{spawn_app, TestApp};

const PATIENCE: Duration = Duration::from_secs(30);

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base_url.trim_start_matches("http://"))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_condemned_body_is_refused_before_100_continue() {
    let app = spawn_app(&[]).await;
    let head = |path: &str, extra: &str, content_type: &str, length: u64| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    let same_origin = "Sec-Fetch-Site: same-origin\r\n";
    for (head, status, content_type) in [
        (
            head("/api/messages", "", "application/json", 100_000),
            "413",
            "application/json",
        ),
        (
            head("/api/messages", same_origin, "application/json", 100_000),
            "413",
            "application/json",
        ),
        (
            head("/api/messages", "", "text/plain", 10),
            "415",
            "application/json",
        ),
        (
            head("/api/messages", same_origin, "text/plain", 10),
            "415",
            "application/json",
        ),
        (
            head(
                "/messages",
                "",
                "application/x-www-form-urlencoded",
                100_000,
            ),
            "413",
            "text/html",
        ),
        (head("/messages", "", "text/plain", 10), "415", "text/html"),
    ] {
        // The head asks for `100 Continue`; no body is sent.
        let answer = app.raw(head.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{head}: {answer}"
        );
        let lower = answer.to_ascii_lowercase();
        assert!(lower.contains("\r\nconnection: close\r\n"), "{answer}");
        assert!(
            lower.contains(&format!("\r\ncontent-type: {content_type}")),
            "{answer}"
        );
    }
    assert_eq!(app.message_count().await, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_body_the_headers_allow_is_asked_for_with_100_continue() {
    let app = spawn_app(&[]).await;
    let body = r#"{"name": "ann", "text": "after 100"}"#;
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /api/messages HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 25];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"HTTP/1.1 100 Continue\r\n"), "{first:?}");
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("HTTP/1.1 201 "), "{rest}");
    app.shutdown().await;
}

/// An expectation the server cannot meet (anything but `100-continue`) is
/// refused with 417 (RFC 9110 §10.1.1) before the body is read: nothing
/// is stored, and the connection closes. HTTP/1.0 has no expectations:
/// there the header is ignored.
#[tokio::test]
async fn an_expectation_other_than_100_continue_is_417() {
    let app = spawn_app(&[]).await;
    let body = r#"{"name": "ann", "text": "expected"}"#;
    let post = |version: &str, expect: &str| {
        format!(
            "POST /api/messages {version}\r\nHost: localhost\r\nExpect: {expect}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for expect in ["200-ok", "100-continue, x-later", "100-continue=now"] {
        let answer = app.raw(post("HTTP/1.1", expect).as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 417 Expectation Failed\r\n"),
            "{expect}: {answer}"
        );
        let lower = answer.to_ascii_lowercase();
        assert!(lower.contains("\r\nconnection: close\r\n"), "{answer}");
        assert!(answer.contains("100-continue only"), "{answer}");
    }
    assert_eq!(app.message_count().await, 0);
    let answer = app.raw(post("HTTP/1.0", "200-ok").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.0 201 "), "{answer}");
    // Its name is case-insensitive: met, as ever.
    let answer = app.raw(post("HTTP/1.1", "100-Continue").as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 "),
        "{answer}"
    );
    assert_eq!(app.message_count().await, 2);
    app.shutdown().await;
}
