//! `/api/events`: Server-Sent Events, one `message` event per new message.
//!
//! A subscriber first replays what it missed (from `Last-Event-ID`, or the
//! `after` query parameter a page uses on its first connection), then follows
//! the live broadcast. If it falls behind the broadcast it catches up from
//! the store; if even that fails the stream ends, and the browser's
//! reconnect with `Last-Event-ID` replays the gap.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
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
use crate::live::LiveEvent;
use crate::message::validate_id;
use crate::store::Page;

pub const HEARTBEAT: Duration = Duration::from_secs(15);
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
pub struct EventStream<S>(ByteStream<S>);

impl<'r, S> Responder<'r, 'r> for EventStream<S>
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

/// Every message after `from`, page by page, or `None` if the store cannot
/// say (unknown id, store unavailable).
async fn missed_since(chat: &Chat, from: &str) -> Option<Vec<Arc<LiveEvent>>> {
    let mut out = Vec::new();
    let mut cursor = from.to_owned();
    loop {
        let page = chat
            .list(Page::After(cursor.clone()), MAX_LIMIT)
            .await
            .ok()?;
        let done = page.len() < MAX_LIMIT;
        if let Some(last) = page.last() {
            cursor = last.message.id.clone();
        }
        out.extend(page);
        if done {
            return Some(out);
        }
    }
}

#[get("/api/events?<after>")]
pub async fn events<'r>(
    chat: &'r State<Chat>,
    last_event_id: LastEventId,
    after: Option<&str>,
    mut shutdown: Shutdown,
) -> EventStream<impl futures::Stream<Item = Bytes> + 'r> {
    // Subscribe before reading the replay, so nothing falls between the two.
    let mut rx = chat.live.subscribe();
    let chat: &Chat = chat.inner();
    let resume_from = last_event_id.0.or_else(|| {
        after
            .filter(|id| validate_id(id).is_ok())
            .map(str::to_owned)
    });
    let replay = match &resume_from {
        Some(id) => missed_since(chat, id).await.unwrap_or_default(),
        None => Vec::new(),
    };
    // Where to catch up from if the broadcast outruns this subscriber.
    let mut last_id = match (replay.last(), resume_from) {
        (Some(e), _) => Some(e.message.id.clone()),
        (None, Some(id)) => Some(id),
        (None, None) => chat.newest_id().await.ok().flatten(),
    };

    EventStream(ByteStream! {
        let mut seen = Seen::default();
        // Tells EventSource how soon to reconnect, and flushes the headers.
        yield Bytes::from_static(b"retry: 2000\n: connected\n\n");
        for event in replay {
            seen.insert(&event.message.id);
            yield event.frame.clone();
        }
        let mut heartbeat = interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
        loop {
            select! {
                received = rx.recv() => match received {
                    Ok(event) => {
                        if seen.insert(&event.message.id) {
                            last_id = Some(event.message.id.clone());
                            yield event.frame.clone();
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let Some(from) = last_id.clone() else { break };
                        let Some(missed) = missed_since(chat, &from).await else { break };
                        for event in missed {
                            if seen.insert(&event.message.id) {
                                last_id = Some(event.message.id.clone());
                                yield event.frame.clone();
                            }
                        }
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = heartbeat.tick() => yield Bytes::from_static(b": heartbeat\n\n"),
                _ = &mut shutdown => break,
            }
        }
    })
}
