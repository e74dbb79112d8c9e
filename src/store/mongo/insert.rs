//! The insert protocol: one document per message, retried through an
//! election until the write deadline, exactly once whatever happens.
//!
//! Inserts of one instance run concurrently (each waits for its own
//! majority acknowledgement), so one instance's write rate is not bounded by
//! one majority round trip: the primary assigns each message its position
//! (see `document.rs`), and subscribers follow arrival order in the cache,
//! so nothing needs this instance to commit one write at a time. A
//! duplicate key is resolved against the stored document: this post's
//! earlier attempt, an earlier post with the same idempotency key, or a
//! conflict.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::RawDocument;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use super::collections::Collections;
use super::document::{self, millis, MessageDoc, Position};
use super::index;
use super::skipped::SkippedDocuments;
use super::Shared;
use crate::cache::CachedMessage;
use crate::message::{now_millis, stamp_millis, Message, NewMessage};
use crate::mongo::{self, Class};
use crate::retry::Backoff;
use crate::store::{Inserted, StoreError};

/// How long a successful insert waits for its own message to come back
/// through the change stream before it is answered without.
const ECHO_WAIT: Duration = Duration::from_secs(2);
/// The store gives up this much before the write deadline, so its own
/// reason reaches the client before a proxy's or client's timeout.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);
const WRITE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the stored document with a taken id says about this post.
enum Duplicate {
    /// One of this post's own attempts stored it.
    Ours(Message),
    /// An earlier post with the same id and content: a retry. With the
    /// stored message's position, to tell whether the change stream may
    /// not have brought it yet.
    Earlier(Message, Position),
    /// Another message has the id.
    Conflict,
    /// The other write is not on a majority yet.
    Pending,
}

/// Stores `new`, retrying what may be retried until the write deadline.
pub(super) async fn insert(shared: &Shared, new: NewMessage) -> Result<Inserted, StoreError> {
    // Noted before anything is sent, so the change stream's first load
    // knows it, whenever that load reads it.
    let id = new.id.clone();
    let before_load = shared.change_stream.post_before_load(&id);
    let inserted = store(shared, new).await;
    if before_load {
        shared.change_stream.post_answered(&id);
    }
    inserted
}

/// [`insert`]'s work.
async fn store(shared: &Shared, new: NewMessage) -> Result<Inserted, StoreError> {
    let deadline = Instant::now() + shared.write_timeout.saturating_sub(DEADLINE_MARGIN);
    let collections = shared.collections()?;
    // Subscribed before the write, so the change stream's copy cannot slip by.
    let mut echo = shared.cache.subscribe();
    let mut tried = Vec::new();
    // Whether an attempt may have reached a server: until one has, the
    // message is certainly not stored.
    let mut sent = false;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        if shared.tasks.is_closed() {
            return Err(StoreError::closed());
        }
        // What the driver's view says no attempt can change, read once:
        // - pinned to a member that is not the primary, every attempt would
        //   go to that member and be refused (readiness says the same);
        // - while the set refuses this app's credentials (the pool's
        //   callbacks saw the refusal; it stays until a connection
        //   authenticates, which the change stream's retries, every few
        //   seconds, would do once the password is fixed on the server), an
        //   attempt would wait out a server selection and fail the same way.
        // Until an attempt was sent the message is certainly not stored, and
        // the client hears why at once instead of at the deadline.
        let refusal = collections.conn.topology.get().and_then(|t| {
            t.pinned_to_non_primary()
                .or_else(|| (!sent && t.auth_failure.is_some()).then(|| t.not_writable_reason()))
        });
        if let Some(why) = refusal {
            let reason = if sent {
                unknown_outcome(&new, &format!("({why})"))
            } else {
                format!("the message was not stored: {why}")
            };
            return Err(StoreError::Unavailable {
                reason,
                retry_after: WRITE_RETRY_AFTER,
            });
        }
        let outcome =
            match attempt(shared, &collections, &new, deadline, &mut tried, &mut sent).await {
                Ok(message) => Ok(Duplicate::Ours(message)),
                Err(Class::Duplicate) => {
                    resolve_duplicate(&collections, &shared.skipped, &new, &tried).await
                }
                Err(other) => Err(other),
            };
        let reason = match outcome {
            Ok(Duplicate::Ours(message)) => {
                deliver(shared, &message, &mut echo, deadline).await;
                return Ok(Inserted::Created(message));
            }
            Ok(Duplicate::Earlier(message, position)) => {
                deliver_earlier(shared, &message, &position, &mut echo, deadline).await;
                return Ok(Inserted::Existing(message));
            }
            Ok(Duplicate::Conflict) => return Err(StoreError::Conflict(new.id)),
            Ok(Duplicate::Pending) => {
                "another write of this id is not on a majority yet".to_owned()
            }
            Err(Class::Retry(reason)) => reason,
            Err(Class::Unavailable(reason)) => {
                return Err(StoreError::Unavailable {
                    reason,
                    retry_after: WRITE_RETRY_AFTER,
                })
            }
            Err(Class::Fatal(reason)) => return Err(StoreError::Internal(reason)),
            Err(Class::Duplicate) => "duplicate key".to_owned(),
        };
        let delay = backoff.next_delay();
        if Instant::now() + delay >= deadline {
            let within = shared.write_timeout.as_secs();
            let reason = if !sent {
                // What the driver sees now says more than the last
                // attempt's error (its server selection's timeout).
                let why = collections
                    .conn
                    .topology
                    .get()
                    .filter(|t| !t.writable)
                    .map_or(reason, |t| t.not_writable_reason());
                format!(
                    "the message was not stored: no MongoDB primary was available to send it \
                     to within {within} s ({why})"
                )
            } else {
                // An attempt was sent: a primary may have applied it without
                // a majority confirming in time, so it may yet be stored.
                unknown_outcome(&new, &format!("within {within} s ({reason})"))
            };
            return Err(StoreError::Unavailable {
                reason,
                retry_after: WRITE_RETRY_AFTER,
            });
        }
        tokio::time::sleep(delay).await;
    }
}

/// The reason for a post an attempt of which was sent and none confirmed;
/// `when` says until when, and why.
fn unknown_outcome(new: &NewMessage, when: &str) -> String {
    format!(
        "the write's outcome is unknown: it was sent, but no majority of the replica set \
         confirmed it {when}; it may still be stored. Retrying with the same id ({}) is \
         safe: a message is stored at most once per id",
        new.id
    )
}

/// One insert attempt. The datetime (what users see, not the order) never
/// goes back within this instance. `tried` collects the datetimes of this
/// post's attempts that may have stored it (all but those refused for the
/// id); `sent` is set unless the attempt certainly sent
/// nothing: the driver found no server to send it to
/// ([`mongo::errors::nothing_sent`]), or it was cut off at the deadline
/// before any operation got a connection to send on
/// ([`mongo::Connection::checkouts`]).
async fn attempt(
    shared: &Shared,
    collections: &Collections,
    new: &NewMessage,
    deadline: Instant,
    tried: &mut Vec<i64>,
    sent: &mut bool,
) -> Result<Message, Class> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let now = now_millis();
    // As the embedded store stamps, after the newest message this instance
    // knows of: its own last stamp, or the newest the cache holds (another
    // instance's, or the lab's). A clock far behind it (a clock far ahead
    // made it) is taken as it is, and warned of.
    let seen = shared
        .cache
        .latest(1)
        .and_then(|newest| newest.first().map(|m| millis(m.message.datetime)))
        .unwrap_or(i64::MIN);
    shared
        .clock_behind
        .check("MongoDB store", seen.saturating_sub(millis(now)));
    let newest = shared
        .last_datetime
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |newest| {
            Some(stamp_millis(millis(now), newest.max(seen)))
        })
        .unwrap_or_else(|newest| newest);
    let ms = stamp_millis(millis(now), newest.max(seen));
    let datetime =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(now);
    let message = new.clone().into_message(datetime);
    tried.push(ms);
    let insert = collections
        .messages
        .insert_one(MessageDoc::for_insert(&message));
    let checkouts = collections.conn.checkouts();
    let outcome = tokio::time::timeout(remaining, insert).await;
    *sent |= match &outcome {
        Ok(Err(e)) => !mongo::errors::nothing_sent(e),
        // Any checkout meanwhile, even another request's, may have been
        // this insert's.
        Err(_) => collections.conn.checkouts() != checkouts,
        Ok(Ok(_)) => true,
    };
    match outcome {
        Ok(Ok(_)) => Ok(message),
        Ok(Err(e)) => match mongo::errors::duplicate_on_other_index(&e) {
            // Not a clash on the id, which reading the stored message
            // resolves: another client's unique index refused the document,
            // and will refuse every retry of it.
            Some(index) => Err(Class::Unavailable(index::refused_by_foreign_index(
                shared, &index,
            ))),
            None => {
                let class = collections.class(&e);
                if matches!(class, Class::Duplicate) {
                    // Refused for its id, this attempt stored nothing: the
                    // document holding the id is not its own, even with its
                    // datetime (a retry sent at the same moment, through
                    // this instance or another, is stamped the same
                    // millisecond), so it is not one of the attempts
                    // `resolve_duplicate` may take the document for. (With
                    // retryable writes, a driver's retry of a write that was
                    // applied is answered as the write was, not refused:
                    // <https://www.mongodb.com/docs/manual/core/retryable-writes/>.)
                    tried.pop();
                }
                Err(class)
            }
        },
        Err(_) => Err(Class::Retry("the write did not finish in time".into())),
    }
}

/// Reads the document that holds the id, from the primary with read
/// concern majority, and says what it is to this post.
async fn resolve_duplicate(
    collections: &Collections,
    skipped: &SkippedDocuments,
    new: &NewMessage,
    tried: &[i64],
) -> Result<Duplicate, Class> {
    let Some(raw) = collections.find_on_primary(&new.id).await? else {
        return Ok(Duplicate::Pending);
    };
    // A document that is no message holds the id: nothing can be stored
    // under it. That includes one whose datetime or position no message
    // can have: those are never mended, only skipped.
    let Some(stored) = skipped.keep(&raw) else {
        return Ok(Duplicate::Conflict);
    };
    // Another app's message without its place in the order yet: no read
    // finds it until the change stream gives it one (normally at once), so
    // neither "stored" nor "taken" would be true to what a GET says.
    if stored.is_stray(collections.strays_from().await?) {
        return Ok(Duplicate::Pending);
    }
    let ours = tried.contains(&stored.datetime.timestamp_millis());
    // Whether this post is the stored one is decided on the name and text
    // as stored, taken through today's rules of a post as this post was,
    // not on whether a read shows them other than stored (`altered`): what
    // a read does to a stored name or text is, per kind,
    // - trimmed, line breaks as LF, a name in NFC: a post gets the same.
    //   A post an older version stored before a rule came (names were not
    //   NFC) is, sent again after an upgrade, the same post, and its
    //   client is owed the stored message, not a 409, as the embedded
    //   store answers. So is a lab message posted again with its id.
    //   (Format characters at a name's ends a read keeps and a post
    //   loses: under the same rules, the same post too.)
    // - cut (longer than a post may be), a control character (or a bidi
    //   control in a name) shown as U+FFFD, a name with nothing visible
    //   shown as `(no name)`, an empty text as `(empty message)`: the
    //   stored one breaks a rule a post is refused for, so no post is it,
    //   not even one that repeats what is shown (which is not what is
    //   stored): a 409.
    // The datetime and position are no part of a post: a retry is
    // answered with them as stored.
    let same = is_same_post(new, &raw);
    let position = stored.position();
    let stored = stored.into_message().map_err(Class::Fatal)?;
    Ok(if !same {
        Duplicate::Conflict
    } else if ours {
        Duplicate::Ours(stored)
    } else {
        Duplicate::Earlier(stored, position)
    })
}

/// Whether `new` is the post `raw` holds: its `name` and `text` as
/// stored, not as a read shows them ([`NewMessage::same_as_stored`]).
/// `raw` is a message ([`SkippedDocuments::keep`] took it), so both are
/// strings.
fn is_same_post(new: &NewMessage, raw: &RawDocument) -> bool {
    let Ok(fields) = document::read_fields(raw) else {
        return false;
    };
    match (fields.get_str("name"), fields.get_str("text")) {
        (Ok(name), Ok(text)) => new.same_as_stored(name, text),
        _ => false,
    }
}

/// Waits, a little, for a message this instance stored to come back
/// through the change stream (normally within milliseconds), so that when
/// the POST is answered this instance's subscribers have it and its
/// listings show it. If it does not come in time (the stream is behind),
/// the cache is told to expect it ([`Cache::await_echo`]): this
/// instance's listings read the store until it comes, and subscribers get
/// it where the stream brings it. Publishing it here would put it ahead of
/// the other app's messages that the store orders before it. Before the
/// cache's first load, the post is published here.
///
/// [`Cache::await_echo`]: crate::cache::Cache::await_echo
async fn deliver(
    shared: &Shared,
    message: &Message,
    echo: &mut broadcast::Receiver<Arc<CachedMessage>>,
    deadline: Instant,
) {
    if shared.change_stream.is_running() {
        echo_or_await(shared, &message.id, echo, deadline).await;
        return;
    }
    if shared.change_stream.has_loaded() {
        // Reopening after a failure (a failover): the reopened stream's
        // replay or catch-up brings the post in the store order, as it
        // brings the other instances' posts of the same moments, so it
        // waits for that. Published here in the order writes are
        // acknowledged, it could go ahead of a message the store orders
        // before it, which no later step could move. (A post sent before
        // the first load and read by it was published by that load,
        // `Watcher::first_load`: the cache holds it, and this does nothing.)
        shared.cache.await_echo(&message.id);
        return;
    }
    // Before the first load: a post made now would be loaded as history
    // and sent to nobody. Published here, as a running stream would; the
    // stream's first load then keeps it (`reset` keeps what was published
    // while it read, `publish` ignores ids the cache has).
    shared.cache.publish(message.clone());
}

/// What [`deliver`] does for a fresh post, for a retry answered with what
/// an earlier post stored (`Existing`). That post's answer may have been a
/// 503 whose write was applied after all, or it went through another
/// instance: nothing told this instance's cache to expect the message.
/// Unless the cache holds it, or the change stream delivered it long enough
/// ago, it is awaited as a fresh post's is, so the retrying client reads it
/// in its next listing. It is never published here, stream running or not:
/// it may be older than messages the cache already holds, and the stream
/// (or its catch-up when it (re)opens) brings it in the store order, once.
/// The stored document was read with read concern majority, and a change
/// stream brings every majority-committed change
/// (<https://www.mongodb.com/docs/manual/changeStreams/>), but it can trail
/// the writes, as when it stays idle while writes cannot be
/// majority-committed
/// (<https://www.mongodb.com/docs/manual/administration/change-streams-production-recommendations/>).
async fn deliver_earlier(
    shared: &Shared,
    message: &Message,
    position: &Position,
    echo: &mut broadcast::Receiver<Arc<CachedMessage>>,
    deadline: Instant,
) {
    if shared.cache.holds(&message.id) || !shared.change_stream.may_lack(position) {
        return;
    }
    if shared.change_stream.is_running() {
        echo_or_await(shared, &message.id, echo, deadline).await;
    } else {
        // Not running: nothing brings it back soon, so there is no use
        // waiting; listings read the store until the catch-up brings it.
        shared.cache.await_echo(&message.id);
    }
}

/// Waits, at most [`ECHO_WAIT`], for the change stream to bring the
/// message `id`; if it does not, the cache awaits it
/// ([`Cache::await_echo`]).
///
/// [`Cache::await_echo`]: crate::cache::Cache::await_echo
async fn echo_or_await(
    shared: &Shared,
    id: &str,
    echo: &mut broadcast::Receiver<Arc<CachedMessage>>,
    deadline: Instant,
) {
    // Never past the write's deadline: the write is done, the answer must
    // not turn into a timeout.
    let wait = ECHO_WAIT.min(deadline.saturating_duration_since(Instant::now()));
    if !wait_for_echo(echo, id, wait).await {
        shared.cache.await_echo(id);
    }
}

async fn wait_for_echo(
    echo: &mut broadcast::Receiver<Arc<CachedMessage>>,
    id: &str,
    bound: Duration,
) -> bool {
    let wait = async {
        loop {
            match echo.recv().await {
                Ok(event) if event.message.id == id => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(bound, wait).await.unwrap_or(false)
}
