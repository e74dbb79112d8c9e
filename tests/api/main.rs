//! HTTP behaviour through real sockets, one file per behaviour.

#[path = "../support/mod.rs"]
mod support;

mod cli_config;
mod clock;
mod conditional;
mod connections;
mod cross_site;
mod damaged_file;
mod disk_full;
mod dispatch;
mod echoes;
mod encodings;
mod events;
mod expect_continue;
mod first_run;
mod hosts;
mod idempotency;
mod memory;
mod messages;
mod open_files;
mod openapi;
mod options;
mod page;
mod pagination;
mod persistence;
mod security_headers;
mod shutdown;
mod status;
mod strict_input;
mod validation;
