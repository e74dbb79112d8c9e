//! The MongoDB replica-set store (being written).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Inserted, ListQuery, Store, StoreError, StoreStatus};
use crate::live::Live;
use crate::message::{Message, NewMessage};

/// Placeholder until the MongoDB store lands: opening it fails clearly.
pub struct MongoStore;

impl MongoStore {
    pub async fn open(
        _uri: &str,
        _database: &str,
        _write_timeout: Duration,
        _live: Arc<Live>,
    ) -> Result<Self, StoreError> {
        Err(StoreError::Internal(
            "this build has no MongoDB store yet; unset mongodb_uri to use the embedded store"
                .into(),
        ))
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn insert(&self, _message: NewMessage) -> Result<Inserted, StoreError> {
        Err(StoreError::Internal("no MongoDB store".into()))
    }
    async fn get(&self, _id: &str) -> Result<Option<Message>, StoreError> {
        Err(StoreError::Internal("no MongoDB store".into()))
    }
    async fn list(&self, _query: ListQuery) -> Result<Vec<Message>, StoreError> {
        Err(StoreError::Internal("no MongoDB store".into()))
    }
    async fn ready(&self) -> Result<(), String> {
        Err("no MongoDB store".into())
    }
    async fn status(&self) -> StoreStatus {
        StoreStatus {
            store: "mongodb",
            ready: false,
            reason: Some("no MongoDB store".into()),
            replica_set: None,
            feed: None,
        }
    }
    async fn close(&self) {}
}
