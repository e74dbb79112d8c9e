use serde_json::{json, Value};

use crate::support::app::{spawn_app_in, TestApp};

#[tokio::test]
async fn a_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), &[]).await;
    let mut posted = Vec::new();
    for i in 0..20 {
        posted.push(app.post_message("r", &format!("before restart {i}")).await);
    }
    app.shutdown().await;

    let app = spawn_app_in(dir.path(), &[]).await;
    let listed = app.get_json("/api/messages").await;
    assert_eq!(listed.as_array().unwrap(), &posted);
    // The page renders the same history from the reloaded cache.
    let page = app.get("/").await.text().await.unwrap();
    assert!(page.contains("before restart 19"));
    app.post_message("r", "after restart").await;
    assert_eq!(app.message_count().await, 21);
    app.shutdown().await;
}

/// Posts `text` as `r` and returns the refusal's status, `Retry-After` and
/// error.
async fn refused_post(app: &TestApp, text: &str) -> (u16, Option<String>, String) {
    let response = app
        .post_json("/api/messages", &json!({ "name": "r", "text": text }))
        .await;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.unwrap();
    (
        status,
        retry_after,
        body["error"].as_str().unwrap_or("").to_owned(),
    )
}

/// `/readyz`'s status and error.
async fn readiness(app: &TestApp) -> (u16, String) {
    let response = app.get("/readyz").await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

fn texts(listed: &Value) -> Vec<&str> {
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect()
}

/// A 201 means the message is in the data file the next start reads. With
/// the data directory removed under the running server, a write could go
/// only to a file nobody will read again: it is refused (503, saying why)
/// and `/readyz` says so; what was stored stays readable until the restart.
#[tokio::test]
async fn a_removed_data_directory_stops_writes_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = spawn_app_in(&data, &[]).await;
    app.post_message("r", "stored").await;
    assert_eq!(readiness(&app).await.0, 200);

    std::fs::remove_dir_all(&data).unwrap();
    let (status, retry_after, error) = refused_post(&app, "lost").await;
    assert_eq!(status, 503, "{error}");
    assert!(retry_after.is_some());
    assert!(
        error.contains("messages.redb") && error.contains("removed"),
        "{error}"
    );
    let (status, why) = readiness(&app).await;
    assert_eq!(status, 503);
    assert!(why.contains("removed"), "{why}");
    assert_eq!(texts(&app.get_json("/api/messages").await), ["stored"]);
    app.shutdown().await;
    assert!(!data.exists(), "the refused write created nothing");
}

/// A data file replaced under the running server (here by a copy, as a
/// restore from a backup would) is not the file the server writes: writes
/// are refused, changing nothing in either file, until the original is
/// back at its path.
#[tokio::test]
async fn a_replaced_data_file_stops_writes_until_the_original_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), &[]).await;
    app.post_message("r", "one").await;
    let file = dir.path().join("messages.redb");
    let moved = dir.path().join("moved.redb");
    let copy = dir.path().join("copy.redb");
    std::fs::copy(&file, &copy).unwrap();
    std::fs::rename(&file, &moved).unwrap();
    std::fs::rename(&copy, &file).unwrap();

    let (status, retry_after, error) = refused_post(&app, "two").await;
    assert_eq!(status, 503, "{error}");
    assert!(retry_after.is_some());
    assert!(error.contains("replaced"), "{error}");
    let (status, why) = readiness(&app).await;
    assert_eq!(status, 503);
    assert!(why.contains("replaced"), "{why}");

    // The original back at its path: writes go on.
    std::fs::rename(&file, &copy).unwrap();
    std::fs::rename(&moved, &file).unwrap();
    assert_eq!(readiness(&app).await.0, 200);
    app.post_message("r", "three").await;
    app.shutdown().await;

    let app = spawn_app_in(dir.path(), &[]).await;
    assert_eq!(
        texts(&app.get_json("/api/messages").await),
        ["one", "three"]
    );
    app.shutdown().await;
    // And the copy, which was at the path while "two" was refused, holds
    // only what it was copied with.
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::rename(&copy, restored.join("messages.redb")).unwrap();
    let app = spawn_app_in(&restored, &[]).await;
    assert_eq!(texts(&app.get_json("/api/messages").await), ["one"]);
    app.shutdown().await;
}
