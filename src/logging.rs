//! The process's logger: Rocket's layout (indented `>>` lines, `Warning:`
//! and `Error:` prefixes) at Rocket's `log_level`, for Rocket's records and
//! simplechat's alike, on stderr, with five changes:
//!
//! - control and bidirectional control characters in a record are escaped
//!   ([`escape_in_log`]): Rocket logs a request's target as the client sent
//!   it, and one may hold U+0085 (a line end to some viewers) or U+202E;
//!
//! - a client that leaves while its response is still streaming (a closed
//!   tab's event stream) is logged at debug level, not as a warning on
//!   every tab closed;
//! - a request no route matched, and the catcher that answered it, are
//!   logged at info level: Rocket logs them as an error and a warning,
//!   which at the release builds' level (`critical`) printed a line for
//!   every 404, every `HEAD` (which Rocket first looks up as `HEAD`, then
//!   answers as `GET`) and every request the request checks refused;
//! - a body over its limit (a `413`) is logged at info level: Rocket warns
//!   of it, which printed a line at the release level for every oversized
//!   request any client sends;
//! - Rocket's launch banner (and the templates fairing's part of it) shows
//!   at the debug level only, not at every level: `serve` prints its own
//!   startup line, and the application's Rocket never listens itself (see
//!   `api::dispatch`), so the banner's keep-alive, HTTP/2 and body limits,
//!   which are its listener's, and its "launched locally", would mislead.
//!
//! Written here because Rocket 0.5's own logger cannot be configured per
//! record and is private; installing this one first makes Rocket keep it
//! (Rocket only installs its logger if none is set).
//!
//! Every line goes to stderr (Rocket's own logger writes to stdout): the
//! stream for diagnostics, which a terminal shows and a supervisor can keep
//! apart, while stdout is left to what a command prints as its result
//! (`simplechat config`, the `replset` commands), for a script to read or
//! redirect without log lines mixed in.

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use rocket::config::LogLevel;

use crate::text::escape_in_log;

struct Logger;

/// Whether `record` is Rocket's routing telling of a request no route
/// matched: "No matching routes for …" (`error_!`), then the catcher that
/// answers it (`warn_!`), in `rocket::server` (Rocket 0.5.2,
/// `server.rs`). The client's doing, not a fault of the server.
fn is_unrouted_request(record: &log::Record<'_>) -> bool {
    if record.module_path().is_none_or(|m| m != "rocket::server") {
        return false;
    }
    let text = record.args().to_string();
    text.starts_with("No matching routes for ")
        || text.starts_with("Responding with registered ")
        || (text.starts_with("No ") && text.ends_with(" catcher registered. Using Rocket default."))
}

/// Whether `record` is Rocket saying that the peer hung up on a response:
/// hyper's "connection closed before message completed" (a connection that
/// ends mid-body) and Rocket's "Remote left" (its body channel closed).
/// Rocket 0.5 gives no other signal for these than its own wording, so the
/// wording decides, for these two records of `rocket::server` only.
fn is_peer_hangup(record: &log::Record<'_>) -> bool {
    if record.module_path().is_none_or(|m| m != "rocket::server") {
        return false;
    }
    let text = record.args().to_string();
    text.starts_with("Connection failed: connection closed before message completed")
        || text.starts_with("Remote left:")
}

/// Whether `record` is Rocket's "Data limit reached while reading …"
/// (`warn_!`, Rocket 0.5.2 `data/data_stream.rs`): a body over its limit,
/// which the route answers `413`. The client's doing; Rocket also names
/// the body "an empty stream" there, since the front door hands Rocket
/// each body already read.
fn is_data_limit(record: &log::Record<'_>) -> bool {
    record
        .module_path()
        .is_some_and(|m| m.starts_with("rocket::data"))
        && record
            .args()
            .to_string()
            .starts_with("Data limit reached while reading ")
}

/// Whether `record` is part of Rocket's launch banner (its configuration,
/// routes, catchers, fairings: `launch_info!`/`launch_meta!`, target
/// `rocket::launch`, Rocket 0.5.2 `log.rs`) or the templates fairing's
/// lines of it (`rocket_dyn_templates`' liftoff: its directory and
/// engines).
fn is_launch_banner(record: &log::Record<'_>) -> bool {
    record.target().starts_with("rocket::launch")
        || record
            .module_path()
            .is_some_and(|m| m.starts_with("rocket_dyn_templates"))
            && record.level() >= log::Level::Info
}

/// The level `record` is shown at (see the module docs).
fn shown_level(record: &log::Record<'_>) -> log::Level {
    let level = record.level();
    if is_launch_banner(record) {
        // Rocket logs its banner as warnings so that it shows at every
        // level. It describes Rocket's own listener (its keep-alive, its
        // HTTP/2, its `json` limit), which never runs here: the front door
        // serves every connection with bounds of its own. Shown only when
        // debugging; `serve` prints its own startup line.
        log::Level::Debug
    } else if level == log::Level::Warn && is_peer_hangup(record) {
        log::Level::Debug
    } else if level <= log::Level::Warn && (is_unrouted_request(record) || is_data_limit(record)) {
        log::Level::Info
    } else {
        level
    }
}

/// Set while the application answers a request of its own making (the
/// front door's `HEAD /api/events` at start, [`own_request`]): Rocket's
/// request lines for it would read as a client's request.
static OWN_REQUEST: AtomicBool = AtomicBool::new(false);

/// Runs `request`, a request the server makes of its own application,
/// with Rocket's information lines about requests left out. Only at start,
/// before any client is served, so no client's lines are lost.
pub async fn own_request<T>(request: impl std::future::Future<Output = T>) -> T {
    OWN_REQUEST.store(true, Ordering::Relaxed);
    let answer = request.await;
    OWN_REQUEST.store(false, Ordering::Relaxed);
    answer
}

/// Whether `record`, shown at `level`, is Rocket's information about a
/// request the server made of itself ([`own_request`]).
fn is_own_request_line(record: &log::Record<'_>, level: log::Level) -> bool {
    level >= log::Level::Info
        && OWN_REQUEST.load(Ordering::Relaxed)
        && record
            .module_path()
            .is_some_and(|m| m.starts_with("rocket"))
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = shown_level(record);
        if level > log::max_level() {
            return;
        }
        if is_own_request_line(record, level) {
            return;
        }
        // Rocket shows hyper's and rustls' own records only when debugging.
        let from = |path| record.module_path().is_some_and(|m| m.starts_with(path));
        if (from("hyper") || from("rustls")) && log::max_level() < log::LevelFilter::Debug {
            return;
        }
        // Off before each record is formatted: Rocket paints its records
        // when colours are on, and pear, the parser of Rocket's headers,
        // turns them on for the whole process each time it shows a parse
        // error (`ParseError`'s `Display` ends in `yansi::whenever(
        // Condition::DEFAULT)`, on for any terminal or file: pear 0.2.9,
        // `src/error.rs`), which Rocket does for every `Content-Type` it
        // cannot parse (`MediaType::from_str`). One such request made every
        // later line of the log a run of escaped colour codes.
        yansi::disable();
        // Rocket marks continuation lines with a target ending in `_`.
        let indented = record.target().ends_with('_');
        let prefix = match (level, indented) {
            (_, true) => "   >> ",
            (log::Level::Error, false) => "Error: ",
            (log::Level::Warn, false) => "Warning: ",
            _ => "",
        };
        // Rocket's records print a request's target as sent; whatever
        // client input a record holds must not break or reorder its line.
        let text = match record.args().as_str() {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Owned(record.args().to_string()),
        };
        // A backslash a client typed (`?x=\u{1b}`) would read as an escape
        // the logger wrote: doubled in Rocket's records, as our own records
        // already echo client input (`api::echo`), so every single-backslash
        // escape in the log is the logger's.
        let text = match text {
            text if from("rocket") && text.contains('\\') => Cow::Owned(text.replace('\\', "\\\\")),
            text => text,
        };
        // As Rocket does with its stream: a closed stderr must not panic
        // the server (`eprintln!` would).
        let _ = writeln!(std::io::stderr(), "{prefix}{}", escape_in_log(&text));
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger at `level` (Rocket's `log_level`). Only the first
/// call in a process installs it; later ones change nothing.
pub fn install(level: LogLevel) {
    if log::set_logger(&Logger).is_ok() {
        log::set_max_level(level.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(
        args: std::fmt::Arguments<'a>,
        module: &'a str,
        level: log::Level,
    ) -> log::Record<'a> {
        log::Record::builder()
            .args(args)
            .module_path(Some(module))
            .target(module)
            .level(level)
            .build()
    }

    #[test]
    fn only_rockets_hangup_records_are_demoted() {
        let hangup = format_args!("Connection failed: connection closed before message completed");
        assert!(is_peer_hangup(&record(
            hangup,
            "rocket::server",
            log::Level::Warn
        )));
        let left = format_args!("Remote left: channel closed.");
        assert!(is_peer_hangup(&record(
            left,
            "rocket::server",
            log::Level::Warn
        )));
        let other = format_args!("Connection failed: invalid HTTP method parsed");
        assert!(!is_peer_hangup(&record(
            other,
            "rocket::server",
            log::Level::Warn
        )));
        let ours = format_args!("Remote left: channel closed.");
        assert!(!is_peer_hangup(&record(
            ours,
            "simplechat::store",
            log::Level::Warn
        )));
    }

    /// The banner would show at Rocket's `normal` level (the debug
    /// profile's, so every `cargo run`) with its listener's settings,
    /// which are not the server's.
    #[test]
    fn rockets_launch_banner_shows_only_when_debugging() {
        let configured = format_args!("Configured for debug.");
        let keep_alive = format_args!("keep-alive: 5s");
        let templates = format_args!("directory: ../simplechat-templates");
        for record in [
            record(configured, "rocket::launch", log::Level::Warn),
            record(keep_alive, "rocket::launch_", log::Level::Info),
            record(templates, "rocket_dyn_templates::fairing", log::Level::Info),
        ] {
            assert_eq!(shown_level(&record), log::Level::Debug, "{}", record.args());
        }
        let ours = format_args!("simplechat listening");
        assert_eq!(
            shown_level(&record(ours, "simplechat::app", log::Level::Warn)),
            log::Level::Warn
        );
        let template_error = format_args!("Template 'index' failed to render.");
        assert_eq!(
            shown_level(&record(
                template_error,
                "rocket_dyn_templates::fairing",
                log::Level::Error
            )),
            log::Level::Error
        );
    }

    /// The front door's own `HEAD /api/events` at start is no client's
    /// request; a fault while it runs still shows.
    #[tokio::test]
    async fn rockets_lines_about_the_servers_own_request_are_left_out() {
        let line = format_args!("HEAD /api/events:");
        let request = record(line, "rocket::server", log::Level::Info);
        assert!(!is_own_request_line(&request, log::Level::Info));
        own_request(async {
            assert!(is_own_request_line(&request, log::Level::Info));
            let fault = format_args!("Handler events panicked.");
            let fault = record(fault, "rocket::server", log::Level::Error);
            assert!(!is_own_request_line(&fault, log::Level::Error));
            let ours = format_args!("cannot read");
            let ours = record(ours, "simplechat::store", log::Level::Info);
            assert!(!is_own_request_line(&ours, log::Level::Info));
        })
        .await;
        assert!(!is_own_request_line(&request, log::Level::Info));
    }

    #[test]
    fn only_rockets_unrouted_request_records_are_demoted() {
        let unrouted = [
            format_args!("No matching routes for HEAD /api/events."),
            format_args!("Responding with registered (default_catcher) default catcher."),
            format_args!("No 404 catcher registered. Using Rocket default."),
        ];
        for args in unrouted {
            assert!(is_unrouted_request(&record(
                args,
                "rocket::server",
                log::Level::Error
            )));
        }
        let fault = format_args!("Handler post_message panicked.");
        assert!(!is_unrouted_request(&record(
            fault,
            "rocket::server",
            log::Level::Error
        )));
        let elsewhere = format_args!("No matching routes for GET /.");
        assert!(!is_unrouted_request(&record(
            elsewhere,
            "simplechat::api",
            log::Level::Error
        )));
    }
}
