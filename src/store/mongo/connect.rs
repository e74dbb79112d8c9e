//! Building a driver client from a connection string, and keeping the
//! driver's own view of the replica set for readiness and status.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use mongodb::event::sdam::{SdamEvent, TopologyDescription};
use mongodb::event::EventHandler;
use mongodb::options::{ClientOptions, ServerAddress};
use mongodb::Client;
use mongodb::{ServerType, TopologyType};

use super::errors::{describe, one_line, scrub};

/// Used when the connection string does not choose: short enough that a
/// write retries several times within `write_timeout_secs` and a read during
/// an outage fails fast, long enough for an election's server selection.
pub const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One member as the driver last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSnapshot {
    /// `host:port` as the driver knows it.
    pub address: String,
    /// The driver's server type: RSPrimary, RSSecondary, Unknown, ...
    pub server_type: String,
    /// Why the driver marked it unknown, if it did.
    pub error: Option<String>,
    /// Average heartbeat round trip.
    pub round_trip: Option<Duration>,
}

/// The replica set as the driver last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopologySnapshot {
    pub topology_type: String,
    pub set_name: Option<String>,
    pub writable: bool,
    pub servers: Vec<ServerSnapshot>,
}

impl TopologySnapshot {
    fn from_description(d: &TopologyDescription, secret: Option<&str>) -> Self {
        let mut servers: Vec<ServerSnapshot> = d
            .servers()
            .into_iter()
            .map(|(address, info)| ServerSnapshot {
                address: address_string(address),
                server_type: server_type_name(info.server_type()).to_owned(),
                error: info.error().map(|e| describe(e, secret)),
                round_trip: info.average_round_trip_time(),
            })
            .collect();
        servers.sort_by(|a, b| a.address.cmp(&b.address));
        TopologySnapshot {
            topology_type: topology_type_name(d.topology_type()).to_owned(),
            set_name: d.set_name().cloned(),
            writable: d.has_writable_server(),
            servers,
        }
    }

    pub fn primary(&self) -> Option<&ServerSnapshot> {
        self.servers.iter().find(|s| s.server_type == "RSPrimary")
    }

    /// Why a write could not be accepted now, from what the driver sees.
    pub fn not_writable_reason(&self) -> String {
        let members = self
            .servers
            .iter()
            .map(|s| match &s.error {
                Some(e) => format!("{} unreachable ({e})", s.address),
                None => format!("{} {}", s.address, s.server_type),
            })
            .collect::<Vec<_>>()
            .join("; ");
        let set = self
            .set_name
            .as_deref()
            .map(|n| format!("replica set {n}"))
            .unwrap_or_else(|| "MongoDB".to_owned());
        one_line(&format!("no writable primary in {set}: {members}"))
    }
}

pub fn address_string(address: &ServerAddress) -> String {
    match address {
        ServerAddress::Tcp { host, port } => format!("{host}:{}", port.unwrap_or(27017)),
        other => other.to_string(),
    }
}

fn server_type_name(t: ServerType) -> &'static str {
    match t {
        ServerType::Standalone => "Standalone",
        ServerType::Mongos => "Mongos",
        ServerType::RsPrimary => "RSPrimary",
        ServerType::RsSecondary => "RSSecondary",
        ServerType::RsArbiter => "RSArbiter",
        ServerType::RsOther => "RSOther",
        ServerType::RsGhost => "RSGhost",
        ServerType::LoadBalancer => "LoadBalancer",
        _ => "Unknown",
    }
}

fn topology_type_name(t: TopologyType) -> &'static str {
    match t {
        TopologyType::Single => "Single",
        TopologyType::ReplicaSetNoPrimary => "ReplicaSetNoPrimary",
        TopologyType::ReplicaSetWithPrimary => "ReplicaSetWithPrimary",
        TopologyType::Sharded => "Sharded",
        TopologyType::LoadBalanced => "LoadBalanced",
        _ => "Unknown",
    }
}

/// The driver's latest topology, updated by its monitoring events.
#[derive(Default)]
pub struct TopologyView {
    latest: RwLock<Option<TopologySnapshot>>,
}

impl TopologyView {
    pub fn get(&self) -> Option<TopologySnapshot> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, snapshot: TopologySnapshot) {
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
    }
}

/// A client and what the store needs to know about how it was made.
pub struct Connection {
    pub client: Client,
    pub topology: Arc<TopologyView>,
    /// The password, so that no message can show it.
    pub secret: Option<String>,
    /// The seed list, for messages before the driver has seen anything.
    pub seeds: Vec<String>,
}

/// How a client is tuned beyond what the connection string says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The app's store: the whole replica set.
    Store,
    /// `replset` administration of one member, before a set may exist.
    Direct,
}

/// Parses the connection string and applies simplechat's settings. A
/// `mongodb+srv` string is resolved here (DNS); any other does no I/O.
pub async fn options(uri: &str) -> Result<(ClientOptions, Option<String>), String> {
    let parsed = mongodb::options::ConnectionString::parse(uri);
    if parsed.is_err() && crate::config::uri_password(uri).is_some() {
        // The driver's message may quote pieces of a mangled password.
        return Err(format!(
            "bad MongoDB connection string {}: it does not parse (the reason is withheld \
             as it may quote the password; percent-encode special characters in passwords)",
            crate::config::redact_uri(uri)
        ));
    }
    let secret = parsed
        .ok()
        .and_then(|c| c.credential)
        .and_then(|c| c.password);
    let options = ClientOptions::parse(uri).await.map_err(|e| {
        format!(
            "bad MongoDB connection string {}: {}",
            crate::config::redact_uri(uri),
            describe(&e, secret.as_deref())
        )
    })?;
    Ok((options, secret))
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
        Purpose::Store => options.retry_writes = Some(true),
        Purpose::Direct => {
            options.direct_connection = Some(true);
            options.repl_set_name = None;
        }
    }
}

/// Makes the client. The driver connects in the background, so this
/// returns at once whether or not any server is reachable.
pub fn connect(
    mut options: ClientOptions,
    secret: Option<String>,
    purpose: Purpose,
) -> Result<Connection, String> {
    tune(&mut options, purpose);
    let seeds = options.hosts.iter().map(address_string).collect();
    let topology = Arc::new(TopologyView::default());
    let view = topology.clone();
    let event_secret = secret.clone();
    options.sdam_event_handler = Some(EventHandler::callback(move |event| {
        if let SdamEvent::TopologyDescriptionChanged(change) = event {
            view.set(TopologySnapshot::from_description(
                &change.new_description,
                event_secret.as_deref(),
            ));
        }
    }));
    let client = Client::with_options(options).map_err(|e| {
        format!(
            "cannot create the MongoDB client: {}",
            describe(&e, secret.as_deref())
        )
    })?;
    Ok(Connection {
        client,
        topology,
        secret,
        seeds,
    })
}

impl Connection {
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
        let (mut o, secret) = options(uri).await.unwrap();
        assert_eq!(secret.as_deref(), Some("pa$$word"));
        tune(&mut o, Purpose::Store);
        assert_eq!(o.retry_writes, Some(true));
        assert_eq!(
            o.server_selection_timeout,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(o.connect_timeout, Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(o.repl_set_name.as_deref(), Some("rs"));
        assert_eq!(o.default_database.as_deref(), Some("messages"));
        let conn = connect(o, secret, Purpose::Store).unwrap();
        assert_eq!(conn.seeds, ["127.0.0.1:27017", "127.0.0.1:27018"]);
        assert_eq!(conn.scrub("x pa$$word y pa%24%24word"), "x **** y ****");
        assert!(conn.topology.get().is_none() || !conn.topology.get().unwrap().writable);
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

    #[test]
    fn reason_lists_members() {
        let snap = TopologySnapshot {
            topology_type: "ReplicaSetNoPrimary".into(),
            set_name: Some("rs".into()),
            writable: false,
            servers: vec![
                ServerSnapshot {
                    address: "h1:1".into(),
                    server_type: "Unknown".into(),
                    error: Some("connection refused".into()),
                    round_trip: None,
                },
                ServerSnapshot {
                    address: "h2:2".into(),
                    server_type: "RSSecondary".into(),
                    error: None,
                    round_trip: None,
                },
            ],
        };
        assert_eq!(
            snap.not_writable_reason(),
            "no writable primary in replica set rs: h1:1 unreachable (connection refused); h2:2 RSSecondary"
        );
        assert!(snap.primary().is_none());
    }
}
