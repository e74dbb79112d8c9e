//! `replSetReconfig` and `replSetStepDown`, with mongod 4.4+'s rules for a
//! non-force reconfig (`validateConfigForReconfig` and
//! `_doReplSetReconfig` in mongod's `repl_set_config_checks.cpp` and
//! `replication_coordinator_impl.cpp`;
//! <https://www.mongodb.com/docs/manual/reference/command/replSetReconfig/>):
//!
//! - only on the primary, and only once the current config is committed
//!   (a majority of voters installed it): else `CurrentConfigNotCommittedYet`
//!   (308) after `maxTimeMS`;
//! - `(version, term)` must grow (the primary replaces `term` with its own),
//!   the set name and `replicaSetId` must stay, a host keeps its `_id`:
//!   `NewReplicaSetConfigurationIncompatible` (103);
//! - a new member with votes gets `newlyAdded` from the server and does not
//!   vote until it has caught up; the voting members may then change by at
//!   most one: `InvalidReplicaSetConfig` (93), as are duplicate hosts or ids
//!   and more than 7 voters;
//! - the primary must be in the new config (`NodeNotFound` 74) and
//!   electable (`NodeNotElectable` 104), and a majority of the new config's
//!   voters must answer (`NodeNotFound` 74, mongod's quorum check).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};

use super::args::{get_int, max_time};
use super::replset::{invalid_config, resolve_host};
use super::{wait_for, CmdResult, Ctx, Fail};
use crate::error::CmdError;
use crate::state::{Config, ConfigMember, Role, State};

/// mongod's limits (`ReplSetConfig::kMaxMembers`, `kMaxVotingMembers`).
const MAX_MEMBERS: usize = 50;
const MAX_VOTING_MEMBERS: usize = 7;

fn incompatible(msg: String) -> CmdError {
    CmdError::new(103, "NewReplicaSetConfigurationIncompatible", msg)
}

fn not_primary(msg: impl Into<String>) -> Fail {
    let mut e = CmdError::not_writable_primary(false);
    e.msg = msg.into();
    e.into()
}

fn version_and_term(version: i64, term: i64) -> String {
    format!("{{version: {version}, term: {term}}}")
}

/// `replSetReconfig: <config>` with optional `maxTimeMS`. `force: true` is
/// refused (`BadValue` 2): the simulator only does safe reconfigs.
pub(super) async fn reconfig(ctx: &Ctx<'_>, body: &Document) -> CmdResult {
    if body.get_bool("force").unwrap_or(false) {
        return Err(CmdError::bad_value(
            "replSetReconfig with force: true is not supported by the simulator",
        )
        .into());
    }
    let proposed = match body.get("replSetReconfig") {
        Some(Bson::Document(d)) => d.clone(),
        _ => return Err(CmdError::type_mismatch("replSetReconfig must be an object").into()),
    };
    let deadline = max_time(body)?.map(|d| Instant::now() + d);
    let member = ctx.member;
    {
        let st = ctx.shared.lock();
        let role = st.role(member);
        if role != Role::Primary {
            return Err(not_primary(format!(
                "replSetReconfig should only be run on a writable PRIMARY. Current state {};",
                role.state_str()
            )));
        }
    }
    let committed = wait_for(ctx, deadline, |st, _| {
        st.config_committed() || st.role(member) != Role::Primary
    })
    .await;
    let mut st = ctx.shared.lock();
    if st.role(member) != Role::Primary {
        return Err(not_primary("replSetReconfig: no longer primary"));
    }
    let old = st
        .config
        .clone()
        .ok_or_else(CmdError::not_yet_initialized)?;
    if !committed {
        return Err(CmdError::new(
            308,
            "CurrentConfigNotCommittedYet",
            format!(
                "Cannot run replSetReconfig because the current config: {} is not yet committed.",
                version_and_term(i64::from(old.version), old.term)
            ),
        )
        .into());
    }
    let new = validate(&st, &old, &proposed, member)?;
    let joining: Vec<usize> = new
        .members
        .iter()
        .map(|m| m.member)
        .filter(|m| !st.members[*m].synced)
        .collect();
    st.install_config(new);
    for m in joining {
        ctx.shared.schedule_sync(&mut st, m);
    }
    st.clear_newly_added();
    if st.check_quorum() {
        ctx.shared.schedule_election(&mut st);
    }
    drop(st);
    ctx.shared.notify();
    Ok(doc! {"ok": 1.0})
}

/// A number field as f64 (mongod accepts any numeric type for `priority`).
fn number(d: &Document, key: &str) -> Result<Option<f64>, CmdError> {
    match d.get(key) {
        None => Ok(None),
        Some(Bson::Double(v)) => Ok(Some(*v)),
        Some(Bson::Int32(v)) => Ok(Some(f64::from(*v))),
        Some(Bson::Int64(v)) => Ok(Some(*v as f64)),
        Some(_) => Err(CmdError::type_mismatch(format!(
            "member field '{key}' must be a number"
        ))),
    }
}

/// One `members[i]` entry as the user sent it.
struct Proposed {
    id: i32,
    host: String,
    votes: i32,
    priority: f64,
}

fn parse_member(i: usize, m: &Bson) -> Result<Proposed, CmdError> {
    let Bson::Document(m) = m else {
        return Err(CmdError::type_mismatch(format!(
            "members.{i} must be an object"
        )));
    };
    for (field, default) in [
        ("arbiterOnly", Bson::Boolean(false)),
        ("hidden", Bson::Boolean(false)),
        ("buildIndexes", Bson::Boolean(true)),
    ] {
        if m.get(field).is_some_and(|v| *v != default) {
            return Err(CmdError::bad_value(format!(
                "members.{i}.{field} other than {default} is not supported by the simulator"
            )));
        }
    }
    if get_int(m, "secondaryDelaySecs")?.is_some_and(|s| s != 0) {
        return Err(CmdError::bad_value(
            "delayed members are not supported by the simulator",
        ));
    }
    if m.contains_key("newlyAdded") {
        return Err(invalid_config_err(format!(
            "members.{i}: newlyAdded is set by the server, not in a replSetReconfig"
        )));
    }
    let id = get_int(m, "_id")?
        .ok_or_else(|| invalid_config_err(format!("members.{i} is missing '_id'")))?;
    let id = i32::try_from(id)
        .map_err(|_| invalid_config_err(format!("members.{i}._id {id} is out of range")))?;
    let host = m
        .get_str("host")
        .map_err(|_| invalid_config_err(format!("members.{i} is missing 'host'")))?
        .to_string();
    let votes = get_int(m, "votes")?.unwrap_or(1);
    if votes != 0 && votes != 1 {
        return Err(invalid_config_err(format!(
            "members.{i}.votes is {votes} but must be 0 or 1"
        )));
    }
    let priority = number(m, "priority")?.unwrap_or(if votes == 0 { 0.0 } else { 1.0 });
    if votes == 0 && priority != 0.0 {
        return Err(invalid_config_err(format!(
            "members.{i}: priority must be 0 when non-voting (votes:0)"
        )));
    }
    Ok(Proposed {
        id,
        host,
        votes: votes as i32,
        priority,
    })
}

fn invalid_config_err(msg: String) -> CmdError {
    CmdError::new(93, "InvalidReplicaSetConfig", msg)
}

/// Checks `proposed` against the installed `old` config as a primary on
/// `me` does before a non-force reconfig, and returns the config to install
/// (with the server's `term` and `newlyAdded` fields).
fn validate(st: &State, old: &Config, proposed: &Document, me: usize) -> Result<Config, Fail> {
    let name = proposed
        .get_str("_id")
        .map_err(|_| invalid_config("replica set configuration is missing '_id'"))?;
    let version = get_int(proposed, "version")?
        .ok_or_else(|| invalid_config("replica set configuration is missing 'version'"))?;
    let raw = match proposed.get("members") {
        Some(Bson::Array(a)) if !a.is_empty() => a,
        _ => {
            return Err(invalid_config(
                "replica set configuration must have a non-empty members array",
            ))
        }
    };
    if raw.len() > MAX_MEMBERS {
        return Err(invalid_config(format!(
            "Replica set configuration contains {} members, but must have at least 1 and no more than {MAX_MEMBERS}",
            raw.len()
        )));
    }
    let mut members: Vec<Proposed> = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let p = parse_member(i, m)?;
        if let Some(j) = members.iter().position(|q| q.host == p.host) {
            return Err(invalid_config(format!(
                "Found two member configurations with same host field, members.{j}.host == members.{i}.host == {}",
                p.host
            )));
        }
        if let Some(j) = members.iter().position(|q| q.id == p.id) {
            return Err(invalid_config(format!(
                "Found two member configurations with same _id field, members.{j}._id == members.{i}._id == {}",
                p.id
            )));
        }
        members.push(p);
    }
    let base_voters = members.iter().filter(|m| m.votes > 0).count();
    if base_voters == 0 || base_voters > MAX_VOTING_MEMBERS {
        return Err(invalid_config(format!(
            "Replica set configuration contains {base_voters} voting members, but must be at least 1 and no more than {MAX_VOTING_MEMBERS}"
        )));
    }

    // validateOldAndNewConfigsCompatible. The primary sets `term` itself.
    let term = st.term;
    if (version, term) <= (i64::from(old.version), old.term) {
        return Err(incompatible(format!(
            "New replica set configuration version and term must be greater than old, but {} is not greater than {} for replica set {name}",
            version_and_term(version, term),
            version_and_term(i64::from(old.version), old.term)
        ))
        .into());
    }
    let version = i32::try_from(version)
        .map_err(|_| invalid_config(format!("version {version} is out of range")))?;
    if name != st.set_name {
        return Err(incompatible(format!(
            "New and old configurations differ in replica set name; old was {}, and new is {name}",
            st.set_name
        ))
        .into());
    }
    if let Ok(settings) = proposed.get_document("settings") {
        if let Some(id) = settings.get("replicaSetId") {
            if *id != Bson::ObjectId(st.replica_set_id) {
                return Err(incompatible(format!(
                    "New and old configurations differ in replica set ID; old was {}, and new is {id}",
                    st.replica_set_id
                ))
                .into());
            }
        }
    }
    for new in &members {
        if let Some(o) = old
            .members
            .iter()
            .find(|o| o.host == new.host && o.id != new.id)
        {
            return Err(incompatible(format!(
                "New and old configurations both have members with host of {} but in the new configuration the _id field is {} and in the old configuration it is {} for replica set {name}",
                new.host, new.id, o.id
            ))
            .into());
        }
    }

    // Which simulated member each host is; hosts naming no member cannot
    // be simulated (mongod would count them as not answering).
    let mut config_members = Vec::with_capacity(members.len());
    let mut seen = BTreeSet::new();
    for p in members {
        let Some(m) = resolve_host(st, &p.host) else {
            return Err(CmdError::new(
                74,
                "NodeNotFound",
                format!("{} does not name a simulated member", p.host),
            )
            .into());
        };
        if !seen.insert(m) {
            return Err(invalid_config(format!(
                "two hosts in the configuration map to the same node ({})",
                p.host
            )));
        }
        let before = old.members.iter().find(|o| o.id == p.id);
        // A new voting member is newly added; one that still is keeps it.
        let newly_added = p.votes > 0 && before.is_none_or(|b| b.newly_added);
        config_members.push(ConfigMember {
            id: p.id,
            host: p.host,
            member: m,
            votes: p.votes,
            priority: p.priority,
            newly_added,
        });
    }
    let new = Config {
        version,
        term,
        members: config_members,
    };

    // validateSingleNodeChange: voters (newly added ones do not vote).
    let old_voters: BTreeSet<i32> = old.voters().map(|m| m.id).collect();
    let new_voters: BTreeSet<i32> = new.voters().map(|m| m.id).collect();
    if old_voters.symmetric_difference(&new_voters).count() > 1 {
        return Err(invalid_config(
            "Non force replica set reconfig can only add or remove at most 1 voting member.",
        ));
    }

    // findSelfInConfigIfElectable.
    let Some(mine) = new.entry(me) else {
        return Err(CmdError::new(
            74,
            "NodeNotFound",
            format!(
                "No host described in new configuration with {} for replica set {name} maps to this node",
                version_and_term(i64::from(version), term)
            ),
        )
        .into());
    };
    if !mine.is_electable() {
        return Err(CmdError::new(
            104,
            "NodeNotElectable",
            format!(
                "This node, {}, with _id {} is not electable under the new configuration with {} for replica set {name}",
                mine.host,
                mine.id,
                version_and_term(i64::from(version), term)
            ),
        )
        .into());
    }

    // checkQuorumForReconfig: a majority of the new voters answer.
    let answering: Vec<String> = new
        .voters()
        .filter(|m| st.reachable(m.member))
        .map(|m| m.host.clone())
        .collect();
    if answering.len() < new.majority() {
        return Err(CmdError::new(
            74,
            "NodeNotFound",
            format!(
                "Quorum check failed because not enough voting nodes responded; required {} but only the following {} voting nodes responded: {}",
                new.majority(),
                answering.len(),
                answering.join(", ")
            ),
        )
        .into());
    }
    Ok(new)
}

/// `replSetStepDown: <stepDownSecs>` with `secondaryCatchUpPeriodSecs`
/// (default 10) and `force`
/// (<https://www.mongodb.com/docs/manual/reference/command/replSetStepDown/>):
/// waits up to the catch-up period for an electable secondary that has
/// every write (here: any reachable, synced, electable voter, since the log
/// is shared), then steps down; the next election passes over this member.
/// `NotWritablePrimary` (10107) off the primary, `ExceededTimeLimit` (262)
/// when no electable secondary caught up and `force` is not set, `BadValue`
/// (2) when the catch-up period is not shorter than the step-down period.
pub(super) async fn step_down(ctx: &Ctx<'_>, body: &Document) -> CmdResult {
    let secs = get_int(body, "replSetStepDown")?
        .filter(|s| *s > 0)
        .unwrap_or(60);
    let catch_up = get_int(body, "secondaryCatchUpPeriodSecs")?.unwrap_or(10);
    let force = body.get_bool("force").unwrap_or(false);
    if catch_up < 0 || catch_up >= secs {
        return Err(CmdError::bad_value(
            "stepdown period must be longer than secondaryCatchUpPeriodSecs",
        )
        .into());
    }
    let member = ctx.member;
    {
        let st = ctx.shared.lock();
        if st.role(member) != Role::Primary {
            return Err(not_primary("not primary so can't step down"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(catch_up as u64);
    let electable_secondary = |st: &mut State, _now: Instant| {
        st.role(member) != Role::Primary
            || st.config.as_ref().is_some_and(|c| {
                c.voters().any(|m| {
                    m.member != member
                        && m.is_electable()
                        && st.members[m.member].synced
                        && st.reachable(m.member)
                })
            })
    };
    let ready = wait_for(ctx, Some(deadline), electable_secondary).await;
    let mut st = ctx.shared.lock();
    if st.role(member) != Role::Primary {
        return Err(not_primary("not primary so can't step down"));
    }
    if !ready && !force {
        return Err(CmdError::new(
            262,
            "ExceededTimeLimit",
            format!(
                "No electable secondaries caught up as of {}. Please use the replSetStepDown command with the argument {{force: true}} to force node to step down.",
                bson::DateTime::now()
            ),
        )
        .into());
    }
    st.step_down();
    ctx.shared.schedule_election(&mut st);
    drop(st);
    ctx.shared.notify();
    Ok(doc! {"ok": 1.0})
}
