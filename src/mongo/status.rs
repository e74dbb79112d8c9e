//! The replica set's members, state, health and lag: from `replSetGetStatus`
//! when the user may run it, otherwise from what the driver sees.

use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ReadPreference, SelectionCriteria};
use mongodb::ServerType;
use serde::{Deserialize, Serialize};

use super::client::Connection;
use super::errors::{check_credentials, codes, command_code, reason, Signals};
use super::topology::TopologySnapshot;
use crate::text::one_line;

/// `ReplicaSetStatus::source` when the figures come from the server.
pub const SOURCE_COMMAND: &str = "replSetGetStatus";

/// The replica set as `/api/status` and `simplechat replset status` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaSetStatus {
    /// The set's name (mongod's `replSetName`).
    pub name: String,
    /// `host:port` of the primary, if there is one.
    pub primary: Option<String>,
    /// Every member, in the order the source lists them.
    pub members: Vec<MemberStatus>,
    /// Where the figures came from: `replSetGetStatus`, or the driver's view
    /// of the topology (with why) when the user may not run that command.
    pub source: String,
}

/// One member of the replica set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberStatus {
    /// `host:port` as the configuration names it.
    pub name: String,
    /// PRIMARY, SECONDARY, (not reachable/healthy), ... as mongod names them.
    pub state: String,
    /// 1 when the member is up, 0 when it is not (mongod's `health`).
    pub health: f64,
    /// Seconds this member's last applied write trails the primary's.
    pub lag_secs: Option<f64>,
    /// Why it is not reachable, when known: the driver's last error for it
    /// (password scrubbed) or mongod's `lastHeartbeatMessage`. Left out of
    /// the JSON when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Asks any member (the primary if there is one) for `replSetGetStatus`;
/// falls back to the driver's topology when that is refused or times out.
/// Credentials the set refuses are an error: `simplechat replset status`
/// was given them to read the set, and says so.
pub async fn status_of(conn: &Connection, bound: Duration) -> Result<ReplicaSetStatus, String> {
    match ask(conn, bound).await {
        Asked::Status(status) => Ok(status),
        Asked::Refused(why) => Err(refused(&why, conn.topology.user_database())),
        Asked::Failed(why) => Err(why),
    }
}

/// Like [`status_of`], for the app, which keeps serving while the set
/// refuses its credentials: then the members as their heartbeats (which
/// need no credentials) last described them, with no lag, and nothing is
/// sent while the refusal stands (a login the set refuses would only mark
/// another member unknown in the driver's view).
pub async fn status_while_serving(
    conn: &Connection,
    bound: Duration,
) -> Result<ReplicaSetStatus, String> {
    let known = conn.topology.get().and_then(|t| t.auth_failure);
    let why = match known {
        Some(why) => why,
        None => match ask(conn, bound).await {
            Asked::Status(status) => return Ok(status),
            Asked::Refused(why) => why,
            Asked::Failed(why) => return Err(why),
        },
    };
    match conn.topology.get() {
        Some(topology) if !topology.members.is_empty() => Ok(from_topology(
            &topology,
            &one_line(&format!(
                "MongoDB refused to authenticate this app ({}); each member as its \
                 heartbeats last saw it",
                authentication_failed(&why)
            )),
        )),
        _ => Err(refused(&why, conn.topology.user_database())),
    }
}

/// What asking for `replSetGetStatus` gave.
enum Asked {
    /// The members, from the server or, when it may not tell, the driver.
    Status(ReplicaSetStatus),
    /// The set refused the credentials (why, without the password).
    Refused(String),
    /// Nothing to show: no member answered, none belongs to the set, or
    /// the reply could not be read.
    Failed(String),
}

async fn ask(conn: &Connection, bound: Duration) -> Asked {
    let admin = conn.client.database("admin");
    let command = admin
        .run_command(doc! { "replSetGetStatus": 1 })
        .selection_criteria(SelectionCriteria::ReadPreference(
            ReadPreference::PrimaryPreferred { options: None },
        ));
    let why = match tokio::time::timeout(bound, command).await {
        Ok(Ok(reply)) => {
            return match parse_status(&reply) {
                Ok(status) => Asked::Status(status),
                Err(why) => Asked::Failed(why),
            }
        }
        // Refused credentials are no member's health: the driver marks the
        // member a refused connection went to as unknown until its next
        // heartbeat (see `TopologyView::set`).
        Ok(Err(e)) if Signals::of(&e).authentication => {
            // What reads the view next must already know a member answered.
            let why = conn
                .note_refused_login(&e)
                .unwrap_or_else(|| reason(&e, conn.secret.as_deref()));
            return Asked::Refused(why);
        }
        Ok(Err(e)) if command_code(&e) == Some(codes::UNAUTHORIZED) => {
            "not authorized to run replSetGetStatus".to_owned()
        }
        // The driver's own words ("Server selection timeout: No available
        // servers") say nothing the members' lines below do not say better.
        Ok(Err(e)) if Signals::of(&e).server_selection => conn
            .not_initiated()
            .unwrap_or_else(|| "replSetGetStatus was not sent: no member answered".to_owned()),
        Ok(Err(e)) => format!(
            "replSetGetStatus failed: {}",
            reason(&e, conn.secret.as_deref())
        ),
        // Still in server selection when no member has answered: the
        // command never left, and "did not answer" would blame a server.
        Err(_) => match conn.topology.get() {
            Some(t)
                if t.servers
                    .iter()
                    .all(|s| s.server_type == ServerType::Unknown) =>
            {
                format!(
                    "replSetGetStatus was not sent: no member answered within {} s",
                    bound.as_secs()
                )
            }
            _ => format!(
                "replSetGetStatus did not answer within {} s",
                bound.as_secs()
            ),
        },
    };
    match conn.topology.get() {
        Some(TopologySnapshot {
            auth_failure: Some(why),
            ..
        }) => Asked::Refused(why),
        Some(topology) if !topology.members.is_empty() => {
            Asked::Status(from_topology(&topology, &why))
        }
        Some(topology) => Asked::Failed(topology.no_member_of_the_set().unwrap_or(why)),
        None => Asked::Failed(why),
    }
}

/// The one line for credentials the set refused: `why` is the driver's
/// reason, already `authentication failed: ...` and without the password;
/// `user_database` where the user is looked up, when the connection string
/// left it to its path.
fn refused(why: &str, user_database: Option<&str>) -> String {
    one_line(&format!(
        "{}: {}",
        authentication_failed(why).trim_end_matches('.'),
        check_credentials(user_database)
    ))
}

/// `why` as `authentication failed: ...`.
fn authentication_failed(why: &str) -> String {
    if why.starts_with("authentication failed") {
        why.to_owned()
    } else {
        format!("authentication failed: {why}")
    }
}

fn number(v: Option<&Bson>) -> Option<f64> {
    match v? {
        Bson::Double(d) => Some(*d),
        Bson::Int32(i) => Some(f64::from(*i)),
        // Counts in replSetGetStatus are far below 2^53.
        Bson::Int64(i) => Some(*i as f64),
        _ => None,
    }
}

/// Reads a `replSetGetStatus` reply. Lag is measured against the primary's
/// last applied operation, or the freshest member's when there is no primary.
pub fn parse_status(reply: &Document) -> Result<ReplicaSetStatus, String> {
    let name = reply
        .get_str("set")
        .map_err(|_| "replSetGetStatus answered without a set name".to_owned())?
        .to_owned();
    let members = reply
        .get_array("members")
        .map_err(|_| "replSetGetStatus answered without members".to_owned())?;
    struct Raw {
        name: String,
        state: String,
        health: f64,
        optime_ms: Option<i64>,
        error: Option<String>,
    }
    let raw: Vec<Raw> = members
        .iter()
        .filter_map(Bson::as_document)
        .map(|m| Raw {
            name: m.get_str("name").unwrap_or("?").to_owned(),
            error: m
                .get_str("lastHeartbeatMessage")
                .ok()
                .filter(|message| !message.is_empty())
                .map(str::to_owned),
            state: m.get_str("stateStr").unwrap_or("UNKNOWN").to_owned(),
            health: number(m.get("health")).unwrap_or(0.0),
            // An unreachable member reports the epoch: no information.
            optime_ms: m
                .get_datetime("optimeDate")
                .ok()
                .map(|d| d.timestamp_millis())
                .filter(|ms| *ms > 0),
        })
        .collect();
    let primary = raw.iter().find(|m| m.state == "PRIMARY");
    let reference = primary.and_then(|p| p.optime_ms).or_else(|| {
        raw.iter()
            .filter(|m| m.health > 0.0)
            .filter_map(|m| m.optime_ms)
            .max()
    });
    let primary_name = primary.map(|p| p.name.clone());
    let members = raw
        .into_iter()
        .map(|m| {
            let lag_secs = match (reference, m.optime_ms) {
                (Some(r), Some(o)) if m.health > 0.0 => Some(((r - o).max(0)) as f64 / 1000.0),
                _ => None,
            };
            MemberStatus {
                name: m.name,
                state: m.state,
                health: m.health,
                lag_secs,
                error: m.error,
            }
        })
        .collect();
    Ok(ReplicaSetStatus {
        name,
        primary: primary_name,
        members,
        source: SOURCE_COMMAND.to_owned(),
    })
}

/// The members as the driver's monitors last described them: no lag, and
/// health means "its last heartbeat reached it" (a member the driver marked
/// unknown only because a login to it was refused shows what its last
/// heartbeat said: [`TopologySnapshot::members`]).
pub fn from_topology(t: &TopologySnapshot, why: &str) -> ReplicaSetStatus {
    let members = t
        .members
        .iter()
        .map(|s| {
            let state = match s.server_type {
                ServerType::RsPrimary => "PRIMARY",
                ServerType::RsSecondary => "SECONDARY",
                ServerType::RsArbiter => "ARBITER",
                ServerType::RsOther => "OTHER",
                ServerType::RsGhost => "REMOVED or not initiated",
                ServerType::Standalone => "STANDALONE",
                _ if s.error.is_some() => "(not reachable/healthy)",
                _ => "UNKNOWN",
            };
            let reachable = s.error.is_none() && s.server_type != ServerType::Unknown;
            MemberStatus {
                name: s.address.clone(),
                state: state.to_owned(),
                health: if reachable { 1.0 } else { 0.0 },
                lag_secs: None,
                error: s.error.clone(),
            }
        })
        .collect();
    ReplicaSetStatus {
        name: t.set_name.clone().unwrap_or_else(|| "(unknown)".to_owned()),
        primary: t
            .members
            .iter()
            .find(|s| s.server_type == ServerType::RsPrimary)
            .map(|p| p.address.clone()),
        members,
        source: format!("driver topology ({why})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mongo::ServerSnapshot;
    use mongodb::bson::DateTime;

    /// Shaped like the lab report's `rs.status()` after the primary died.
    fn reply() -> Document {
        doc! {
            "set": "rs",
            "date": DateTime::from_millis(1_700_000_010_000),
            "myState": 1,
            "members": [
                { "_id": 0, "name": "storage1.local:27017", "health": 0.0, "state": 8,
                  "stateStr": "(not reachable/healthy)", "optimeDate": DateTime::from_millis(0),
                  "lastHeartbeatMessage": "Couldn't get a connection within the time limit" },
                { "_id": 1, "name": "storage2.local:27017", "health": 1.0, "state": 1,
                  "stateStr": "PRIMARY", "optimeDate": DateTime::from_millis(1_700_000_010_000), "self": true },
                { "_id": 2, "name": "storage3.local:27017", "health": 1, "state": 2,
                  "stateStr": "SECONDARY", "optimeDate": DateTime::from_millis(1_700_000_007_500) },
            ],
            "ok": 1.0,
        }
    }

    #[test]
    fn parses_members_primary_and_lag() {
        let s = parse_status(&reply()).unwrap();
        assert_eq!(s.name, "rs");
        assert_eq!(s.primary.as_deref(), Some("storage2.local:27017"));
        assert_eq!(s.source, "replSetGetStatus");
        assert_eq!(s.members.len(), 3);
        assert_eq!(s.members[0].state, "(not reachable/healthy)");
        assert_eq!(
            s.members[0].error.as_deref(),
            Some("Couldn't get a connection within the time limit")
        );
        assert_eq!(s.members[1].error, None);
        assert_eq!(s.members[0].health, 0.0);
        assert_eq!(s.members[0].lag_secs, None);
        assert_eq!(s.members[1].lag_secs, Some(0.0));
        assert_eq!(s.members[2].health, 1.0);
        assert_eq!(s.members[2].lag_secs, Some(2.5));
    }

    #[test]
    fn lag_without_a_primary_is_against_the_freshest_member() {
        let mut r = reply();
        let members = r.get_array_mut("members").unwrap();
        if let Some(Bson::Document(m)) = members.get_mut(1) {
            m.insert("stateStr", "SECONDARY");
        }
        let s = parse_status(&r).unwrap();
        assert_eq!(s.primary, None);
        assert_eq!(s.members[1].lag_secs, Some(0.0));
        assert_eq!(s.members[2].lag_secs, Some(2.5));
    }

    #[test]
    fn malformed_reply_is_an_error() {
        assert!(parse_status(&doc! { "ok": 1 }).is_err());
    }

    #[test]
    fn topology_fallback_names_states_and_why() {
        let servers = vec![
            ServerSnapshot {
                address: "a:1".into(),
                server_type: ServerType::RsPrimary,
                error: None,
                login_refused: false,
                failure: None,
            },
            ServerSnapshot {
                address: "b:1".into(),
                server_type: ServerType::Unknown,
                error: Some("connection refused".into()),
                login_refused: false,
                failure: None,
            },
        ];
        let t = TopologySnapshot {
            set_name: Some("rs".into()),
            writable: true,
            members: servers.clone(),
            servers,
            auth_failure: None,
            awaiting_authentication: false,
            direct: false,
            user_database: None,
        };
        let s = from_topology(&t, "not authorized to run replSetGetStatus");
        assert_eq!(s.primary.as_deref(), Some("a:1"));
        assert_eq!(s.members[0].state, "PRIMARY");
        assert_eq!(s.members[1].state, "(not reachable/healthy)");
        assert_eq!(s.members[1].health, 0.0);
        // Why, for someone who asked `replset status` with no member up.
        assert_eq!(s.members[1].error.as_deref(), Some("connection refused"));
        assert_eq!(s.members[0].error, None);
        assert_eq!(
            s.source,
            "driver topology (not authorized to run replSetGetStatus)"
        );
    }
}
