//! The front door: the listener clients connect to, in front of Rocket.
//!
//! Rocket 0.5.2 serves each connection with hyper but sets no header read
//! timeout (it passes `None`), has no idle bound for HTTP/1.1 keep-alive,
//! no bound on open connections, and lets hyper answer a malformed request
//! line (400), an over-long URI (414) or oversized headers (431) with an
//! empty body; none of it is configurable and its listener is private. So
//! clients talk to this hyper 1 server (the same well-kept HTTP stack
//! Rocket uses, configured here), which hands each request to Rocket in
//! this process ([`crate::api::dispatch`]):
//!
//! - a request's headers must arrive within `header_timeout_secs`,
//!   counted from when the connection opens or its previous response
//!   ends, so a slow or idle connection closes (hyper's
//!   `header_read_timeout`); its body within as long again
//!   ([`crate::api::dispatch`]); a response that the client takes nothing
//!   of for as long fails, and the connection closes
//!   ([`crate::api::stall`]); a response in progress that the client
//!   reads, such as an event stream, is not bounded (its heartbeats keep
//!   it alive);
//! - at most `max_connections` are open at once; one more is answered 503
//!   with `Retry-After` and closed, so the process never runs out of file
//!   descriptors and starves everyone;
//! - at most `max_connections_per_client` are open at once from one client
//!   address; one more from it is answered the same way (with a log line
//!   at most once a minute), so one client cannot take every connection
//!   ([`ClientCounts`]);
//! - a request's head (request line, headers and the blank line after
//!   them) may be [`MAX_HEAD_BYTES`] long; hyper holds it in memory until it
//!   is whole, and refuses a longer one with 431 (414 when the request line
//!   alone is longer, see [`JsonParseErrors`]);
//! - a client that shuts down its sending side after its request still
//!   gets the answer (hyper's `half_close`), except an event stream, which
//!   ends when its client closes either way ([`crate::api::socket`]);
//! - hyper's own answers to unparsable requests get the JSON error shape
//!   ([`JsonParseErrors`]);
//! - at shutdown it stops accepting, lets each connection finish the
//!   response in progress within Rocket's `shutdown.grace`, then closes
//!   what is left, as Rocket's own server would.
//!
//! The only hand-written HTTP here is that JSON rewrite of hyper's
//! three automatic refusals (with a `Content-Length` hyper cannot hold,
//! and a request line longer than the head may be, told from headers too
//! large); the protocol itself is hyper's.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::api::body;
use crate::api::dispatch::{json_response, Dispatch};
use crate::api::headers::SECURITY_HEADERS;
use crate::api::socket::SharedSocket;
use crate::api::stall::WriteTimeout;
use crate::retry::Backoff;

/// The front door's settings.
#[derive(Debug, Clone, Copy)]
pub struct FrontConfig {
    /// How long a connection may take to send a request's headers, from
    /// when it opens or its previous response ends; and how long a write
    /// of a response may wait for the client to take any of it.
    pub header_timeout: Duration,
    /// The most client connections open at once.
    pub max_connections: usize,
    /// The most client connections open at once from one address; `None`:
    /// no bound but `max_connections`.
    pub max_connections_per_client: Option<usize>,
}

/// The longest request head taken, request line, headers and the blank
/// line (hyper's `max_header_size`, exact), and the size of hyper's read
/// buffer (`max_buf_size`, which it may overshoot by one read), which
/// holds a head until it is whole. hyper's default, a buffer of about
/// 400 KB and no other bound, let 600 connections that each sent most of
/// such a head raise the process from 12 MB to 255 MB; 64 KiB is about
/// twice the largest body ([`body::BODY_LIMIT_BYTES`]) and far more than
/// any browser sends (a cookie is at most 4 KB, and this site sets two),
/// so 1,024 connections hold about 64 MiB of heads at most. The buffer
/// bound also bounds the response bytes hyper queues before it writes
/// them to the socket.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The most header lines a request may have: hyper's default for HTTP/1
/// (`DEFAULT_MAX_HEADERS`, left as it is: `http1::Builder::max_headers`
/// would size its parse by it on every request), which answers more with
/// 431 too.
pub const MAX_HEADERS: usize = 100;

/// How long a refused connection is given to send its request and read
/// the 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// The most refused connections answered at once; beyond, they are closed
/// without an answer (each holds a file descriptor while answered).
const MAX_REFUSALS: usize = 64;
/// The least time between two log lines about connections refused for
/// their address's bound ([`RefusalLog`]).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// The first wait after `accept` fails (out of file descriptors), so the
/// loop does not spin while connections close; it doubles up to
/// [`ACCEPT_BACKOFF_MAX`] while the failures go on.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait between two tries of a failing `accept`: a connection
/// waiting in the backlog is taken at most this late once a descriptor is
/// free.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The most unsent data an accepted socket holds before a write waits
/// (`TCP_NOTSENT_LOWAT`, tcp(7)); Linux wakes a waiting write once less
/// than half of it is left. Without it the kernel's send buffer grows to
/// megabytes and a waiting write is woken only once a third of it has
/// drained, which a slow client may take longer than `header_timeout_secs`
/// to read, though it reads all along ([`crate::api::stall`]). With it, a
/// client that takes 16 KiB within that time is never cut off, and a
/// client that reads nothing holds less memory in the kernel.
const UNSENT_LOW_WATER: u32 = 32 * 1024;

/// Sets [`UNSENT_LOW_WATER`] on `stream`; where the option does not exist
/// the kernel's default behaviour stays.
fn keep_little_unsent(stream: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_LOW_WATER) {
        log::debug!("cannot set TCP_NOTSENT_LOWAT: {e}");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}

/// Serves clients on `listener` with `dispatch` until `shutdown` resolves;
/// then stops accepting and returns once every connection has finished its
/// response in progress (event streams end at shutdown), or after `grace`,
/// when the connections left are closed.
pub async fn serve<S>(
    listener: TcpListener,
    dispatch: Arc<Dispatch<S>>,
    config: FrontConfig,
    grace: Duration,
    shutdown: S,
) where
    S: Future<Output = ()> + Send + Sync + Clone + Unpin + 'static,
{
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let per_client = config.max_connections_per_client.map(ClientCounts::new);
    let mut refusal_log = RefusalLog::default();
    let mut accept_failures = AcceptFailures::default();
    let mut accept_backoff = Backoff::new(ACCEPT_BACKOFF, ACCEPT_BACKOFF_MAX);
    // Told to every connection once the grace period is over.
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    // Vectored writes (hyper's default for a socket): a response's body is
    // sent from its own buffer, not copied behind the head first.
    // A client may shut down its sending side once its request is sent
    // and still wait for the answer (RFC 9112 §9.6); hyper's default takes
    // that end of input as the client gone and drops the request.
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .half_close(true)
        .keep_alive(true);
    let http = Arc::new(http);
    let mut stop = std::pin::pin!(shutdown.clone());
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    if let Some(recovered) = accept_failures.accepted(Instant::now()) {
                        log::warn!("{recovered}");
                        accept_backoff.reset();
                    }
                    accepted
                }
                Err(e) => {
                    if let Some(first) = accept_failures.failed(&e, Instant::now()) {
                        log::warn!("{first}");
                    }
                    // The shutdown is not held up by the wait.
                    tokio::select! {
                        biased;
                        _ = &mut stop => break,
                        _ = accept_backoff.wait() => {}
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        keep_little_unsent(&stream);
        // An IPv4 client of an IPv6 socket is counted as the IPv4 address.
        let address = peer.ip().to_canonical();
        let client = match &per_client {
            None => None,
            Some(counts) => match counts.take(address) {
                Some(client) => Some(client),
                None => {
                    if let Some(refused) = refusal_log.refused(Instant::now()) {
                        log::warn!(
                            "refused a connection from {address}, which has {} open \
                             (max_connections_per_client); {refused} refused for that bound \
                             since the last such line, which comes at most once a minute",
                            counts.max
                        );
                    }
                    let why = format!(
                        "{address} has {} connections open, the most one client address \
                         may; close one and try again",
                        counts.max
                    );
                    refuse_within(&refusals, stream, why);
                    continue;
                }
            },
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let (http, dispatch, shutdown) = (http.clone(), dispatch.clone(), shutdown.clone());
                let mut close = close_rx.clone();
                tokio::spawn(async move {
                    let (socket, closed) = SharedSocket::new(stream);
                    let service = hyper::service::service_fn(move |req| {
                        let (dispatch, closed) = (dispatch.clone(), closed.clone());
                        async move { Ok::<_, Infallible>(dispatch.answer(req, peer, closed).await) }
                    });
                    let io = TokioIo::new(JsonParseErrors::new(
                        WriteTimeout::new(socket, config.header_timeout),
                        MAX_HEAD_BYTES,
                    ));
                    let conn = http.serve_connection(io, service);
                    let mut conn = std::pin::pin!(conn);
                    // Both are polled at each wake of the connection, the
                    // shutdown first: with `ShutdownSignal` one atomic load.
                    tokio::select! {
                        biased;
                        _ = shutdown => {
                            conn.as_mut().graceful_shutdown();
                            tokio::select! {
                                _ = conn.as_mut() => {}
                                _ = close.wait_for(|closing| *closing) => {}
                            }
                        }
                        _ = conn.as_mut() => {}
                    }
                    drop(slot);
                    drop(client);
                });
            }
            Err(_) => {
                drop(client);
                let why = format!(
                    "the server has {} connections open, its most; try again",
                    config.max_connections
                );
                refuse_within(&refusals, stream, why);
            }
        }
    }
    drop(listener);
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        log::warn!(
            "closing {} connections still open after the grace period",
            config.max_connections - slots.available_permits()
        );
        let _ = close_tx.send(true);
    }
}

/// A run of failed `accept`s (an episode), told in two log lines: when it
/// starts, and when a connection is accepted again. Out of file
/// descriptors, `accept` fails until a connection closes, and a line per
/// failure filled the log (77 in 8 s) while saying nothing new.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// When the episode in progress started, and its failures so far.
    since: Option<(Instant, u64)>,
}

impl AcceptFailures {
    /// Counts a failure; the line to log when it starts an episode.
    fn failed(&mut self, error: &io::Error, now: Instant) -> Option<String> {
        if let Some((_, failures)) = &mut self.since {
            *failures += 1;
            return None;
        }
        self.since = Some((now, 1));
        let hint = if error.raw_os_error() == Some(EMFILE) {
            "; raise the open files limit (ulimit -n, systemd's LimitNOFILE) or lower \
             max_connections"
        } else {
            ""
        };
        Some(format!(
            "cannot accept connections: {error}; new connections wait until a descriptor \
             is free, tried again up to once a second, and a line says when they are \
             accepted again{hint}"
        ))
    }

    /// Ends the episode in progress, if any; the line to log then.
    fn accepted(&mut self, now: Instant) -> Option<String> {
        let (since, failures) = self.since.take()?;
        Some(format!(
            "accepting connections again, after {failures} failed tries over {:.1} s",
            now.saturating_duration_since(since).as_secs_f64()
        ))
    }
}

/// "Too many open files" (errno 24 on Linux, the BSDs and macOS).
const EMFILE: i32 = 24;

/// Answers one request on `stream`, a connection over a bound, with 503,
/// `Retry-After` and `why`, and closes it; or, when [`MAX_REFUSALS`] are
/// being answered already, closes it at once.
fn refuse_within(refusals: &Arc<Semaphore>, stream: TcpStream, why: String) {
    match refusals.clone().try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                refuse(stream, why).await;
                drop(permit);
            });
        }
        Err(_) => drop(stream),
    }
}

/// Answers one request on a connection over a bound with 503 and closes.
async fn refuse(stream: TcpStream, why: String) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(false);
    let why = Arc::new(why);
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let why = why.clone();
        async move {
            let mut response = json_response(StatusCode::SERVICE_UNAVAILABLE, &why);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok::<_, Infallible>(response)
        }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, conn).await;
}

/// The connections open from each client address, for
/// `max_connections_per_client`: without it, one client could hold every
/// one of the `max_connections` (an event stream is meant to stay open)
/// and everyone else would get 503. Counted by the peer's IP address, the
/// only thing a connection says of its client before its request; behind
/// a proxy every client has the proxy's.
struct ClientCounts {
    max: usize,
    /// Only addresses with a connection open.
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientCounts {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(ClientCounts {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more connection from `address`, unless it has `max` open
    /// already; uncounted when the slot is dropped.
    fn take(self: &Arc<Self>, address: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: self.clone(),
            address,
        })
    }
}

/// One connection counted against its client's address.
struct ClientSlot {
    counts: Arc<ClientCounts>,
    address: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Entry::Occupied(mut count) = open.entry(self.address) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

/// When to log refusals a client can repeat at will (a connection over its
/// address's bound, a request for a host not answered): a client that
/// opens connections in a loop is refused thousands of times a second,
/// which must not flood the journal. The first refusal is logged,
/// then at most one line per [`REFUSAL_LOG_INTERVAL`], counting the ones
/// in between.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    /// When the next line may come; `None` before the first.
    next: Option<Instant>,
    /// Refusals since the last line.
    unlogged: u64,
}

impl RefusalLog {
    /// Counts a refusal at `now`. `Some(n)` when a line is due: `n`
    /// refusals since the last one, this one included.
    pub(crate) fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self.next.is_some_and(|next| now < next) {
            return None;
        }
        self.next = Some(now + REFUSAL_LOG_INTERVAL);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// A connection whose writes are watched for hyper's automatic answers to
/// requests it could not parse (400 malformed request line or header, 414
/// URI too long, 431 headers too large): hyper writes them with an empty
/// body, whereas every error of this service is JSON. Such an answer is
/// recognised by its head (that status and `content-length: 0`; every
/// error response of the application has a JSON body) and replaced
/// by the same status with a JSON body; hyper closes the connection after
/// it.
///
/// hyper also answers 431 to a `Content-Length` it can parse but not
/// hold (above 2^64 − 3), which is no header too large but a body: the
/// reads are watched for such a header line, and that 431 becomes 413
/// (RFC 9110 §15.5.14).
///
/// And hyper answers 431 to a head longer than [`MAX_HEAD_BYTES`] even
/// when its request line alone is that long: that is a URI too long, and
/// that 431 becomes 414 (RFC 9112 §3; hyper's own 414, for a target over
/// 65,534 bytes, needs a longer head than it takes). The reads are watched
/// for the length of the latest line that starts as a request line does
/// (a method, a token, then a space; a header line has a colon after its
/// name, and a body line of that length is refused for its body first).
pub struct JsonParseErrors<T> {
    inner: T,
    /// The replacement being written, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
    /// The start of the line being read (enough to tell a `Content-Length`
    /// line and its value), across reads.
    line: Vec<u8>,
    /// The bytes of the line being read, across reads.
    line_len: usize,
    /// The bytes of the latest whole line that started as a request line.
    request_line_len: usize,
    /// hyper's read buffer, the longest head it takes.
    head_limit: usize,
    /// Whether a `Content-Length` line too large for hyper was read.
    length_too_large: bool,
}

/// What one of hyper's 431 answers refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooLarge {
    /// The head, longer than [`MAX_HEAD_BYTES`], or with too many headers:
    /// 431.
    Head,
    /// The request line alone, as long as a head may be: 414.
    RequestLine,
    /// A `Content-Length` hyper cannot hold: 413.
    Length,
}

impl<T> JsonParseErrors<T> {
    /// Wraps a connection's IO, whose heads hyper takes up to `head_limit`
    /// bytes (its `max_buf_size`); nothing is replaced until such a head is
    /// seen.
    pub fn new(inner: T, head_limit: usize) -> Self {
        JsonParseErrors {
            inner,
            replacement: None,
            line: Vec::new(),
            line_len: 0,
            request_line_len: 0,
            head_limit,
            length_too_large: false,
        }
    }

    /// Watches `read` for a `Content-Length` line hyper cannot hold, and
    /// counts the line in progress. Every byte read passes here, bodies
    /// too, so line ends are found with `memchr` (many bytes at a time) and
    /// only the start of each line is kept.
    fn watch_lengths(&mut self, read: &[u8]) {
        let mut rest = read;
        while !self.length_too_large {
            let (part, next) = match memchr::memchr(b'\n', rest) {
                Some(end) => (&rest[..end], Some(&rest[end + 1..])),
                None => (rest, None),
            };
            self.line_len = self.line_len.saturating_add(part.len());
            let room = LENGTH_LINE_BYTES.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..room.min(part.len())]);
            let Some(next) = next else { return };
            self.length_too_large = is_length_too_large(&self.line);
            if starts_a_request_line(&self.line) {
                self.request_line_len = self.line_len;
            }
            self.line.clear();
            self.line_len = 0;
            rest = next;
        }
    }

    /// What a 431 of hyper's now refuses: the line in progress when it
    /// is a request line, else the latest whole one.
    fn too_large(&self) -> TooLarge {
        let request_line = if starts_a_request_line(&self.line) {
            self.line_len
        } else {
            self.request_line_len
        };
        if self.length_too_large {
            TooLarge::Length
        } else if request_line >= self.head_limit {
            TooLarge::RequestLine
        } else {
            TooLarge::Head
        }
    }
}

/// The most bytes of a line kept to tell a `Content-Length` hyper cannot
/// hold (the name, the colon, some whitespace and 20 digits, with room),
/// or a request line's method.
const LENGTH_LINE_BYTES: usize = 64;

/// Whether `start`, the start of a line, is a request line's: a method (a
/// token, RFC 9110 §5.6.2) and a space. A header line's name is followed
/// by a colon.
fn starts_a_request_line(start: &[u8]) -> bool {
    let is_tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    let method = start.iter().take_while(|b| is_tchar(b)).count();
    method > 0 && start.get(method) == Some(&b' ')
}

/// The largest `Content-Length` hyper holds (its `DecodedLength`'s
/// `MAX_LEN`); above, it answers 431.
const HYPER_MAX_LENGTH: u64 = u64::MAX - 2;

/// Whether the start of a line, `line`, is a `Content-Length` header whose
/// value hyper parses (digits, at most `u64::MAX`) but refuses as too large.
fn is_length_too_large(line: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length:";
    let Some(name) = line.get(..NAME.len()) else {
        return false;
    };
    if !name.eq_ignore_ascii_case(NAME) {
        return false;
    }
    let value = line[NAME.len()..].trim_ascii();
    !value.is_empty()
        && value.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(value)
            .ok()
            .and_then(|digits| digits.parse::<u64>().ok())
            .is_some_and(|length| length > HYPER_MAX_LENGTH)
}

/// The longest head of one of hyper's automatic refusals (about 100 bytes:
/// status line, `content-length: 0`, `date`), with room to spare.
const MAX_REFUSAL_HEAD: usize = 512;

/// The JSON answer for one of hyper's automatic refusals, if `head` is one;
/// a 431 becomes 413 or 414 as `too_large` says (see [`JsonParseErrors`]).
///
/// Every write of every response passes through here, so anything that
/// cannot be such a head (longer, or another status class) is let through
/// before the text is looked at.
pub fn json_refusal(head: &[u8], too_large: TooLarge) -> Option<Vec<u8>> {
    if head.len() > MAX_REFUSAL_HEAD || !head.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    if !text.ends_with("\r\n\r\n") {
        return None;
    }
    let (status_line, headers) = text.split_once("\r\n")?;
    let (status_line, error) = match status_line {
        "HTTP/1.1 400 Bad Request" => (
            status_line,
            "malformed request: the request line or a header cannot be parsed".to_owned(),
        ),
        "HTTP/1.1 414 URI Too Long" => (status_line, "the request URI is too long".to_owned()),
        "HTTP/1.1 431 Request Header Fields Too Large" => match too_large {
            TooLarge::Length => ("HTTP/1.1 413 Payload Too Large", body::too_large().error),
            TooLarge::RequestLine => (
                "HTTP/1.1 414 URI Too Long",
                format!(
                    "the request URI is too long: the request line is {MAX_HEAD_BYTES} bytes or more"
                ),
            ),
            TooLarge::Head => (
                status_line,
                format!(
                    "the request headers are too large: at most {MAX_HEAD_BYTES} bytes with \
                     the request line, and {MAX_HEADERS} headers"
                ),
            ),
        },
        _ => return None,
    };
    let empty = headers
        .split("\r\n")
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"));
    if !empty {
        return None;
    }
    let body = serde_json::json!({ "error": error }).to_string();
    let mut head = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in SECURITY_HEADERS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    Some(format!("{head}connection: close\r\n\r\n{body}").into_bytes())
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

    /// When `buf` is one of hyper's automatic refusals: takes it whole (it
    /// is written by this call or by the next flush) and answers the write
    /// with its length, or with the error writing the replacement met.
    fn take_refusal(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        let replacement = json_refusal(buf, self.too_large())?;
        self.replacement = Some((replacement, 0));
        if let Poll::Ready(Err(e)) = self.poll_replacement(cx) {
            return Some(Poll::Ready(Err(e)));
        }
        Some(Poll::Ready(Ok(buf.len())))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonParseErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.watch_lengths(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        if let Some(taken) = self.take_refusal(cx, buf) {
            return taken;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        // An automatic refusal has no body: its head is the only buffer.
        let mut written = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (written.next(), written.next()) {
            if let Some(taken) = self.take_refusal(cx, only) {
                return taken;
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    use super::{
        is_length_too_large, json_refusal, AcceptFailures, ClientCounts, JsonParseErrors,
        RefusalLog, TooLarge,
    };

    #[test]
    fn failed_accepts_are_told_once_when_they_start_and_once_when_they_end() {
        let mut failures = AcceptFailures::default();
        let start = Instant::now();
        let emfile = std::io::Error::from_raw_os_error(24);
        let first = failures.failed(&emfile, start).expect("the first failure");
        assert!(
            first.contains("cannot accept connections") && first.contains("ulimit -n"),
            "{first}"
        );
        for i in 1..77 {
            assert_eq!(
                failures.failed(&emfile, start + Duration::from_millis(i * 100)),
                None
            );
        }
        let again = failures
            .accepted(start + Duration::from_secs(8))
            .expect("the episode ends");
        assert_eq!(
            again,
            "accepting connections again, after 77 failed tries over 8.0 s"
        );
        assert_eq!(failures.accepted(start + Duration::from_secs(9)), None);
        let other = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        let next = failures.failed(&other, start).expect("a new episode");
        assert!(!next.contains("ulimit"), "{next}");
    }

    #[test]
    fn each_address_has_its_own_count_and_a_closed_connection_leaves_it() {
        let counts = ClientCounts::new(2);
        let one = IpAddr::from([192, 0, 2, 1]);
        let other = IpAddr::from([192, 0, 2, 2]);
        let first = counts.take(one).expect("first");
        let second = counts.take(one).expect("second");
        assert!(counts.take(one).is_none(), "a third from the same address");
        let elsewhere = counts.take(other).expect("another address");
        drop(second);
        let again = counts.take(one).expect("a slot freed");
        drop((first, again, elsewhere));
        let open = counts.open.lock().unwrap();
        assert!(open.is_empty(), "no address is kept once closed: {open:?}");
    }

    #[test]
    fn refusals_are_logged_at_most_once_an_interval_and_none_is_lost() {
        let mut log = RefusalLog::default();
        let start = Instant::now();
        assert_eq!(log.refused(start), Some(1));
        for i in 1..1000 {
            assert_eq!(log.refused(start + Duration::from_millis(i)), None);
        }
        assert_eq!(log.refused(start + Duration::from_secs(60)), Some(1000));
        assert_eq!(log.refused(start + Duration::from_secs(61)), None);
    }

    #[test]
    fn only_hypers_empty_refusals_are_rewritten() {
        let auto =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let rewritten = String::from_utf8(json_refusal(auto, TooLarge::Head).unwrap()).unwrap();
        assert!(rewritten.starts_with("HTTP/1.1 431 "));
        assert!(
            rewritten.ends_with(
                "{\"error\":\"the request headers are too large: at most 65536 bytes with the \
                 request line, and 100 headers\"}"
            ),
            "{rewritten}"
        );
        let forwarded = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n";
        assert_eq!(json_refusal(forwarded, TooLarge::Head), None);
        assert_eq!(
            json_refusal(
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                TooLarge::Head
            ),
            None
        );
        // Longer than any head hyper refuses with: never looked into.
        let padded = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-pad: {}\r\n\r\n",
            "a".repeat(600)
        );
        assert_eq!(json_refusal(padded.as_bytes(), TooLarge::Head), None);
        let length = String::from_utf8(json_refusal(auto, TooLarge::Length).unwrap()).unwrap();
        assert!(length.starts_with("HTTP/1.1 413 "), "{length}");
        let line = String::from_utf8(json_refusal(auto, TooLarge::RequestLine).unwrap()).unwrap();
        assert!(line.starts_with("HTTP/1.1 414 "), "{line}");
    }

    #[test]
    fn a_431_refuses_the_request_line_only_when_it_alone_is_as_long_as_a_head() {
        let mut watched = JsonParseErrors::new((), 16);
        // A body without a line end, then a head whose request line ends.
        watched.watch_lengths(b"{}GET /aaaa HTTP/1.1\r\nX-Pad: aaaa");
        assert_eq!(watched.too_large(), TooLarge::Head);
        // A header line of 16 bytes or more is no request line.
        watched.watch_lengths(b"aaaaaaaaaaaaaaaa");
        assert_eq!(watched.too_large(), TooLarge::Head);
        // A request line of 16 bytes so far, across reads; still the one
        // refused once whole and followed by headers.
        let mut watched = JsonParseErrors::new((), 16);
        watched.watch_lengths(b"GET /aaaa");
        assert_eq!(watched.too_large(), TooLarge::Head);
        watched.watch_lengths(b"aaaaaaa");
        assert_eq!(watched.too_large(), TooLarge::RequestLine);
        watched.watch_lengths(b"a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(watched.too_large(), TooLarge::RequestLine);
        // The next request's line is a short one.
        watched.watch_lengths(b"GET / HTTP/1.1\r\nX-Pad: aaaaaaaaaaaaaaaaaa");
        assert_eq!(watched.too_large(), TooLarge::Head);
        watched.watch_lengths(b"\r\nContent-Length: 18446744073709551615\r\n");
        assert_eq!(watched.too_large(), TooLarge::Length);
    }

    #[test]
    fn only_a_length_hyper_parses_but_cannot_hold_is_too_large() {
        assert!(is_length_too_large(
            b"Content-Length: 18446744073709551614\r"
        ));
        assert!(is_length_too_large(b"content-length:018446744073709551615"));
        assert!(!is_length_too_large(
            b"Content-Length: 18446744073709551613\r"
        ));
        assert!(!is_length_too_large(
            b"Content-Length: 18446744073709551616"
        ));
        assert!(!is_length_too_large(b"Content-Length: 12"));
        assert!(!is_length_too_large(
            b"X-Content-Length: 18446744073709551615"
        ));
    }
}
