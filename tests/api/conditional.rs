//! Conditional GET: polling clients get `304 Not Modified` while nothing
//! changed, and the new content as soon as something did.

use crate::support::app::spawn_app;

#[tokio::test]
async fn listings_answer_304_until_a_message_changes_them() {
    let app = spawn_app(&[]).await;
    let first = app.post_message("ann", "one").await;
    for path in [
        "/api/messages".to_owned(),
        "/api/messages?limit=5".to_owned(),
        format!("/api/messages?after={}", first["id"].as_str().unwrap()),
    ] {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200);
        let etag = response.headers()["etag"].to_str().unwrap().to_owned();
        let again = app
            .client
            .get(app.url(&path))
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], etag.as_str());
        assert!(again.bytes().await.unwrap().is_empty(), "no body on 304");
        let other = app
            .client
            .get(app.url(&path))
            .header("If-None-Match", "\"something-else\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 200, "{path}: another tag gets the body");
    }
    let before = app.get("/api/messages").await;
    let etag = before.headers()["etag"].to_str().unwrap().to_owned();
    app.post_message("bob", "two").await;
    let after = app
        .client
        .get(app.url("/api/messages"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200, "a new message changes the listing");
    assert_ne!(after.headers()["etag"], etag.as_str());
    let listed: serde_json::Value = after.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn the_page_answers_304_for_the_same_messages_and_name_only() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "one").await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    let etag = page.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("W/"), "{etag}");
    let get_with = |tag: String, cookie: Option<&'static str>| {
        let mut request = app.client.get(app.url("/")).header("If-None-Match", tag);
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        request.send()
    };
    assert_eq!(get_with(etag.clone(), None).await.unwrap().status(), 304);
    // Another sender's page shows another name in the form.
    let named = get_with(etag.clone(), Some("simplechat_name=bob"))
        .await
        .unwrap();
    assert_eq!(named.status(), 200);
    // A new message makes every earlier page stale (and with it its form key).
    app.post_message("bob", "two").await;
    let fresh = get_with(etag, None).await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert!(fresh.text().await.unwrap().contains("two"));
    app.shutdown().await;
}

/// RFC 9110 §5.3: `If-None-Match` sent as two field lines is one list; the
/// current tag in the second line still gets 304.
#[tokio::test]
async fn if_none_match_on_two_lines_is_one_list() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "one").await;
    for path in ["/api/messages", "/"] {
        let etag = app.get(path).await.headers()["etag"]
            .to_str()
            .unwrap()
            .to_owned();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: \"zzz\"\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
        );
        let answer = app.raw(request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 304 "), "{path}: {answer}");
    }
    app.shutdown().await;
}
