use serde_json::Value;

use crate::support::app::{spawn_app, TestApp};

async fn error(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.get(path).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn limit_before_and_after_page_through_history() {
    let app = spawn_app(&[]).await;
    let ids = app.post_texts("p", (0..10).map(|i| format!("t{i}"))).await;
    assert_eq!(app.texts("/api/messages?limit=3").await, ["t7", "t8", "t9"]);
    assert_eq!(
        app.texts(&format!("/api/messages?before={}&limit=3", ids[7]))
            .await,
        ["t4", "t5", "t6"]
    );
    assert_eq!(
        app.texts(&format!("/api/messages?before={}", ids[2])).await,
        ["t0", "t1"]
    );
    assert_eq!(
        app.texts(&format!("/api/messages?after={}&limit=2", ids[2]))
            .await,
        ["t3", "t4"]
    );
    assert_eq!(
        app.texts(&format!("/api/messages?after={}", ids[7])).await,
        ["t8", "t9"]
    );
    assert!(app
        .texts(&format!("/api/messages?after={}", ids[9]))
        .await
        .is_empty());
    assert!(app
        .texts(&format!("/api/messages?before={}", ids[0]))
        .await
        .is_empty());
    assert_eq!(app.texts("/api/messages?limit=1000").await.len(), 10);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_paging_parameters_are_refused() {
    let app = spawn_app(&[]).await;
    let id = app.post_message("p", "x").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (path, status, field) in [
        ("/api/messages?limit=0".to_string(), 400, "limit"),
        ("/api/messages?limit=1001".to_string(), 400, "limit"),
        ("/api/messages?limit=ten".to_string(), 400, "limit"),
        ("/api/messages?limit=-1".to_string(), 400, "limit"),
        (
            format!("/api/messages?before={id}&after={id}"),
            400,
            "before",
        ),
        ("/api/messages?before=no%20such".to_string(), 400, "before"),
        // A cursor is a message id as sent: whitespace around it is not
        // trimmed (nor on the event stream's `after`, `events`).
        (format!("/api/messages?before=%20{id}"), 400, "before"),
        (format!("/api/messages?after={id}%09"), 400, "after"),
        ("/api/messages?after=unknownid".to_string(), 404, "after"),
        ("/api/messages?before=unknownid".to_string(), 404, "before"),
    ] {
        let (got, body) = error(&app, &path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    app.shutdown().await;
}

/// `limit` is plain decimal digits, as the OpenAPI document's integer is
/// sent: a sign (`%2B5` is `+5`; a raw `+` is a space once decoded),
/// whitespace, a fraction, an exponent or other digits than ASCII get the
/// 400 a word gets, naming the field, never the number they might be read as.
#[tokio::test]
async fn a_limit_is_plain_decimal_digits() {
    let app = spawn_app(&[]).await;
    for i in 0..6 {
        app.post_message("p", &format!("m{i}")).await;
    }
    let (_, not_a_number) = error(&app, "/api/messages?limit=ten").await;
    for limit in [
        "%2B5",
        "+5",
        "%205",
        "5%20",
        "5+",
        "%2B%2B5",
        "-0",
        "5.0",
        "5e0",
        "0x5",
        "%EF%BC%95",
    ] {
        let path = format!("/api/messages?limit={limit}");
        let (status, body) = error(&app, &path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body, not_a_number, "{path}");
    }
    // Plain digits, leading zeros too, are the number they spell.
    assert_eq!(app.texts("/api/messages?limit=5").await.len(), 5);
    assert_eq!(app.texts("/api/messages?limit=005").await.len(), 5);
    app.shutdown().await;
}

/// A page larger than a megabyte (140 messages of 2,000 characters outside
/// the BMP, 8 KB each) is built apart from the small ones: it still lists
/// every message once, oldest first, with an `ETag` that `If-None-Match`
/// is answered 304 on, as a small page.
#[tokio::test]
async fn a_page_of_more_than_a_megabyte_is_listed_and_tagged_as_any_other() {
    let app = spawn_app(&[]).await;
    let wide = "\u{124AB}".repeat(1990);
    let ids = app
        .post_texts("big", (0..141).map(|i| format!("{i:03}{wide}")))
        .await;
    let path = format!("/api/messages?limit=1000&before={}", ids[140]);
    let response = app.get(&path).await;
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let body = response.bytes().await.unwrap();
    assert!(body.len() > 1 << 20, "{} bytes", body.len());
    let listed: Vec<Value> = serde_json::from_slice(&body).unwrap();
    let expected: Vec<String> = (0..140).map(|i| format!("{i:03}{wide}")).collect();
    let texts: Vec<&str> = listed.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, expected);

    let again = reqwest::Client::new()
        .get(app.url(&path))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
    app.shutdown().await;
}
