use serde_json::json;

use crate::support::app::spawn_app;

/// The lab's browser client: POST `{"name","text"}` as JSON, then GET the list.
#[tokio::test]
async fn the_lab_client_flow_still_works() {
    let app = spawn_app(&[]).await;
    let response = app
        .post_json(
            "/api/messages",
            &json!({"name": "Mikhail", "text": "hello from the lab"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let list = app.get_json("/api/messages").await;
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "Mikhail");
    assert_eq!(list[0]["text"], "hello from the lab");
    let datetime = list[0]["datetime"].as_str().expect("datetime");
    assert!(
        time::OffsetDateTime::parse(datetime, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "RFC 3339: {datetime}"
    );
    assert!(datetime.ends_with('Z'), "UTC: {datetime}");
    app.shutdown().await;
}

#[tokio::test]
async fn created_message_has_location_and_can_be_fetched() {
    let app = spawn_app(&[]).await;
    let response = app
        .post_json("/api/messages", &json!({"name": "ann", "text": "hi"}))
        .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: serde_json::Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/messages/{id}"));
    let fetched = app.get_json(&location).await;
    assert_eq!(fetched, created);

    let missing = app.get("/api/messages/doesnotexist").await;
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("doesnotexist"));
    app.shutdown().await;
}

#[tokio::test]
async fn list_is_oldest_first_and_defaults_to_the_latest_100() {
    let app = spawn_app(&[]).await;
    for i in 0..105 {
        app.post_message("a", &format!("n{i}")).await;
    }
    let list = app.get_json("/api/messages").await;
    let texts: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts.len(), 100);
    assert_eq!(texts.first().unwrap(), "n5");
    assert_eq!(texts.last().unwrap(), "n104");
    app.shutdown().await;
}

#[tokio::test]
async fn concurrent_posts_are_all_stored() {
    let app = spawn_app(&[]).await;
    let app_ref = &app;
    let posts = (0..100).map(|i| async move {
        app_ref
            .post_json(
                "/api/messages",
                &json!({"name": "c", "text": format!("p{i}")}),
            )
            .await
    });
    for response in futures::future::join_all(posts).await {
        assert_eq!(response.status(), 201);
    }
    let list = app.get_json("/api/messages?limit=1000").await;
    let mut texts: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 100);
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_answer_json_404() {
    let app = spawn_app(&[]).await;
    let response = app.get("/api/nothing-here").await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].is_string());
    app.shutdown().await;
}
