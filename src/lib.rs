//! simplechat: a chat service whose messages live in a MongoDB replica set,
//! or in an embedded store when no MongoDB URI is configured.

pub mod api;
pub mod app;
pub mod chat;
pub mod cli;
pub mod config;
pub mod live;
pub mod message;
pub mod replset;
pub mod store;
