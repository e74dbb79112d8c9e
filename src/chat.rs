//! The chat service the HTTP handlers call: post, list, get, subscribe,
//! status. It owns the store and the cache the store keeps current, and
//! answers from the cache when it can.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::cache::{Arrival, Cache, CachedMessage, Listing, Start, CACHE_CAPACITY};
use crate::config::{Config, StoreConfig};
use crate::message::{Message, NewMessage};
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;
use crate::store::{Cursor, Inserted, Store, StoreError, StoreStatus};

/// How many messages a listing returns when it does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// The most messages one listing returns: what the cache holds.
pub const MAX_LIMIT: usize = CACHE_CAPACITY;

/// The facade; cheap to clone (every clone shares the same store and cache).
#[derive(Clone)]
pub struct Chat {
    store: Arc<dyn Store>,
    cache: Arc<Cache>,
    /// Times an SSE subscriber fell behind the broadcast and caught up from
    /// the store (shown in `/api/status`).
    catch_ups: Arc<AtomicU64>,
}

impl Chat {
    /// Opens the configured store and fills the cache from it.
    ///
    /// Errors: the store cannot be opened (an unusable data directory or
    /// connection string); an unreachable cluster is not an error.
    pub async fn open(config: &Config) -> Result<Chat, StoreError> {
        let cache = Cache::new();
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Embedded {
                data_dir,
                cache_bytes,
            } => Arc::new(
                EmbeddedStore::open_with_cache(
                    data_dir,
                    *cache_bytes,
                    config.write_timeout,
                    cache.clone(),
                )
                .await?,
            ),
            StoreConfig::MongoDb { uri, database } => Arc::new(
                MongoStore::open(uri, database, config.write_timeout, cache.clone()).await?,
            ),
        };
        Ok(Chat {
            store,
            cache,
            catch_ups: Arc::default(),
        })
    }

    /// A chat on `store`, which keeps `cache` current: for unit tests that
    /// need a store whose publishing they control.
    #[cfg(test)]
    pub(crate) fn on(store: Arc<dyn Store>, cache: Arc<Cache>) -> Chat {
        Chat {
            store,
            cache,
            catch_ups: Arc::default(),
        }
    }

    /// Stores a message; the store bounds the wait by its write deadline.
    pub async fn post(&self, message: NewMessage) -> Result<Inserted, StoreError> {
        self.store.insert(message).await
    }

    /// Up to `limit` messages at `cursor`, oldest first, serialized; from
    /// the cache when it can answer.
    ///
    /// Errors: `UnknownId` for a cursor on an id the store does not have.
    pub async fn list(
        &self,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<Arc<CachedMessage>>, StoreError> {
        let cached = match &cursor {
            Cursor::Latest => self.cache.latest(limit),
            Cursor::After(id) => self.cache.after(id, limit),
            Cursor::Before(_) | Cursor::Oldest => None,
        };
        if let Some(messages) = cached {
            return Ok(messages);
        }
        let messages = self.store.list(cursor, limit).await?;
        Ok(messages
            .into_iter()
            .map(|m| Arc::new(CachedMessage::new(m)))
            .collect())
    }

    /// The latest `limit` messages as one JSON array, if the cache can
    /// answer (built once per change of the cache).
    pub fn latest_json(&self, limit: usize) -> Option<Listing> {
        self.cache.latest_json(limit)
    }

    /// The latest `limit` messages with the cache version they belong to,
    /// if the cache can answer.
    pub fn latest_cached(&self, limit: usize) -> Option<(u64, Vec<Arc<CachedMessage>>)> {
        self.cache.latest_versioned(limit)
    }

    /// Changes whenever what the cache answers may change.
    pub fn cache_version(&self) -> u64 {
        self.cache.version()
    }

    /// Whether the cache has been loaded and answers for the store now.
    pub fn cache_complete(&self) -> bool {
        self.cache.is_complete()
    }

    /// Tells when the cache becomes complete, or stops being
    /// ([`Cache::completeness`]).
    pub fn completeness(&self) -> tokio::sync::watch::Receiver<bool> {
        self.cache.completeness()
    }

    /// The message with this id, if stored.
    pub async fn get(&self, id: &str) -> Result<Option<Message>, StoreError> {
        self.store.get(id).await
    }

    /// The id of the newest message, where a new subscriber starts from.
    pub async fn newest_id(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .list(Cursor::Latest, 1)
            .await?
            .first()
            .map(|m| m.message.id.clone()))
    }

    /// Every message published from now on, and where it starts when the
    /// cache can say (see [`Cache::subscribe_at`]).
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<CachedMessage>>, Option<Start>) {
        self.cache.subscribe_at()
    }

    /// Up to `limit` cached messages from arrival `next` on, if the cache
    /// still holds it (see [`Cache::since`]).
    pub fn since(&self, next: Arrival, limit: usize) -> Option<Vec<Arc<CachedMessage>>> {
        self.cache.since(next, limit)
    }

    /// The cache's first arrival, when it holds the whole history (see
    /// [`Cache::oldest_arrival`]).
    pub fn oldest_arrival(&self) -> Option<Arrival> {
        self.cache.oldest_arrival()
    }

    /// Whether the cache holds the message `id` (see [`Cache::holds`]).
    pub fn holds(&self, id: &str) -> bool {
        self.cache.holds(id)
    }

    /// For a message another client deleted, the message just older than
    /// it that is still stored ([`Cache::still_stored_before`]).
    pub fn still_stored_before(&self, id: &str) -> Option<String> {
        self.cache.still_stored_before(id)
    }

    /// Where the message with `id` arrived in the cache, if it holds it.
    pub fn arrival_of(&self, id: &str) -> Option<Arrival> {
        self.cache.arrival_of(id)
    }

    /// Counts a subscriber's catch-up from the store.
    pub fn record_catch_up(&self) {
        self.catch_ups.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times subscribers caught up from the store since start.
    pub fn catch_ups(&self) -> u64 {
        self.catch_ups.load(Ordering::Relaxed)
    }

    /// `Ok` when a write could be accepted now; otherwise why not.
    pub async fn ready(&self) -> Result<(), String> {
        self.store.ready().await
    }

    /// What `/api/status` shows of the store.
    pub async fn status(&self) -> StoreStatus {
        self.store.status().await
    }

    /// Finishes pending writes and closes the store.
    pub async fn close(&self) {
        self.store.close().await
    }
}
