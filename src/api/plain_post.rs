//! A plain `POST /api/messages`, answered by the front door itself.
//!
//! Storing a message is the one request whose rate a deployment is sized
//! by, and handing it to Rocket ([`crate::api::dispatch`]: the request
//! rebuilt header by header, routing, fairings, the response copied back)
//! was more than a third of what a post costs outside the store's commit
//! (see `docs/performance.md`). So a post that nothing but the
//! message route could answer, and that route would store, is answered
//! here with the same functions: [`body::parse_json`],
//! [`PostBody::validate`] and [`messages::store`]. Every other request
//! goes to Rocket as before, including a post whose body the route would
//! refuse (its 400, 413 or 415 comes from Rocket), so what a client gets
//! does not depend on which way its request went. At log level `normal`
//! a post answered here is logged as Rocket logs a request, with its
//! answer's status.
//!
//! A post is plain when it is exactly `POST /api/messages`, without a
//! query (Rocket's checks refuse a repeated query field), says its body
//! is JSON, and carries neither `Origin` nor `Sec-Fetch-Site`: browsers
//! send one of them, and their posts go through Rocket's cross-site
//! check ([`crate::api::checks`]); a request with neither passes that
//! check. Nor does it carry a precondition (`If-Match`, `If-None-Match`),
//! which the route evaluates ([`crate::api::messages::create`]).

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};

use super::body::{self, BODY_LIMIT_BYTES};
use super::dispatch::{whole, Body};
use super::echo::echo;
use super::headers::add_security_headers;
use super::messages::{self, PostBody};
use crate::chat::Chat;

/// Whether the request whose head is `parts` is a plain post (see the
/// module docs), which [`answer`] may answer.
pub fn is_plain(parts: &Parts) -> bool {
    parts.method == Method::POST
        && parts.uri.path() == "/api/messages"
        && parts.uri.query().is_none()
        && !parts.headers.contains_key(header::ORIGIN)
        && !parts.headers.contains_key("sec-fetch-site")
        && !parts.headers.contains_key(header::IF_MATCH)
        && !parts.headers.contains_key(header::IF_NONE_MATCH)
        && parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(body::is_json_content_type)
}

/// The answer to a plain post (head `parts`) whose body is `data`, when the message route
/// would store it: 201 with the message, or the store's refusal (409,
/// 503, 507, 500), each with the headers Rocket's answer has (`server`
/// is Rocket's, as the front door was given it). `None` when the route
/// would refuse the body (too large, malformed, an invalid field): Rocket
/// answers that, and nothing was stored.
pub async fn answer(
    chat: &Chat,
    parts: &Parts,
    data: &[u8],
    server: Option<&HeaderValue>,
) -> Option<Response<Body>> {
    if data.len() as u64 > BODY_LIMIT_BYTES {
        return None;
    }
    let post: PostBody = body::parse_json(data).ok()?;
    let new = post.validate().ok()?;
    // In the order Rocket's answer has them.
    let mut headers = HeaderMap::with_capacity(10);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let (status, bytes) = match messages::store(chat, new).await {
        Ok(created) => {
            if let Ok(location) = HeaderValue::from_str(&created.location()) {
                headers.insert(header::LOCATION, location);
            }
            if created.replayed() {
                headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            (StatusCode::CREATED, created.body())
        }
        Err(error) => {
            if let Some(secs) = error.retry_after_secs() {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            let status = StatusCode::from_u16(error.status.code)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, error.body())
        }
    };
    if let Some(server) = server {
        headers.insert(header::SERVER, server.clone());
    }
    add_security_headers(&mut headers);
    // Rocket's layout (`crate::logging`): the request, then its outcome on
    // an indented line (a target ending in `_`).
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    log::info!(target: "simplechat::api::plain_post", "{}", request_line(content_type));
    log::info!(target: "simplechat::api::plain_post_", "Answered by the front door: {status}");
    Some(whole(status, headers, bytes))
}

/// The log line naming a plain post whose `Content-Type` is
/// `content_type`: the client's value as an error echoes it ([`echo`]), so
/// it can neither flood the log nor break or reorder the line.
fn request_line(content_type: &str) -> String {
    format!("POST /api/messages {}:", echo(content_type))
}

#[cfg(test)]
mod tests {
    use hyper::Request;

    use super::{is_plain, request_line};

    #[test]
    fn the_logged_content_type_is_echoed() {
        assert_eq!(
            request_line("application/json"),
            "POST /api/messages application/json:"
        );
        let line = request_line("application/json; x=\"\n\u{202e}\"");
        assert_eq!(
            line,
            "POST /api/messages application/json; x=\"\\u{a}\\u{202e}\":"
        );
        let long = format!("application/json; x={}", "y".repeat(500));
        assert!(request_line(&long).ends_with("y…:"));
        assert!(request_line(&long).chars().count() < 120);
    }

    fn parts(build: hyper::http::request::Builder) -> hyper::http::request::Parts {
        build.body(()).unwrap().into_parts().0
    }

    fn post(uri: &str) -> hyper::http::request::Builder {
        Request::post(uri).header("content-type", "application/json")
    }

    /// What a script or the lab's client sends is answered by the front
    /// door; anything Rocket's checks or route could answer otherwise goes
    /// to Rocket.
    #[test]
    fn only_a_post_nothing_else_could_answer_is_plain() {
        assert!(is_plain(&parts(post("/api/messages"))));
        assert!(is_plain(&parts(
            Request::post("/api/messages")
                .header("content-type", "application/json; charset=utf-8")
        )));
        assert!(is_plain(&parts(
            Request::post("/api/messages").header("content-type", "application/problem+json")
        )));
        for not_plain in [
            post("/api/messages?x=1&x=2"),
            post("/api/messages/"),
            post("//api/messages"),
            post("/api/messages").header("origin", "http://elsewhere.example"),
            post("/api/messages").header("sec-fetch-site", "same-origin"),
            Request::post("/api/messages"),
            Request::post("/api/messages").header("content-type", "text/plain"),
            Request::post("/api/messages")
                .header("content-type", "application/x-www-form-urlencoded"),
            Request::put("/api/messages").header("content-type", "application/json"),
        ] {
            let parts = parts(not_plain);
            assert!(!is_plain(&parts), "{} {:?}", parts.method, parts);
        }
    }
}
