//! DNS rebinding: a page of another site whose name was switched to this
//! machine's address sends requests with its own name in `Host` (and in
//! `Origin`, so the cross-site check takes them for this site's own). A
//! server on a loopback address answers only loopback names and IP
//! addresses, and `allowed_hosts` names the rest.

use serde_json::{json, Value};

use simplechat::config::Config;

use crate::support::app::{spawn_app, test_figment, TestApp};

/// The status, the `Connection` header and the JSON body of a raw answer.
fn parse(answer: &str) -> (u16, bool, Value) {
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {answer}"));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let closes = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("connection: close"));
    (
        status,
        closes,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn port(app: &TestApp) -> &str {
    app.base_url.rsplit(':').next().unwrap()
}

fn get(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// A post as a rebinding page's script sends it: same origin by its name.
fn post_from(host: &str, fetch_site: bool) -> String {
    let body = r#"{"name": "mallory", "text": "rebound"}"#;
    let site = if fetch_site {
        "Sec-Fetch-Site: same-origin\r\n"
    } else {
        ""
    };
    format!(
        "POST /api/messages HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n{site}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_loopback_server_refuses_a_rebound_name_and_answers_its_own() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "private").await;
    let rebound = format!("rebind.example:{}", port(&app));
    for request in [
        get("/api/messages", &rebound),
        get("/", &rebound),
        get("/api/events", &rebound),
        post_from(&rebound, false),
        post_from(&rebound, true),
    ] {
        let answer = app.raw(request.as_bytes()).await;
        let (status, closes, body) = parse(&answer);
        assert_eq!(status, 421, "{request}\n{answer}");
        assert!(closes, "{answer}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("rebind.example") && error.contains("allowed_hosts"),
            "says which host and what to set: {answer}"
        );
        assert!(!answer.contains("private"), "no message read: {answer}");
    }
    assert_eq!(app.message_count().await, 1, "no message posted");

    for host in [
        format!("localhost:{}", port(&app)),
        format!("127.0.0.1:{}", port(&app)),
        format!("[::1]:{}", port(&app)),
        format!("chat.localhost:{}", port(&app)),
    ] {
        let answer = app.raw(get("/api/messages", &host).as_bytes()).await;
        assert_eq!(parse(&answer).0, 200, "{host}: {answer}");
        let answer = app.raw(post_from(&host, true).as_bytes()).await;
        assert_eq!(parse(&answer).0, 201, "{host}: {answer}");
    }
    // HTTP/1.0 without Host: no browser's.
    let answer = app.raw(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(parse(&answer).0, 200, "{answer}");
    app.shutdown().await;
}

/// An absolute-form target names its scheme too: a URI of another scheme
/// than http or https (`ftp://localhost/...`) is no resource of this
/// server, whatever its host, and gets the 421 a host it does not answer
/// for gets (RFC 9110 §15.5.20). `https` is answered over plain HTTP, as
/// it arrives from a proxy that ended TLS.
#[tokio::test]
async fn an_absolute_target_of_another_scheme_is_421() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "private").await;
    let host = format!("localhost:{}", port(&app));
    for scheme in ["ftp", "ws", "file", "FTP"] {
        let request = format!(
            "GET {scheme}://{host}/api/messages HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        let answer = app.raw(request.as_bytes()).await;
        let (status, closes, body) = parse(&answer);
        assert_eq!(status, 421, "{request}\n{answer}");
        assert!(closes, "{answer}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(&format!("{scheme}: URIs")), "{answer}");
        assert!(!answer.contains("private"), "no message read: {answer}");
        let post = format!(
            "POST {scheme}://{host}/api/messages HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 24\r\nConnection: close\r\n\r\n{{\"name\":\"a\",\"text\":\"b\"}}"
        );
        assert_eq!(parse(&app.raw(post.as_bytes()).await).0, 421, "{post}");
    }
    assert_eq!(app.message_count().await, 1, "no message posted");
    for scheme in ["http", "https", "HTTP"] {
        let request = format!(
            "GET {scheme}://{host}/api/messages HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        let answer = app.raw(request.as_bytes()).await;
        assert_eq!(parse(&answer).0, 200, "{request}\n{answer}");
    }
    app.shutdown().await;
}

/// A proxy in front forwards its own name: `allowed_hosts` lists it, and
/// names under a listed `*.` suffix; other names are still refused.
#[tokio::test]
async fn allowed_hosts_names_what_a_proxy_forwards() {
    let app = spawn_app(&[("allowed_hosts", json!(["chat.example", "*.lab.example"]))]).await;
    for host in ["chat.example", "CHAT.example.", "room1.lab.example:443"] {
        let answer = app.raw(post_from(host, true).as_bytes()).await;
        assert_eq!(parse(&answer).0, 201, "{host}: {answer}");
    }
    for host in ["lab.example", "rebind.example"] {
        let answer = app.raw(get("/", host).as_bytes()).await;
        let (status, _, body) = parse(&answer);
        assert_eq!(status, 421, "{host}: {answer}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("not in allowed_hosts"),
            "{answer}"
        );
    }
    app.shutdown().await;
}

/// The refused host is echoed as every error echoes what a client sent:
/// at most 80 characters, then `…` (a `Host` may be most of a 64 KiB head).
#[tokio::test]
async fn a_refused_host_is_echoed_at_most_80_characters() {
    let app = spawn_app(&[]).await;
    let name = format!("{}.rebind.example", "a".repeat(20_000));
    let answer = app.raw(get("/", &name).as_bytes()).await;
    let (status, _, body) = parse(&answer);
    assert_eq!(status, 421, "{}", &answer[..200]);
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("{}…", "a".repeat(80))),
        "cut at 80: {}",
        &error[..200.min(error.len())]
    );
    assert!(error.chars().count() < 500, "{} characters", error.len());
    app.shutdown().await;
}

/// An empty `allowed_hosts` is a list without names, not the setting left
/// out: on any address it answers IP addresses and localhost only, where
/// left out such an address answers any name.
#[test]
fn an_empty_list_answers_no_names_on_any_address() {
    let dir = tempfile::tempdir().unwrap();
    for address in ["0.0.0.0", "::", "192.0.2.7", "127.0.0.1"] {
        let hosts = |extra: &[(&str, Value)]| {
            let mut settings = vec![("address", json!(address))];
            settings.extend_from_slice(extra);
            Config::from_figment(test_figment(dir.path(), &settings))
                .unwrap()
                .allowed_hosts
        };
        let empty = hosts(&[("allowed_hosts", json!([]))]);
        assert!(
            empty.answers(Some("rebind.example")).is_err(),
            "{address}: an empty list answers no name"
        );
        assert_eq!(empty.answers(Some("localhost:8000")), Ok(()), "{address}");
        assert_eq!(empty.answers(Some("10.0.0.5:8000")), Ok(()), "{address}");
        let unset = hosts(&[]);
        let loopback = address == "127.0.0.1";
        assert_eq!(
            unset.answers(Some("rebind.example")).is_ok(),
            !loopback,
            "{address}: left out"
        );
    }
}
