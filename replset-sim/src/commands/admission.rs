//! Checks that run before a command does its work: access control (with a
//! key), whether this member's role lets it serve a read (primary, or
//! secondary with a non-primary read preference), whether an admin command
//! was sent to `admin`, and the causal-consistency wait for
//! `readConcern.afterClusterTime`.

use std::time::Instant;

use bson::{Bson, Document};

use super::args::{get_doc, max_time};
use super::{wait_for, Ctx, Fail};
use crate::auth::{self, Need};
use crate::error::CmdError;
use crate::state::{Role, State};

/// Access control, when the cluster has a key: mongod's `Unauthorized` (13),
/// worded "command <name> requires authentication" for a connection that
/// has not authenticated and "not authorized on <db> to execute command"
/// for a user that lacks the privilege. While no user exists, a loopback
/// connection may do what the localhost exception allows
/// (<https://www.mongodb.com/docs/manual/core/localhost-exception/>).
pub(super) fn authorize(ctx: &Ctx<'_>, name: &str, db: &str, body: &Document) -> Result<(), Fail> {
    let need = auth::need(name, db, body);
    if need == Need::Nothing {
        return Ok(());
    }
    let principal = ctx.principal();
    let st = ctx.shared.lock();
    if !st.users.enforced() {
        return Ok(());
    }
    let allowed = match (&principal, &need) {
        (None, need) => {
            !st.remote_clients && st.users.is_empty() && need.localhost_exception_covers()
        }
        (Some(_), Need::Authenticated | Need::Nothing) => true,
        (Some(p), Need::Privilege(action, resource)) => st.users.allows(p, *action, resource),
    };
    if allowed {
        return Ok(());
    }
    let msg = match principal {
        None => format!("command {name} requires authentication"),
        Some(_) => format!("not authorized on {db} to execute command {{ {name}: ... }}"),
    };
    Err(CmdError::new(13, "Unauthorized", msg).into())
}

/// `Ok` when `db` is `admin`, else mongod's `Unauthorized` (13) for `name`.
pub(super) fn admin_only(name: &str, db: &str) -> Result<(), Fail> {
    if db == "admin" {
        Ok(())
    } else {
        Err(CmdError::admin_only(name).into())
    }
}

/// mongod treats any `$readPreference` other than primary as secondaryOk.
fn secondary_ok(body: &Document) -> bool {
    body.get_document("$readPreference")
        .ok()
        .and_then(|rp| rp.get_str("mode").ok())
        .is_some_and(|m| m != "primary")
}

/// Whether `member` may serve a read in its current role: a primary always,
/// a secondary only with secondaryOk (`NotPrimaryNoSecondaryOk` 13435), an
/// uninitiated or down member never (`NotPrimaryOrSecondary` 13436).
pub(super) fn check_readable(st: &State, member: usize, body: &Document) -> Result<(), CmdError> {
    match st.role(member) {
        Role::Primary => Ok(()),
        Role::Secondary if secondary_ok(body) => Ok(()),
        Role::Secondary => Err(CmdError::not_primary_no_secondary_ok()),
        Role::Ghost | Role::Removed | Role::Startup2 | Role::Down => {
            Err(CmdError::not_primary_or_secondary())
        }
    }
}

/// Reads with `afterClusterTime` wait until this member has applied that
/// point, as causally consistent reads on a lagged secondary do in mongod.
/// Bounded by `maxTimeMS` (`MaxTimeMSExpired` 50); a time the cluster has
/// not reached yet does not wait.
pub(super) async fn wait_after_cluster_time(
    ctx: &Ctx<'_>,
    body: &Document,
) -> Result<(), CmdError> {
    let Some(rc) = get_doc(body, "readConcern")? else {
        return Ok(());
    };
    let Some(Bson::Timestamp(after)) = rc.get("afterClusterTime").cloned() else {
        return Ok(());
    };
    let deadline = max_time(body)?.map(|d| Instant::now() + d);
    let member = ctx.member;
    let ok = wait_for(ctx, deadline, |st, now| {
        let len = st.visible_len(member, now);
        let ts = st.last_optime(len).0;
        (ts.time, ts.increment) >= (after.time, after.increment)
            || st.last_ts.time < after.time
            || (st.last_ts.time == after.time && st.last_ts.increment < after.increment)
    })
    .await;
    if ok {
        Ok(())
    } else {
        Err(CmdError::new(
            50,
            "MaxTimeMSExpired",
            "operation exceeded time limit",
        ))
    }
}
