//! The front door: the listener clients connect to, in front of Rocket.
//!
//! Rocket 0.5.2 serves each connection with hyper but sets no header read
//! timeout (it passes `None`), has no idle bound for HTTP/1.1 keep-alive,
//! no bound on open connections, and lets hyper answer a malformed request
//! line (400), an over-long URI (414) or oversized headers (431) with an
//! empty body; none of it is configurable and its listener is private. So
//! clients talk to this hyper 1 server (the same well-kept HTTP stack
//! Rocket uses, configured here), which forwards each request over a
//! pooled loopback connection (hyper-util's client) to Rocket, listening
//! on 127.0.0.1 only:
//!
//! - a request's headers must arrive within `header_timeout_secs`,
//!   counted from when the connection opens or its previous response
//!   ends, so a slow or idle connection closes (hyper's
//!   `header_read_timeout`); a response in progress, such as an event
//!   stream, is not bounded (its heartbeats keep it alive);
//! - at most `max_connections` are open at once; one more is answered 503
//!   with `Retry-After` and closed, so the process never runs out of file
//!   descriptors and starves everyone;
//! - hyper's own answers to unparsable requests get the JSON error shape
//!   ([`JsonParseErrors`]).
//!
//! A plain `GET /api/events` is not forwarded: the front door serves the
//! event stream itself ([`crate::api::events::stream`]), with the head
//! Rocket's route gives it, asked of Rocket once at start (`HEAD
//! /api/events`), so the fairings' headers cannot drift apart. A
//! subscriber then holds one connection and one task instead of two
//! connections and a task in each server; subscribers are most of the
//! open connections, and live for hours. Anything else on that path (a
//! `HEAD`, a repeated or percent-encoded query field) is forwarded, and
//! Rocket answers it as before.
//!
//! The only hand-written HTTP here is that JSON rewrite of hyper's
//! three automatic refusals; the protocol itself is hyper's.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::api::events;
use crate::chat::Chat;

/// The front door's settings.
#[derive(Debug, Clone, Copy)]
pub struct FrontConfig {
    /// How long a connection may take to send a request's headers, from
    /// when it opens or its previous response ends.
    pub header_timeout: Duration,
    /// The most client connections open at once.
    pub max_connections: usize,
}

/// How long a refused connection is given to send its request and read
/// the 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// The most refused connections answered at once; beyond, they are closed
/// without an answer (each holds a file descriptor while answered).
const MAX_REFUSALS: usize = 64;
/// Wait after `accept` fails (out of file descriptors), so the loop does
/// not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// What the front door needs to serve `GET /api/events` itself: the
/// application's [`Chat`] and its heartbeat interval.
pub struct EventSource {
    /// The chat Rocket manages (a clone shares its cache and store).
    pub chat: Chat,
    /// How often an idle stream gets a heartbeat comment.
    pub heartbeat: Duration,
}

/// Serves clients on `listener`, forwarding to Rocket at `upstream` (and
/// serving plain event-stream requests from `events`), until `shutdown`
/// resolves; then stops accepting, event streams end, and open connections
/// finish their response in progress and close.
pub async fn serve<S>(
    listener: TcpListener,
    upstream: SocketAddr,
    config: FrontConfig,
    events: EventSource,
    shutdown: S,
) where
    S: Future<Output = ()> + Send + Sync + Clone + Unpin + 'static,
{
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // A fixed receive buffer (no autotuning to several MiB): what a slow
    // client has not read waits in the application, which bounds it, not
    // in this process's sockets.
    connector.set_recv_buffer_size(Some(256 * 1024));
    let client: Client<HttpConnector, Incoming> = client.build(connector);
    let events = match stream_head(upstream).await {
        Ok(headers) => Some(Events {
            source: events,
            headers,
        }),
        Err(e) => {
            log::warn!("event streams go through the application: {e}");
            None
        }
    };
    let forward = Arc::new(Forward {
        client,
        upstream,
        events,
        shutdown: shutdown.clone(),
    });
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true)
        // One contiguous write per response head, so [`JsonParseErrors`]
        // sees hyper's automatic refusals whole.
        .writev(false);
    let http = Arc::new(http);
    let mut stop = std::pin::pin!(shutdown.clone());
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let (http, forward, shutdown) = (http.clone(), forward.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let forward = forward.clone();
                        async move { Ok::<_, Infallible>(forward.send(req, peer).await) }
                    });
                    let io = TokioIo::new(JsonParseErrors::new(stream));
                    let conn = http.serve_connection(io, service);
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = shutdown => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                    drop(slot);
                });
            }
            Err(_) => match refusals.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        refuse(stream, config.max_connections).await;
                        drop(permit);
                    });
                }
                Err(_) => drop(stream),
            },
        }
    }
}

/// Answers one request on a connection over the bound with 503 and closes.
async fn refuse(stream: TcpStream, max_connections: usize) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_TIMEOUT)
        .keep_alive(false);
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
        let mut response = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the server has {max_connections} connections open, its most; try again"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        Ok::<_, Infallible>(response)
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, conn).await;
}

fn json_response(status: StatusCode, error: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": error }).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The methods Rocket 0.5 can route.
const ROCKET_METHODS: [Method; 9] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::OPTIONS,
    Method::HEAD,
    Method::TRACE,
    Method::CONNECT,
    Method::PATCH,
];

/// A method Rocket cannot name, as the client sent it (set only here).
pub const ORIGINAL_METHOD: &str = "x-simplechat-original-method";

/// How long the application may take to answer the `HEAD /api/events`
/// the front door asks at start.
const STREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The headers Rocket's `/api/events` route answers with (its own and its
/// fairings'), asked of it with `HEAD`, less those about one connection or
/// one message's framing and date, which hyper sets.
///
/// Errors: the application cannot be reached, or does not answer `200`
/// with `text/event-stream` (one line).
async fn stream_head(upstream: SocketAddr) -> Result<HeaderMap, String> {
    let ask = async {
        let stream = TcpStream::connect(upstream)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = Request::head("/api/events")
            .header(header::HOST, upstream.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())
    };
    let response = tokio::time::timeout(STREAM_HEAD_TIMEOUT, ask)
        .await
        .map_err(|_| "the application did not answer HEAD /api/events".to_owned())??;
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    if response.status() != StatusCode::OK || !is_stream {
        return Err(format!(
            "HEAD /api/events answered {} without an event stream",
            response.status()
        ));
    }
    let mut headers = response.into_parts().0.headers;
    remove_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::DATE);
    Ok(headers)
}

/// The event streams the front door serves itself, and their head.
struct Events {
    source: EventSource,
    headers: HeaderMap,
}

impl Events {
    /// The event stream for `req`, when it is a `GET /api/events` whose
    /// query the front door reads as Rocket would; `None` sends it on to
    /// Rocket.
    fn answer<S>(&self, req: &Request<Incoming>, shutdown: &S) -> Option<Response<Body>>
    where
        S: Future<Output = ()> + Send + Clone + Unpin + 'static,
    {
        if req.method() != Method::GET || req.uri().path() != "/api/events" {
            return None;
        }
        let after = plain_after(req.uri().query())?;
        let last_event_id = req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok());
        let resume_from = events::valid_id(last_event_id).or_else(|| events::valid_id(after));
        let stream = events::stream(
            self.source.chat.clone(),
            self.source.heartbeat,
            resume_from,
            shutdown.clone(),
        );
        let body = StreamBody::new(stream.map(|bytes| Ok::<_, hyper::Error>(Frame::data(bytes))));
        let mut response = Response::new(body.boxed_unsync());
        *response.headers_mut() = self.headers.clone();
        Some(response)
    }
}

/// The `after` field of an event-stream query, `Some(None)` when it has
/// none; `None` when the query is one the front door leaves to Rocket: a
/// field given twice (Rocket refuses it), an empty field, anything
/// percent- or plus-encoded (Rocket decodes it), or more than
/// [`MAX_PLAIN_FIELDS`] fields.
fn plain_after(query: Option<&str>) -> Option<Option<&str>> {
    let Some(query) = query else {
        return Some(None);
    };
    if query.contains(['%', '+']) {
        return None;
    }
    let mut after = None;
    let mut names: Vec<&str> = Vec::new();
    for field in query.split('&') {
        if names.len() == MAX_PLAIN_FIELDS {
            return None;
        }
        let (name, value) = field.split_once('=').unwrap_or((field, ""));
        if name.is_empty() || names.contains(&name) {
            return None;
        }
        names.push(name);
        if name == "after" {
            after = Some(value);
        }
    }
    Some(after)
}

/// The most query fields the front door reads itself on an event-stream
/// request (a browser sends one, `after`); more go to Rocket.
const MAX_PLAIN_FIELDS: usize = 8;

/// Forwards requests to Rocket, but for the event streams it serves itself.
struct Forward<S> {
    client: Client<HttpConnector, Incoming>,
    upstream: SocketAddr,
    events: Option<Events>,
    shutdown: S,
}

impl<S> Forward<S>
where
    S: Future<Output = ()> + Send + Clone + Unpin + 'static,
{
    async fn send(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if let Some(response) = self
            .events
            .as_ref()
            .and_then(|events| events.answer(&req, &self.shutdown))
        {
            return response;
        }
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri = match format!("http://{}{}", self.upstream, path).parse() {
            Ok(uri) => uri,
            Err(_) => return json_response(StatusCode::BAD_REQUEST, "malformed request target"),
        };
        parts.uri = uri;
        remove_hop_by_hop(&mut parts.headers);
        parts.headers.remove(ORIGINAL_METHOD);
        if !ROCKET_METHODS.contains(&parts.method) {
            // Rocket refuses a method it cannot name as a malformed request
            // (400); no route has TRACE, so Rocket answers 405 with the
            // path's methods, naming the method sent.
            if let Ok(method) = HeaderValue::from_str(parts.method.as_str()) {
                parts.headers.insert(ORIGINAL_METHOD, method);
            }
            parts.method = Method::TRACE;
        }
        // Rocket's `client_ip` reads this; a client's own value is replaced.
        if let Ok(ip) = HeaderValue::from_str(&peer.ip().to_string()) {
            parts
                .headers
                .insert(HeaderName::from_static("x-real-ip"), ip);
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed_unsync())
            }
            Err(e) => {
                log::error!("cannot forward a request to the application: {e}");
                json_response(StatusCode::BAD_GATEWAY, "the application did not answer")
            }
        }
    }
}

/// Headers about one connection, not the message (RFC 9110, 7.6.1).
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// A connection whose writes are watched for hyper's automatic answers to
/// requests it could not parse (400 malformed request line or header, 414
/// URI too long, 431 headers too large): hyper writes them with an empty
/// body, whereas every error of this service is JSON. Such an answer is
/// recognised by its head (that status and `content-length: 0`; every
/// response forwarded from the application has a JSON body) and replaced
/// by the same status with a JSON body; hyper closes the connection after
/// it.
pub struct JsonParseErrors<T> {
    inner: T,
    /// The replacement being written, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<T> JsonParseErrors<T> {
    /// Wraps a connection's IO; nothing is replaced until such a head is seen.
    pub fn new(inner: T) -> Self {
        JsonParseErrors {
            inner,
            replacement: None,
        }
    }
}

/// The JSON answer for one of hyper's automatic refusals, if `head` is one.
pub fn json_refusal(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    if !text.ends_with("\r\n\r\n") {
        return None;
    }
    let (status_line, headers) = text.split_once("\r\n")?;
    let error = match status_line {
        "HTTP/1.1 400 Bad Request" => {
            "malformed request: the request line or a header cannot be parsed"
        }
        "HTTP/1.1 414 URI Too Long" => "the request URI is too long",
        "HTTP/1.1 431 Request Header Fields Too Large" => "the request headers are too large",
        _ => return None,
    };
    let empty = headers
        .split("\r\n")
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"));
    if !empty {
        return None;
    }
    let body = serde_json::json!({ "error": error }).to_string();
    Some(
        format!(
            "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             x-content-type-options: nosniff\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: AsyncWrite + Unpin> JsonParseErrors<T> {
    /// Writes what is left of a replacement; `Ready(Ok)` once all is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonParseErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        if let Some(replacement) = json_refusal(buf) {
            // Taken whole: written by this call or by the next flush.
            self.replacement = Some((replacement, 0));
            if let Poll::Ready(Err(e)) = self.poll_replacement(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::json_refusal;

    #[test]
    fn only_hypers_empty_refusals_are_rewritten() {
        let auto =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let rewritten = String::from_utf8(json_refusal(auto).unwrap()).unwrap();
        assert!(rewritten.starts_with("HTTP/1.1 431 "));
        assert!(rewritten.ends_with("{\"error\":\"the request headers are too large\"}"));
        let forwarded = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n";
        assert_eq!(json_refusal(forwarded), None);
        assert_eq!(
            json_refusal(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
    }
}
