//! The chat service the HTTP layer talks to: a store, the live feed it keeps
//! current, and the time a write may wait for the store.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, StoreConfig};
use crate::live::{Live, LiveEvent, CACHE_CAPACITY};
use crate::message::{Message, NewMessage};
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;
use crate::store::{Inserted, ListQuery, Page, Store, StoreError};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = CACHE_CAPACITY;

pub struct Chat {
    pub store: Arc<dyn Store>,
    pub live: Arc<Live>,
    pub write_timeout: Duration,
}

impl Chat {
    pub async fn open(config: &Config) -> Result<Chat, StoreError> {
        let live = Live::new();
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Embedded { data_dir } => {
                Arc::new(EmbeddedStore::open(data_dir, live.clone()).await?)
            }
            StoreConfig::MongoDb { uri, database } => {
                Arc::new(MongoStore::open(uri, database, config.write_timeout, live.clone()).await?)
            }
        };
        Ok(Chat {
            store,
            live,
            write_timeout: config.write_timeout,
        })
    }

    /// Stores a message, waiting at most `write_timeout` for the store.
    pub async fn post(&self, message: NewMessage) -> Result<Inserted, StoreError> {
        match tokio::time::timeout(self.write_timeout, self.store.insert(message)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::Unavailable {
                reason: format!(
                    "the store did not accept the write within {} s",
                    self.write_timeout.as_secs()
                ),
                retry_after: Duration::from_secs(5),
            }),
        }
    }

    /// A listing as events (serialized messages), from memory when it can be.
    pub async fn list(&self, page: Page, limit: usize) -> Result<Vec<Arc<LiveEvent>>, StoreError> {
        let cached = match &page {
            Page::Latest => self.live.latest(limit),
            Page::After(id) => self.live.after(id, limit),
            Page::Before(_) => None,
        };
        if let Some(events) = cached {
            return Ok(events);
        }
        let messages = self.store.list(ListQuery { page, limit }).await?;
        Ok(messages
            .into_iter()
            .map(|m| Arc::new(LiveEvent::new(m)))
            .collect())
    }

    pub async fn get(&self, id: &str) -> Result<Option<Message>, StoreError> {
        self.store.get(id).await
    }

    /// The id of the newest message, where a live subscriber starts from.
    pub async fn newest_id(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .list(Page::Latest, 1)
            .await?
            .first()
            .map(|e| e.message.id.clone()))
    }
}
