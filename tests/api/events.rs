use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::support::app::{spawn_app, TestApp};

/// A minimal SSE reader over a real connection.
pub struct Sse {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

#[derive(Debug, Default, PartialEq)]
pub struct Event {
    pub event: String,
    pub id: String,
    pub data: String,
    pub comment: bool,
}

impl Sse {
    pub async fn connect(app: &TestApp, path: &str, last_event_id: Option<&str>) -> Sse {
        let mut request = app.client.get(app.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("connect");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next block, or None when the server ended the stream.
    pub async fn next_block(&mut self, timeout: Duration) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event.event = v.into();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = v.into();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data = v.into();
                    } else if line.starts_with(':') {
                        event.comment = true;
                    }
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout(timeout, self.body.next())
                .await
                .expect("no SSE data within the timeout")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk.ok()?).expect("UTF-8"));
        }
    }

    /// The next `message` event's data, skipping comments and retry hints.
    pub async fn next_message(&mut self) -> Value {
        loop {
            let event = self
                .next_block(Duration::from_secs(10))
                .await
                .expect("stream open");
            if event.event == "message" {
                let data: Value = serde_json::from_str(&event.data).expect("JSON data");
                assert_eq!(
                    event.id,
                    data["id"].as_str().unwrap(),
                    "id: matches the message"
                );
                return data;
            }
        }
    }
}

#[tokio::test]
async fn new_messages_reach_every_subscriber() {
    let app = spawn_app(&[]).await;
    let mut a = Sse::connect(&app, "/api/events", None).await;
    let mut b = Sse::connect(&app, "/api/events", None).await;
    let posted = app.post_message("ann", "live <b>one</b>").await;
    assert_eq!(a.next_message().await, posted);
    assert_eq!(b.next_message().await, posted);
    let second = app.post_message("bob", "two\nlines").await;
    assert_eq!(a.next_message().await, second);
    app.shutdown().await;
}

#[tokio::test]
async fn last_event_id_replays_what_was_missed() {
    let app = spawn_app(&[]).await;
    let first = app.post_message("a", "seen").await;
    let missed1 = app.post_message("a", "missed 1").await;
    let missed2 = app.post_message("a", "missed 2").await;
    let mut sse = Sse::connect(&app, "/api/events", first["id"].as_str()).await;
    assert_eq!(sse.next_message().await, missed1);
    assert_eq!(sse.next_message().await, missed2);
    let live = app.post_message("a", "live").await;
    assert_eq!(
        sse.next_message().await,
        live,
        "then live, nothing repeated"
    );

    // The page's first connection uses ?after= instead of the header.
    let mut page = Sse::connect(
        &app,
        &format!("/api/events?after={}", missed2["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(page.next_message().await, live);
    app.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_falls_far_behind_catches_up_from_the_store() {
    let app = spawn_app(&[]).await;
    let mut slow = Sse::connect(&app, "/api/events", None).await;
    // More than the broadcast buffer holds, while this subscriber reads nothing.
    let mut texts = Vec::new();
    for chunk in 0..12 {
        let app = &app;
        let posts = (0..100).map(|i| {
            // Large frames fill the socket buffers, so the server side of this
            // stream stops reading the broadcast and falls behind it.
            let text = format!("burst {} {}", chunk * 100 + i, "x".repeat(1900));
            async move { app.post_message("s", &text).await }
        });
        for m in futures::future::join_all(posts).await {
            texts.push(m["id"].as_str().unwrap().to_owned());
        }
    }
    let listed: Vec<String> = app
        .get_json("/api/messages?limit=1000")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let mut received = Vec::new();
    while received.len() < 1200 {
        received.push(slow.next_message().await["id"].as_str().unwrap().to_owned());
    }
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 1200, "every message exactly once");
    assert_eq!(&received[200..], &listed[..], "in store order");
    app.shutdown().await;
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_alive() {
    let app = spawn_app(&[]).await;
    let mut sse = Sse::connect(&app, "/api/events", None).await;
    let hello = sse.next_block(Duration::from_secs(5)).await.unwrap();
    assert!(hello.comment, "opening comment flushes the headers");
    let heartbeat = sse.next_block(Duration::from_secs(20)).await.unwrap();
    assert!(
        heartbeat.comment && heartbeat.event.is_empty(),
        "{heartbeat:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn streams_end_cleanly_on_shutdown() {
    let app = spawn_app(&[]).await;
    let mut sse = Sse::connect(&app, "/api/events", None).await;
    sse.next_block(Duration::from_secs(5)).await.unwrap();
    let shutdown = tokio::spawn(app.shutdown());
    let mut ended = false;
    for _ in 0..5 {
        match sse.next_block(Duration::from_secs(5)).await {
            None => {
                ended = true;
                break;
            }
            Some(e) => assert!(e.comment, "no message after shutdown: {e:?}"),
        }
    }
    assert!(ended, "the stream ended");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown finished")
        .unwrap();
}

#[tokio::test]
async fn a_replay_the_store_cannot_answer_ends_the_stream_so_the_client_retries() {
    // Nothing listens there: every store read fails.
    let nowhere = "mongodb://127.0.0.1:1/chat?serverSelectionTimeoutMS=200&connectTimeoutMS=200";
    let app = spawn_app(&[("mongodb_uri", serde_json::json!(nowhere))]).await;
    let mut sse = Sse::connect(&app, "/api/events", Some("last-seen-id")).await;
    let hello = sse
        .next_block(Duration::from_secs(10))
        .await
        .expect("opening comment");
    assert!(hello.comment);
    assert_eq!(
        sse.next_block(Duration::from_secs(10)).await,
        None,
        "ended instead of going live with a gap"
    );
    app.shutdown().await;
}
