//! What Rocket's own server did for a request and the front door's hand-over
//! to Rocket must do as well: HEAD lengths, bodies however they are framed,
//! cookies however they are split.

use bytes::Bytes;
use serde_json::json;

use crate::support::app::spawn_app;

/// A HEAD answers the GET's status and length, with no body.
#[tokio::test]
async fn head_answers_with_the_gets_length_and_no_body() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "so the listing is not empty").await;
    for path in ["/", "/api/messages", "/static/app.js", "/api/openapi.json"] {
        let get = app.get(path).await;
        assert_eq!(get.status(), 200, "{path}");
        let length = get.bytes().await.unwrap().len();
        let head = app.client.head(app.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "{path}");
        assert_eq!(
            head.headers()["content-length"].to_str().unwrap(),
            length.to_string(),
            "{path}"
        );
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
    app.shutdown().await;
}

/// A body sent in chunks (no Content-Length) is read whole; one over the
/// cap is refused with 413, as with a Content-Length, and stores nothing.
#[tokio::test]
async fn chunked_bodies_are_read_whole_and_capped() {
    let app = spawn_app(&[]).await;
    let chunked = |body: String| {
        let parts: Vec<Result<Bytes, std::io::Error>> = body
            .into_bytes()
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        reqwest::Body::wrap_stream(futures::stream::iter(parts))
    };
    let posted = app
        .client
        .post(app.url("/api/messages"))
        .header("content-type", "application/json")
        .body(chunked(
            json!({"name": "ann", "text": "in chunks"}).to_string(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let cap = simplechat::api::body::BODY_LIMIT_BYTES as usize;
    let big = app
        .client
        .post(app.url("/api/messages"))
        .header("content-type", "application/json")
        .body(chunked(
            json!({"name": "bob", "text": "x".repeat(cap)}).to_string(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(app.texts("/api/messages").await, ["in chunks"]);
    app.shutdown().await;
}

/// The name cookie is found whether the browser sends one `Cookie` header
/// or several, among other cookies.
#[tokio::test]
async fn the_name_cookie_is_read_among_others() {
    let app = spawn_app(&[]).await;
    let form = app
        .client
        .post(app.url("/messages"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=Zoe&text=hello&id=form-key-dispatch")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 303);
    let set_cookie = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    let name_cookie = set_cookie.split(';').next().unwrap().to_owned();
    for cookies in [
        vec![format!("theme=dark; {name_cookie}; lang=en")],
        vec!["theme=dark".to_owned(), name_cookie.clone()],
    ] {
        let mut request = app.client.get(app.url("/"));
        for cookie in &cookies {
            request = request.header("cookie", cookie);
        }
        let page = request.send().await.unwrap().text().await.unwrap();
        assert!(page.contains("value=\"Zoe\""), "{cookies:?}");
    }
    app.shutdown().await;
}

/// A post from a script is answered by the front door itself, one from a
/// browser (`Sec-Fetch-Site`) by Rocket's route (`api::plain_post`): the
/// answers are the same, status, header for header and body, for a new
/// message, a retry, a conflict and each refusal.
#[tokio::test]
async fn a_post_is_answered_alike_by_the_front_door_and_by_rocket() {
    let app = spawn_app(&[]).await;
    // Status, headers (but the date and length; ids as `<id>`) and body
    // (the datetime left out), from a browser or not.
    let send = |browser: bool, body: String| {
        let request = app
            .client
            .post(app.url("/api/messages"))
            .header("content-type", "application/json");
        let request = if browser {
            request.header("sec-fetch-site", "same-origin")
        } else {
            request
        };
        let key = if browser { "browser-key" } else { "script-key" };
        async move {
            let response = request
                .body(body.replace("<key>", key))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let mut headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter(|(name, _)| *name != "date" && *name != "content-length")
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
                .collect();
            let mut body: serde_json::Value = response.json().await.unwrap();
            let id = body["id"].as_str().map(str::to_owned);
            if let Some(id) = id {
                body["id"] = json!("<id>");
                assert!(body["datetime"].as_str().is_some(), "{body}");
                body["datetime"] = json!("<datetime>");
                for (_, value) in &mut headers {
                    *value = value.replace(&id, "<id>");
                }
            }
            if let Some(error) = body["error"].as_str() {
                body["error"] = json!(error.replace(key, "<key>"));
            }
            headers.sort();
            (status, headers, body)
        }
    };
    let mut statuses = Vec::new();
    for body in [
        json!({"name": "ann", "text": "no key"}).to_string(),
        json!({"name": "ann", "text": "keyed", "id": "<key>"}).to_string(),
        json!({"name": "ann", "text": "keyed", "id": "<key>"}).to_string(),
        json!({"name": "bob", "text": "other content", "id": "<key>"}).to_string(),
        json!({"name": "", "text": "no name"}).to_string(),
        json!({"name": "ann", "text": "x".repeat(3000)}).to_string(),
        json!(["ann", "an array"]).to_string(),
        "{\"name\": \"ann\", \"text\": ".to_owned(),
        r#"{"name": "ann", "text": "half \ud800 a pair"}"#.to_owned(),
        r#"{"name": "ann", "text": "b", "id": "\udc00"}"#.to_owned(),
        json!({"name": "ann", "text": "z".repeat(30_000)}).to_string(),
        // A UTF-8 byte order mark before the JSON text (RFC 8259 §8.1).
        format!("\u{feff}{}", json!({"name": "ann", "text": "after a BOM"})),
    ] {
        let (status, script_headers, script_body) = send(false, body.clone()).await;
        let (browser_status, browser_headers, browser_body) = send(true, body.clone()).await;
        assert_eq!(status, browser_status, "{body:.80}");
        assert_eq!(script_headers, browser_headers, "{body:.80}");
        assert_eq!(script_body, browser_body, "{body:.80}");
        if body.contains(r"\ud") {
            // In the project's words on both paths, not the parser's.
            let error = script_body["error"].as_str().unwrap_or_default();
            assert!(error.contains("is a lone surrogate"), "{body}: {error}");
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(
        statuses,
        [201, 201, 201, 409, 400, 400, 400, 400, 400, 400, 413, 201]
    );
    // Each new message was stored once, whichever way it came.
    let texts: Vec<String> = app
        .get_json("/api/messages")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        [
            "no key",
            "no key",
            "keyed",
            "keyed",
            "after a BOM",
            "after a BOM"
        ]
    );
    app.shutdown().await;
}
