//! The driver's own view of the replica set, kept current by its monitoring
//! (SDAM) events, plus whether the credentials were refused: what readiness
//! and the status fallback are decided from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use mongodb::event::sdam::TopologyDescription;
use mongodb::options::ServerAddress;
use mongodb::{ServerInfo, ServerType, TopologyType};

use super::errors::{check_credentials, reason, Failure, Signals};
use crate::text::one_line;

/// One member as the driver last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSnapshot {
    /// `host:port` as the driver knows it.
    pub address: String,
    /// The driver's server type (`RsPrimary`, `RsSecondary`, `Unknown`, ...).
    pub server_type: ServerType,
    /// Why the driver marked it unknown, if it did (password scrubbed).
    pub error: Option<String>,
    /// The driver marked it unknown because a connection to it failed to
    /// authenticate, not because its monitor found it so: a description
    /// of the login, not of the member.
    pub login_refused: bool,
    /// What kind of failure `error` is, when there is one.
    pub failure: Option<Failure>,
}

impl ServerSnapshot {
    /// Why the driver cannot use this member, when it cannot: `address
    /// unreachable (why)`, or that it takes it for a stale primary
    /// ([`Failure::StalePrimary`]).
    pub fn unusable(&self) -> Option<String> {
        let why = self.error.as_ref()?;
        if self.failure == Some(Failure::StalePrimary) {
            return Some(format!(
                "{} says it is primary, of a replica set configuration older than one this \
                 instance saw before, and is taken for stale: after an election this passes in \
                 seconds; if the set was rebuilt from scratch on the same addresses it never \
                 does, and the app starts its MongoDB client afresh after 30 s of it",
                self.address
            ));
        }
        // Once a login is accepted again (a password fixed), the member
        // the driver marked unknown for a refused one stays unused until
        // its monitor's next check (`heartbeatFrequencyMS`, 10 s): it is
        // up, and said so.
        if self.login_refused {
            return Some(format!(
                "{} refused a login ({why}); it is used again after the driver's next check of it",
                self.address
            ));
        }
        if let Some(Failure::NotMongoDb(what)) = &self.failure {
            return Some(format!(
                "{} {}",
                self.address,
                super::errors::not_mongodb(what)
            ));
        }
        Some(format!("{} unreachable ({why})", self.address))
    }
}

/// The replica set as the driver last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopologySnapshot {
    /// The replica set's name, once a member has told it.
    pub set_name: Option<String>,
    /// Whether a write could be sent now (there is a primary).
    pub writable: bool,
    /// Every known member, sorted by address, as the driver describes it
    /// now (what server selection goes by).
    pub servers: Vec<ServerSnapshot>,
    /// The same members as their monitors last described them: like
    /// `servers`, except that a member the driver marked unknown because
    /// a connection to it failed to authenticate keeps the description its
    /// last heartbeat gave (see [`TopologyView::set`]). What the status
    /// table shows.
    pub members: Vec<ServerSnapshot>,
    /// Why the last connection attempt failed to authenticate, until a
    /// connection authenticates again (password scrubbed).
    pub auth_failure: Option<String>,
    /// Credentials are configured and no connection has authenticated
    /// yet: the members answer (their monitors never authenticate), but
    /// whether they accept this app is not known.
    pub awaiting_authentication: bool,
    /// The client talks to one member only (`directConnection=true`, the
    /// driver's `Single` topology).
    pub direct: bool,
    /// Where the user is looked up when the connection string left it to
    /// its path ([`super::client::Login::user_database`]): said with a
    /// refusal of the credentials.
    pub user_database: Option<String>,
}

impl TopologySnapshot {
    /// Reads the driver's description; `secret` is scrubbed from errors.
    pub fn from_description(d: &TopologyDescription, secret: Option<&str>) -> Self {
        let mut servers: Vec<ServerSnapshot> = d
            .servers()
            .into_iter()
            .map(|(address, info)| ServerSnapshot {
                address: address_string(address),
                server_type: info.server_type(),
                error: info.error().map(|e| reason(e, secret)),
                // Monitors never authenticate ("Drivers MUST NOT
                // authenticate on sockets used for monitoring", Server
                // Monitoring specification:
                // <https://github.com/mongodb/specifications/blob/master/source/server-discovery-and-monitoring/server-monitoring.md>),
                // so an authentication error in a description comes from
                // a pool connection's handshake.
                login_refused: info.error().is_some_and(|e| Signals::of(e).authentication),
                failure: info.error().map(Failure::of),
            })
            .collect();
        servers.sort_by(|a, b| a.address.cmp(&b.address));
        let mut snapshot = TopologySnapshot {
            set_name: d.set_name().cloned(),
            writable: d.has_writable_server(),
            members: servers.clone(),
            servers,
            auth_failure: None,
            awaiting_authentication: false,
            direct: d.topology_type() == TopologyType::Single,
            user_database: None,
        };
        // The driver counts a `Single` topology writable whenever its one
        // member answers, whatever that member is, and sends it every
        // write; a secondary refuses them all (NotWritablePrimary).
        if snapshot.pinned_to_non_primary().is_some() {
            snapshot.writable = false;
        }
        snapshot
    }

    /// Why no write can succeed when the client is pinned to one member
    /// that is not the primary: with `directConnection=true` the driver
    /// never looks for the primary
    /// (<https://www.mongodb.com/docs/manual/reference/connection-string-options/#mongodb-urioption-urioption.directConnection>).
    pub fn pinned_to_non_primary(&self) -> Option<String> {
        if !self.direct {
            return None;
        }
        let member = self.servers.first()?;
        let what = match member.server_type {
            ServerType::RsSecondary => "a secondary".to_owned(),
            ServerType::RsArbiter => "an arbiter".to_owned(),
            ServerType::RsOther | ServerType::RsGhost => {
                format!(
                    "a member that is not the primary ({:?})",
                    member.server_type
                )
            }
            _ => return None,
        };
        Some(format!(
            "connected directly to {what}: {} (directConnection=true), which refuses every \
             write and is never left for the primary; use the replica set's URI (its members, \
             or replicaSet=NAME, without directConnection=true)",
            member.address
        ))
    }

    /// The authentication error a member has in `new` and did not have in
    /// `previous`, as one line without `secret`: a connection to it has just
    /// been refused. (The driver marks a member unknown with the error when
    /// a new connection fails to authenticate; its monitor, which never
    /// authenticates, finds it healthy again at its next check.)
    ///
    /// Only the change counts. A member keeps its error in every later
    /// description until its monitor checks it again (every heartbeat), and
    /// the driver describes the whole topology whenever any member changes:
    /// taken from each description, an error from before the credentials
    /// were fixed set the refusal again after a connection had signed in
    /// and cleared it, and it then stayed, with nothing left to clear it.
    pub fn new_authentication_error(
        previous: &TopologyDescription,
        new: &TopologyDescription,
        secret: Option<&str>,
    ) -> Option<String> {
        let auth_error = |info: &ServerInfo<'_>| {
            info.error()
                .filter(|e| Signals::of(e).authentication)
                .map(|e| reason(e, secret))
        };
        let before = previous.servers();
        new.servers().into_iter().find_map(|(address, info)| {
            let why = auth_error(&info)?;
            let had = before.get(address).and_then(auth_error);
            (had.as_deref() != Some(why.as_str())).then_some(why)
        })
    }

    /// The member its monitor last described as the primary, if any: a
    /// login refused on it does not count ([`TopologyView::set`]).
    fn member_primary(&self) -> Option<&str> {
        self.members
            .iter()
            .find(|s| s.server_type == ServerType::RsPrimary)
            .map(|s| s.address.as_str())
    }

    /// The member the driver takes for the primary, if any.
    pub fn primary(&self) -> Option<&ServerSnapshot> {
        self.servers
            .iter()
            .find(|s| s.server_type == ServerType::RsPrimary)
    }

    /// Why no member is known at all, when a replica set is named: the
    /// driver drops a host that answers as a member of another set, a
    /// standalone or a mongos (the Server Discovery and Monitoring
    /// specification, `updateRSWithoutPrimary`:
    /// <https://github.com/mongodb/specifications/blob/master/source/server-discovery-and-monitoring/server-discovery-and-monitoring.md>),
    /// and keeps one that does not answer; so no member left means every
    /// host answered, and none as a member of this set.
    pub fn no_member_of_the_set(&self) -> Option<String> {
        if !self.servers.is_empty() || self.direct {
            return None;
        }
        let name = self.set_name.as_deref()?;
        Some(one_line(&format!(
            "no host in the connection string is a member of replica set {name}: each answered \
             as a member of another set, a standalone mongod or a mongos, and was dropped; \
             check replicaSet={name} against the set's name (`simplechat replset status --uri` \
             with the same hosts and no replicaSet= shows it)"
        )))
    }

    /// Every host answers as a mongod whose replica set was never initiated
    /// (or that every member was removed from): no command that needs a
    /// member of the set will ever be sent until `replset init` runs, so
    /// the one line that says so, instead of the driver's "no available
    /// servers". `None` while any host is unknown, unreachable or a
    /// member.
    pub fn not_initiated(&self) -> Option<String> {
        let every_ghost = !self.servers.is_empty()
            && self
                .servers
                .iter()
                .all(|s| s.server_type == ServerType::RsGhost);
        every_ghost.then(|| {
            let hosts: Vec<&str> = self.servers.iter().map(|s| s.address.as_str()).collect();
            one_line(&format!(
                "the replica set is not initiated: {} answer as mongods in no replica set's \
                 configuration (RSGhost); run `simplechat replset init --name NAME --member \
                 HOST:PORT ...` with every member first",
                hosts.join(", ")
            ))
        })
    }

    /// Why a write could not be accepted now, from what the driver sees, as
    /// one line: the refused credentials; else, when the driver itself has
    /// no member a write could go to, every member and why; else that no
    /// connection has signed in yet.
    pub fn not_writable_reason(&self) -> String {
        if let Some(why) = &self.auth_failure {
            return one_line(&format!(
                "MongoDB refused to authenticate this app ({why}): {}",
                check_credentials(self.user_database.as_deref())
            ));
        }
        if let Some(why) = self.pinned_to_non_primary() {
            return why;
        }
        // Signing in waits for a member to answer: when none does, or none
        // is primary, that is what keeps writes out.
        let member_writable = self.servers.iter().any(|s| {
            matches!(
                s.server_type,
                ServerType::RsPrimary
                    | ServerType::Standalone
                    | ServerType::Mongos
                    | ServerType::LoadBalancer
            )
        });
        if self.awaiting_authentication && member_writable {
            return "MongoDB answers, but no connection has signed in with this app's credentials yet"
                .to_owned();
        }
        if let Some(why) = self.no_member_of_the_set() {
            return why;
        }
        one_line(&format!(
            "no writable primary in {}: {}",
            self.set_named(),
            self.members_described()
        ))
    }

    /// Why a read cannot be served now: the refused credentials, whatever
    /// the members' heartbeats say; else, when the driver sees no member it
    /// could read from (reads go to the primary, else a secondary), every
    /// member and why. `None` while one can be read from.
    pub fn not_readable_reason(&self) -> Option<String> {
        // Members that answer their heartbeats (which need no login) are
        // no use to a read the set refuses to authenticate.
        if self.auth_failure.is_some() {
            return Some(self.not_writable_reason());
        }
        let readable = self.servers.iter().any(|s| {
            matches!(
                s.server_type,
                ServerType::RsPrimary
                    | ServerType::RsSecondary
                    | ServerType::Standalone
                    | ServerType::Mongos
                    | ServerType::LoadBalancer
            )
        });
        if readable {
            return None;
        }
        if let Some(why) = self.no_member_of_the_set() {
            return Some(why);
        }
        Some(one_line(&format!(
            "no member of {} can be read from: {}",
            self.set_named(),
            self.members_described()
        )))
    }

    /// `replica set <name>`, or `MongoDB` before a member has named it.
    fn set_named(&self) -> String {
        self.set_name
            .as_deref()
            .map(|n| format!("replica set {n}"))
            .unwrap_or_else(|| "MongoDB".to_owned())
    }

    /// Each member and what the driver knows of it, `; `-separated.
    fn members_described(&self) -> String {
        self.servers
            .iter()
            .map(|s| {
                s.unusable().unwrap_or_else(|| match s.server_type {
                    // A mongod started with a set name whose set was never
                    // initiated, or that was removed from it.
                    ServerType::RsGhost => format!(
                        "{} is in no replica set's configuration (RSGhost): not initiated \
                         yet (`simplechat replset init`), or removed from its set (drop it \
                         from the connection string)",
                        s.address
                    ),
                    other => format!("{} {other}", s.address),
                })
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The log line for the primary's change from `previous` (none before the
/// driver's first description) to `next`, if it changed: an operator reads
/// in the log when writes stopped and when they could go on, and who was
/// primary, as the members' monitors described them. `last_primary`: the
/// member last seen primary, if any was.
///
/// A loss or a change is a warning (an election; posts wait meanwhile), a
/// set's first primary at a start is information. Nothing while no member
/// was ever primary: readiness says why, and a start would otherwise say
/// it once for every member not described yet.
fn primary_change(
    previous: Option<&TopologySnapshot>,
    next: &TopologySnapshot,
    last_primary: Option<&str>,
) -> Option<(log::Level, String)> {
    let before = previous.and_then(TopologySnapshot::member_primary);
    match (before, next.member_primary()) {
        (Some(was), None) => Some((
            log::Level::Warn,
            format!(
                "MongoDB: {was} is no longer the primary, and no member is ({}); posts wait for \
                 an election, each at most write_timeout_secs",
                next.not_writable_reason()
            ),
        )),
        (Some(was), Some(now)) if was != now => Some((
            log::Level::Warn,
            format!("MongoDB: {now} is the primary now (was {was}); posts go on"),
        )),
        (None, Some(now)) => match last_primary {
            // The driver marks a member unknown when an operation's
            // connection to it fails, until its monitor's next check.
            Some(was) if was == now => Some((
                log::Level::Warn,
                format!("MongoDB: {now} is the primary again; posts go on"),
            )),
            Some(was) => Some((
                log::Level::Warn,
                format!("MongoDB: {now} is the primary now (was {was}); posts go on"),
            )),
            None => Some((
                log::Level::Info,
                format!("MongoDB: {now} is the primary of {}", next.set_named()),
            )),
        },
        _ => None,
    }
}

/// `host:port`, with MongoDB's default port made explicit, and an IPv6
/// address in the brackets that tell it from its port (`[::1]:27017`, as
/// a connection string and `--member` write it; the driver keeps the
/// address without them).
pub fn address_string(address: &ServerAddress) -> String {
    match address {
        ServerAddress::Tcp { host, port } if host.contains(':') => {
            format!("[{host}]:{}", port.unwrap_or(27017))
        }
        ServerAddress::Tcp { host, port } => format!("{host}:{}", port.unwrap_or(27017)),
        other => other.to_string(),
    }
}

/// How many heartbeats in a row must find a member closing the connection
/// without a reply ([`Failure::Closed`]) before that is taken for how it
/// answers: see [`Closes::settled`].
pub const CLOSES_IN_A_ROW: u32 = 3;
/// How long at least from the first of those closes to the last.
pub const CLOSES_OVER: Duration = Duration::from_secs(2);

/// The heartbeats in a row, up to the latest, that found one member
/// closing the connection without a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closes {
    /// How many.
    pub times: u32,
    /// When the first of them ended.
    pub first: Instant,
    /// When the latest ended.
    pub last: Instant,
}

impl Closes {
    /// How long from the first close to the latest.
    pub fn over(&self) -> Duration {
        self.last.saturating_duration_since(self.first)
    }

    /// Whether these closes say how the member answers, not a moment of
    /// its restart: [`CLOSES_IN_A_ROW`] of them over [`CLOSES_OVER`] at
    /// least. A mongod that stops closes its listening sockets first ("so
    /// that new connections aren't accepted", `shutdownTask` in mongod's
    /// `src/mongo/db/mongod_main.cpp`:
    /// <https://github.com/mongodb/mongo/blob/r4.4.0/src/mongo/db/mongod_main.cpp>)
    /// and then ends the connections it has, and one killed has its
    /// connections closed by the kernel: either way the monitor's
    /// connection is closed once, and its next try is refused until the
    /// mongod listens again, when it answers. A connection accepted just
    /// before the listener closed may be closed too: two in a row. Three,
    /// two seconds apart at least (the monitor tries again every half
    /// second while a command waits, the Server Monitoring specification's
    /// `minHeartbeatFrequencyMS`), are no restart; a mongod that requires
    /// TLS, or is at its connection limit, closes every one, and the wait
    /// would never end.
    pub fn settled(&self) -> bool {
        self.times >= CLOSES_IN_A_ROW && self.over() >= CLOSES_OVER
    }
}

/// The driver's latest topology, written by its monitoring callback and
/// read by request handlers, and the last refusal of the credentials,
/// written by the connection-pool callbacks and by an operation refused.
/// Std `RwLock`s: each is held only to copy or replace a value, never
/// across an `.await`.
///
/// The view can trail the driver: the mongodb 3.9 driver hands its
/// monitoring events to the callback through a channel, on a task of its
/// own (`SdamEventEmitter` in `sdam/topology.rs`), so an operation can
/// return the error of a change before the callback has seen the change,
/// or the descriptions before it (on a loaded machine, seconds before).
#[derive(Default)]
pub struct TopologyView {
    latest: RwLock<Option<TopologySnapshot>>,
    /// Sticky, unlike the members' errors: the monitor clears those at its
    /// next check while every new connection would still be refused. Only
    /// a connection that authenticates clears it, so a user created (or a
    /// password fixed on the server) after the app started clears it
    /// without a restart.
    auth_failure: RwLock<Option<String>>,
    /// Set while credentials are configured and no pool connection has
    /// authenticated yet.
    awaiting_authentication: AtomicBool,
    /// Where the user is looked up, when the connection string left it to
    /// its path.
    user_database: Option<String>,
    /// Per member (`host:port`), the heartbeats in a row that found it
    /// closing the connection without a reply; none once one did not.
    closes: RwLock<HashMap<String, Closes>>,
    /// The member last seen primary, if one ever was: what a primary that
    /// comes after none is told from (the same again, or another).
    last_primary: RwLock<Option<String>>,
}

impl TopologyView {
    /// A view for a client with credentials: not writable until a pool
    /// connection has authenticated, so readiness never reports a set
    /// that has not accepted this app's credentials yet.
    /// `user_database`: where the user is looked up, when the connection
    /// string left it to its path ([`super::client::Login`]).
    pub fn expecting_authentication(user_database: Option<String>) -> Self {
        let view = TopologyView {
            user_database,
            ..TopologyView::default()
        };
        view.awaiting_authentication.store(true, Ordering::Relaxed);
        view
    }

    /// Where the user is looked up, when the connection string left it to
    /// its path.
    pub fn user_database(&self) -> Option<&str> {
        self.user_database.as_deref()
    }

    /// The latest snapshot; `None` until the driver has described anything.
    /// While the credentials stand refused it is not writable.
    pub fn get(&self) -> Option<TopologySnapshot> {
        let mut snapshot = self
            .latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        snapshot.auth_failure = self
            .auth_failure
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        snapshot.awaiting_authentication = self.awaiting_authentication.load(Ordering::Relaxed);
        snapshot.user_database = self.user_database.clone();
        if snapshot.auth_failure.is_some() || snapshot.awaiting_authentication {
            snapshot.writable = false;
        }
        Some(snapshot)
    }

    /// Takes the driver's new description. A member it shows refused a
    /// login keeps, in `members`, what the previous snapshot had for it.
    ///
    /// The Server Discovery and Monitoring specification has the driver
    /// mark a server Unknown, and clear its pool, when authentication fails
    /// on a new connection, so that operations wait for the server to be
    /// rediscovered by its monitor ("Why mark a server Unknown after an
    /// auth error?":
    /// <https://github.com/mongodb/specifications/blob/master/source/server-discovery-and-monitoring/server-discovery-and-monitoring.md#why-mark-a-server-unknown-after-an-auth-error>).
    /// That describes the login, not the member: its heartbeats, which
    /// never authenticate, found it up before and will again at the next
    /// check. While the set refuses this app's credentials every retried
    /// login does it to some member, so a table of the driver's
    /// description would show a healthy member down at random. (A login
    /// that failed because the member went away is answered by the next
    /// heartbeat too, which fails and is kept.)
    pub(super) fn set(&self, snapshot: TopologySnapshot) {
        if let Some((level, line)) = self.take(snapshot) {
            log::log!(level, "{line}");
        }
    }

    /// What [`TopologyView::set`] does but log: returns the log line for
    /// the primary's change, if it changed ([`primary_change`]).
    fn take(&self, mut snapshot: TopologySnapshot) -> Option<(log::Level, String)> {
        let mut latest = self.latest.write().unwrap_or_else(|e| e.into_inner());
        if let Some(previous) = latest.as_ref() {
            for member in snapshot.members.iter_mut().filter(|m| m.login_refused) {
                if let Some(seen) = previous
                    .members
                    .iter()
                    .find(|p| p.address == member.address && !p.login_refused)
                {
                    *member = seen.clone();
                }
            }
        }
        let mut last_primary = self.last_primary.write().unwrap_or_else(|e| e.into_inner());
        let change = primary_change(latest.as_ref(), &snapshot, last_primary.as_deref());
        if let Some(primary) = snapshot.member_primary() {
            *last_primary = Some(primary.to_owned());
        }
        drop(last_primary);
        *latest = Some(snapshot);
        change
    }

    /// The heartbeats in a row, up to the latest, that found `address`
    /// closing the connection without a reply, if the latest did.
    pub fn closes(&self, address: &str) -> Option<Closes> {
        self.closes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(address)
            .copied()
    }

    /// Takes a heartbeat of `address` that ended at `at`: `failure` when it
    /// failed, `None` when the member answered.
    pub(super) fn heartbeat(&self, address: String, failure: Option<Failure>, at: Instant) {
        let mut closes = self.closes.write().unwrap_or_else(|e| e.into_inner());
        match failure {
            Some(Failure::Closed) => {
                closes
                    .entry(address)
                    .and_modify(|c| {
                        c.times = c.times.saturating_add(1);
                        c.last = at;
                    })
                    .or_insert(Closes {
                        times: 1,
                        first: at,
                        last: at,
                    });
            }
            _ => {
                closes.remove(&address);
            }
        }
    }

    /// Records that a connection failed to authenticate (`Some(why)`), or
    /// that one succeeded (`None`).
    pub(super) fn set_auth_failure(&self, why: Option<String>) {
        if why.is_none() {
            self.awaiting_authentication.store(false, Ordering::Relaxed);
        }
        *self.auth_failure.write().unwrap_or_else(|e| e.into_inner()) = why;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_address_is_shown_in_brackets() {
        let shown = |text: &str| address_string(&ServerAddress::parse(text).unwrap());
        assert_eq!(shown("[::1]:28101"), "[::1]:28101");
        assert_eq!(shown("[fe80::1]"), "[fe80::1]:27017");
        assert_eq!(shown("h"), "h:27017");
        assert_eq!(shown("127.0.0.1:1"), "127.0.0.1:1");
    }

    #[test]
    fn reason_lists_members() {
        let servers = vec![
            ServerSnapshot {
                address: "h1:1".into(),
                server_type: ServerType::Unknown,
                error: Some("connection refused".into()),
                login_refused: false,
                failure: None,
            },
            ServerSnapshot {
                address: "h2:2".into(),
                server_type: ServerType::RsSecondary,
                error: None,
                login_refused: false,
                failure: None,
            },
        ];
        let snap = TopologySnapshot {
            set_name: Some("rs".into()),
            writable: false,
            members: servers.clone(),
            servers,
            auth_failure: None,
            awaiting_authentication: false,
            direct: false,
            user_database: None,
        };
        assert_eq!(
            snap.not_writable_reason(),
            "no writable primary in replica set rs: h1:1 unreachable (connection refused); h2:2 RSSecondary"
        );
        assert!(snap.primary().is_none());
    }

    /// What the driver describes once the members answer and one is primary.
    fn with_a_primary() -> TopologySnapshot {
        let servers = vec![ServerSnapshot {
            address: "h1:1".into(),
            server_type: ServerType::RsPrimary,
            error: None,
            login_refused: false,
            failure: None,
        }];
        TopologySnapshot {
            set_name: Some("rs".into()),
            writable: true,
            members: servers.clone(),
            servers,
            auth_failure: None,
            awaiting_authentication: false,
            direct: false,
            user_database: None,
        }
    }

    /// `with_a_primary`, with `primary` the primary and `h9:9` a
    /// secondary, or no primary (`None`: both secondaries).
    fn primary_at(primary: Option<&str>) -> TopologySnapshot {
        let mut snap = with_a_primary();
        let member = |address: &str, server_type| ServerSnapshot {
            address: address.into(),
            server_type,
            error: None,
            login_refused: false,
            failure: None,
        };
        snap.servers = vec![
            member(primary.unwrap_or("h1:1"), ServerType::RsSecondary),
            member("h9:9", ServerType::RsSecondary),
        ];
        if primary.is_some() {
            snap.servers[0].server_type = ServerType::RsPrimary;
        }
        snap.writable = primary.is_some();
        snap.members = snap.servers.clone();
        snap
    }

    /// The log names each change of the primary once: the set's first
    /// one, a loss (with what the members are), an election's winner, the
    /// same member again, a change without a gap; nothing while it stays,
    /// nor while none ever was.
    #[test]
    fn each_change_of_the_primary_is_logged_once() {
        let line =
            |previous: Option<&TopologySnapshot>, next, last| primary_change(previous, &next, last);
        let none = primary_at(None);
        let one = primary_at(Some("h1:1"));
        let two = primary_at(Some("h2:2"));
        assert_eq!(line(None, none.clone(), None), None);
        assert_eq!(line(Some(&none), none.clone(), None), None);
        assert_eq!(
            line(Some(&none), one.clone(), None),
            Some((
                log::Level::Info,
                "MongoDB: h1:1 is the primary of replica set rs".into()
            ))
        );
        assert_eq!(line(Some(&one), one.clone(), Some("h1:1")), None);
        let (level, lost) = line(Some(&one), none.clone(), Some("h1:1")).unwrap();
        assert_eq!(level, log::Level::Warn);
        assert!(
            lost.starts_with("MongoDB: h1:1 is no longer the primary, and no member is (no writable primary in replica set rs: h1:1 RSSecondary; h9:9 RSSecondary); posts wait for an election"),
            "{lost}"
        );
        assert_eq!(line(Some(&none), none.clone(), Some("h1:1")), None);
        assert_eq!(
            line(Some(&none), two.clone(), Some("h1:1")),
            Some((
                log::Level::Warn,
                "MongoDB: h2:2 is the primary now (was h1:1); posts go on".into()
            ))
        );
        assert_eq!(
            line(Some(&none), one.clone(), Some("h1:1")),
            Some((
                log::Level::Warn,
                "MongoDB: h1:1 is the primary again; posts go on".into()
            ))
        );
        assert_eq!(
            line(Some(&one), two.clone(), Some("h1:1")),
            Some((
                log::Level::Warn,
                "MongoDB: h2:2 is the primary now (was h1:1); posts go on".into()
            ))
        );
    }

    /// A login refused on the primary makes the driver mark it unknown
    /// until its monitor's next check: while the set refuses the app's
    /// credentials that happens at every retried login, and is no change
    /// of the primary (the members' table keeps what the heartbeats said).
    #[test]
    fn a_refused_login_on_the_primary_is_no_change_of_it() {
        let view = TopologyView::expecting_authentication(None);
        assert_eq!(
            view.take(primary_at(Some("h1:1"))).map(|(level, _)| level),
            Some(log::Level::Info)
        );
        let mut refused = primary_at(Some("h1:1"));
        refused.servers[0].server_type = ServerType::Unknown;
        refused.servers[0].login_refused = true;
        refused.servers[0].error = Some("authentication failed".into());
        refused.members = refused.servers.clone();
        assert_eq!(view.take(refused), None);
        assert_eq!(view.take(primary_at(Some("h1:1"))), None);
        // A primary the heartbeats find gone is a loss.
        let (level, _) = view.take(primary_at(None)).expect("a loss");
        assert_eq!(level, log::Level::Warn);
    }

    #[test]
    fn refused_credentials_make_it_unwritable_until_a_connection_authenticates() {
        let view = TopologyView::default();
        view.set(with_a_primary());
        assert!(view.get().unwrap().writable);
        view.set_auth_failure(Some(
            "authentication failed: SCRAM failure: Authentication failed.".into(),
        ));
        let snap = view.get().unwrap();
        assert!(!snap.writable);
        let why = snap.not_writable_reason();
        assert!(
            why.starts_with("MongoDB refused to authenticate this app (authentication failed: "),
            "{why}"
        );
        view.set_auth_failure(None);
        assert!(view.get().unwrap().writable);
    }

    /// A member the driver marks unknown for a refused login keeps, in
    /// the members' table, what its heartbeats said; one its heartbeat
    /// finds down is shown down.
    #[test]
    fn a_refused_login_does_not_make_a_member_look_down() {
        let view = TopologyView::expecting_authentication(None);
        view.set(with_a_primary());
        let mut refused = with_a_primary();
        refused.writable = false;
        refused.servers[0] = ServerSnapshot {
            address: "h1:1".into(),
            server_type: ServerType::Unknown,
            error: Some("authentication failed: SCRAM failure".into()),
            login_refused: true,
            failure: None,
        };
        refused.members = refused.servers.clone();
        view.set(refused.clone());
        let snap = view.get().unwrap();
        assert_eq!(snap.servers, refused.servers, "the driver's view as it is");
        // Once a login is accepted again, the member is not called down
        // while the driver waits to check it.
        view.set_auth_failure(None);
        let why = view.get().unwrap().not_writable_reason();
        assert!(
            why.contains("h1:1 refused a login (authentication failed: SCRAM failure)")
                && !why.contains("unreachable"),
            "{why}"
        );
        assert_eq!(snap.members, with_a_primary().members, "the heartbeat's");
        // Described again with the same refusal: still the heartbeat's.
        view.set(refused.clone());
        assert_eq!(view.get().unwrap().members, with_a_primary().members);
        // Its heartbeat fails: that is the member's health.
        let mut down = refused.clone();
        down.servers[0].error = Some("Connection refused".into());
        down.servers[0].login_refused = false;
        down.members = down.servers.clone();
        view.set(down.clone());
        assert_eq!(view.get().unwrap().members, down.servers);
        // Refused with no heartbeat's description before it: shown as is.
        let fresh = TopologyView::default();
        fresh.set(refused.clone());
        assert_eq!(fresh.get().unwrap().members, refused.servers);
    }

    #[test]
    fn with_credentials_and_no_member_answering_it_says_unreachable() {
        let view = TopologyView::expecting_authentication(None);
        let servers = vec![ServerSnapshot {
            address: "127.0.0.1:27999".into(),
            server_type: ServerType::Unknown,
            error: Some("Connection refused".into()),
            login_refused: false,
            failure: None,
        }];
        view.set(TopologySnapshot {
            set_name: Some("rs".into()),
            writable: false,
            members: servers.clone(),
            servers,
            auth_failure: None,
            awaiting_authentication: false,
            direct: false,
            user_database: None,
        });
        assert_eq!(
            view.get().unwrap().not_writable_reason(),
            "no writable primary in replica set rs: 127.0.0.1:27999 unreachable (Connection refused)"
        );
    }

    #[test]
    fn with_credentials_it_is_unwritable_until_a_connection_authenticates() {
        let view = TopologyView::expecting_authentication(None);
        view.set(with_a_primary());
        let snap = view.get().unwrap();
        assert!(!snap.writable);
        assert!(snap
            .not_writable_reason()
            .contains("no connection has signed in"));
        view.set_auth_failure(None);
        assert!(view.get().unwrap().writable);
    }

    #[test]
    fn no_member_left_names_the_set_name_and_a_ghost_says_it_is_in_no_set() {
        let mut snap = with_a_primary();
        assert!(snap.no_member_of_the_set().is_none());
        snap.servers.clear();
        snap.writable = false;
        let why = snap.not_writable_reason();
        assert!(
            why.starts_with("no host in the connection string is a member of replica set rs:")
                && why.contains("check replicaSet=rs"),
            "{why}"
        );
        snap.set_name = None;
        assert!(snap.no_member_of_the_set().is_none(), "no set named");
        let mut ghost = with_a_primary();
        ghost.writable = false;
        ghost.servers[0].server_type = ServerType::RsGhost;
        let why = ghost.not_writable_reason();
        assert!(
            why.contains("h1:1 is in no replica set's configuration")
                && why.contains("simplechat replset init"),
            "{why}"
        );
    }

    /// The heartbeats a restart gives (one close, then refused until it
    /// answers) never settle; a member that closes every connection does,
    /// once three closes in a row span two seconds.
    #[test]
    fn only_closes_in_a_row_over_seconds_settle() {
        let view = TopologyView::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let beat =
            |failure: Option<Failure>, ms: u64| view.heartbeat("h:1".into(), failure, at(ms));
        let settled = || view.closes("h:1").is_some_and(|c| c.settled());
        // A restart: the open connection closed, then refused, then up.
        beat(None, 0);
        beat(Some(Failure::Closed), 500);
        beat(Some(Failure::Refused), 1000);
        assert_eq!(view.closes("h:1"), None);
        beat(Some(Failure::Closed), 1500);
        beat(Some(Failure::Closed), 2000);
        beat(Some(Failure::Refused), 4000);
        beat(None, 4500);
        assert!(!settled());
        // Closed each time: three within a second are not enough...
        for ms in [5000, 5500, 6000] {
            beat(Some(Failure::Closed), ms);
        }
        assert_eq!(view.closes("h:1").map(|c| c.times), Some(3));
        assert!(!settled());
        // ...but over two seconds they are.
        beat(Some(Failure::Closed), 7000);
        assert!(settled());
        assert_eq!(
            view.closes("h:1").map(|c| c.over()),
            Some(Duration::from_secs(2))
        );
        assert_eq!(view.closes("other:1"), None);
        // An answer ends the run.
        beat(None, 7500);
        assert_eq!(view.closes("h:1"), None);
        // Two in a row over longer still are not.
        beat(Some(Failure::Closed), 8000);
        beat(Some(Failure::Closed), 20000);
        assert!(!settled());
    }

    #[test]
    fn pinned_to_a_secondary_it_is_unwritable_and_says_why() {
        let mut snap = with_a_primary();
        snap.direct = true;
        assert!(snap.pinned_to_non_primary().is_none(), "the primary");
        snap.servers[0].server_type = ServerType::RsSecondary;
        let why = snap.pinned_to_non_primary().unwrap();
        assert!(
            why.starts_with("connected directly to a secondary: h1:1 ")
                && why.contains("use the replica set's URI"),
            "{why}"
        );
        assert_eq!(snap.not_writable_reason(), why);
        snap.direct = false;
        assert!(snap.pinned_to_non_primary().is_none(), "a set's member");
    }
}
