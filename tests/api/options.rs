//! `OPTIONS` says what the server, or one of its paths, answers, and does
//! nothing else (RFC 9110 §9.3.7).

use serde_json::Value;

use crate::support::app::spawn_app;

/// `OPTIONS *` (asterisk-form, RFC 9112 §3.2.4) asks about the server as a
/// whole: 204 with every method it answers anywhere, and the headers every
/// answer carries.
#[tokio::test]
async fn options_star_names_every_method_the_server_answers() {
    let app = spawn_app(&[]).await;
    let answer = app
        .raw(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{answer}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("\r\nallow: get, head, options, post\r\n"),
        "{answer}"
    );
    assert!(
        head.contains("\r\nx-content-type-options: nosniff\r\n"),
        "{answer}"
    );
    assert!(!head.contains("content-length"), "{answer}");
    assert_eq!(body, "", "a 204 has no body");
    // Any other method on `*` is still refused (§3.2.4).
    let answer = app
        .raw(b"GET * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    app.shutdown().await;
}

/// `OPTIONS` of a path: 204 with the methods that path answers, the same
/// `Allow` a 405 there carries; a path that does not exist is a 404, and a
/// repeated query field the 400 it is everywhere. Nothing is stored or
/// changed, and no cross-origin permission is granted.
#[tokio::test]
async fn options_of_a_path_names_its_methods_and_does_nothing_else() {
    let app = spawn_app(&[]).await;
    let options = |path: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url(path))
            .send()
    };
    for (path, allow) in [
        ("/api/messages", "GET, HEAD, OPTIONS, POST"),
        ("/api/messages/abc", "GET, HEAD, OPTIONS"),
        ("/api/events", "GET, HEAD, OPTIONS"),
        ("/messages", "OPTIONS, POST"),
        ("/", "GET, HEAD, OPTIONS"),
        ("/healthz", "GET, HEAD, OPTIONS"),
        ("/static/app.js", "GET, HEAD, OPTIONS"),
    ] {
        let response = options(path).await.unwrap();
        assert_eq!(response.status(), 204, "{path}");
        assert_eq!(response.headers()["allow"], allow, "{path}");
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{path}"
        );
        assert_eq!(response.bytes().await.unwrap().len(), 0, "{path}");
        // A method the path does not have gets the same list.
        let refused = app
            .client
            .request(reqwest::Method::PATCH, app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 405, "{path}");
        assert_eq!(refused.headers()["allow"], allow, "{path}");
    }
    let missing = options("/no/such/path").await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "not found");
    // A file the page does not have exists for no method: 404, as its GET,
    // and no `Allow`.
    for method in [
        reqwest::Method::OPTIONS,
        reqwest::Method::GET,
        reqwest::Method::PATCH,
    ] {
        let response = app
            .client
            .request(method.clone(), app.url("/static/nothere.js"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method}");
        assert!(response.headers().get("allow").is_none(), "{method}");
    }
    let repeated = options("/api/messages?limit=1&limit=2").await.unwrap();
    assert_eq!(repeated.status(), 400);
    let body: Value = repeated.json().await.unwrap();
    assert_eq!(body["field"], "limit", "{body}");
    // A browser's preflight from another site: told the methods, given no
    // permission.
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/messages"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .body(r#"{"name": "ann", "text": "not stored"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert!(preflight
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    assert_eq!(app.message_count().await, 0, "nothing stored");
    app.shutdown().await;
}
