//! Ambiguous or malformed input is a 400 naming the field, on every path;
//! errors raised before routing are JSON too; other methods get 405.

use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::Value;

use crate::support::app::spawn_app;

#[tokio::test]
async fn a_query_field_given_twice_is_a_400_naming_it() {
    let app = spawn_app(&[]).await;
    let a = app.post_message("a", "one").await;
    let b = app.post_message("a", "two").await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    for (path, field) in [
        (
            format!("/api/messages?before={a}&before={b}&limit=2"),
            "before",
        ),
        ("/api/messages?limit=1&limit=2".to_string(), "limit"),
        // Rocket reads `before[]` and `before.x` as `before`: one field
        // given twice, not a second value that silently voids the first.
        (
            format!("/api/messages?before={a}&before[]={b}&limit=2"),
            "before",
        ),
        ("/api/messages?limit=2&limit[]=3".to_string(), "limit"),
        (format!("/api/messages?after={a}&after.x={b}"), "after"),
        (format!("/api/messages?before={a}&[before]={b}"), "before"),
        (format!("/api/messages?before={a}&.before={b}"), "before"),
        (format!("/api/events?after={a}&after[]={b}"), "after"),
        (format!("/api/events?after={a}&after%5B%5D={b}"), "after"),
        (format!("/api/messages?after={a}&aft%65r={b}"), "after"),
        (format!("/api/events?after={a}&after={b}"), "after"),
    ] {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    // The page too, whatever it takes; it answers with itself.
    let response = app.get("/?x=1&x=2").await;
    assert_eq!(response.status(), 400);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(
        page.contains("query field x is given more than once"),
        "{page}"
    );
    let response = app.get(&format!("/?before={a}&before.x={b}")).await;
    assert_eq!(response.status(), 400);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("query field before is given more than once"),
        "{page}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_form_is_as_strict_as_json() {
    let app = spawn_app(&[]).await;
    for form in [
        "name=a&text=%FF",
        "name=%C3&text=b",
        "name=a&text=one&text=two",
        "name=a&name=b&text=c",
        "name=a&text=one&text[]=two",
        "name[]=x&name=y&text=z",
        "name=a&text.x=one&text=two",
        "name=a&text=one&.text=two",
        "name=a&text=one&[text]=two",
    ] {
        let response = app
            .client
            .post(app.url("/messages"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{form}");
        let page = response.text().await.unwrap();
        assert!(
            page.contains("UTF-8") || page.contains("more than once"),
            "the page says why: {form}"
        );
    }
    assert_eq!(app.message_count().await, 0, "nothing stored");
    app.shutdown().await;
}

/// Sends raw bytes and returns the whole answer (the server closes after
/// these refusals).
fn raw(base_url: &str, request: &[u8]) -> String {
    let address = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_and_body(answer: &str) -> (u16, Value) {
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    (status, body)
}

#[tokio::test]
async fn errors_before_routing_are_json() {
    let app = spawn_app(&[]).await;
    let base = app.base_url.clone();
    let cases = tokio::task::spawn_blocking(move || {
        let long_uri = format!(
            "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "a".repeat(70_000)
        );
        let big_header = format!(
            "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
            "a".repeat(500_000)
        );
        vec![
            (raw(&base, b"GARBAGE\r\n\r\n"), 400),
            (raw(&base, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400),
            (raw(&base, long_uri.as_bytes()), 414),
            (raw(&base, big_header.as_bytes()), 431),
        ]
    })
    .await
    .unwrap();
    for (answer, expected) in cases {
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, expected, "{answer}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    app.shutdown().await;
}

/// The headers after the request line in [`head_with`]'s heads, with the
/// blank line that ends them.
const HEAD_END: &str = "Host: localhost\r\nConnection: close\r\n\r\n";

/// A request head whose request line (`GET /?aaa… HTTP/1.1` and its line
/// end) is `line` bytes long, then [`HEAD_END`], then an `X-Pad` header
/// filling the head to `len` bytes (the request line, the headers and the
/// blank line), if `len` leaves room for one.
fn head_with(line: usize, len: usize) -> Vec<u8> {
    let fill = line - "GET /? HTTP/1.1\r\n".len();
    let mut head = format!("GET /?{} HTTP/1.1\r\n", "a".repeat(fill));
    let pad = len.saturating_sub(line + HEAD_END.len());
    if pad > 0 {
        let value = pad - "X-Pad: \r\n".len();
        head.push_str(&format!("X-Pad: {}\r\n", "a".repeat(value)));
    }
    head.push_str(HEAD_END);
    assert_eq!(head.len(), len.max(line + HEAD_END.len()));
    head.into_bytes()
}

/// A request head is held in memory until it is whole: each connection
/// may send one of 64 KiB (the limit, about twice the largest body), and
/// one byte more is refused with 431 as JSON; a request line that alone
/// is longer is a URI too long, 414. So a client cannot make the server
/// hold 400 KB per connection, as hyper's default allowed.
#[tokio::test]
async fn a_request_head_of_64_kib_is_taken_and_one_byte_more_refused() {
    const LIMIT: usize = 64 * 1024;
    let line = "GET /? HTTP/1.1\r\n".len();
    let app = spawn_app(&[]).await;
    let base = app.base_url.clone();
    let answers = tokio::task::spawn_blocking(move || {
        [
            ("headers", line, LIMIT, 200),
            ("headers", line, LIMIT + 1, 431),
            ("the target", LIMIT - HEAD_END.len(), LIMIT, 200),
            ("the target", LIMIT - HEAD_END.len() + 1, LIMIT + 1, 431),
            ("the target", LIMIT + 1, 0, 414),
        ]
        .map(|(long, line, len, expected)| {
            let head = head_with(line, len);
            let what = format!("{} bytes, long {long}", head.len());
            (what, expected, raw(&base, &head))
        })
    })
    .await
    .unwrap();
    for (what, expected, answer) in answers {
        let status: u16 = answer
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{what}: {answer:?}"));
        let start = &answer[..answer.len().min(300)];
        assert_eq!(status, expected, "{what}: {start}");
        if expected != 200 {
            let (_, body) = status_and_body(&answer);
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: {answer}"
            );
        }
    }
    // A short head with more header lines than the server takes: 431 too,
    // saying so.
    let base = app.base_url.clone();
    let answers = tokio::task::spawn_blocking(move || {
        [100, 101].map(|n| {
            let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: localhost\r\n");
            for i in 1..n {
                head.push_str(&format!("X-{i}: y\r\n"));
            }
            head.push_str("\r\n");
            (n, raw(&base, head.as_bytes()))
        })
    })
    .await
    .unwrap();
    for (n, answer) in answers {
        let start = &answer[..answer.len().min(300)];
        if n <= 100 {
            assert!(answer.starts_with("HTTP/1.1 200"), "{n} headers: {start}");
        } else {
            assert!(answer.starts_with("HTTP/1.1 431"), "{n} headers: {start}");
            let (_, body) = status_and_body(&answer);
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("100 headers")),
                "{answer}"
            );
        }
    }
    app.shutdown().await;
}

#[tokio::test]
async fn other_methods_on_a_route_get_405_with_allow() {
    let app = spawn_app(&[]).await;
    for (method, path, allow) in [
        ("TRACE", "/api/messages", "GET, HEAD, OPTIONS, POST"),
        ("DELETE", "/api/messages/abc", "GET, HEAD, OPTIONS"),
        ("PUT", "/readyz", "GET, HEAD, OPTIONS"),
    ] {
        let response = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow);
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().is_some(), "{body}");
    }
    assert_eq!(app.get("/no/such/path").await.status(), 404);
    app.shutdown().await;
}

/// serde fills a struct from an array by position; the contract's body is
/// an object, so an array is refused like any other malformed body.
#[tokio::test]
async fn a_json_array_is_not_a_post() {
    let app = spawn_app(&[]).await;
    for body in [
        r#"["arr","via array","key-arr"]"#,
        r#" [ "arr", "via array" ]"#,
        r#"[{"name": "arr", "text": "via array", "id": "key-arr"}]"#,
    ] {
        let response = app
            .post_body("/api/messages", "application/json", body)
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let error: Value = response.json().await.unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(
            message.starts_with("malformed JSON body: ") && message.contains("a JSON object"),
            "{body}: {error}"
        );
    }
    assert_eq!(app.get("/api/messages/key-arr").await.status(), 404);
    assert_eq!(app.message_count().await, 0, "nothing stored");
    app.shutdown().await;
}

/// RFC 9112 §3.2: an HTTP/1.1 request names exactly one Host, and its
/// target is in the form its method takes; anything else is a 400.
#[tokio::test]
async fn host_lines_and_the_target_form_are_checked() {
    let app = spawn_app(&[]).await;
    let base = app.base_url.clone();
    let post = |hosts: &str| {
        let body = r#"{"name": "ann", "text": "two hosts"}"#;
        format!(
            "POST /api/messages HTTP/1.1\r\n{hosts}Origin: http://evil.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let cases = tokio::task::spawn_blocking(move || {
        [
            "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
            "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n".to_owned(),
            "GET localhost:80 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_owned(),
            "GET * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_owned(),
            "CONNECT /api/messages HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                .to_owned(),
            // The cross-site check reads one Host: two cannot pass it.
            post("Host: evil.example\r\nHost: 127.0.0.1\r\n"),
            post("Host: 127.0.0.1\r\nHost: evil.example\r\n"),
        ]
        .map(|request| (raw(&base, request.as_bytes()), request))
    })
    .await
    .unwrap();
    for (answer, request) in cases {
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, 400, "{request}: {answer}");
        assert!(body["error"].as_str().is_some(), "{answer}");
    }
    assert_eq!(app.message_count().await, 0, "nothing stored");
    // HTTP/1.0 may leave Host out.
    let base = app.base_url.clone();
    let answer = tokio::task::spawn_blocking(move || raw(&base, b"GET /healthz HTTP/1.0\r\n\r\n"))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    app.shutdown().await;
}

/// RFC 9112 §3.2: a Host whose value is not `uri-host [ ":" port ]` is a
/// 400, which names the value as errors echo client input; an empty one is
/// what a client sends for a target without an authority.
#[tokio::test]
async fn an_invalid_host_value_is_a_400() {
    let app = spawn_app(&[]).await;
    let base = app.base_url.clone();
    let post = |host: &[u8]| {
        let body = r#"{"name": "ann", "text": "bad host"}"#;
        let mut request = b"POST /api/messages HTTP/1.1\r\nHost: ".to_vec();
        request.extend_from_slice(host);
        request.extend_from_slice(
            format!(
                "\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        request
    };
    let cases = tokio::task::spawn_blocking(move || {
        [
            (&b"user@chat.example"[..], "user@chat.example"),
            (b"chat.example:http", "chat.example:http"),
            (b"[chat.example]", "[chat.example]"),
            (b"chat\xe2\x80\xae.example", "chat\\u{202e}.example"),
        ]
        .map(|(host, shown)| (raw(&base, &post(host)), shown))
    })
    .await
    .unwrap();
    for (answer, shown) in cases {
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, 400, "{answer}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("the Host header {shown} ")),
            "{shown}: {error}"
        );
    }
    assert_eq!(app.message_count().await, 0, "nothing stored");
    let base = app.base_url.clone();
    let answers = tokio::task::spawn_blocking(move || {
        ["Host: [::1]:8000", "Host: chat.localhost:"].map(|host| {
            let request = format!("GET /healthz HTTP/1.1\r\n{host}\r\nConnection: close\r\n\r\n");
            raw(&base, request.as_bytes())
        })
    })
    .await
    .unwrap();
    for answer in answers {
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
    app.shutdown().await;
}

/// A request-target has no fragment (RFC 9112 §3.2), but hyper drops one
/// before the server sees the target, so it cannot be refused: the request
/// is served as if none had been sent. Should hyper ever keep it, this
/// fails, and the front door can refuse it with 400.
#[tokio::test]
async fn a_fragment_in_the_target_is_dropped_before_the_server_sees_it() {
    let app = spawn_app(&[]).await;
    let answer = app
        .raw(b"GET /healthz#x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    app.shutdown().await;
}

/// A `Content-Length` hyper parses but cannot hold is a body too large
/// (413), not headers too large; one too long to parse is malformed (400).
#[tokio::test]
async fn a_length_beyond_any_body_is_413() {
    let app = spawn_app(&[]).await;
    let base = app.base_url.clone();
    let cases = tokio::task::spawn_blocking(move || {
        ["18446744073709551614", "18446744073709551615", "99999999999999999999999"].map(|length| {
            let request = format!(
                "POST /api/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{}}"
            );
            (length, raw(&base, request.as_bytes()))
        })
    })
    .await
    .unwrap();
    for (length, answer) in cases {
        let (status, body) = status_and_body(&answer);
        let expected = if length.len() > 20 { 400 } else { 413 };
        assert_eq!(status, expected, "{length}: {answer}");
        assert!(body["error"].as_str().is_some(), "{answer}");
    }
    app.shutdown().await;
}

/// Rocket takes a form post whose first field is `_method` for the method
/// it names; this API has no such field, so such a post is the POST it is:
/// 405 where POST is not allowed, a message posted where it is.
#[tokio::test]
async fn a_form_field_named_method_does_not_change_the_method() {
    let app = spawn_app(&[]).await;
    let form_post = |path: &str, body: &str, extra: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    for path in ["/healthz", "/api/status", "/api/events", "/"] {
        let answer = app.raw(form_post(path, "_method=get", "").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{path}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("\r\nallow: "),
            "{path}: {answer}"
        );
        assert!(
            answer.contains("POST is not allowed here"),
            "{path}: {answer}"
        );
    }
    // Method names are case-sensitive: `post` is no POST, and `get` no GET.
    let body = r#"{"name":"lc","text":"lower case"}"#;
    for method in ["post", "Post"] {
        let answer = app
            .raw(
                format!(
                    "{method} /api/messages HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{method}: {answer}");
        assert!(
            answer.contains(&format!("{method} is not allowed here")),
            "{answer}"
        );
    }
    let answer = app
        .raw(b"get /api/messages HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    // The page's form post is a post, whatever else the form holds.
    let answer = app
        .raw(form_post("/messages", "_method=get&name=ann&text=hello", "").as_bytes())
        .await;
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let answer = app
        .raw(
            form_post(
                "/messages",
                "_method=get&name=eve&text=x",
                "Origin: http://evil.example\r\n",
            )
            .as_bytes(),
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(app.texts("/api/messages").await, ["hello"]);
    app.shutdown().await;
}

/// A header this server reads whose value holds a byte that is not UTF-8
/// (RFC 9110 §5.5 allows such bytes) is read as sent, with U+FFFD for the
/// byte: a condition no tag matches, an `Origin` of another site, a second
/// `Origin`. Left out, each let a post through.
#[tokio::test]
async fn a_header_value_that_is_not_utf8_is_read_not_left_out() {
    let app = spawn_app(&[]).await;
    let first = app.post_message("ann", "first").await;
    let json_post = |extra: &[u8]| {
        let body = br#"{"name":"mallory","text":"should not be stored"}"#;
        let mut request = format!(
            "POST /api/messages HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(extra);
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);
        request
    };
    for (extra, status) in [
        (&b"If-Match: \"x\xe9\"\r\n"[..], "412"),
        (&b"Origin: http://evil\xe9.example\r\n"[..], "403"),
        (&b"Sec-Fetch-Site: cross-site\xe9\r\n"[..], "403"),
        (
            &b"Origin: http://localhost\r\nOrigin: http://evil\xe9.example\r\n"[..],
            "400",
        ),
    ] {
        let answer = app.raw(&json_post(extra)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{}: {answer}",
            String::from_utf8_lossy(extra)
        );
    }
    assert_eq!(app.message_count().await, 1, "nothing more stored");
    // A GET whose If-None-Match lists the current tag beside such a value
    // is answered 304.
    let etag = app.get("/api/messages").await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut request =
        b"GET /api/messages HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nIf-None-Match: \"x\xe9\", "
            .to_vec();
    request.extend_from_slice(etag.as_bytes());
    request.extend_from_slice(b"\r\n\r\n");
    let answer = app.raw(&request).await;
    assert!(answer.starts_with("HTTP/1.1 304"), "{answer}");
    assert!(first["id"].is_string());
    app.shutdown().await;
}

/// `Host:` with no value, and a `Content-Type` given twice, are 400s
/// before anything is stored.
#[tokio::test]
async fn an_empty_host_or_two_content_types_are_refused() {
    let app = spawn_app(&[]).await;
    let body = r#"{"name":"ann","text":"hello"}"#;
    for head in [
        "Host:\r\nContent-Type: application/json\r\n",
        "Host: localhost\r\nContent-Type: application/json\r\nContent-Type: text/plain\r\n",
        "Host: localhost\r\nContent-Type: text/plain\r\nContent-Type: application/json\r\n",
    ] {
        let request = format!(
            "POST /api/messages HTTP/1.1\r\n{head}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = app.raw(request.as_bytes()).await;
        let (status, error) = status_and_body(&answer);
        assert_eq!(status, 400, "{head}: {answer}");
        assert!(
            error["error"]
                .as_str()
                .is_some_and(|e| e.contains("Host") || e.contains("Content-Type")),
            "{answer}"
        );
    }
    assert_eq!(app.message_count().await, 0, "nothing stored");
    app.shutdown().await;
}
