//! A newcomer's first run: the binary, copied anywhere, serves its own page
//! and says on one line where it keeps messages and where it listens; that
//! line and every log line go to stderr, stdout staying empty.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::cli_config::{command, copy_binary, retry_while_busy};

const DEADLINE: Duration = Duration::from_secs(60);
const STARTUP: &str = "simplechat listening on ";

/// Which of the server's streams a line came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A running `simplechat serve`; killed if the test ends early.
pub(crate) struct Server {
    child: Child,
    lines: mpsc::Receiver<(Stream, String)>,
    /// The lines read from stderr so far: the log.
    seen: Vec<String>,
    /// The lines read from stdout so far.
    printed: Vec<String>,
    /// The line `serve` prints once it listens, and the address it names.
    startup: String,
    pub(crate) base: String,
}

impl Server {
    /// Starts `simplechat serve` on a free port; returns once it answers.
    /// The server built with the tests, in `dir`, at log level `normal`,
    /// which logs every request.
    pub(crate) fn logging_every_request(dir: &Path) -> Server {
        Server::start(
            Path::new(env!("CARGO_BIN_EXE_simplechat")),
            dir,
            &[("ROCKET_LOG_LEVEL", "normal")],
        )
    }

    pub(crate) fn start(exe: &Path, dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut env = env.to_vec();
        env.push(("SIMPLECHAT_PORT", "0"));
        let mut child = retry_while_busy(|| {
            command(exe, dir, &["serve"], &env)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        });
        let (tx, lines) = mpsc::channel();
        let streams: [(Stream, Box<dyn Read + Send>); 2] = [
            (Stream::Stdout, Box::new(child.stdout.take().unwrap())),
            (Stream::Stderr, Box::new(child.stderr.take().unwrap())),
        ];
        for (which, stream) in streams {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send((which, line));
                }
            });
        }
        let mut server = Server {
            child,
            lines,
            seen: Vec::new(),
            printed: Vec::new(),
            startup: String::new(),
            base: String::new(),
        };
        // The port is the one the line names, so no other process can take
        // it between choosing and binding.
        server.startup = server.line(STARTUP);
        server.base = base_url(&server.startup);
        // Rocket installs its SIGTERM handler just after the startup line;
        // once a request is answered, it is there.
        let host = server.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(stream, "GET /healthz HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        server
    }

    /// The first line on stderr starting with `prefix`.
    fn line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok((Stream::Stderr, line)) if line.starts_with(prefix) => {
                    self.seen.push(line.clone());
                    return line;
                }
                Ok(line) => self.keep(line),
                Err(e) => panic!(
                    "no line on stderr starting with {prefix:?} ({e:?}); the server logged:\n{}\n\
                     and printed on stdout:\n{}",
                    self.seen.join("\n"),
                    self.printed.join("\n")
                ),
            }
        }
    }

    fn keep(&mut self, (stream, line): (Stream, String)) {
        match stream {
            Stream::Stdout => self.printed.push(line),
            Stream::Stderr => self.seen.push(line),
        }
    }

    /// Stops it as systemd or Ctrl-C would (SIGTERM); waits until it has
    /// closed its output, then for its exit status. Returns that and its
    /// log (the lines on stderr).
    pub(crate) fn stop(self) -> (ExitStatus, Vec<String>) {
        let (status, log, _) = self.stop_with_stdout();
        (status, log)
    }

    /// [`Server::stop`], with the lines printed on stdout too.
    fn stop_with_stdout(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.keep(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "still running a minute after SIGTERM:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
        let status = self.child.wait().expect("wait for simplechat");
        (
            status,
            std::mem::take(&mut self.seen),
            std::mem::take(&mut self.printed),
        )
    }
}

impl Server {
    /// The server's resident memory, in KiB (`VmRSS` in /proc).
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `http://127.0.0.1:PORT` from the startup line.
fn base_url(startup: &str) -> String {
    let url = startup[STARTUP.len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{startup}");
    url
}

#[tokio::test]
async fn a_copied_binary_serves_its_own_page_and_says_where() {
    let root = tempfile::tempdir().unwrap();
    let (elsewhere, run, tmp) = (
        root.path().join("elsewhere"),
        root.path().join("run"),
        root.path().join("tmp"),
    );
    for dir in [&elsewhere, &run, &tmp] {
        std::fs::create_dir(dir).unwrap();
    }
    let exe = elsewhere.join("simplechat");
    copy_binary(&exe);

    let server = Server::start(&exe, &run, &[("TMPDIR", tmp.to_str().unwrap())]);
    let (startup, base) = (server.startup.clone(), server.base.clone());
    assert_eq!(
        startup,
        format!(
            "{STARTUP}{base}; store: embedded at {}",
            run.join("simplechat-data").display()
        )
    );
    assert!(
        run.join("simplechat-data").is_dir(),
        "the store is where the line says"
    );

    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{base}{path}")).send();
    let page = get("/").await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains("<title>simplechat</title>"), "{html}");
    assert!(
        html.contains(r#"<link rel="icon" href="/favicon.ico""#),
        "{html}"
    );
    assert!(html.contains(r#"<form id="send" method="post" action="/messages">"#));

    // What a browser asks for on every load, besides what the page links.
    for (path, content_type, magic) in [
        ("/favicon.ico", "image/x-icon", &[0u8, 0, 1, 0][..]),
        ("/static/favicon.svg", "image/svg+xml", b"<svg"),
        ("/apple-touch-icon.png", "image/png", b"\x89PNG"),
        ("/apple-touch-icon-precomposed.png", "image/png", b"\x89PNG"),
        ("/static/apple-touch-icon.png", "image/png", b"\x89PNG"),
    ] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        let body = response.bytes().await.unwrap();
        assert!(body.starts_with(magic), "{path}");
    }

    let (status, output) = server.stop();
    assert!(status.success(), "{status}: {}", output.join("\n"));
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the built-in templates leave nothing behind"
    );
}

#[test]
fn the_startup_line_names_the_replica_set_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    // No member answers: the app starts anyway and says what it will use.
    let uri = "mongodb://chat:hunter2@127.0.0.1:1/messages?replicaSet=rs";
    let server = Server::start(
        Path::new(env!("CARGO_BIN_EXE_simplechat")),
        dir.path(),
        &[("MONGO_URI", uri)],
    );
    let (startup, base) = (server.startup.clone(), server.base.clone());
    assert_eq!(
        startup,
        format!(
            "{STARTUP}{base}; store: MongoDB replica set rs, database messages \
             (mongodb://chat:****@127.0.0.1:1/messages?replicaSet=rs)"
        )
    );
    let (_, output) = server.stop();
    assert!(
        !output.iter().any(|l| l.contains("hunter2")),
        "{}",
        output.join("\n")
    );
    assert!(
        !dir.path().join("simplechat-data").exists(),
        "nothing embedded"
    );
}

/// A `mongodb+srv` name DNS does not answer is no bad connection string:
/// the server starts, says so in its log (readiness alone said it), and
/// readiness names the lookup, which is retried.
#[tokio::test]
async fn a_mongodb_srv_name_dns_does_not_answer_is_logged_and_named_as_a_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        Path::new(env!("CARGO_BIN_EXE_simplechat")),
        dir.path(),
        &[("MONGO_URI", "mongodb+srv://chat.example.invalid/messages")],
    );
    // Whether the resolver says there is no such name or does not answer
    // within the start's wait, the line names the lookup; it may come
    // before the startup line.
    let prefix = "Warning: cannot connect to MongoDB yet: DNS lookup";
    let logged = match server.seen.iter().find(|l| l.starts_with(prefix)) {
        Some(line) => line.clone(),
        None => server.line(prefix),
    };
    assert!(
        !logged.contains("bad MongoDB connection string"),
        "{logged}"
    );
    let ready = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("DNS lookup"), "{body}");
    assert!(!body.contains("bad MongoDB connection string"), "{body}");
    server.stop();
}

#[tokio::test]
async fn the_startup_line_is_all_the_release_builds_log_level_prints() {
    // Rocket's default log level is `critical` in release builds, which
    // hides `info!`; the line must not depend on it. And nothing else is
    // printed there for what clients do: a request no route takes, a
    // `HEAD`, a request the request checks refuse, a redirect, a body
    // over the limit.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        Path::new(env!("CARGO_BIN_EXE_simplechat")),
        dir.path(),
        &[("ROCKET_LOG_LEVEL", "critical")],
    );
    // Absolute: where to look whatever the reader's working directory.
    let data_dir = dir.path().join("simplechat-data");
    assert!(
        server
            .startup
            .ends_with(&format!("; store: embedded at {}", data_dir.display())),
        "{}",
        server.startup
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("{}{path}", server.base);
    for (request, status) in [
        (client.get(url("/nothing")), 404),
        (client.head(url("/")), 200),
        (client.get(url("/api/messages?limit=1&limit=2")), 400),
        (client.get(url("/api/events/")), 308),
        (client.delete(url("/api/messages")), 405),
        (
            client
                .post(url("/api/messages"))
                .header("content-type", "application/json")
                .body(" ".repeat(28_170)),
            413,
        ),
        (
            client
                .post(url("/api/messages"))
                .header("content-type", "application/json")
                .body(r#"{"name": "ann", "text": "stored by the front door"}"#),
            201,
        ),
    ] {
        assert_eq!(request.send().await.unwrap().status(), status);
    }
    let (_, output, printed) = server.stop_with_stdout();
    assert_eq!(output, [server_startup(&output)], "{}", output.join("\n"));
    assert!(printed.is_empty(), "on stdout: {printed:?}");
}

/// Diagnostics go where a terminal shows them and a supervisor keeps them
/// apart from output: stderr, with the rest of the log. `serve` prints
/// nothing on stdout.
#[tokio::test]
async fn warnings_go_to_stderr_and_stdout_stays_empty() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::logging_every_request(dir.path());
    // A host the server does not answer for is a warning (a proxy
    // forwarding the wrong name shows in the log).
    let refused = reqwest::Client::new()
        .get(format!("{}/api/messages", server.base))
        .header("host", "elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 421);
    let answered = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    let (status, log, printed) = server.stop_with_stdout();
    assert!(status.success(), "{status}: {}", log.join("\n"));
    assert!(
        log.iter()
            .any(|l| l.starts_with("Warning: refused a request from 127.0.0.1")),
        "{}",
        log.join("\n")
    );
    assert!(
        log.iter().any(|l| l == "GET /healthz:"),
        "{}",
        log.join("\n")
    );
    assert!(printed.is_empty(), "on stdout: {printed:?}");
}

/// A log with no reader (a supervisor gone, `| head` done) loses lines,
/// not the server: every request it logs is still answered, and SIGTERM
/// still ends it cleanly.
#[tokio::test]
async fn a_closed_stderr_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_simplechat"));
    let env = [("SIMPLECHAT_PORT", "0"), ("ROCKET_LOG_LEVEL", "normal")];
    let mut child = retry_while_busy(|| {
        command(exe, dir.path(), &["serve"], &env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    });
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let startup = loop {
        let mut line = String::new();
        assert!(log.read_line(&mut line).unwrap() > 0, "no startup line");
        if line.starts_with(STARTUP) {
            break line.trim_end().to_owned();
        }
    };
    // The read end closed: each line logged from now on fails to write.
    drop(log);
    let base = base_url(&startup);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let posted = client
            .post(format!("{base}/api/messages"))
            .json(&serde_json::json!({"name": "ann", "text": "logged to no one"}))
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 201);
        assert_eq!(
            client
                .get(format!("{base}/nothing"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
    }
    let listed: serde_json::Value = client
        .get(format!("{base}/api/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(3));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// At log level `normal` every post is logged as Rocket logs a request,
/// whether Rocket answered it (a browser's) or the front door did (a
/// script's, `api::plain_post`), so a developer sees each one.
#[tokio::test]
async fn at_the_normal_level_every_post_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::logging_every_request(dir.path());
    let client = reqwest::Client::new();
    for browser in [false, true] {
        let request = client
            .post(format!("{}/api/messages", server.base))
            .header("content-type", "application/json");
        let request = if browser {
            request.header("sec-fetch-site", "same-origin")
        } else {
            request
        };
        let response = request
            .body(r#"{"name": "ann", "text": "logged"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let (_, output) = server.stop();
    let posts: Vec<(&str, &str)> = output
        .iter()
        .zip(output.iter().skip(1))
        .filter(|(line, _)| *line == "POST /api/messages application/json:")
        .map(|(line, next)| (line.as_str(), next.as_str()))
        .collect();
    assert_eq!(posts.len(), 2, "{}", output.join("\n"));
    assert_eq!(posts[0].1, "   >> Answered by the front door: 201 Created");
    assert_eq!(posts[1].1, "   >> Matched: (create) POST /api/messages");
}

/// What a client sent reaches a log line as an error echoes it: at most 80
/// characters, controls and bidi controls escaped; in Rocket's own lines,
/// which print the target as sent, controls and bidi controls escaped, and
/// a backslash doubled, so a typed `\u{1b}` does not read as an escape the
/// logger wrote.
#[tokio::test]
async fn client_input_in_a_log_line_is_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::logging_every_request(dir.path());
    let long = format!("application/json; x={}", "y".repeat(300));
    let response = reqwest::Client::new()
        .post(format!("{}/api/messages", server.base))
        .header("content-type", &long)
        .body(r#"{"name": "ann", "text": "logged"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // Rocket logs the target as sent, and hyper lets UTF-8 through there: a
    // line end to some viewers (U+0085), a bidi override (U+202E).
    let host = server.base.trim_start_matches("http://").to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&host).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
            .write_all(
                "GET /a\u{85}b\u{202e}c?before=\u{202e}&x=\\u{1b} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                    .as_bytes(),
            )
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    let (_, output) = server.stop();
    let all = output.join("\n");
    assert!(!all.contains(['\u{85}', '\u{202e}']), "{all}");
    assert!(
        output.contains(&"GET /a\\u{85}b\\u{202e}c?before=\\u{202e}&x=\\\\u{1b}:".to_owned()),
        "{all}"
    );
    assert!(!all.contains(&long), "{all}");
    let shown = format!("{}…", &long[..80]);
    assert!(
        output.contains(&format!("POST /api/messages {shown}:")),
        "{all}"
    );
}

/// A `Content-Type` Rocket cannot parse (a blank before `;`) made its
/// parser turn colours on for the whole process: every later line of the
/// log was a run of escaped colour codes (`\u{1b}[32mGET\u{1b}[0m ...`),
/// until a restart. The log stays plain text.
#[tokio::test]
async fn a_content_type_rocket_cannot_parse_leaves_the_log_plain() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::logging_every_request(dir.path());
    let client = reqwest::Client::new();
    for content_type in [None, Some("a ; b=c"), None] {
        let request = client.get(format!("{}/healthz", server.base));
        let request = match content_type {
            Some(value) => request.header("content-type", value),
            None => request,
        };
        assert_eq!(request.send().await.unwrap().status(), 200);
    }
    let (_, output) = server.stop();
    let all = output.join("\n");
    assert!(!all.contains("\\u{1b}") && !all.contains('\u{1b}'), "{all}");
    // Three, after the start's own (`Server::start` waits for an answer).
    let healthz = output.iter().filter(|l| *l == "GET /healthz:").count();
    assert_eq!(healthz, 4, "{all}");
}

/// The startup line among `output`.
fn server_startup(output: &[String]) -> String {
    output
        .iter()
        .find(|l| l.starts_with(STARTUP))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_configured_template_dir_replaces_the_built_in_page() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(templates.join("index.html.j2"), "my own page").unwrap();
    std::fs::write(templates.join("messages.html.j2"), "").unwrap();
    let server = Server::start(
        Path::new(env!("CARGO_BIN_EXE_simplechat")),
        dir.path(),
        &[("SIMPLECHAT_TEMPLATE_DIR", templates.to_str().unwrap())],
    );
    let page = reqwest::get(format!("{}/", server.base)).await.unwrap();
    assert_eq!(page.text().await.unwrap(), "my own page");
    server.stop();
}

/// Closing a tab ends its event stream from the client's side: that is
/// normal, and must not print a warning each time.
#[tokio::test]
async fn a_closed_event_stream_is_not_a_warning() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Path::new(env!("CARGO_BIN_EXE_simplechat")), dir.path(), &[]);
    let host = server.base.trim_start_matches("http://").to_owned();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        stream
            .write_all(format!("GET /api/events HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(": connected") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream opened");
            got.extend_from_slice(&buf[..n]);
        }
        drop(stream);
    }
    // A message makes the server write to the closed streams and notice.
    let posted = reqwest::Client::new()
        .post(format!("{}/api/messages", server.base))
        .json(&serde_json::json!({"name": "ann", "text": "after the tabs closed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let (status, lines) = server.stop();
    assert!(status.success());
    let warnings: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("Warning:") || l.starts_with("Error:"))
        .filter(|l| !l.contains("custom runtime") && !l.contains("Received SIGTERM"))
        .collect();
    assert!(warnings.is_empty(), "closed tabs logged: {warnings:?}");
}

/// A template that does not parse stops the start with a line naming its
/// file and the line, as a configuration error (78), rather than failing
/// every page view later; `simplechat config` says the same. Before,
/// `config` passed it (exit 0), and the start's last line said only that
/// a launch fairing failed.
#[test]
fn a_broken_template_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(templates.join("index.html.j2"), "<p>{% if %}</p>").unwrap();
    std::fs::write(templates.join("messages.html.j2"), "").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_simplechat"))
        .current_dir(dir.path())
        .env("SIMPLECHAT_PORT", port.to_string())
        .env("SIMPLECHAT_TEMPLATE_DIR", &templates)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running with a broken template");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let broken = format!(
        "simplechat: template {}, line 1: syntax error",
        templates
            .canonicalize()
            .unwrap()
            .join("index.html.j2")
            .display()
    );
    let config = std::process::Command::new(env!("CARGO_BIN_EXE_simplechat"))
        .arg("config")
        .current_dir(dir.path())
        .env("SIMPLECHAT_TEMPLATE_DIR", &templates)
        .output()
        .unwrap();
    for output in [output, config] {
        assert_eq!(output.status.code(), Some(78), "{output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.lines().last().is_some_and(|l| l.starts_with(&broken)),
            "the file a user must open, and the line, last: {said}"
        );
    }
}
