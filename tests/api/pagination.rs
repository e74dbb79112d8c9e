use serde_json::Value;

use crate::support::app::{spawn_app, TestApp};

async fn texts(app: &TestApp, path: &str) -> Vec<String> {
    app.get_json(path)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

async fn error(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.get(path).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn limit_before_and_after_page_through_history() {
    let app = spawn_app(&[]).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            app.post_message("p", &format!("t{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        texts(&app, "/api/messages?limit=3").await,
        ["t7", "t8", "t9"]
    );
    assert_eq!(
        texts(&app, &format!("/api/messages?before={}&limit=3", ids[7])).await,
        ["t4", "t5", "t6"]
    );
    assert_eq!(
        texts(&app, &format!("/api/messages?before={}", ids[2])).await,
        ["t0", "t1"]
    );
    assert_eq!(
        texts(&app, &format!("/api/messages?after={}&limit=2", ids[2])).await,
        ["t3", "t4"]
    );
    assert_eq!(
        texts(&app, &format!("/api/messages?after={}", ids[7])).await,
        ["t8", "t9"]
    );
    assert!(texts(&app, &format!("/api/messages?after={}", ids[9]))
        .await
        .is_empty());
    assert!(texts(&app, &format!("/api/messages?before={}", ids[0]))
        .await
        .is_empty());
    assert_eq!(texts(&app, "/api/messages?limit=1000").await.len(), 10);
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
