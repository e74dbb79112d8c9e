//! The MongoDB replica-set store.
//!
//! - Writes: the message id is `_id`, write concern `majority` with
//!   journaling, retryable writes. The driver retries a write once; an
//!   election takes longer, so `insert` keeps retrying the same document
//!   until `write_timeout` (see `errors` for what is retried). A duplicate key
//!   whose stored document has the same content is the earlier attempt (or
//!   the client's earlier post with the same idempotency key): success.
//! - Reads: `primaryPreferred` with read concern `majority`, so history
//!   stays readable during an election and nothing shown can be rolled back.
//! - Live updates: one change stream per store (`feed`).
//! - Opening never waits for the cluster: the driver connects in the
//!   background, `ready` says why writes cannot be taken yet, and the index
//!   and the feed start as soon as the cluster answers.

mod connect;
mod errors;
mod feed;
mod model;

pub use connect::{
    address_string, connect, options, tune, Connection, Purpose, ServerSnapshot, TopologySnapshot,
    TopologyView,
};
pub use errors::{classify, describe, one_line, scrub, Class, Signals};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::options::{
    Acknowledgment, CollectionOptions, IndexOptions, ReadConcern, ReadPreference,
    SelectionCriteria, WriteConcern,
};
use mongodb::{Collection, IndexModel};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{FeedStatus, Inserted, ListQuery, Page, Store, StoreError, StoreStatus};
use crate::live::{Live, LiveEvent};
use crate::message::{format_datetime, now_millis, Message, NewMessage};
use model::{Direction, Key, MessageDoc};
/// How long a successful insert waits for its own message to come back
/// through the change stream before publishing it itself.
const FEED_ECHO_WAIT: Duration = Duration::from_secs(2);
/// The store gives up this much before `write_timeout`, so its own, more
/// precise reason reaches the client rather than the caller's timeout.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);
const WRITE_RETRY_AFTER: Duration = Duration::from_secs(5);
const READ_RETRY_AFTER: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// `/api/status` must answer even when no member does.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

pub struct MongoStore {
    inner: Arc<Inner>,
}

/// What the store, its feed and its background tasks share.
pub(crate) struct Inner {
    live: Arc<Live>,
    database: String,
    write_timeout: Duration,
    /// Set once the client exists; only a `mongodb+srv` string whose DNS
    /// lookup failed leaves it empty for a while.
    handles: OnceLock<Arc<Handles>>,
    /// Why `handles` is still empty.
    connect_error: Mutex<Option<String>>,
    /// The datetime of the last insert attempt, in ms. Held across one
    /// attempt so this instance's messages commit in datetime order and the
    /// change stream (commit order) agrees with the store order.
    order: tokio::sync::Mutex<i64>,
    feed: Mutex<FeedState>,
    /// Whether the feed has finished its first catch-up since startup (a
    /// later start is a resumption, worth a log line).
    feed_started: AtomicBool,
    index_error: Mutex<Option<String>>,
    closed: AtomicBool,
    /// Background tasks, aborted when the store closes or is dropped.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Default)]
struct FeedState {
    running: bool,
    last_error: Option<String>,
}

pub(crate) struct Handles {
    conn: Connection,
    /// Reads (`primaryPreferred`, majority) and writes (majority, journal).
    coll: Collection<MessageDoc>,
    /// The check after a duplicate key must see what a majority has, from
    /// the primary: a document still waiting for its majority must not be
    /// reported as stored.
    coll_primary: Collection<MessageDoc>,
}

/// Which part of the store order a read wants.
#[derive(Debug, Clone)]
pub(crate) enum Window {
    Latest,
    First,
    Beyond(Key, Direction),
}

impl MongoStore {
    /// Returns at once: the driver connects in the background.
    pub async fn open(
        uri: &str,
        database: &str,
        write_timeout: Duration,
        live: Arc<Live>,
    ) -> Result<Self, StoreError> {
        let inner = Arc::new(Inner {
            live,
            database: database.to_owned(),
            write_timeout,
            handles: OnceLock::new(),
            connect_error: Mutex::new(None),
            order: tokio::sync::Mutex::new(0),
            feed: Mutex::new(FeedState::default()),
            feed_started: AtomicBool::new(false),
            index_error: Mutex::new(None),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        let store = MongoStore {
            inner: inner.clone(),
        };
        // A plain connection string is parsed without I/O; a `mongodb+srv`
        // one needs DNS, which may be down at boot like everything else.
        let parsed = tokio::time::timeout(Duration::from_secs(5), connect::options(uri)).await;
        match parsed {
            Ok(Ok((options, secret))) => {
                let conn = connect::connect(options, secret, Purpose::Store)
                    .map_err(StoreError::Internal)?;
                store.start(Handles::new(conn, database, write_timeout));
            }
            Ok(Err(e)) if !uri.trim_start().starts_with("mongodb+srv://") => {
                return Err(StoreError::Internal(e));
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => "DNS lookup of the mongodb+srv name timed out".to_owned(),
                };
                *inner
                    .connect_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(why);
                let uri = uri.to_owned();
                let resolver = inner.clone();
                let task = tokio::spawn(async move {
                    if let Some(handles) = resolve_until_done(&resolver, &uri).await {
                        for task in spawn_background(&resolver, handles) {
                            resolver.push_task(task);
                        }
                    }
                });
                inner.push_task(task);
            }
        }
        Ok(store)
    }

    fn start(&self, handles: Handles) {
        let handles = Arc::new(handles);
        if self.inner.handles.set(handles.clone()).is_ok() {
            for task in spawn_background(&self.inner, handles) {
                self.inner.push_task(task);
            }
        }
    }

    fn handles(&self) -> Result<Arc<Handles>, StoreError> {
        self.inner.handles()
    }
}

async fn resolve_until_done(inner: &Arc<Inner>, uri: &str) -> Option<Arc<Handles>> {
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::time::sleep(backoff).await;
        if inner.is_closed() {
            return None;
        }
        match connect::options(uri).await {
            Ok((options, secret)) => match connect::connect(options, secret, Purpose::Store) {
                Ok(conn) => {
                    let handles =
                        Arc::new(Handles::new(conn, &inner.database, inner.write_timeout));
                    if inner.handles.set(handles.clone()).is_err() {
                        return None;
                    }
                    *inner
                        .connect_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = None;
                    return Some(handles);
                }
                Err(e) => inner.set_connect_error(e),
            },
            Err(e) => inner.set_connect_error(e),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Starts the index creation and the feed.
fn spawn_background(inner: &Arc<Inner>, handles: Arc<Handles>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(ensure_index(inner.clone(), handles.clone())),
        tokio::spawn(feed::run(inner.clone(), handles)),
    ]
}

/// Creates the order index, waiting for a primary as long as it takes.
/// Creating an index that exists with the same keys and name is a no-op, so
/// every instance does it at every start.
async fn ensure_index(inner: Arc<Inner>, handles: Arc<Handles>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if inner.is_closed() {
            return;
        }
        let index = IndexModel::builder()
            .keys(model::order_index_keys())
            .options(
                IndexOptions::builder()
                    .name(model::ORDER_INDEX.to_owned())
                    .build(),
            )
            .build();
        match handles.coll.create_index(index).await {
            Ok(_) => {
                *inner.index_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return;
            }
            Err(e) => match classify(&e, handles.conn.secret.as_deref()) {
                Class::Retry(_) => {}
                other => {
                    let why = format!(
                        "cannot create the {} index: {}",
                        model::ORDER_INDEX,
                        other.reason()
                    );
                    eprintln!("simplechat: mongodb: {why}");
                    *inner.index_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    return;
                }
            },
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl Handles {
    fn new(conn: Connection, database: &str, write_timeout: Duration) -> Handles {
        let db = conn.client.database(database);
        let write_concern = WriteConcern::builder()
            .w(Acknowledgment::Majority)
            .journal(true)
            .w_timeout(write_timeout)
            .build();
        let coll = db.collection_with_options(
            model::COLLECTION,
            CollectionOptions::builder()
                .write_concern(write_concern.clone())
                .read_concern(ReadConcern::majority())
                .selection_criteria(SelectionCriteria::ReadPreference(
                    ReadPreference::PrimaryPreferred { options: None },
                ))
                .build(),
        );
        let coll_primary = db.collection_with_options(
            model::COLLECTION,
            CollectionOptions::builder()
                .write_concern(write_concern)
                .read_concern(ReadConcern::majority())
                .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                .build(),
        );
        Handles {
            conn,
            coll,
            coll_primary,
        }
    }

    fn class(&self, e: &mongodb::error::Error) -> Class {
        classify(e, self.conn.secret.as_deref())
    }

    /// Up to `limit` messages of a window, in store order.
    pub(crate) async fn read(
        &self,
        window: Window,
        limit: usize,
    ) -> Result<Vec<MessageDoc>, Class> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (filter, direction) = match &window {
            Window::Latest => (doc! {}, Direction::Older),
            Window::First => (doc! {}, Direction::Newer),
            Window::Beyond(key, direction) => (model::beyond(key, *direction), *direction),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let cursor = self
            .coll
            .find(filter)
            .sort(model::sort(direction))
            .limit(limit)
            .await
            .map_err(|e| self.class(&e))?;
        let mut docs: Vec<MessageDoc> = cursor.try_collect().await.map_err(|e| self.class(&e))?;
        if direction == Direction::Older {
            docs.reverse();
        }
        Ok(docs)
    }

    async fn find(&self, id: &str, primary: bool) -> Result<Option<MessageDoc>, Class> {
        let coll = if primary {
            &self.coll_primary
        } else {
            &self.coll
        };
        coll.find_one(doc! { "_id": id })
            .await
            .map_err(|e| self.class(&e))
    }
}

impl Inner {
    fn handles(&self) -> Result<Arc<Handles>, StoreError> {
        if self.is_closed() {
            return Err(closed());
        }
        self.handles
            .get()
            .cloned()
            .ok_or_else(|| StoreError::Unavailable {
                reason: self
                    .connect_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_else(|| "not connected to MongoDB yet".to_owned()),
                retry_after: READ_RETRY_AFTER,
            })
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn push_task(&self, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            task.abort();
        } else {
            tasks.push(task);
        }
    }

    /// Stops the background tasks; they hold the only other references.
    fn stop_tasks(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
    }

    fn set_connect_error(&self, why: String) {
        *self.connect_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    fn describe(&self, e: &mongodb::error::Error) -> String {
        let secret = self.handles.get().and_then(|h| h.conn.secret.clone());
        describe(e, secret.as_deref())
    }

    fn feed_state(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.feed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn feed_running(&self) {
        let was = {
            let mut state = self.feed_state();
            let was = state.running;
            state.running = true;
            state.last_error = None;
            was
        };
        if !was && self.feed_started.swap(true, Ordering::SeqCst) {
            eprintln!("simplechat: mongodb: live feed resumed");
        }
    }

    fn feed_stopped(&self) {
        self.feed_state().running = false;
    }

    fn feed_failed(&self, why: String) {
        let mut state = self.feed_state();
        if state.running || state.last_error.as_deref() != Some(why.as_str()) {
            eprintln!("simplechat: mongodb: live feed interrupted: {why}");
        }
        state.last_error = Some(why);
    }

    fn feed_note(&self, note: String) {
        eprintln!("simplechat: mongodb: {note}");
        self.feed_state().last_error = Some(note);
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable {
        reason: "the store is shutting down".into(),
        retry_after: Duration::from_secs(1),
    }
}

fn read_error(class: Class) -> StoreError {
    match class {
        Class::Retry(reason) | Class::Unavailable(reason) => StoreError::Unavailable {
            reason,
            retry_after: READ_RETRY_AFTER,
        },
        Class::Fatal(reason) => StoreError::Internal(reason),
        Class::Duplicate => StoreError::Internal("unexpected duplicate key on a read".into()),
    }
}

fn to_message(doc: MessageDoc) -> Result<Message, StoreError> {
    doc.into_message().map_err(StoreError::Internal)
}

impl MongoStore {
    /// One insert attempt under the order lock: the datetime is taken and
    /// the document committed before the next attempt of this instance
    /// takes its datetime.
    async fn attempt(
        &self,
        handles: &Handles,
        new: &NewMessage,
        deadline: Instant,
        tried: &mut Vec<i64>,
    ) -> Result<Message, Class> {
        let mut last = self.inner.order.lock().await;
        // Measured after the wait for the lock, so a queued write still ends
        // by its deadline.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let datetime = now_millis();
        let ms = model::millis(datetime).max(*last);
        *last = ms;
        let datetime = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(datetime);
        let message = new.clone().into_message(datetime);
        tried.push(ms);
        let insert = handles.coll.insert_one(MessageDoc::from_message(&message));
        match tokio::time::timeout(remaining, insert).await {
            Ok(Ok(_)) => Ok(message),
            Ok(Err(e)) => Err(handles.class(&e)),
            Err(_) => Err(Class::Retry("the write did not finish in time".into())),
        }
    }

    /// The id is taken: the stored message decides between a retry of this
    /// post, a repeat of an earlier post, and a conflict. `None` while the
    /// other write has not reached a majority yet.
    async fn resolve_duplicate(
        &self,
        handles: &Handles,
        new: &NewMessage,
        tried: &[i64],
    ) -> Result<Option<Inserted>, Class> {
        let Some(stored) = handles.find(&new.id, true).await? else {
            return Ok(None);
        };
        let ours = tried.contains(&stored.datetime.timestamp_millis());
        let stored = stored.into_message().map_err(Class::Fatal)?;
        if !new.same_content(&stored) {
            return Err(Class::Fatal(format!("conflict:{}", new.id)));
        }
        Ok(Some(if ours {
            Inserted::Created(stored)
        } else {
            Inserted::Existing(stored)
        }))
    }

    /// Makes sure subscribers of this instance get a message this instance
    /// stored: normally the change stream brings it back within
    /// milliseconds; if it does not, publishing it here keeps read-your-own
    /// writes (`publish` ignores the stream's copy when it comes).
    async fn deliver(
        &self,
        message: &Message,
        echo: &mut broadcast::Receiver<Arc<LiveEvent>>,
        deadline: Instant,
    ) {
        let running = self.inner.feed_state().running;
        // Never past the write's deadline: the write is done, the answer
        // must not turn into a timeout.
        let wait = FEED_ECHO_WAIT.min(deadline.saturating_duration_since(Instant::now()));
        if running && wait_for_echo(echo, &message.id, wait).await {
            return;
        }
        self.inner.live.publish(message.clone());
    }
}

async fn wait_for_echo(
    echo: &mut broadcast::Receiver<Arc<LiveEvent>>,
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

#[async_trait]
impl Store for MongoStore {
    async fn insert(&self, new: NewMessage) -> Result<Inserted, StoreError> {
        let started = Instant::now();
        let deadline = started + self.inner.write_timeout.saturating_sub(DEADLINE_MARGIN);
        let handles = self.handles()?;
        // Subscribed before the write, so the stream's copy cannot slip by.
        let mut echo = self.inner.live.subscribe();
        let mut tried = Vec::new();
        let mut backoff = FIRST_BACKOFF;
        let mut reason;
        loop {
            if self.inner.is_closed() {
                return Err(closed());
            }
            let outcome = match self.attempt(&handles, &new, deadline, &mut tried).await {
                Ok(message) => {
                    self.deliver(&message, &mut echo, deadline).await;
                    return Ok(Inserted::Created(message));
                }
                Err(Class::Duplicate) => self.resolve_duplicate(&handles, &new, &tried).await,
                Err(other) => Err(other),
            };
            match outcome {
                Ok(Some(inserted)) => {
                    if let Inserted::Created(message) = &inserted {
                        self.deliver(message, &mut echo, deadline).await;
                    }
                    return Ok(inserted);
                }
                Ok(None) => reason = "another write of this id is not on a majority yet".to_owned(),
                Err(Class::Fatal(r)) if r.starts_with("conflict:") => {
                    return Err(StoreError::Conflict(new.id))
                }
                Err(Class::Retry(r)) => reason = r,
                Err(Class::Unavailable(r)) => {
                    return Err(StoreError::Unavailable {
                        reason: r,
                        retry_after: WRITE_RETRY_AFTER,
                    })
                }
                Err(Class::Fatal(r)) => return Err(StoreError::Internal(r)),
                Err(Class::Duplicate) => reason = "duplicate key".to_owned(),
            }
            if Instant::now() + backoff >= deadline {
                return Err(StoreError::Unavailable {
                    reason: format!(
                        "no MongoDB primary accepted the write within {} s: {reason}",
                        self.inner.write_timeout.as_secs()
                    ),
                    retry_after: WRITE_RETRY_AFTER,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let handles = self.handles()?;
        handles
            .find(id, false)
            .await
            .map_err(read_error)?
            .map(to_message)
            .transpose()
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Message>, StoreError> {
        let handles = self.handles()?;
        let window = match &query.page {
            Page::Latest => Window::Latest,
            Page::Before(id) | Page::After(id) => {
                let anchor = handles
                    .find(id, false)
                    .await
                    .map_err(read_error)?
                    .ok_or_else(|| StoreError::UnknownId(id.clone()))?;
                let direction = match query.page {
                    Page::Before(_) => Direction::Older,
                    _ => Direction::Newer,
                };
                Window::Beyond(anchor.key(), direction)
            }
        };
        handles
            .read(window, query.limit)
            .await
            .map_err(read_error)?
            .into_iter()
            .map(to_message)
            .collect()
    }

    async fn ready(&self) -> Result<(), String> {
        let handles = self.handles().map_err(|e| e.to_string())?;
        match handles.conn.topology.get() {
            Some(t) if t.writable => Ok(()),
            Some(t) => Err(t.not_writable_reason()),
            None => Err(format!(
                "no MongoDB server has answered yet (seeds: {})",
                handles.conn.seeds.join(", ")
            )),
        }
    }

    async fn status(&self) -> StoreStatus {
        let ready = self.ready().await;
        let replica_set = match self.inner.handles.get() {
            Some(handles) => crate::replset::status_of(&handles.conn, STATUS_TIMEOUT)
                .await
                .ok(),
            None => None,
        };
        let (running, mut last_error) = {
            let state = self.inner.feed_state();
            (state.running, state.last_error.clone())
        };
        if let Some(index) = self
            .inner
            .index_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            last_error = Some(match last_error {
                Some(e) => format!("{e}; {index}"),
                None => index,
            });
        }
        StoreStatus {
            store: "mongodb",
            ready: ready.is_ok(),
            reason: ready.err(),
            replica_set,
            feed: Some(FeedStatus {
                running,
                last_delivered: self
                    .inner
                    .live
                    .last_delivered()
                    .map(|t| format_datetime(&t)),
                last_error,
            }),
        }
    }

    async fn close(&self) {
        // The feed and the index task hold nothing that needs finishing.
        self.inner.stop_tasks();
        if let Some(handles) = self.inner.handles.get() {
            // Waits for operations still running (a write in its retry
            // loop gives up at its next step, as the store is closed).
            let shutdown = handles.conn.client.clone().shutdown();
            let _ = tokio::time::timeout(self.inner.write_timeout, shutdown).await;
        }
    }
}

impl Drop for MongoStore {
    fn drop(&mut self) {
        self.inner.stop_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::NewMessage;

    fn msg(id: &str) -> NewMessage {
        NewMessage::validate("ann", "hello", Some(id)).unwrap()
    }

    /// Nothing listens on port 1 of loopback: the cluster is "unreachable".
    const NOWHERE: &str =
        "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300&connectTimeoutMS=300";

    #[tokio::test]
    async fn opens_without_a_cluster_and_explains_why_not_ready() {
        let started = Instant::now();
        let store = MongoStore::open(NOWHERE, "chat", Duration::from_secs(2), Live::new())
            .await
            .expect("open must not fail without a cluster");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "open must not block"
        );
        let why = store.ready().await.unwrap_err();
        assert!(
            why.contains("127.0.0.1:1"),
            "the reason names the unreachable member: {why}"
        );
        let status = store.status().await;
        assert_eq!(status.store, "mongodb");
        assert!(!status.ready);
        assert!(status.feed.is_some());
        store.close().await;
    }

    #[tokio::test]
    async fn writes_give_up_with_503_after_the_write_timeout() {
        let store = MongoStore::open(NOWHERE, "chat", Duration::from_secs(2), Live::new())
            .await
            .unwrap();
        let started = Instant::now();
        let err = store.insert(msg("k1")).await.unwrap_err();
        let waited = started.elapsed();
        match err {
            StoreError::Unavailable {
                reason,
                retry_after,
            } => {
                assert!(reason.contains("within 2 s"), "{reason}");
                assert!(retry_after >= Duration::from_secs(1));
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(
            waited >= Duration::from_millis(1200),
            "it retried: {waited:?}"
        );
        assert!(waited < Duration::from_secs(4), "bounded: {waited:?}");
        let read = store
            .list(ListQuery {
                page: Page::Latest,
                limit: 10,
            })
            .await;
        assert!(
            matches!(read, Err(StoreError::Unavailable { .. })),
            "{read:?}"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn password_never_reaches_a_reason() {
        let uri = "mongodb://app:Sup3rSecret@127.0.0.1:1/chat?serverSelectionTimeoutMS=300&connectTimeoutMS=300";
        let store = MongoStore::open(uri, "chat", Duration::from_secs(1), Live::new())
            .await
            .unwrap();
        let err = store.insert(msg("k2")).await.unwrap_err().to_string();
        let why = store.ready().await.unwrap_err();
        let status = serde_json::to_string(&store.status().await).unwrap();
        for text in [&err, &why, &status] {
            assert!(!text.contains("Sup3rSecret"), "{text}");
        }
        store.close().await;
    }
}
