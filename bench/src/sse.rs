//! Server-Sent Events: a small subscriber client, the fan-out phase
//! (delivery latency to many subscribers) and the memory phase (RSS per
//! subscriber at connect and after many events).
//!
//! Hand-written rather than an SSE crate: thousands of subscribers must
//! each cost a socket, a 4 KiB buffer and a task, and the client only needs
//! two numbers from each event. It sends `GET /api/events` (or the chat
//! anchor's `GET /events`) as HTTP/1.0, so the server answers without
//! chunked encoding and the body is the event stream itself, read until
//! the server closes it or the phase stops it.
//!
//! Every message the bench posts in these phases has the text
//! `fanout seq=<n> sent_us=<t>`: `n` counts from 1 in each phase, and `t`
//! is microseconds since [`EPOCH`] taken just before the POST was sent, so
//! the delivery latency (`arrival - t`) includes the durable write. Both
//! simplechat and the chat anchor send a message as a JSON object in the
//! event's data, the text in one of its string fields (`text`, `message`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::load::{latency_histogram, Conn};
use crate::proc;
use crate::server::Server;

/// Where a server's event stream is, and how a message is posted to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseApi {
    /// simplechat: `GET /api/events`; `POST /api/messages` with a JSON
    /// `name` and `text`, answered 201 once the message is durable.
    Simplechat,
    /// The chat anchor: `GET /events`; `POST /message` with a form
    /// `room`, `username`, `message`, answered 200.
    Chat,
}

impl SseApi {
    fn events_path(self) -> &'static str {
        match self {
            SseApi::Simplechat => "/api/events",
            SseApi::Chat => "/events",
        }
    }
}

/// The instant every `sent_us` in a message text counts from.
pub static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Microseconds since [`EPOCH`].
fn now_us() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

/// How many subscribers may be connecting at once: the server's listen
/// backlog is finite, and a burst of 10k SYNs would be partly dropped and
/// retried a second later, which measures the kernel instead.
const CONNECTING_AT_ONCE: usize = 256;
/// Longest one subscriber may take to connect and get the headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a paced step of the memory phase waits for every subscriber.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the fan-out waits after the last post for the stragglers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A hard end for every subscriber task, whatever the phase does.
const SUBSCRIBER_LIFETIME: Duration = Duration::from_secs(600);

/// Counters every subscriber of a group updates.
#[derive(Default)]
struct Shared {
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Streams the server ended (or that broke) before the phase stopped.
    closed: AtomicUsize,
    /// Bench messages received in order, over all subscribers.
    delivered: AtomicU64,
    /// When the latest of them arrived, µs since [`EPOCH`].
    last_delivery_us: AtomicU64,
}

/// What one subscriber saw.
#[derive(Default)]
struct SubStats {
    /// Delivery latency of each bench message, in microseconds (only when
    /// the group records latencies).
    latencies_us: Vec<u32>,
    /// Bench messages that came again or out of order.
    out_of_order: u64,
}

/// A group of subscribers, all connected to one server.
pub struct Subscribers {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<SubStats>>,
    stop: watch::Sender<bool>,
}

impl Subscribers {
    /// Opens `n` event streams to `addr`, at most 256 connecting at a time,
    /// and returns when each has its response headers (so the server has
    /// subscribed it) or has failed, or after 20 s plus 1 ms per
    /// subscriber. `record` keeps per-message latencies.
    pub async fn connect(addr: SocketAddr, api: SseApi, n: usize, record: bool) -> Subscribers {
        let shared = Arc::new(Shared::default());
        let permits = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..n)
            .map(|_| {
                tokio::spawn(subscribe(
                    addr,
                    api,
                    shared.clone(),
                    permits.clone(),
                    stopped.clone(),
                    record,
                ))
            })
            .collect();
        let group = Subscribers {
            shared,
            tasks,
            stop,
        };
        let deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_millis(n as u64);
        while group.connected() + group.failed() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        group
    }

    /// Subscribers that got their response headers.
    pub fn connected(&self) -> usize {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Subscribers that could not connect.
    pub fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Subscribers still reading their stream.
    fn open(&self) -> usize {
        self.connected() - self.shared.closed.load(Ordering::Relaxed)
    }

    /// Bench messages received in order, over all subscribers.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// When the latest bench message arrived, µs since [`EPOCH`] (0 if
    /// none has).
    fn last_delivery_us(&self) -> u64 {
        self.shared.last_delivery_us.load(Ordering::Relaxed)
    }

    /// Waits until `target(open subscribers)` messages are delivered, or
    /// `timeout`, or (with `idle`) until none has arrived for that long.
    /// Returns whether they were.
    async fn wait_delivered(
        &self,
        target: impl Fn(usize) -> u64,
        timeout: Duration,
        idle: Option<Duration>,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let (mut seen, mut moved) = (self.delivered(), Instant::now());
        loop {
            let delivered = self.delivered();
            if delivered >= target(self.open()) {
                return true;
            }
            if delivered != seen {
                (seen, moved) = (delivered, Instant::now());
            }
            if Instant::now() > deadline || idle.is_some_and(|idle| moved.elapsed() > idle) {
                return false;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// Closes every stream and returns (latencies in µs, out-of-order
    /// messages, streams the server closed early).
    async fn stop(self) -> (Histogram<u64>, u64, usize) {
        let _ = self.stop.send(true);
        let mut latency = latency_histogram();
        let mut out_of_order = 0;
        for task in self.tasks {
            if let Ok(stats) = task.await {
                for us in stats.latencies_us {
                    latency.saturating_record(u64::from(us).max(1));
                }
                out_of_order += stats.out_of_order;
            }
        }
        let closed = self.shared.closed.load(Ordering::Relaxed);
        (latency, out_of_order, closed)
    }
}

/// One subscriber: connect, then read events until stopped, closed, or
/// [`SUBSCRIBER_LIFETIME`].
async fn subscribe(
    addr: SocketAddr,
    api: SseApi,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    record: bool,
) -> SubStats {
    let mut stats = SubStats::default();
    let give_up = tokio::time::Instant::now() + SUBSCRIBER_LIFETIME;
    let opened = {
        let _permit = permits.acquire().await;
        tokio::time::timeout(CONNECT_TIMEOUT, open_stream(addr, api.events_path())).await
    };
    let (mut stream, rest) = match opened {
        Ok(Ok(opened)) => opened,
        _ => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return stats;
        }
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);

    let mut parser = SseParser::default();
    let mut last_seq = 0u64;
    let mut on_events = |bytes: &[u8], stats: &mut SubStats| {
        let arrived = now_us();
        parser.feed(bytes, |seq, sent_us| {
            if seq > last_seq {
                last_seq = seq;
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                shared
                    .last_delivery_us
                    .fetch_max(arrived, Ordering::Relaxed);
                if record {
                    let latency = arrived.saturating_sub(sent_us);
                    stats
                        .latencies_us
                        .push(latency.min(u64::from(u32::MAX)) as u32);
                }
            } else {
                stats.out_of_order += 1;
            }
        });
    };
    on_events(&rest, &mut stats);
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            _ = stop.changed() => return stats,
            _ = tokio::time::sleep_until(give_up) => break,
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => on_events(&buf[..n], &mut stats),
            },
        }
    }
    shared.closed.fetch_add(1, Ordering::Relaxed);
    stats
}

/// Connects and sends the request; returns the stream and whatever body
/// bytes came with the headers.
///
/// Errors: connect failed, or the answer was not a 200.
async fn open_stream(addr: SocketAddr, path: &str) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Err(std::io::Error::other("no complete response head"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let status_ok = head.starts_with(b"HTTP/1.") && head.get(9..12) == Some(b"200");
            if !status_ok {
                return Err(std::io::Error::other("the answer was not 200"));
            }
            return Ok((stream, head.split_off(end + 4)));
        }
    }
}

/// An incremental SSE parser that keeps only an unfinished line between
/// reads and reports, for each `message` event whose data is a bench
/// message, its `seq` and `sent_us`.
#[derive(Default)]
struct SseParser {
    /// Bytes after the last complete line.
    partial: Vec<u8>,
    /// The event's type is `message` (the field, or no `event:` line).
    is_message: bool,
    saw_event_field: bool,
    /// (seq, sent_us) from the event's data, if it is a bench message.
    bench: Option<(u64, u64)>,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8], mut on_message: impl FnMut(u64, u64)) {
        self.partial.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(offset) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let line = &self.partial[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                // End of an event: dispatch it.
                if let (true, Some((seq, sent))) =
                    (self.is_message || !self.saw_event_field, self.bench)
                {
                    on_message(seq, sent);
                }
                self.is_message = false;
                self.saw_event_field = false;
                self.bench = None;
            } else if let Some(kind) = line.strip_prefix(b"event:") {
                self.saw_event_field = true;
                self.is_message = kind.trim_ascii() == b"message";
            } else if let Some(data) = line.strip_prefix(b"data:") {
                self.bench = bench_fields(data);
            }
            start = end + 1;
        }
        self.partial.drain(..start);
    }
}

/// `seq` and `sent_us` from a message's JSON, if its text is a bench text.
/// The text is found wherever it is in the object, so the same parse reads
/// simplechat's `text` and the chat anchor's `message`; a bench text has no
/// character JSON would escape.
fn bench_fields(data: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(data).ok()?;
    let number_after = |key: &str| -> Option<u64> {
        let rest = &text[text.find(key)? + key.len()..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..digits].parse().ok()
    };
    Some((number_after("fanout seq=")?, number_after(" sent_us=")?))
}

/// Posts bench message number `seq` over `conn`, in `api`'s way. Returns
/// its POST latency.
///
/// Errors: the POST failed or did not answer 201 (simplechat) or 200 (the
/// chat anchor).
async fn post(conn: &mut Conn, api: SseApi, seq: u64) -> Result<Duration, String> {
    let sent = Instant::now();
    let text = format!("fanout seq={seq} sent_us={}", now_us());
    let (path, body, content_type, expected) = match api {
        SseApi::Simplechat => (
            "/api/messages",
            format!(r#"{{"name":"bench","text":"{text}"}}"#),
            "application/json",
            201,
        ),
        SseApi::Chat => (
            "/message",
            format!("room=bench&username=bench&message={}", form_encode(&text)),
            "application/x-www-form-urlencoded",
            200,
        ),
    };
    match conn
        .request_as(Method::POST, path, Some(Bytes::from(body)), content_type)
        .await?
    {
        (status, _) if status == expected => Ok(sent.elapsed()),
        (status, body) => Err(format!(
            "POST {path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        )),
    }
}

/// `text` as a form field value (`application/x-www-form-urlencoded`).
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b' ' => out.push('+'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The outcome of one fan-out phase.
pub struct FanoutResult {
    pub subscribers: usize,
    pub connected: usize,
    pub connect_time: Duration,
    /// Server RSS before the subscribers connected and once they all had.
    pub rss_before: u64,
    pub rss_connected: u64,
    pub messages: u64,
    /// Achieved posting rate, messages per second.
    pub post_rate: f64,
    pub expected: u64,
    pub delivered: u64,
    pub out_of_order: u64,
    pub closed_early: usize,
    /// Post time to arrival, µs, over every delivered message.
    pub latency: Histogram<u64>,
    /// Messages delivered per second, over all subscribers, from the first
    /// POST to the last arrival.
    pub delivery_rate: f64,
    /// CPU time (user and system, `/proc`) the server used from the first
    /// POST until every message was delivered or the wait gave up: the
    /// POSTs' and any heartbeat's included, so a figure of the server alone,
    /// whatever the bench's clients cost on the same cores.
    pub server_cpu: Duration,
}

impl FanoutResult {
    /// Server CPU per delivered message, in µs (NaN when none was).
    pub fn cpu_us_per_delivery(&self) -> f64 {
        if self.delivered == 0 {
            f64::NAN
        } else {
            self.server_cpu.as_secs_f64() * 1e6 / self.delivered as f64
        }
    }
}

/// Gives up waiting for the stragglers of a fan-out when nothing has
/// arrived for this long: a server that dropped messages (the chat
/// anchor's subscribers skip what they lagged behind on) will not send
/// them later.
const DRAIN_IDLE: Duration = Duration::from_secs(5);

/// Connects `n` subscribers to the server at `addr` (process `pid`),
/// posts `messages` messages at `rate` per second from one connection,
/// waits (at most 30 s, or until nothing has arrived for 5 s) until every
/// subscriber has every message, and measures the delivery latency.
///
/// Errors: a POST failed.
pub async fn fanout(
    addr: SocketAddr,
    pid: u32,
    api: SseApi,
    n: usize,
    messages: u64,
    rate: f64,
) -> Result<FanoutResult, String> {
    let rss_before = proc::rss_bytes(pid).map_err(|e| e.to_string())?;
    let began = Instant::now();
    let group = Subscribers::connect(addr, api, n, true).await;
    let connect_time = began.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_connected = proc::rss_bytes(pid).map_err(|e| e.to_string())?;

    let mut conn = Conn::open(addr).await?;
    let cpu_before = proc::cpu_time(pid).map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let posting = Instant::now();
    let posting_us = now_us();
    for seq in 1..=messages {
        tick.tick().await;
        post(&mut conn, api, seq).await?;
    }
    let post_rate = messages as f64 / posting.elapsed().as_secs_f64().max(1e-9);
    group
        .wait_delivered(
            |open| open as u64 * messages,
            DRAIN_TIMEOUT,
            Some(DRAIN_IDLE),
        )
        .await;
    let server_cpu = proc::cpu_time(pid)
        .map_err(|e| e.to_string())?
        .saturating_sub(cpu_before);
    let connected = group.connected();
    let delivered = group.delivered();
    let delivering_us = group.last_delivery_us().saturating_sub(posting_us).max(1);
    let (latency, out_of_order, closed_early) = group.stop().await;
    Ok(FanoutResult {
        subscribers: n,
        connected,
        connect_time,
        rss_before,
        rss_connected,
        messages,
        post_rate,
        expected: connected as u64 * messages,
        delivered,
        out_of_order,
        closed_early,
        latency,
        delivery_rate: delivered as f64 * 1e6 / delivering_us as f64,
        server_cpu,
    })
}

/// The outcome of the memory phase.
pub struct MemoryResult {
    pub subscribers: usize,
    pub connected: usize,
    /// Server RSS after the warm-up events and after the measured events,
    /// with the subscribers connected.
    pub rss_warm: u64,
    pub rss_after: u64,
    /// The same, for the control: the same number of events posted the
    /// same way once the subscribers have gone.
    pub control_warm: u64,
    pub control_after: u64,
    /// Measured events (after the warm-up).
    pub events: u64,
    pub expected: u64,
    pub delivered: u64,
    /// The step at which a subscriber stopped keeping up, if one did.
    pub stalled_at: Option<u64>,
}

/// Events posted before each baseline, so buffers allocated on the first
/// writes are not counted as growth.
const WARM_UP_EVENTS: u64 = 20;

/// Connects `n` subscribers, posts [`WARM_UP_EVENTS`] then `events` more,
/// one at a time, each only when every open subscriber has read the one
/// before (so unread events queued in socket buffers are not what is
/// measured), and reads the server's RSS after the warm-up and at the end.
/// Then, as a control for what the server itself grows by (store, cache,
/// allocator), closes the subscribers and posts as many events again with
/// nobody listening.
///
/// Run it when the cache is already full (after the POST load), so the
/// cache does not grow during the phase.
///
/// Errors: a POST failed.
pub async fn memory(server: &Server, n: usize, events: u64) -> Result<MemoryResult, String> {
    let rss = || proc::rss_bytes(server.pid).map_err(|e| e.to_string());
    let group = Subscribers::connect(server.addr, SseApi::Simplechat, n, false).await;

    let mut conn = Conn::open(server.addr).await?;
    let mut stalled_at = None;
    let mut rss_warm = rss()?;
    for seq in 1..=WARM_UP_EVENTS + events {
        post(&mut conn, SseApi::Simplechat, seq).await?;
        if !group
            .wait_delivered(|open| open as u64 * seq, STEP_TIMEOUT, None)
            .await
        {
            stalled_at = Some(seq);
            break;
        }
        if seq == WARM_UP_EVENTS {
            rss_warm = rss()?;
        }
    }
    let rss_after = rss()?;
    let connected = group.connected();
    let delivered = group.delivered();
    group.stop().await;

    let mut control_warm = rss()?;
    for seq in 1..=WARM_UP_EVENTS + events {
        post(&mut conn, SseApi::Simplechat, seq).await?;
        if seq == WARM_UP_EVENTS {
            control_warm = rss()?;
        }
    }
    let control_after = rss()?;
    Ok(MemoryResult {
        subscribers: n,
        connected,
        rss_warm,
        rss_after,
        control_warm,
        control_after,
        events,
        expected: connected as u64 * (WARM_UP_EVENTS + events),
        delivered,
        stalled_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_reassembles_events_split_across_reads() {
        let stream = b"retry: 2000\n: connected\n\n\
            event: message\nid: a\ndata: {\"text\":\"fanout seq=1 sent_us=10\"}\n\n\
            : heartbeat\n\n\
            event: message\r\nid: b\r\ndata: {\"text\":\"fanout seq=2 sent_us=20\"}\r\n\r\n\
            event: other\ndata: {\"text\":\"fanout seq=3 sent_us=30\"}\n\n\
            event: message\ndata: {\"text\":\"not a bench message\"}\n\n";
        // Every split point, including inside "\r\n" and inside a number.
        for cut in 0..stream.len() {
            let mut parser = SseParser::default();
            let mut seen = Vec::new();
            parser.feed(&stream[..cut], |s, t| seen.push((s, t)));
            parser.feed(&stream[cut..], |s, t| seen.push((s, t)));
            assert_eq!(seen, vec![(1, 10), (2, 20)], "split at {cut}");
        }
    }

    #[test]
    fn parser_reads_the_chat_anchors_events() {
        // Rocket writes `data:` with no space, no event type, and a bare
        // `:` comment line as its heartbeat.
        let stream = b":\n\n\
            data:{\"room\":\"bench\",\"username\":\"bench\",\"message\":\"fanout seq=7 sent_us=123456\"}\n\n\
            :\n\n\
            data:{\"room\":\"bench\",\"username\":\"x\",\"message\":\"hello\"}\n\n\
            data:{\"room\":\"bench\",\"username\":\"bench\",\"message\":\"fanout seq=8 sent_us=9\"}\n\n";
        for cut in 0..stream.len() {
            let mut parser = SseParser::default();
            let mut seen = Vec::new();
            parser.feed(&stream[..cut], |s, t| seen.push((s, t)));
            parser.feed(&stream[cut..], |s, t| seen.push((s, t)));
            assert_eq!(seen, vec![(7, 123_456), (8, 9)], "split at {cut}");
        }
    }

    #[test]
    fn form_encoding_of_a_bench_text() {
        assert_eq!(
            form_encode("fanout seq=12 sent_us=345"),
            "fanout+seq%3D12+sent_us%3D345"
        );
        assert_eq!(form_encode("a&b/é"), "a%26b%2F%C3%A9");
    }
}
