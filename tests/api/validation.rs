use serde_json::{json, Value};

use crate::support::app::{spawn_app, TestApp};

async fn refused(app: &TestApp, body: Value) -> (u16, Value) {
    let response = app.post_json("/api/messages", &body).await;
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    (status, response.json().await.unwrap())
}

async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(app.get_json("/api/messages").await, json!([]));
}

#[tokio::test]
async fn every_validation_rule_answers_400_with_the_field() {
    let app = spawn_app(&[]).await;
    let cases = [
        (json!({"name": "", "text": "hi"}), "name"),
        (json!({"name": "   ", "text": "hi"}), "name"),
        (json!({"text": "hi"}), "name"),
        (json!({"name": "a".repeat(65), "text": "hi"}), "name"),
        (json!({"name": "a\u{0}b", "text": "hi"}), "name"),
        (json!({"name": "a\nb", "text": "hi"}), "name"),
        (json!({"name": "ann", "text": ""}), "text"),
        (json!({"name": "ann", "text": " \n\t "}), "text"),
        (json!({"name": "ann"}), "text"),
        (json!({"name": "ann", "text": "x".repeat(2001)}), "text"),
        (json!({"name": "ann", "text": "bell\u{7}"}), "text"),
        (json!({"name": "ann", "text": "esc\u{1b}[2J"}), "text"),
        (
            json!({"name": "ann", "text": "hi", "id": "has space"}),
            "id",
        ),
        (
            json!({"name": "ann", "text": "hi", "id": "x".repeat(65)}),
            "id",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = refused(&app, body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["field"], field, "{body} -> {error}");
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_nothing_stored(&app).await;
    app.shutdown().await;
}

/// Names refuse what exists to reorder or hide text, each with its own
/// error; texts keep bidi marks (the page isolates them).
#[tokio::test]
async fn names_refuse_bidi_controls_and_invisible_names_and_are_stored_nfc() {
    let app = spawn_app(&[]).await;
    let cases = [
        (
            "ann\u{202E}",
            "bidirectional control characters (found U+202E)",
        ),
        (
            "\u{2067}ann\u{2069}",
            "bidirectional control characters (found U+2067)",
        ),
        (
            "ann\u{200F}",
            "bidirectional control characters (found U+200F)",
        ),
        (
            "\u{061C}ann",
            "bidirectional control characters (found U+061C)",
        ),
        ("\u{200B}", "visible character"),
        ("\u{200B}\u{2060}\u{FEFF}", "visible character"),
        ("\u{3164}\u{3164}", "visible character"),
        ("\u{0301}", "visible character"),
    ];
    for (name, why) in cases {
        let (status, error) = refused(&app, json!({"name": name, "text": "hi"})).await;
        assert_eq!(status, 400, "{name:?}");
        assert_eq!(error["field"], "name", "{name:?} -> {error}");
        assert!(
            error["error"].as_str().unwrap().contains(why),
            "{name:?} -> {error}"
        );
    }
    // The form says the same on the page it shows again.
    let form = app
        .client
        .post(app.url("/messages"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=%E2%80%8B&text=keep+this")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 400);
    assert!(form.text().await.unwrap().contains("visible character"));
    assert_nothing_stored(&app).await;

    // Texts keep bidi controls; the name is stored NFC, so the same name
    // typed decomposed is the same name, and the same idempotent post.
    let first = app
        .post_json(
            "/api/messages",
            &json!({"name": "Rene\u{0301}e", "text": "abc \u{202E}def", "id": "nfc-1"}),
        )
        .await;
    assert_eq!(first.status(), 201);
    let stored: Value = first.json().await.unwrap();
    assert_eq!(stored["name"], "Ren\u{00E9}e");
    assert_eq!(stored["text"], "abc \u{202E}def");
    let again = app
        .post_json(
            "/api/messages",
            &json!({"name": "Ren\u{00E9}e", "text": "abc \u{202E}def", "id": "nfc-1"}),
        )
        .await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(app.message_count().await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn limits_are_counted_in_characters_after_trimming() {
    let app = spawn_app(&[]).await;
    let name = "ж".repeat(64);
    let text = format!("  {}  ", "字".repeat(2000));
    let response = app
        .post_json("/api/messages", &json!({"name": name, "text": text}))
        .await;
    assert_eq!(response.status(), 201);
    let stored: Value = response.json().await.unwrap();
    assert_eq!(stored["text"].as_str().unwrap().chars().count(), 2000);
    let tabs = app
        .post_json(
            "/api/messages",
            &json!({"name": "a", "text": "col1\tcol2\nline2"}),
        )
        .await;
    assert_eq!(tabs.status(), 201);
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_and_wrongly_typed_bodies_are_refused() {
    let app = spawn_app(&[]).await;
    let send = |body: &'static str, content_type: Option<&'static str>| {
        let mut request = app.client.post(app.url("/api/messages")).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.send()
    };
    let malformed = send("{\"name\": \"a\", ", Some("application/json"))
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let wrong_type = send("{\"name\": 5, \"text\": \"x\"}", Some("application/json"))
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 400);
    let not_object = send("[1,2]", Some("application/json")).await.unwrap();
    assert_eq!(not_object.status(), 400);
    let text_plain = send("{\"name\": \"a\", \"text\": \"b\"}", Some("text/plain"))
        .await
        .unwrap();
    assert_eq!(text_plain.status(), 415);
    let body: Value = text_plain.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("JSON"));
    assert_nothing_stored(&app).await;
    app.shutdown().await;
}

/// A value of the wrong type or a field given twice names the field, as
/// the OpenAPI document says of every refusal of one ("Anything else is
/// 400 with field name"); before, only the parser's message said it.
#[tokio::test]
async fn a_wrongly_typed_or_repeated_field_is_refused_naming_it() {
    let app = spawn_app(&[]).await;
    for (body, field) in [
        (r#"{"name": 5, "text": "x"}"#, "name"),
        (r#"{"name": null, "text": "x"}"#, "name"),
        (r#"{"name": "a", "text": 5}"#, "text"),
        (r#"{"name": "a", "text": "x", "id": true}"#, "id"),
        (r#"{"name": "a", "name": "b", "text": "x"}"#, "name"),
    ] {
        let response = app
            .post_body("/api/messages", "application/json", body)
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{body} -> {error}");
    }
    // Another key given twice: which one counts is the reader's choice
    // (I-JSON, RFC 7493 §2.3), so it is refused too, on the front door's
    // path and a browser's.
    for browser in [false, true] {
        let mut request = app
            .client
            .post(app.url("/api/messages"))
            .header("content-type", "application/json")
            .body(r#"{"name": "a", "text": "x", "z": 1, "z": 2}"#);
        if browser {
            request = request.header("sec-fetch-site", "same-origin");
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("key \"z\" is given twice in one object"),
            "{error}"
        );
    }
    assert_nothing_stored(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_cap_get_413() {
    let app = spawn_app(&[]).await;
    let cap = simplechat::api::body::BODY_LIMIT_BYTES as usize;
    let big = json!({"name": "a", "text": "x".repeat(cap)});
    let (status, error) = refused(&app, big).await;
    assert_eq!(status, 413);
    assert!(
        error["error"].as_str().unwrap().contains(&cap.to_string()),
        "{error}"
    );
    let form = app
        .client
        .post(app.url("/messages"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("name=a&text={}", "x".repeat(cap)))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 413);
    assert_nothing_stored(&app).await;
    app.shutdown().await;
}

/// The cap is exact: a body of exactly the cap's bytes is read and stored;
/// one byte more is refused and stores nothing.
#[tokio::test]
async fn a_body_of_exactly_the_cap_is_accepted_and_one_byte_more_is_not() {
    let app = spawn_app(&[]).await;
    let cap = simplechat::api::body::BODY_LIMIT_BYTES as usize;
    // Insignificant whitespace pads the JSON to the length wanted.
    let padded = |len: usize, text: &str| {
        let mut body = json!({"name": "ann", "text": text}).to_string();
        body.insert_str(1, &" ".repeat(len - body.len()));
        assert_eq!(body.len(), len);
        body
    };
    let post = |body: String| app.post_body("/api/messages", "application/json", body);
    let over = post(padded(cap + 1, "one byte over")).await.unwrap();
    assert_eq!(over.status(), 413);
    assert_nothing_stored(&app).await;
    let at = post(padded(cap, "exactly the cap")).await.unwrap();
    assert_eq!(at.status(), 201);
    let list = app.get_json("/api/messages").await;
    assert_eq!(list[0]["text"], "exactly the cap");
    app.shutdown().await;
}

/// Percent-encodes every byte, as the worst a form encoder may do.
fn percent_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Escapes every UTF-16 unit as `\uXXXX`, as the worst a JSON encoder may do.
fn escape_all(s: &str) -> String {
    s.encode_utf16().map(|u| format!("\\u{u:04x}")).collect()
}

#[tokio::test]
async fn the_longest_texts_are_accepted_in_the_worst_encodings() {
    let app = spawn_app(&[]).await;
    // 2,000 four-byte characters: 24 KB percent-encoded; and the page's
    // own example, 2,000 × 字 (18 KB), which the old 16 KiB cap refused.
    let name = "\u{1F600}".repeat(64);
    for text in ["\u{1F600}".repeat(2000), "字".repeat(2000)] {
        let form = format!(
            "{}={}&{}={}",
            percent_all("name"),
            percent_all(&name),
            percent_all("text"),
            percent_all(&text)
        );
        let response = app
            .client
            .post(app.url("/messages"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "form post of {} bytes", text.len());
        let json = format!(
            "{{\"{}\":\"{}\",\"{}\":\"{}\"}}",
            escape_all("name"),
            escape_all(&name),
            escape_all("text"),
            escape_all(&text)
        );
        let response = app
            .client
            .post(app.url("/api/messages"))
            .header("content-type", "application/json")
            .body(json)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let stored: Value = response.json().await.unwrap();
        assert_eq!(stored["text"], text.as_str());
    }
    assert_eq!(app.message_count().await, 4);
    app.shutdown().await;
}

/// JSON text is Unicode: a `\u` escape of a surrogate (U+D800 to U+DFFF)
/// is half of a pair that encodes one character beyond U+FFFF, never a
/// character by itself. One alone is refused in plain words, naming the
/// field it is in and the escape as sent, not in the parser's ("lone
/// leading surrogate in hex escape", said of a trailing one too).
#[tokio::test]
async fn a_lone_surrogate_escape_is_refused_naming_its_field() {
    let app = spawn_app(&[]).await;
    for (body, field, escape) in [
        (r#"{"name":"a","text":"\ud800"}"#, Some("text"), r"\ud800"),
        (r#"{"name":"\uDC00x","text":"b"}"#, Some("name"), r"\uDC00"),
        (
            r#"{"name":"a","text":"b","id":"\ud83d\u0041"}"#,
            Some("id"),
            r"\ud83d",
        ),
        (
            r#"{"name":"a","text":"ok \ud83d\ude00 then \ud800\ud800 end"}"#,
            Some("text"),
            r"\ud800",
        ),
        (
            "{\"name\": \"a\",\n \"text\": \"\\ud800\\n\"}",
            Some("text"),
            r"\ud800",
        ),
        (
            r#"{"n\u0061me":"\udfff","text":"b"}"#,
            Some("name"),
            r"\udfff",
        ),
        (r#"{"\ud800":"a","name":"a","text":"b"}"#, None, r"\ud800"),
    ] {
        let response = app
            .post_body("/api/messages", "application/json", body)
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"].as_str().unwrap();
        assert_eq!(error["field"].as_str(), field, "{body}: {error}");
        assert!(
            message.starts_with("malformed JSON body: ")
                && message.contains("not valid Unicode")
                && message.contains(&format!("{escape} is a lone surrogate"))
                && message.contains(" at line ")
                && !message.contains("hex escape"),
            "{body}: {message}"
        );
        if field.is_none() {
            assert!(message.contains("a key"), "{body}: {message}");
        }
    }
    assert_nothing_stored(&app).await;
    app.shutdown().await;
}

/// JSON text is Unicode wherever it is (RFC 8259 §8.1, §8.2; I-JSON, RFC
/// 7493 §2.1: such strings MUST NOT appear), in a field the message has
/// no use for too, which the parser skips without decoding: a lone
/// surrogate escape or bytes that are not UTF-8 there are refused as in a
/// field, saying where, and nothing is stored. Whichever way the post
/// goes: answered by the front door (a script's) or by the route (a
/// browser's).
#[tokio::test]
async fn a_string_that_is_not_unicode_is_refused_in_any_field() {
    let app = spawn_app(&[]).await;
    let cases: [(&[u8], &str); 4] = [
        (
            br#"{"name":"a","text":"b","x":"\ud800"}"#,
            r"the value of x is not valid Unicode: \ud800 is a lone surrogate",
        ),
        (
            br#"{"name":"a","text":"b","meta":{"tags":["ok","\uDC00"]}}"#,
            r"a string in meta is not valid Unicode: \uDC00 is a lone surrogate",
        ),
        (
            br#"{"x":"\udbff\u0041","name":"a","text":"b"}"#,
            r"the value of x is not valid Unicode: \udbff is a lone surrogate",
        ),
        (
            b"{\"name\":\"a\",\"text\":\"b\",\"x\":\"\xc3\x28\"}",
            "the value of x is not valid UTF-8: byte 0xC3 is no part of a UTF-8 character",
        ),
    ];
    for (body, says) in cases {
        for browser in [false, true] {
            let mut request = app
                .client
                .post(app.url("/api/messages"))
                .header("content-type", "application/json")
                .body(body.to_vec());
            if browser {
                request = request.header("sec-fetch-site", "same-origin");
            }
            let response = request.send().await.unwrap();
            let shown = String::from_utf8_lossy(body);
            assert_eq!(response.status(), 400, "{shown}");
            let error: Value = response.json().await.unwrap();
            let message = error["error"].as_str().unwrap();
            assert!(
                message.starts_with(&format!("malformed JSON body: {says}"))
                    && message.contains(" at line 1 column "),
                "{shown}: {message}"
            );
            assert!(error.get("field").is_none(), "{shown}: {error}");
        }
    }
    assert_nothing_stored(&app).await;
    // A pair of escapes is one character, wherever it is.
    let stored = app
        .post_body(
            "/api/messages",
            "application/json",
            r#"{"name":"a","text":"b","x":"\ud83d\ude00"}"#,
        )
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    app.shutdown().await;
}
