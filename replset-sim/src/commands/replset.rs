//! The `replSet*` admin commands an operator or `replset init` sends:
//! `replSetGetStatus` and `replSetGetConfig` (mongod's reply shapes, from
//! this member's point of view) and `replSetInitiate` (validated like
//! mongod's, then an election after `election_delay`). The dispatcher has
//! already refused them outside `admin`. `replSetReconfig` and
//! `replSetStepDown` live in `reconfig`.

use std::time::Instant;

use bson::{doc, Bson, Document};

use super::args::get_int;
use super::{CmdResult, Ctx, Fail};
use crate::error::CmdError;
use crate::state::{optime, Config, ConfigMember, Role, State};

/// One `members[]` entry of `replSetGetStatus` as `viewer` sees `member`:
/// a member it cannot reach is reported down (`health: 0`, state 8).
fn member_status(st: &State, viewer: usize, member: usize, entry: &ConfigMember) -> Document {
    let now = Instant::now();
    let seen = st.reachable(viewer) && st.reachable(member) || viewer == member;
    let role = if seen { st.role(member) } else { Role::Down };
    let mut d = doc! {"_id": entry.id, "name": entry.host.clone()};
    d.insert("health", if role == Role::Down { 0.0 } else { 1.0 });
    d.insert("state", role.state_code());
    d.insert(
        "stateStr",
        if role == Role::Down {
            "(not reachable/healthy)"
        } else {
            role.state_str()
        },
    );
    d.insert(
        "uptime",
        if role == Role::Down {
            0
        } else {
            st.members[member].started.elapsed().as_secs() as i32
        },
    );
    let (ts, t, wall) = if role == Role::Down {
        st.last_optime(0)
    } else {
        st.last_optime(st.visible_len(member, now))
    };
    d.insert("optime", optime(ts, t));
    d.insert("optimeDate", wall);
    let sync_source = match (role, st.primary) {
        (Role::Secondary, Some(p)) if p != member && st.reachable(p) => st.host(p),
        _ => String::new(),
    };
    d.insert("syncSourceHost", sync_source);
    if role == Role::Primary {
        d.insert("electionTime", st.election_ts);
        d.insert("electionDate", st.election_wall);
    }
    if role == Role::Down {
        d.insert("lastHeartbeatMessage", "Connection refused (simulated)");
    } else {
        d.insert("lastHeartbeatMessage", "");
    }
    d.insert(
        "configVersion",
        if role == Role::Down {
            -1
        } else {
            st.config.as_ref().map_or(-1, |c| c.version)
        },
    );
    if member == viewer {
        d.insert("self", true);
    } else {
        d.insert("lastHeartbeat", bson::DateTime::now());
        d.insert("pingMs", 0i64);
    }
    d
}

/// `replSetGetStatus`: set name, term, this member's state, optimes and
/// one entry per configured member. `NotYetInitialized` (94) before a
/// config exists; `InvalidReplicaSetConfig` (93) on a member the config
/// does not include (removed), with mongod's message
/// (`TopologyCoordinator::prepareStatusResponse`).
pub(super) fn repl_status(ctx: &Ctx<'_>) -> CmdResult {
    let st = ctx.shared.lock();
    let Some(config) = st.config.clone() else {
        return Err(CmdError::not_yet_initialized().into());
    };
    if config.entry(ctx.member).is_none() {
        return Err(invalid_config(
            "Our replica set config is invalid or we are not a member of it",
        ));
    }
    let me = st.role(ctx.member);
    let (ts, t, wall) = st.last_optime(st.visible_len(ctx.member, Instant::now()));
    let members: Vec<Bson> = config
        .members
        .iter()
        .map(|e| Bson::Document(member_status(&st, ctx.member, e.member, e)))
        .collect();
    let sync_source = match (me, st.primary) {
        (Role::Secondary, Some(p)) if st.reachable(p) => st.host(p),
        _ => String::new(),
    };
    let majority = config.majority() as i32;
    let voters = config.voters().count() as i32;
    Ok(doc! {
        "set": st.set_name.clone(),
        "date": bson::DateTime::now(),
        "myState": me.state_code(),
        "term": st.term,
        "syncSourceHost": sync_source,
        "heartbeatIntervalMillis": 2000i64,
        "majorityVoteCount": majority,
        "writeMajorityCount": majority,
        "votingMembersCount": voters,
        "writableVotingMembersCount": voters,
        "optimes": {
            "lastCommittedOpTime": optime(ts, t),
            "lastCommittedWallTime": wall,
            "appliedOpTime": optime(ts, t),
            "durableOpTime": optime(ts, t),
            "lastAppliedWallTime": wall,
            "lastDurableWallTime": wall,
        },
        "members": members,
        "ok": 1.0,
    })
}

/// The config document as mongod reports it, with the simulator's fixed
/// settings (`electionTimeoutMillis` = `election_delay`). `newlyAdded` is
/// shown only when asked with `$_internalIncludeNewlyAdded`, as mongod does
/// (its own tests read it that way: jstests/replsets/rslib.js
/// `getConfigWithNewlyAdded`); otherwise a newly added member shows its
/// configured `votes` and `priority`.
pub(super) fn config_doc(st: &State, config: &Config, include_newly_added: bool) -> Document {
    let members: Vec<Bson> = config
        .members
        .iter()
        .map(|m| {
            let mut d = doc! {
                "_id": m.id,
                "host": m.host.clone(),
                "arbiterOnly": false,
                "buildIndexes": true,
                "hidden": false,
                "priority": m.priority,
                "tags": {},
                "secondaryDelaySecs": 0i64,
                "votes": m.votes,
            };
            if include_newly_added && m.newly_added {
                d.insert("newlyAdded", true);
            }
            Bson::Document(d)
        })
        .collect();
    doc! {
        "_id": st.set_name.clone(),
        "version": config.version,
        "term": config.term,
        "members": members,
        "protocolVersion": 1i64,
        "writeConcernMajorityJournalDefault": true,
        "settings": {
            "chainingAllowed": true,
            "heartbeatIntervalMillis": 2000,
            "heartbeatTimeoutSecs": 10,
            "electionTimeoutMillis": st.election_delay.as_millis() as i64,
            "replicaSetId": st.replica_set_id,
        },
    }
}

/// `replSetGetConfig`: `{config}`, plus `commitmentStatus` (whether a
/// majority of voters installed this config, so that another reconfig may
/// follow) when asked with `commitmentStatus: true`, which only the primary
/// accepts. `NotYetInitialized` (94) as for status.
/// <https://www.mongodb.com/docs/manual/reference/command/replSetGetConfig/>
pub(super) fn repl_config(ctx: &Ctx<'_>, body: &Document) -> CmdResult {
    let st = ctx.shared.lock();
    let Some(config) = st.config.clone().filter(|c| c.entry(ctx.member).is_some()) else {
        return Err(CmdError::not_yet_initialized().into());
    };
    let internal = body
        .get_bool("$_internalIncludeNewlyAdded")
        .unwrap_or(false);
    let mut reply = doc! {"config": config_doc(&st, &config, internal)};
    if body.get_bool("commitmentStatus").unwrap_or(false) {
        if st.role(ctx.member) != Role::Primary {
            let mut e = CmdError::not_writable_primary(false);
            e.msg = "commitmentStatus is only supported on primary.".into();
            return Err(e.into());
        }
        reply.insert("commitmentStatus", st.config_committed());
    }
    reply.insert("ok", 1.0);
    Ok(reply)
}

/// mongod's `InvalidReplicaSetConfig` (93).
pub(super) fn invalid_config(msg: impl Into<String>) -> Fail {
    CmdError::new(93, "InvalidReplicaSetConfig", msg).into()
}

/// Which simulated member a config host names: only loopback names can
/// map, by port (a real mongod also requires the host to be local).
pub(super) fn resolve_host(st: &State, host: &str) -> Option<usize> {
    let (name, port) = host.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if !matches!(name, "127.0.0.1" | "localhost") {
        return None;
    }
    st.members.iter().position(|m| m.port == port)
}

/// Why mongod's heartbeat to `host` fails, as its quorum check words it
/// after "HOST failed with ": `host` names no simulated member, or one
/// that is down. mongod resolves the name with the system resolver
/// (asio's, over `getaddrinfo`) and answers `HostNotFound` with "Could not
/// find address for HOST: SocketException: <asio's netdb message>" when it
/// does not resolve (`WrappedResolver::_checkResults` in mongod's
/// `asio_transport_layer.cpp`); a connection that fails is "Error connecting
/// to HOST (ADDRESS) :: caused by :: <why>" (`makeConnectError`, the
/// address only when it reads otherwise than HOST). The simulator looks the
/// name up the same way, but never connects to an address it does not
/// simulate: such a member is refused.
fn unreachable_reason(host: &str) -> String {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, port),
        None => (host, "27017"),
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let hints = dns_lookup::AddrInfoHints {
        socktype: dns_lookup::SockType::Stream.into(),
        ..Default::default()
    };
    match dns_lookup::getaddrinfo(Some(name), Some(port), Some(hints)) {
        Ok(mut found) => {
            let address = found
                .next()
                .and_then(Result::ok)
                .map(|a| a.sockaddr.to_string())
                .filter(|a| a != host)
                .map(|a| format!(" ({a})"))
                .unwrap_or_default();
            format!("Error connecting to {host}{address} :: caused by :: Connection refused")
        }
        Err(e) => {
            // asio's `translate_addrinfo_error` and its netdb category's
            // messages.
            let why = match e.kind() {
                dns_lookup::LookupErrorKind::NoName | dns_lookup::LookupErrorKind::NoData => {
                    "Host not found (authoritative)".to_owned()
                }
                dns_lookup::LookupErrorKind::Again => {
                    "Host not found (non-authoritative), try again later".to_owned()
                }
                dns_lookup::LookupErrorKind::Fail => {
                    "A non-recoverable error occurred during database lookup".to_owned()
                }
                _ => e.to_string(),
            };
            format!("Could not find address for {host}: SocketException: {why}")
        }
    }
}

/// `replSetInitiate` with a config document (or none: a one-member set of
/// this node). The config's `_id` must be the set name and one host must
/// map to this member (`InvalidReplicaSetConfig` 93); every member must be
/// up and simulated (`NodeNotFound` 74, each other member named with why
/// its heartbeat failed, [`unreachable_reason`]); a second initiate is
/// `AlreadyInitialized` (23). This member wins the election that follows.
pub(super) fn repl_initiate(ctx: &Ctx<'_>, body: &Document) -> CmdResult {
    let mut st = ctx.shared.lock();
    if st.config.is_some() {
        return Err(CmdError::new(23, "AlreadyInitialized", "already initialized").into());
    }
    let me_host = format!("127.0.0.1:{}", st.members[ctx.member].port);
    let cfg = match body.get("replSetInitiate") {
        Some(Bson::Document(d)) => d.clone(),
        // rs.initiate() without a config: a one-member set of this node.
        _ => doc! {"_id": st.set_name.clone(), "members": [{"_id": 0, "host": me_host}]},
    };
    let set_id = cfg.get_str("_id").unwrap_or_default().to_string();
    if set_id != st.set_name {
        return Err(invalid_config(format!(
            "Attempting to initiate a replica set with name {set_id}, but command line reports {}; rejecting",
            st.set_name
        )));
    }
    let version = get_int(&cfg, "version")?.unwrap_or(1) as i32;
    let raw_members = match cfg.get("members") {
        Some(Bson::Array(a)) if !a.is_empty() => a.clone(),
        _ => {
            return Err(invalid_config(
                "replica set configuration must have a non-empty members array",
            ))
        }
    };
    let mut members = Vec::new();
    for m in raw_members {
        let Bson::Document(m) = m else {
            return Err(invalid_config("members entries must be objects"));
        };
        let id =
            get_int(&m, "_id")?.ok_or_else(|| invalid_config("member is missing '_id'"))? as i32;
        let host = m
            .get_str("host")
            .map_err(|_| invalid_config("member is missing 'host'"))?
            .to_string();
        if members
            .iter()
            .any(|x: &(i32, String, Option<usize>)| x.0 == id || x.1 == host)
        {
            return Err(invalid_config(format!(
                "Found two member configurations with the same host field or _id: {id} {host}"
            )));
        }
        let resolved = resolve_host(&st, &host);
        members.push((id, host, resolved));
    }
    if !members.iter().any(|m| m.2 == Some(ctx.member)) {
        return Err(invalid_config(format!(
            "No host described in new configuration with {{version: {version}, term: 0}} for replica set {} maps to this node",
            st.set_name
        )));
    }
    let mut dupes = members.iter().filter_map(|m| m.2).collect::<Vec<_>>();
    dupes.sort();
    dupes.dedup();
    if dupes.len() != members.iter().filter(|m| m.2.is_some()).count() {
        return Err(invalid_config(
            "two hosts in the configuration map to the same node",
        ));
    }
    let down: Vec<String> = members
        .iter()
        .filter(|m| m.2.is_none_or(|i| !st.reachable(i)))
        .map(|m| m.1.clone())
        .collect();
    if !down.is_empty() {
        // No lock while names are looked up: nothing changes on this path.
        drop(st);
        let each: Vec<String> = down
            .iter()
            .map(|host| format!("{host} failed with {}", unreachable_reason(host)))
            .collect();
        return Err(CmdError::new(
            74,
            "NodeNotFound",
            format!(
                "replSetInitiate quorum check failed because not all proposed set members \
                 responded affirmatively: {}",
                each.join(", ")
            ),
        )
        .into());
    }
    st.install_config(Config {
        version,
        term: 0,
        members: members
            .into_iter()
            .map(|(id, host, m)| ConfigMember::new(id, host, m.expect("all resolved")))
            .collect(),
    });
    st.preferred_candidate = Some(ctx.member);
    st.bump_topology();
    ctx.shared.schedule_election(&mut st);
    drop(st);
    ctx.shared.notify();
    Ok(doc! {"ok": 1.0})
}
