use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::app::spawn_app;

/// The headers every response of the server carries, whatever answered it:
/// a route, the prepared page, a catcher, a request refused by a handler,
/// an event stream, or the front door refusing a request it cannot parse or
/// a connection over its bound.
const EXPECTED: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("permissions-policy", "interest-cohort=()"),
];

#[tokio::test]
async fn every_kind_of_response_carries_the_security_headers_once() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "hello").await;
    let responses = [
        ("GET /api/messages", app.get("/api/messages").await),
        ("GET /", app.get("/").await),
        ("GET /no/such/page", app.get("/no/such/page").await),
        (
            "POST /api/messages with an empty name",
            app.post_json("/api/messages", &json!({"name": "", "text": "x"}))
                .await,
        ),
        ("GET /healthz", app.get("/healthz").await),
    ];
    let statuses: Vec<u16> = responses.iter().map(|(_, r)| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 200, 404, 400, 200]);
    for (what, response) in &responses {
        assert_carries_them_once(what, response.headers());
    }
    app.shutdown().await;
}

/// Each of [`EXPECTED`] once, with its value (the 503 for a connection
/// over the bound is checked in `connections`).
pub fn assert_carries_them_once(what: &str, headers: &reqwest::header::HeaderMap) {
    for (name, value) in EXPECTED {
        let values: Vec<_> = headers.get_all(name).iter().collect();
        assert_eq!(values.len(), 1, "{what}: one {name}, got {values:?}");
        assert_eq!(values[0], value, "{what}: {name}");
    }
}

#[tokio::test]
async fn the_front_doors_own_answers_carry_them_too() {
    let app = spawn_app(&[]).await;
    let address = app.base_url.trim_start_matches("http://").to_owned();

    let stream = app.client.get(app.url("/api/events")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert_carries_them_once("GET /api/events", stream.headers());

    // hyper refuses a request line it cannot parse; the front door answers.
    let mut garbage = TcpStream::connect(&address).await.unwrap();
    garbage.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    garbage.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    let mut headers = reqwest::header::HeaderMap::new();
    for line in head.lines().skip(1) {
        let (name, value) = line.split_once(": ").expect("a header line");
        headers.append(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    assert_carries_them_once("an unparsable request", &headers);

    drop(stream);
    app.shutdown().await;
}
