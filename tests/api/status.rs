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
