//! The one interface every message store implements, and what it promises.
//!
//! The promises (checked for every store by the contract suite in
//! `tests/contract/`):
//! - `insert` stores a message durably before it returns `Created`; the same
//!   id again with the same name and text returns `Existing` and stores
//!   nothing; with other content it fails with `Conflict`.
//! - Messages have one total store order, oldest first: `list` returns part
//!   of it, chosen by a [`Cursor`].
//! - The store keeps the [`Cache`] it was opened with current: every message
//!   stored (by this process or, for a shared store, any other) is published
//!   to it in store order, and the cache is reset whenever the store cannot
//!   vouch for it.
//!
//! [`Cache`]: crate::cache::Cache

pub mod embedded;
pub mod mongo;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::message::{Message, NewMessage};

/// Which part of the store order a listing wants. Positions are named by
/// message id, as the API names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// The newest messages.
    Latest,
    /// The oldest messages: where a walk through the whole history
    /// forward begins.
    Oldest,
    /// Messages just older than the message with this id.
    Before(String),
    /// Messages just newer than the message with this id.
    After(String),
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored now.
    Created(Message),
    /// The id was already stored with the same content: a retry.
    Existing(Message),
}

impl Inserted {
    /// The stored message, whichever way it got there.
    pub fn message(&self) -> &Message {
        match self {
            Inserted::Created(m) | Inserted::Existing(m) => m,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The id is taken by a message with other content (409).
    #[error("a different message already has id {0}")]
    Conflict(String),
    /// A cursor named an id the store does not have (404).
    #[error("no message has id {0}")]
    UnknownId(String),
    /// Nothing is wrong with the request; the store cannot take it now (503
    /// with `Retry-After`).
    #[error("{reason}")]
    Unavailable {
        /// Why, for a person, without secrets.
        reason: String,
        /// When a retry may succeed (`Retry-After`).
        retry_after: Duration,
    },
    /// The disk holding the store is full (507 with `Retry-After`); the
    /// store takes writes again by itself once space is freed.
    #[error("{reason}")]
    Full {
        /// Why, for a person: the disk is full.
        reason: String,
        /// When to try again (`Retry-After`).
        retry_after: Duration,
    },
    /// A bug or a misconfiguration (500; the reason is logged, not shown).
    #[error("store error: {0}")]
    Internal(String),
    /// The store cannot be opened, and opening it again will not help
    /// until an operator acts: met only at start, never by a request.
    #[error("store error: {reason}")]
    Refused {
        /// Why, for an operator: what is wrong and what to do.
        reason: String,
        /// Which kind of fault, for the process's exit status.
        fault: Refusal,
    },
}

/// Why a store refused to open ([`StoreError::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its settings cannot be used (a connection string the driver refuses).
    Configuration,
    /// Its data is damaged: a data file that fails its check, or an empty
    /// one.
    Damaged,
    /// Its data directory or file cannot be created or opened for writing:
    /// permission denied, a read-only file system, a file where the
    /// directory should be, or another process holding the file.
    Unwritable,
}

impl StoreError {
    /// The store is closing or closed.
    pub fn closed() -> StoreError {
        StoreError::Unavailable {
            reason: "the store is shutting down".into(),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// What `/api/status` shows of the store.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoreStatus {
    /// `embedded` or `mongodb`.
    pub store: &'static str,
    /// Whether a write could be accepted now.
    pub ready: bool,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The MongoDB store's replica set and change stream, at the top level
    /// of the JSON.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<mongo::MongoStatus>,
}

/// A message store. Every method may be called concurrently.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a message, waiting at most the store's write deadline.
    ///
    /// Errors: `Conflict`, `Unavailable` (deadline passed, no primary,
    /// closing), `Internal`.
    async fn insert(&self, message: NewMessage) -> Result<Inserted, StoreError>;
    /// The message with this id, if stored.
    async fn get(&self, id: &str) -> Result<Option<Message>, StoreError>;
    /// Up to `limit` messages at `cursor`, oldest first.
    ///
    /// Errors: `UnknownId` when the cursor's id is not stored.
    async fn list(&self, cursor: Cursor, limit: usize) -> Result<Vec<Message>, StoreError>;
    /// `Ok` when a write could be accepted now; otherwise why not.
    async fn ready(&self) -> Result<(), String>;
    /// What `/api/status` shows.
    async fn status(&self) -> StoreStatus;
    /// Finishes pending writes and releases the store. Later calls fail with
    /// [`StoreError::closed`].
    async fn close(&self);
}
