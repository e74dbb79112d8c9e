//! Checks of a request's head that hyper leaves to the server, made by the
//! front door before the request goes anywhere: the `Host` header, the
//! form of the request-target (RFC 9112 §3.2, §3.2.2–§3.2.4) and the
//! transfer codings (§6.1).
//!
//! A request that fails one is refused without its body being read, and
//! the connection closes after the answer: what is left of the body would
//! be read as the next request.

use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode, Version};

use super::dispatch::{json_response, Body};
use super::echo::echo;

/// The refusal of a request whose head `parts` breaks the rules above, in
/// the JSON error shape with `Connection: close`; `None` when it keeps them.
///
/// - 400 for an HTTP/1.1 request with no `Host`, or any request with more
///   than one `Host` line (RFC 9112 §3.2); an HTTP/1.0 request may have
///   none.
/// - 400 for a request-target in authority-form (`host:port`) on any
///   method but CONNECT (§3.2.3), or in asterisk-form (`*`) on any method
///   but OPTIONS (§3.2.4).
/// - 501 for a transfer coding other than `chunked` (§6.1): hyper undoes
///   the chunking only, and would hand on a body still coded.
pub fn refusal(parts: &Parts) -> Option<Response<Body>> {
    let (status, error) = match host_error(parts).or_else(|| target_error(parts)) {
        Some(error) => (StatusCode::BAD_REQUEST, error.to_owned()),
        None => (StatusCode::NOT_IMPLEMENTED, coding_error(parts)?),
    };
    let mut response = json_response(status, &error);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(response)
}

/// Why the request's `Host` lines break RFC 9112 §3.2, if they do.
fn host_error(parts: &Parts) -> Option<&'static str> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Some("the request has more than one Host header (RFC 9112 §3.2)"),
        (None, None) if parts.version >= Version::HTTP_11 => {
            Some("an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)")
        }
        _ => None,
    }
}

/// Why the request-target's form does not fit the method, if it does not.
fn target_error(parts: &Parts) -> Option<&'static str> {
    let uri = &parts.uri;
    if uri.scheme().is_none() && uri.authority().is_some() && parts.method != Method::CONNECT {
        return Some(
            "a request-target of the form host:port is for CONNECT only (RFC 9112 §3.2.3)",
        );
    }
    if uri.path() == "*" && parts.method != Method::OPTIONS {
        return Some("the request-target * is for OPTIONS only (RFC 9112 §3.2.4)");
    }
    None
}

/// Why the request's transfer codings cannot be undone, if they cannot.
fn coding_error(parts: &Parts) -> Option<String> {
    let lines = parts.headers.get_all(header::TRANSFER_ENCODING).iter();
    lines
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"chunked"))
        .map(|coding| {
            format!(
                "transfer coding {} is not supported; only chunked is (RFC 9112 §6.1)",
                echo(&String::from_utf8_lossy(coding))
            )
        })
}

#[cfg(test)]
mod tests {
    use hyper::{Request, Version};

    use super::refusal;

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
    }
}
