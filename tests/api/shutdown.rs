//! SIGTERM on the real binary: event streams end, the process exits cleanly,
//! and nothing stored is lost.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;

async fn wait_until_serving(base: &str) {
    for _ in 0..100 {
        if reqwest::get(format!("{base}/healthz")).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not come up");
}

fn start(dir: &std::path::Path, port: u16) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_simplechat"))
        .arg("serve")
        .current_dir(dir)
        .env("SIMPLECHAT_PORT", port.to_string())
        .env("ROCKET_SHUTDOWN", "{grace=2,mercy=2}")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start simplechat")
}

#[tokio::test]
async fn sigterm_ends_streams_and_exits_cleanly_keeping_messages() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = start(dir.path(), port);
    wait_until_serving(&base).await;

    let client = reqwest::Client::new();
    let posted = client
        .post(format!("{base}/api/messages"))
        .json(&serde_json::json!({"name": "t", "text": "survives SIGTERM"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let mut events = client
        .get(format!("{base}/api/events"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    events.next().await.expect("stream opened").unwrap();

    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The stream ends, as a finished body ends: not cut off when the grace
    // period runs out, nor left hanging.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = events.next().await {
            if let Err(e) = chunk {
                return Err(e.to_string());
            }
        }
        Ok(())
    })
    .await;
    assert_eq!(
        ended,
        Ok(Ok(())),
        "the event stream ended cleanly on SIGTERM"
    );
    let mut exit = None;
    for _ in 0..100 {
        if let Some(status) = server.try_wait().unwrap() {
            exit = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(exit) = exit else {
        let _ = server.kill();
        let _ = server.wait();
        panic!("the server did not exit within 10 s of SIGTERM");
    };
    assert!(exit.success(), "clean exit: {exit:?}");

    let mut server = start(dir.path(), port);
    wait_until_serving(&base).await;
    let list: serde_json::Value = reqwest::get(format!("{base}/api/messages"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["text"], "survives SIGTERM");
    let _ = server.kill();
    let _ = server.wait();
}
