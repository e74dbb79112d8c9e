use serde_json::{json, Value};

use crate::support::app::{spawn_app, spawn_app_in};

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

/// A post an older version stored with the name as sent (before names lost
/// format characters at their ends), retried with the same body after the
/// upgrade: the same post under today's rules, so a replay, not a 409.
#[tokio::test]
async fn a_retry_of_a_post_an_older_version_stored_untrimmed_is_a_replay() {
    use simplechat::store::Store;

    let dir = tempfile::tempdir().unwrap();
    let store = simplechat::store::embedded::EmbeddedStore::open(
        dir.path(),
        std::time::Duration::from_secs(30),
        simplechat::cache::Cache::new(),
    )
    .await
    .unwrap();
    // The record as that version wrote it: validation then trimmed only
    // white space.
    let old = simplechat::message::NewMessage {
        id: "retry-key-1".into(),
        name: "\u{200b}ann".into(),
        text: "hello".into(),
    };
    store.insert(old).await.unwrap();
    store.close().await;

    let app = spawn_app_in(dir.path(), &[]).await;
    let body = json!({"name": "\u{200b}ann ", "text": "hello", "id": "retry-key-1"});
    let again = app.post_json("/api/messages", &body).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], "retry-key-1");
    // Other content under that key is still a conflict.
    let other = json!({"name": "ann", "text": "something else", "id": "retry-key-1"});
    assert_eq!(app.post_json("/api/messages", &other).await.status(), 409);
    assert_eq!(app.message_count().await, 1);
    app.shutdown().await;
}
