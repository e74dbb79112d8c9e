//! A wrong clock, through the real binary: one message posted with the
//! clock a year ahead does not stamp every later message with its time.

use std::path::Path;

use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::first_run::Server;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_simplechat"))
}

async fn post(base: &str, body: &Value) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .post(format!("{base}/api/messages"))
        .json(body)
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

fn datetime(message: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        message["datetime"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

/// libfaketime (Debian's `faketime` package), preloaded into the server
/// itself so that SIGTERM reaches it; `None`, skipped loudly, without it,
/// a failure when `SIMPLECHAT_REQUIRE_FAKETIME=1` (as `.ci/run` sets).
fn libfaketime() -> Option<String> {
    let found = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|dir| format!("{dir}/faketime/libfaketime.so.1"))
    .find(|lib| Path::new(lib).exists());
    if found.is_none() {
        assert!(
            std::env::var("SIMPLECHAT_REQUIRE_FAKETIME").as_deref() != Ok("1"),
            "libfaketime is required (SIMPLECHAT_REQUIRE_FAKETIME=1) but not installed"
        );
        eprintln!("SKIPPED: the clock test needs libfaketime (Debian: faketime)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_posted_with_the_clock_a_year_ahead_does_not_freeze_later_times() {
    let Some(lib) = libfaketime() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The server a year ahead (the clock ticks on; monotonic time is left
    // alone, as timers need it).
    let ahead = Server::start(
        exe(),
        dir.path(),
        &[
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME", "+365d"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let (status, future) = post(&ahead.base, &json!({"name": "ann", "text": "ahead"})).await;
    assert_eq!(status, 201);
    let (status, _) = ahead.stop();
    assert!(status.success());
    let now = OffsetDateTime::now_utc();
    assert!(
        datetime(&future) > now + time::Duration::days(300),
        "{future}"
    );

    // The clock right again, after a restart: the next message has the
    // clock's time, listed after the one from the future all the same.
    let server = Server::start(exe(), dir.path(), &[]);
    let (status, later) = post(&server.base, &json!({"name": "ann", "text": "now"})).await;
    assert_eq!(status, 201);
    let stamped = datetime(&later);
    assert!(
        (stamped - now).abs() < time::Duration::minutes(5),
        "stamped {stamped}, the clock says {now}"
    );
    let listed: Vec<Value> = reqwest::get(format!("{}/api/messages", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let texts: Vec<&str> = listed.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["ahead", "now"]);
    let (_, log) = server.stop();
    assert!(
        log.iter()
            .any(|l| l.contains("clock is") && l.contains("behind the newest message")),
        "no warning about the clock:\n{}",
        log.join("\n")
    );
}
