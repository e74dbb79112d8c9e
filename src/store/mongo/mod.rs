//! The MongoDB replica-set store.
//!
//! - Writes (`insert.rs`): the message id is `_id`, write concern
//!   `majority` with journaling, retryable writes. The driver retries a
//!   write once; an election takes longer, so the store keeps retrying the
//!   same document until its write deadline. A duplicate key whose stored
//!   document has the same content is the earlier attempt (or the client's
//!   earlier post with the same idempotency key): success.
//! - Reads (`collections.rs`): `primaryPreferred` with read concern
//!   `majority`, so history stays readable during an election and nothing
//!   shown can be rolled back.
//! - Live updates (`change_stream.rs`): one change stream per store keeps
//!   the cache current with what any instance stores.
//! - Lifecycle (this file, `tasks.rs`, `index.rs`): opening never waits for
//!   the cluster: the driver connects in the background, `ready` says why
//!   writes cannot be taken yet, and the index and the change stream start
//!   as soon as the cluster answers.

mod change_stream;
mod client_renewal;
mod collections;
mod document;
mod index;
mod insert;
mod skipped;
mod tasks;

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::{Cursor, Inserted, Refusal, Store, StoreError, StoreStatus};
use crate::cache::Cache;
use crate::message::{format_datetime, Message, NewMessage};
use crate::mongo::{self, Purpose, ReplicaSetStatus};
use crate::retry::Backoff;
use change_stream::ChangeStreamHealth;
use collections::Collections;
use document::{Direction, MessageDoc, Position, Range};
use skipped::SkippedDocuments;
use tasks::Tasks;

const READ_RETRY_AFTER: Duration = Duration::from_secs(2);
/// `/api/status` must answer even when no member does.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// A store on a MongoDB replica set (or any deployment the URI names).
pub struct MongoStore {
    shared: Arc<Shared>,
}

/// What `/api/status` shows of a MongoDB store, beside readiness.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MongoStatus {
    /// The members, from `replSetGetStatus` or the driver; `None` when no
    /// member answered in time.
    pub replica_set: Option<ReplicaSetStatus>,
    /// How this instance's change stream is doing.
    pub change_stream: ChangeStreamStatus,
    /// Documents in the collection that are not messages (another app's,
    /// or damaged), skipped wherever they are read: distinct documents per
    /// reason (`id_type`, `id_text`, `name`, `text`, `datetime`, `position`).
    pub skipped_documents: std::collections::BTreeMap<&'static str, u64>,
}

/// How the change stream is doing: a change stream can go quiet without
/// failing, so the last delivery is shown too.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChangeStreamStatus {
    /// Open and caught up.
    pub running: bool,
    /// RFC 3339 time a message was last published to the cache, if ever.
    pub last_delivered: Option<String>,
    /// The last failure or notice, until the stream runs again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What the store, its change stream and its background tasks share.
pub(crate) struct Shared {
    cache: Arc<Cache>,
    database: String,
    write_timeout: Duration,
    /// The connection string, to start a client afresh
    /// ([`client_renewal`]).
    uri: String,
    /// Set once the client exists (only a `mongodb+srv` string whose DNS
    /// lookup failed leaves it empty for a while); replaced only when the
    /// client's view of the set can no longer mend ([`client_renewal`]).
    /// A std lock, never held across `.await`: read with [`Shared::current`].
    collections: RwLock<Option<Arc<Collections>>>,
    /// Why `collections` is still empty.
    connect_error: Mutex<Option<String>>,
    /// The latest datetime this instance gave a message, in ms, so that
    /// datetimes do not go back by a small step of the clock within an
    /// instance ([`crate::message::stamp_millis`]).
    last_datetime: AtomicI64,
    /// Whether the clock was said to be behind the newest message lately.
    clock_behind: crate::message::ClockBehind,
    change_stream: ChangeStreamHealth,
    skipped: Arc<SkippedDocuments>,
    index_error: Mutex<Option<String>>,
    tasks: Tasks,
}

impl MongoStore {
    /// Returns at once: the driver connects in the background.
    ///
    /// Errors: `Refused` (a [`Refusal::Configuration`]) for a connection
    /// string or options the driver cannot use (a `mongodb+srv` string
    /// whose DNS lookup fails is retried instead, as is a deployment that
    /// does not answer: neither is an error).
    pub async fn open(
        uri: &str,
        database: &str,
        write_timeout: Duration,
        cache: Arc<Cache>,
    ) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared {
            cache,
            database: database.to_owned(),
            write_timeout,
            uri: uri.to_owned(),
            collections: RwLock::new(None),
            connect_error: Mutex::new(None),
            last_datetime: AtomicI64::new(0),
            clock_behind: crate::message::ClockBehind::default(),
            change_stream: ChangeStreamHealth::default(),
            skipped: Arc::default(),
            index_error: Mutex::new(None),
            tasks: Tasks::default(),
        });
        // A plain connection string is parsed without I/O; a `mongodb+srv`
        // one needs DNS, which may be down at boot like everything else.
        let parsed = tokio::time::timeout(Duration::from_secs(5), mongo::options(uri)).await;
        match parsed {
            Ok(Ok((options, login))) => {
                let conn = mongo::connect(options, login, Purpose::Store).map_err(misconfigured)?;
                shared.start(Collections::new(
                    conn,
                    database,
                    write_timeout,
                    shared.skipped.clone(),
                ));
            }
            Ok(Err(e)) if !uri.trim_start().starts_with("mongodb+srv://") => {
                return Err(misconfigured(e));
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => "DNS lookup of the mongodb+srv name timed out".to_owned(),
                };
                shared.set_connect_error(Some(why));
                let uri = uri.to_owned();
                let resolver = shared.clone();
                shared
                    .tasks
                    .push(tokio::spawn(async move { resolver.resolve(&uri).await }));
            }
        }
        Ok(MongoStore { shared })
    }
}

/// A connection string or options the driver refuses: no retry mends it.
fn misconfigured(reason: String) -> StoreError {
    StoreError::Refused {
        reason,
        fault: Refusal::Configuration,
    }
}

impl Shared {
    /// Keeps the collections and starts what needs them: the index (and
    /// the look for it gone), the change stream, and the watch on the
    /// client's view ([`client_renewal`]). Only the first call does
    /// anything.
    fn start(self: &Arc<Self>, collections: Collections) {
        let collections = Arc::new(collections);
        {
            let mut current = self.collections.write().unwrap_or_else(|e| e.into_inner());
            if current.is_some() {
                return;
            }
            *current = Some(collections.clone());
        }
        self.start_client_tasks(collections);
        self.tasks
            .push(tokio::spawn(client_renewal::watch(self.clone())));
        self.set_connect_error(None);
    }

    /// Puts `collections`, on a new client, in the place of the current
    /// ones: the old client's tasks are aborted, and the change stream
    /// starts again on the new one, as after a failure (the cache
    /// invalidated; how far it delivered is kept, so subscribers get what
    /// the set now holds past that, or a `reset` if it lost what they
    /// have). Operations already running finish on the old client, which
    /// closes once the last of them lets go of it.
    fn replace(self: &Arc<Self>, collections: Collections) {
        let collections = Arc::new(collections);
        *self.collections.write().unwrap_or_else(|e| e.into_inner()) = Some(collections.clone());
        self.tasks.abort_client_tasks();
        self.change_stream
            .failed("the MongoDB client was started afresh; opening the stream again".to_owned());
        self.change_stream.stopped();
        self.cache.invalidate();
        self.start_client_tasks(collections);
    }

    /// The index, the count of documents that are not messages, and the
    /// change stream, on `collections`' client.
    fn start_client_tasks(self: &Arc<Self>, collections: Arc<Collections>) {
        self.tasks
            .push_for_client(tokio::spawn(index::keep(self.clone(), collections.clone())));
        self.tasks
            .push_for_client(tokio::spawn(skipped::count_ill_typed(
                self.clone(),
                collections.clone(),
            )));
        self.tasks
            .push_for_client(tokio::spawn(change_stream::run(self.clone(), collections)));
    }

    /// The current collections, once the client exists.
    fn current(&self) -> Option<Arc<Collections>> {
        self.collections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Retries a `mongodb+srv` lookup until it succeeds or the store closes.
    async fn resolve(self: Arc<Self>, uri: &str) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            backoff.wait().await;
            if self.tasks.is_closed() {
                return;
            }
            let made = match mongo::options(uri).await {
                Ok((options, login)) => mongo::connect(options, login, Purpose::Store),
                Err(e) => Err(e),
            };
            match made {
                Ok(conn) => {
                    self.start(Collections::new(
                        conn,
                        &self.database,
                        self.write_timeout,
                        self.skipped.clone(),
                    ));
                    return;
                }
                Err(e) => self.set_connect_error(Some(e)),
            }
        }
    }

    fn collections(&self) -> Result<Arc<Collections>, StoreError> {
        if self.tasks.is_closed() {
            return Err(StoreError::closed());
        }
        self.current().ok_or_else(|| StoreError::Unavailable {
            reason: self
                .connect_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| "not connected to MongoDB yet".to_owned()),
            retry_after: READ_RETRY_AFTER,
        })
    }

    /// Keeps why the client cannot be made yet, and logs it when it is new:
    /// readiness alone would say it.
    fn set_connect_error(&self, why: Option<String>) {
        let mut error = self.connect_error.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(new) = why.as_deref().filter(|new| error.as_deref() != Some(new)) {
            log::warn!("cannot connect to MongoDB yet: {new}");
        }
        *error = why;
    }
}

/// A failed read as the API answers it: when the driver now sees no
/// member to read from (all down, say), every member and why, as
/// readiness says them, rather than the driver's "Server selection
/// timeout: No available servers".
fn read_error(collections: &Collections) -> impl Fn(mongo::Class) -> StoreError + '_ {
    move |class| match class {
        mongo::Class::Retry(reason) | mongo::Class::Unavailable(reason) => {
            StoreError::Unavailable {
                reason: collections.unreadable_or(reason),
                retry_after: READ_RETRY_AFTER,
            }
        }
        mongo::Class::Fatal(reason) => StoreError::Internal(reason),
        mongo::Class::Duplicate => {
            StoreError::Internal("unexpected duplicate key on a read".into())
        }
    }
}

/// The position of the message with this id. Errors: `UnknownId` (also
/// for a document that is no message, and for a stray until it has its
/// position: [`Collections::find_in_order`]).
async fn position_of(
    shared: &Shared,
    collections: &Collections,
    id: &str,
) -> Result<Position, StoreError> {
    collections
        .find_in_order(id)
        .await
        .map_err(read_error(collections))?
        .and_then(|doc| shared.skipped.keep(&doc))
        .map(|doc| doc.position())
        .ok_or_else(|| StoreError::UnknownId(id.to_owned()))
}

fn to_message(doc: MessageDoc) -> Result<Message, StoreError> {
    doc.into_message().map_err(StoreError::Internal)
}

#[async_trait]
impl Store for MongoStore {
    async fn insert(&self, new: NewMessage) -> Result<Inserted, StoreError> {
        insert::insert(&self.shared, new).await
    }

    async fn get(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let collections = self.shared.collections()?;
        let found = collections
            .find_in_order(id)
            .await
            .map_err(read_error(&collections))?;
        found
            .and_then(|doc| self.shared.skipped.keep(&doc))
            .map(to_message)
            .transpose()
    }

    async fn list(&self, cursor: Cursor, limit: usize) -> Result<Vec<Message>, StoreError> {
        let collections = self.shared.collections()?;
        let range = match cursor {
            Cursor::Latest => Range::Latest,
            Cursor::Oldest => Range::Oldest,
            Cursor::Before(id) => Range::Beyond(
                position_of(&self.shared, &collections, &id).await?,
                Direction::Older,
            ),
            Cursor::After(id) => Range::Beyond(
                position_of(&self.shared, &collections, &id).await?,
                Direction::Newer,
            ),
        };
        collections
            .read(range, limit, &self.shared.skipped)
            .await
            .map_err(read_error(&collections))?
            .into_iter()
            .map(to_message)
            .collect()
    }

    async fn ready(&self) -> Result<(), String> {
        let collections = self.shared.collections().map_err(|e| e.to_string())?;
        match collections.conn.topology.get() {
            Some(t) if t.writable => Ok(()),
            Some(t) => Err(t.not_writable_reason()),
            None => Err(format!(
                "no MongoDB server has answered yet (seeds: {})",
                collections.conn.seeds.join(", ")
            )),
        }
    }

    async fn status(&self) -> StoreStatus {
        let ready = self.ready().await;
        let replica_set = match self.shared.current() {
            Some(collections) => mongo::status_while_serving(&collections.conn, STATUS_TIMEOUT)
                .await
                .ok(),
            None => None,
        };
        let (running, mut last_error) = self.shared.change_stream.get();
        let index_error = self
            .shared
            .index_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(index) = index_error {
            last_error = Some(match last_error {
                Some(e) => format!("{e}; {index}"),
                None => index,
            });
        }
        StoreStatus {
            store: "mongodb",
            ready: ready.is_ok(),
            reason: ready.err(),
            mongodb: Some(MongoStatus {
                replica_set,
                change_stream: ChangeStreamStatus {
                    running,
                    last_delivered: self
                        .shared
                        .cache
                        .last_delivered()
                        .map(|t| format_datetime(&t)),
                    last_error,
                },
                skipped_documents: self.shared.skipped.counts(),
            }),
        }
    }

    async fn close(&self) {
        self.shared.tasks.stop();
        if let Some(collections) = self.shared.current() {
            // Waits for operations still running (a write in its retry
            // loop gives up at its next step, as the store is closed).
            // The change streams' client, beside it, holds only the stream
            // the store has stopped: both within one bound, not one each.
            let shutdown = async {
                tokio::join!(
                    collections.conn.client.clone().shutdown(),
                    collections.conn.change_streams.clone().shutdown()
                )
            };
            let _ = tokio::time::timeout(self.shared.write_timeout, shutdown).await;
        }
    }
}

impl Drop for MongoStore {
    fn drop(&mut self) {
        self.shared.tasks.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn msg(id: &str) -> NewMessage {
        NewMessage::validate("ann", "hello", Some(id)).unwrap()
    }

    /// Nothing listens on port 1 of loopback: the cluster is "unreachable".
    const NOWHERE: &str =
        "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300&connectTimeoutMS=300";

    #[tokio::test]
    async fn opens_without_a_cluster_and_explains_why_not_ready() {
        let started = Instant::now();
        let store = MongoStore::open(NOWHERE, "chat", Duration::from_secs(2), Cache::new())
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
        assert!(status.mongodb.is_some());
        store.close().await;
    }

    #[tokio::test]
    async fn writes_give_up_with_503_after_the_write_timeout() {
        let store = MongoStore::open(NOWHERE, "chat", Duration::from_secs(2), Cache::new())
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
                // Every attempt failed server selection: nothing was sent.
                assert!(
                    reason.starts_with("the message was not stored: no MongoDB primary"),
                    "{reason}"
                );
                assert!(!reason.contains("may still be stored"), "{reason}");
                assert!(retry_after >= Duration::from_secs(1));
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(
            waited >= Duration::from_millis(1200),
            "it retried: {waited:?}"
        );
        assert!(waited < Duration::from_secs(4), "bounded: {waited:?}");
        let read = store.list(Cursor::Latest, 10).await;
        assert!(
            matches!(read, Err(StoreError::Unavailable { .. })),
            "{read:?}"
        );
        store.close().await;
    }

    /// An attempt still in server selection when the write deadline comes
    /// has sent nothing either.
    #[tokio::test]
    async fn a_write_cut_off_in_server_selection_was_not_stored() {
        let uri = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=10000&connectTimeoutMS=300";
        let store = MongoStore::open(uri, "chat", Duration::from_secs(1), Cache::new())
            .await
            .unwrap();
        match store.insert(msg("k3")).await.unwrap_err() {
            StoreError::Unavailable { reason, .. } => {
                assert!(
                    reason.starts_with("the message was not stored: no MongoDB primary"),
                    "{reason}"
                );
                // Why, as the driver sees it at the deadline.
                assert!(reason.contains("127.0.0.1:1 unreachable"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        store.close().await;
    }

    /// Credentials make readiness wait for a signed-in connection, but
    /// with nothing to sign in to, unreachability is the reason.
    #[tokio::test]
    async fn with_credentials_and_no_member_answering_readiness_says_unreachable() {
        let uri = "mongodb://chat:secret@127.0.0.1:1/messages?replicaSet=rs&serverSelectionTimeoutMS=300&connectTimeoutMS=300";
        let store = MongoStore::open(uri, "chat", Duration::from_secs(1), Cache::new())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let why = loop {
            let why = store.ready().await.unwrap_err();
            if why.contains("unreachable") || Instant::now() > deadline {
                break why;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            why.starts_with("no writable primary in replica set rs: 127.0.0.1:1 unreachable ("),
            "{why}"
        );
        let status = store.status().await.reason.unwrap_or_default();
        assert!(status.contains("127.0.0.1:1 unreachable ("), "{status}");
        store.close().await;
    }

    #[tokio::test]
    async fn password_never_reaches_a_reason() {
        let uri = "mongodb://app:Sup3rSecret@127.0.0.1:1/chat?serverSelectionTimeoutMS=300&connectTimeoutMS=300";
        let store = MongoStore::open(uri, "chat", Duration::from_secs(1), Cache::new())
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
