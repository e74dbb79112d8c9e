use crate::support::app::spawn_app_in;

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
