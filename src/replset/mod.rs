//! Replica-set administration: `simplechat replset init` and `status`.

use crate::store::ReplicaSetStatus;

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
}

/// Initiates the replica set if needed and waits for a primary.
pub async fn init(_request: &InitRequest) -> Result<String, String> {
    Err("replset init needs the MongoDB store, which this build does not have yet".into())
}

/// The replica set as `replSetGetStatus` (or the driver) sees it.
pub async fn status(_uri: &str) -> Result<ReplicaSetStatus, String> {
    Err("replset status needs the MongoDB store, which this build does not have yet".into())
}

/// A readable table of a replica set's members.
pub fn render_status(status: &ReplicaSetStatus) -> String {
    let mut out = format!(
        "replica set {}  primary: {}\n",
        status.name,
        status.primary.as_deref().unwrap_or("(none)")
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
    }
    out
}
