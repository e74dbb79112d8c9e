//! The cache: the latest messages kept in memory, and the broadcast of each
//! new one to every Server-Sent-Events subscriber.
//!
//! Each message is serialized once, when it is published; every subscriber
//! and every cached page share those bytes. A subscriber that falls behind the
//! broadcast learns so (`Lagged`) and catches up from the store, so nobody
//! silently misses a message.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{broadcast, watch};

use crate::message::Message;

/// The most messages one listing returns; the cache holds that many so any
/// "latest" listing can be answered from memory.
pub const CACHE_CAPACITY: usize = 1000;
/// The most bytes one message can take in the cache
/// ([`CachedMessage::held_bytes`]). A message has at most 64 characters of
/// name and 2,000 of text (another app's longer ones are shown cut, see
/// `store::mongo::document::shown_text`); a character is at most 4 bytes
/// in the message and 6 in its JSON (a control character, `\u0001`), so the
/// message, its JSON and its SSE frame take at most 13 bytes a character:
/// 26,832 bytes, plus the id (at most 64 bytes, held four times) and the
/// fixed parts. 32 KiB bounds them all.
pub const MESSAGE_MAX_BYTES: usize = 32 * 1024;
/// The most bytes the cache holds ([`Cache::held_bytes`]): it evicts its
/// oldest messages past this as past [`CACHE_CAPACITY`], so it never holds
/// more than 1000 messages of the largest size (about 31 MiB). 1000
/// messages of 2,000 ASCII characters take about 6.5 MB.
pub const CACHE_MAX_BYTES: usize = CACHE_CAPACITY * MESSAGE_MAX_BYTES;
/// What a cached message takes beside its strings and bytes: the structs,
/// the reference counts, the id's entry in the index.
const MESSAGE_OVERHEAD_BYTES: usize = 256;
/// How many events a subscriber may fall behind before it has to catch up
/// from the store.
const BROADCAST_CAPACITY: usize = 1024;
/// How long listings go to the store for a message this process stored
/// that the store has not published ([`Cache::await_echo`]). Normally it
/// comes within milliseconds; this bounds what a message the store never
/// publishes (a change stream that cannot follow) costs the listings.
const ECHO_MAX_WAIT: Duration = Duration::from_secs(60);

/// Where a message arrived in this process's cache: arrivals are numbered
/// in the order subscribers are sent them, within an epoch that a reset of
/// the cache starts anew. A subscriber that remembers only the next arrival
/// it expects can skip what it already has in constant memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Changes with every reset of the cache.
    pub epoch: u64,
    /// 0, 1, 2, ... within the epoch.
    pub seq: u64,
}

impl Arrival {
    /// The arrival right after this one.
    pub fn next(self) -> Arrival {
        Arrival {
            epoch: self.epoch,
            seq: self.seq + 1,
        }
    }

    /// Whether a message that arrived at `self` comes at or after `next`
    /// (the first arrival a subscriber has not been sent). Arrivals of
    /// different epochs cannot be compared: `None`.
    pub fn is_at_or_after(self, next: Arrival) -> Option<bool> {
        (self.epoch == next.epoch).then_some(self.seq >= next.seq)
    }
}

/// Where a subscriber to a complete cache starts ([`Cache::subscribe_at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The first arrival the subscriber is sent.
    pub next: Arrival,
    /// The newest message before it, which a subscriber that falls behind
    /// before it was sent anything catches up after (once the cache has
    /// let go of `next`, or begun a new epoch); `None` when the store has
    /// no message, so that everything stored is after it.
    pub after: Option<String>,
}

/// Where the cache's arrivals stood when a store read began
/// ([`Cache::mark`], [`Cache::reset_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(Arrival);

/// A published message with its serialized forms, shared by the cache, the
/// broadcast and every listing built from them.
#[derive(Debug)]
pub struct CachedMessage {
    /// The message itself, shared with listings and the page.
    pub message: Arc<Message>,
    /// The message as JSON.
    pub json: Bytes,
    /// The whole SSE frame: `event`, `id` and `data` lines.
    pub frame: Bytes,
    /// Where it arrived in the cache; `None` for a message read from the
    /// store outside the cache.
    pub arrival: Option<Arrival>,
}

impl CachedMessage {
    /// Serializes `message` once, as JSON and as an SSE frame.
    pub fn new(message: Message) -> Self {
        let json = serde_json::to_vec(&message).unwrap_or_default();
        Self::serialized(message, json)
    }

    /// `message` with `json`, its JSON as `serde_json::to_vec` writes it
    /// (the bytes a store already made), and its SSE frame.
    pub fn serialized(message: Message, json: Vec<u8>) -> Self {
        let frame = sse_frame(&message.id, &json);
        CachedMessage {
            message: Arc::new(message),
            json: Bytes::from(json),
            frame,
            arrival: None,
        }
    }

    /// The bytes the cache counts for this message: its id (also in the
    /// cache's index), name and text, its JSON, its SSE frame, and
    /// [`MESSAGE_OVERHEAD_BYTES`]. At most [`MESSAGE_MAX_BYTES`] for any
    /// message a store shows.
    pub fn held_bytes(&self) -> usize {
        let m = &self.message;
        2 * m.id.len()
            + m.name.len()
            + m.text.len()
            + self.json.len()
            + self.frame.len()
            + MESSAGE_OVERHEAD_BYTES
    }

    /// The same serialized message at another arrival (no copy of the bytes).
    fn arrived(&self, arrival: Arrival) -> CachedMessage {
        CachedMessage {
            message: self.message.clone(),
            json: self.json.clone(),
            frame: self.frame.clone(),
            arrival: Some(arrival),
        }
    }
}

/// `serde_json` never writes a raw newline, so the JSON fits one `data:` line;
/// ids are restricted to characters that need no escaping.
fn sse_frame(id: &str, json: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(json.len() + id.len() + 32);
    frame.extend_from_slice(b"event: message\nid: ");
    frame.extend_from_slice(id.as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    frame.extend_from_slice(json);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

#[derive(Default)]
struct Recent {
    /// In arrival order, every one with `arrival` set.
    events: VecDeque<Arc<CachedMessage>>,
    ids: HashMap<String, Arrival>,
    /// The sum of `held_bytes` over `events`.
    bytes: usize,
    /// The current epoch and the next arrival number in it.
    epoch: u64,
    next_seq: u64,
    /// The cache is a true suffix of the store order. False until the store
    /// first resets it, and whenever the store cannot vouch for it.
    complete: bool,
    /// The cache holds every message there is.
    whole_history: bool,
    last_delivered: Option<OffsetDateTime>,
    /// Changes with every change of the cache, so views built from it (the
    /// serialized listing, the rendered page) know when to rebuild.
    version: u64,
    /// Messages this process stored that the store has not published yet
    /// ([`Cache::await_echo`]), and since when.
    awaited: HashMap<String, Instant>,
    /// Messages another client deleted, the latest [`CACHE_CAPACITY`]:
    /// each with the message just older than it that is still stored
    /// ([`Cache::still_stored_before`]).
    deleted: Deleted,
}

/// Deleted messages and what was just older than each, oldest first,
/// evicted past [`CACHE_CAPACITY`].
#[derive(Default)]
struct Deleted {
    before: HashMap<String, String>,
    order: VecDeque<String>,
}

impl Deleted {
    fn insert(&mut self, id: String, still_stored: String) {
        if self.before.insert(id.clone(), still_stored).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > CACHE_CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.before.remove(&oldest);
            }
        }
    }
}

impl Recent {
    fn changed(&mut self) {
        self.version += 1;
    }

    /// Empties the cache for a new epoch of arrivals, to be filled again
    /// with [`push`]; what it held, in order.
    fn new_epoch(&mut self) -> VecDeque<Arc<CachedMessage>> {
        self.ids.clear();
        self.bytes = 0;
        self.epoch += 1;
        self.next_seq = 0;
        std::mem::take(&mut self.events)
    }

    /// Whether listings may be answered from the cache: it is complete,
    /// and no message this process stored is missing from it (unless it
    /// has been missing longer than [`ECHO_MAX_WAIT`]).
    fn answers_listings(&self) -> bool {
        self.complete
            && (self.awaited.is_empty()
                || self
                    .awaited
                    .values()
                    .all(|since| since.elapsed() >= ECHO_MAX_WAIT))
    }

    /// Forgets the awaited messages the cache now holds, and those awaited
    /// too long.
    fn settle_awaited(&mut self) {
        if self.awaited.is_empty() {
            return;
        }
        let ids = &self.ids;
        self.awaited
            .retain(|id, since| !ids.contains_key(id) && since.elapsed() < ECHO_MAX_WAIT);
    }
}

/// The latest messages, at most [`CACHE_CAPACITY`] of them and at most
/// [`CACHE_MAX_BYTES`], and the broadcast. What it does not hold (fewer
/// messages than a listing asks for, when it does not hold the whole
/// history; an id or an arrival it evicted) it does not answer: the store
/// does. Its lock is a std `RwLock`: held only for in-memory work, never
/// across `.await`.
pub struct Cache {
    recent: RwLock<Recent>,
    sender: broadcast::Sender<Arc<CachedMessage>>,
    /// Whether the cache is complete, for subscribers that wait for it
    /// ([`Cache::completeness`]); set under the `recent` lock.
    complete: watch::Sender<bool>,
    /// The default listing, serialized once per change: (limit, JSON).
    default_page: Memo<(usize, Listing)>,
}

/// A listing serialized once, with a tag of its content.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The JSON array.
    pub json: Bytes,
    /// [`content_tag`] of `json`.
    pub tag: Arc<str>,
}

/// A tag that changes whenever `bytes` do: the first 16 bytes of their
/// SHA-256 in hex, quoted (an HTTP entity tag), the same on every instance
/// for the same content.
pub fn content_tag(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// A value built from the cache, kept until the cache's version changes.
/// Its lock is never held while the cache's is taken, so the two cannot
/// deadlock.
pub struct Memo<T>(Mutex<Option<(u64, T)>>);

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo(Mutex::new(None))
    }
}

impl<T: Clone> Memo<T> {
    /// The value built for `version`, if it is the one kept.
    pub fn get(&self, version: u64) -> Option<T> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.as_ref()
            .filter(|(v, _)| *v == version)
            .map(|(_, value)| value.clone())
    }

    /// Keeps `value` as the one built for `version`.
    pub fn put(&self, version: u64, value: T) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((version, value));
    }
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            recent: RwLock::new(Recent::default()),
            sender: broadcast::channel(BROADCAST_CAPACITY).0,
            complete: watch::channel(false).0,
            default_page: Memo::default(),
        }
    }
}

impl Cache {
    /// An empty cache that answers nothing until its first reset.
    pub fn new() -> Arc<Self> {
        Arc::new(Cache::default())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Recent> {
        self.recent.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Recent> {
        self.recent.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a message that follows everything published so far, and sends it
    /// to every subscriber. A message already in the cache is ignored, so a
    /// change stream that re-reads after a gap cannot deliver a message twice.
    pub fn publish(&self, message: Message) {
        self.publish_cached(CachedMessage::new(message));
    }

    /// As [`Cache::publish`], for a message already serialized as JSON
    /// ([`CachedMessage::serialized`]).
    pub fn publish_serialized(&self, message: Message, json: Vec<u8>) {
        self.publish_cached(CachedMessage::serialized(message, json));
    }

    /// Serialized before the lock is taken: readers wait for the push only.
    fn publish_cached(&self, cached: CachedMessage) {
        let mut recent = self.write();
        if recent.ids.contains_key(&cached.message.id) {
            return;
        }
        recent.last_delivered = Some(OffsetDateTime::now_utc());
        let event = push(&mut recent, &cached);
        recent.settle_awaited();
        recent.changed();
        // Sent while the cache lock is held, so subscribers see events in the
        // cache's order. No receivers is not an error.
        let _ = self.sender.send(event);
    }

    /// Replaces the cache with the latest messages a store read, oldest
    /// first: up to one more than the cache holds, so that fewer means the
    /// store holds no more (the whole history is cached).
    pub fn reset_from_latest(&self, mut latest: Vec<Message>) {
        let whole_history = latest.len() <= CACHE_CAPACITY;
        let skip = latest.len().saturating_sub(CACHE_CAPACITY);
        self.reset(latest.split_off(skip), whole_history);
    }

    /// Replaces the cache with the latest messages from the store, oldest
    /// first, and starts a new epoch of arrivals. Messages published
    /// meanwhile that the snapshot lacks (the store's read can trail the
    /// change stream) stay, after it: those that arrived after the last
    /// message the snapshot and the old cache share or, when they share
    /// none, those newer than the snapshot by datetime.
    pub fn reset(&self, latest: Vec<Message>, whole_history: bool) {
        self.reset_keeping(latest, whole_history, None, &HashSet::new());
    }

    /// Where the cache's arrivals stand now: taken before a store read
    /// that will [`Cache::reset_since`] the cache.
    pub fn mark(&self) -> Mark {
        let recent = self.read();
        Mark(Arrival {
            epoch: recent.epoch,
            seq: recent.next_seq,
        })
    }

    /// Replaces the cache with the latest messages from a store read that
    /// began at `mark`, oldest first, and starts a new epoch of arrivals.
    /// Messages the read lacks stay, after it, when they were published
    /// since `mark`, or after the last message the read and the cache
    /// share (the read trailed what was published: a majority read on a
    /// member behind). When the read shares no message with the cache,
    /// only those published since `mark` stay: the store no longer has the
    /// others (its collection was dropped, the set rebuilt empty), so no
    /// listing, page or replay may show them. None of the messages
    /// `changed` stays unless the read has it: another client changed or
    /// deleted them, so the read has them as they are now, or not at all.
    /// Returns whether the read shared a message with the cache (or the
    /// cache held none).
    pub fn reset_since(
        &self,
        latest: Vec<Message>,
        whole_history: bool,
        mark: Mark,
        changed: &HashSet<String>,
    ) -> bool {
        self.reset_keeping(latest, whole_history, Some(mark), changed)
    }

    fn reset_keeping(
        &self,
        latest: Vec<Message>,
        whole_history: bool,
        mark: Option<Mark>,
        changed: &HashSet<String>,
    ) -> bool {
        let mut recent = self.write();
        let old = recent.new_epoch();
        // An eviction while the cache is filled clears it (`push`).
        recent.whole_history = whole_history;
        let in_snapshot: HashSet<&str> = latest.iter().map(|m| m.id.as_str()).collect();
        let last_shared = old
            .iter()
            .rposition(|e| in_snapshot.contains(e.message.id.as_str()));
        let tail = latest.last().map(|m| (m.datetime, m.id.clone()));
        let shared = old.is_empty() || last_shared.is_some();
        // A message another client changed that the read has not is
        // deleted: what was just older than it in the old order and is in
        // the read stays the place a subscriber it was sent to goes on from.
        let mut still_stored = None;
        for e in &old {
            let id = &e.message.id;
            if in_snapshot.contains(id.as_str()) {
                still_stored = Some(id.clone());
            } else if let (true, Some(before)) = (changed.contains(id), &still_stored) {
                recent.deleted.insert(id.clone(), before.clone());
            }
        }
        let kept: Vec<Arc<CachedMessage>> = old
            .into_iter()
            .enumerate()
            .filter(|(i, e)| {
                let m = &e.message;
                let since_mark = |Mark(mark): Mark| {
                    e.arrival
                        .is_some_and(|a| a.epoch != mark.epoch || a.seq >= mark.seq)
                };
                !in_snapshot.contains(m.id.as_str())
                    && !changed.contains(&m.id)
                    && match (mark, last_shared) {
                        (Some(mark), Some(shared)) => *i > shared || since_mark(mark),
                        (Some(mark), None) => since_mark(mark),
                        (None, Some(shared)) => *i > shared,
                        (None, None) => tail
                            .as_ref()
                            .is_none_or(|(dt, id)| (m.datetime, &m.id) > (*dt, id)),
                    }
            })
            .map(|(_, e)| e)
            .collect();
        drop(in_snapshot);
        for m in latest {
            push(&mut recent, &CachedMessage::new(m));
        }
        for event in kept {
            push(&mut recent, &event);
        }
        recent.complete = true;
        recent.settle_awaited();
        recent.changed();
        self.complete.send_replace(true);
        shared
    }

    /// For the message `id` another client deleted (a cache reset saw it
    /// gone), the message just older than it that the store still had
    /// then: a subscriber whose last message was `id` goes on after that
    /// one, and misses nothing. `None` for any other id, and for one with
    /// no such message among those the reset read.
    pub fn still_stored_before(&self, id: &str) -> Option<String> {
        self.read().deleted.before.get(id).cloned()
    }

    /// Takes the message `id` out of the cache, the others kept in their
    /// order, and starts a new epoch of arrivals (an arrival numbers a
    /// place in one epoch, and the places after it move). For a message
    /// the cache holds where it no longer stands in the store order: it is
    /// published next, where it now stands. Nothing happens when the cache
    /// does not hold it.
    pub fn take_out(&self, id: &str) {
        let mut recent = self.write();
        if !recent.ids.contains_key(id) {
            return;
        }
        // One fewer than it held: `push` evicts nothing.
        for event in recent.new_epoch().iter().filter(|e| e.message.id != id) {
            push(&mut recent, event);
        }
        recent.changed();
    }

    /// Says that this process stored the message `id` (or answered a
    /// client's retry with it) and the store will publish it (a MongoDB
    /// store, from its change stream) but has not yet: until it does,
    /// listings are not answered from the cache (they go to the store,
    /// which has it), so a client that posted reads its own message, while
    /// subscribers get it where the store publishes it, in the store order.
    /// Publishing it here instead would put it ahead of messages the store
    /// orders before it. A reset that holds it, or [`ECHO_MAX_WAIT`], ends
    /// the wait too.
    pub fn await_echo(&self, id: &str) {
        let mut recent = self.write();
        if recent.ids.contains_key(id) {
            return;
        }
        // So the map holds at most the posts of the last ECHO_MAX_WAIT,
        // however long the store's stream is away.
        recent.settle_awaited();
        recent.awaited.insert(id.to_owned(), Instant::now());
        recent.changed();
    }

    /// The store can no longer vouch for the cache (its change stream broke): listings
    /// go to the store until the next `reset`.
    pub fn invalidate(&self) {
        let mut recent = self.write();
        recent.complete = false;
        recent.changed();
        self.complete.send_replace(false);
    }

    /// A receiver of every message published from now on, in cache order.
    /// It lags (`RecvError::Lagged`) after falling 1024 messages behind.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CachedMessage>> {
        self.sender.subscribe()
    }

    /// Like [`Cache::subscribe`], with the first arrival the receiver will
    /// get when the cache is complete (taken under the lock `publish`
    /// holds while it sends, so nothing falls between the two).
    pub fn subscribe_with_next(
        &self,
    ) -> (broadcast::Receiver<Arc<CachedMessage>>, Option<Arrival>) {
        let (receiver, start) = self.subscribe_at();
        (receiver, start.map(|s| s.next))
    }

    /// Like [`Cache::subscribe`], with where the receiver starts in the
    /// store order ([`Start`]) when the cache can say: it is complete, and
    /// holds the newest message or knows the store has none.
    pub fn subscribe_at(&self) -> (broadcast::Receiver<Arc<CachedMessage>>, Option<Start>) {
        let recent = self.read();
        let receiver = self.sender.subscribe();
        let after = match recent.events.back() {
            Some(newest) => Some(Some(newest.message.id.clone())),
            None if recent.whole_history => Some(None),
            // Complete and empty, yet not the whole history: every message
            // was larger than the cache's budget. The store can say.
            None => None,
        };
        let start = after.filter(|_| recent.complete).map(|after| Start {
            next: Arrival {
                epoch: recent.epoch,
                seq: recent.next_seq,
            },
            after,
        });
        (receiver, start)
    }

    /// Tells when the cache becomes complete ([`Cache::is_complete`]), or
    /// stops being: what a subscriber placed by message id waits for
    /// before it catches up (see `api::events`).
    pub fn completeness(&self) -> watch::Receiver<bool> {
        self.complete.subscribe()
    }

    /// Up to `limit` messages from arrival `next` on, if the cache still
    /// holds that arrival (same epoch, not evicted, complete).
    pub fn since(&self, next: Arrival, limit: usize) -> Option<Vec<Arc<CachedMessage>>> {
        let recent = self.read();
        if !recent.complete || next.epoch != recent.epoch || next.seq > recent.next_seq {
            return None;
        }
        let oldest = recent
            .events
            .front()
            .and_then(|e| e.arrival)
            .map_or(recent.next_seq, |a| a.seq);
        let skip = usize::try_from(next.seq.checked_sub(oldest)?).ok()?;
        Some(
            recent
                .events
                .iter()
                .skip(skip)
                .take(limit)
                .cloned()
                .collect(),
        )
    }

    /// The first arrival of the current epoch, when the cache is complete
    /// and holds the whole history: from there, [`Cache::since`] answers
    /// with every message the store had when the cache last read it, and
    /// every one published since. `None` when the store may have messages
    /// the cache does not hold.
    pub fn oldest_arrival(&self) -> Option<Arrival> {
        let recent = self.read();
        (recent.complete && recent.whole_history).then(|| Arrival {
            epoch: recent.epoch,
            seq: recent
                .events
                .front()
                .and_then(|e| e.arrival)
                .map_or(recent.next_seq, |a| a.seq),
        })
    }

    /// Whether the cache holds the message `id` (complete or not): it was
    /// published, or loaded, and not evicted since.
    pub fn holds(&self, id: &str) -> bool {
        self.read().ids.contains_key(id)
    }

    /// Whether the cache holds messages and none of `ids`: a store read of
    /// them comes from a store that lost what the cache holds (the rule
    /// [`Cache::reset_since`] applies, asked before the reset).
    pub fn shares_none_of<'a>(&self, mut ids: impl Iterator<Item = &'a str>) -> bool {
        let recent = self.read();
        !recent.events.is_empty() && !ids.any(|id| recent.ids.contains_key(id))
    }

    /// The ids of every message the cache holds, oldest first.
    pub fn held_ids(&self) -> Vec<String> {
        self.read()
            .events
            .iter()
            .map(|e| e.message.id.clone())
            .collect()
    }

    /// Where the message with `id` arrived, if the complete cache holds it.
    pub fn arrival_of(&self, id: &str) -> Option<Arrival> {
        let recent = self.read();
        if !recent.complete {
            return None;
        }
        recent.ids.get(id).copied()
    }

    /// The bytes the cache holds: the sum of
    /// [`CachedMessage::held_bytes`] over its messages, at most
    /// [`CACHE_MAX_BYTES`].
    pub fn held_bytes(&self) -> usize {
        self.read().bytes
    }

    /// How many messages the cache holds, at most [`CACHE_CAPACITY`].
    pub fn held_messages(&self) -> usize {
        self.read().events.len()
    }

    /// When a message was last published, if ever.
    pub fn last_delivered(&self) -> Option<OffsetDateTime> {
        self.read().last_delivered
    }

    /// Changes whenever what the cache answers may change.
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// Whether the cache is a true suffix of the store order (see
    /// [`Cache::reset`] and [`Cache::invalidate`]).
    pub fn is_complete(&self) -> bool {
        self.read().complete
    }

    /// The latest `limit` messages, oldest first, if the cache can answer.
    pub fn latest(&self, limit: usize) -> Option<Vec<Arc<CachedMessage>>> {
        self.latest_versioned(limit).map(|(_, events)| events)
    }

    /// Like `latest`, with the version the answer belongs to.
    pub fn latest_versioned(&self, limit: usize) -> Option<(u64, Vec<Arc<CachedMessage>>)> {
        let recent = self.read();
        if !recent.answers_listings() || (recent.events.len() < limit && !recent.whole_history) {
            return None;
        }
        let skip = recent.events.len().saturating_sub(limit);
        Some((
            recent.version,
            recent.events.iter().skip(skip).cloned().collect(),
        ))
    }

    /// Up to `limit` messages after `id`, if `id` is in the cache and the
    /// cache answers listings (see [`Cache::await_echo`]).
    pub fn after(&self, id: &str, limit: usize) -> Option<Vec<Arc<CachedMessage>>> {
        if !self.read().answers_listings() {
            return None;
        }
        self.since(self.arrival_of(id)?.next(), limit)
    }

    /// The JSON array of the latest `limit` messages and its tag, built once
    /// per change.
    pub fn latest_json(&self, limit: usize) -> Option<Listing> {
        if let Some((l, listing)) = self.default_page.get(self.version()) {
            if l == limit {
                return Some(listing);
            }
        }
        let (version, events) = self.latest_versioned(limit)?;
        let bytes = json_array(&events);
        let listing = Listing {
            tag: content_tag(&bytes).into(),
            json: bytes,
        };
        self.default_page.put(version, (limit, listing.clone()));
        Some(listing)
    }
}

/// Appends `message` at the next arrival and returns it as cached.
fn push(recent: &mut Recent, message: &CachedMessage) -> Arc<CachedMessage> {
    let arrival = Arrival {
        epoch: recent.epoch,
        seq: recent.next_seq,
    };
    recent.next_seq += 1;
    let event = Arc::new(message.arrived(arrival));
    recent.ids.insert(event.message.id.clone(), arrival);
    recent.bytes += event.held_bytes();
    recent.events.push_back(event.clone());
    // The oldest go first, so what stays is still the latest messages; a
    // message larger than the whole budget is not kept at all (it is
    // still sent to subscribers, and the store answers for it).
    while recent.events.len() > CACHE_CAPACITY || recent.bytes > CACHE_MAX_BYTES {
        let Some(old) = recent.events.pop_front() else {
            break;
        };
        recent.ids.remove(&old.message.id);
        recent.bytes -= old.held_bytes();
        recent.whole_history = false;
    }
    event
}

/// Joins already-serialized messages into a JSON array.
pub fn json_array(events: &[Arc<CachedMessage>]) -> Bytes {
    let len = events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.json);
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{now_millis, NewMessage};

    fn cached_ids(live: &Cache, limit: usize) -> Vec<String> {
        let events = live.latest(limit).expect("the cache answers");
        events.iter().map(|e| e.message.id.clone()).collect()
    }

    fn msg(id: &str) -> Message {
        NewMessage::validate("n", id, Some(id))
            .unwrap()
            .into_message(now_millis())
    }

    #[test]
    fn cache_answers_only_when_complete() {
        let live = Cache::new();
        live.publish(msg("a"));
        assert!(live.latest(10).is_none(), "not reset yet");
        live.reset(vec![msg("a"), msg("b")], true);
        assert_eq!(cached_ids(&live, 10), ["a", "b"]);
        live.invalidate();
        assert!(live.latest(1).is_none());
    }

    #[test]
    fn a_message_awaited_from_the_store_keeps_listings_off_the_cache_until_it_comes() {
        let live = Cache::new();
        live.reset(vec![msg("a")], true);
        live.await_echo("a");
        assert_eq!(cached_ids(&live, 10), ["a"], "one the cache has is no wait");
        live.await_echo("b");
        assert!(live.latest(10).is_none(), "the cache lacks b");
        assert!(live.after("a", 10).is_none());
        assert!(live.latest_json(10).is_none());
        live.publish(msg("b"));
        assert_eq!(cached_ids(&live, 10), ["a", "b"]);
        assert_eq!(live.after("a", 10).map(|m| m.len()), Some(1));

        // A reset that holds it ends the wait as well.
        live.await_echo("c");
        assert!(live.latest(10).is_none());
        live.reset(vec![msg("a"), msg("b"), msg("c")], true);
        assert_eq!(cached_ids(&live, 10), ["a", "b", "c"]);
        live.reset(vec![msg("a")], true);
        live.await_echo("d");
        live.reset(vec![msg("a")], true);
        assert!(
            live.latest(10).is_none(),
            "a reset without it goes on waiting"
        );
    }

    #[test]
    fn publish_ignores_duplicates_and_broadcasts_in_order() {
        let live = Cache::new();
        live.reset(vec![], true);
        let mut rx = live.subscribe();
        live.publish(msg("a"));
        live.publish(msg("a"));
        live.publish(msg("b"));
        assert_eq!(rx.try_recv().unwrap().message.id, "a");
        assert_eq!(rx.try_recv().unwrap().message.id, "b");
        assert!(rx.try_recv().is_err());
        let json: serde_json::Value =
            serde_json::from_slice(&live.latest_json(100).unwrap().json).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 2);
        assert_eq!(json[1]["id"], "b");
    }

    #[test]
    fn serving_the_listing_while_publishing_never_deadlocks() {
        let live = Cache::new();
        live.reset(vec![], true);
        let publisher = {
            let live = live.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    live.publish(msg(&format!("p{i}")));
                }
            })
        };
        let mut served = 0;
        while !publisher.is_finished() {
            served += usize::from(live.latest_json(100).is_some());
        }
        publisher.join().unwrap();
        assert!(served > 0);
        let json: serde_json::Value =
            serde_json::from_slice(&live.latest_json(100).unwrap().json).unwrap();
        assert_eq!(
            json[99]["id"], "p19999",
            "the cached listing follows the last change"
        );
    }

    #[test]
    fn reset_keeps_what_was_published_after_the_snapshot() {
        let live = Cache::new();
        let (a, b, c) = (msg("a"), msg("b"), msg("c"));
        live.publish(c.clone());
        live.reset(vec![a, b], true);
        assert_eq!(cached_ids(&live, 10), ["a", "b", "c"]);
    }

    #[test]
    fn a_reset_from_a_read_that_shares_nothing_keeps_only_what_came_since() {
        let live = Cache::new();
        live.reset(vec![msg("old1"), msg("old2")], true);
        live.publish(msg("old3"));
        // The store lost them all (a dropped collection): the read is empty.
        let mark = live.mark();
        live.publish(msg("new1"));
        assert!(!live.reset_since(vec![], true, mark, &HashSet::new()));
        assert_eq!(cached_ids(&live, 10), ["new1"]);
        assert!(!live.holds("old3"));

        // A read that trails what was published keeps what came after the
        // last message it shares with the cache, even from before the mark.
        live.publish(msg("new2"));
        live.publish(msg("new3"));
        let mark = live.mark();
        assert!(live.reset_since(vec![msg("new1")], true, mark, &HashSet::new()));
        assert_eq!(cached_ids(&live, 10), ["new1", "new2", "new3"]);
    }

    #[test]
    fn a_reset_keeps_no_message_another_client_changed_or_deleted() {
        let live = Cache::new();
        live.reset(vec![msg("a"), msg("b"), msg("spam")], true);
        // Deleted: the read lacks it, and it is no message the read
        // trails, though it comes after the last one they share.
        let mark = live.mark();
        let changed = HashSet::from(["spam".to_owned()]);
        assert!(live.reset_since(vec![msg("a"), msg("b")], true, mark, &changed));
        assert_eq!(cached_ids(&live, 10), ["a", "b"]);
        assert!(!live.holds("spam"));
        // Without the note, such a message stays (the read may trail).
        live.publish(msg("c"));
        let mark = live.mark();
        assert!(live.reset_since(vec![msg("a"), msg("b")], true, mark, &HashSet::new()));
        assert_eq!(cached_ids(&live, 10), ["a", "b", "c"]);
        // Edited: the read's copy stands.
        let mut edited = msg("b");
        edited.text = "edited".to_owned();
        let mark = live.mark();
        let changed = HashSet::from(["b".to_owned()]);
        assert!(live.reset_since(vec![msg("a"), edited, msg("c")], true, mark, &changed));
        let listed = live.latest(10).expect("complete");
        assert_eq!(listed[1].message.text, "edited");
    }

    #[test]
    fn arrivals_number_the_broadcast_and_a_reset_starts_a_new_epoch() {
        let live = Cache::new();
        live.reset(vec![msg("a")], true);
        let (mut rx, next) = live.subscribe_with_next();
        let next = next.expect("complete cache");
        live.publish(msg("b"));
        live.publish(msg("c"));
        let b = rx.try_recv().unwrap();
        assert_eq!(b.arrival.unwrap().is_at_or_after(next), Some(true));
        let since: Vec<_> = live
            .since(next, 10)
            .unwrap()
            .iter()
            .map(|m| m.message.id.clone())
            .collect();
        assert_eq!(since, ["b", "c"]);
        assert_eq!(live.after("b", 10).unwrap()[0].message.id, "c");
        assert_eq!(live.arrival_of("c"), Some(b.arrival.unwrap().next()));
        live.reset(vec![msg("a"), msg("b"), msg("c")], true);
        assert!(live.since(next, 10).is_none(), "an old epoch's arrival");
        assert_eq!(
            b.arrival
                .unwrap()
                .is_at_or_after(live.arrival_of("a").unwrap()),
            None,
            "arrivals of different epochs do not compare"
        );
        live.invalidate();
        assert!(live.arrival_of("a").is_none());
    }

    #[test]
    fn frame_is_one_sse_event() {
        let e = CachedMessage::new(msg("x1"));
        let text = std::str::from_utf8(&e.frame).unwrap();
        assert!(text.starts_with("event: message\nid: x1\ndata: {"));
        assert!(text.ends_with("}\n\n"));
        assert_eq!(text.matches('\n').count(), 4);
    }

    /// A message as a store may hand it, whatever its size.
    fn sized(id: &str, name: &str, text: String) -> Message {
        Message {
            id: id.into(),
            name: name.into(),
            text,
            datetime: now_millis(),
        }
    }

    #[test]
    fn the_largest_message_a_store_shows_fits_its_bound() {
        let id = "i".repeat(crate::message::ID_MAX_CHARS);
        for c in ['\u{1}', '\u{10348}', '"'] {
            let name: String = std::iter::repeat_n(c, crate::message::NAME_MAX_CHARS).collect();
            let text: String = std::iter::repeat_n(c, crate::message::TEXT_MAX_CHARS).collect();
            let cached = CachedMessage::new(sized(&id, &name, text));
            let held = cached.held_bytes();
            assert!(held <= MESSAGE_MAX_BYTES, "{c:?}: {held}");
            // So a listing of 1000 is at most about 13 MB.
            let listing = (cached.json.len() + 1) * CACHE_CAPACITY + 1;
            assert!(listing < 13_000_000, "{c:?}: {listing}");
        }
    }

    #[test]
    fn the_cache_holds_at_most_its_bytes_and_answers_only_for_what_it_holds() {
        let live = Cache::new();
        live.reset(vec![sized("first", "n", "small".into())], true);
        let mut rx = live.subscribe();
        for i in 0..400 {
            live.publish(sized(&format!("m{i}"), "n", "x".repeat(200_000)));
        }
        assert!(
            live.held_bytes() <= CACHE_MAX_BYTES,
            "{}",
            live.held_bytes()
        );
        let held = live.held_messages();
        assert!(held > 0 && held < 400, "{held}");
        // Every message was still sent, in order.
        for i in 0..400 {
            assert_eq!(rx.try_recv().unwrap().message.id, format!("m{i}"));
        }
        // The latest it holds it answers; more it leaves to the store, as
        // what it evicted is no longer the whole history.
        let latest = live.latest(held).expect("what it holds");
        assert_eq!(latest.last().unwrap().message.id, "m399");
        assert!(live.latest(held + 1).is_none());
        assert!(live.after("first", 10).is_none(), "evicted");
        assert!(live.arrival_of("m0").is_none(), "evicted");
        let oldest = latest[0].message.id.clone();
        assert_eq!(live.after(&oldest, 1000).unwrap().len(), held - 1);
        // A reset accounts anew.
        live.reset(vec![sized("a", "n", "x".into())], true);
        assert_eq!(live.held_messages(), 1);
        assert_eq!(live.held_bytes(), live.latest(1).unwrap()[0].held_bytes());
    }

    #[test]
    fn a_reset_that_evicts_is_not_the_whole_history() {
        let live = Cache::new();
        let latest: Vec<Message> = (0..CACHE_CAPACITY).map(|i| msg(&format!("m{i}"))).collect();
        let mut late = msg("late");
        late.datetime += time::Duration::seconds(1);
        live.publish(late);
        // The store held these 1000 only; "late" came after its read.
        live.reset(latest, true);
        assert_eq!(live.held_messages(), CACHE_CAPACITY);
        assert!(
            live.latest(CACHE_CAPACITY + 1).is_none(),
            "m0 was evicted: the store answers for it"
        );
    }

    #[test]
    fn eviction_keeps_capacity_and_drops_whole_history() {
        let live = Cache::new();
        live.reset(vec![], true);
        for i in 0..CACHE_CAPACITY + 5 {
            live.publish(msg(&format!("m{i}")));
        }
        assert_eq!(live.latest(CACHE_CAPACITY).unwrap().len(), CACHE_CAPACITY);
        assert!(live.latest(CACHE_CAPACITY + 1).is_none());
        assert!(live.after("m0", 5).is_none(), "evicted");
        assert_eq!(live.after("m1000", 5).unwrap().len(), 4);
    }
}
