//! Writes started by another site are refused; same-origin pages and
//! non-browser clients keep working; the JSON API takes only JSON.

use serde_json::{json, Value};

use crate::support::app::{spawn_app, TestApp};

fn form_post(app: &TestApp) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("/messages"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=mallory&text=posted+from+elsewhere")
}

/// A 403 saying why, without a name cookie: the page for the form's route
/// (a browser shows it), JSON for the API's.
async fn assert_refused(response: reqwest::Response) {
    assert_eq!(response.status(), 403);
    assert!(
        response.headers().get("set-cookie").is_none(),
        "no name cookie for a refused post"
    );
    let page = response.url().path() == "/messages";
    let content_type = response.headers()["content-type"].to_str().unwrap();
    if page {
        assert!(content_type.starts_with("text/html"), "{content_type}");
    } else {
        assert_eq!(content_type, "application/json");
    }
    let body = response.text().await.unwrap();
    let error = if page {
        body
    } else {
        let json: Value = serde_json::from_str(&body).unwrap();
        json["error"].as_str().unwrap().to_owned()
    };
    assert!(error.contains("cross-site write refused"), "{error}");
}

#[tokio::test]
async fn a_form_on_another_site_cannot_post() {
    let app = spawn_app(&[]).await;
    // A modern browser says where the form was.
    let response = form_post(&app)
        .header("sec-fetch-site", "cross-site")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_refused(response).await;
    // A browser without Sec-Fetch-Site still sends Origin.
    let response = form_post(&app)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_refused(response).await;
    // A sandboxed or privacy-stripped origin.
    let response = form_post(&app)
        .header("origin", "null")
        .send()
        .await
        .unwrap();
    assert_refused(response).await;
    // The JSON API too, even with a JSON body (fetch with CORS preflight
    // would fail, but a no-cors fetch of text/plain must not get through).
    let response = app
        .client
        .post(app.url("/api/messages"))
        .header("sec-fetch-site", "same-site")
        .json(&json!({"name": "m", "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_refused(response).await;
    assert_eq!(app.message_count().await, 0, "nothing stored");
    app.shutdown().await;
}

/// `Sec-Fetch-Site` or `Origin` sent twice, this site's first and another's
/// second: which would decide is arbitrary, so the write is a 400. The
/// first one was taken, and the post stored.
#[tokio::test]
async fn a_write_that_names_its_site_twice_is_refused() {
    let app = spawn_app(&[]).await;
    let origin = app.base_url.clone();
    for (name, ours, theirs) in [
        ("sec-fetch-site", "same-origin", "cross-site"),
        ("origin", origin.as_str(), "http://evil.example"),
    ] {
        let response = app
            .client
            .post(app.url("/api/messages"))
            .header(name, ours)
            .header(name, theirs)
            .json(&json!({"name": "m", "text": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{name}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("more than once"),
            "{body}"
        );
    }
    assert_eq!(app.message_count().await, 0, "nothing stored");
    app.shutdown().await;
}

#[tokio::test]
async fn the_page_itself_and_non_browser_clients_can_post() {
    let app = spawn_app(&[]).await;
    let host = app.base_url.trim_start_matches("http://").to_owned();
    // The page's own form, as a browser sends it.
    let response = form_post(&app)
        .header("sec-fetch-site", "same-origin")
        .header("origin", app.base_url.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    // An older browser: Origin names this host.
    let response = form_post(&app)
        .header("origin", format!("http://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    // The lab's XHR: JSON with a charset, no Sec-Fetch-Site or Origin.
    let response = app
        .client
        .post(app.url("/api/messages"))
        .header("content-type", "application/json;charset=UTF-8")
        .body(r#"{"name": "lab", "text": "hello"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // curl.
    app.post_message("curl", "hi").await;
    assert_eq!(app.message_count().await, 4);
    app.shutdown().await;
}

#[tokio::test]
async fn the_json_api_needs_a_json_content_type() {
    let app = spawn_app(&[]).await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = app
            .client
            .post(app.url("/api/messages"))
            .body(r#"{"name": "a", "text": "b"}"#);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "{content_type:?}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("JSON"), "{body}");
    }
    assert_eq!(app.message_count().await, 0);
    app.shutdown().await;
}

/// RFC 9110 allows whitespace on either side of a parameter's `;`, and
/// media types are case-insensitive.
#[tokio::test]
async fn a_content_type_may_have_spaces_around_its_parameters() {
    let app = spawn_app(&[]).await;
    for (i, content_type) in [
        "application/json ; charset=utf-8",
        "application/json\t;charset=UTF-8",
        "Application/JSON ; Charset=\"utf-8\" ; x=y",
        "application/json;",
        "application/problem+json ; charset=utf-8",
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"name": "ann", "text": format!("json {i}")}).to_string();
        let response = app
            .post_body("/api/messages", content_type, body)
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{content_type:?}");
    }
    let form = app
        .post_body(
            "/messages",
            "application/x-www-form-urlencoded ; charset=utf-8",
            "name=ann&text=form",
        )
        .await
        .unwrap();
    assert_eq!(form.status(), 303);
    assert_eq!(app.message_count().await, 6);
    app.shutdown().await;
}

/// A Content-Type that is there but is not a media type is named in the
/// 415, not reported as missing.
#[tokio::test]
async fn an_unparsable_content_type_is_named_in_the_415() {
    let app = spawn_app(&[]).await;
    for content_type in [
        "json",
        "application/json charset=utf-8",
        "application/json; charset",
        "application /json",
    ] {
        let response = app
            .post_body(
                "/api/messages",
                content_type,
                r#"{"name": "a", "text": "b"}"#,
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 415, "{content_type:?}");
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.ends_with(&format!("got {content_type}")), "{body}");
        let page = app
            .post_body("/messages", content_type, "name=a&text=b")
            .await
            .unwrap();
        assert_eq!(page.status(), 415, "{content_type:?}");
        let html = page.text().await.unwrap();
        // The page escapes `/` as the template engine does.
        let shown = content_type.replace('/', "&#x2f;");
        assert!(html.contains(&format!("got {shown}")), "{content_type:?}");
    }
    // A value with UTF-8 in it (hyper lets such bytes through) is quoted
    // too, as Rocket's own server would take the header.
    let raw = "POST /api/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\u{e9}\r\nContent-Length: 26\r\nConnection: close\r\n\r\n{\"name\": \"a\", \"text\": \"b\"}";
    let mut stream = tokio::net::TcpStream::connect(app.base_url.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, raw.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 415 "), "{answer}");
    assert!(answer.contains("got application/json\u{e9}"), "{answer}");
    assert_eq!(app.message_count().await, 0);
    app.shutdown().await;
}

/// A Content-Type holding a byte that is not UTF-8 is sent, but not valid:
/// the 415 says so, whichever way the post goes, not that none was sent.
#[tokio::test]
async fn a_content_type_that_is_not_utf8_is_named_not_valid() {
    let app = spawn_app(&[]).await;
    for (path, extra) in [
        ("/api/messages", ""),
        ("/api/messages", "Sec-Fetch-Site: same-origin\r\n"),
        ("/messages", ""),
    ] {
        let mut raw = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Type: application/json; x="
        )
        .into_bytes();
        raw.push(0xff);
        raw.extend_from_slice(b"\r\nContent-Length: 26\r\nConnection: close\r\n\r\n{\"name\": \"a\", \"text\": \"b\"}");
        let mut stream = tokio::net::TcpStream::connect(app.base_url.trim_start_matches("http://"))
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, &raw)
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 415 "), "{path}: {answer}");
        assert!(
            answer.contains("not a valid media type"),
            "{path}: {answer}"
        );
        assert!(!answer.contains("got none"), "{path}: {answer}");
    }
    assert_eq!(app.message_count().await, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn the_name_cookie_lasts_a_year_and_is_secure_over_https() {
    let cookie = |response: &reqwest::Response| {
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let app = spawn_app(&[]).await;
    let plain = form_post(&app).send().await.unwrap();
    assert_eq!(plain.status(), 303);
    let set = cookie(&plain);
    assert!(set.contains("Max-Age=31536000"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    // X-Forwarded-Proto is only believed when a proxy is declared trusted.
    let forwarded = form_post(&app)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(!cookie(&forwarded).contains("Secure"));
    app.shutdown().await;

    let app = spawn_app(&[("trust_proxy_headers", json!(true))]).await;
    let forwarded = form_post(&app)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(cookie(&forwarded).contains("Secure"));
    app.shutdown().await;

    let app = spawn_app(&[("secure_cookie", json!(true))]).await;
    let always = form_post(&app).send().await.unwrap();
    assert!(cookie(&always).contains("Secure"));
    app.shutdown().await;
}

/// RFC 9112 §3.2.2: with an absolute-form target the target's authority is
/// the host, not `Host`; the cross-site check compares `Origin` with it, so
/// a `Host` naming this site cannot pass a target naming another. (Names
/// under `localhost`, which a loopback server answers: any other would get
/// 421 first, see `hosts`.)
#[tokio::test]
async fn an_absolute_form_target_names_the_host_not_the_host_header() {
    let app = spawn_app(&[]).await;
    let post = |target_host: &str, host: &str, origin: &str| {
        let body = r#"{"name": "ann", "text": "absolute"}"#;
        format!(
            "POST http://{target_host}/api/messages HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let answer = app
        .raw(post("evil.localhost", "chat.localhost", "http://chat.localhost").as_bytes())
        .await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(answer.contains("(evil.localhost)"), "{answer}");
    assert_eq!(app.message_count().await, 0);
    let answer = app
        .raw(post("chat.localhost", "evil.localhost", "http://chat.localhost").as_bytes())
        .await;
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
    assert_eq!(app.message_count().await, 1);
    app.shutdown().await;
}
