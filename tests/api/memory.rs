//! A subscriber's memory does not grow with what it is sent: 200 event
//! streams on the real binary, 4,500 messages, and the server's resident
//! memory measured before and after. Per-subscriber state that remembered
//! every id sent (as it once did) grows by about 188 bytes per subscriber
//! per event, 169 MB here; the bound is 20 KB per subscriber.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::first_run::Server;

const SUBSCRIBERS: usize = 200;
const EVENTS: usize = 4_500;
const WARM_UP: usize = 100;
/// Messages posted between two checks that every subscriber has read all.
const STEP: usize = 25;
const BOUND_KIB_PER_SUBSCRIBER: u64 = 20;

/// Opens an event stream, says when the server has confirmed it (the
/// `: connected` comment), and counts the `message` events it brings.
async fn subscribe(host: &str, connected: Arc<AtomicUsize>, received: Arc<AtomicUsize>) {
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    stream
        .write_all(format!("GET /api/events HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let needle = b"event: message\n";
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut confirmed = false;
    let mut head: Vec<u8> = Vec::new();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !confirmed {
            head.extend_from_slice(&buf[..n]);
            if head.windows(12).any(|w| w == b": connected\n") {
                confirmed = true;
                connected.fetch_add(1, Ordering::SeqCst);
            }
        }
        carry.extend_from_slice(&buf[..n]);
        let found = carry.windows(needle.len()).filter(|w| w == needle).count();
        received.fetch_add(found, Ordering::SeqCst);
        // Keep only a tail that could start a needle split across reads.
        let keep = carry.len().min(needle.len() - 1);
        carry.drain(..carry.len() - keep);
    }
}

async fn post_all(client: &reqwest::Client, base: &str, range: std::ops::Range<usize>) {
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(16) {
        let posts = chunk.iter().map(|i| {
            client
                .post(format!("{base}/api/messages"))
                .json(&serde_json::json!({ "name": "m", "text": format!("message {i}") }))
                .send()
        });
        for response in futures::future::join_all(posts).await {
            assert_eq!(response.expect("POST").status(), 201);
        }
    }
}

async fn wait_until_all_have(counts: &[Arc<AtomicUsize>], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while counts.iter().any(|c| c.load(Ordering::SeqCst) < n) {
        let behind = counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0);
        assert!(
            Instant::now() < deadline,
            "subscribers never received {n} events (slowest has {behind})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribers_memory_does_not_grow_with_the_events_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_simplechat")),
        dir.path(),
        &[],
    );
    let host = server.base.trim_start_matches("http://").to_owned();
    let client = reqwest::Client::new();
    let counts: Vec<Arc<AtomicUsize>> = (0..SUBSCRIBERS).map(|_| Arc::default()).collect();
    let connected = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = counts
        .iter()
        .map(|c| tokio::spawn(subscribe_owned(host.clone(), connected.clone(), c.clone())))
        .collect();
    // Subscribers start from now: post only once every stream is open.
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::SeqCst) < SUBSCRIBERS {
        assert!(Instant::now() < deadline, "streams did not open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every stream is open and has been sent the warm-up messages, so its
    // buffers and the cache's first pages exist before the measurement.
    post_all(&client, &server.base, 0..WARM_UP).await;
    wait_until_all_have(&counts, WARM_UP).await;
    let before = server.rss_kib();
    // In steps that every subscriber reads before the next, so what is
    // measured is what the server keeps per subscriber, not a backlog of
    // unread events waiting in its socket buffers.
    for start in (WARM_UP..EVENTS).step_by(STEP) {
        let end = (start + STEP).min(EVENTS);
        post_all(&client, &server.base, start..end).await;
        wait_until_all_have(&counts, end).await;
    }
    let after = server.rss_kib();
    for c in &counts {
        assert_eq!(c.load(Ordering::SeqCst), EVENTS, "every event exactly once");
    }
    let growth = after.saturating_sub(before);
    let bound = BOUND_KIB_PER_SUBSCRIBER * SUBSCRIBERS as u64;
    eprintln!(
        "RSS {before} KiB -> {after} KiB after {} events to {SUBSCRIBERS} subscribers: {} KiB per subscriber",
        EVENTS - WARM_UP,
        growth / SUBSCRIBERS as u64
    );
    assert!(
        growth <= bound,
        "the server grew by {growth} KiB (bound {bound} KiB for {SUBSCRIBERS} subscribers)"
    );
    for t in tasks {
        t.abort();
    }
    drop(server);
}

async fn subscribe_owned(host: String, connected: Arc<AtomicUsize>, received: Arc<AtomicUsize>) {
    subscribe(&host, connected, received).await
}
