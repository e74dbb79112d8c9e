//! What a client sent, repeated in an error, is bounded (at most 80
//! characters, then `…`) and shown safely: control and bidirectional
//! control characters escaped (`\u{202e}`), in the JSON error and on the
//! page, whose error is isolated (`dir="auto"`).

use serde_json::Value;

use crate::support::app::spawn_app;

/// A right-to-left override, then more than an echo shows.
const EVIL: &str = "%E2%80%AEevil";

fn hostile_name() -> String {
    EVIL.repeat(30)
}

/// The echo is escaped and cut: no raw override, its escape, the mark of
/// the cut, and no more than the message around an 80-character echo.
fn assert_echoed_safely(error: &str) {
    assert!(!error.contains('\u{202e}'), "{error}");
    assert!(error.contains("\\u{202e}evil"), "{error}");
    assert!(error.contains('…'), "{error}");
    assert!(error.chars().count() < 200, "{error}");
}

#[tokio::test]
async fn echoes_in_json_errors_are_bounded_and_escaped() {
    let app = spawn_app(&[]).await;
    let name = hostile_name();
    let query = app.get(&format!("/api/messages?{name}=1&{name}=2")).await;
    let id = app.get(&format!("/api/messages/{name}")).await;
    let form = app
        .client
        .post(app.url("/api/messages"))
        .header(
            "content-type",
            format!("text/{}", "\u{202e}evil".repeat(30)),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    let site = app
        .client
        .post(app.url("/api/messages"))
        .header("content-type", "application/json")
        .header("sec-fetch-site", "\u{202e}evil".repeat(30))
        .body("{}")
        .send()
        .await
        .unwrap();
    let key = app
        .post_body(
            "/api/messages",
            "application/json",
            format!(
                r#"{{"name": "a", "text": "b", "id": {{"{}": 1}}}}"#,
                "\\u202eevil".repeat(30)
            ),
        )
        .await
        .unwrap();
    for (response, status) in [
        (query, 400),
        (id, 404),
        (form, 415),
        (site, 403),
        (key, 400),
    ] {
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        if status == 400 && error.starts_with("malformed JSON") {
            // serde names the type it met, not the key.
            assert!(!error.contains('\u{202e}'), "{error}");
            continue;
        }
        assert_echoed_safely(error);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn echoes_on_the_page_are_bounded_escaped_and_isolated() {
    let app = spawn_app(&[]).await;
    let name = hostile_name();
    let page = app.get(&format!("/?{name}=1&{name}=2")).await;
    assert_eq!(page.status(), 400);
    let form = app
        .post_body(
            "/messages",
            "application/x-www-form-urlencoded",
            format!("{name}=1&{name}=2"),
        )
        .await
        .unwrap();
    assert_eq!(form.status(), 400);
    for response in [page, form] {
        let html = response.text().await.unwrap();
        let start = html.find("<p id=\"error\"").expect("the error element");
        let element = &html[start..start + html[start..].find("</p>").unwrap()];
        assert!(element.contains("dir=\"auto\""), "{element}");
        assert_echoed_safely(element);
    }
    app.shutdown().await;
}
