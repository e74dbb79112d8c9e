//! simplechat: a chat service whose messages live in a MongoDB replica set,
//! or in an embedded store when no MongoDB URI is configured.
//!
//! # Layout
//!
//! Dependencies point one way: `api → chat → {cache, store} → mongo`, and
//! `replset → mongo`. Nothing below `api` knows Rocket's request types;
//! nothing outside `store::mongo` and `mongo` knows the driver's.
//!
//! - [`cli`] parses the command line and runs a subcommand; [`app`] builds
//!   the Rocket application (state, routes, fairings, catchers), so tests
//!   run the same code as the server.
//! - [`api`]: one module per HTTP surface (page, messages, events, status,
//!   assets, OpenAPI), with the request guards and the JSON error shape.
//! - [`chat`]: the facade the handlers call.
//! - [`cache`]: the latest messages in memory and the broadcast to
//!   subscribers.
//! - [`store`]: the [`store::Store`] trait and its two implementations,
//!   `store::embedded` (redb) and `store::mongo`.
//! - [`mongo`]: connection strings, clients, error classification and
//!   replica-set status, used by `store::mongo` and [`replset`].
//! - [`replset`]: `simplechat replset init`, `status`, `plan` and `apply`.
//! - Leaves: [`config`] (every setting; it uses `mongo::uri` to check a
//!   connection string), [`hosts`] (which `Host` values are answered),
//!   [`message`] (the message and its rules), [`open_files`] (the open
//!   files limit and the connections it fits),
//!   [`retry`] (backoff and polling), [`text`] (one-line messages).
//!
//! # Glossary
//!
//! | term | means |
//! | --- | --- |
//! | store order | the one total order of messages, oldest first |
//! | position | a message's place in the store order |
//! | cursor | which part of the order a listing wants: latest, before or after a message |
//! | cache | the latest messages kept in memory ([`cache::Cache`]) |
//! | broadcast | the channel that sends each new message to every subscriber |
//! | subscriber | an open `/api/events` stream |
//! | change stream | MongoDB's stream of inserts that keeps each instance's cache current |
//! | write deadline | how long an insert may wait for the store (`write_timeout_secs`); the store enforces it |
//! | member | a mongod of the replica set; the primary takes writes |
#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod cache;
pub mod chat;
pub mod cli;
pub mod config;
pub mod hosts;
pub mod logging;
pub mod message;
pub mod mongo;
pub mod open_files;
pub mod replset;
pub mod retry;
pub mod store;
pub mod text;
