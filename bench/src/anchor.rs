//! The anchors the performance targets are stated against: small servers
//! that do the same HTTP work as simplechat with nothing behind it, so the
//! figures can be read as ratios of simplechat to them measured on the
//! same machine in the same run.
//!
//! - `hyper`: a bare hyper 1 server answering every `GET` with the listing
//!   bytes (the ceiling: no framework, no store).
//! - `rocket-hello`: Rocket 0.5 answering `GET /api/messages` with the same
//!   bytes, and `POST /api/messages` (a JSON `name`/`text`) with 201 and a
//!   small JSON body; nothing is stored.
//! - `rocket-chat`: the shape of Rocket's own SSE chat example: a broadcast
//!   channel of 1024 messages, `POST /message` taking a form (`room`,
//!   `username`, `message`) and `GET /events` streaming each message as a
//!   JSON event until the server shuts down. A subscriber that falls more
//!   than 1024 messages behind skips what it missed, as the example does.
//!
//! Each anchor is this bench binary run again with the hidden
//! `--serve-anchor KIND --port N --body FILE`, so it is a process of its
//! own whose RSS and CPU time come from `/proc` as the server's do.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::ValueEnum;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rocket::form::Form;
use rocket::http::Status;
use rocket::response::content::RawJson;
use rocket::response::status::Custom;
use rocket::response::stream::{Event, EventStream};
use rocket::serde::json::Json;
use rocket::serde::{Deserialize, Serialize};
use rocket::tokio::sync::broadcast::{self, error::RecvError};
use rocket::{Shutdown, State};
use tokio::net::{TcpListener, TcpStream};

/// Which anchor to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AnchorKind {
    /// A bare hyper 1 server answering every GET with the listing bytes.
    Hyper,
    /// Rocket: `GET /api/messages` (the listing bytes) and
    /// `POST /api/messages` (201, nothing stored).
    RocketHello,
    /// Rocket: the SSE chat (`POST /message`, `GET /events`).
    RocketChat,
}

impl AnchorKind {
    /// The name used on the command line and in the tables.
    pub fn name(self) -> &'static str {
        match self {
            AnchorKind::Hyper => "hyper",
            AnchorKind::RocketHello => "rocket-hello",
            AnchorKind::RocketChat => "rocket-chat",
        }
    }
}

/// How long an anchor may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running anchor process; killed (SIGKILL) when dropped.
pub struct Anchor {
    child: Child,
    /// Where it listens (127.0.0.1 and a port that was free).
    pub addr: SocketAddr,
    /// Its process id, for `/proc`.
    pub pid: u32,
}

impl Anchor {
    /// Starts anchor `kind` (this binary again) on a free loopback port,
    /// serving the bytes of the file `body` as the listing (the chat has
    /// none), and waits until it accepts connections.
    ///
    /// Errors: spawn failed, the process exited, or it did not listen
    /// within 30 s.
    pub async fn start(kind: AnchorKind, body: Option<&Path>) -> Result<Anchor, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the bench binary's own path: {e}"))?;
        let port = crate::server::free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut command = Command::new(exe);
        // Rocket reads these; the anchor's settings are all given in code.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("ROCKET_") {
                command.env_remove(&*key);
            }
        }
        command
            .arg("--serve-anchor")
            .arg(kind.name())
            .arg("--port")
            .arg(port.to_string());
        if let Some(body) = body {
            command.arg("--body").arg(body);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start the {} anchor: {e}", kind.name()))?;
        let pid = child.id();
        let mut anchor = Anchor { child, addr, pid };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = anchor.child.try_wait() {
                return Err(format!("the {} anchor exited ({status})", kind.name()));
            }
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(anchor);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the {} anchor did not listen within {START_TIMEOUT:?}",
                    kind.name()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves anchor `kind` on 127.0.0.1:`port` until killed, with the bytes
/// of the file `body` as the listing.
///
/// Errors: the body cannot be read, the port cannot be bound, or Rocket
/// failed to launch.
pub async fn serve(kind: AnchorKind, port: u16, body: Option<PathBuf>) -> Result<(), String> {
    let listing = match body {
        Some(path) => std::fs::read(&path)
            .map_err(|e| format!("cannot read the listing from {}: {e}", path.display()))?,
        None => Vec::new(),
    };
    // The anchor lives as long as its process; a 'static body lets every
    // request hand out the same bytes without copying or counting.
    let listing: &'static [u8] = Box::leak(listing.into_boxed_slice());
    match kind {
        AnchorKind::Hyper => serve_hyper(port, Bytes::from_static(listing)).await,
        AnchorKind::RocketHello => {
            let rocket = rocket::custom(rocket_config(port))
                .manage(Listing(listing))
                .manage(Created(AtomicU64::new(0)))
                .mount("/", rocket::routes![hello_get, hello_post]);
            launch(rocket).await
        }
        AnchorKind::RocketChat => {
            let (queue, _) = broadcast::channel::<ChatMessage>(1024);
            let rocket = rocket::custom(rocket_config(port))
                .manage(queue)
                .mount("/", rocket::routes![chat_post, chat_events]);
            launch(rocket).await
        }
    }
}

/// Rocket's release defaults on the given port, silent, and read from no
/// file or environment, so nothing around the bench changes the anchor.
fn rocket_config(port: u16) -> rocket::Config {
    rocket::Config {
        address: Ipv4Addr::LOCALHOST.into(),
        port,
        log_level: rocket::config::LogLevel::Off,
        cli_colors: false,
        ..rocket::Config::release_default()
    }
}

async fn launch(rocket: rocket::Rocket<rocket::Build>) -> Result<(), String> {
    rocket
        .launch()
        .await
        .map(|_| ())
        .map_err(|e| format!("Rocket did not launch: {e}"))
}

async fn serve_hyper(port: u16, listing: Bytes) -> Result<(), String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| format!("cannot bind port {port}: {e}"))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of files or a connection reset before it was accepted:
            // the next accept may well succeed.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let listing = listing.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let listing = listing.clone();
                async move { Ok::<_, Infallible>(answer_hyper(&request, listing)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer_hyper(request: &Request<Incoming>, listing: Bytes) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return response;
    }
    let mut response = Response::new(Full::new(listing));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The listing bytes the hello anchor serves.
struct Listing(&'static [u8]);

/// How many messages the hello anchor has answered 201 to; the count
/// stands in for the id a store would give.
struct Created(AtomicU64);

/// The body of a `POST /api/messages`, as simplechat takes it.
#[derive(Deserialize)]
#[serde(crate = "rocket::serde")]
struct NewMessage {
    name: String,
    text: String,
}

/// The 201 body: what simplechat answers, less the store's fields.
#[derive(Serialize)]
#[serde(crate = "rocket::serde")]
struct Accepted {
    id: u64,
    name: String,
    text: String,
}

#[rocket::get("/api/messages")]
fn hello_get(listing: &State<Listing>) -> RawJson<&'static [u8]> {
    RawJson(listing.0)
}

#[rocket::post("/api/messages", data = "<message>")]
fn hello_post(message: Json<NewMessage>, created: &State<Created>) -> Custom<Json<Accepted>> {
    let NewMessage { name, text } = message.into_inner();
    let id = created.0.fetch_add(1, Ordering::Relaxed) + 1;
    Custom(Status::Created, Json(Accepted { id, name, text }))
}

/// A chat message: the form the chat anchor takes and the JSON it sends.
#[derive(Clone, Debug, rocket::FromForm, Serialize)]
#[serde(crate = "rocket::serde")]
struct ChatMessage {
    #[field(validate = len(..30))]
    room: String,
    #[field(validate = len(..20))]
    username: String,
    message: String,
}

#[rocket::post("/message", data = "<form>")]
fn chat_post(form: Form<ChatMessage>, queue: &State<broadcast::Sender<ChatMessage>>) {
    // Sending fails only when nobody listens, which is not an error here.
    let _ = queue.send(form.into_inner());
}

#[rocket::get("/events")]
fn chat_events(
    queue: &State<broadcast::Sender<ChatMessage>>,
    mut shutdown: Shutdown,
) -> EventStream![] {
    let mut inbox = queue.subscribe();
    EventStream! {
        loop {
            let next = tokio::select! {
                received = inbox.recv() => received,
                _ = &mut shutdown => break,
            };
            match next {
                Ok(message) => yield Event::json(&message),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
    }
}
