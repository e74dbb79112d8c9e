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
    let list = app.get_json("/api/messages").await;
    let texts: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["in chunks"]);
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
