//! Hands each request the front door ([`crate::api::front`]) reads to Rocket
//! in this process, and Rocket's response back.
//!
//! Rocket 0.5.2's listener is private, so it cannot be given the front
//! door's connections; its public way to run a request through the whole
//! application (request fairings, routing, guards, handlers, catchers,
//! response fairings, the `Server` header, `HEAD` body stripping) without a
//! socket is the local client ([`rocket::local::asynchronous::Client`]),
//! whose `dispatch` calls the same `Rocket::dispatch` Rocket's own server
//! calls. What Rocket's server does before that, building the request from
//! hyper's (method, origin as sent, `Host` (the target's authority for an
//! absolute-form target, RFC 9112 §3.2.2), remote address, cookies from
//! `Cookie`, every header whose value is UTF-8: `Request::from_hyp` in
//! Rocket 0.5.2's `request/request.rs`), is done here the same way; the body
//! is read first, up to one byte more than the largest body any route
//! accepts ([`BODY_LIMIT_BYTES`]), so a route that reads it still refuses an
//! oversized one with 413; a post its route refuses from the headers alone
//! is handed on without its body, which is never read (no `100 Continue`),
//! and the connection closes after the answer.
//!
//! A `GET /api/events` is not handed to Rocket: its body never ends, and
//! the front door serves the event stream itself
//! ([`crate::api::events::stream`]), with the head Rocket's route gives it,
//! asked of Rocket once at start (`HEAD /api/events`), so the fairings'
//! headers cannot drift apart. Every other response of the application has
//! a body of known length, read whole before it is sent; one of unknown
//! length is read for as long as a request's body may take, and up to
//! [`UNSIZED_BODY_LIMIT`], and answered 500 beyond either, so a response
//! that never ends cannot hold a connection and grow in memory.
//!
//! A plain `POST /api/messages` (JSON, from a client that is not a
//! browser) is answered without Rocket too, by the same functions its route
//! calls ([`crate::api::plain_post`]); so is `OPTIONS *`, whose target is
//! no path for Rocket to route, with the methods of Rocket's routes
//! ([`crate::api::options`]).
//!
//! A request's body must arrive within the same time as its head
//! (`header_timeout_secs`), counted from when the head has arrived: a
//! client that stops sending it gets `408` and the connection closes,
//! instead of holding its connection slot for as long as it likes.

use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use rocket::http::uri::{Host, Origin};
use rocket::http::{Cookie, Header};
use rocket::local::asynchronous::Client;
use tokio::io::AsyncReadExt;

use crate::api::body::{self, BODY_LIMIT_BYTES};
use crate::api::budget;
use crate::api::echo::echo;
use crate::api::events;
use crate::api::front::RefusalLog;
use crate::api::headers::{add_security_headers, SECURITY_HEADERS};
use crate::api::message_head;
use crate::api::options;
use crate::api::plain_post;
use crate::api::socket::PeerClosed;
use crate::chat::Chat;
use crate::hosts::AllowedHosts;

/// A response body the front door sends: whole bytes, or an event stream.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// The method the client sent, where Rocket would take another: one it
/// cannot name (Rocket is given TRACE), or a POST (which Rocket's form
/// `_method` field would rename). Set only here.
pub const ORIGINAL_METHOD: &str = "x-simplechat-original-method";

/// The most bytes of a Rocket response of unknown length the front door
/// reads (none of the application's is that long; see the module docs).
pub const UNSIZED_BODY_LIMIT: u64 = 4 << 20;

/// The header Rocket's `client_ip` reads before the remote address (its
/// `ip_header` setting's default): a client's own value is dropped, so
/// the address is the peer's.
const REAL_IP: &str = "x-real-ip";

/// What the front door needs to serve `GET /api/events` itself: the
/// application's [`Chat`] and its heartbeat interval.
pub struct EventSource {
    /// The chat Rocket manages (a clone shares its cache and store).
    pub chat: Chat,
    /// How often an idle stream gets a heartbeat comment.
    pub heartbeat: Duration,
}

/// The application, ready to answer requests: Rocket behind its local
/// client, and the event streams served beside it.
pub struct Dispatch<S> {
    client: Client,
    /// The `Host` values answered; any other gets 421.
    hosts: AllowedHosts,
    /// When a refused host is logged.
    host_refusals: Mutex<RefusalLog>,
    events: EventSource,
    /// The head of every event stream (see the module docs).
    stream_head: HeaderMap,
    /// The `Allow` of `OPTIONS *`: every method the routes take.
    server_allow: HeaderValue,
    /// How long a request's body may take to arrive once its head has.
    body_timeout: Duration,
    /// Whether clients are told apart by address, each with its share of
    /// the budget of large responses ([`budget`]).
    by_address: bool,
    shutdown: S,
}

impl<S> Dispatch<S>
where
    S: Future<Output = ()> + Send + Clone + Unpin + 'static,
{
    /// Wraps a launched local `client`; a request for a host `hosts` does
    /// not answer gets 421; a request's body must arrive within
    /// `body_timeout` of its head; clients are told apart by address when
    /// `by_address` (`max_connections_per_client` is on); event streams
    /// end when `shutdown` resolves.
    ///
    /// Errors: Rocket's `/api/events` route does not answer `HEAD` with
    /// `200` and `text/event-stream` (one line).
    pub async fn new(
        client: Client,
        hosts: AllowedHosts,
        events: EventSource,
        body_timeout: Duration,
        by_address: bool,
        shutdown: S,
    ) -> Result<Self, String> {
        let response = crate::logging::own_request(client.head("/api/events").dispatch()).await;
        let mut stream_head = HeaderMap::new();
        copy_headers(response.headers(), &mut stream_head);
        add_security_headers(&mut stream_head);
        let is_stream = stream_head
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
        if response.status().code != 200 || !is_stream {
            return Err(format!(
                "HEAD /api/events answered {} without an event stream",
                response.status()
            ));
        }
        stream_head.remove(header::CONTENT_LENGTH);
        drop(response);
        let server_allow =
            HeaderValue::from_str(&options::server_methods(client.rocket().routes()))
                .map_err(|e| format!("the methods of the routes are no Allow value: {e}"))?;
        Ok(Dispatch {
            client,
            hosts,
            host_refusals: Mutex::new(RefusalLog::default()),
            events,
            stream_head,
            server_allow,
            body_timeout,
            by_address,
            shutdown,
        })
    }

    /// The application's answer to `req` from `peer`. Never fails: a head
    /// that breaks RFC 9112's rules on `Host` or the request-target gets
    /// 400 ([`message_head`]); a host not answered 421
    /// ([`crate::hosts`]); a body that breaks off gets 400, one that
    /// stops arriving 408 (and the connection closes).
    /// An event stream also ends when `closed` says the client has gone.
    pub async fn answer(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        closed: PeerClosed,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        if let Some(refusal) = message_head::refusal(&parts) {
            return refusal;
        }
        if let Some(scheme) = foreign_scheme(&parts) {
            let why = format!(
                "this server does not answer for {}: URIs, only http and https ones",
                echo(scheme)
            );
            return self.refuse_host(&why, peer);
        }
        // Checked here, and given to Rocket below as the request's host.
        let host = request_host(&parts);
        if let Err(refused) = self.hosts.answers(host) {
            return self.refuse_host(&refused.explain(&echo(&refused.name)), peer);
        }
        // Whose share of the budget of large responses it takes from.
        let client = self.by_address.then(|| peer.ip().to_canonical());
        if parts.method == Method::GET && parts.uri.path() == "/api/events" {
            if let Some(query) = events_query(parts.uri.query()) {
                return self
                    .event_stream(&parts.headers, query, client, closed)
                    .await;
            }
        }
        let refused_by_head = body_refusal(&parts).is_some();
        let data =
            match tokio::time::timeout(self.body_timeout, read_body(body, refused_by_head)).await {
                Ok(Ok(data)) => data,
                Ok(Err(e)) => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &format!("cannot read the request body: {e}"),
                    )
                }
                Err(_) => {
                    let mut response = json_response(
                        StatusCode::REQUEST_TIMEOUT,
                        &format!(
                            "the request body did not arrive within {} s",
                            self.body_timeout.as_secs()
                        ),
                    );
                    // What is left of the body would be read as the next
                    // request: hyper closes the connection after this answer.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return response;
                }
            };
        if parts.method == Method::OPTIONS && parts.uri.path() == "*" {
            return self.server_options();
        }
        if !refused_by_head && plain_post::is_plain(&parts) {
            let server = self.stream_head.get(header::SERVER);
            if let Some(response) =
                plain_post::answer(&self.events.chat, &parts, &data, server).await
            {
                return response;
            }
        }
        let (method, original) = match rocket_method(&parts.method) {
            // Rocket takes a form post whose first field is `_method` for
            // that method before any fairing runs (its own form feature,
            // which this application does not offer): the method sent goes
            // with it, and `checks` puts it back.
            Some(method) if parts.method == Method::POST => (method, Some("POST")),
            Some(method) => (method, None),
            // Rocket refuses a method it cannot name as a malformed request
            // (400); no route has TRACE, so Rocket answers 405 with the
            // path's methods, naming the method sent.
            None => (rocket::http::Method::Trace, Some(parts.method.as_str())),
        };
        let mut request = self.client.req(method, "/");
        // As sent, not re-parsed: what Rocket's own server does.
        let path_and_query = parts.uri.path_and_query();
        request.set_uri(Origin::new(
            parts.uri.path().to_owned(),
            path_and_query.and_then(|p| p.query()).map(str::to_owned),
        ));
        if let Some(host) = host.and_then(|h| Host::parse_owned(h.to_owned()).ok()) {
            request.set_host(host);
        }
        request.set_remote(peer);
        for value in parts.headers.get_all(header::COOKIE) {
            // Every cookie of the site comes in one header, other apps' on
            // this host too: one of them with a byte that is not visible
            // ASCII (which `to_str` refuses), or not UTF-8 (which Rocket's
            // own server refuses), must not cost this app its own.
            let value = String::from_utf8_lossy(value.as_bytes());
            for cookie in value.split(';').map(str::trim) {
                if let Ok(cookie) = Cookie::parse_encoded(cookie.to_owned()) {
                    request = request.cookie(cookie);
                }
            }
        }
        for (name, value) in &parts.headers {
            if name == REAL_IP || name == ORIGINAL_METHOD {
                continue;
            }
            // As UTF-8 (`to_str` would take visible ASCII only, and drop,
            // say, a quoted `é`), with U+FFFD for bytes that are not: a
            // value left out would be a condition, an `Origin` or a second
            // `Origin` not sent, while RFC 9110 §5.5 lets a value hold such
            // bytes (an entity-tag may); taken so, it matches nothing.
            request.add_header(Header::new(
                name.as_str().to_owned(),
                header_text(value).into_owned(),
            ));
        }
        if let Some(original) = original {
            request.add_header(Header::new(ORIGINAL_METHOD, original.to_owned()));
        }
        request.set_body(data);

        // What a large response took from the budget is held by its body
        // until it is sent (`api::budget`).
        let (mut response, mut held) = budget::scope(client, request.dispatch()).await;
        let status = StatusCode::from_u16(response.status().code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Room for Rocket's headers, the security headers and a HEAD's
        // length, so the map is not grown on the way.
        let mut headers =
            HeaderMap::with_capacity(response.headers().len() + SECURITY_HEADERS.len() + 1);
        copy_headers(response.headers(), &mut headers);
        add_security_headers(&mut headers);
        let is_head = parts.method == Method::HEAD;
        let preset_size = response.body().preset_size();
        // A HEAD's body was stripped; its length is the GET's, as Rocket's
        // own server would send it.
        let head_length = preset_size.filter(|_| is_head);
        // Read into a buffer of the body's size when Rocket knows it (every
        // response but a stream's), instead of one that doubles as it fills
        // and copies what it holds each time (`into_bytes`).
        let size = if is_head { 0 } else { preset_size.unwrap_or(0) };
        if held.is_none() {
            held = budget::take(client, size).await;
        }
        let mut bytes = Vec::with_capacity(size);
        if preset_size.is_some() || is_head {
            if response.read_to_end(&mut bytes).await.is_err() {
                bytes.clear();
            }
        } else {
            let mut bounded = (&mut response).take(UNSIZED_BODY_LIMIT + 1);
            let read = tokio::time::timeout(self.body_timeout, bounded.read_to_end(&mut bytes));
            if !matches!(read.await, Ok(Ok(n)) if (n as u64) <= UNSIZED_BODY_LIMIT) {
                log::error!(
                    "{} {}: a response of unknown length did not end within {} s and {} bytes",
                    echo(parts.method.as_str()),
                    echo(parts.uri.path()),
                    self.body_timeout.as_secs(),
                    UNSIZED_BODY_LIMIT
                );
                return json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the response did not end",
                );
            }
        }
        if let Some(length) = head_length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        if refused_by_head {
            // The body is left unread, and would be read as the next request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if held.is_some() {
            let body = budget::Holding::new(Bytes::from(bytes), held)
                .map_err(|never| match never {})
                .boxed_unsync();
            return with_head(status, headers, body);
        }
        whole(status, headers, bytes)
    }

    /// The answer to `OPTIONS *` (RFC 9110 §9.3.7): 204 with the methods
    /// the server answers in `Allow`, and the headers every answer has;
    /// logged as Rocket logs a request (level `normal`).
    fn server_options(&self) -> Response<Body> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ALLOW, self.server_allow.clone());
        if let Some(server) = self.stream_head.get(header::SERVER) {
            headers.insert(header::SERVER, server.clone());
        }
        add_security_headers(&mut headers);
        let status = StatusCode::NO_CONTENT;
        log::info!(target: "simplechat::api::options", "OPTIONS *:");
        log::info!(target: "simplechat::api::options_", "Answered by the front door: {status}");
        whole(status, headers, Bytes::new())
    }

    /// 421 with `why` (a host, or a scheme, this server does not answer
    /// for), logged at most once a minute ([`RefusalLog`]): a
    /// proxy forwarding a name not in `allowed_hosts` shows in the journal,
    /// a client sending such requests in a loop does not flood it. The
    /// connection closes after it, as the request was meant for another
    /// server (RFC 9110 §15.5.20 lets the client retry on a new one).
    fn refuse_host(&self, why: &str, peer: SocketAddr) -> Response<Body> {
        let due = self
            .host_refusals
            .lock()
            .map(|mut log| log.refused(Instant::now()))
            .unwrap_or_default();
        if let Some(refused) = due {
            log::warn!(
                "refused a request from {}: {why}; {refused} refused so since the last such \
                 line, which comes at most once a minute",
                peer.ip().to_canonical()
            );
        }
        let mut response = json_response(StatusCode::MISDIRECTED_REQUEST, why);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }

    /// The event stream for a request with `headers`, resuming where its `Last-Event-ID`,
    /// else `after`, says ([`events::Resume`]), with the heartbeat the
    /// query asks for; answered once the stream knows where it starts
    /// ([`events::stream`]).
    async fn event_stream(
        &self,
        headers: &HeaderMap,
        query: EventsQuery,
        client: Option<IpAddr>,
        closed: PeerClosed,
    ) -> Response<Body> {
        let EventsQuery {
            after,
            heartbeat_events,
        } = query;
        // Which of two would name where to resume is arbitrary.
        if headers.get_all("last-event-id").iter().nth(1).is_some() {
            return json_response(
                StatusCode::BAD_REQUEST,
                "header Last-Event-ID is given more than once",
            );
        }
        // A header of bytes that are not visible ASCII is still a named
        // id, and no message's.
        let last_event_id = headers
            .get("last-event-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()));
        let resume = events::Resume::named(last_event_id.as_deref(), after.as_deref());
        // Ends at shutdown, or once the client has closed the connection:
        // a stream whose client went no longer holds its connection until
        // its next heartbeat. The watch is polled only when its own wake
        // comes (`FuturesUnordered` keeps the futures that were woken):
        // polled with every event, it cost the fan-out about 300
        // instructions per event (callgrind).
        let watch: FuturesUnordered<_> = std::iter::once(closed.closed()).collect();
        let end = futures::future::select(self.shutdown.clone(), watch.into_future()).map(|_| ());
        let heartbeat = events::Heartbeat {
            every: self.events.heartbeat,
            as_event: heartbeat_events,
        };
        let stream = events::stream(self.events.chat.clone(), heartbeat, resume, client, end).await;
        let body = StreamBody::new(stream.map(|bytes| Ok::<_, hyper::Error>(Frame::data(bytes))));
        let mut response = Response::new(body.boxed_unsync());
        *response.headers_mut() = self.stream_head.clone();
        response
    }
}

/// The host a request is for: the authority of an absolute-form target
/// (`GET http://chat.example/ HTTP/1.1`), which RFC 9112 §3.2.2 says
/// replaces `Host` (a server MUST ignore `Host` then), else the `Host`
/// header. What the request checks compare `Origin` with
/// ([`crate::api::checks`]), so a `Host` the target contradicts cannot
/// pass them.
fn request_host(parts: &Parts) -> Option<&str> {
    match parts.uri.authority() {
        Some(authority) if parts.uri.scheme().is_some() => Some(authority.as_str()),
        _ => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
    }
}

/// The scheme of an absolute-form target (`GET ftp://chat.example/ HTTP/1.1`)
/// other than `http` and `https`, the schemes whose resources this server
/// serves (RFC 9110 §4.2): for any other it can give no authoritative
/// answer, which is a 421 (RFC 9110 §15.5.20), as for a host it does not
/// answer. `https` is answered though the connection is not TLS: behind a
/// proxy that ends TLS, that is the scheme the client used.
fn foreign_scheme(parts: &Parts) -> Option<&str> {
    let scheme = parts.uri.scheme_str()?;
    let served = ["http", "https"]
        .iter()
        .any(|ours| scheme.eq_ignore_ascii_case(ours));
    (!served).then_some(scheme)
}

/// What an event-stream query asks for.
#[derive(Debug, Default, PartialEq)]
struct EventsQuery {
    /// The `after` field, if any.
    after: Option<String>,
    /// `heartbeat=event`: heartbeats as events ([`events::Heartbeat`]);
    /// another value is ignored, as an unknown field is.
    heartbeat_events: bool,
}

/// The fields of an event-stream query, decoded as Rocket decodes a query
/// (`+` is a space, then percent-decoding), each named by its key as
/// Rocket reads names ([`body::field_key`]: `after[]` is `after`); `None`
/// when a field is given twice, which Rocket's request checks refuse
/// ([`crate::api::checks`]), so the request goes to Rocket.
fn events_query(query: Option<&str>) -> Option<EventsQuery> {
    let Some(query) = query else {
        return Some(EventsQuery::default());
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut names = std::collections::HashSet::new();
    let mut fields = EventsQuery::default();
    for field in query.split('&').filter(|f| !f.is_empty()) {
        let (name, value) = field.split_once('=').unwrap_or((field, ""));
        let name = decode(name);
        let key = body::field_key(&name);
        match key {
            "after" => fields.after = Some(decode(value)),
            "heartbeat" => fields.heartbeat_events = decode(value) == "event",
            _ => {}
        }
        if !names.insert(key.to_owned()) {
            return None;
        }
    }
    Some(fields)
}

/// The refusal the route a POST goes to makes of its body from its
/// headers alone ([`body::head_refusal`]), if it makes one: such a body is
/// not read, so a client that waits for `100 Continue` gets the refusal
/// instead, and Rocket is handed the request without it, to answer it the
/// same way (after its own checks, which come first).
fn body_refusal(parts: &Parts) -> Option<crate::api::error::ApiError> {
    if parts.method != Method::POST {
        return None;
    }
    let kind = body::BodyKind::of_post(parts.uri.path())?;
    let text = |name| parts.headers.get(name).map(header_text);
    let (content_type, content_length) = (text(header::CONTENT_TYPE), text(header::CONTENT_LENGTH));
    let content_encoding: Vec<_> = parts
        .headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(header_text)
        .collect();
    body::head_refusal(
        kind,
        body::BodyHeaders {
            content_type: content_type.as_deref(),
            content_length: content_length.as_deref(),
            content_encoding: content_encoding.iter().map(|c| c.as_ref()).collect(),
        },
    )
}

/// A header's value as text, with U+FFFD for bytes that are not UTF-8:
/// such a value is refused as not valid, not taken for none.
fn header_text(value: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

/// Reads a request body, up to one byte more than any route accepts;
/// nothing when `refused` (the answer does not need it).
async fn read_body(mut body: Incoming, refused: bool) -> Result<Vec<u8>, hyper::Error> {
    if refused {
        return Ok(Vec::new());
    }
    let most = usize::try_from(BODY_LIMIT_BYTES).unwrap_or(usize::MAX - 1) + 1;
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(chunk) = frame?.into_data() {
            let room = most - data.len();
            data.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if data.len() == most {
                break;
            }
        }
    }
    Ok(data)
}

/// The Rocket method for `method`, if Rocket 0.5 can name it.
fn rocket_method(method: &Method) -> Option<rocket::http::Method> {
    use rocket::http::Method as M;
    Some(match *method {
        Method::GET => M::Get,
        Method::PUT => M::Put,
        Method::POST => M::Post,
        Method::DELETE => M::Delete,
        Method::OPTIONS => M::Options,
        Method::HEAD => M::Head,
        Method::TRACE => M::Trace,
        Method::CONNECT => M::Connect,
        Method::PATCH => M::Patch,
        _ => return None,
    })
}

/// Copies Rocket's response headers into hyper's; a name or value hyper
/// would refuse (none of the application's) is left out.
fn copy_headers(from: &rocket::http::HeaderMap<'_>, to: &mut HeaderMap) {
    for h in from.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name().as_str().as_bytes()),
            HeaderValue::from_str(h.value()),
        ) {
            to.append(name, value);
        }
    }
}

/// A response with `status` and the JSON error shape `{"error": ...}`.
pub fn json_response(status: StatusCode, error: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": error }).to_string();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    add_security_headers(&mut headers);
    whole(status, headers, body)
}

/// A response of `status` and `headers` whose body is `bytes`, whole.
pub fn whole(status: StatusCode, headers: HeaderMap, bytes: impl Into<Bytes>) -> Response<Body> {
    let body = Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    with_head(status, headers, body)
}

/// A response of `status` and `headers` with `body`.
fn with_head(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::{events_query, EventsQuery};

    #[test]
    fn event_queries_are_decoded_as_rocket_decodes_them() {
        let after = |a: &str| {
            Some(EventsQuery {
                after: Some(a.into()),
                heartbeat_events: false,
            })
        };
        assert_eq!(events_query(None), Some(EventsQuery::default()));
        assert_eq!(events_query(Some("after=ab")), after("ab"));
        assert_eq!(events_query(Some("x=1&&after=%61b")), after("ab"));
        assert_eq!(events_query(Some("af%74er=a+b")), after("a b"));
        assert_eq!(events_query(Some("lang=en")), Some(EventsQuery::default()));
        assert_eq!(events_query(Some("after=a&after=b")), None);
        assert_eq!(events_query(Some("after=a&aft%65r=b")), None);
        assert_eq!(
            events_query(Some("heartbeat=event&after=x")),
            Some(EventsQuery {
                after: Some("x".into()),
                heartbeat_events: true,
            })
        );
        assert_eq!(
            events_query(Some("heartbeat=comment")),
            Some(EventsQuery::default())
        );
        assert_eq!(events_query(Some("heartbeat=event&heartbeat=event")), None);
    }
}
