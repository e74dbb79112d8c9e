use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::app::{spawn_app, TestApp};

type Body = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, String>> + Send>>;

/// `GET path` over a plain socket with a receive buffer of 4 KiB and
/// HTTP/1.0 (no chunking), read up to the end of a `200` head: a
/// subscriber that reads nothing soon stops the server's writes to it.
pub async fn small_window_stream(app: &TestApp, path: &str) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = app
        .base_url
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    // Before connecting: the window is agreed in the handshake.
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    stream
}

/// A minimal SSE reader over a real connection.
pub struct Sse {
    body: Body,
    /// Bytes: a chunk may end inside a UTF-8 character.
    buffer: Vec<u8>,
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
        Sse::from_response(request.send().await.expect("connect"))
    }

    /// Reads the event stream of a `200 text/event-stream` response.
    pub fn from_response(response: reqwest::Response) -> Sse {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse {
            body: Box::pin(
                response
                    .bytes_stream()
                    .map(|r| r.map_err(|e| e.to_string())),
            ),
            buffer: Vec::new(),
        }
    }

    /// Connects over a plain socket with a receive buffer of 4 KiB and
    /// HTTP/1.0 (no chunking, no client-side buffering), so a subscriber
    /// that reads nothing soon stops the server's writes to it.
    pub async fn connect_with_small_window(app: &TestApp, path: &str) -> Sse {
        let stream = small_window_stream(app, path).await;
        let body = futures::stream::unfold(stream, |mut stream| async move {
            let mut buf = vec![0u8; 16 * 1024];
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => Some((Ok(Bytes::copy_from_slice(&buf[..n])), stream)),
            }
        });
        Sse {
            body: Box::pin(body),
            buffer: Vec::new(),
        }
    }

    /// The next block, or None when the server ended the stream.
    pub async fn next_block(&mut self, timeout: Duration) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let bytes: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(bytes).expect("UTF-8");
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
            self.buffer.extend_from_slice(&chunk.ok()?);
        }
    }

    /// Reads until the server ends the stream: `Ok` when the body ended as
    /// a stream that is finished ends (with the last chunk of a chunked
    /// body), the error when the connection broke off first (as when the
    /// server closes what is left after its grace period).
    ///
    /// Panics: a message arrives, or nothing within `timeout`.
    pub async fn end(&mut self, timeout: Duration) -> Result<(), String> {
        loop {
            let chunk = tokio::time::timeout(timeout, self.body.next())
                .await
                .expect("the stream did not end within the timeout");
            match chunk {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(bytes)) => {
                    self.buffer.extend_from_slice(&bytes);
                    let text = String::from_utf8_lossy(&self.buffer);
                    assert!(!text.contains("event: message"), "a message: {text}");
                }
            }
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

/// The headers of a response but those hyper sets per message.
fn head_of(headers: &reqwest::header::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| {
            !["date", "content-length", "transfer-encoding"].contains(&name.as_str())
        })
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("?").to_owned()))
        .collect()
}

/// A plain subscription is served by the front door itself, anything else
/// by the route in the application: both must send the same head (the
/// security headers included) and the same events.
#[tokio::test]
async fn every_form_of_subscription_gets_the_same_head_and_events() {
    let app = spawn_app(&[]).await;
    let seen = app.post_message("ann", "seen").await;
    let missed = app.post_message("ann", "missed").await;
    let route_head = app
        .client
        .head(app.url("/api/events"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(route_head.status(), 200);
    let route_head = head_of(route_head.headers());
    for header in [
        "content-security-policy",
        "x-content-type-options",
        "cache-control",
    ] {
        assert!(
            route_head.contains_key(header),
            "{header} in {route_head:?}"
        );
    }
    let id = seen["id"].as_str().unwrap();
    let encoded = format!("%{:02X}{}", id.as_bytes()[0], &id[1..]);
    for query in [
        format!("?after={id}"),
        format!("?after={encoded}"),
        format!("?lang=en&after={id}"),
    ] {
        let response = app
            .client
            .get(app.url(&format!("/api/events{query}")))
            .send()
            .await
            .expect("GET");
        assert_eq!(head_of(response.headers()), route_head, "{query}");
        let mut sse = Sse::from_response(response);
        assert_eq!(sse.next_message().await, missed, "{query}");
    }
    let repeated = app.get(&format!("/api/events?after={id}&after={id}")).await;
    assert_eq!(
        repeated.status(),
        400,
        "a repeated field is refused as before"
    );
    app.shutdown().await;
}

/// Rocket's routing also matches other spellings of the path to the
/// events route; the front door serves only the path itself, and the
/// route sends the client there, where the stream is. (A `GET` of them
/// once went to Rocket, whose answer never ended: no response at all, and
/// the stream buffered in memory until the client left.)
#[tokio::test]
async fn other_spellings_of_the_path_are_sent_to_the_stream() {
    let app = spawn_app(&[]).await;
    let seen = app.post_message("ann", "seen").await;
    let missed = app.post_message("ann", "missed").await;
    let id = seen["id"].as_str().unwrap();
    let following = reqwest::Client::new();
    for path in [
        "/api/events/",
        "//api/events",
        "/api//events",
        "/api/%65vents",
    ] {
        let response = tokio::time::timeout(
            Duration::from_secs(60),
            app.client
                .get(app.url(&format!("{path}?after={id}")))
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer"))
        .expect("GET");
        assert_eq!(response.status(), 308, "{path}");
        assert_eq!(
            response.headers()["location"],
            format!("/api/events?after={id}").as_str(),
            "{path}"
        );
        // Followed, as EventSource follows it.
        let response = following
            .get(app.url(&format!("{path}?after={id}")))
            .send()
            .await
            .expect("GET, redirected");
        let mut sse = Sse::from_response(response);
        assert_eq!(sse.next_message().await, missed, "{path}");
    }
    let bare = app
        .client
        .get(app.url("/api/events/"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.headers()["location"], "/api/events");
    // A query as hyper lets it through, raw UTF-8 included, is sent on
    // percent-encoded: the same query once decoded.
    let raw =
        "GET /api/events/?after=\u{e9}&lang=%41 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut stream = tokio::net::TcpStream::connect(app.base_url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 308 "), "{answer}");
    assert!(
        answer.contains("\r\nlocation: /api/events?after=%C3%A9&lang=%41\r\n"),
        "{answer}"
    );
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
    // `after[]` and `.after` set `after`, as on every route.
    for name in ["after[]", ".after"] {
        let mut page = Sse::connect(
            &app,
            &format!("/api/events?{name}={}", missed2["id"].as_str().unwrap()),
            None,
        )
        .await;
        assert_eq!(page.next_message().await, live, "{name}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_falls_far_behind_catches_up_from_the_store() {
    // The subscriber reads nothing while the messages are posted, so the
    // server's writes to it stall; a write stalled for `header_timeout_secs`
    // ends the stream (`api::stall`), which on a loaded machine the posting
    // outlasted (2 of 16 runs beside other work). What is tested here is
    // the catch-up, so the stall bound is left far above the posting.
    let app = spawn_app(&[("header_timeout_secs", serde_json::json!(600))]).await;
    let mut slow = Sse::connect_with_small_window(&app, "/api/events").await;
    // The server can buffer at most a few MiB in sockets (the front door's
    // socket to the client and Rocket's to the front door, tcp_wmem's
    // maximum is 4 MiB each by default, plus the front door's 256 KiB
    // receive buffer) and 1024 messages in the broadcast: 3000 messages of
    // about 6 KB each (18 MB) are more than all of them together, so this
    // subscriber, which reads nothing meanwhile, must fall behind.
    const TOTAL: usize = 3000;
    let mut texts = Vec::new();
    for chunk in 0..TOTAL / 100 {
        let app = &app;
        let posts = (0..100).map(|i| {
            let text = format!("burst {} {}", chunk * 100 + i, "字".repeat(1900));
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
    while received.len() < TOTAL {
        received.push(slow.next_message().await["id"].as_str().unwrap().to_owned());
    }
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), TOTAL, "every message exactly once");
    assert_eq!(&received[TOTAL - 1000..], &listed[..], "in store order");
    let status = app.get_json("/api/status").await;
    assert!(
        status["events"]["catch_ups"].as_u64().unwrap_or(0) >= 1,
        "the subscriber fell behind the broadcast and caught up from the store: {status}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_alive() {
    let app = spawn_app(&[("heartbeat_secs", serde_json::json!(1))]).await;
    let mut sse = Sse::connect(&app, "/api/events", None).await;
    let hello = sse.next_block(Duration::from_secs(5)).await.unwrap();
    assert!(hello.comment, "opening comment flushes the headers");
    let heartbeat = sse.next_block(Duration::from_secs(5)).await.unwrap();
    assert!(
        heartbeat.comment && heartbeat.event.is_empty(),
        "{heartbeat:?}"
    );
    app.shutdown().await;
}

/// A page cannot see comments (an `EventSource` shows none), so it asks
/// for heartbeats as events, and learns their interval as the stream
/// opens: a stream that then brings nothing for several of them is dead,
/// however open its connection looks. Messages come as before.
#[tokio::test]
async fn heartbeats_asked_for_as_events_come_as_events_from_the_start() {
    let app = spawn_app(&[("heartbeat_secs", serde_json::json!(2))]).await;
    let mut sse = Sse::connect(&app, "/api/events?heartbeat=event", None).await;
    let hello = sse.next_block(Duration::from_secs(5)).await.unwrap();
    assert!(hello.comment, "opening comment flushes the headers");
    let first = sse.next_block(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        (first.event.as_str(), first.data.as_str(), first.comment),
        ("heartbeat", "2", false),
        "the interval, as the stream opens: {first:?}"
    );
    let posted = app.post_message("ann", "between heartbeats").await;
    let message = sse.next_block(Duration::from_secs(5)).await.unwrap();
    assert_eq!(message.event, "message");
    assert_eq!(message.id, posted["id"].as_str().unwrap());
    let next = sse.next_block(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (next.event.as_str(), next.data.as_str()),
        ("heartbeat", "2"),
        "{next:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn streams_end_cleanly_on_shutdown() {
    let app = spawn_app(&[]).await;
    let mut sse = Sse::connect(&app, "/api/events", None).await;
    sse.next_block(Duration::from_secs(5)).await.unwrap();
    let shutdown = tokio::spawn(app.shutdown());
    // Ended by the server, not cut off when its grace period ran out.
    sse.end(Duration::from_secs(10))
        .await
        .expect("the stream ended cleanly");
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

/// The next block that is not only a comment or a retry hint.
async fn next_event(sse: &mut Sse) -> Event {
    loop {
        let event = sse
            .next_block(Duration::from_secs(10))
            .await
            .expect("stream open");
        if !event.event.is_empty() {
            return event;
        }
    }
}

/// A `Last-Event-ID` naming a message this store does not have (the store
/// was wiped, or the id comes from another deployment) got a stream that
/// went live without a word, so its client never learned that what was
/// posted before it reconnected was not replayed. The stream now begins
/// with a `reset` event whose `id:` is the newest message, and then goes
/// live; a client that ignores the event keeps getting new messages.
#[tokio::test]
async fn an_unknown_last_event_id_gets_a_reset_event_then_goes_live() {
    let app = spawn_app(&[]).await;
    app.post_message("a", "older").await;
    app.post_message("a", "posted before the reconnect").await;
    for (path, header) in [
        ("/api/events", Some("gone-from-this-store")),
        ("/api/events?after=gone-from-this-store", None),
    ] {
        let newest = app.get_json("/api/messages?limit=1").await;
        let newest_id = newest[0]["id"].as_str().unwrap();
        let mut sse = Sse::connect(&app, path, header).await;
        let reset = next_event(&mut sse).await;
        assert_eq!(reset.event, "reset", "{path}: {reset:?}");
        assert_eq!(reset.id, newest_id, "{path}: resume from the newest");
        let data: Value = serde_json::from_str(&reset.data).expect("JSON data");
        assert!(
            data["error"]
                .as_str()
                .unwrap()
                .contains("gone-from-this-store"),
            "{data}"
        );
        let live = app.post_message("b", &format!("live after {path}")).await;
        assert_eq!(sse.next_message().await, live, "{path}");
    }
    app.shutdown().await;
}

/// A `Last-Event-ID` or `after` that is no message id at all (another
/// deployment's id format, or garbage) got a stream that went live without
/// a word, as an unknown id once did: its client never learned that
/// nothing was replayed. It now gets the same `reset` first, saying what
/// was wrong with the id; what the client named is repeated only in part
/// when it is long. A header that names something is newer than the URL's
/// `after` (the browser's reconnect keeps the first URL), so it decides.
#[tokio::test]
async fn a_last_event_id_that_is_no_id_gets_a_reset_too() {
    let app = spawn_app(&[]).await;
    let error = |reset: &Event| -> String {
        let data: Value = serde_json::from_str(&reset.data).expect("JSON data");
        data["error"].as_str().expect("an error").to_owned()
    };

    // An empty store: the reset names no message to resume from.
    let mut sse = Sse::connect(&app, "/api/events", Some("not an id!")).await;
    let reset = next_event(&mut sse).await;
    assert_eq!((reset.event.as_str(), reset.id.as_str()), ("reset", ""));
    assert_eq!(
        error(&reset),
        "no message has id not an id! (id may contain only letters, digits, '-' and '_')"
    );
    let first = app.post_message("a", "first").await;
    assert_eq!(sse.next_message().await, first);
    drop(sse);

    let mut newest = app.post_message("a", "newest").await;
    let first_id = first["id"].as_str().unwrap();
    let long = "x".repeat(300);
    for (path, header, named) in [
        (
            format!("/api/events?after={first_id}"),
            Some("no/such"),
            "no/such".to_owned(),
        ),
        (
            "/api/events?after=%E2%9C%93%0A".to_owned(),
            None,
            "✓\\u{a}".to_owned(),
        ),
        // A cursor is an id as sent, as the listing takes one (which
        // answers 400 to this, `pagination`): not trimmed.
        (
            format!("/api/events?after=%20{first_id}"),
            None,
            format!(" {first_id}"),
        ),
        (
            "/api/events".to_owned(),
            Some(long.as_str()),
            format!("{}…", "x".repeat(80)),
        ),
    ] {
        let mut sse = Sse::connect(&app, &path, header).await;
        let reset = next_event(&mut sse).await;
        assert_eq!(reset.event, "reset", "{path}: {reset:?}");
        assert_eq!(reset.id, newest["id"], "{path}: resume from the newest");
        assert!(
            error(&reset).starts_with(&format!("no message has id {named} (")),
            "{path}: {}",
            error(&reset)
        );
        newest = app.post_message("b", "live").await;
        assert_eq!(sse.next_message().await, newest, "{path}");
    }

    // Bytes that are not ASCII: still a named id, and no message's.
    let response = app
        .client
        .get(app.url("/api/events"))
        .header(
            "Last-Event-ID",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .send()
        .await
        .expect("connect");
    let mut sse = Sse::from_response(response);
    let reset = next_event(&mut sse).await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert!(error(&reset).starts_with("no message has id caf\u{fffd} ("));
    app.shutdown().await;
}

/// One rule for cursors: a cursor is a message id, and an empty value is
/// none. The listing answers `before=` or `after=` given empty with 400,
/// as it answers any other value that is no message id; the event stream
/// took an empty `after=` for "nothing named" and went live without a
/// word. It now treats it as it treats any other value that is no message
/// id (it cannot answer 400: an `EventSource` gives up on an error
/// status): one `reset` first, then live. Left out, nothing is named: live
/// at once, no `reset`.
#[tokio::test]
async fn an_empty_after_is_no_message_id_on_the_stream_as_in_the_listing() {
    let app = spawn_app(&[]).await;
    let mut newest = app.post_message("a", "before the stream").await;
    for path in ["/api/events?after=", "/api/events?after"] {
        let mut sse = Sse::connect(&app, path, None).await;
        let reset = next_event(&mut sse).await;
        assert_eq!(reset.event, "reset", "{path}: {reset:?}");
        assert_eq!(reset.id, newest["id"], "{path}: resume from the newest");
        let data: Value = serde_json::from_str(&reset.data).expect("JSON data");
        assert_eq!(
            data["error"],
            format!(
                "no message has an empty id (id must be 1 to {} characters)",
                simplechat::message::ID_MAX_CHARS
            ),
            "{path}"
        );
        newest = app.post_message("b", "live").await;
        assert_eq!(sse.next_message().await, newest, "{path}");
    }
    // A blank Last-Event-ID is no last event (an EventSource never sends
    // one), so the empty `after` decides.
    let mut sse = Sse::connect(&app, "/api/events?after=", Some(" ")).await;
    assert_eq!(next_event(&mut sse).await.event, "reset");
    drop(sse);
    // Not named at all: live, without a reset.
    let mut sse = Sse::connect(&app, "/api/events", None).await;
    let live = app.post_message("c", "live at once").await;
    let first = next_event(&mut sse).await;
    assert_eq!(
        (first.event.as_str(), first.id.as_str()),
        ("message", live["id"].as_str().unwrap())
    );
    drop(sse);
    // Two, which would name two places to resume from: 400.
    let response = app
        .client
        .get(app.url("/api/events"))
        .header("Last-Event-ID", live["id"].as_str().unwrap())
        .header("Last-Event-ID", "another")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("JSON");
    assert!(
        body["error"].as_str().unwrap().contains("more than once"),
        "{body}"
    );
    // The listing and the page agree: 400, naming the field.
    for (path, field) in [
        ("/api/messages?before=", "before"),
        ("/api/messages?after=", "after"),
        ("/api/messages?after", "after"),
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    assert_eq!(app.get("/?before=").await.status(), 400);
    app.shutdown().await;
}

/// A subscriber that reads steadily, if slowly, through a small receive
/// window was cut off during a burst: the kernel's send buffer grows to
/// megabytes, and a write waiting for room was woken only once a third of
/// it had drained, which at a slow client's pace took longer than the
/// write timeout, though the client was reading all along. The server now
/// keeps little unsent data per socket (`TCP_NOTSENT_LOWAT`), so a write
/// is woken each time the client has taken 16 KiB. Reading a burst at such
/// a pace takes minutes, so this test checks the cause: after a burst of
/// 1.5 MB to a subscriber that reads nothing, the server's socket holds
/// what its client's window takes and the low-water mark, not megabytes
/// (Linux's `/proc/net/tcp` `tx_queue`: bytes written and not acknowledged).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_reads_slowly_is_not_left_megabytes_behind() {
    let app = spawn_app(&[]).await;
    let stream = small_window_stream(&app, "/api/events").await;
    let server_port = stream.peer_addr().expect("peer address").port();
    let client_port = stream.local_addr().expect("local address").port();

    let text = "x".repeat(1500);
    for i in 0..1000 {
        app.post_message("burst", &format!("{i} {text}")).await;
    }
    // The server's side of this connection: local port the app's, remote
    // port the subscriber's.
    let unacknowledged = || -> Option<u64> {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
            (port(fields.get(1)?)? == server_port && port(fields.get(2)?)? == client_port)
                .then(|| u64::from_str_radix(fields.get(4)?.split(':').next()?, 16).ok())
                .flatten()
        })
    };
    // Settled: the same for half a second.
    let mut last = None;
    let mut same_since = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let queued = loop {
        let now = unacknowledged();
        if now != last {
            (last, same_since) = (now, tokio::time::Instant::now());
        } else if same_since.elapsed() > Duration::from_millis(500) {
            break now.expect("the server's socket is in /proc/net/tcp");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never settled: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        queued <= 256 * 1024,
        "{queued} bytes waiting in the server's socket"
    );
    drop(stream);
    app.shutdown().await;
}
