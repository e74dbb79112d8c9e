//! HTTP load: a fixed number of keep-alive connections, each sending one
//! request after the other for a fixed time (a closed loop), with the
//! latency of every request in an HDR histogram and the server's CPU time
//! over the measured window.
//!
//! Each connection is its own hyper 1 HTTP/1.1 connection
//! (`hyper::client::conn::http1`) rather than a pooled client, so "64
//! connections" means exactly 64 sockets, all busy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use crate::proc;

/// Longest a single request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that fails this many times in a row gives up, so a dead
/// server ends the phase instead of spinning until the deadline.
const MAX_CONSECUTIVE_FAILURES: u32 = 20;

/// One keep-alive HTTP/1.1 connection to the server.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    /// Connects to `addr` (TCP_NODELAY on, as a browser's would be).
    ///
    /// Errors: connection refused or reset, or the HTTP handshake failed.
    pub async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
        // The connection future does the I/O; it ends when `sender` drops.
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends one request and reads the whole response body.
    /// `body` is sent as JSON when given. Returns the status and the body.
    ///
    /// Errors: the connection broke, or no answer within 10 s.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), String> {
        self.request_as(method, path, body, "application/json")
            .await
    }

    /// [`Conn::request`] with a body of another type than JSON
    /// (`content_type`, sent only with a body).
    ///
    /// Errors: the connection broke, or no answer within 10 s.
    pub async fn request_as(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: &str,
    ) -> Result<(u16, Bytes), String> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host);
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            self.sender.ready().await.map_err(|e| e.to_string())?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }
}

/// What each request of a load phase is.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// `GET <path>`; 200 counts as success.
    Get(&'static str),
    /// `POST /api/messages` with a small new message each time; 201 counts
    /// as success.
    PostMessage,
}

/// The outcome of one load phase.
pub struct LoadResult {
    /// Requests answered with the expected status inside the window.
    pub ok: u64,
    /// Requests answered with another status, timed out, or broken.
    pub failed: u64,
    /// From the moment every connection was open to the moment the last
    /// one finished its last request.
    pub elapsed: Duration,
    /// Latency of the successful requests, in microseconds.
    pub latency: Histogram<u64>,
    /// Server CPU time (user + system) over `elapsed`.
    pub server_cpu: Duration,
}

impl LoadResult {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Server CPU microseconds per successful request.
    pub fn cpu_us_per_request(&self) -> f64 {
        if self.ok == 0 {
            return f64::NAN;
        }
        self.server_cpu.as_secs_f64() * 1e6 / self.ok as f64
    }
}

/// Posts 100 messages to the server at `addr`, then reads its listing and
/// its page: the state and the bytes every phase and anchor start from.
///
/// Errors: a POST was not answered 201, or the connection broke.
pub async fn seed(addr: SocketAddr) -> Result<(Bytes, Bytes), String> {
    crate::progress("seeding 100 messages");
    let mut conn = Conn::open(addr).await?;
    for n in 1..=100 {
        let body = format!(r#"{{"name":"seed","text":"seed message {n} of 100"}}"#);
        match conn
            .request(Method::POST, "/api/messages", Some(Bytes::from(body)))
            .await?
        {
            (201, _) => {}
            (status, _) => return Err(format!("seeding: POST answered {status}")),
        }
    }
    let (_, listing) = conn.request(Method::GET, "/api/messages", None).await?;
    let (_, page) = conn.request(Method::GET, "/", None).await?;
    Ok((listing, page))
}

/// A latency histogram in microseconds, 1 µs to 100 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Runs `target` over `connections` connections for `duration` and
/// measures it; the server is process `server_pid` (for its CPU time).
///
/// Every connection is opened before the clock starts, so connection setup
/// is not in the figures. Bounded: each connection stops at the deadline,
/// after 20 consecutive failures, or (for its last request) 10 s later.
///
/// Errors: a connection could not be opened.
pub async fn run(
    addr: SocketAddr,
    server_pid: u32,
    target: Target,
    connections: usize,
    duration: Duration,
) -> Result<LoadResult, String> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(addr).await?);
    }
    // Every task waits here, so the window starts for all at once.
    let start = Arc::new(Barrier::new(connections + 1));
    let mut tasks = Vec::with_capacity(connections);
    for (n, conn) in conns.into_iter().enumerate() {
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            drive(conn, addr, target, n, Instant::now() + duration).await
        }));
    }
    let cpu_before = proc::cpu_time(server_pid).map_err(|e| e.to_string())?;
    start.wait().await;
    let began = Instant::now();

    let mut result = LoadResult {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latency: latency_histogram(),
        server_cpu: Duration::ZERO,
    };
    for task in tasks {
        let (ok, failed, latency) = task.await.map_err(|e| e.to_string())?;
        result.ok += ok;
        result.failed += failed;
        result.latency.add(latency).map_err(|e| e.to_string())?;
    }
    result.elapsed = began.elapsed();
    let cpu_after = proc::cpu_time(server_pid).map_err(|e| e.to_string())?;
    result.server_cpu = cpu_after.saturating_sub(cpu_before);
    Ok(result)
}

/// One connection's closed loop: returns (successes, failures, latency).
async fn drive(
    mut conn: Conn,
    addr: SocketAddr,
    target: Target,
    conn_no: usize,
    deadline: Instant,
) -> (u64, u64, Histogram<u64>) {
    let mut latency = latency_histogram();
    let (mut ok, mut failed, mut consecutive_failures) = (0u64, 0u64, 0u32);
    let mut seq = 0u64;
    while Instant::now() < deadline && consecutive_failures < MAX_CONSECUTIVE_FAILURES {
        seq += 1;
        let (method, path, body, expected) = match target {
            Target::Get(path) => (Method::GET, path, None, 200),
            Target::PostMessage => {
                let body = format!(r#"{{"name":"bench","text":"load {conn_no}-{seq}"}}"#);
                (Method::POST, "/api/messages", Some(Bytes::from(body)), 201)
            }
        };
        let sent = Instant::now();
        match conn.request(method, path, body).await {
            Ok((status, _)) if status == expected => {
                let micros = sent.elapsed().as_micros() as u64;
                latency.saturating_record(micros.max(1));
                ok += 1;
                consecutive_failures = 0;
            }
            Ok(_) => {
                failed += 1;
                consecutive_failures += 1;
            }
            Err(_) => {
                failed += 1;
                consecutive_failures += 1;
                // The connection may be dead: open a new one.
                if let Ok(fresh) = Conn::open(addr).await {
                    conn = fresh;
                }
            }
        }
    }
    (ok, failed, latency)
}
