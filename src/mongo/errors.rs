//! Which driver errors a write may wait out, and how they read to a person.
//!
//! The driver retries a retryable write exactly once. An election takes
//! longer than that, so the store keeps retrying (same `_id`) on anything that
//! means "no primary right now" or "the outcome is unknown", and gives up on
//! everything else at once.

use std::collections::HashSet;
use std::error::Error as _;

use mongodb::error::{Error, ErrorKind, WriteFailure, RETRYABLE_WRITE_ERROR};

use crate::text::one_line;

/// Server error codes this crate decides on, by mongod's names
/// (<https://www.mongodb.com/docs/manual/reference/error-codes/>).
pub mod codes {
    /// `Unauthorized`: the user lacks a privilege the command needs.
    pub const UNAUTHORIZED: i32 = 13;
    /// `AlreadyInitialized`: `replSetInitiate` on an initiated member.
    pub const ALREADY_INITIALIZED: i32 = 23;
    /// `NodeNotFound`: a member in a configuration could not be reached.
    pub const NODE_NOT_FOUND: i32 = 74;
    /// `InvalidReplicaSetConfig`.
    pub const INVALID_REPLICA_SET_CONFIG: i32 = 93;
    /// `ConfigurationInProgress`: another initiation or reconfiguration runs.
    pub const CONFIGURATION_IN_PROGRESS: i32 = 109;
    /// `DuplicateKey` (`E11000`): the `_id` is already stored.
    pub const DUPLICATE_KEY: i32 = 11000;
}

use codes::{DUPLICATE_KEY, UNAUTHORIZED};

/// NotWritablePrimary, NotPrimaryNoSecondaryOk, LegacyNotPrimary.
const NOT_PRIMARY: [i32; 3] = [10107, 13435, 10058];
/// ShutdownInProgress, InterruptedDueToReplStateChange,
/// NotPrimaryOrSecondary, PrimarySteppedDown, InterruptedAtShutdown.
const RECOVERING: [i32; 5] = [11600, 11602, 13436, 189, 91];
/// HostNotFound, HostUnreachable, NetworkTimeout, SocketException,
/// ExceededTimeLimit, MaxTimeMSExpired, WriteConcernFailed (wtimeout: the
/// write may or may not have reached a majority), and
/// ReadConcernMajorityNotAvailableYet (a member just after an election).
const TRANSIENT: [i32; 8] = [7, 6, 89, 9001, 262, 50, 64, 134];

/// What the store does about a failed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// The id is taken: compare with the stored message.
    Duplicate,
    /// No primary now, or the outcome is unknown: try again (same `_id`).
    Retry(String),
    /// Retrying cannot help, but the request was fine: 503.
    Unavailable(String),
    /// A bug or a misconfiguration: 500.
    Fatal(String),
}

impl Class {
    /// The one-line reason, password already scrubbed.
    pub fn reason(&self) -> &str {
        match self {
            Class::Retry(r) | Class::Unavailable(r) | Class::Fatal(r) => r,
            Class::Duplicate => "the id is already stored",
        }
    }
}

/// The facts about an error that the decision depends on, gathered from the
/// error and every error it wraps (the driver wraps a cause under, for
/// example, an authentication error that a stepping-down member provoked).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Signals {
    /// An I/O error or a cleared connection pool: the outcome is unknown.
    pub network: bool,
    /// No member fit the read or write (no primary) within
    /// `serverSelectionTimeoutMS`.
    pub server_selection: bool,
    /// A DNS lookup of the driver's own failed (the SRV and TXT records of a
    /// `mongodb+srv` URI).
    pub dns: bool,
    /// The login was refused (wrong credentials, or a member stepping down
    /// mid-handshake).
    pub authentication: bool,
    /// The client itself is shutting down.
    pub shutdown: bool,
    /// Command and write-concern error codes.
    pub codes: Vec<i32>,
    /// Per-document write error codes.
    pub write_codes: Vec<i32>,
    /// Error labels, e.g. `RetryableWriteError`
    /// (<https://www.mongodb.com/docs/manual/core/retryable-writes/>).
    pub labels: HashSet<String>,
}

impl Signals {
    /// Gathers the signals of `error` and of every cause it wraps.
    pub fn of(error: &Error) -> Signals {
        let mut s = Signals::default();
        let mut current: Option<&Error> = Some(error);
        while let Some(e) = current {
            s.add(e);
            // The driver keeps its cause as `Option<Box<Error>>`, which
            // `source()` hands out as the box itself.
            current = e.source().and_then(|src| {
                src.downcast_ref::<Box<Error>>()
                    .map(|boxed| &**boxed)
                    .or_else(|| src.downcast_ref::<Error>())
            });
        }
        s
    }

    fn add(&mut self, e: &Error) {
        self.labels.extend(e.labels().iter().cloned());
        match e.kind.as_ref() {
            ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => self.network = true,
            ErrorKind::ServerSelection { .. } => self.server_selection = true,
            ErrorKind::DnsResolve { .. } => self.dns = true,
            ErrorKind::Authentication { .. } => self.authentication = true,
            ErrorKind::Shutdown => self.shutdown = true,
            ErrorKind::Command(c) => self.codes.push(c.code),
            ErrorKind::Write(WriteFailure::WriteConcernError(wc)) => self.codes.push(wc.code),
            ErrorKind::Write(WriteFailure::WriteError(we)) => self.write_codes.push(we.code),
            ErrorKind::InsertMany(many) => {
                if let Some(wc) = &many.write_concern_error {
                    self.codes.push(wc.code);
                }
                for we in many.write_errors.iter().flatten() {
                    self.write_codes.push(we.code);
                }
            }
            _ => {}
        }
    }

    /// The decision, separate from the driver's types so it can be tested
    /// for every case without a server.
    pub fn class(&self, reason: String) -> Class {
        if self.write_codes.contains(&DUPLICATE_KEY) || self.codes.contains(&DUPLICATE_KEY) {
            return Class::Duplicate;
        }
        if self.shutdown {
            return Class::Unavailable("the store is shutting down".into());
        }
        let transient_code = self
            .codes
            .iter()
            .any(|c| NOT_PRIMARY.contains(c) || RECOVERING.contains(c) || TRANSIENT.contains(c));
        if self.network
            || self.server_selection
            || self.dns
            || transient_code
            || self.labels.contains(RETRYABLE_WRITE_ERROR)
        {
            return Class::Retry(reason);
        }
        if self.authentication || self.codes.contains(&UNAUTHORIZED) {
            return Class::Unavailable(reason);
        }
        Class::Fatal(reason)
    }
}

/// What kind of failure kept the driver from a server, when it is one an
/// operator acts on differently from the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The connection was refused: nothing listens on that port (or a
    /// firewall rejects it).
    Refused,
    /// No answer within the connect timeout: the driver's own timeout is
    /// an I/O error of kind `TimedOut` (`Error::network_timeout`, mongodb
    /// 3.9 `error.rs`), as is the operating system's.
    TimedOut,
    /// Something answered, but not in MongoDB's wire protocol (another
    /// program on that port: an HTTP server, sshd): the driver's words.
    /// The driver reads every reply's 16-byte header first and refuses an
    /// op code that is none of MongoDB's ("Invalid wire protocol opcode",
    /// `OpCode::from_i32`) or a length over the maximum ("Message length
    /// ... over maximum", `Message::read_from`), as `ErrorKind::InvalidResponse`
    /// (mongo-rust-driver 3.9, `src/cmap/conn/wire/header.rs` and
    /// `message.rs`: <https://github.com/mongodb/mongo-rust-driver/blob/v3.9.1/src/cmap/conn/wire/header.rs>);
    /// its monitor puts that handshake error in the server's description
    /// and marks it Unknown, to be checked again at the next heartbeat
    /// (Server Monitoring specification, "Network or command error during
    /// server check": <https://github.com/mongodb/specifications/blob/master/source/server-discovery-and-monitoring/server-monitoring.md>),
    /// so that a command waits out its server selection. mongod always
    /// answers `hello` in its protocol, whatever state it is in, so no
    /// wait cures this.
    NotMongoDb(String),
    /// The connection was accepted and then closed without a reply: the
    /// driver's read of the reply found the end of the stream
    /// (`UnexpectedEof`), or the peer reset or aborted the connection
    /// (`ConnectionReset`, `ConnectionAborted`, or `BrokenPipe` on the
    /// write). A mongod that requires TLS does that to a client without it:
    /// it reads the first message, finds no TLS handshake and ends the
    /// session ("The server is configured to only allow SSL connections",
    /// `maybeHandshakeSSLForIngress` in mongod's
    /// `src/mongo/transport/session_asio.h`:
    /// <https://github.com/mongodb/mongo/blob/r4.4.0/src/mongo/transport/session_asio.h>),
    /// as does one at its connection limit ("connection refused because
    /// too many open connections", `ServiceEntryPointImpl::startSession`);
    /// a mongod stopping closes the connections it has once, after it has
    /// stopped listening. How many in a row mean the first two is
    /// [`super::topology::Closes::settled`]'s to say.
    Closed,
    /// The member says it is primary, but the driver took it for a stale
    /// one: its replica set config version (or, at the same version, its
    /// election id) is older than the newest this client has seen, which
    /// the Server Discovery and Monitoring specification has a driver
    /// ignore ("updateRSFromPrimary":
    /// <https://github.com/mongodb/specifications/blob/master/source/server-discovery-and-monitoring/server-discovery-and-monitoring.md>).
    /// After an election that passes in seconds, as the old primary steps
    /// down; a set rebuilt from scratch on the same addresses starts again
    /// at version 1, and this client never takes its primary. The driver
    /// says so only in words, as an invalid response ("primary marked
    /// stale due to electionId/setVersion mismatch", mongodb 3.9's
    /// `sdam/description/topology.rs`).
    StalePrimary,
    /// Anything else; the error's text says what.
    Other,
}

impl Failure {
    /// The kind of `error`, or of the first error it wraps that has one.
    pub fn of(error: &Error) -> Failure {
        let mut current: Option<&Error> = Some(error);
        while let Some(e) = current {
            match e.kind.as_ref() {
                ErrorKind::Io(io) => match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return Failure::Refused,
                    std::io::ErrorKind::TimedOut => return Failure::TimedOut,
                    std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe => return Failure::Closed,
                    _ => {}
                },
                ErrorKind::InvalidResponse { message, .. }
                    if message.contains("electionId/setVersion mismatch") =>
                {
                    return Failure::StalePrimary
                }
                ErrorKind::InvalidResponse { message, .. } => {
                    return Failure::NotMongoDb(one_line(message))
                }
                _ => {}
            }
            current = e.source().and_then(|src| {
                src.downcast_ref::<Box<Error>>()
                    .map(|boxed| &**boxed)
                    .or_else(|| src.downcast_ref::<Error>())
            });
        }
        Failure::Other
    }
}

/// Classifies a driver error, its message already cleaned for people.
pub fn classify(error: &Error, secret: Option<&str>) -> Class {
    Signals::of(error).class(reason(error, secret))
}

/// The operation failed in server selection, so it was never sent: the
/// driver returns `ErrorKind::ServerSelection` when "the Client was not able
/// to select a server for the operation"
/// (<https://docs.rs/mongodb/3/mongodb/error/enum.ErrorKind.html#variant.ServerSelection>),
/// and when the selection for its own retry fails it returns the first
/// attempt's error instead ("If the driver cannot select a server for the
/// retry attempt ... drivers MUST raise the original retryable error",
/// <https://github.com/mongodb/specifications/blob/master/source/retryable-writes/retryable-writes.md>;
/// `return_last_error` in the driver's executor). Only the outermost error
/// counts: one that merely wraps a selection error was raised later.
pub fn nothing_sent(error: &Error) -> bool {
    matches!(error.kind.as_ref(), ErrorKind::ServerSelection { .. })
}

/// The name of the index a duplicate key error (`E11000`) was raised on,
/// when it was another index than `_id`'s (always named `_id_`: an index
/// another client created, such as `createIndex({name: 1}, {unique: true})`).
/// mongod's write error names the index in its message ("E11000 duplicate
/// key error collection: db.messages index: name_1 dup key: { name: \"bob\" }")
/// and adds `keyPattern` and `keyValue` beside it
/// (<https://www.mongodb.com/docs/manual/core/index-unique/>), but the
/// driver keeps only `code`, `codeName`, `errmsg` and `errInfo` of a write
/// error (`mongodb::error::WriteError`), so the message is what is left to
/// read. `None` for a clash on `_id`, for another error, and for a message
/// that names no index (then the clash is taken to be on `_id`, as before).
pub fn duplicate_on_other_index(error: &Error) -> Option<String> {
    let message = match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(we)) if we.code == DUPLICATE_KEY => &we.message,
        ErrorKind::Command(c) if c.code == DUPLICATE_KEY => &c.message,
        _ => return None,
    };
    duplicate_index_named(message).filter(|index| index != "_id_")
}

/// The index an `E11000` message names: what follows " index: ", up to
/// " dup key" (an index name may hold spaces).
fn duplicate_index_named(message: &str) -> Option<String> {
    let (_, after) = message.split_once(" index: ")?;
    let name = match after.split_once(" dup key") {
        Some((name, _)) => name,
        None => after.split_whitespace().next()?,
    };
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The server's error code of a failed command, if it was one.
pub fn command_code(error: &Error) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// One line saying what went wrong, without the password even if a server
/// or a resolver echoed it.
pub fn reason(error: &Error, secret: Option<&str>) -> String {
    let text = match error.kind.as_ref() {
        ErrorKind::Command(c) => format!("{} ({}): {}", c.code_name, c.code, c.message),
        ErrorKind::Write(WriteFailure::WriteConcernError(wc)) => {
            format!(
                "write concern not satisfied: {} ({}): {}",
                wc.code_name, wc.code, wc.message
            )
        }
        ErrorKind::Write(WriteFailure::WriteError(we)) => format!(
            "write refused: {} ({}): {}",
            we.code_name.as_deref().unwrap_or("error"),
            we.code,
            we.message
        ),
        // "SCRAM failure: Authentication failed." says what failed but not
        // that it was the login.
        ErrorKind::Authentication { message, .. } => format!("authentication failed: {message}"),
        ErrorKind::ServerSelection { message, .. } => {
            // The driver appends its whole topology; callers that need it
            // show the topology themselves, member by member.
            let short = message.split(" Topology:").next().unwrap_or(message);
            format!(
                "no suitable MongoDB server: {}",
                short.trim_end_matches('.')
            )
        }
        other => other.to_string(),
    };
    scrub(&one_line(&text), secret)
}

/// What to check when MongoDB refuses the credentials, as one clause; with
/// [`user_database_hint`] when the connection string left the database the
/// user is looked up in to its path (`user_database`). The app's readiness,
/// a refused post, `/api/status` and `replset status` all say it so.
pub fn check_credentials(user_database: Option<&str>) -> String {
    let advice = "check the user and password in the connection string or password file, \
                  and that the user exists";
    match user_database {
        Some(db) => format!("{advice} {}", user_database_hint(db)),
        None => advice.to_owned(),
    }
}

/// Where the user is looked up when the connection string names no
/// `authSource` and a database other than `admin` in its path
/// ([`super::uri::implied_user_database`]), and what to add when the user
/// lives in `admin`.
pub fn user_database_hint(db: &str) -> String {
    format!(
        "(the user is looked up in database `{db}`; if it was created in admin, add \
         authSource=admin)"
    )
}

/// `text` with the password, when there is one, hidden
/// ([`super::uri::hide_secret`]).
pub fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(secret) => super::uri::hide_secret(text, secret),
        None => text.to_owned(),
    }
}

/// What a server that answered, but not as MongoDB ([`Failure::NotMongoDb`]),
/// is: `what` is the driver's words for its answer.
pub fn not_mongodb(what: &str) -> String {
    format!(
        "answered, but not as MongoDB ({what}): another program listens on that port (an \
         HTTP server, sshd?)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use mongodb::bson::doc;
    use mongodb::error::{CommandError, WriteError};
    use std::sync::Arc;

    #[test]
    fn the_index_of_a_duplicate_key_is_read_from_mongods_message() {
        let on = |m: &str| duplicate_index_named(m);
        assert_eq!(
            on("E11000 duplicate key error collection: chat.messages index: name_1 dup key: { name: \"bob\" }").as_deref(),
            Some("name_1")
        );
        assert_eq!(
            on("E11000 duplicate key error collection: chat.messages index: _id_ dup key: { _id: \"x\" }").as_deref(),
            Some("_id_")
        );
        assert_eq!(
            on("E11000 duplicate key error collection: c.m index: by name dup key: { name: 1 }")
                .as_deref(),
            Some("by name")
        );
        assert_eq!(on("E11000 duplicate key"), None);
    }

    fn command_error(code: i32, name: &str) -> Error {
        let c: CommandError = mongodb::bson::from_document(
            doc! { "code": code, "codeName": name, "errmsg": format!("{name} happened") },
        )
        .unwrap();
        Error::from(ErrorKind::Command(c))
    }

    fn write_error(code: i32) -> Error {
        let w: WriteError =
            mongodb::bson::from_document(doc! { "code": code, "errmsg": "E11000 duplicate key" })
                .unwrap();
        Error::from(ErrorKind::Write(WriteFailure::WriteError(w)))
    }

    fn signals(codes: &[i32]) -> Signals {
        Signals {
            codes: codes.to_vec(),
            ..Signals::default()
        }
    }

    fn retried(s: &Signals) -> bool {
        matches!(s.class("x".into()), Class::Retry(_))
    }

    #[test]
    fn no_primary_and_recovering_codes_are_retried() {
        for code in [10107, 13435, 10058, 11600, 11602, 13436, 189, 91] {
            assert!(retried(&signals(&[code])), "code {code}");
        }
    }

    #[test]
    fn network_selection_and_unknown_outcome_are_retried() {
        for code in [7, 6, 89, 9001, 262, 50, 64] {
            assert!(retried(&signals(&[code])), "code {code}");
        }
        let mut s = Signals {
            network: true,
            ..Signals::default()
        };
        assert!(retried(&s));
        s = Signals {
            server_selection: true,
            ..Signals::default()
        };
        assert!(retried(&s));
        s = Signals::default();
        s.labels.insert(RETRYABLE_WRITE_ERROR.into());
        assert!(retried(&s));
    }

    #[test]
    fn other_errors_are_not_retried() {
        assert!(matches!(
            signals(&[2]).class("bad value".into()),
            Class::Fatal(_)
        ));
        assert!(matches!(
            signals(&[121]).class("validation".into()),
            Class::Fatal(_)
        ));
        assert!(matches!(
            signals(&[13]).class("unauthorized".into()),
            Class::Unavailable(_)
        ));
        let auth = Signals {
            authentication: true,
            ..Signals::default()
        };
        assert!(matches!(auth.class("auth".into()), Class::Unavailable(_)));
        let shut = Signals {
            shutdown: true,
            ..Signals::default()
        };
        assert!(matches!(shut.class("x".into()), Class::Unavailable(_)));
    }

    #[test]
    fn duplicate_key_wins_over_everything() {
        let s = Signals {
            write_codes: vec![11000],
            network: true,
            ..Signals::default()
        };
        assert_eq!(s.class("x".into()), Class::Duplicate);
    }

    #[test]
    fn real_driver_errors_are_read_correctly() {
        assert!(matches!(
            classify(&command_error(10107, "NotWritablePrimary"), None),
            Class::Retry(r) if r.contains("NotWritablePrimary (10107)")
        ));
        assert!(matches!(
            classify(&command_error(189, "PrimarySteppedDown"), None),
            Class::Retry(_)
        ));
        assert!(matches!(
            classify(&command_error(2, "BadValue"), None),
            Class::Fatal(_)
        ));
        assert_eq!(classify(&write_error(11000), None), Class::Duplicate);
        let io = Error::from(ErrorKind::Io(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))));
        assert!(matches!(classify(&io, None), Class::Retry(_)));
    }

    #[test]
    fn refused_timed_out_and_closed_connections_are_told_apart() {
        let io = |kind: std::io::ErrorKind| Error::from(ErrorKind::Io(Arc::new(kind.into())));
        use std::io::ErrorKind as Io;
        assert_eq!(Failure::of(&io(Io::ConnectionRefused)), Failure::Refused);
        assert_eq!(Failure::of(&io(Io::TimedOut)), Failure::TimedOut);
        assert_eq!(Failure::of(&io(Io::UnexpectedEof)), Failure::Closed);
        assert_eq!(Failure::of(&io(Io::ConnectionReset)), Failure::Closed);
        assert_eq!(Failure::of(&io(Io::PermissionDenied)), Failure::Other);
        assert_eq!(
            Failure::of(&command_error(13, "Unauthorized")),
            Failure::Other
        );
    }

    #[tokio::test]
    async fn a_real_server_selection_timeout_is_retried_and_reads_short() {
        // Nothing listens on port 1 of loopback.
        let client = mongodb::Client::with_uri_str(
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200&connectTimeoutMS=200",
        )
        .await
        .unwrap();
        let err = client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .unwrap_err();
        match classify(&err, None) {
            Class::Retry(reason) => {
                assert!(reason.starts_with("no suitable MongoDB server"), "{reason}");
                assert!(!reason.contains("Topology:"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn descriptions_are_one_line_and_hide_the_password() {
        let e = command_error(18, "AuthenticationFailed");
        let text = reason(&e, Some("AuthenticationFailed"));
        assert!(!text.contains("AuthenticationFailed"), "{text}");
        assert_eq!(
            scrub("user p@ss! and p%40ss%21", Some("p@ss!")),
            "user **** and ****"
        );
        assert_eq!(scrub("no secret", None), "no secret");
    }
}
