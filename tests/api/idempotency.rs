use serde_json::{json, Value};

use crate::support::app::spawn_app;

#[tokio::test]
async fn same_key_same_content_returns_the_stored_message_once() {
    let app = spawn_app(&[]).await;
    let body = json!({"name": "ann", "text": "only once", "id": "client-key-1"});
    let first = app.post_json("/api/messages", &body).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["id"], "client-key-1");

    let again = app.post_json("/api/messages", &body).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the stored message, datetime included");

    assert_eq!(app.message_count().await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn same_key_other_content_is_a_409_and_changes_nothing() {
    let app = spawn_app(&[]).await;
    let original = json!({"name": "ann", "text": "original", "id": "k-2"});
    assert_eq!(
        app.post_json("/api/messages", &original).await.status(),
        201
    );
    for changed in [
        json!({"name": "ann", "text": "edited", "id": "k-2"}),
        json!({"name": "bob", "text": "original", "id": "k-2"}),
    ] {
        let response = app.post_json("/api/messages", &changed).await;
        assert_eq!(response.status(), 409);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], "id");
    }
    let stored = app.get_json("/api/messages/k-2").await;
    assert_eq!(stored["text"], "original");
    assert_eq!(app.message_count().await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn trimming_makes_retries_with_extra_spaces_the_same_post() {
    let app = spawn_app(&[]).await;
    let a = json!({"name": "ann", "text": "hi", "id": "k-3"});
    let b = json!({"name": " ann ", "text": "hi\n", "id": "k-3"});
    assert_eq!(app.post_json("/api/messages", &a).await.status(), 201);
    let again = app.post_json("/api/messages", &b).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    app.shutdown().await;
}
