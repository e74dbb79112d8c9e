//! The one interface every message store implements, and what it promises.
//!
//! The promises (checked for every store by `tests/store_contract`):
//! - `insert` stores a message durably before it returns `Created`; the same id
//!   again with the same name and text returns `Existing` and stores nothing;
//!   with other content it fails with `Conflict`.
//! - Messages have one total "store order", oldest first: `list` returns a
//!   window of it, `Before`/`After` page through it from a known id.
//! - The store keeps the [`Live`] feed it was opened with current: every
//!   message stored (by this process or, for a shared store, any other) is
//!   published to it in store order, and the feed's cache is reset whenever the
//!   store cannot vouch for it.

pub mod embedded;
pub mod mongo;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::message::{Message, NewMessage};

/// Which part of the store order a listing wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// The newest messages.
    Latest,
    /// Messages just older than this id.
    Before(String),
    /// Messages just newer than this id.
    After(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub page: Page,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    Created(Message),
    /// The id was already stored with the same content: a retry.
    Existing(Message),
}

impl Inserted {
    pub fn message(&self) -> &Message {
        match self {
            Inserted::Created(m) | Inserted::Existing(m) => m,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("a different message already has id {0}")]
    Conflict(String),
    #[error("no message has id {0}")]
    UnknownId(String),
    /// Nothing is wrong with the request; the store cannot take it now.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    #[error("store error: {0}")]
    Internal(String),
}

/// What `/api/status` and `simplechat replset status` show.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoreStatus {
    pub store: &'static str,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_set: Option<ReplicaSetStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<FeedStatus>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ReplicaSetStatus {
    pub name: String,
    pub primary: Option<String>,
    pub members: Vec<MemberStatus>,
    /// Where the figures came from: `replSetGetStatus`, or the driver's view
    /// of the topology when the user may not run that command.
    pub source: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct MemberStatus {
    pub name: String,
    /// PRIMARY, SECONDARY, (not reachable/healthy), ... as mongod names them.
    pub state: String,
    pub health: f64,
    /// Seconds this member's last applied write trails the primary's.
    pub lag_secs: Option<f64>,
}

/// How the live feed is doing: a change stream can go quiet without failing.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FeedStatus {
    pub running: bool,
    /// RFC 3339 time the feed last delivered a message, if ever.
    pub last_delivered: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn insert(&self, message: NewMessage) -> Result<Inserted, StoreError>;
    async fn get(&self, id: &str) -> Result<Option<Message>, StoreError>;
    async fn list(&self, query: ListQuery) -> Result<Vec<Message>, StoreError>;
    /// `Ok` when a write could be accepted now; otherwise why not.
    async fn ready(&self) -> Result<(), String>;
    async fn status(&self) -> StoreStatus;
    /// Finishes pending writes and releases the store. Later calls fail.
    async fn close(&self);
}
