//! A body is read as UTF-8, unencoded: a declared charset other than UTF-8
//! or a content coding other than identity is refused with 415 naming it
//! (RFC 9110 §8.4, §15.5.16; RFC 8259 §8.1), a transfer coding other than
//! chunked with 501 (RFC 9112 §6.1); nothing is read as what it is not.

use serde_json::Value;

use crate::support::app::spawn_app;

const POST: &str = r#"{"name": "ann", "text": "héllo"}"#;

#[tokio::test]
async fn only_utf8_json_is_read() {
    let app = spawn_app(&[]).await;
    for browser in [false, true] {
        for charset in ["iso-8859-1", "utf-16", "UTF-32", "\"latin1\""] {
            let mut request = app
                .client
                .post(app.url("/api/messages"))
                .header(
                    "content-type",
                    format!("application/json; charset={charset}"),
                )
                .body(POST);
            if browser {
                request = request.header("sec-fetch-site", "same-origin");
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 415, "{charset}");
            let body: Value = response.json().await.unwrap();
            let error = body["error"].as_str().unwrap();
            assert!(
                error.contains(charset.trim_matches('"')),
                "{charset}: {error}"
            );
        }
    }
    assert_eq!(app.message_count().await, 0, "nothing stored");
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "application/json; charset=\"Utf-8\"",
    ] {
        let response = app
            .post_body("/api/messages", content_type, POST)
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{content_type}");
    }
    // Windows tools and editors write UTF-8 with a byte order mark, which
    // RFC 8259 §8.1 lets a parser ignore: the message is the same.
    let with_bom = [&b"\xEF\xBB\xBF"[..], POST.as_bytes()].concat();
    let response = app
        .post_body("/api/messages", "application/json", with_bom)
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "after a byte order mark");
    let stored: Value = response.json().await.unwrap();
    let plain: Value = serde_json::from_str(POST).unwrap();
    assert_eq!(
        (&stored["name"], &stored["text"]),
        (&plain["name"], &plain["text"])
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_form_in_another_charset_is_refused() {
    let app = spawn_app(&[]).await;
    let response = app
        .post_body(
            "/messages",
            "application/x-www-form-urlencoded; charset=iso-8859-1",
            "name=ann&text=h%E9llo",
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let page = response.text().await.unwrap();
    assert!(page.contains("iso-8859-1"), "{page}");
    assert_eq!(app.message_count().await, 0, "nothing stored");
    app.shutdown().await;
}

#[tokio::test]
async fn a_content_coding_is_refused_and_identity_is_not() {
    let app = spawn_app(&[]).await;
    for (coding, browser) in [("gzip", false), ("gzip", true), ("identity, br", false)] {
        let mut request = app
            .client
            .post(app.url("/api/messages"))
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(POST);
        if browser {
            request = request.header("sec-fetch-site", "same-origin");
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "{coding}");
        // RFC 9110 §12.5.3: the codings accepted, so the client can tell
        // this 415 from one for the media type.
        assert_eq!(response.headers()["accept-encoding"], "identity");
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("content coding"), "{coding}: {error}");
        assert!(
            error.contains(coding.rsplit(", ").next().unwrap()),
            "{error}"
        );
    }
    // The form's route, which answers with the page, says so too.
    let response = app
        .client
        .post(app.url("/messages"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-encoding", "gzip")
        .body("name=ann&text=hi")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(response.headers()["accept-encoding"], "identity");
    // A 415 for anything but a content coding MUST NOT have it (RFC 9110
    // §12.5.3).
    for (path, content_type) in [
        ("/api/messages", "text/plain"),
        ("/api/messages", "application/json; charset=latin1"),
        ("/messages", "text/plain"),
    ] {
        let response = app.post_body(path, content_type, "x").await.unwrap();
        assert_eq!(response.status(), 415, "{path} {content_type}");
        assert!(
            response.headers().get("accept-encoding").is_none(),
            "{path} {content_type}"
        );
    }
    assert_eq!(app.message_count().await, 0, "nothing stored");
    let response = app
        .client
        .post(app.url("/api/messages"))
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .body(POST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    app.shutdown().await;
}

#[tokio::test]
async fn a_transfer_coding_before_chunked_is_501_and_one_not_ending_in_it_400() {
    let app = spawn_app(&[]).await;
    let request = format!(
        "POST /api/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n{POST}\r\n0\r\n\r\n",
        POST.len()
    );
    let answer = app.raw(request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 501 "), "{answer}");
    let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert!(body["error"].as_str().unwrap().contains("gzip"), "{body}");
    // A coding list that does not end in chunked leaves the body's length
    // unknown: 400 (RFC 9112 §6.3), in the JSON error shape.
    let request = format!(
        "POST /api/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: identity\r\n\r\n{POST}"
    );
    let answer = app.raw(request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert!(body["error"].as_str().is_some(), "{body}");
    // Chunked twice is a sender's fault (RFC 9112 §6.1): 400. It was
    // stored, hyper having undone one chunking, and a proxy in front that
    // undid both would have seen another body.
    for codings in [
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    ] {
        let request = format!(
            "POST /api/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{codings}\r\n\r\n{:x}\r\n{POST}\r\n0\r\n\r\n",
            POST.len()
        );
        let answer = app.raw(request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{codings}: {answer}");
        assert!(answer.contains("more than once"), "{answer}");
    }
    assert_eq!(app.message_count().await, 0, "nothing stored");
    app.shutdown().await;
}
