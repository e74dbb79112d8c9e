use crate::support::app::spawn_app;

#[tokio::test]
async fn health_readiness_and_status_on_the_embedded_store() {
    let app = spawn_app(&[]).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let status = app.get_json("/api/status").await;
    assert_eq!(status["store"], "embedded");
    assert_eq!(status["ready"], true);
    assert!(status.get("replica_set").is_none());
    app.shutdown().await;
}

/// A connection string naming a port where another program answers (here
/// another instance's HTTP port, a likely slip) is named as such by
/// readiness, not with the driver's "Invalid wire protocol opcode".
#[tokio::test]
async fn readiness_names_a_member_that_answers_but_not_as_mongodb() {
    let web = spawn_app(&[]).await;
    let port = web.base_url.rsplit(':').next().unwrap().to_owned();
    let app = spawn_app(&[(
        "mongodb_uri",
        serde_json::json!(format!("mongodb://127.0.0.1:{port}/chat?replicaSet=rs")),
    )])
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let reason = loop {
        let ready = app.get("/readyz").await;
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap();
        if body.contains("answered") || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        reason.contains(&format!("127.0.0.1:{port} answered, but not as MongoDB ("))
            && reason.contains("another program listens on that port"),
        "{reason}"
    );
    app.shutdown().await;
    web.shutdown().await;
}
