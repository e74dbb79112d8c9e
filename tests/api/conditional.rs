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

/// A page of history (`/?before=<id>`, the "older messages" link without
/// JavaScript) is tagged too, by what it shows: it answers 304 while its
/// messages and the sender's name are the same, a new message (which is
/// on the latest page, not on it) included. It had no `ETag` at all.
#[tokio::test]
async fn a_page_of_history_answers_304_while_what_it_shows_is_the_same() {
    let app = spawn_app(&[]).await;
    let ids = app
        .post_texts("ann", (0..102).map(|n| format!("m{n:03}")))
        .await;
    let path = format!("/?before={}", ids[101]);
    let page = app.get(&path).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let etag = page.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("W/"), "{etag}");
    let html = page.text().await.unwrap();
    assert!(html.contains("m100") && html.contains("m001") && !html.contains("m101"));
    let get_with = |path: &str, tag: &str, cookie: Option<&'static str>| {
        let mut request = app.client.get(app.url(path)).header("If-None-Match", tag);
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        request.send()
    };
    let again = get_with(&path, &etag, None).await.unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
    app.post_message("bob", "newer than the page").await;
    let after_a_post = get_with(&path, &etag, None).await.unwrap();
    assert_eq!(
        after_a_post.status(),
        304,
        "a new message is not on this page"
    );
    // Another sender's page shows another name in the form; the page
    // before the next message shows other messages.
    let named = get_with(&path, &etag, Some("simplechat_name=bob"))
        .await
        .unwrap();
    assert_eq!(named.status(), 200);
    let other = get_with(&format!("/?before={}", ids[100]), &etag, None)
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(other.text().await.unwrap().contains("m000"));
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

/// A post may be made conditional on the listing (RFC 9110 §13.1.1,
/// §13.1.2): `If-Match` with the listing's `ETag` posts only if nothing
/// was posted since it was read, `If-None-Match: *` never (the listing
/// always exists). A precondition that fails is a 412 that stores
/// nothing, whether a script or a browser posts; a retry of a post that
/// was stored is still answered as a retry.
#[tokio::test]
async fn a_post_whose_precondition_fails_is_412_and_stores_nothing() {
    let app = spawn_app(&[]).await;
    let read = app.get("/api/messages").await;
    let seen = read.headers()["etag"].to_str().unwrap().to_owned();
    let post = |headers: Vec<(&'static str, String)>, id: &str| {
        let mut request = app
            .client
            .post(app.url("/api/messages"))
            .json(&serde_json::json!({"name": "ann", "text": format!("post {id}"), "id": id}));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    // Nothing posted since the read: stored.
    let first = post(vec![("if-match", seen.clone())], "first")
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(app.message_count().await, 1);
    // The listing has changed since.
    for headers in [
        vec![("if-match", seen.clone())],
        vec![("if-match", format!("W/{seen}"))],
        vec![("if-match", "\"other\"".to_owned())],
        vec![("if-none-match", "*".to_owned())],
        vec![
            ("if-none-match", "*".to_owned()),
            ("sec-fetch-site", "same-origin".to_owned()),
        ],
    ] {
        let refused = post(headers.clone(), "second").await.unwrap();
        assert_eq!(refused.status(), 412, "{headers:?}");
        let body: serde_json::Value = refused.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.starts_with("precondition failed: If-"), "{error}");
        assert_eq!(app.message_count().await, 1, "{headers:?}: nothing stored");
    }
    // A value that is not `*` or a list of entity tags is a 400 naming its
    // header, never taken for a condition that holds: `*` is the whole
    // value or none of it, and `*` sent twice is a list.
    for headers in [
        vec![("if-match", "W/\"x\", *".to_owned())],
        vec![
            ("if-match", "W/\"x\", *".to_owned()),
            ("sec-fetch-site", "same-origin".to_owned()),
        ],
        vec![("if-match", "*".to_owned()), ("if-match", "*".to_owned())],
        vec![("if-none-match", "*,*".to_owned())],
        vec![("if-none-match", "junk".to_owned())],
        vec![("if-none-match", "\"unclosed".to_owned())],
    ] {
        let refused = post(headers.clone(), "second").await.unwrap();
        assert_eq!(refused.status(), 400, "{headers:?}");
        let body: serde_json::Value = refused.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        let header = if headers[0].0 == "if-match" {
            "If-Match"
        } else {
            "If-None-Match"
        };
        assert!(
            error.starts_with(&format!("{header} is not `*` or a list of entity tags")),
            "{error}"
        );
        assert_eq!(app.message_count().await, 1, "{headers:?}: nothing stored");
    }
    // The current tag, or `*`, holds; a tag that is not current in
    // If-None-Match holds too.
    let now = app.get("/api/messages").await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let second = post(vec![("if-match", now.clone())], "second")
        .await
        .unwrap();
    assert_eq!(second.status(), 201);
    let third = post(vec![("if-match", "*".to_owned())], "third")
        .await
        .unwrap();
    assert_eq!(third.status(), 201);
    let fourth = post(vec![("if-none-match", now)], "fourth").await.unwrap();
    assert_eq!(fourth.status(), 201);
    assert_eq!(app.message_count().await, 4);
    // A retry of the first post, with its stale precondition: its answer
    // again, not a 412, and nothing new stored.
    let retry = post(vec![("if-match", seen)], "first").await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(app.message_count().await, 4);
    app.shutdown().await;
}
