//! Building a driver client from a connection string, tuned for what it is
//! for, with the driver's topology view attached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::event::cmap::CmapEvent;
use mongodb::event::sdam::SdamEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::Client;

use super::errors::{classify, reason, scrub, Class, Failure, Signals};
use super::topology::{address_string, Closes, ServerSnapshot, TopologySnapshot, TopologyView};
use super::uri;

/// Used when the connection string does not choose: short enough that a
/// write retries several times within `write_timeout_secs` and a read during
/// an outage fails fast, long enough for an election's server selection.
pub const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Used when the connection string does not set `connectTimeoutMS`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per member for the store when the connection string does not
/// say (`maxPoolSize`): enough for 64 writes in flight at once.
pub const DEFAULT_MAX_POOL_SIZE: u32 = 64;

/// What a connection string says about signing in, beyond the driver's
/// options: what messages must hide, and what they may add when the
/// credentials are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Login {
    /// The password, so that no message can show it.
    pub secret: Option<String>,
    /// The database the user is looked up in when the connection string
    /// chose it only by its path: no `authSource`, and a database other
    /// than `admin` ([`uri::implied_user_database`]).
    pub user_database: Option<String>,
}

/// A client and what its users need to know about how it was made.
pub struct Connection {
    /// The driver's client; it connects and reconnects in the background.
    pub client: Client,
    /// The driver's view of the members, updated in the background.
    pub topology: Arc<TopologyView>,
    /// The password, so that no message can show it.
    pub secret: Option<String>,
    /// The seed list as `host:port`, for messages before the driver has
    /// seen anything.
    pub seeds: Vec<String>,
    /// Pool connections checked out so far, by any operation: see
    /// [`Connection::checkouts`].
    checkouts: Arc<AtomicU64>,
    /// The connection string asks for TLS (`tls=true`).
    tls: bool,
    /// The client a store's change stream runs on ([`Purpose::Store`]):
    /// the same settings with retryable reads off; for [`Purpose::Direct`],
    /// `client` itself.
    ///
    /// The driver resumes a change stream itself after a resumable error,
    /// once, with an `aggregate` naming the stream's resume token (the
    /// driver's change streams specification, "Resume Process"). With
    /// retryable reads on, that `aggregate` is retried once when its reply
    /// is lost, and the mongodb 3.9 driver builds the retry without the
    /// token (`ChangeStreamAggregate::build` takes it out of the resume
    /// data): the stream opens at the present and skips, without any
    /// error, what was stored while it was away. Off, the lost reply is
    /// the stream's error, and the store opens the stream again from the
    /// token it kept itself.
    pub change_streams: Client,
    /// The longest the driver waits on its own before a command reaches a
    /// server: its server selection plus one TCP connect
    /// ([`Connection::longest_wait_for_a_server`]).
    wait_for_a_server: Duration,
}

/// How a server answers that no wait cures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// It answered, but not as MongoDB ([`Failure::NotMongoDb`]): the
    /// driver's words for what it answered.
    NotMongoDb(String),
    /// It accepted each connection and closed it without a reply, so many
    /// times in a row that it is no restart ([`Closes::settled`]).
    ClosesUnanswered(Closes),
}

/// How a client is tuned beyond what the connection string says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The app's store: the whole replica set.
    Store,
    /// `replset` administration of one member, before a set may exist.
    Direct,
}

/// Parses the connection string into driver options and what it says
/// about signing in ([`Login`]). A `mongodb+srv` string is resolved here
/// (DNS); any other does no I/O.
///
/// Errors: one line, `bad MongoDB connection string <redacted>: <why>`,
/// or for a `mongodb+srv` name DNS does not answer, `DNS lookup for
/// MongoDB connection string <redacted> failed: <why>: ...`.
pub async fn options(text: &str) -> Result<(ClientOptions, Login), String> {
    let bad = |why: String| format!("bad MongoDB connection string {}: {why}", uri::redact(text));
    let parsed = uri::parse(text).map_err(bad)?;
    let user_database = uri::implied_user_database(&parsed);
    let secret = parsed.credential.and_then(|c| c.password);
    let options = ClientOptions::parse(text).await.map_err(|e| {
        let why = uri::scrub_options(&reason(&e, secret.as_deref()), text);
        // A `mongodb+srv` name the resolver does not answer is no fault of
        // the string: DNS may answer later, and the lookup is retried.
        match e.kind.as_ref() {
            mongodb::error::ErrorKind::DnsResolve { .. } => format!(
                "DNS lookup for MongoDB connection string {} failed: {why}: check the name, \
                 and DNS on this machine (retried meanwhile)",
                uri::redact(text)
            ),
            _ => bad(why),
        }
    })?;
    Ok((
        options,
        Login {
            secret,
            user_database,
        },
    ))
}

/// simplechat's settings on top of what the connection string says.
pub fn tune(options: &mut ClientOptions, purpose: Purpose) {
    if options.server_selection_timeout.is_none() {
        options.server_selection_timeout = Some(DEFAULT_SERVER_SELECTION_TIMEOUT);
    }
    if options.connect_timeout.is_none() {
        options.connect_timeout = Some(DEFAULT_CONNECT_TIMEOUT);
    }
    if options.app_name.is_none() {
        options.app_name = Some("simplechat".to_owned());
    }
    match purpose {
        // Retryable writes are part of the durability contract, whatever
        // the connection string says.
        Purpose::Store => {
            options.retry_writes = Some(true);
            // Each insert holds a connection until a majority acknowledges
            // it; the driver's default of 10 would cap one instance at ten
            // writes per majority round trip
            // (`ClientOptions::max_pool_size`: "The default value is 10").
            if options.max_pool_size.is_none() {
                options.max_pool_size = Some(DEFAULT_MAX_POOL_SIZE);
            }
        }
        Purpose::Direct => {
            options.direct_connection = Some(true);
            options.repl_set_name = None;
        }
    }
}

/// Bounds how long one operation may wait for a server by `bound`, the
/// time a command has in all: the driver's server selection
/// (`ClientOptions::server_selection_timeout`, "the amount of time the
/// Client should attempt to select a server for an operation before timing
/// out") and its TCP connect (`ClientOptions::connect_timeout`, "the connect
/// timeout passed to each underlying TcpStream";
/// <https://docs.rs/mongodb/3/mongodb/options/struct.ClientOptions.html>),
/// each the connection string's or simplechat's default when shorter.
pub fn bound_waits(options: &mut ClientOptions, bound: Duration) {
    let selection = options
        .server_selection_timeout
        .unwrap_or(DEFAULT_SERVER_SELECTION_TIMEOUT);
    options.server_selection_timeout = Some(selection.min(bound));
    let connect = options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    options.connect_timeout = Some(connect.min(bound));
}

/// Makes the client. The driver connects in the background, so this
/// returns at once whether or not any server is reachable.
pub fn connect(
    mut options: ClientOptions,
    login: Login,
    purpose: Purpose,
) -> Result<Connection, String> {
    tune(&mut options, purpose);
    // Taken before the event handlers are set: what they count is the
    // main client's (see `Connection::change_streams`).
    let stream_options = (purpose == Purpose::Store).then(|| {
        let mut o = options.clone();
        o.retry_reads = Some(false);
        o
    });
    let seeds = options.hosts.iter().map(address_string).collect();
    let wait_for_a_server = options
        .server_selection_timeout
        .unwrap_or(DEFAULT_SERVER_SELECTION_TIMEOUT)
        + options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let tls = matches!(options.tls, Some(mongodb::options::Tls::Enabled(_)));
    let Login {
        secret,
        user_database,
    } = login;
    let topology = Arc::new(if options.credential.is_some() {
        TopologyView::expecting_authentication(user_database)
    } else {
        TopologyView::default()
    });
    let view = topology.clone();
    let event_secret = secret.clone();
    let sdam_view = view.clone();
    options.sdam_event_handler = Some(EventHandler::callback(move |event| match event {
        SdamEvent::TopologyDescriptionChanged(change) => {
            let secret = event_secret.as_deref();
            if let Some(why) = TopologySnapshot::new_authentication_error(
                &change.previous_description,
                &change.new_description,
                secret,
            ) {
                sdam_view.set_auth_failure(Some(why));
            }
            sdam_view.set(TopologySnapshot::from_description(
                &change.new_description,
                secret,
            ));
        }
        // Each check of the monitor, even one that fails as the last did:
        // the description does not change then, and no other event says
        // how often a member closed the connection in a row.
        SdamEvent::ServerHeartbeatSucceeded(beat) => sdam_view.heartbeat(
            address_string(&beat.server_address),
            None,
            std::time::Instant::now(),
        ),
        SdamEvent::ServerHeartbeatFailed(beat) => sdam_view.heartbeat(
            address_string(&beat.server_address),
            Some(Failure::of(&beat.failure)),
            std::time::Instant::now(),
        ),
        _ => {}
    }));
    // A pool connection is ready only once it has authenticated (the
    // monitor's connections never authenticate and emit no pool events).
    let user_pool = options.credential.is_some();
    let checkouts = Arc::new(AtomicU64::new(0));
    let counted = checkouts.clone();
    options.cmap_event_handler = Some(EventHandler::callback(move |event| match event {
        CmapEvent::ConnectionReady(_) if user_pool => view.set_auth_failure(None),
        CmapEvent::ConnectionCheckedOut(_) => {
            counted.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }));
    let create = |options: ClientOptions| {
        Client::with_options(options).map_err(|e| {
            format!(
                "cannot create the MongoDB client: {}",
                reason(&e, secret.as_deref())
            )
        })
    };
    let client = create(options)?;
    let change_streams = match stream_options {
        Some(o) => create(o)?,
        None => client.clone(),
    };
    Ok(Connection {
        client,
        change_streams,
        topology,
        secret,
        seeds,
        checkouts,
        tls,
        wait_for_a_server,
    })
}

impl Connection {
    /// What the store does about `e` ([`classify`], password scrubbed). A
    /// refused login is recorded in [`Connection::topology`] at once
    /// ([`Connection::note_refused_login`]).
    pub fn class(&self, e: &mongodb::error::Error) -> Class {
        self.note_refused_login(e);
        classify(e, self.secret.as_deref())
    }

    /// Records in the view that `e` is a refused login, when it is one
    /// (not a connection lost mid-handshake): the driver's events that say
    /// so can come after the operation's error ([`TopologyView`]), and what
    /// explains the error next (readiness, a read's 503) must already know.
    /// Returns the refusal's reason, password scrubbed.
    pub fn note_refused_login(&self, e: &mongodb::error::Error) -> Option<String> {
        let signals = Signals::of(e);
        if !signals.authentication || signals.network {
            return None;
        }
        let why = reason(e, self.secret.as_deref());
        self.topology.set_auth_failure(Some(why.clone()));
        Some(why)
    }

    /// The longest the driver waits, with these settings, before a command
    /// reaches a server, and the time it ends such a wait with an error of
    /// its own: server selection (`serverSelectionTimeoutMS`) and a new
    /// connection's TCP connect (`connectTimeoutMS`), each the connection
    /// string's or simplechat's default
    /// (<https://docs.rs/mongodb/3/mongodb/options/struct.ClientOptions.html>).
    /// A reply awaited much longer than this, and than what the command
    /// itself may take, is not coming.
    pub fn longest_wait_for_a_server(&self) -> Duration {
        self.wait_for_a_server
    }

    /// Why no server has answered, from the driver's view: each one it
    /// could not reach and why, else that none has answered yet.
    pub fn why_silent(&self) -> String {
        self.why_unreachable()
            .unwrap_or_else(|| format!("no answer yet from {}", self.seeds.join(", ")))
    }

    /// Each server the driver could not reach and why (connection refused,
    /// a TLS or protocol error...), when it has tried: what a server
    /// selection timeout's own text ("No available servers") leaves out.
    pub fn why_unreachable(&self) -> Option<String> {
        let unreachable: Vec<String> = self
            .topology
            .get()
            .map(|t| {
                t.servers
                    .iter()
                    .filter_map(ServerSnapshot::unusable)
                    .collect()
            })
            .unwrap_or_default();
        (!unreachable.is_empty()).then(|| unreachable.join("; "))
    }

    /// [`TopologySnapshot::not_initiated`] of the driver's view.
    pub fn not_initiated(&self) -> Option<String> {
        self.topology.get().and_then(|t| t.not_initiated())
    }

    /// Every server the driver knows that answers as no wait cures
    /// ([`Unusable`]), with its address: one that answered, but not as
    /// MongoDB, with the driver's words for what it answered, and one that
    /// closes each connection without a reply ([`Closes::settled`]).
    pub fn unusable_servers(&self) -> Vec<(String, Unusable)> {
        let Some(topology) = self.topology.get() else {
            return Vec::new();
        };
        topology
            .servers
            .iter()
            .filter_map(|s| {
                let unusable = match &s.failure {
                    Some(Failure::NotMongoDb(why)) => Unusable::NotMongoDb(self.scrub(why)),
                    _ => Unusable::ClosesUnanswered(
                        self.topology.closes(&s.address).filter(Closes::settled)?,
                    ),
                };
                Some((s.address.clone(), unusable))
            })
            .collect()
    }

    /// The first server that answers as no wait cures
    /// ([`Self::unusable_servers`]), unlike one that does not answer yet.
    pub fn unusable(&self) -> Option<(String, Unusable)> {
        self.unusable_servers().into_iter().next()
    }

    /// Every server the driver knows, when each answers as no wait cures
    /// ([`Self::unusable_servers`]), so that no command can ever be sent.
    pub fn none_usable(&self) -> Option<Vec<(String, Unusable)>> {
        let known = self.topology.get()?.servers.len();
        let unusable = self.unusable_servers();
        (known > 0 && unusable.len() == known).then_some(unusable)
    }

    /// Ends once a server answers as no wait cures ([`Self::unusable`]),
    /// with its address and how; never otherwise, so it is raced against
    /// a command. The driver does not end a command's server selection for
    /// that: it waits out `serverSelectionTimeoutMS` for the monitor to
    /// find a server it can use. The view is looked at every 100 ms, a
    /// small cost beside that wait.
    pub async fn found_unusable(&self) -> (String, Unusable) {
        loop {
            if let Some(found) = self.unusable() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends once every server the driver knows answers as no wait cures
    /// ([`Self::none_usable`]), with each; never otherwise. `seen` is told
    /// of each such server once, as soon as it is found so, whether or not
    /// the others are.
    pub async fn found_none_usable(
        &self,
        mut seen: impl FnMut(&str, &Unusable),
    ) -> Vec<(String, Unusable)> {
        let mut told = std::collections::BTreeSet::new();
        loop {
            for (address, how) in self.unusable_servers() {
                if told.insert(address.clone()) {
                    seen(&address, &how);
                }
            }
            if let Some(all) = self.none_usable() {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What `closes` says, in words, and what to check: whether TLS is
    /// required on the member (or, when this connection string asks for
    /// TLS, whether it is off there), naming `tls_in`, where the
    /// connection string's `tls=true` is given (`--uri`), or whether the
    /// member is at its connection limit.
    pub fn closes_unanswered(&self, closes: &Closes, tls_in: &str) -> String {
        let seen = format!(
            "connection closed by the peer without a reply, {} times in a row over {} s",
            closes.times,
            closes.over().as_secs()
        );
        let limit = "a mongod at its connection limit (net.maxIncomingConnections) closes new \
                     connections so too";
        if self.tls {
            format!(
                "{seen}: is TLS off on this member? {tls_in} says tls=true, and a mongod \
                 without TLS closes a TLS handshake so; {limit}"
            )
        } else {
            format!(
                "{seen}: is TLS required on this member? simplechat connects without TLS \
                 unless {tls_in} says tls=true (with tlsCAFile=FILE when the members' \
                 certificates come from a private CA); {limit}"
            )
        }
    }

    /// How many times an operation has checked out a pool connection. The
    /// driver sends a command only on a connection it has checked out of
    /// the selected server's pool, after server selection; the handler
    /// counts `ConnectionCheckedOut`, which the pool emits synchronously
    /// before handing the connection over (CMAP:
    /// <https://github.com/mongodb/specifications/blob/master/source/connection-monitoring-and-pooling/connection-monitoring-and-pooling.md#events>).
    /// An operation that ran while this did not move sent nothing.
    pub fn checkouts(&self) -> u64 {
        self.checkouts.load(Ordering::Relaxed)
    }

    /// Hides the password in any text about this connection.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, self.secret.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn store_options_keep_the_uri_and_add_durability_settings() {
        let uri = "mongodb://app:pa%24%24word@127.0.0.1:27017,127.0.0.1:27018/messages?replicaSet=rs&retryWrites=false&serverSelectionTimeoutMS=1500";
        let (mut o, login) = options(uri).await.unwrap();
        assert_eq!(login.secret.as_deref(), Some("pa$$word"));
        tune(&mut o, Purpose::Store);
        assert_eq!(o.retry_writes, Some(true));
        assert_eq!(o.max_pool_size, Some(DEFAULT_MAX_POOL_SIZE));
        assert_eq!(
            o.server_selection_timeout,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(o.connect_timeout, Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(o.repl_set_name.as_deref(), Some("rs"));
        assert_eq!(o.default_database.as_deref(), Some("messages"));
        let conn = connect(o, login, Purpose::Store).unwrap();
        assert_eq!(conn.seeds, ["127.0.0.1:27017", "127.0.0.1:27018"]);
        assert_eq!(conn.scrub("x pa$$word y pa%24%24word"), "x **** y ****");
        assert!(conn.topology.get().is_none() || !conn.topology.get().unwrap().writable);
    }

    #[tokio::test]
    async fn waits_are_bounded_by_the_shorter_of_the_uri_and_the_bound() {
        let (mut o, _) = options("mongodb://h1/?serverSelectionTimeoutMS=1500")
            .await
            .unwrap();
        bound_waits(&mut o, Duration::from_secs(2));
        assert_eq!(
            o.server_selection_timeout,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(o.connect_timeout, Some(Duration::from_secs(2)));
        bound_waits(&mut o, Duration::from_millis(700));
        assert_eq!(o.server_selection_timeout, Some(Duration::from_millis(700)));
        tune(&mut o, Purpose::Direct);
        assert_eq!(o.server_selection_timeout, Some(Duration::from_millis(700)));
    }

    #[tokio::test]
    async fn direct_options_drop_the_set_name() {
        let (mut o, _) = options("mongodb://h1:27017/?replicaSet=rs").await.unwrap();
        tune(&mut o, Purpose::Direct);
        assert_eq!(o.direct_connection, Some(true));
        assert_eq!(o.repl_set_name, None);
        assert_eq!(
            o.server_selection_timeout,
            Some(DEFAULT_SERVER_SELECTION_TIMEOUT)
        );
    }

    /// A real listener that accepts each connection and closes it
    /// unanswered: the driver's monitor finds it so at each check, and
    /// once that has lasted, the server is one no wait cures.
    #[tokio::test]
    async fn a_server_that_closes_every_connection_is_found_unusable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for connection in listener.incoming() {
                drop(connection);
            }
        });
        let (o, login) = options(&format!(
            "mongodb://127.0.0.1:{port}/?directConnection=true"
        ))
        .await
        .unwrap();
        let conn = connect(o, login, Purpose::Direct).unwrap();
        // A command keeps the monitor checking (every half second).
        let admin = conn.client.database("admin");
        let command = admin.run_command(mongodb::bson::doc! { "ping": 1 });
        let found = tokio::select! {
            _ = command => None,
            found = conn.found_none_usable(|_, _| {}) => Some(found),
        };
        let found = found.expect("found before the command's server selection ended");
        assert_eq!(found.len(), 1);
        let (address, how) = &found[0];
        assert_eq!(address, &format!("127.0.0.1:{port}"));
        let Unusable::ClosesUnanswered(closes) = how else {
            panic!("{how:?}");
        };
        assert!(closes.settled(), "{closes:?}");
        let words = conn.closes_unanswered(closes, "--uri");
        assert!(
            words.starts_with("connection closed by the peer without a reply, ")
                && words.contains(
                    "is TLS required on this member? simplechat connects without \
                                   TLS unless --uri says tls=true"
                ),
            "{words}"
        );
    }

    #[tokio::test]
    async fn bad_uri_errors_hide_the_password() {
        let err = options("mongodb://u:hunter22@h1:notaport/db")
            .await
            .err()
            .unwrap();
        assert!(
            err.starts_with("bad MongoDB connection string mongodb://u:****@h1:notaport/db: "),
            "{err}"
        );
        assert!(!err.contains("hunter22"), "{err}");
    }
}
