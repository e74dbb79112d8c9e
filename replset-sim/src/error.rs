//! Command errors in mongod's reply shape (`ok: 0`, `errmsg`, `code`,
//! `codeName`, `errorLabels`), because the driver's retry, SDAM and
//! change-stream resume logic key on exactly those fields.

#[derive(Debug, Clone)]
pub(crate) struct CmdError {
    pub code: i32,
    pub code_name: &'static str,
    pub msg: String,
    pub labels: Vec<&'static str>,
    /// State-change errors carry the node's topologyVersion so the driver can
    /// discard stale ones (SDAM "error handling" rules).
    pub with_topology_version: bool,
    /// Extra fields mongod adds for this error (e.g. `keyPattern`/`keyValue`).
    pub extra: Option<Box<bson::Document>>,
}

impl CmdError {
    pub fn new(code: i32, code_name: &'static str, msg: impl Into<String>) -> Self {
        CmdError {
            code,
            code_name,
            msg: msg.into(),
            labels: Vec::new(),
            with_topology_version: false,
            extra: None,
        }
    }

    pub fn not_writable_primary(retryable_write: bool) -> Self {
        let mut e = CmdError::new(10107, "NotWritablePrimary", "not primary");
        e.with_topology_version = true;
        if retryable_write {
            e.labels.push("RetryableWriteError");
        }
        e
    }

    pub fn not_primary_no_secondary_ok() -> Self {
        let mut e = CmdError::new(
            13435,
            "NotPrimaryNoSecondaryOk",
            "not primary and secondaryOk=false",
        );
        e.with_topology_version = true;
        e
    }

    pub fn not_primary_or_secondary() -> Self {
        let mut e = CmdError::new(
            13436,
            "NotPrimaryOrSecondary",
            "node is not in primary or recovering state",
        );
        e.with_topology_version = true;
        e
    }

    pub fn bad_value(msg: impl Into<String>) -> Self {
        CmdError::new(2, "BadValue", msg)
    }

    pub fn failed_to_parse(msg: impl Into<String>) -> Self {
        CmdError::new(9, "FailedToParse", msg)
    }

    pub fn type_mismatch(msg: impl Into<String>) -> Self {
        CmdError::new(14, "TypeMismatch", msg)
    }

    pub fn not_yet_initialized() -> Self {
        CmdError::new(
            94,
            "NotYetInitialized",
            "no replset config has been received",
        )
    }

    pub fn admin_only(cmd: &str) -> Self {
        CmdError::new(
            13,
            "Unauthorized",
            format!("{cmd} may only be run against the admin database."),
        )
    }
}
