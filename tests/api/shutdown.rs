//! SIGTERM on the real binary: new connections are refused at once,
//! responses in progress finish within the grace period, event streams
//! end, the process exits cleanly once nothing is left, and nothing stored
//! is lost.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    start_with_grace(dir, port, "{grace=2,mercy=2}")
}

fn start_with_grace(dir: &std::path::Path, port: u16, shutdown: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_simplechat"))
        .arg("serve")
        .current_dir(dir)
        .env("SIMPLECHAT_PORT", port.to_string())
        .env("ROCKET_SHUTDOWN", shutdown)
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sigterm(server: &std::process::Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// Waits up to `within` for the server to exit; kills it and fails if it
/// does not.
async fn exit_within(
    server: &mut std::process::Child,
    within: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = server.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            panic!("the server did not exit within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Posts `count` messages of 2,000 characters each: a listing of them is
/// a large response.
async fn post_long_messages(base: &str, count: usize) {
    let client = reqwest::Client::new();
    let text = "x".repeat(2000);
    for i in 0..count {
        let posted = client
            .post(format!("{base}/api/messages"))
            .json(&serde_json::json!({"name": format!("n{i}"), "text": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 201);
    }
}

/// A client that takes a response slowly: a receive buffer of a few KiB
/// (so the kernel does not take the response on its behalf) and a few KiB
/// read at a time, with a pause after each.
struct SlowReader {
    /// Bytes read so far.
    read: Arc<AtomicUsize>,
    /// Set to stop reading (the client stalls) while it waits.
    stall: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u8>>,
}

impl SlowReader {
    /// Sends `GET path` on a new keep-alive connection and reads until the
    /// server closes it.
    fn get(address: SocketAddr, path: &str) -> SlowReader {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.connect(&address.into()).expect("connect");
        let mut stream: TcpStream = socket.into();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").expect("send");
        let read = Arc::new(AtomicUsize::new(0));
        let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (counter, stalled) = (read.clone(), stall.clone());
        let thread = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                if stalled.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return all,
                    Ok(n) => {
                        all.extend_from_slice(&chunk[..n]);
                        counter.store(all.len(), Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        SlowReader {
            read,
            stall,
            thread,
        }
    }

    async fn wait_for_bytes(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.read.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "the response did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Everything read, once the server closed the connection.
    fn finish(self) -> Vec<u8> {
        self.thread.join().expect("reader")
    }
}

/// Splits a response into its head and body, and the `Content-Length`
/// the head announced.
fn split_response(response: &[u8]) -> (String, &[u8], usize) {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("Content-Length");
    (head, &response[end + 4..], length)
}

/// Whether a new connection is refused now (a connection the listener
/// still took is closed at once and tried again).
fn refused_now(address: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&address, Duration::from_millis(500)) {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

/// SIGTERM while slow clients are taking a large listing and the page and
/// a browser holds an event stream: new connections are refused at once,
/// the event stream ends cleanly, the listing and the page arrive whole
/// (their connections then close), and the process exits as soon as they
/// have, well within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_client_take_all_of_a_large_response() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, address, base) =
        serving_250_long_messages(dir.path(), "{grace=10,mercy=5}").await;
    let mut events = reqwest::Client::new()
        .get(format!("{base}/api/events"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    events.next().await.expect("stream opened").unwrap();

    let reader = SlowReader::get(address, "/api/messages?limit=1000");
    let page_reader = SlowReader::get(address, "/");
    reader.wait_for_bytes(16 * 1024).await;
    page_reader.wait_for_bytes(16 * 1024).await;
    sigterm(&server);
    let signalled = Instant::now();
    let read_at_signal = reader.read.load(Ordering::SeqCst);

    // No new connection once the signal is handled (a moment).
    let deadline = signalled + Duration::from_secs(2);
    while !refused_now(address) {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = events.next().await {
            chunk.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })
    .await;
    assert_eq!(ended, Ok(Ok(())), "the event stream ended cleanly");
    assert!(
        server.try_wait().unwrap().is_none(),
        "the server waits for the response in progress"
    );

    let response = reader.finish();
    let (head, body, length) = split_response(&response);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body.len(), length, "the whole body arrived");
    assert!(
        read_at_signal < response.len() / 2,
        "the response was in progress at SIGTERM: {read_at_signal} of {} bytes read",
        response.len()
    );
    let list: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(250));
    let page = page_reader.finish();
    let (head, body, length) = split_response(&page);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body.len(), length, "the whole page arrived");
    assert!(String::from_utf8_lossy(body)
        .trim_end()
        .ends_with("</html>"));
    // Nothing is left: the process exits now, not at the end of the grace.
    let exit = exit_within(&mut server, Duration::from_secs(4)).await;
    assert!(exit.success(), "clean exit: {exit:?}");
}

/// A client that stops taking its response is not waited for beyond the
/// grace period: its connection is closed mid-body (the client sees fewer
/// bytes than `Content-Length` announced, so it knows the response is cut)
/// and the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_response_still_untaken_when_the_grace_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, address, _) = serving_250_long_messages(dir.path(), "{grace=1,mercy=1}").await;

    let reader = SlowReader::get(address, "/api/messages?limit=1000");
    reader.wait_for_bytes(16 * 1024).await;
    reader.stall.store(true, Ordering::SeqCst);
    sigterm(&server);
    let signalled = Instant::now();
    let exit = exit_within(&mut server, Duration::from_secs(5)).await;
    let waited = signalled.elapsed();
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(
        waited >= Duration::from_millis(1800),
        "the response had the grace (1 + 1 s): {waited:?}"
    );
    reader.stall.store(false, Ordering::SeqCst);
    let response = reader.finish();
    let (_, body, length) = split_response(&response);
    assert!(body.len() < length, "cut: {} of {length} bytes", body.len());
}

/// A server with `grace` (Rocket's `{grace=..,mercy=..}`) on a free port,
/// serving, with 250 long messages stored: its process, address and URL.
async fn serving_250_long_messages(
    data_dir: &std::path::Path,
    grace: &str,
) -> (std::process::Child, SocketAddr, String) {
    let port = free_port();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let base = format!("http://{address}");
    let server = start_with_grace(data_dir, port, grace);
    wait_until_serving(&base).await;
    post_long_messages(&base, 250).await;
    (server, address, base)
}

/// SIGHUP (a closed terminal or SSH session) shuts down as SIGTERM does,
/// saying so: the open event stream ends cleanly, the exit is clean, and
/// the line says the configuration is read only at start. It used to end
/// the process at once (status 129), cutting the stream mid-body. Under
/// `nohup` (SIGHUP ignored when started), SIGHUP changes nothing.
#[tokio::test]
async fn sighup_shuts_down_gracefully_saying_so_and_nohup_still_ignores_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("stderr.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_simplechat"))
        .arg("serve")
        .current_dir(dir.path())
        .env("SIMPLECHAT_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start simplechat");
    wait_until_serving(&base).await;
    let mut events = reqwest::get(format!("{base}/api/events"))
        .await
        .unwrap()
        .bytes_stream();
    events.next().await.expect("stream opened").unwrap();

    let hup = Command::new("kill")
        .args(["-HUP", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = events.next().await {
            chunk.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })
    .await;
    assert_eq!(
        ended,
        Ok(Ok(())),
        "the event stream ended cleanly on SIGHUP"
    );
    let exit = exit_within(&mut server, Duration::from_secs(10)).await;
    assert!(exit.success(), "clean exit: {exit:?}");
    let stderr = std::fs::read_to_string(&log).unwrap();
    let said: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("received SIGHUP"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].contains("shutting down gracefully")
            && said[0].contains("configuration is read only at start"),
        "{stderr}"
    );

    let mut server = Command::new("sh")
        .args(["-c", "trap '' HUP && exec \"$0\" serve"])
        .arg(env!("CARGO_BIN_EXE_simplechat"))
        .current_dir(dir.path())
        .env("SIMPLECHAT_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start simplechat with SIGHUP ignored");
    wait_until_serving(&base).await;
    let hup = Command::new("kill")
        .args(["-HUP", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // Still serving after the signal: a request answered after it was
    // delivered, and the process has not exited.
    let posted = reqwest::Client::new()
        .post(format!("{base}/api/messages"))
        .json(&serde_json::json!({"name": "t", "text": "after SIGHUP"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    assert!(server.try_wait().unwrap().is_none(), "exited under nohup");
    sigterm(&server);
    assert!(exit_within(&mut server, Duration::from_secs(10))
        .await
        .success());
}
