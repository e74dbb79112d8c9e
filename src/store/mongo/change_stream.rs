//! The change stream: one per app instance on the messages collection,
//! publishing every new message to the cache.
//!
//! Every (re)open follows the same steps, so nothing is skipped and nothing
//! a subscriber already has is sent twice:
//! 1. the first time only, read the latest messages and `reset` the cache
//!    (history, not news: nobody is sent it);
//! 2. open the stream, from the last resume token if there is one;
//! 3. catch up: with a resumed stream, drain what it replays; without one
//!    (first open, or the token is gone from the oplog), read everything
//!    after the last message this change stream delivered; then give a
//!    position to what another app inserted while no stream watched, and
//!    publish it ([`Watcher::position_strays`]);
//! 4. read the latest messages again, publish those newer than anything
//!    published so far, and `reset` the cache (it is whole again);
//! 5. publish each insert event as it comes, and each update that gave
//!    another app's document its position; `publish` ignores ids it has.
//!    An insert that comes behind a message already published with a later
//!    position (mongod takes a position before the commit, so two inserts
//!    can commit against their positions) is held out of the cache and
//!    given a new one, and published where it is next seen at another
//!    position, so the store order is the order of publication
//!    ([`Watcher::publish`]).
//!
//! A message committed before the stream opened is read in step 3 or 4; one
//! committed after is delivered by the stream (and may also be read, which
//! `publish` dedupes). When the stream fails beyond the driver's one
//! automatic resume, the cache is invalidated and the cycle starts again.
//!
//! Another app's message (a document without `position`) is news when the
//! stream sees its insert (unless its ObjectId was made long before: the
//! lab's history restored, [`Watcher::history_coming_back`]), and history
//! when it was written before
//! simplechat's first message; but one written since, while no stream
//! watched (every instance stopped, or this one starting or recovering),
//! is news all the same. So a document without `position` whose ObjectId
//! was made after the second of the oldest position is a stray (one of
//! that very second may have been there before the first message, and
//! stays history): it is left out of the cache, listings and pages until
//! it is given its position in step 3, or when its insert event comes. Strays are told
//! by `_id` because an ObjectId begins with the second it was made on the
//! writer's clock
//! (<https://www.mongodb.com/docs/manual/reference/method/ObjectId/>),
//! whatever time zone its `datetime` was written in; the oldest position,
//! unlike the newest, does not move, so whether a document is a stray
//! does not depend on when it is asked.
//!
//! Such a message is published where the update that gives it its
//! position comes in the stream, not where its insert came: a message
//! inserted between the two comes before it in the store order, and the
//! stream, in the oplog's order, brings that insert first. So the cache
//! (and every subscriber, on every instance) follows the store order.
//!
//! Change streams: <https://www.mongodb.com/docs/manual/changeStreams/>;
//! resuming: <https://www.mongodb.com/docs/manual/changeStreams/#resume-a-change-stream>.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;

use super::collections::Collections;
use super::document::{self, Direction, DocId, MessageDoc, Position, Range};
use super::Shared;
use crate::cache::{Mark, CACHE_CAPACITY};
use crate::mongo::Class;
use crate::retry::Backoff;
/// A resumed stream replays what was missed; past this much the reads of
/// step 4 are cheaper than event-by-event catch-up.
const MAX_DRAIN_EVENTS: usize = 10_000;
const MAX_DRAIN_TIME: Duration = Duration::from_secs(10);
/// How far instances' clocks may disagree. Datetimes come from the writing
/// instance's clock, so a message committed later can sort up to this much
/// earlier: catch-up reads start this far back, and the cache drops the ones it
/// already has.
const CLOCK_SKEW_MS: i64 = 5_000;

/// The most of another app's documents given their positions in one write.
const POSITION_BATCH: usize = 1000;

/// How long the stream may be quiet while a message is held before the
/// held messages are read again ([`Watcher::recheck_held`]).
const HELD_RECHECK: Duration = Duration::from_secs(2);

/// How long the stream must bring nothing, after messages with positions
/// from long before came (a restore, an import), or after another client
/// changed or deleted cached messages, before the cache is reloaded for
/// them: a restore's inserts, or a `deleteMany`'s deletes, come one event
/// each, and one reload, which reads the latest messages, places them all.
const RELOAD_QUIET: Duration = Duration::from_secs(1);

/// How long the cache goes at most without those messages as they are
/// while a restore, or a stream of changes, keeps the stream busy: one
/// reload each this long.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// How far a naive local `datetime` (the lab's, taken for UTC) can be
/// behind UTC: time zones run from UTC-12 to UTC+14.
const TIME_ZONE_SPREAD_SECS: u64 = 26 * 3600;

/// The stream's `maxAwaitTimeMS`: how long one of its `getMore`s waits for
/// an event before the server answers it with an empty batch
/// (<https://www.mongodb.com/docs/manual/reference/method/db.collection.watch/>;
/// mongod's own default for a change stream is 1 s as well). Set here
/// because the deadline for a reply counts on it ([`Watcher::reply_deadline`]).
const MAX_AWAIT: Duration = Duration::from_secs(1);

/// How much longer than [`MAX_AWAIT`] and the driver's own waits a reply to
/// the stream may take before its connection is taken for dead
/// ([`Watcher::reply_deadline`]). Taken too soon, the stream only reopens
/// from its resume token.
const REPLY_MARGIN: Duration = Duration::from_secs(10);

/// The server's code for an event larger than it can send.
const BSON_OBJECT_TOO_LARGE: i32 = 10334;

/// The stream's next answer under way: an event it has at hand, or one
/// `getMore`. The future owns the stream while it runs and hands it back
/// with the answer, so the loop can wait for it, do other work, and wait
/// again: `ChangeStream::next_if_any` dropped half-way would lose the
/// batch a `getMore` brought, and only the whole stream is dropped when
/// no answer comes.
struct Asking {
    answer: futures::future::BoxFuture<
        'static,
        (Events, mongodb::error::Result<Option<RawDocumentBuf>>),
    >,
    /// When it was asked.
    since: Instant,
}

impl Asking {
    fn start(mut stream: Events) -> Asking {
        Asking {
            answer: async move {
                let answer = stream.next_if_any().await;
                (stream, answer)
            }
            .boxed(),
            since: Instant::now(),
        }
    }
}

/// Whether `event` is another client's change to a message: a replacement,
/// a delete, or an update of anything but the position, which simplechat's
/// own updates set (an update event's `updateDescription.updatedFields`:
/// <https://www.mongodb.com/docs/manual/reference/change-events/update/>).
fn is_another_clients_change(event: &Event) -> bool {
    match event.operation_type {
        OperationType::Replace | OperationType::Delete => true,
        OperationType::Update => event
            .update_description
            .as_ref()
            .is_some_and(|u| !u.updated_fields.contains_key(document::POSITION)),
        _ => false,
    }
}

/// Why the stream is given up when no answer came within `deadline`.
fn unanswered(deadline: Duration) -> String {
    format!(
        "no answer from the server in {} s (a connection lost without being closed?); \
         reopening the stream from its resume token",
        deadline.as_secs()
    )
}

/// Events come as raw documents and are decoded by [`Watcher::decode`]:
/// decoded by the driver, one string that is not UTF-8 in an event (which
/// mongod sends as a client stored it) failed the stream, and every
/// reopen met the same event again.
type Events = ChangeStream<RawDocumentBuf>;

/// An event, its document still raw ([`super::skipped::SkippedDocuments::keep`]).
type Event = ChangeStreamEvent<RawDocumentBuf>;

/// How the change stream is doing, for `/api/status` and for inserts
/// (which wait for their echo only while it runs, and only for what it may
/// not have delivered yet). A std `Mutex`: held only to copy or set a few
/// fields, never across `.await`.
#[derive(Default)]
pub(super) struct ChangeStreamHealth {
    state: Mutex<HealthState>,
    /// Whether the stream has finished its first catch-up since startup (a
    /// later start is a resumption, worth a log line).
    started_once: AtomicBool,
}

#[derive(Default)]
struct HealthState {
    running: bool,
    last_error: Option<String>,
    /// How far the stream has delivered, across its (re)openings; `None`
    /// until the cache's first load.
    delivered: Option<Delivered>,
    /// This instance's posts sent before the cache's first load, by id,
    /// until each is answered ([`ChangeStreamHealth::post_before_load`]).
    posts_before_load: HashSet<String>,
}

impl ChangeStreamHealth {
    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the stream is open and caught up.
    pub(super) fn is_running(&self) -> bool {
        self.state().running
    }

    /// `(running, last_error)`.
    pub(super) fn get(&self) -> (bool, Option<String>) {
        let state = self.state();
        (state.running, state.last_error.clone())
    }

    /// Whether the message at `position` may not have been delivered yet:
    /// it is newer than what the stream delivered, or within the clock
    /// margin of it, or the cache has not been loaded yet. A message this
    /// says no to was published, or loaded as history, long enough ago.
    pub(super) fn may_lack(&self, position: &Position) -> bool {
        self.state()
            .delivered
            .as_ref()
            .is_none_or(|d| d.may_lack(position))
    }

    /// Whether the cache has been loaded from the store at least once.
    pub(super) fn has_loaded(&self) -> bool {
        self.state().delivered.is_some()
    }

    /// Notes that this instance is storing the message `id`, if the cache
    /// has not been loaded yet; `true` if so, and then
    /// [`ChangeStreamHealth::post_answered`] must follow. The first load
    /// publishes such a post when it reads it (it would otherwise load it
    /// as history, sent to no subscriber, while the post, answered after
    /// the load, no longer publishes it itself).
    pub(super) fn post_before_load(&self, id: &str) -> bool {
        let mut state = self.state();
        state.delivered.is_none() && state.posts_before_load.insert(id.to_owned())
    }

    /// The post `id` noted by [`ChangeStreamHealth::post_before_load`] was
    /// answered (its message published or awaited, or not stored).
    pub(super) fn post_answered(&self, id: &str) {
        self.state().posts_before_load.remove(id);
    }

    /// The posts sent before the first load and not answered yet.
    fn take_posts_before_load(&self) -> HashSet<String> {
        std::mem::take(&mut self.state().posts_before_load)
    }

    fn delivered(&self) -> Option<Delivered> {
        self.state().delivered.clone()
    }

    fn set_delivered(&self, delivered: Delivered) {
        self.state().delivered = Some(delivered);
    }

    fn advance(&self, position: Position) {
        let mut state = self.state();
        match &mut state.delivered {
            Some(d) => d.advance(position),
            None => state.delivered = Some(Delivered::UpTo(position)),
        }
    }

    fn running(&self) {
        let was = {
            let mut state = self.state();
            let was = state.running;
            state.running = true;
            state.last_error = None;
            was
        };
        if !was && self.started_once.swap(true, Ordering::SeqCst) {
            log::info!("change stream resumed");
        }
    }

    pub(super) fn stopped(&self) {
        self.state().running = false;
    }

    pub(super) fn failed(&self, why: String) {
        let mut state = self.state();
        if state.running || state.last_error.as_deref() != Some(why.as_str()) {
            log::warn!("change stream interrupted: {why}");
        }
        state.last_error = Some(why);
    }

    fn note(&self, note: String) {
        log::warn!("{note}");
        self.state().last_error = Some(note);
    }
}

/// The latest messages, and whether they are the whole history.
struct Latest {
    messages: Vec<MessageDoc>,
    whole_history: bool,
    /// Where the cache stood when the read began.
    mark: Mark,
}

/// How far the change stream has delivered in the store order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Delivered {
    /// The store was empty when first read.
    Nothing,
    /// Up to the newest message published or read into the cache.
    UpTo(Position),
}

impl Delivered {
    fn advance(&mut self, position: Position) {
        match self {
            Delivered::UpTo(p) if *p >= position => {}
            _ => *self = Delivered::UpTo(position),
        }
    }

    /// Whether `position` may be a message not delivered yet.
    fn may_lack(&self, position: &Position) -> bool {
        match self {
            Delivered::Nothing => true,
            Delivered::UpTo(p) => &p.earlier_by(CLOCK_SKEW_MS) < position,
        }
    }
}

/// The change stream's state across its (re)openings.
struct Watcher {
    shared: Arc<Shared>,
    collections: Arc<Collections>,
    token: Option<ResumeToken>,
    /// The oldest message the cache was last loaded with, unless it was
    /// loaded with the whole history: what is older is not news.
    floor: Option<Position>,
    /// The strays this cycle gave a position and published: the stream
    /// brings each one's update later, and by then the cache may have let
    /// it go (more strays than it holds), so the update is not published
    /// again. One id per stray, emptied each cycle.
    strays_published: HashSet<ObjectId>,
    /// Another app's documents whose inserts the stream brought and that
    /// wait for their position: given in one write when the stream has no
    /// more events at hand ([`Watcher::set_positions`]).
    to_position: Vec<Bson>,
    /// Messages that came behind one already published with a later
    /// position, by public id, with that first position: each waits, out
    /// of the cache, for a new one ([`Watcher::reposition`]), and is
    /// published once it has one, wherever that is. Kept across the
    /// stream's (re)openings, so a failure between the two loses nothing.
    held: HashMap<String, Timestamp>,
    /// The writes that give them new positions, not yet acknowledged:
    /// `(_id, first position)`. Kept across (re)openings too; each write
    /// moves a message only from its first position, so sending one again,
    /// or after another instance, moves nothing twice.
    to_reposition: Vec<(Bson, Timestamp)>,
    /// The messages published within the clock margin of the newest, by
    /// position (oldest first) and by id: a catch-up reads that margin
    /// again, and a message it finds that the cache let go of (more than
    /// the cache holds were published in it) was published, not held back.
    recent: VecDeque<(Position, String)>,
    recent_ids: HashSet<String>,
    /// The latest position published since the last read of the latest
    /// messages began: with that read's newest, how far the stream has
    /// delivered once the cache is reset from it.
    published_since_read: Option<Position>,
    /// Messages inserted with positions from long before (a restore, an
    /// import: [`Watcher::restored_far_behind`]) behind what was delivered
    /// and newer than the cache's oldest, since the cache was last reset:
    /// when the first came, and how many. The cache reloads once the stream
    /// has brought nothing for [`RELOAD_QUIET`], or has kept busy for
    /// [`RELOAD_EVERY`] since, so they take their places: one
    /// reload for a restore's many batches, not one each.
    restored_since: Option<(Instant, usize)>,
    /// Of those, by public id, the ones within the clock margin of what was
    /// delivered: a reload publishes what it reads there, in case the
    /// stream had not brought it, and would take these for posts that came
    /// behind, and move them; it leaves them alone. (How far the stream has
    /// delivered only moves on until that reload, so the others stay out
    /// of its margin.)
    restored: HashSet<String>,
    /// Cached messages, by public id, that another client changed (an
    /// update that does not set `position`, a replacement) or deleted
    /// since the cache was last reset, and since when: the cache reloads
    /// for them as for restored messages, and the reload keeps none of
    /// them as it was ([`Watcher::changed_elsewhere`]).
    changed: HashSet<String>,
    changed_since: Option<Instant>,
    /// The cached messages the last reset read without a position (the
    /// lab's history, and another app's documents no stream has positioned
    /// yet), by public id. One of them read or brought with a position
    /// later was given it because a stream saw its insert: it is news, and
    /// is published where it now stands ([`Watcher::publish_here`]).
    unpositioned: HashSet<String>,
    /// The furthest the stream had delivered when the store lost every
    /// message the cache held (a dropped or emptied collection, [`Watcher::reset`]),
    /// which makes how far it has delivered start again from what the store
    /// still has. Subscribers keep what they were sent: a backup restored
    /// afterwards brings back messages at positions up to here, which they
    /// have, and which are history coming back, not news.
    delivered_before_loss: Option<Position>,
}

/// Runs until the store closes: open, catch up, follow; on failure,
/// invalidate the cache and start again after a backoff.
pub(super) async fn run(shared: Arc<Shared>, collections: Arc<Collections>) {
    let mut watcher = Watcher {
        shared,
        collections,
        token: None,
        floor: None,
        strays_published: HashSet::new(),
        to_position: Vec::new(),
        held: HashMap::new(),
        to_reposition: Vec::new(),
        recent: VecDeque::new(),
        recent_ids: HashSet::new(),
        published_since_read: None,
        restored_since: None,
        restored: HashSet::new(),
        changed: HashSet::new(),
        changed_since: None,
        unpositioned: HashSet::new(),
        delivered_before_loss: None,
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !watcher.shared.tasks.is_closed() {
        match watcher.cycle().await {
            Ok(()) => {
                backoff.reset();
                // The stream ends by itself only when the collection was
                // dropped or renamed (its `invalidate` event, which the
                // driver ends the stream on): its indexes went with it.
                // Created again beside the stream, waiting for a primary if
                // need be.
                let again =
                    super::index::ensure_again(watcher.shared.clone(), watcher.collections.clone());
                watcher.shared.tasks.push_for_client(tokio::spawn(again));
            }
            Err(e) => {
                // With no member to read from, that is why the stream
                // stopped, whatever the failed operation's error said (the
                // driver's "No available servers", a closed connection):
                // each member and why, as readiness and reads say them.
                let why = watcher.collections.unreadable_or(e);
                watcher.shared.change_stream.failed(why)
            }
        }
        watcher.shared.change_stream.stopped();
        watcher.shared.cache.invalidate();
        backoff.wait().await;
    }
}

impl Watcher {
    /// One life of a change stream. `Ok` when the stream ended by itself
    /// (the collection was dropped or renamed), `Err` when it failed.
    async fn cycle(&mut self) -> Result<(), String> {
        self.strays_published.clear();
        // Left from a failed cycle: step 3 positions them as strays. The
        // held messages and their writes stay (see `held`).
        self.to_position.clear();
        if self.shared.change_stream.delivered().is_none() {
            self.first_load().await?;
        }
        let (mut stream, resumed) = self.open().await?;
        if stream.resume_token().is_some() {
            self.token = stream.resume_token();
        }
        if resumed {
            if self.drain(&mut stream).await? {
                return Ok(());
            }
        } else if self.store_lost_the_cache().await? {
            // What came after the last delivered message is not to be
            // published after it: those messages are gone (a set rebuilt
            // empty, with posts that waited for it stored since). Read
            // from the store first, before strays are positioned and
            // published: see `reload`.
            self.reload().await?;
        } else {
            self.catch_up().await?;
        }
        self.position_strays().await?;
        self.reload().await?;
        self.shared.change_stream.running();

        let reply_deadline = self.reply_deadline();
        let mut asking = Asking::start(stream);
        // Since when the stream has brought no event: the quiet waits
        // below count from there, not from each empty batch.
        let mut idle_since: Option<Instant> = None;
        loop {
            let (stream, answer) = match (&mut asking.answer).now_or_never() {
                Some(answered) => answered,
                None => {
                    self.set_positions().await?;
                    if self
                        .reload_due_since()
                        .is_some_and(|since| since.elapsed() >= RELOAD_EVERY)
                    {
                        self.reload_due().await?;
                    }
                    let quiet = if self.reload_due_since().is_some() {
                        Some(RELOAD_QUIET)
                    } else if !self.held.is_empty() {
                        Some(HELD_RECHECK)
                    } else {
                        None
                    };
                    let give_up = asking.since + reply_deadline;
                    let until = match quiet {
                        Some(quiet) => {
                            give_up.min(*idle_since.get_or_insert_with(Instant::now) + quiet)
                        }
                        None => give_up,
                    };
                    match tokio::time::timeout_at(until.into(), &mut asking.answer).await {
                        Ok(answered) => answered,
                        Err(_) if Instant::now() >= give_up => {
                            return Err(unanswered(reply_deadline));
                        }
                        Err(_) => {
                            idle_since = None;
                            if self.reload_due_since().is_some() {
                                self.reload_due().await?;
                            } else {
                                self.recheck_held().await?;
                            }
                            continue;
                        }
                    }
                }
            };
            let event = answer.map_err(|e| self.failed(&e))?;
            // After an event, its own token; after an empty batch, the
            // batch's `postBatchResumeToken`, so that a stream that was
            // quiet for long resumes from where the oplog still is.
            self.token = stream.resume_token();
            let Some(event) = event else {
                if !stream.is_alive() {
                    break;
                }
                asking = Asking::start(stream);
                continue;
            };
            idle_since = None;
            asking = Asking::start(stream);
            let Some(event) = self.decode(&event) else {
                continue;
            };
            if self.handle(event).await? {
                return Ok(());
            }
            if self.to_position.len() + self.to_reposition.len() >= POSITION_BATCH {
                self.set_positions().await?;
            }
        }
        // A stream that ends by itself was closed by the server; resuming
        // before that point would only end it again.
        self.token = None;
        Ok(())
    }

    async fn open(&mut self) -> Result<(Events, bool), String> {
        // Inserts, the updates that give another app's document its
        // position, and what other clients change or delete in cached
        // messages; invalidate events always pass a $match.
        let pipeline = [doc! { "$match": {
            "operationType": { "$in": ["insert", "update", "replace", "delete"] },
        } }];
        let coll = self
            .collections
            .messages_watched
            .clone_with_type::<RawDocumentBuf>();
        if let Some(token) = self.token.clone() {
            match coll
                .watch()
                .pipeline(pipeline.clone())
                .max_await_time(MAX_AWAIT)
                .resume_after(token)
                .await
            {
                Ok(stream) => return Ok((stream.with_type(), true)),
                Err(e) => match self.collections.class(&e) {
                    Class::Retry(reason) => return Err(reason),
                    // ChangeStreamHistoryLost and friends: the token is no
                    // use any more; step 3 reads what the stream would have
                    // replayed.
                    other => {
                        self.shared.change_stream.note(format!(
                            "resume token no longer usable ({}); re-reading after the last delivered message",
                            other.reason()
                        ));
                        self.token = None;
                    }
                },
            }
        }
        let stream = coll
            .watch()
            .pipeline(pipeline)
            .max_await_time(MAX_AWAIT)
            .await
            .map_err(|e| self.reason(&e))?;
        Ok((stream.with_type(), false))
    }

    /// Publishes what a resumed stream replays, until it has nothing more
    /// right now. `Ok(true)` when the stream ended.
    async fn drain(&mut self, stream: &mut Events) -> Result<bool, String> {
        let started = Instant::now();
        let mut events = 0;
        let reply_deadline = self.reply_deadline();
        while events < MAX_DRAIN_EVENTS && started.elapsed() < MAX_DRAIN_TIME {
            // Failing the cycle drops the stream: a batch lost with this
            // unfinished `getMore` is replayed from the token kept.
            let answer = tokio::time::timeout(reply_deadline, stream.next_if_any())
                .await
                .map_err(|_| unanswered(reply_deadline))?;
            match answer {
                Ok(Some(event)) => {
                    self.token = stream.resume_token();
                    events += 1;
                    let Some(event) = self.decode(&event) else {
                        continue;
                    };
                    if self.handle(event).await? {
                        return Ok(true);
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(self.failed(&e)),
            }
            if self.to_position.len() + self.to_reposition.len() >= POSITION_BATCH {
                self.set_positions().await?;
            }
        }
        self.set_positions().await?;
        Ok(!stream.is_alive())
    }

    /// Publishes every stored message after what was delivered, in pages:
    /// the first starts `CLOCK_SKEW_MS` before it (a message committed late
    /// may sort a little earlier), each next one beyond the last message
    /// read, so a history denser than that margin is read once and the
    /// catch-up ends. Messages older than those the cache was last loaded
    /// with are history the cache let go of, not news: not published.
    async fn catch_up(&mut self) -> Result<(), String> {
        let mut range = match &self.shared.change_stream.delivered() {
            Some(Delivered::UpTo(position)) => {
                Range::Beyond(position.earlier_by(CLOCK_SKEW_MS), Direction::Newer)
            }
            _ => Range::Oldest,
        };
        loop {
            let page = self
                .collections
                .read(range, CACHE_CAPACITY, &self.shared.skipped)
                .await
                .map_err(|c| c.reason().to_owned())?;
            let full = page.len() == CACHE_CAPACITY;
            let next = page.last().map(MessageDoc::position);
            for doc in page {
                // Without position: the lab's history (see `reload`). One
                // published within the margin read again may be one the
                // cache let go of since (more were published in it than
                // it holds): `recent` knows it.
                if doc.position.is_some()
                    && !self.is_history(&doc.position())
                    && !self.recent_ids.contains(&doc.id.public())
                {
                    self.publish(doc)?;
                }
            }
            match next {
                Some(from) if full => range = Range::Beyond(from, Direction::Newer),
                _ => return Ok(()),
            }
        }
    }

    /// Step 1: loads the cache with the latest messages, as history. A
    /// post this instance made meanwhile may be among them, answered only
    /// now that the cache is loaded, when it no longer publishes its
    /// message itself (see `insert::deliver`): so the first such post read,
    /// and every message after it, are published, in the store order,
    /// instead of loaded. Noted before it was sent, such a post is noted
    /// before the read began, whatever the moment it is answered.
    ///
    /// A post among those that was answered before the load published its
    /// message itself then: it is loaded, not sent again, so it comes
    /// before the others, in the order the posts were answered, as every
    /// post published before the load does.
    async fn first_load(&mut self) -> Result<(), String> {
        let mut latest = self.read_latest().await?;
        let floor = (!latest.whole_history)
            .then(|| latest.messages.first().map(MessageDoc::position))
            .flatten();
        let posts = self.shared.change_stream.take_posts_before_load();
        let cache = &self.shared.cache;
        let news = match latest.messages.iter().position(|m| {
            let id = m.id.public();
            posts.contains(&id) && !cache.holds(&id)
        }) {
            Some(first) => latest.messages.split_off(first),
            None => Vec::new(),
        };
        let (sent, news): (Vec<_>, Vec<_>) =
            news.into_iter().partition(|m| cache.holds(&m.id.public()));
        latest.messages.extend(sent);
        self.reset(latest)?;
        self.floor = floor;
        for doc in news {
            self.publish(doc)?;
        }
        Ok(())
    }

    /// Counts one more message restored since the cache was last reset
    /// ([`Watcher::restored_since`]), starting the count's clock at the first.
    fn count_restored(&mut self) {
        let (_, count) = self
            .restored_since
            .get_or_insert_with(|| (Instant::now(), 0));
        *count += 1;
    }

    /// Another client changed or deleted the document the event's
    /// `documentKey` names. The cache shows messages as they were when it
    /// read or published them, so one it holds is noted for a reload
    /// ([`Watcher::changed`]). One it does not hold is read from the store
    /// whenever it is asked for, unless it is one the cache should list
    /// now: a document that was no message (skipped: a name that is no
    /// string, a missing text), corrected by hand. Only a document this
    /// instance skipped is read again: an update of the whole history
    /// (the lab's times corrected with one `updateMany`) reads nothing
    /// more than before. Read as it now is: one
    /// without a position is given one, as the lab's inserts are, and
    /// published as the newest message; one the cache's range covers is
    /// listed in its place by a reload, and sent to no subscriber (it was
    /// written then).
    async fn changed_elsewhere(&mut self, event: &Event) -> Result<(), String> {
        let Some(key) = event.document_key.as_ref().and_then(|k| k.get("_id")) else {
            return Ok(());
        };
        let Some(id) = DocId::from_bson(key) else {
            return Ok(());
        };
        let id = id.public();
        if self.shared.cache.holds(&id) {
            self.changed.insert(id);
            self.changed_since.get_or_insert_with(Instant::now);
            return Ok(());
        }
        if event.operation_type == OperationType::Delete
            || self.held.contains_key(&id)
            || !self.shared.skipped.was_skipped(key)
        {
            return Ok(());
        }
        let now = self
            .collections
            .find_by_key(key)
            .await
            .map_err(|c| c.reason().to_owned())?;
        let Some(message) = now.and_then(|d| self.shared.skipped.keep(&d)) else {
            return Ok(());
        };
        // A stray (no position, made after simplechat's history began) is
        // positioned and published, as the lab's next insert is. Any other
        // is listed where it is, by the coalesced reload when the cache's
        // range may hold it: a document of the lab's history keeps its place
        // (and gets no position), a positioned one its position; neither is
        // news to subscribers.
        let in_range = match message.position {
            None if message.is_stray(self.strays_from().await?) => {
                self.to_position.push(message.id.bson());
                false
            }
            None => true,
            Some(_) => !self.is_history(&message.position()),
        };
        if in_range {
            self.changed_since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Since when a reload is due: for messages with positions from long
    /// before ([`Watcher::restored_since`]) or for messages other clients
    /// changed or deleted ([`Watcher::changed`]), whichever came first.
    fn reload_due_since(&self) -> Option<Instant> {
        let restored = self.restored_since.map(|(since, _)| since);
        restored.into_iter().chain(self.changed_since).min()
    }

    /// The reload [`Watcher::reload_due_since`] says is due, logged once
    /// for what it is for.
    async fn reload_due(&mut self) -> Result<(), String> {
        if let Some((_, count)) = self.restored_since {
            log::info!(
                "{count} messages were inserted with positions from long before (a restore or \
                 an import): listed where their positions put them, not sent to subscribers as \
                 new"
            );
        }
        if !self.changed.is_empty() {
            log::info!(
                "{} cached messages were changed or deleted by another client: the listings show \
                 them as they are now (subscribers sent them keep what they were sent)",
                self.changed.len()
            );
        }
        self.reload().await
    }

    /// Reads the latest messages, publishes those that may not have been
    /// delivered, and resets the cache from them (step 4), so it is the
    /// store order's suffix again.
    async fn reload(&mut self) -> Result<(), String> {
        self.restored_since = None;
        let restored = std::mem::take(&mut self.restored);
        let mut latest = self.read_latest().await?;
        // A read that shares no message with the cache is of a store that
        // lost them all: what it holds is not published after what
        // subscribers have (it would keep the lost ones shown above it), it
        // is loaded, and `reset` tells them.
        let read: Vec<String> = latest.messages.iter().map(|d| d.id.public()).collect();
        if self
            .shared
            .cache
            .shares_none_of(read.iter().map(String::as_str))
        {
            return self.reload_after_loss(latest, &restored);
        }
        for doc in &latest.messages {
            if self.is_news(doc, &restored) {
                self.publish(doc.clone())?;
            }
        }
        // A held message stays out of the cache until it has its new
        // position: loaded here, it would be sent to no subscriber.
        if !self.held.is_empty() {
            latest
                .messages
                .retain(|doc| !self.held.contains_key(&doc.id.public()));
        }
        self.reset(latest)
    }

    /// [`Watcher::reload`] when the read shares no message with the cache:
    /// the store lost what subscribers were sent (a set rebuilt empty, a
    /// collection dropped), and what it holds past the last delivered
    /// message came since (posts that waited for the rebuilt set). Those
    /// are published after the cache is reset from the rest, the first of
    /// a new epoch: a subscriber following live is sent a `reset` naming
    /// the first, then the others. Published first, they would follow the
    /// lost messages, which the page would go on showing above them.
    fn reload_after_loss(
        &mut self,
        mut latest: Latest,
        restored: &HashSet<String>,
    ) -> Result<(), String> {
        let (news, history): (Vec<MessageDoc>, Vec<MessageDoc>) = latest
            .messages
            .into_iter()
            .partition(|doc| self.is_news(doc, restored));
        latest.messages = history;
        self.reset(latest)?;
        for doc in news {
            self.publish(doc)?;
        }
        Ok(())
    }

    /// Whether a document a reload read is news to publish, not history to
    /// load: it has a position the stream may not have delivered, and is
    /// not one a restore brought back (`restored`). A document without
    /// position that a read finds (strays are left out) is the lab's
    /// history: never news.
    fn is_news(&self, doc: &MessageDoc, restored: &HashSet<String>) -> bool {
        doc.position.is_some()
            && self.may_lack(&doc.position())
            && !restored.contains(&doc.id.public())
    }

    /// Whether the store holds none of the messages the cache holds (and
    /// the cache holds some): its collection was dropped or emptied, or
    /// the set rebuilt empty, while the stream was away.
    async fn store_lost_the_cache(&self) -> Result<bool, String> {
        let held = self.shared.cache.held_ids();
        if held.is_empty() {
            return Ok(false);
        }
        let holds = self
            .collections
            .holds_any(&held)
            .await
            .map_err(|c| c.reason().to_owned())?;
        Ok(!holds)
    }

    /// The latest messages: one more document than the cache holds is
    /// read, so that fewer means the cache can hold the whole history.
    /// Strays are left out: they are news, published once positioned.
    async fn read_latest(&mut self) -> Result<Latest, String> {
        let mark = self.shared.cache.mark();
        self.published_since_read = None;
        let mut messages = self
            .collections
            .read(Range::Latest, CACHE_CAPACITY + 1, &self.shared.skipped)
            .await
            .map_err(|c| c.reason().to_owned())?;
        // Asked after the read, so that a read holding any positioned
        // message knows where strays begin.
        let strays = self.strays_from().await?;
        let whole_history = messages.len() <= CACHE_CAPACITY;
        messages.retain(|m| !m.is_stray(strays));
        let skip = messages.len().saturating_sub(CACHE_CAPACITY);
        messages.drain(..skip);
        Ok(Latest {
            messages,
            whole_history,
            mark,
        })
    }

    /// Where strays begin ([`Collections::strays_from`]).
    async fn strays_from(&self) -> Result<Option<ObjectId>, String> {
        self.collections
            .strays_from()
            .await
            .map_err(|c| c.reason().to_owned())
    }

    /// Gives each stray its position, oldest `_id` first, and publishes
    /// it: what another app inserted while no stream watched becomes the
    /// newest message, as if a stream had seen its insert. Another
    /// instance doing the same at once changes nothing (a position is only
    /// set where it is missing).
    async fn position_strays(&mut self) -> Result<(), String> {
        let Some(mut from) = self.strays_from().await? else {
            return Ok(());
        };
        let mut inclusive = true;
        loop {
            let page = self
                .collections
                .unpositioned_from(from, inclusive, CACHE_CAPACITY, &self.shared.skipped)
                .await
                .map_err(|c| c.reason().to_owned())?;
            let full = page.len() == CACHE_CAPACITY;
            let mut positioned = Vec::new();
            for (oid, message) in page {
                (from, inclusive) = (oid, false);
                // A document that is no message is counted and left as it is.
                if message.is_none() {
                    continue;
                }
                if self.set_position(&oid.into()).await? {
                    positioned.push(oid);
                }
            }
            // Published by a read in the store order, not one by one as
            // positioned: another instance positioning the same strays at
            // once may have given some of them earlier positions, which
            // this stream brings later; published behind, they would be
            // moved again ([`Watcher::publish`]).
            self.catch_up().await?;
            self.strays_published.extend(positioned);
            if !full {
                return Ok(());
            }
        }
    }

    /// Gives another app's document its position ([`Collections::set_position`]);
    /// `Ok(false)` when the server refuses it for good: a document within
    /// 18 bytes of 16 MiB has no room for the field
    /// (<https://www.mongodb.com/docs/manual/reference/limits/#mongodb-limit-BSON-Document-Size>),
    /// and one such document must not stop the stream. It is logged and
    /// stays without a position, so no listing shows it.
    async fn set_position(&self, id: &Bson) -> Result<bool, String> {
        match self.collections.set_position(id).await {
            Ok(()) => Ok(true),
            Err(Class::Fatal(why)) => {
                log::warn!("cannot give the document {id} its position: {why}");
                Ok(false)
            }
            Err(other) => Err(other.reason().to_owned()),
        }
    }

    /// Gives the documents in `to_position` their positions, in one write
    /// ([`Collections::set_positions`]): a burst of the other app's
    /// inserts waits for one majority acknowledgement, not one each, so
    /// what the stream brings after it (this instance's own messages among
    /// them) waits for one round trip, not one per document. The server
    /// gives the positions in the order it walks the `_id`s (its `_id`
    /// index), so a burst's messages follow their ObjectIds, which the lab's
    /// app made in its order of writing. When the server refuses the write
    /// for good (a document with no room for the field, see
    /// [`Watcher::set_position`]), each is given its own, so one such
    /// document costs the others nothing.
    async fn set_positions(&mut self) -> Result<(), String> {
        self.reposition().await?;
        if self.to_position.is_empty() {
            return Ok(());
        }
        let mut ids = std::mem::take(&mut self.to_position);
        self.older_strays_first(&mut ids).await?;
        match self.collections.set_positions(ids.clone()).await {
            Ok(()) => Ok(()),
            Err(Class::Fatal(_)) => {
                for id in &ids {
                    self.set_position(id).await?;
                }
                Ok(())
            }
            Err(other) => Err(other.reason().to_owned()),
        }
    }

    /// Adds to `ids` (documents whose inserts the stream brought) the
    /// strays older than the newest of them that nobody has positioned yet,
    /// so that one write, which mongod applies in `_id` order for an `$in`
    /// (see [`Collections::set_positions`]), positions them first. Without
    /// them, an instance whose stream opened between two of another app's
    /// inserts positioned the second while the first waited for a
    /// catch-up's positioning, and came after it in the store order. When
    /// more than [`POSITION_BATCH`] wait, those older ones go alone and
    /// `ids` wait for the next write.
    async fn older_strays_first(&mut self, ids: &mut Vec<Bson>) -> Result<(), String> {
        let Some(from) = self.strays_from().await? else {
            return Ok(());
        };
        let Some(newest) = ids
            .iter()
            .filter_map(Bson::as_object_id)
            .filter(|oid| *oid >= from)
            .max()
        else {
            return Ok(());
        };
        let older = self
            .collections
            .unpositioned_before(from, newest, POSITION_BATCH)
            .await
            .map_err(|c| c.reason().to_owned())?;
        if older.len() == POSITION_BATCH {
            self.to_position = std::mem::replace(ids, older);
        } else {
            for id in older {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Ok(())
    }

    /// Sends the writes in `to_reposition`, in one
    /// ([`Collections::reposition`]): each held message moves after
    /// everything published so far, where the stream brings its update and
    /// this and every other instance publish it. A write that fails for a
    /// while stays queued (the cycle starts again and sends it again); when
    /// the server refuses it for good, the messages are published where
    /// they are: out of the store order, but delivered.
    async fn reposition(&mut self) -> Result<(), String> {
        if self.to_reposition.is_empty() {
            return Ok(());
        }
        let writes = self.to_reposition.clone();
        match self.collections.reposition(&writes).await {
            Ok(()) => {
                self.to_reposition.clear();
                Ok(())
            }
            Err(Class::Fatal(why)) => {
                log::warn!("cannot give messages behind the store order new positions: {why}");
                // Each leaves the queue once it is published (or gone), so a
                // read that fails leaves the rest queued, and still held.
                while let Some((id, _)) = self.to_reposition.first().cloned() {
                    let now = self
                        .collections
                        .find_by_key(&id)
                        .await
                        .map_err(|c| c.reason().to_owned())?;
                    self.to_reposition.remove(0);
                    self.release(&id, now)?;
                }
                Ok(())
            }
            Err(other) => Err(other.reason().to_owned()),
        }
    }

    /// Reads every held message again, for the ones whose update this
    /// stream will not bring: moved by a write whose change event came
    /// before this stream began (a fresh stream starts after the last write
    /// the member applied, <https://www.mongodb.com/docs/manual/changeStreams/#start-time>,
    /// which may not be majority-committed yet, so the reads that found it
    /// held saw it at its first position), or deleted. One moved is
    /// published; one gone is forgotten; one still at its first position
    /// whose write is not queued gets it queued again.
    async fn recheck_held(&mut self) -> Result<(), String> {
        let held: Vec<(String, Timestamp)> =
            self.held.iter().map(|(id, t)| (id.clone(), *t)).collect();
        for (id, first) in held {
            let key = DocId::from_public(&id).bson();
            let now = self
                .collections
                .find_by_key(&key)
                .await
                .map_err(|c| c.reason().to_owned())?;
            match now {
                Some(doc) if doc.get_timestamp(super::document::POSITION).ok() == Some(first) => {
                    if !self.to_reposition.iter().any(|(queued, _)| *queued == key) {
                        self.to_reposition.push((key, first));
                    }
                }
                now => self.release(&key, now)?,
            }
        }
        self.set_positions().await
    }

    /// Ends the hold of the message `id`: publishes it as `now` shows it
    /// (wherever that is), or forgets it when it is gone (or no message).
    fn release(&mut self, id: &Bson, now: Option<RawDocumentBuf>) -> Result<(), String> {
        match now.and_then(|d| self.shared.skipped.keep(&d)) {
            Some(doc) => {
                self.held.remove(&doc.id.public());
                self.publish_here(doc)
            }
            None => {
                if let Some(id) = DocId::from_bson(id) {
                    self.held.remove(&id.public());
                }
                Ok(())
            }
        }
    }

    /// Whether `position` is older than every message the cache was last
    /// loaded with, when that was not the whole history.
    fn is_history(&self, position: &Position) -> bool {
        self.floor.as_ref().is_some_and(|floor| position < floor)
    }

    /// Resets the cache from the latest messages ([`Cache::reset_since`]).
    /// When the read shares no message with the cache, the store lost what
    /// the cache held (a dropped collection, a set rebuilt empty): the
    /// stream has then delivered up to the newest message read or published
    /// since, not beyond, so that messages the store no longer has do not
    /// make new ones look behind them.
    ///
    /// [`Cache::reset_since`]: crate::cache::Cache::reset_since
    fn reset(&mut self, latest: Latest) -> Result<(), String> {
        self.unpositioned = latest
            .messages
            .iter()
            .filter(|m| m.position.is_none())
            .map(|m| m.id.public())
            .collect();
        self.floor = if latest.whole_history {
            None
        } else {
            latest.messages.first().map(MessageDoc::position)
        };
        let newest = latest
            .messages
            .last()
            .map(MessageDoc::position)
            .max(self.published_since_read.take());
        let messages = latest
            .messages
            .into_iter()
            .map(MessageDoc::into_message)
            .collect::<Result<Vec<_>, _>>()?;
        // Taken by any reset: each reads the store as it is now.
        self.changed_since = None;
        let changed = std::mem::take(&mut self.changed);
        let shared =
            self.shared
                .cache
                .reset_since(messages, latest.whole_history, latest.mark, &changed);
        if !shared {
            if let Some(Delivered::UpTo(delivered)) = self.shared.change_stream.delivered() {
                self.delivered_before_loss = self.delivered_before_loss.take().max(Some(delivered));
            }
            // What was held or published is gone with the rest.
            self.held.clear();
            self.to_reposition.clear();
            self.recent.clear();
            self.recent_ids.clear();
        }
        let health = &self.shared.change_stream;
        match newest {
            // What was delivered is still there (or the read trailed it).
            Some(newest) if shared => health.advance(newest),
            None if shared && health.delivered().is_some() => {}
            newest => health.set_delivered(newest.map_or(Delivered::Nothing, Delivered::UpTo)),
        }
        Ok(())
    }

    fn may_lack(&self, position: &Position) -> bool {
        self.shared.change_stream.may_lack(position)
    }

    /// Publishes a message, unless it would go behind one already
    /// published with a later position (and the cache does not hold it):
    /// then it is held until it has a new position ([`Watcher::held`]). A
    /// held message read at another position than its first has its new
    /// one: it is published there, even if it came behind again (a new
    /// position races with inserts as the first did), so none moves twice.
    fn publish(&mut self, doc: MessageDoc) -> Result<(), String> {
        let id = doc.id.public();
        if let Some(first) = self.held.get(&id) {
            if doc.position == Some(*first) {
                return Ok(());
            }
            self.held.remove(&id);
            return self.publish_here(doc);
        }
        let behind = self.is_behind(&doc.position());
        match doc.position {
            Some(first)
                if behind && !self.shared.cache.holds(&id) && !self.recent_ids.contains(&id) =>
            {
                self.to_reposition.push((doc.id.bson(), first));
                self.held.insert(id, first);
                Ok(())
            }
            _ => self.publish_here(doc),
        }
    }

    /// Whether a message at `position` goes behind one already delivered.
    fn is_behind(&self, position: &Position) -> bool {
        matches!(
            self.shared.change_stream.delivered(),
            Some(Delivered::UpTo(p)) if p > *position
        )
    }

    /// Whether subscribers were sent messages up to `position` or beyond
    /// before the store lost them ([`Watcher::delivered_before_loss`]).
    fn was_delivered_before_loss(&self, position: &Position) -> bool {
        self.delivered_before_loss
            .as_ref()
            .is_some_and(|p| p >= position)
    }

    /// Whether an insert committed at cluster time `committed` (the change
    /// event's `clusterTime`, the oplog entry's timestamp:
    /// <https://www.mongodb.com/docs/manual/reference/change-events/insert/>)
    /// was written with a `position` from long before: by a restore
    /// (`mongorestore` keeps every field) or an import, not by a post.
    /// mongod takes a post's position and commits it within one insert,
    /// which the app gives up on after the write deadline; a position more
    /// than that (and the clock margin) older than its commit is history
    /// coming back. Held and moved as a raced post is, a restored history
    /// would move to the moment of the restore, after everything posted
    /// since; instead it keeps its position, is not sent to subscribers
    /// (it is older than what they have), and the cache reloads so it is
    /// listed in its place.
    ///
    /// The event's `wallTime` (the primary's wall clock at the commit,
    /// MongoDB 6.0 on) must agree when the server sends it: a primary's
    /// cluster time can jump ahead between the two readings (a `$clusterTime`
    /// gossiped by a member whose clock runs fast), which its wall clock
    /// does not, and a post taken for history would reach no subscriber
    /// live. Both readings far ahead of the position: history for sure.
    fn restored_far_behind(
        &self,
        committed: Option<Timestamp>,
        wall: Option<mongodb::bson::DateTime>,
        position: Timestamp,
    ) -> bool {
        self.written_far_behind(committed, wall, u64::from(position.time))
    }

    /// Whether a document without `position` whose insert event the stream
    /// brings is the lab's history coming back (a restore, an import of its
    /// documents), not a new post of the lab's app: it was made (its
    /// ObjectId's second, <https://www.mongodb.com/docs/manual/reference/method/ObjectId/>)
    /// long before its insert committed, as [`Watcher::restored_far_behind`]
    /// tells for a position. The lab's app makes the ObjectId as it inserts.
    /// A document whose `_id` is no ObjectId is judged by its `datetime`,
    /// which the lab wrote in local time taken for UTC: up to
    /// [`TIME_ZONE_SPREAD_SECS`] more behind for a post made now.
    fn history_coming_back(
        &self,
        committed: Option<Timestamp>,
        wall: Option<mongodb::bson::DateTime>,
        doc: &MessageDoc,
    ) -> bool {
        let made = match &doc.id {
            DocId::ObjectId(oid) => {
                u64::try_from(oid.timestamp().timestamp_millis() / 1000).unwrap_or(0)
            }
            DocId::Text(_) => {
                let secs = doc.datetime.timestamp_millis() / 1000;
                match u64::try_from(secs) {
                    Ok(secs) => secs + TIME_ZONE_SPREAD_SECS,
                    // Before 1970: long ago, whatever its time zone.
                    Err(_) => 0,
                }
            }
        };
        self.written_far_behind(committed, wall, made)
    }

    /// Whether a document written at `written` (seconds since the epoch)
    /// committed more than the write deadline and the clock margin after:
    /// by both the event's cluster time and, when sent, its wall time.
    fn written_far_behind(
        &self,
        committed: Option<Timestamp>,
        wall: Option<mongodb::bson::DateTime>,
        written: u64,
    ) -> bool {
        let bound = self.shared.write_timeout.as_secs() + CLOCK_SKEW_MS.unsigned_abs() / 1000;
        let since = written + bound;
        let by_cluster_time = committed.is_some_and(|c| u64::from(c.time) > since);
        let by_wall_clock = wall.is_none_or(|w| {
            u64::try_from(w.timestamp_millis() / 1000).is_ok_and(|secs| secs > since)
        });
        by_cluster_time && by_wall_clock
    }

    /// Publishes a message where the stream is now.
    fn publish_here(&mut self, doc: MessageDoc) -> Result<(), String> {
        let position = doc.position();
        let id = doc.id.public();
        // The cache holds it where reads showed it without a position,
        // among the lab's history, and sent it to nobody: a document of
        // the very second history ends in (history to a read, news to a
        // stream that sees its insert), or one whose `_id` no read can
        // tell for a stray (a string, an ObjectId from a clock behind).
        // It now stands after everything delivered: taken out of the
        // cache, it is published there, and subscribers get it.
        if doc.position.is_some() && self.unpositioned.remove(&id) {
            self.shared.cache.take_out(&id);
        }
        self.shared.cache.publish(doc.into_message()?);
        if self.recent_ids.insert(id.clone()) {
            self.recent.push_back((position.clone(), id));
        }
        self.published_since_read = self.published_since_read.take().max(Some(position.clone()));
        self.shared.change_stream.advance(position);
        if let Some(Delivered::UpTo(newest)) = self.shared.change_stream.delivered() {
            let margin = newest.earlier_by(CLOCK_SKEW_MS);
            while self.recent.front().is_some_and(|(p, _)| *p < margin) {
                if let Some((_, old)) = self.recent.pop_front() {
                    self.recent_ids.remove(&old);
                }
            }
        }
        Ok(())
    }

    /// How long the stream waits for an answer (an event, or a `getMore`'s
    /// empty batch) before it takes its connection for dead and fails the
    /// cycle: [`MAX_AWAIT`], the driver's own waits for a server (its
    /// server selection and a TCP connect, which end in errors of their
    /// own) and [`REPLY_MARGIN`]; 21 s with simplechat's defaults. A
    /// member that vanishes is noticed sooner, by the driver's monitors
    /// (docs/mongodb.md); a connection that dies alone, without being
    /// closed, while its member still answers, is noticed only here: the
    /// driver sets no socket timeout, and TCP keepalive (its 120 s, then
    /// the system's probes: about 13 minutes with Linux's defaults) would
    /// end it much later.
    fn reply_deadline(&self) -> Duration {
        MAX_AWAIT + self.collections.conn.longest_wait_for_a_server() + REPLY_MARGIN
    }

    fn reason(&self, e: &mongodb::error::Error) -> String {
        crate::mongo::reason(e, self.collections.conn.secret.as_deref())
    }

    /// Why reading the open stream failed. An event the server cannot send
    /// (`BSONObjectTooLarge` 10334: another app's document within about
    /// 200 bytes of 16 MiB, which its insert event carries whole:
    /// <https://www.mongodb.com/docs/manual/reference/operator/aggregation/changeStreamSplitLargeEvent/>)
    /// fails every stream resumed before it, so the token is dropped and
    /// the next cycle opens a fresh stream and reads what it missed. (A
    /// resumed `aggregate` that meets the event fails too, and `open` drops
    /// the token then; this covers a server that answers the `aggregate`
    /// before reaching it.)
    fn failed(&mut self, e: &mongodb::error::Error) -> String {
        if crate::mongo::errors::command_code(e) == Some(BSON_OBJECT_TOO_LARGE) {
            self.token = None;
        }
        self.reason(e)
    }

    /// The event in `raw`, its document left raw. `None` for one whose
    /// own fields are not UTF-8 (the `_id` in `documentKey`): an insert's
    /// document is counted as no message, and the stream goes on.
    fn decode(&self, raw: &RawDocumentBuf) -> Option<Event> {
        match mongodb::bson::from_slice::<Event>(raw.as_bytes()) {
            Ok(event) => Some(event),
            Err(_) => {
                if let Ok(document) = raw.get_document("fullDocument") {
                    self.shared.skipped.keep(document);
                }
                None
            }
        }
    }

    /// `Ok(true)` when the event ends the stream.
    async fn handle(&mut self, event: Event) -> Result<bool, String> {
        match event.operation_type {
            OperationType::Insert => {
                let Some(doc) = event.full_document else {
                    return Ok(false);
                };
                // A document that is no message is counted and sent to
                // nobody.
                let Some(message) = self.shared.skipped.keep(&doc) else {
                    return Ok(false);
                };
                if let Some(position) = message.position {
                    // Not news, and no race: see the function. One newer
                    // than all that was delivered is published where it
                    // is, as any message that comes in order. One at or
                    // before what was delivered before the store lost
                    // everything is a message subscribers were sent, come
                    // back (a restore), however recent the backup.
                    let at = message.position();
                    if (self.restored_far_behind(event.cluster_time, event.wall_time, position)
                        && self.is_behind(&at))
                        || self.was_delivered_before_loss(&at)
                    {
                        if !self.is_history(&at) {
                            self.count_restored();
                            if self.may_lack(&at) {
                                self.restored.insert(message.id.public());
                            }
                        }
                        return Ok(false);
                    }
                    self.publish(message)?;
                    return Ok(false);
                }
                // The lab's history restored while the app runs: it keeps no
                // position, is not news, and takes its place with the
                // coalesced reload restored messages get.
                if self.history_coming_back(event.cluster_time, event.wall_time, &message) {
                    self.count_restored();
                    return Ok(false);
                }
                // Another app (the lab's) inserted it: give it its place in
                // the store order, so it is the newest message in every
                // listing (unless another instance already did). It is
                // published when that update comes through this stream,
                // not now: messages inserted between the insert and the
                // update come before it in the store order, and the stream
                // brings them first. On failure the cycle starts again, and
                // its step 3 positions the document as a stray.
                self.to_position.push(message.id.bson());
                Ok(false)
            }
            _ if is_another_clients_change(&event) => {
                self.changed_elsewhere(&event).await?;
                Ok(false)
            }
            // The update that gave another app's document its position:
            // the document is read as it now is and published.
            OperationType::Update => {
                let Some(id) = event.document_key.and_then(|k| k.get("_id").cloned()) else {
                    return Ok(false);
                };
                if let Bson::ObjectId(oid) = &id {
                    if self.strays_published.remove(oid) {
                        return Ok(false);
                    }
                }
                let now = self
                    .collections
                    .find_by_key(&id)
                    .await
                    .map_err(|c| c.reason().to_owned())?;
                if let Some(message) = now.and_then(|d| self.shared.skipped.keep(&d)) {
                    let id = message.id.public();
                    if !self.held.contains_key(&id)
                        && self.shared.cache.holds(&id)
                        && !self.unpositioned.contains(&id)
                    {
                        // A message that came behind the store order, given
                        // a new position (by another instance) after this
                        // cache read it at its first: the cache follows the
                        // store again.
                        self.set_positions().await?;
                        self.reload().await?;
                    } else if message.position.is_some() {
                        self.publish(message)?;
                    }
                }
                Ok(false)
            }
            OperationType::Invalidate
            | OperationType::Drop
            | OperationType::DropDatabase
            | OperationType::Rename => {
                // An invalidated stream cannot be resumed with resumeAfter;
                // a fresh one plus step 3 covers the gap. What was held is
                // gone with the collection.
                self.token = None;
                self.held.clear();
                self.to_reposition.clear();
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64, id: &str) -> Position {
        Position {
            stamp: None,
            millis: ms,
            id: super::super::document::DocId::Text(id.into()),
        }
    }

    #[test]
    fn delivered_only_moves_forward() {
        let mut d = Delivered::Nothing;
        assert!(d.may_lack(&at(0, "a")));
        d.advance(at(5, "b"));
        d.advance(at(3, "z"));
        assert_eq!(d, Delivered::UpTo(at(5, "b")));
        assert!(d.may_lack(&at(5, "c")));
        // Within the clock skew a position is still "maybe new"; the cache
        // drops the ones it has.
        assert!(d.may_lack(&at(5 - CLOCK_SKEW_MS + 1, "a")));
        assert!(!d.may_lack(&at(5 - CLOCK_SKEW_MS - 1, "z")));
    }

    #[test]
    fn before_the_first_load_any_message_may_not_have_been_delivered() {
        let health = ChangeStreamHealth::default();
        assert!(health.may_lack(&at(0, "a")));
        health.set_delivered(Delivered::Nothing);
        assert!(health.may_lack(&at(0, "a")));
        health.advance(at(10_000, "b"));
        assert!(health.may_lack(&at(10_000, "c")));
        assert!(!health.may_lack(&at(10_000 - CLOCK_SKEW_MS - 1, "a")));
    }
}
