//! `/api/events`: Server-Sent Events, one `message` event per new message.
//!
//! A subscriber first replays what it missed (from `Last-Event-ID`, or the
//! `after` query parameter a page uses on its first connection), then follows
//! the live broadcast; when the store does not have the message it names
//! (or what it names is no message id at all), a `reset` event says so
//! before the stream goes live. If it falls behind the broadcast it
//! catches up, from the cache while the cache still holds what it missed,
//! else from the store; if the store cannot answer, the stream ends, and
//! the browser's reconnect with `Last-Event-ID` replays the gap.
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
use rocket::get;
use rocket::http::uri::Origin;
use rocket::http::{ContentType, Header};
use rocket::request::Request;
use rocket::response::stream::ByteStream;
use rocket::response::{self, Redirect, Responder, Response};
use rocket::tokio::select;
use rocket::tokio::sync::broadcast::error::{RecvError, TryRecvError};
use rocket::tokio::time::{interval_at, Instant};

use crate::api::budget;
use crate::api::echo::echo;
use crate::cache::{Arrival, MESSAGE_MAX_BYTES};
use crate::chat::{Chat, MAX_LIMIT};
use crate::message::validate_id;
use crate::store::{Cursor, StoreError};

/// Where a subscriber's stream starts, from what its client names as the
/// last event it has: `Last-Event-ID` when the request has one that is not
/// blank (the browser's reconnect sends it, and it is newer than the URL's
/// `after`), else the `after` query parameter when it is given.
///
/// Whitespace around the header's value is not part of it (RFC 9110 §5.5),
/// and a blank one names no event: the header carries the `EventSource`'s
/// last event ID, which is empty until an event sets one, and which a
/// browser does not send at all while it is empty (the WHATWG HTML
/// standard, server-sent events, "last event ID string":
/// <https://html.spec.whatwg.org/multipage/server-sent-events.html>). `after` is a cursor like the listing's `before` and
/// `after`, a message id as sent, so one with whitespace around it, or an
/// empty one, is no message id (the listing refuses either with 400; here
/// it gets a `reset`, as a stream cannot be answered with an error a
/// browser's `EventSource` reads). An empty cursor is not taken for a
/// missing one: it comes from a client whose cursor went missing, which
/// would otherwise get a live start (or, from the listing, the latest
/// page) with no sign that what it meant to resume from was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Nothing named: the stream starts from now.
    Live,
    /// A valid message id: first the messages after it.
    After(String),
    /// Something that is not a message id (another deployment's, or
    /// garbage): nothing can be replayed, so the stream begins with a
    /// `reset`, as for an id the store does not have. Holds what was sent.
    NotAnId(String),
}

impl Resume {
    /// The start a request names with its `Last-Event-ID` header and its
    /// `after` query parameter (each as sent, `None` when absent).
    pub fn named(last_event_id: Option<&str>, after: Option<&str>) -> Resume {
        let header = last_event_id
            .map(|id| id.trim_matches([' ', '\t']))
            .filter(|id| !id.is_empty());
        match header.or(after) {
            None => Resume::Live,
            Some(id) if validate_id(id).is_ok() => Resume::After(id.to_owned()),
            Some(id) => Resume::NotAnId(id.to_owned()),
        }
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
/// names an id ([`Resume`]), first the messages after it (or, when the
/// store does not have that message or it is no message id, one `reset`
/// event), then each new one; a
/// `: heartbeat` comment every `heartbeat_secs`. Never an error status: the
/// stream ends at shutdown, or when the store cannot say what was missed.
///
/// The front door serves every `GET` of exactly this path itself, with
/// [`stream`] and the head this route's response gets
/// ([`crate::api::dispatch`]). What reaches this route is a `HEAD`, which
/// gets that head (and no stream: a `HEAD`'s body is never sent, and a
/// stream would have to read the store before it could start), or a
/// request for a path Rocket matches to this route in
/// another spelling (`/api/events/`, `//api/events`, `/api/%65vents`): that
/// gets a `308` to the path itself, which `EventSource` and other clients
/// follow. Rocket cannot stream it (the front door reads every response it
/// hands to Rocket whole, and this one never ends), and the front door
/// cannot know every spelling Rocket's routing accepts, so the route sends
/// the client to the one the front door serves. (A query field given twice
/// never gets here: the request checks refuse it first.)
#[get("/api/events")]
pub fn events(
    origin: &Origin<'_>,
) -> Result<SseBytes<futures::stream::Empty<Bytes>>, Box<Redirect>> {
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
    Ok(SseBytes(ByteStream(futures::stream::empty())))
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

/// The `reset` event: the stream cannot replay what came after `named`,
/// which is no message the store has (`why` says how), and goes on live.
/// Its `id:` is `newest`, the newest message now (empty when there is
/// none), so a client's reconnect resumes from there instead of asking
/// again; its data says why, in the API's error shape, with at most
/// [`ECHO_MAX_CHARS`](crate::api::echo::ECHO_MAX_CHARS) of what was named, made safe to show ([`echo`]). `EventSource` clients that listen
/// only for `message` events never see it.
fn reset_frame(named: &str, why: Option<&str>, newest: Option<&str>) -> Bytes {
    let shown = if named.is_empty() {
        "an empty id".to_owned()
    } else {
        format!("id {}", echo(named))
    };
    let error = match why {
        Some(why) => format!("no message has {shown} ({why})"),
        None => format!("no message has {shown}"),
    };
    let data = serde_json::json!({ "error": error });
    Bytes::from(format!(
        "event: reset\nid: {}\ndata: {data}\n\n",
        newest.unwrap_or("")
    ))
}

/// Where a stream that cannot replay goes live: after the newest message
/// now, which a client that follows the reset has (its id, and the cache's
/// next arrival after it, if the cache holds it; no id when the store has
/// no message, so that everything stored from then on is after it).
///
/// Errors: the store cannot say which message is the newest. The stream
/// then ends, and the client's reconnect asks again: going on from a
/// guess, it would replay history the client has, or skip what it lacks.
async fn live_after_newest(chat: &Chat) -> Result<(Option<String>, Option<Arrival>), StoreError> {
    let newest = chat.list(Cursor::Latest, 1).await?.into_iter().last();
    let next = newest
        .as_ref()
        .and_then(|c| c.arrival.or_else(|| chat.arrival_of(&c.message.id)))
        .map(Arrival::next);
    Ok((newest.map(|c| c.message.id.clone()), next))
}

/// Whether a stream placed by a read that began when the cache was
/// `complete_before` (and placed at `next`, if the cache could) must wait
/// for the cache to be complete and catch up: the read may have gone to
/// the store before a load whose messages are not broadcast, even if the
/// cache became complete while it ran.
fn read_without_the_cache(complete_before: bool, next: Option<Arrival>, chat: &Chat) -> bool {
    !complete_before || (next.is_none() && !chat.cache_complete())
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

/// How an event stream shows it is alive while no message comes.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// How often (`heartbeat_secs`).
    pub every: Duration,
    /// `false`: a `: heartbeat` comment, which no `EventSource` shows its
    /// page. `true` (`?heartbeat=event`): a `heartbeat` event whose data is
    /// `every` in whole seconds, also sent as the stream opens, so that a
    /// page can tell a stream that stopped bringing anything (a network
    /// path that passes nothing more closes nothing: the browser waits on
    /// it for ever) from a quiet one. A client that listens only for
    /// `message` events never sees it.
    pub as_event: bool,
}

impl Heartbeat {
    /// The frame sent every [`Heartbeat::every`].
    fn frame(self) -> Bytes {
        if self.as_event {
            Bytes::from(format!(
                "event: heartbeat\ndata: {}\n\n",
                self.every.as_secs().max(1)
            ))
        } else {
            Bytes::from_static(b": heartbeat\n\n")
        }
    }
}

/// One subscriber's event stream: the bytes of `/api/events`'s body, from
/// `retry:` on. When `resume` names a message, first the messages after
/// it (a `reset` when there is no such message), then each new one; a
/// heartbeat every `heartbeat.every` ([`Heartbeat`]); it ends when `shutdown` resolves
/// or the store cannot say what was missed.
///
/// It subscribes to the broadcast before it returns, so a message
/// published once it has returned is in the stream, and the response,
/// sent once it has returned, opens it only then. A live start the cache
/// cannot place (a MongoDB store before its first load, or while its
/// change stream reopens) reads the newest message from the store first,
/// and subscribes after: what is stored from then on comes after that
/// message, and the stream sends it when a message published meanwhile
/// sends it to the store, or once the cache is complete. When that
/// read fails, the stream ends after its `retry:` line, and the client's
/// reconnect asks again. The `reset` for what is no message id reads the
/// newest message before it returns too, so it names none stored once the
/// stream is open.
pub async fn stream<F>(
    chat: Chat,
    heartbeat: Heartbeat,
    resume: Resume,
    client: Option<std::net::IpAddr>,
    shutdown: F,
) -> impl futures::Stream<Item = Bytes> + Send + 'static
where
    F: Future<Output = ()> + Send + Unpin + 'static,
{
    // Before anything else, so that the cache's completion, whenever it
    // comes, is news to it.
    let mut completeness = chat.completeness();
    // Subscribe before reading anything, so nothing falls between the two.
    let (mut rx, mut now) = chat.subscribe();
    // The cache cannot say where now is: the store can, and the
    // subscription follows its answer. Read after subscribing, the newest
    // message could be one stored after the subscription, taken as
    // already sent and never sent.
    let mut live_after = None;
    if resume == Resume::Live && now.is_none() {
        live_after = Some(chat.newest_id().await);
        (rx, now) = chat.subscribe();
    }
    // Nothing can be replayed after what is no message id: the stream goes
    // on after the newest message, read after subscribing, unlike a live
    // start's: a message stored in between is the newest the reset names,
    // which a client that follows the reset (reloading the latest
    // messages) has. Read before the response goes out, so that what is
    // stored once the stream is open comes after the message it names.
    let reset = match &resume {
        Resume::NotAnId(named) => {
            let complete_before = chat.cache_complete();
            Some(live_after_newest(&chat).await.map(|(newest, next)| {
                let why = validate_id(named).err().map(|e| e.message);
                let frame = reset_frame(named, why.as_deref(), newest.as_deref());
                (frame, newest, next, complete_before)
            }))
        }
        _ => None,
    };
    let mut shutdown = shutdown;
    async_stream::stream! {
        // What this subscriber has, in constant memory: the next arrival in
        // the cache it has not been sent (while it follows the cache), and
        // the last message it was sent (where a replay from the store
        // continues). No last message means none was stored when the
        // stream was placed: a replay then begins at the oldest message,
        // not at the latest page, which would skip what is before it.
        let mut next: Option<Arrival> = None;
        let mut last_id = match resume {
            Resume::After(id) => Some(id),
            Resume::Live | Resume::NotAnId(_) => None,
        };
        let mut catching_up = last_id.is_some();
        // Placed by message id while the cache is not complete (a MongoDB
        // store before its first load, or while its change stream
        // reopens): the broadcast is not followed until it is. What the
        // first load brings in is not broadcast, and what this instance
        // publishes before it (its own posts) can come, in the store
        // order, after messages stored elsewhere that only the load brings
        // in: sent as they come, these would be missed, or sent out of
        // order. Each one published sends the stream to the store instead,
        // for what is after `last_id`, in the store order; once the cache
        // is complete, it catches up from `last_id` once more and follows
        // the broadcast.
        let mut until_complete = false;
        match live_after {
            None => {
                if let (false, None, Some(start)) = (catching_up, &reset, now) {
                    next = Some(start.next);
                    last_id = start.after;
                }
            }
            Some(Ok(newest)) => {
                last_id = newest;
                // Complete by the time it subscribed: the catch-up from
                // the cache can begin at once.
                catching_up = now.is_some();
                until_complete = now.is_none();
            }
            Some(Err(_)) => {
                yield Bytes::from_static(b"retry: 2000\n\n");
                return;
            }
        }
        let reset = match reset {
            Some(Ok(reset)) => Some(reset),
            None => None,
            Some(Err(_)) => {
                yield Bytes::from_static(b"retry: 2000\n\n");
                return;
            }
        };
        // Tells EventSource how soon to reconnect, and flushes the headers.
        yield Bytes::from_static(b"retry: 2000\n: connected\n\n");
        let beat = heartbeat.frame();
        if heartbeat.as_event {
            yield beat.clone();
        }
        if let Some((frame, newest, placed, complete_before)) = reset {
            (last_id, next) = (newest, placed);
            // As on a live start: read without the cache, catch up from
            // there once it is complete.
            until_complete = read_without_the_cache(complete_before, next, &chat);
            yield frame;
        }
        let mut beats = interval_at(Instant::now() + heartbeat.every, heartbeat.every);
        loop {
            // The one place a stream waiting for the cache starts its
            // catch-up: woken by the watch or a broadcast below, or
            // complete already (the watch's change seen before, or come
            // while the stream was reading, would not wake it).
            if until_complete && chat.cache_complete() {
                until_complete = false;
                catching_up = true;
            }
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
                // Sent nothing yet, and the cache holds everything: from
                // its oldest message. The store could be read too, but it
                // may already have messages the change stream has yet to
                // bring into the cache: sent now, they would be on this
                // stream before this instance's listings show them.
                if let (None, None, Some(oldest)) = (&last_id, next, chat.oldest_arrival()) {
                    next = Some(oldest);
                    continue;
                }
                // Otherwise by id, one page at a time (the cache answers
                // when it holds the id, the store when not).
                let cursor = match &last_id {
                    Some(id) => Cursor::After(id.clone()),
                    None => Cursor::Oldest,
                };
                // A page the store reads is new memory, held until its
                // frames are sent: taken from the budget of large
                // responses in flight before the read, for the most it may
                // hold, then kept for what it holds. Many streams replaying
                // from an old id (forged, or after a long absence) wait
                // their turn there instead of each holding a page of its
                // own. The cache's pages are shared, and take nothing.
                let from_store = !matches!(&cursor, Cursor::After(id) if chat.holds(id));
                // Waiting its turn, it still ends at shutdown or once its
                // client has gone.
                let mut held = if from_store {
                    select! {
                        biased;
                        _ = &mut shutdown => break,
                        taken = budget::take(client, MAX_LIMIT * MESSAGE_MAX_BYTES) => taken,
                    }
                } else {
                    None
                };
                let complete_before = chat.cache_complete();
                match chat.list(cursor, MAX_LIMIT).await {
                    Ok(batch) => {
                        budget::keep(&mut held, batch.iter().map(|c| c.held_bytes()).sum());
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
                        // Begun before the cache was complete: what the load
                        // brings in after this read is not broadcast, even
                        // when the cache has become complete since and
                        // placed the read's last message.
                        if !catching_up && !complete_before {
                            until_complete = true;
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
                    // Unless it is the stream's last message, deleted by
                    // another client (a moderator, from the shell): then it
                    // goes on after the message just older than it that is
                    // still stored, and misses nothing (the deleted one it
                    // has; nothing it was not sent was between the two).
                    Err(StoreError::UnknownId(unknown)) => {
                        let deleted = last_id.as_deref() == Some(unknown.as_str());
                        if let Some(before) = chat.still_stored_before(&unknown).filter(|_| deleted) {
                            (last_id, next) = (Some(before), None);
                            continue;
                        }
                        catching_up = false;
                        let complete_before = chat.cache_complete();
                        let Ok(placed) = live_after_newest(&chat).await else {
                            break;
                        };
                        (last_id, next) = placed;
                        until_complete = read_without_the_cache(complete_before, next, &chat);
                        yield reset_frame(&unknown, None, last_id.as_deref());
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
                // Woken to look again: the loop's first check turns a
                // complete cache into the catch-up.
                Ok(()) = completeness.changed(), if until_complete => {}
                received = rx.recv() => match received {
                    // Something was published (this instance's own post,
                    // before its first load): the store has it, in its
                    // order, behind what another instance stored before
                    // it, which only the load would bring in. So it is
                    // read from the store now, not when the load is done,
                    // however long that takes, and the stream goes on
                    // waiting for the cache; what else was published
                    // meanwhile is in the same read.
                    Ok(_) if until_complete => {
                        while !matches!(
                            rx.try_recv(),
                            Err(TryRecvError::Empty | TryRecvError::Closed)
                        ) {}
                        catching_up = true;
                    }
                    // Published after a reset of the cache that this
                    // stream has not caught up with (a new epoch, whose
                    // arrivals do not compare with `next`), which let go
                    // of the message the stream was last sent: the store
                    // may have lost it (its collection was dropped), and
                    // then what the stream sent is gone, and this message
                    // is no continuation of it. So the stream catches up
                    // from that message, which tells the client so with a
                    // `reset`, or sends what the store has after it. A
                    // reset that kept it is followed as before (below):
                    // catching up from it in the new order would send
                    // again a message the stream has that moved after it
                    // (a raced post's new position).
                    Ok(cached)
                        if cached
                            .arrival
                            .zip(next)
                            .is_some_and(|(arrival, next)| arrival.epoch > next.epoch)
                            && last_id.as_deref().is_some_and(|id| !chat.holds(id)) =>
                    {
                        catching_up = true;
                    }
                    Ok(cached) => {
                        // Placed by a read from the store, whose last message
                        // the cache did not hold: the store was ahead of this
                        // instance's change stream (the message was stored
                        // through another instance a moment ago). The cache
                        // is published in the store order, so whatever it
                        // brings before that message is at or before it, and
                        // sent, or the client had it. Until the cache holds
                        // it, each message published sends the stream to the
                        // store for what is after it; once the cache holds
                        // it, the stream follows the broadcast from there.
                        if let (None, Some(id)) = (next, &last_id) {
                            match chat.arrival_of(id) {
                                Some(arrival) => next = Some(arrival.next()),
                                None => {
                                    catching_up = true;
                                    continue;
                                }
                            }
                        }
                        let fresh = match (cached.arrival, next) {
                            // Published before the reset that began the
                            // epoch this stream follows: that reset placed
                            // it (or dropped it, when the store does not
                            // have it) ahead of `next`, and the catch-up
                            // from the cache sent it then. Sent again here,
                            // it would come twice, and out of order.
                            (Some(arrival), Some(next)) if arrival.epoch < next.epoch => Some(false),
                            (Some(arrival), Some(next)) => arrival.is_at_or_after(next),
                            _ => None,
                        }
                        // A later epoch's (a reset that kept the stream's
                        // last message), or nothing sent yet from a store
                        // that had no message when the stream was placed:
                        // new.
                        .unwrap_or(true);
                        if fresh {
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
                _ = beats.tick() => {
                    yield beat.clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

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

    /// A replay from an id older than the cache reads its pages from the
    /// store: each takes from the budget of large responses in flight for
    /// as long as its frames are being sent, so a crowd of streams
    /// resuming from an old id (or forging one) waits its turn instead of
    /// each holding up to 32 MB. It took nothing before: 200 such streams
    /// left unread held a page each.
    #[tokio::test]
    async fn a_replay_from_the_store_holds_its_page_in_the_budget_until_it_is_sent() {
        use crate::api::budget::counted;
        let dir = tempfile::tempdir().unwrap();
        let chat = chat_in(dir.path()).await;
        let text = "x".repeat(crate::message::TEXT_MAX_CHARS);
        // More than the cache holds, posted side by side (one commit each
        // would take seconds).
        for _ in 0..(crate::cache::CACHE_CAPACITY + MAX_LIMIT / 10) / 50 {
            futures::future::join_all((0..50).map(|_| post(&chat, &text))).await;
        }
        let oldest = chat.list(Cursor::Oldest, 1).await.unwrap()[0]
            .message
            .id
            .clone();
        assert!(
            !chat.holds(&oldest),
            "the oldest message is out of the cache"
        );

        let _alone = counted::BY_ONE_TEST.lock().await;
        let before = counted::free_bytes();
        let heartbeat = Heartbeat {
            every: Duration::from_secs(60),
            as_event: false,
        };
        let mut frames = Box::pin(
            stream(
                chat.clone(),
                heartbeat,
                Resume::After(oldest),
                None,
                futures::future::pending(),
            )
            .await,
        );
        // 1,000 messages of 2,000 characters, as JSON and as frames.
        let page_bytes = 2 * MAX_LIMIT * crate::message::TEXT_MAX_CHARS;
        for sent in 1..=MAX_LIMIT {
            next_event(&mut frames).await;
            if sent == 1 || sent == MAX_LIMIT {
                let taken = before - counted::free_bytes();
                assert!(
                    taken >= page_bytes,
                    "after {sent} of the page's frames, {taken} bytes taken; its page holds more than {page_bytes}"
                );
            }
        }
        // The next is the cache's, shared: the page is given back.
        next_event(&mut frames).await;
        assert_eq!(
            counted::free_bytes(),
            before,
            "the page given back once sent"
        );
    }

    /// A message stored after a stream subscribed and before it learned
    /// that the id it resumes from is unknown is the newest its `reset`
    /// names, so a client that follows the reset (reloading the latest
    /// messages, resuming from that id) has it. It was then also sent as a
    /// `message` after the reset: once too often, and only when the
    /// timing fell so. What the reset names is now never sent after it.
    #[tokio::test]
    async fn a_message_the_reset_names_is_not_sent_again_after_it() {
        {
            let resume = Resume::After("gone-from-this-store".to_owned());
            let dir = tempfile::tempdir().unwrap();
            let chat = chat_in(dir.path()).await;
            post(&chat, "before").await;
            // Subscribed now, first polled below.
            let frames = stream(
                chat.clone(),
                Heartbeat {
                    every: Duration::from_secs(60),
                    as_event: false,
                },
                resume.clone(),
                None,
                futures::future::pending(),
            )
            .await;
            let mut frames = Box::pin(frames);
            let around = post(&chat, "posted around the reset").await;
            assert_eq!(
                next_event(&mut frames).await,
                ("reset".to_owned(), around.clone()),
                "{resume:?}"
            );
            let after = post(&chat, "after the reset").await;
            assert_eq!(
                next_event(&mut frames).await,
                ("message".to_owned(), after),
                "{resume:?}"
            );
        }
    }

    /// A store whose publishing the test does: a store that took messages
    /// its change stream has yet to bring into this instance's cache (one
    /// instance's view of what another stored a moment ago). A stand-in
    /// for MongoDB where the test must bring the cache part of what the
    /// store has, one message at a time, which the simulator cannot stage
    /// (it holds every change stream or none).
    struct TrailingStore(std::sync::Mutex<Vec<crate::message::Message>>);

    #[async_trait::async_trait]
    impl crate::store::Store for TrailingStore {
        async fn insert(&self, _: NewMessage) -> Result<crate::store::Inserted, StoreError> {
            unreachable!("the test stores by hand")
        }
        async fn get(&self, id: &str) -> Result<Option<crate::message::Message>, StoreError> {
            let stored = self.0.lock().unwrap();
            Ok(stored.iter().find(|m| m.id == id).cloned())
        }
        async fn list(
            &self,
            cursor: Cursor,
            limit: usize,
        ) -> Result<Vec<crate::message::Message>, StoreError> {
            let stored = self.0.lock().unwrap();
            let at = |id: &str| {
                stored
                    .iter()
                    .position(|m| m.id == id)
                    .ok_or_else(|| StoreError::UnknownId(id.to_owned()))
            };
            let range = match cursor {
                Cursor::Latest => stored.len().saturating_sub(limit)..stored.len(),
                Cursor::Oldest => 0..limit.min(stored.len()),
                Cursor::After(id) => {
                    let from = at(&id)? + 1;
                    from..(from + limit).min(stored.len())
                }
                Cursor::Before(id) => {
                    let to = at(&id)?;
                    to.saturating_sub(limit)..to
                }
            };
            Ok(stored[range].to_vec())
        }
        async fn ready(&self) -> Result<(), String> {
            Ok(())
        }
        async fn status(&self) -> crate::store::StoreStatus {
            unreachable!("not asked")
        }
        async fn close(&self) {}
    }

    /// A stream that resumed from a message the cache has yet to be
    /// brought (stored through another instance a moment ago) and read
    /// what follows it from the store: while the cache still trails, a
    /// message stored after the last one it read is sent from the store as
    /// soon as anything is published, and what the cache brings before it
    /// is not sent again. (The simulator's test of the same,
    /// `mongo_app::a_resume_from_a_message_the_change_stream_has_yet_to_bring_sends_each_once`,
    /// holds every change stream at once: it cannot let one through in part.)
    #[tokio::test]
    async fn a_stream_ahead_of_its_cache_sends_what_is_stored_after_it_from_the_store() {
        let message = |i: usize| crate::message::Message {
            id: format!("m{i:02}"),
            name: "ann".to_owned(),
            text: format!("text {i}"),
            datetime: time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(i as u64),
        };
        let store = Arc::new(TrailingStore(std::sync::Mutex::new(
            (0..4).map(message).collect(),
        )));
        let cache = crate::cache::Cache::new();
        cache.reset((0..2).map(message).collect(), true);
        let chat = Chat::on(store.clone(), cache.clone());
        let mut frames = Box::pin(
            stream(
                chat.clone(),
                Heartbeat {
                    every: Duration::from_secs(60),
                    as_event: false,
                },
                Resume::After("m02".to_owned()),
                None,
                futures::future::pending(),
            )
            .await,
        );
        assert_eq!(
            next_event(&mut frames).await,
            ("message".to_owned(), "m03".to_owned())
        );
        store.0.lock().unwrap().push(message(4));
        // The cache is brought m02 only: m04 comes from the store.
        cache.publish(message(2));
        assert_eq!(
            next_event(&mut frames).await,
            ("message".to_owned(), "m04".to_owned())
        );
        for i in 3..5 {
            cache.publish(message(i));
        }
        store.0.lock().unwrap().push(message(5));
        cache.publish(message(5));
        assert_eq!(
            next_event(&mut frames).await,
            ("message".to_owned(), "m05".to_owned())
        );
    }

    /// What is no message id gets a `reset` naming the newest message
    /// before the stream is returned (and its response sent): what is
    /// stored once it is open comes after, as messages, each once.
    #[tokio::test]
    async fn a_reset_for_no_id_names_the_newest_before_the_stream_opens() {
        let dir = tempfile::tempdir().unwrap();
        let chat = chat_in(dir.path()).await;
        let before = post(&chat, "before").await;
        let frames = stream(
            chat.clone(),
            Heartbeat {
                every: Duration::from_secs(60),
                as_event: false,
            },
            Resume::NotAnId("not an id!".to_owned()),
            None,
            futures::future::pending(),
        )
        .await;
        let mut frames = Box::pin(frames);
        let opened = post(&chat, "stored once it is open").await;
        assert_eq!(next_event(&mut frames).await, ("reset".to_owned(), before));
        assert_eq!(
            next_event(&mut frames).await,
            ("message".to_owned(), opened)
        );
        let after = post(&chat, "after the reset").await;
        assert_eq!(next_event(&mut frames).await, ("message".to_owned(), after));
    }

    #[test]
    fn the_header_names_the_start_unless_it_is_blank() {
        let id = "0192f1c3a5b07d3e8f4a6b1c2d3e4f50";
        let other = "0192f1c3a5b07d3e8f4a6b1c2d3e4f51";
        assert_eq!(Resume::named(None, None), Resume::Live);
        assert_eq!(Resume::named(Some(" "), None), Resume::Live);
        // An empty cursor is no message id, as in the listing.
        assert_eq!(
            Resume::named(Some(" "), Some("")),
            Resume::NotAnId(String::new())
        );
        assert_eq!(
            Resume::named(Some(id), Some(other)),
            Resume::After(id.to_owned())
        );
        assert_eq!(
            Resume::named(Some("  "), Some(other)),
            Resume::After(other.to_owned())
        );
        assert_eq!(
            Resume::named(Some(&format!(" {id}\t")), None),
            Resume::After(id.to_owned())
        );
        // A cursor in the URL is taken as sent, as the listing takes it.
        assert_eq!(
            Resume::named(None, Some(&format!(" {id}"))),
            Resume::NotAnId(format!(" {id}"))
        );
        assert_eq!(Resume::named(None, Some(" ")), Resume::NotAnId(" ".into()));
        // A header that names something else is newer than the URL's `after`.
        assert_eq!(
            Resume::named(Some("no/such"), Some(id)),
            Resume::NotAnId("no/such".to_owned())
        );
        assert_eq!(
            Resume::named(None, Some(&"x".repeat(500))),
            Resume::NotAnId("x".repeat(500))
        );
    }

    #[test]
    fn a_reset_repeats_at_most_the_start_of_what_was_named() {
        let frame = reset_frame(&"é".repeat(200), Some("too long"), None);
        let text = String::from_utf8(frame.to_vec()).unwrap();
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            data["error"],
            format!(
                "no message has id {}… (too long)",
                "é".repeat(crate::api::echo::ECHO_MAX_CHARS)
            )
        );
        assert!(text.starts_with("event: reset\nid: \ndata: "), "{text}");
    }
}
