//! Shared by the integration tests: spawning the real app on a real socket.
#![allow(dead_code)]

pub mod app;
