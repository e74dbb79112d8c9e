//! `/api/events`: Server-Sent Events, one `message` event per new message.
//!
//! A subscriber first replays what it missed (from `Last-Event-ID`, or the
//! `after` query parameter a page uses on its first connection), then follows
//! the live broadcast; when the store does not have the message it names, a
//! `reset` event says so before the stream goes live. If it falls behind
//! the broadcast it catches up, from the cache while the cache still holds
//! what it missed, else from the store; if the store cannot answer, the
//! stream ends, and the browser's reconnect with `Last-Event-ID` replays
//! the gap.
//!
//! A subscriber keeps constant state, however long it lives: the next
//! arrival in the cache it has not been sent ([`Arrival`]: the cache numbers
//! messages in the order the broadcast sends them) and the id of the last
//! message it was sent. Overlap between a catch-up and the broadcast is
//! decided from the arrival alone.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use rocket::http::uri::Origin;
use rocket::http::{ContentType, Header};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::stream::ByteStream;
use rocket::response::{self, Redirect, Responder, Response};
use rocket::tokio::select;
use rocket::tokio::sync::broadcast::error::RecvError;
use rocket::tokio::time::{interval_at, Instant};
use rocket::{get, Shutdown, State};

use crate::cache::Arrival;
use crate::chat::{Chat, MAX_LIMIT};
use crate::message::validate_id;
use crate::store::{Cursor, StoreError};

/// How often an idle stream gets a comment line (`heartbeat_secs`), so
/// proxies and browsers keep it open. Rocket state.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat(pub Duration);

/// The `Last-Event-ID` request header, when it names a valid id.
pub struct LastEventId(Option<String>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for LastEventId {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        Outcome::Success(LastEventId(valid_id(
            req.headers().get_one("Last-Event-ID"),
        )))
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

/// `GET /api/events?after`: 200 with a `text/event-stream` (the WHATWG HTML
/// standard's server-sent events) of `message` events, `id:` the message id
/// and `data:` the message as JSON: when `Last-Event-ID` (else `after`)
/// names a valid id, first the messages after it (or, when the store does
/// not have that message, one `reset` event), then each new one; a
/// `: heartbeat` comment every `heartbeat_secs`. Never an error status: the
/// stream ends at shutdown, or when the store cannot say what was missed.
///
/// The front door serves every `GET` of exactly this path itself, with the
/// same [`stream`] and the head this route's response gets
/// ([`crate::api::dispatch`]). What reaches this route is a `HEAD`, which
/// gets that head, or a request for a path Rocket matches to this route in
/// another spelling (`/api/events/`, `//api/events`, `/api/%65vents`): that
/// gets a `308` to the path itself, which `EventSource` and other clients
/// follow. Rocket cannot stream it (the front door reads every response it
/// hands to Rocket whole, and this one never ends), and the front door
/// cannot know every spelling Rocket's routing accepts, so the route sends
/// the client to the one the front door serves. (A query field given twice
/// never gets here: the request checks refuse it first.)
#[get("/api/events?<after>")]
pub fn events(
    chat: &State<Chat>,
    heartbeat: &State<Heartbeat>,
    last_event_id: LastEventId,
    after: Option<&str>,
    origin: &Origin<'_>,
    shutdown: Shutdown,
) -> Result<SseBytes<impl futures::Stream<Item = Bytes>>, Box<Redirect>> {
    // By the path as sent, not the method: Rocket answers a `HEAD` with
    // its `GET` route, and tells the route it is a `GET`.
    if origin.path().as_str() != "/api/events" {
        let to = match origin.query() {
            Some(query) => format!(
                "/api/events?{}",
                utf8_percent_encode(query.as_str(), NOT_IN_A_QUERY)
            ),
            None => "/api/events".to_owned(),
        };
        // Rocket answers `Err` with its responder, as it does `Ok`.
        return Err(Box::new(Redirect::permanent(to)));
    }
    let resume_from = last_event_id.0.or_else(|| valid_id(after));
    Ok(SseBytes(ByteStream(stream(
        chat.inner().clone(),
        heartbeat.0,
        resume_from,
        shutdown,
    ))))
}

/// What may come in a request's query (hyper lets through any byte but a
/// few) but not in a URI's (RFC 3986 §3.4): percent-encoded in the
/// `Location` of a redirect, which Rocket refuses to send otherwise. A `%`
/// stays as it is, so the query means the same once decoded.
const NOT_IN_A_QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// `id` when it is a valid message id.
pub fn valid_id(id: Option<&str>) -> Option<String> {
    id.map(str::trim)
        .filter(|id| validate_id(id).is_ok())
        .map(str::to_owned)
}

/// The `reset` event: the stream cannot replay what came after `unknown`,
/// a message the store does not have, and goes on live. Its `id:` is
/// `newest`, the newest message now (empty when there is none), so a
/// client's reconnect resumes from there instead of asking again; its
/// data says why, in the API's error shape. `EventSource` clients that
/// listen only for `message` events never see it.
fn reset_frame(unknown: &str, newest: Option<&str>) -> Bytes {
    let data = serde_json::json!({ "error": format!("no message has id {unknown}") });
    Bytes::from(format!(
        "event: reset\nid: {}\ndata: {data}\n\n",
        newest.unwrap_or("")
    ))
}

/// Sets `last` to `id` in the buffer it already has: a stream remembers
/// each message it sends, and a copy into the same buffer allocates
/// nothing.
fn remember(last: &mut Option<String>, id: &str) {
    match last {
        Some(last) => {
            last.clear();
            last.push_str(id);
        }
        None => *last = Some(id.to_owned()),
    }
}

/// One subscriber's event stream: the bytes of `/api/events`'s body, from
/// `retry:` on. When `resume_from` names a message, first the messages after
/// it, then each new one; a `: heartbeat` comment every `every`; it ends
/// when `shutdown` resolves or the store cannot say what was missed.
///
/// It subscribes to the broadcast now, before the stream is first polled,
/// so a message published once this returns is in the stream.
pub fn stream<F>(
    chat: Chat,
    every: Duration,
    resume_from: Option<String>,
    shutdown: F,
) -> impl futures::Stream<Item = Bytes> + Send + 'static
where
    F: Future<Output = ()> + Send + Unpin + 'static,
{
    // Subscribe before reading anything, so nothing falls between the two.
    let (mut rx, now) = chat.subscribe();
    let mut shutdown = shutdown;
    async_stream::stream! {
        // What this subscriber has, in constant memory: the next arrival in
        // the cache it has not been sent (while it follows the cache), and
        // the last message it was sent (where a replay from the store
        // continues).
        let mut next: Option<Arrival> = None;
        let mut last_id = resume_from.clone();
        let mut catching_up = resume_from.is_some();
        // Subscribed before the cache was first loaded (a MongoDB store
        // whose change stream has not started yet): what the load brings
        // in is not broadcast, so a message stored after `last_id` and
        // before the load would never reach this stream. Once the cache is
        // complete, the stream catches up from `last_id` first.
        let mut before_first_load = false;
        if !catching_up {
            next = now;
            if next.is_none() {
                last_id = chat.newest_id().await.ok().flatten();
                before_first_load = true;
            }
        }
        // Ids of the last page read from the store while the cache could
        // not answer: the broadcast may bring them again once. Empty unless
        // the cache was incomplete; at most one page.
        let mut overlap: Vec<String> = Vec::new();
        // Tells EventSource how soon to reconnect, and flushes the headers.
        yield Bytes::from_static(b"retry: 2000\n: connected\n\n");
        let mut heartbeat = interval_at(Instant::now() + every, every);
        loop {
            if catching_up {
                // From the cache, by arrival, while it still holds them.
                if let Some(batch) = next.and_then(|n| chat.since(n, MAX_LIMIT)) {
                    catching_up = batch.len() == MAX_LIMIT;
                    for cached in batch {
                        next = cached.arrival.map(Arrival::next);
                        remember(&mut last_id, &cached.message.id);
                        yield cached.frame.clone();
                    }
                    continue;
                }
                // Otherwise by id, one page at a time (the cache answers
                // when it holds the id, the store when not).
                let cursor = match &last_id {
                    Some(id) => Cursor::After(id.clone()),
                    None => Cursor::Latest,
                };
                match chat.list(cursor, MAX_LIMIT).await {
                    Ok(batch) => {
                        let full = batch.len() == MAX_LIMIT;
                        next = None;
                        for cached in &batch {
                            let id = &cached.message.id;
                            // Once the replay reaches what the cache holds,
                            // it continues by arrival.
                            next = cached.arrival.or_else(|| chat.arrival_of(id)).map(Arrival::next);
                            remember(&mut last_id, id);
                            yield cached.frame.clone();
                        }
                        if batch.is_empty() {
                            next = last_id.as_deref().and_then(|id| chat.arrival_of(id)).map(Arrival::next);
                        }
                        catching_up = full || (next.is_some() && !batch.is_empty());
                        if !catching_up && last_id.is_some() {
                            overlap = batch.iter().map(|c| c.message.id.clone()).collect();
                        }
                    }
                    // An id the store does not have (it was wiped, or the
                    // id is another deployment's): nothing can be
                    // replayed, so the client is told that what it missed
                    // is unknown, and the stream goes live from here.
                    // The stream goes on after the newest message, which
                    // the client has once it follows the reset: a message
                    // the broadcast brings that is not newer (stored after
                    // this stream subscribed, before the read) is not sent.
                    Err(StoreError::UnknownId(unknown)) => {
                        catching_up = false;
                        let newest = chat.list(Cursor::Latest, 1).await.ok().and_then(|b| b.into_iter().last());
                        last_id = newest.as_ref().map(|c| c.message.id.clone());
                        next = newest
                            .as_ref()
                            .and_then(|c| c.arrival.or_else(|| chat.arrival_of(&c.message.id)))
                            .map(Arrival::next);
                        overlap = last_id.iter().cloned().collect();
                        yield reset_frame(&unknown, last_id.as_deref());
                    }
                    // The store cannot say what was missed right now: end
                    // the stream, and the client's reconnect with
                    // Last-Event-ID asks again.
                    Err(_) => break,
                }
                continue;
            }
            // In this order, and no further once one is ready, so a
            // stream woken for an event does not poll its heartbeat timer.
            // The front door's shutdown costs one atomic load a poll
            // (`api::shutdown`).
            select! {
                biased;
                _ = &mut shutdown => break,
                received = rx.recv() => match received {
                    // The catch-up reads this message too, in its order.
                    Ok(_) if before_first_load && chat.cache_complete() => {
                        before_first_load = false;
                        catching_up = true;
                    }
                    Ok(cached) => {
                        let fresh = match (cached.arrival, next) {
                            (Some(arrival), Some(next)) => arrival.is_at_or_after(next),
                            _ => None,
                        }
                        .unwrap_or_else(|| !overlap.contains(&cached.message.id));
                        if fresh {
                            overlap.clear();
                            next = cached.arrival.map(Arrival::next);
                            remember(&mut last_id, &cached.message.id);
                            yield cached.frame.clone();
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        chat.record_catch_up();
                        catching_up = true;
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = heartbeat.tick() => {
                    if before_first_load && chat.cache_complete() {
                        before_first_load = false;
                        catching_up = true;
                    }
                    yield Bytes::from_static(b": heartbeat\n\n");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use figment::providers::Serialized;
    use figment::Figment;
    use futures::StreamExt;

    use super::*;
    use crate::config::{layered, Config};
    use crate::message::NewMessage;

    async fn chat_in(dir: &Path) -> Chat {
        let figment = layered(
            Figment::from(rocket::Config::debug_default()),
            Path::new("/nonexistent/simplechat.toml"),
        )
        .merge(Serialized::globals(serde_json::json!({ "data_dir": dir })));
        Chat::open(&Config::from_figment(figment).unwrap())
            .await
            .unwrap()
    }

    async fn post(chat: &Chat, text: &str) -> String {
        let new = NewMessage::validate("ann", text, None).unwrap();
        chat.post(new).await.unwrap().message().id.clone()
    }

    /// The `event:` and `id:` of the next frame that has an event.
    async fn next_event(
        frames: &mut (impl futures::Stream<Item = Bytes> + Unpin),
    ) -> (String, String) {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), frames.next())
                .await
                .expect("a frame in time")
                .expect("the stream is open");
            let text = String::from_utf8(frame.to_vec()).unwrap();
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::to_owned)
            };
            if let (Some(event), Some(id)) = (field("event: "), field("id: ")) {
                return (event, id);
            }
        }
    }

    /// A message stored after a stream subscribed and before it learned
    /// that the id it resumes from is unknown is the newest its `reset`
    /// names, so a client that follows the reset (reloading the latest
    /// messages, resuming from that id) has it. It was then also sent as a
    /// `message` after the reset: once too often, and only when the
    /// timing fell so. What the reset names is now never sent after it.
    #[tokio::test]
    async fn a_message_the_reset_names_is_not_sent_again_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let chat = chat_in(dir.path()).await;
        post(&chat, "before").await;
        // Subscribed now, first polled below.
        let frames = stream(
            chat.clone(),
            Duration::from_secs(60),
            Some("gone-from-this-store".to_owned()),
            futures::future::pending(),
        );
        let mut frames = Box::pin(frames);
        let around = post(&chat, "posted around the reset").await;
        assert_eq!(
            next_event(&mut frames).await,
            ("reset".to_owned(), around.clone())
        );
        let after = post(&chat, "after the reset").await;
        assert_eq!(next_event(&mut frames).await, ("message".to_owned(), after));
    }
}
