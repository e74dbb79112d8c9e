//! The driver's own view of the replica set, kept current by its monitoring
//! (SDAM) events: what readiness and the status fallback are decided from.

use std::sync::RwLock;

use mongodb::event::sdam::TopologyDescription;
use mongodb::options::ServerAddress;
use mongodb::ServerType;

use super::errors::reason;
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
}

/// The replica set as the driver last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopologySnapshot {
    /// The replica set's name, once a member has told it.
    pub set_name: Option<String>,
    /// Whether a write could be sent now (there is a primary).
    pub writable: bool,
    /// Every known member, sorted by address.
    pub servers: Vec<ServerSnapshot>,
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
            })
            .collect();
        servers.sort_by(|a, b| a.address.cmp(&b.address));
        TopologySnapshot {
            set_name: d.set_name().cloned(),
            writable: d.has_writable_server(),
            servers,
        }
    }

    /// The member the driver takes for the primary, if any.
    pub fn primary(&self) -> Option<&ServerSnapshot> {
        self.servers
            .iter()
            .find(|s| s.server_type == ServerType::RsPrimary)
    }

    /// Why a write could not be accepted now, from what the driver sees, as
    /// one line naming every member.
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

/// `host:port`, with MongoDB's default port made explicit.
pub fn address_string(address: &ServerAddress) -> String {
    match address {
        ServerAddress::Tcp { host, port } => format!("{host}:{}", port.unwrap_or(27017)),
        other => other.to_string(),
    }
}

/// The driver's latest topology, written by its monitoring callback and
/// read by request handlers. A std `RwLock`: it is held only to copy a
/// snapshot, never across an `.await`.
#[derive(Default)]
pub struct TopologyView {
    latest: RwLock<Option<TopologySnapshot>>,
}

impl TopologyView {
    /// The latest snapshot; `None` until the driver has described anything.
    pub fn get(&self) -> Option<TopologySnapshot> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set(&self, snapshot: TopologySnapshot) {
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_lists_members() {
        let snap = TopologySnapshot {
            set_name: Some("rs".into()),
            writable: false,
            servers: vec![
                ServerSnapshot {
                    address: "h1:1".into(),
                    server_type: ServerType::Unknown,
                    error: Some("connection refused".into()),
                },
                ServerSnapshot {
                    address: "h2:2".into(),
                    server_type: ServerType::RsSecondary,
                    error: None,
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
