//! `/api/events`: Server-Sent Events, one `message` event per new message.
//!
//! A subscriber first replays what it missed (from `Last-Event-ID`, or the
//! `after` query parameter a page uses on its first connection), then follows
//! the live broadcast. If it falls behind the broadcast it catches up from
//! the store; if the store cannot answer, the stream ends, and the browser's
//! reconnect with `Last-Event-ID` replays the gap.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rocket::http::{ContentType, Header};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::stream::ByteStream;
use rocket::response::{self, Responder, Response};
use rocket::tokio::select;
use rocket::tokio::sync::broadcast::error::RecvError;
use rocket::tokio::time::{interval_at, Instant};
use rocket::{get, Shutdown, State};

use crate::chat::{Chat, MAX_LIMIT};
use crate::message::validate_id;
use crate::store::{Cursor, StoreError};

/// How often an idle stream gets a comment line (`heartbeat_secs`), so
/// proxies and browsers keep it open. Rocket state.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat(pub Duration);

/// Ids remembered to drop an event that both a replay and the broadcast carry.
const SEEN_CAPACITY: usize = 4096;

/// The `Last-Event-ID` request header, when it names a valid id.
pub struct LastEventId(Option<String>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for LastEventId {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        let id = req
            .headers()
            .get_one("Last-Event-ID")
            .map(str::trim)
            .filter(|id| validate_id(id).is_ok())
            .map(str::to_owned);
        Outcome::Success(LastEventId(id))
    }
}

/// A byte stream sent as `text/event-stream`, never cached or buffered.
/// Not Rocket's `EventStream`: every subscriber is sent the same prebuilt
/// frame bytes ([`crate::cache::CachedMessage::frame`]) instead of a
/// per-subscriber `Event` serialized again for each.
pub struct SseBytes<S>(ByteStream<S>);

impl<'r, S> Responder<'r, 'r> for SseBytes<S>
where
    S: futures::Stream<Item = Bytes> + Send + 'r,
{
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'r> {
        Response::build_from(self.0.respond_to(req)?)
            .header(ContentType::EventStream)
            .header(Header::new("Cache-Control", "no-cache"))
            .header(Header::new("X-Accel-Buffering", "no"))
            .ok()
    }
}

/// Recently sent ids, bounded.
#[derive(Default)]
struct Seen {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Seen {
    /// True if `id` was not seen before.
    fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        if self.order.len() > SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }
}

#[get("/api/events?<after>")]
pub async fn events<'r>(
    chat: &'r State<Chat>,
    heartbeat: &'r State<Heartbeat>,
    last_event_id: LastEventId,
    after: Option<&str>,
    mut shutdown: Shutdown,
) -> SseBytes<impl futures::Stream<Item = Bytes> + 'r> {
    // Subscribe before reading anything, so nothing falls between the two.
    let mut rx = chat.subscribe();
    let chat: &Chat = chat.inner();
    let every = heartbeat.0;
    let resume_from = last_event_id.0.or_else(|| {
        after
            .filter(|id| validate_id(id).is_ok())
            .map(str::to_owned)
    });
    // The last message this subscriber has: where a replay or a catch-up
    // continues from. `None`: the store was empty when it subscribed.
    let mut last_id = match &resume_from {
        Some(id) => Some(id.clone()),
        None => chat.newest_id().await.ok().flatten(),
    };
    let mut catching_up = resume_from.is_some();

    SseBytes(ByteStream! {
        let mut seen = Seen::default();
        // Tells EventSource how soon to reconnect, and flushes the headers.
        yield Bytes::from_static(b"retry: 2000\n: connected\n\n");
        let mut heartbeat = interval_at(Instant::now() + every, every);
        loop {
            if catching_up {
                // One page at a time, so a long replay never sits in memory.
                let cursor = match &last_id {
                    Some(id) => Cursor::After(id.clone()),
                    None => Cursor::Latest,
                };
                match chat.list(cursor, MAX_LIMIT).await {
                    Ok(messages) => {
                        catching_up = last_id.is_some() && messages.len() == MAX_LIMIT;
                        for cached in messages {
                            if seen.insert(&cached.message.id) {
                                last_id = Some(cached.message.id.clone());
                                yield cached.frame.clone();
                            }
                        }
                    }
                    // An id the store never had: there is nothing to replay.
                    Err(StoreError::UnknownId(_)) => catching_up = false,
                    // The store cannot say what was missed right now: end
                    // the stream, and the client's reconnect with
                    // Last-Event-ID asks again.
                    Err(_) => break,
                }
                continue;
            }
            select! {
                received = rx.recv() => match received {
                    Ok(cached) => {
                        if seen.insert(&cached.message.id) {
                            last_id = Some(cached.message.id.clone());
                            yield cached.frame.clone();
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        chat.record_catch_up();
                        catching_up = true;
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = heartbeat.tick() => yield Bytes::from_static(b": heartbeat\n\n"),
                _ = &mut shutdown => break,
            }
        }
    })
}
