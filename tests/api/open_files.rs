//! The open files limit, on the real binary started under a low one: the
//! soft limit is raised to the hard one, `max_connections` is lowered to
//! what the limit fits (saying so at start), and a connection over it gets
//! the 503 the bound promises instead of waiting unanswered while the
//! process is out of descriptors.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cli_config::command;

/// How long a step may take before the test calls the server hung: far
/// more than any answer takes, not a timing that is asserted.
const HUNG: Duration = Duration::from_secs(30);

/// The server, started by `sh` with the soft and hard open files limits
/// given; its stderr lines are collected as they come.
struct Limited {
    server: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Limited {
    fn start(dir: &Path, soft: u32, hard: u32, env: &[(&str, &str)]) -> Limited {
        let exe = env!("CARGO_BIN_EXE_simplechat");
        // The soft limit first: a hard limit below the soft one in force
        // is refused.
        let script = format!("ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" serve");
        let mut sh = command(Path::new("sh"), dir, &["-c", &script, exe], env);
        let mut server = sh
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start simplechat under sh");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(server.stderr.take().expect("stderr"));
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Limited { server, stderr }
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the startup line and returns every line so far.
    async fn until_listening(&self) -> Vec<String> {
        tokio::time::timeout(HUNG, async {
            loop {
                let lines = self.stderr();
                if lines.iter().any(|l| l.contains("simplechat listening on")) {
                    return lines;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no startup line: {:?}", self.stderr()))
    }

    /// Waits for the exit.
    async fn exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(HUNG, async {
            loop {
                if let Some(status) = self.server.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the server exits")
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Opens an event stream on a new connection and returns it once its
/// head says 200.
async fn open_stream(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.expect("read the head");
        assert!(n > 0, "closed before the head");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Soft limit 64 and hard 200, `max_connections` at its default 1024:
/// the server raises its soft limit to 200, keeps 128 for itself and so
/// serves 72 connections, saying so at start; the 73rd, `/healthz`, gets
/// 503 with `Retry-After` (it used to wait unanswered, while the log
/// filled with "Too many open files"), and a stream closed frees a slot.
#[tokio::test]
async fn a_bound_the_open_files_limit_cannot_hold_is_lowered_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let port_text = port.to_string();
    let mut limited = Limited::start(
        dir.path(),
        64,
        200,
        &[
            ("SIMPLECHAT_PORT", &port_text),
            // Held streams are no idle connections to close.
            ("SIMPLECHAT_HEADER_TIMEOUT_SECS", "600"),
            // A stream its client closed is noticed at the next write.
            ("SIMPLECHAT_HEARTBEAT_SECS", "1"),
        ],
    );
    let lines = limited.until_listening().await;
    let said: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("max_connections is 1024"))
        .collect();
    assert_eq!(said.len(), 1, "one line about the bound: {lines:?}");
    assert!(
        said[0].contains("limit (ulimit -n) is 200")
            && said[0].contains("serving at most 72 connections"),
        "{}",
        said[0]
    );

    let address = format!("127.0.0.1:{port}");
    let mut streams = tokio::time::timeout(HUNG, async {
        let mut streams = Vec::new();
        for _ in 0..72 {
            streams.push(open_stream(&address).await);
        }
        streams
    })
    .await
    .expect("72 event streams opened: the server stopped answering new connections");

    let client = reqwest::Client::new();
    let healthz = format!("http://{address}/healthz");
    let refused = tokio::time::timeout(HUNG, client.get(&healthz).send())
        .await
        .expect("a connection over the bound is answered, not left waiting")
        .expect("GET /healthz");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the server has 72 connections open"),
        "{body}"
    );

    streams.pop();
    tokio::time::timeout(HUNG, async {
        loop {
            let response = client.get(&healthz).send().await.expect("GET /healthz");
            if response.status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a closed stream frees its slot");

    drop(streams);
    let killed = Command::new("kill")
        .args(["-TERM", &limited.server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(limited.exit().await.success());
    let lines = limited.stderr();
    assert!(
        !lines.iter().any(|l| l.contains("Too many open files")),
        "{lines:?}"
    );
}

/// A limit with no room for a connection beside what the server keeps for
/// itself stops the start with one line saying what to raise.
#[tokio::test]
async fn an_open_files_limit_with_no_room_for_a_connection_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let mut limited = Limited::start(dir.path(), 100, 100, &[("SIMPLECHAT_PORT", &port)]);
    let status = limited.exit().await;
    assert!(!status.success());
    // The reader thread has the last lines once the pipe closes.
    let lines = tokio::time::timeout(HUNG, async {
        loop {
            let lines = limited.stderr();
            if !lines.is_empty() {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a line on stderr");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("simplechat: cannot start: the open files limit (ulimit -n) is 100")
            && last.contains("LimitNOFILE"),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("listening")), "{lines:?}");
}
