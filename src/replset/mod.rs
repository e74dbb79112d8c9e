//! Replica-set administration: `simplechat replset init` (with the app's
//! user), `status`, and `plan`/`apply` (membership changes, in
//! [`reconfig`]).

pub mod config;
pub mod init;
pub mod plan;
pub mod reconfig;
pub mod user;

use std::time::Duration;

use mongodb::options::ServerAddress;
use mongodb::ServerType;

use crate::mongo::client::DEFAULT_SERVER_SELECTION_TIMEOUT;
use crate::mongo::errors::{not_mongodb, Failure};
use crate::mongo::removed::{is_removed, removed_members};
use crate::mongo::topology::address_string;
use crate::mongo::{
    connect, lookup, none_resolves, options, status_of, Connection, Lookup, Purpose,
    ReplicaSetStatus, ServerSnapshot, TopologySnapshot, Unusable,
};

pub use init::Waits;
pub use user::UserRequest;

/// How long a wait may go unannounced: a member that answers at once
/// needs no line, one still starting gets one while it is waited for.
const ANNOUNCE_AFTER: Duration = Duration::from_millis(500);

/// Runs `wait`; if it has not finished after [`ANNOUNCE_AFTER`], calls
/// `say` once (to say what it waits for and how long it may take), then
/// waits on.
async fn announced<T>(wait: impl std::future::Future<Output = T>, say: impl FnOnce()) -> T {
    let mut wait = std::pin::pin!(wait);
    match tokio::time::timeout(ANNOUNCE_AFTER, &mut wait).await {
        Ok(out) => out,
        Err(_) => {
            say();
            wait.await
        }
    }
}

/// What `replset init` is asked to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitRequest {
    /// The replica set's name (mongod's `replSetName`).
    pub name: String,
    /// `host:port` of each member, in member-id order. The first is the one
    /// `init` connects to.
    pub members: Vec<String>,
    /// Connection string whose credentials and options are used for the
    /// direct connection to the first member (its hosts are ignored).
    pub uri: Option<String>,
    /// Bound, in seconds, on each wait: for the members to answer, then for
    /// a primary.
    pub wait_secs: u64,
    /// Accept an even number of voting members.
    pub allow_even: bool,
    /// Accept one or two voting members.
    pub allow_fewer: bool,
    /// The app's database user to create or keep converged, once the set
    /// has a primary.
    pub user: Option<UserRequest>,
}

/// Initiates the replica set if needed and waits for a primary, saying
/// through `progress` what it waits for when a wait does not end at once.
/// Returns a human summary of what it did; errors are one line each.
pub async fn init(request: &InitRequest, progress: &dyn Fn(&str)) -> Result<String, String> {
    init::init(request, Waits::bounded(request.wait_secs), progress).await
}

/// `replset status`: the members, plus the configuration's version and the
/// term when the user may read them (`replSetGetConfig`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    /// Members, states, health, lag.
    #[serde(flatten)]
    pub set: ReplicaSetStatus,
    /// `version` of the installed configuration.
    pub config_version: Option<i64>,
    /// The configuration's term: the term of the primary that installed it
    /// (a new primary bumps it), so the election term in practice.
    pub term: Option<i64>,
}

impl StatusReport {
    /// There is a primary and every member is up as PRIMARY or SECONDARY:
    /// what a rolling restart waits for before the next member (a member
    /// still copying the data, STARTUP2, is up but not yet healthy).
    pub fn healthy(&self) -> bool {
        self.set.primary.is_some()
            && self
                .set
                .members
                .iter()
                .all(|m| m.health > 0.0 && matches!(m.state.as_str(), "PRIMARY" | "SECONDARY"))
    }
}

/// The bound on each of `replset status`'s reads: long enough for the
/// driver to find the members and for a server selection during an
/// election.
const STATUS_WAIT: Duration = Duration::from_secs(10);

/// `d` in whole seconds, rounded up: a wait of 1.5 s is announced as 2.
fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The replica set as `replSetGetStatus` (or the driver) sees it, through
/// the connection string `uri`. A wait for the members that does not end at
/// once is said through `progress`, and when no member answered, each one
/// and why. Errors: a bad string, or nobody answered.
pub async fn status(uri: &str, progress: &dyn Fn(&str)) -> Result<StatusReport, String> {
    let (options, login) = options(uri).await?;
    // How long the driver looks for a member that answers before it gives
    // up on a command (its server selection), as the connection string
    // sets it or simplechat's default.
    let selection = options
        .server_selection_timeout
        .unwrap_or(DEFAULT_SERVER_SELECTION_TIMEOUT)
        .min(STATUS_WAIT);
    // No wait can reach a set none of whose seeds resolves here.
    let named: Vec<_> = options
        .hosts
        .iter()
        .map(|a| (address_string(a), a.clone()))
        .collect();
    if let Some(which) = none_resolves(&named).await {
        return Err(format!(
            "no host in the connection string resolves from this machine: {which}; check the \
             host names, and /etc/hosts or DNS on this machine"
        ));
    }
    let conn = connect(options, login, Purpose::Store)?;
    // Members that answered and refuse the credentials, or are no members
    // of the set named, are said in one line at the end, not waited for.
    // A member that answers as no wait cures is named as soon as it is
    // found so; when every one does, nothing is waited for any more.
    let reading = async {
        tokio::select! {
            result = status_of(&conn, STATUS_WAIT) => Some(result),
            _ = conn.found_none_usable(|address, how| {
                progress(&format!("{address}: {}", unusable(&conn, how)))
            }) => None,
        }
    };
    let result = announced(reading, || {
        if none_answered(conn.topology.get().as_ref()) {
            progress(&format!(
                "waiting up to {} s for a member to answer: {}",
                whole_secs(selection),
                conn.seeds.join(", ")
            ))
        }
    })
    .await;
    let topology = conn.topology.get();
    let cut_short = result.is_none();
    let result = result.unwrap_or_else(|| match &topology {
        Some(t) => Ok(crate::mongo::status::from_topology(
            t,
            "replSetGetStatus was not sent: no member answers as MongoDB",
        )),
        None => Err("no member answers as MongoDB".to_owned()),
    });
    // Every host answers as in no set's configuration: one removed from
    // the set is told apart from one never initiated, which `init` mends.
    if let Some(t) = topology.as_ref().filter(|t| t.not_initiated().is_some()) {
        let mut removed = Vec::new();
        for server in &t.servers {
            if is_removed(uri, &server.address).await {
                removed.push(server.address.clone());
            }
        }
        if !removed.is_empty() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                conn.client.clone().shutdown().immediate(true),
            )
            .await;
            return Err(removed_members(&removed));
        }
    }
    // The view can trail the driver (see `TopologyView`): a status the
    // set itself sent is an answer whatever the view shows yet.
    let answered = matches!(&result, Ok(set) if set.source == crate::mongo::status::SOURCE_COMMAND)
        || !none_answered(topology.as_ref());
    // With no member answering, the configuration would only be waited
    // for as long again.
    let config = if answered {
        tokio::time::timeout(
            STATUS_WAIT,
            conn.client
                .database("admin")
                .run_command(mongodb::bson::doc! { "replSetGetConfig": 1 })
                .selection_criteria(mongodb::options::SelectionCriteria::ReadPreference(
                    mongodb::options::ReadPreference::PrimaryPreferred { options: None },
                )),
        )
        .await
        .ok()
        .and_then(Result::ok)
    } else {
        None
    };
    // Cut short, each member was named as it was found.
    if let Some(t) = topology.filter(|t| !answered && !cut_short && !t.servers.is_empty()) {
        progress(&format!(
            "no member answered within {} s:",
            whole_secs(selection)
        ));
        for line in silent_members(&t).await {
            progress(&line);
        }
    }
    let number = |d: &mongodb::bson::Document, key: &str| match d.get(key) {
        Some(mongodb::bson::Bson::Int32(v)) => Some(i64::from(*v)),
        Some(mongodb::bson::Bson::Int64(v)) => Some(*v),
        _ => None,
    };
    let (config_version, term) = match config.as_ref().and_then(|r| r.get_document("config").ok()) {
        Some(c) => (number(c, "version"), number(c, "term")),
        None => (None, None),
    };
    let result = result.map(|set| StatusReport {
        set,
        config_version,
        term,
    });
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        conn.client.clone().shutdown().immediate(true),
    )
    .await;
    result
}

/// How a member answers that no wait cures, in words, with what to
/// check.
fn unusable(conn: &Connection, how: &Unusable) -> String {
    match how {
        Unusable::NotMongoDb(what) => not_mongodb(what),
        Unusable::ClosesUnanswered(closes) => {
            conn.closes_unanswered(closes, "the connection string")
        }
    }
}

/// Whether no member has answered the driver: it has described none yet,
/// or every one it knows is unknown for another reason than a refused
/// login. Hosts that all answered as no member of the set named were
/// dropped (an empty list), so they answered.
fn none_answered(t: Option<&TopologySnapshot>) -> bool {
    t.is_none_or(|t| {
        t.auth_failure.is_none()
            && !t.servers.is_empty()
            && t.servers
                .iter()
                .all(|s| s.server_type == ServerType::Unknown && !s.login_refused)
    })
}

/// One line for each member of `t`, saying why it did not answer, in the
/// terms an operator acts on: a name the resolver says does not exist here
/// (asked again, as the driver's text for it is only an I/O error), a
/// refused connection, a timeout, or the driver's own words.
async fn silent_members(t: &TopologySnapshot) -> Vec<String> {
    let lines = t.servers.iter().map(|s| async move {
        let unresolved = match ServerAddress::parse(&s.address) {
            Ok(address) => match lookup(&address).await {
                Lookup::NoSuchName(why) => Some(why),
                _ => None,
            },
            Err(_) => None,
        };
        format!("  {}: {}", s.address, silence(s, unresolved))
    });
    futures::future::join_all(lines).await
}

/// Why `s` did not answer; `unresolved` is the resolver's answer when it
/// says the name does not exist.
fn silence(s: &ServerSnapshot, unresolved: Option<String>) -> String {
    if let Some(why) = unresolved {
        return format!(
            "its name does not resolve from this machine ({why}): check its spelling, and \
             /etc/hosts or DNS here"
        );
    }
    match (&s.failure, &s.error) {
        (Some(Failure::Refused), _) => {
            "connection refused: nothing listens on that port (is mongod running, on that \
             port?), or a firewall refuses it"
                .to_owned()
        }
        (Some(Failure::NotMongoDb(what)), _) => not_mongodb(what),
        (Some(Failure::Closed), Some(error)) => format!(
            "connection closed by the peer without a reply ({error}): a mongod that requires \
             TLS does that to a client without it, one stopping once"
        ),
        (Some(Failure::TimedOut), _) => {
            "timed out: no answer within the connect timeout (a host that is down, a firewall \
             that drops the packets, or a program that accepts connections and never answers)"
                .to_owned()
        }
        (_, Some(error)) => error.clone(),
        (_, None) => "no answer yet".to_owned(),
    }
}

/// A readable table of a replica set's members, with the configuration
/// version and term when known.
pub fn render_report(report: &StatusReport) -> String {
    let mut out = render_status(&report.set);
    let shown = |v: Option<i64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
    out.push_str(&format!(
        "  configuration version {}, term {}\n",
        shown(report.config_version),
        shown(report.term)
    ));
    out
}

/// A readable table of a replica set's members.
pub fn render_status(status: &ReplicaSetStatus) -> String {
    let mut out = format!(
        "replica set {}  primary: {}  (from {})\n",
        status.name,
        status.primary.as_deref().unwrap_or("(none)"),
        status.source
    );
    for m in &status.members {
        let lag = m
            .lag_secs
            .map(|l| format!("{l:.1}s"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "  {:<28} {:<26} health {}  lag {}\n",
            m.name, m.state, m.health, lag
        ));
        if let Some(error) = &m.error {
            out.push_str(&format!("    {error}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mongo::MemberStatus;

    fn report(primary: Option<&str>, members: &[(&str, f64)]) -> StatusReport {
        StatusReport {
            set: ReplicaSetStatus {
                name: "rs".into(),
                primary: primary.map(str::to_owned),
                members: members
                    .iter()
                    .enumerate()
                    .map(|(i, (state, health))| MemberStatus {
                        name: format!("h{i}:27017"),
                        state: (*state).into(),
                        health: *health,
                        lag_secs: None,
                        error: None,
                    })
                    .collect(),
                source: SOURCE.into(),
            },
            config_version: Some(1),
            term: Some(1),
        }
    }

    const SOURCE: &str = crate::mongo::status::SOURCE_COMMAND;

    #[test]
    fn healthy_is_a_primary_and_every_member_up() {
        let up = [("PRIMARY", 1.0), ("SECONDARY", 1.0), ("SECONDARY", 1.0)];
        assert!(report(Some("h0:27017"), &up).healthy());
        assert!(!report(None, &up).healthy());
        let one_down = [
            ("PRIMARY", 1.0),
            ("SECONDARY", 1.0),
            ("(not reachable/healthy)", 0.0),
        ];
        assert!(!report(Some("h0:27017"), &one_down).healthy());
        let syncing = [("PRIMARY", 1.0), ("SECONDARY", 1.0), ("STARTUP2", 1.0)];
        assert!(!report(Some("h0:27017"), &syncing).healthy());
        let none = [("(not reachable/healthy)", 0.0)];
        assert!(!report(None, &none).healthy());
    }

    #[test]
    fn the_table_says_why_a_member_is_not_reachable() {
        let mut status = report(None, &[("(not reachable/healthy)", 0.0)]).set;
        status.members[0].error = Some("I/O error: Connection refused".into());
        let table = render_status(&status);
        assert!(
            table.contains("h0:27017") && table.contains("\n    I/O error: Connection refused\n"),
            "{table}"
        );
    }
}
