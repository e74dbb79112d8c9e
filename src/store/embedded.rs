//! The embedded store: messages in a redb database under `data_dir`.
//!
//! redb because it is pure Rust (nothing to link, so the static build stays
//! simple), crash-safe with ACID transactions, and fast enough that one writer
//! thread committing batches keeps up with the web server.
//!
//! Writes go through one thread that takes every insert waiting at that
//! moment into a single transaction and commits it durably (fsync) before
//! answering any of them: a burst of posts costs one commit, not one each.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{Cursor, Inserted, Store, StoreError, StoreStatus};
use crate::cache::{Cache, CACHE_CAPACITY};
use crate::message::{now_millis, Message, NewMessage};

/// Store order: a sequence number given at commit.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Message id to sequence number.
const IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");
/// The most inserts one transaction takes.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<Inserted, StoreError>>;

/// The redb store. Its locks are std `Mutex`es held only to clone or take a
/// handle, never across `.await`.
pub struct EmbeddedStore {
    /// How long an insert may wait for its commit.
    write_timeout: Duration,
    /// Taken on close, so the file's lock is released for a reopen.
    db: Mutex<Option<Arc<Database>>>,
    writer: Mutex<Option<mpsc::Sender<(NewMessage, Reply)>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `data_dir` and fills `cache` with
    /// the latest messages. An insert that waits longer than `write_timeout`
    /// for its commit answers `Unavailable`.
    ///
    /// Errors: `Internal` when the directory or the file cannot be created
    /// or opened (for example another process holds it).
    pub async fn open(
        data_dir: &Path,
        write_timeout: Duration,
        cache: Arc<Cache>,
    ) -> Result<Self, StoreError> {
        let data_dir = data_dir.to_path_buf();
        let db = tokio::task::spawn_blocking(move || open_db(&data_dir))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))??;
        let db = Arc::new(db);
        let latest = read_range(&db, &Cursor::Latest, CACHE_CAPACITY + 1)?;
        // Datetimes never go back, even across a restart with an earlier clock.
        let last_datetime = latest
            .last()
            .map_or(OffsetDateTime::UNIX_EPOCH, |m| m.datetime);
        cache.reset_from_latest(latest);

        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("simplechat-writer".into())
            .spawn(move || write_loop(&writer_db, rx, &cache, last_datetime))
            .map_err(|e| StoreError::Internal(format!("cannot start writer thread: {e}")))?;
        Ok(EmbeddedStore {
            write_timeout,
            db: Mutex::new(Some(db)),
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(StoreError::closed)?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

fn open_db(data_dir: &Path) -> Result<Database, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        StoreError::Internal(format!(
            "cannot create data_dir {}: {e}",
            data_dir.display()
        ))
    })?;
    let path = data_dir.join("messages.redb");
    let db = Database::create(&path)
        .map_err(|e| StoreError::Internal(format!("cannot open {}: {e}", path.display())))?;
    // Create the tables up front so readers never meet a missing table.
    let txn = db.begin_write().map_err(internal)?;
    txn.open_table(MESSAGES).map_err(internal)?;
    txn.open_table(IDS).map_err(internal)?;
    txn.commit().map_err(internal)?;
    Ok(db)
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

fn decode(bytes: &[u8]) -> Result<Message, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Internal(format!("corrupt message: {e}")))
}

fn write_loop(
    db: &Database,
    mut rx: mpsc::Receiver<(NewMessage, Reply)>,
    cache: &Cache,
    mut last_datetime: OffsetDateTime,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        match write_batch(db, &batch, &mut last_datetime) {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
                    if let Ok(Inserted::Created(m)) = &outcome {
                        cache.publish(m.clone());
                    }
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One transaction for the whole batch; each insert's own outcome (created,
/// retry of a stored message, conflict) is decided inside it.
fn write_batch(
    db: &Database,
    batch: &[(NewMessage, Reply)],
    last_datetime: &mut OffsetDateTime,
) -> Result<Vec<Result<Inserted, StoreError>>, StoreError> {
    let txn = db.begin_write().map_err(internal)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut messages = txn.open_table(MESSAGES).map_err(internal)?;
        let mut ids = txn.open_table(IDS).map_err(internal)?;
        let mut next_seq = match messages.last().map_err(internal)? {
            Some((k, _)) => k.value() + 1,
            None => 0,
        };
        for (new, _) in batch {
            let existing = ids
                .get(new.id.as_str())
                .map_err(internal)?
                .map(|v| v.value());
            if let Some(seq) = existing {
                let stored = match messages.get(seq).map_err(internal)? {
                    Some(bytes) => decode(bytes.value())?,
                    None => {
                        return Err(StoreError::Internal(format!(
                            "id {} has no message",
                            new.id
                        )))
                    }
                };
                outcomes.push(if new.same_content(&stored) {
                    Ok(Inserted::Existing(stored))
                } else {
                    Err(StoreError::Conflict(new.id.clone()))
                });
                continue;
            }
            // Never earlier than the message before: store order and time agree.
            let datetime = now_millis().max(*last_datetime);
            let message = new.clone().into_message(datetime);
            let bytes = serde_json::to_vec(&message).map_err(internal)?;
            messages
                .insert(next_seq, bytes.as_slice())
                .map_err(internal)?;
            ids.insert(message.id.as_str(), next_seq)
                .map_err(internal)?;
            next_seq += 1;
            *last_datetime = datetime;
            outcomes.push(Ok(Inserted::Created(message)));
        }
    }
    txn.commit().map_err(internal)?;
    Ok(outcomes)
}

/// Up to `limit` messages at `cursor`, oldest first, in one read transaction.
fn read_range(db: &Database, cursor: &Cursor, limit: usize) -> Result<Vec<Message>, StoreError> {
    let txn = db.begin_read().map_err(internal)?;
    let messages = txn.open_table(MESSAGES).map_err(internal)?;
    let ids = txn.open_table(IDS).map_err(internal)?;
    let position = |id: &str| -> Result<u64, StoreError> {
        ids.get(id)
            .map_err(internal)?
            .map(|v| v.value())
            .ok_or_else(|| StoreError::UnknownId(id.to_owned()))
    };
    let mut out = Vec::with_capacity(limit.min(CACHE_CAPACITY + 1));
    match cursor {
        Cursor::Latest | Cursor::Before(_) => {
            let range = match cursor {
                Cursor::Before(id) => messages.range(..position(id)?),
                _ => messages.range::<u64>(..),
            }
            .map_err(internal)?;
            for entry in range.rev().take(limit) {
                let (_, v) = entry.map_err(internal)?;
                out.push(decode(v.value())?);
            }
            out.reverse();
        }
        Cursor::After(id) => {
            for entry in messages
                .range(position(id)? + 1..)
                .map_err(internal)?
                .take(limit)
            {
                let (_, v) = entry.map_err(internal)?;
                out.push(decode(v.value())?);
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn insert(&self, message: NewMessage) -> Result<Inserted, StoreError> {
        let sender = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(StoreError::closed)?;
        let commit = async {
            let (reply, outcome) = oneshot::channel();
            sender
                .send((message, reply))
                .await
                .map_err(|_| StoreError::closed())?;
            outcome.await.map_err(|_| StoreError::closed())?
        };
        // A commit that never comes (a stalled disk) must not hold the
        // request forever; the insert may still commit later, and a retry
        // with the same id is then answered as a replay.
        tokio::time::timeout(self.write_timeout, commit)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable {
                    reason: format!(
                        "the store did not commit the write within {} s",
                        self.write_timeout.as_secs()
                    ),
                    retry_after: Duration::from_secs(5),
                })
            })
    }

    async fn get(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let id = id.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(internal)?;
            let ids = txn.open_table(IDS).map_err(internal)?;
            let Some(seq) = ids.get(id.as_str()).map_err(internal)?.map(|v| v.value()) else {
                return Ok(None);
            };
            let messages = txn.open_table(MESSAGES).map_err(internal)?;
            let found = messages.get(seq).map_err(internal)?;
            found.map(|v| decode(v.value())).transpose()
        })
        .await
    }

    async fn list(&self, cursor: Cursor, limit: usize) -> Result<Vec<Message>, StoreError> {
        self.read(move |db| read_range(db, &cursor, limit)).await
    }

    async fn ready(&self) -> Result<(), String> {
        if self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            Ok(())
        } else {
            Err("the store is closed".into())
        }
    }

    async fn status(&self) -> StoreStatus {
        let ready = self.ready().await;
        StoreStatus {
            store: "embedded",
            ready: ready.is_ok(),
            reason: ready.err(),
            mongodb: None,
        }
    }

    async fn close(&self) {
        // Dropping the sender ends the writer loop once queued inserts are done.
        drop(self.writer.lock().unwrap_or_else(|e| e.into_inner()).take());
        drop(self.db.lock().unwrap_or_else(|e| e.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
