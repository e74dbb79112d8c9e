//! Checks of a request's head that hyper leaves to the server, made by the
//! front door before the request goes anywhere: the `Host` header, the
//! form of the request-target (RFC 9112 §3.2, §3.2.2–§3.2.4), the
//! transfer codings (§6.1) and the expectations (RFC 9110 §10.1.1).
//!
//! A request that fails one is refused without its body being read, and
//! the connection closes after the answer: what is left of the body would
//! be read as the next request.
//!
//! A request-target has no fragment (RFC 9112 §3.2), but one sent
//! (`GET /api/messages#x`) is not refused: hyper's URI parser (http's
//! `PathAndQuery`) drops `#` and what follows before the request reaches
//! any code here, and keeps no raw target to check, so the request is
//! served as if the fragment had not been sent.

use std::net::Ipv6Addr;

use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::http::uri::Authority;
use hyper::{Method, Response, StatusCode, Version};

use super::dispatch::{json_response, Body};
use super::echo::echo;
use crate::hosts::split_port;

/// The refusal of a request whose head `parts` breaks the rules above, in
/// the JSON error shape with `Connection: close`; `None` when it keeps them.
///
/// - 400 for an HTTP/1.1 request with no `Host`, any request with more
///   than one `Host` line, or one whose value is not `uri-host [ ":" port ]`
///   (RFC 9112 §3.2); an HTTP/1.0 request may have none.
/// - 400 for a request-target in authority-form (`host:port`) on any
///   method but CONNECT (§3.2.3), or in asterisk-form (`*`) on any method
///   but OPTIONS (§3.2.4).
/// - 400 for `chunked` listed more than once in `Transfer-Encoding`: a
///   sender must not chunk a body twice (§6.1), and hyper undoes one.
/// - 400 for `Content-Type` on more than one line (RFC 9110 §5.3).
/// - 501 for a transfer coding other than `chunked` (§6.1): hyper undoes
///   the chunking only, and would hand on a body still coded.
/// - 417 for an HTTP/1.1 request whose `Expect` asks for anything but
///   `100-continue` (RFC 9110 §10.1.1 lets a server refuse it so), rather
///   than a silence the client would take for an expectation met. An
///   HTTP/1.0 request's `Expect` is ignored, as §10.1.1 has a server do
///   with its `100-continue`: HTTP/1.0 has no expectations.
pub fn refusal(parts: &Parts) -> Option<Response<Body>> {
    let (status, error) = if let Some(error) = host_error(parts)
        .or_else(|| target_error(parts))
        .or_else(|| chunked_twice(parts))
        .or_else(|| content_type_twice(parts))
    {
        (StatusCode::BAD_REQUEST, error)
    } else if let Some(error) = coding_error(parts) {
        (StatusCode::NOT_IMPLEMENTED, error)
    } else {
        (StatusCode::EXPECTATION_FAILED, expectation_error(parts)?)
    };
    let mut response = json_response(status, &error);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(response)
}

/// Why the request's `Host` lines break RFC 9112 §3.2, if they do. The
/// value is checked with an absolute-form target too, whose authority is
/// used instead (§3.2.2): the rule on an invalid value has no exception.
fn host_error(parts: &Parts) -> Option<String> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Some("the request has more than one Host header (RFC 9112 §3.2)".into()),
        (None, None) if parts.version >= Version::HTTP_11 => {
            Some("an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)".into())
        }
        (Some(host), None) if !is_valid_host(host.as_bytes()) => Some(format!(
            "the Host header {} is not a host with an optional port (RFC 9112 §3.2)",
            echo(&String::from_utf8_lossy(host.as_bytes()))
        )),
        _ => target_host_error(parts),
    }
}

/// Why an absolute-form target's authority, which takes `Host`'s place
/// (RFC 9112 §3.2.2), is no host either: held to the same rules as a `Host`
/// value, userinfo included (RFC 9110 §4.2.4: a recipient treats it as an
/// error), so the host the request checks compare is never one a `Host`
/// header could not have named.
fn target_host_error(parts: &Parts) -> Option<String> {
    let authority = parts
        .uri
        .authority()
        .filter(|_| parts.uri.scheme().is_some())?;
    (!is_valid_host(authority.as_str().as_bytes())).then(|| {
        format!(
            "the request-target's authority {} is not a host with an optional port \
             (RFC 9112 §3.2.2)",
            echo(authority.as_str())
        )
    })
}

/// Whether `value` is a valid `Host` value: `uri-host [ ":" port ]` (RFC
/// 9112 §3.2, RFC 3986 §3.2.2–§3.2.3) with a host. An empty value, or
/// `:80`, names none: a client sends an empty `Host` only for a target
/// URI without an authority (RFC 9112 §3.2), which an http URI always has,
/// and an http URI with an empty host is invalid (RFC 9110 §4.2.1).
///
/// The syntax is http's `Authority` parser (hyper's own), which takes
/// only URI characters, at most one `:` outside brackets, balanced
/// brackets; what it lets through that a `Host` may not carry is refused
/// here: userinfo (`user@`, which RFC 9110 §4.2.4 deprecates and which
/// `uri-host` lacks), a port that is not digits or is above 65535,
/// brackets that do not enclose the whole host, and bracketed text that is
/// no IPv6 address (IPvFuture and zone ids are refused: no client sends
/// them). http's parser also refuses a `%` in a registered name, which
/// RFC 3986 allows (pct-encoded) but which no client sends: hosts go out
/// in ASCII (punycode).
fn is_valid_host(value: &[u8]) -> bool {
    let Ok(authority) = Authority::try_from(value) else {
        return false;
    };
    let text = authority.as_str();
    if text.contains('@') {
        return false;
    }
    let (host, port) = split_port(text);
    // `:80` names no host: "A recipient that processes such a URI reference
    // MUST reject it as invalid" (RFC 9110 §4.2.1, an http URI with an
    // empty host identifier). Nor do `.`, `.chat.example` or
    // `chat..example`: a name's labels are not empty (RFC 1034 §3.1), but
    // for the root's, a trailing dot.
    if !host.starts_with('[') {
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.split('.').any(str::is_empty) {
            return false;
        }
    }
    // RFC 3986's port is any run of digits, but no TCP port is above
    // 65535, and Rocket records no host for one that is (a browser's write
    // would then be refused for want of a Host, not for its port).
    let digits = port.strip_prefix(':').unwrap_or_default();
    let port_valid = digits.is_empty()
        || (digits.bytes().all(|b| b.is_ascii_digit()) && digits.parse::<u16>().is_ok());
    if !port_valid {
        return false;
    }
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(literal) => literal.parse::<Ipv6Addr>().is_ok(),
        None => !host.contains(['[', ']']),
    }
}

/// Why the request-target's form does not fit the method, if it does not.
fn target_error(parts: &Parts) -> Option<String> {
    let uri = &parts.uri;
    if uri.scheme().is_none() && uri.authority().is_some() && parts.method != Method::CONNECT {
        return Some(
            "a request-target of the form host:port is for CONNECT only (RFC 9112 §3.2.3)".into(),
        );
    }
    // CONNECT names where to tunnel, `host:port`, and nothing else
    // (RFC 9112 §3.2.3; this server tunnels nothing, and would answer 405).
    if parts.method == Method::CONNECT && (uri.scheme().is_some() || uri.authority().is_none()) {
        return Some(
            "CONNECT takes a request-target of the form host:port only (RFC 9112 §3.2.3)".into(),
        );
    }
    if uri.path() == "*" && parts.method != Method::OPTIONS {
        return Some("the request-target * is for OPTIONS only (RFC 9112 §3.2.4)".into());
    }
    None
}

/// The first member of the comma-separated list `name`'s lines make
/// (RFC 9110 §5.6.1) that is not `known` (compared without case), if one is.
fn first_other_than<'a>(
    parts: &'a Parts,
    name: header::HeaderName,
    known: &'static [u8],
) -> Option<&'a [u8]> {
    parts
        .headers
        .get_all(name)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .find(|member| !member.is_empty() && !member.eq_ignore_ascii_case(known))
}

/// Why the request's transfer codings break RFC 9112 §6.1, if they list
/// `chunked` more than once.
fn chunked_twice(parts: &Parts) -> Option<String> {
    let chunked = parts
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .filter(|member| member.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        .count();
    (chunked > 1).then(|| {
        "transfer coding chunked is listed more than once; a body is chunked once at most \
         (RFC 9112 §6.1)"
            .to_owned()
    })
}

/// Why the request's `Content-Type` is ambiguous, if it is given on more
/// than one line: it is no list, so one request has one (RFC 9110 §5.3,
/// §8.3), and whichever line was read would decide how the body is taken.
fn content_type_twice(parts: &Parts) -> Option<String> {
    let mut lines = parts.headers.get_all(header::CONTENT_TYPE).iter();
    lines.nth(1).map(|_| {
        "the request has more than one Content-Type header; a body has one media type \
         (RFC 9110 §8.3)"
            .to_owned()
    })
}

/// Why the request's transfer codings cannot be undone, if they cannot.
fn coding_error(parts: &Parts) -> Option<String> {
    first_other_than(parts, header::TRANSFER_ENCODING, b"chunked").map(|coding| {
        format!(
            "transfer coding {} is not supported; only chunked is (RFC 9112 §6.1)",
            echo(&String::from_utf8_lossy(coding))
        )
    })
}

/// Why the request's `Expect` cannot be met, if it cannot: it lists an
/// expectation other than `100-continue`, the one this server meets
/// (hyper sends `100 Continue` when a body is read).
fn expectation_error(parts: &Parts) -> Option<String> {
    if parts.version < Version::HTTP_11 {
        return None;
    }
    first_other_than(parts, header::EXPECT, b"100-continue").map(|member| {
        format!(
            "the expectation {} cannot be met; this server meets 100-continue only \
             (RFC 9110 §10.1.1)",
            echo(&String::from_utf8_lossy(member))
        )
    })
}

#[cfg(test)]
mod tests {
    use hyper::{Request, Version};

    use super::{is_valid_host, refusal};

    fn refused(build: hyper::http::request::Builder) -> bool {
        let (parts, ()) = build.body(()).unwrap().into_parts();
        refusal(&parts).is_some()
    }

    #[test]
    fn host_lines_and_target_forms_follow_rfc_9112() {
        assert!(!refused(Request::get("/").header("host", "x")));
        assert!(!refused(Request::get("http://x/").header("host", "x")));
        assert!(!refused(Request::get("/").version(Version::HTTP_10)));
        assert!(refused(Request::get("/")));
        assert!(refused(
            Request::get("/").header("host", "x").header("host", "y")
        ));
        assert!(refused(
            Request::get("/")
                .version(Version::HTTP_10)
                .header("host", "x")
                .header("host", "x")
        ));
        assert!(refused(Request::get("x:80").header("host", "x")));
        assert!(!refused(Request::connect("x:80").header("host", "x")));
        assert!(refused(Request::get("*").header("host", "x")));
        assert!(!refused(Request::options("*").header("host", "x")));
        let coded = |coding| {
            Request::post("/")
                .header("host", "x")
                .header("transfer-encoding", coding)
        };
        assert!(!refused(coded("chunked")));
        assert!(!refused(coded("Chunked")));
        assert!(refused(coded("gzip, chunked")));
        let twice = |lines: &[&str]| {
            let (parts, ()) = lines
                .iter()
                .fold(Request::post("/").header("host", "x"), |r, line| {
                    r.header("transfer-encoding", *line)
                })
                .body(())
                .unwrap()
                .into_parts();
            refusal(&parts).map(|r| r.status().as_u16())
        };
        assert_eq!(twice(&["chunked, chunked"]), Some(400));
        assert_eq!(twice(&["chunked", "Chunked"]), Some(400));
        assert_eq!(twice(&["chunked"]), None);
        assert!(refused(Request::get("/").header("host", "")));
        let typed = |types: &[&str]| {
            types
                .iter()
                .fold(Request::post("/").header("host", "x"), |r, t| {
                    r.header("content-type", *t)
                })
        };
        assert!(!refused(typed(&["application/json"])));
        assert!(refused(typed(&["application/json", "text/plain"])));
        assert!(refused(typed(&["application/json", "application/json"])));
    }

    #[test]
    fn only_100_continue_is_an_expectation_met() {
        let expect = |value| {
            Request::post("/")
                .header("host", "x")
                .header("expect", value)
        };
        assert!(!refused(expect("100-continue")));
        assert!(!refused(expect("100-Continue")));
        assert!(!refused(expect(" 100-continue , ")));
        assert!(refused(expect("200-ok")));
        assert!(refused(expect("100-continue, x=1")));
        assert!(refused(expect("100-continue=1")));
        assert!(!refused(expect("200-ok").version(Version::HTTP_10)));
    }

    #[test]
    fn a_host_is_a_uri_host_with_an_optional_port() {
        for valid in [
            "chat.example",
            "chat.example:8000",
            "chat.example:",
            "127.0.0.1:80",
            "127.0.0.1:65535",
            "chat.example:08000",
            "[::1]",
            "[::1]:8000",
            "[2001:db8::7]",
            "a-b_c~d!$&'()*+,;=",
        ] {
            assert!(is_valid_host(valid.as_bytes()), "{valid:?}");
        }
        for invalid in [
            "user@chat.example",
            "user:pass@chat.example",
            "chat.example:80:80",
            "chat.example:http",
            "chat.example:-1",
            "chat.example:65536",
            "chat.example:999999999999",
            "chat example",
            "chat.example/path",
            "chat.example?x",
            "chat.example#x",
            "[::1",
            "::1",
            "[chat.example]",
            "a[::1]",
            "[::1]x",
            "[::1]:8000]",
            "[v1.x]",
            "[fe80::1%25eth0]",
            "ch%61t.example",
            "chat\\.example",
            "ch\u{e9}t.example",
            "<chat>",
            ":80",
            ":",
            "",
            ".",
            ".:80",
            ".lab.example",
            "chat..example",
        ] {
            assert!(!is_valid_host(invalid.as_bytes()), "{invalid:?}");
        }
        assert!(refused(Request::get("/").header("host", "a@b")));
        assert!(refused(Request::get("http://u@x/").header("host", "x")));
        assert!(refused(Request::get("http://x:70000/").header("host", "x")));
        assert!(!refused(Request::get("http://x:8000/").header("host", "y")));
        assert!(refused(Request::get("http://x/").header("host", "x:y")));
    }
}
