//! `simplechat replset init`: initiate the replica set once, whoever runs it
//! and however often.
//!
//! Every run talks to the first member only, so runs started on every
//! member at once meet at one node: mongod lets one `replSetInitiate` win
//! and answers the others `AlreadyInitialized`, which is then checked like
//! any existing configuration.

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::error::Error;
use mongodb::options::{ClientOptions, ServerAddress};
use tokio::time::Instant;

use super::announced;
use super::config;
use super::user;
use super::InitRequest;
use crate::mongo::errors::codes::{
    ALREADY_INITIALIZED, CONFIGURATION_IN_PROGRESS, INVALID_REPLICA_SET_CONFIG, NODE_NOT_FOUND,
    UNAUTHORIZED,
};
use crate::mongo::errors::command_code as code;
use crate::mongo::errors::{user_database_hint, Signals};
use crate::mongo::removed::removed_members;
use crate::mongo::{
    bound_waits, connect, lookup, options, reason, Connection, Login, Lookup, Purpose, Unusable,
};
use crate::retry::{poll_until, Check, PollError};

/// How long each step may wait, as a whole.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// For every member to answer (at boot, members start in any order).
    pub members: Duration,
    /// For an election after initiation.
    pub primary: Duration,
    /// Between two tries.
    pub poll: Duration,
}

impl Waits {
    /// Each wait bounded by `secs` (`replset init --wait-secs`).
    pub fn bounded(secs: u64) -> Waits {
        let secs = secs.max(1);
        Waits {
            members: Duration::from_secs(secs),
            primary: Duration::from_secs(secs),
            poll: Duration::from_millis(500),
        }
    }
}

struct Member {
    /// Normalized ([`config::normalize_member`]): what the configuration
    /// names it.
    host: String,
    /// As `--member` gave it, for the messages that ask to fix it.
    written: String,
    address: ServerAddress,
    conn: Connection,
}

/// Why a member did not answer, as a wait reads it.
enum Silence {
    /// It refused the credentials: no wait cures that.
    Refused(String),
    /// The resolver says its name does not exist here: no wait cures that
    /// either ([`Lookup::NoSuchName`]).
    NoSuchName(String),
    /// Another program answered on its port, or the member closes each
    /// connection without a reply: nor that ([`Connection::unusable`]).
    /// The error, in full.
    Unusable(String),
    /// Anything else: it may still be starting.
    NotYet(String),
}

impl Member {
    async fn admin(&self, command: Document) -> Result<Document, Error> {
        self.conn
            .client
            .database("admin")
            .run_command(command)
            .await
    }

    fn reason(&self, e: &Error) -> String {
        reason(e, self.conn.secret.as_deref())
    }

    /// Why the member did not answer: for a server selection timeout, whose
    /// text only says "No available servers", the cause the driver saw
    /// (as `replset status` names it).
    fn why(&self, e: &Error) -> String {
        if Signals::of(e).server_selection {
            if let Some(why) = self.conn.why_unreachable() {
                return why;
            }
        }
        self.reason(e)
    }

    /// The refusal of the credentials, if `e` is one. Waiting cannot cure
    /// it, unlike a member still starting. The driver reports a refused
    /// handshake either itself or, as the member then counts as unknown, as
    /// a server selection timeout with the refusal in its view of the set.
    /// An authentication error caused by a dropped connection is not one.
    fn refused(&self, e: &Error) -> Option<String> {
        let signals = Signals::of(e);
        let why = if signals.authentication && !signals.network {
            Some(self.reason(e))
        } else if signals.server_selection {
            self.conn.topology.get().and_then(|t| t.auth_failure)
        } else {
            None
        }?;
        let hint = self
            .conn
            .topology
            .user_database()
            .map(|db| format!(" {}", user_database_hint(db)))
            .unwrap_or_default();
        Some(format!(
            "member {} refused the credentials given with --uri ({why}): check the user name, \
             password and authSource in --uri{hint}; nothing changed",
            self.host
        ))
    }

    /// The error when another program answered on the member's port:
    /// `what` is the driver's words for its answer.
    fn not_mongodb(&self, what: &str) -> String {
        format!(
            "member {} {}; check the port given with --member (mongod's default is 27017). \
             Nothing changed",
            self.written,
            crate::mongo::errors::not_mongodb(what)
        )
    }

    /// The error when the member answers as no wait cures: another
    /// program on its port, or connections closed without a reply.
    fn unusable(&self, how: &Unusable) -> String {
        match how {
            Unusable::NotMongoDb(what) => self.not_mongodb(what),
            Unusable::ClosesUnanswered(closes) => format!(
                "member {}: {}. Nothing changed",
                self.written,
                self.conn.closes_unanswered(closes, "--uri")
            ),
        }
    }

    /// `hello`, or, as soon as the member answers as no wait cures, the
    /// error that says so ([`Connection::found_unusable`]).
    async fn hello(&self) -> Result<Result<Document, Error>, String> {
        tokio::select! {
            reply = self.admin(doc! { "hello": 1 }) => Ok(reply),
            (_, how) = self.conn.found_unusable() => Err(self.unusable(&how)),
        }
    }

    /// What the member answered, as a poll's check: a refusal of the
    /// credentials ends the wait, anything else is waited out.
    fn not_yet<T>(&self, e: &Error) -> Check<T> {
        match self.refused(e) {
            Some(why) => Check::Failed(why),
            None => Check::NotYet(self.why(e)),
        }
    }

    /// Why the member did not answer `e`, looking its name up again when
    /// the credentials are not the cause: a resolver that did not answer
    /// at first may answer later that the name does not exist.
    async fn silence(&self, e: &Error) -> Silence {
        if let Some(why) = self.refused(e) {
            return Silence::Refused(why);
        }
        if let Some((_, how)) = self.conn.unusable() {
            return Silence::Unusable(self.unusable(&how));
        }
        match lookup(&self.address).await {
            Lookup::NoSuchName(why) => Silence::NoSuchName(why),
            _ => Silence::NotYet(self.why(e)),
        }
    }

    /// The error when the first member's name does not resolve here. init
    /// connects to it from this machine, through the system resolver as
    /// the driver does ([`crate::mongo::resolve`]), so no wait helps.
    fn unresolvable_first(&self, why: &str) -> String {
        format!(
            "member {} does not resolve from this machine ({why}): init connects to the first \
             --member from here, so its name must resolve here, to the mongod that is to \
             initiate the set; check its spelling, and /etc/hosts or DNS on this machine. \
             Nothing changed",
            self.written
        )
    }

    /// The warning when another member's name does not resolve here.
    fn unresolvable_other(&self, first: &Member, why: &str) -> String {
        format!(
            "warning: member {} does not resolve from this machine ({why}), so init cannot \
             check it from here; mongod at {} resolves every member itself when it checks the \
             configuration, and a name may resolve on the members and not here, so init leaves \
             it to mongod, which refuses the set if it cannot reach a member",
            self.written, first.host
        )
    }

    async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.conn.client.shutdown().immediate(true),
        )
        .await;
    }
}

fn secs_until(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now());
    // Rounded up, so that a 120 s wait announced after half a second says 120.
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

/// What the first member says about initiation.
enum State {
    Initiated,
    NotInitiated,
}

/// `replset init`: unless the first member says the set is initiated (then
/// it must have this name and these members), waits for every member and
/// sends `replSetInitiate` to the first
/// (<https://www.mongodb.com/docs/manual/reference/command/replSetInitiate/>);
/// then waits for a primary and creates or updates the user if asked. Each
/// wait is bounded by `waits`. Returns a one-line summary; errors are one
/// line each, among them a set initiated otherwise, which is never changed.
pub async fn init(
    request: &InitRequest,
    waits: Waits,
    progress: &dyn Fn(&str),
) -> Result<String, String> {
    config::check_name(&request.name)?;
    let members = config::normalize_members(&request.members)?;
    // Files first: a missing one must not wait for the members.
    let user = request.user.as_ref().map(user::prepare).transpose()?;
    // Read all the same, as the app reads its own password file.
    if let Some(user) = &request.user {
        let files = [
            ("--password-file", Some(user.password_file.as_path())),
            ("--key-file", user.key_file.as_deref()),
        ];
        for (setting, path) in files {
            if let Some(open) = path.and_then(|p| crate::mongo::uri::open_to_others(setting, p)) {
                progress(&format!("warning: {open}"));
            }
        }
    }
    let (mut base, login) = match &request.uri {
        Some(uri) => options(uri).await?,
        None => (ClientOptions::default(), Login::default()),
    };
    // The driver's own waits (5 s by default) must not outlast ours.
    bound_waits(&mut base, waits.members.min(waits.primary));
    let mut all = Vec::with_capacity(members.len());
    for (host, written) in members.iter().zip(&request.members) {
        let mut o = base.clone();
        let address = ServerAddress::parse(host)
            .map_err(|e| format!("member {host}: {}", reason(&e, login.secret.as_deref())))?;
        o.hosts = vec![address.clone()];
        let conn = connect(o, login.clone(), Purpose::Direct)?;
        all.push(Member {
            host: host.clone(),
            written: written.trim().to_owned(),
            address,
            conn,
        });
    }
    let mut result = run(request, &members, &all, waits, progress).await;
    if let (Ok(summary), Some(user)) = (&result, &user) {
        result = user::ensure(
            user,
            &base,
            &request.name,
            &members,
            &all[0].conn,
            waits.members,
            waits.poll,
        )
        .await
        .map(|done| format!("{summary}. User: {done}"));
    }
    for m in all {
        m.close().await;
    }
    result
}

async fn run(
    request: &InitRequest,
    hosts: &[String],
    members: &[Member],
    waits: Waits,
    progress: &dyn Fn(&str),
) -> Result<String, String> {
    let name = request.name.as_str();
    let first = &members[0];
    // Every name is looked up before any wait, so that a typo is told at
    // once rather than after the wait bound.
    let mut unresolved = unresolvable(members, progress).await?;
    let deadline = Instant::now() + waits.members;
    let state = announced(first_member_state(first, deadline, waits), || {
        progress(&waiting_for(first, deadline))
    })
    .await?;
    if let State::Initiated = state {
        check_existing(members, name, hosts).await?;
        let primary = wait_for_primary(first, waits, progress).await?;
        return Ok(format!(
            "replica set {name} is already initiated with these members; nothing changed. Primary: {primary}"
        ));
    }
    // The rules `apply` keeps a set to, so that init never builds one that
    // apply would refuse to converge to. Only here: a set already
    // initiated with these members is left alone, whatever their number.
    super::plan::check_voters(hosts.len(), request.allow_even, request.allow_fewer)
        .map_err(|e| format!("{e}; nothing changed"))?;
    for m in &members[1..] {
        if unresolved.iter().any(|u| u.host == m.host) {
            continue;
        }
        let answer = announced(wait_for_member(m, name, deadline, waits), || {
            progress(&waiting_for(m, deadline))
        })
        .await?;
        if let Answer::NoSuchName(why) = answer {
            progress(&m.unresolvable_other(first, &why));
            unresolved.push(m);
        }
    }
    one_mongod_once(members, &unresolved).await?;
    let how = match first
        .admin(doc! { "replSetInitiate": config::initiate_document(name, hosts) })
        .await
    {
        Ok(_) => "initiated",
        Err(e)
            if matches!(
                code(&e),
                Some(ALREADY_INITIALIZED | CONFIGURATION_IN_PROGRESS)
            ) =>
        {
            // Another run's initiation won; once it has taken effect, its
            // configuration is checked like any existing one.
            let deadline = Instant::now() + waits.primary;
            poll_until(deadline, waits.poll, || async {
                match first_member_state(first, deadline, waits).await {
                    Ok(State::Initiated) => Check::Done(()),
                    Ok(State::NotInitiated) => Check::NotYet(String::new()),
                    Err(e) => Check::Failed(e),
                }
            })
            .await
            .map_err(|e| match e {
                PollError::Failed(why) => why,
                PollError::TimedOut(_) => format!(
                    "{} reported a concurrent initiation that never took effect",
                    first.host
                ),
            })?;
            check_existing(members, name, hosts).await?;
            "was initiated meanwhile (by another run)"
        }
        Err(e) => {
            let unresolved: Vec<&str> = unresolved.iter().map(|m| m.written.as_str()).collect();
            return Err(initiate_error(
                &first.host,
                code(&e),
                &first.reason(&e),
                &unresolved,
            ));
        }
    };
    let primary = wait_for_primary(first, waits, progress).await?;
    Ok(format!(
        "replica set {name} {how} with members {}. Primary: {primary}",
        hosts.join(", ")
    ))
}

/// Looks every member's name up at once, before any wait. The first
/// member's must resolve: init connects to it. Another's that does not is
/// said through `progress` and returned, left to mongod: the
/// first member resolves the members itself when it checks the
/// configuration, and answers `replSetInitiate` with `NodeNotFound` when
/// not every member responded, naming each one and why ("replSetInitiate
/// quorum check failed because not all proposed set members responded
/// affirmatively: HOST failed with Could not find address for HOST: ...",
/// mongod's `QuorumChecker`, `check_quorum_for_config_change.cpp`, and its
/// resolver's `HostNotFound`). The manual asks that every member be able
/// to connect to every other
/// (<https://www.mongodb.com/docs/manual/tutorial/deploy-replica-set/#requirements>,
/// and how to test it:
/// <https://www.mongodb.com/docs/manual/tutorial/troubleshoot-replica-sets/#test-connections-between-all-members>);
/// it is the members' resolvers that must know the names, and a machine
/// that runs init elsewhere may not. So init warns, and refuses nothing
/// mongod would accept. A resolver that does not answer now is waited
/// out, as a member still starting is.
async fn unresolvable<'a>(
    members: &'a [Member],
    progress: &dyn Fn(&str),
) -> Result<Vec<&'a Member>, String> {
    let found = futures::future::join_all(members.iter().map(|m| lookup(&m.address))).await;
    let mut unresolved = Vec::new();
    for (i, (m, found)) in members.iter().zip(found).enumerate() {
        let Lookup::NoSuchName(why) = found else {
            continue;
        };
        if i == 0 {
            return Err(m.unresolvable_first(&why));
        }
        progress(&m.unresolvable_other(&members[0], &why));
        unresolved.push(m);
    }
    Ok(unresolved)
}

/// Refuses two members that are one mongod named two ways
/// (`127.0.0.1:27017` and `localhost:27017`), which the configuration
/// would hold as two members. Every mongod process answers `hello` with a
/// `topologyVersion` whose `processId` is its own, on every connection
/// (Server Discovery and Monitoring specification, "topologyVersion":
/// <https://github.com/mongodb/specifications/blob/master/source/server-discovery-and-monitoring/server-discovery-and-monitoring.md#topologyversion>).
/// Asked once every member has answered; a member that does not answer
/// within 2 s now, or answers without one, is left out.
async fn one_mongod_once(members: &[Member], unresolved: &[&Member]) -> Result<(), String> {
    let asked = members
        .iter()
        .filter(|m| !unresolved.iter().any(|u| u.host == m.host))
        .map(|m| async move {
            let hello = tokio::time::timeout(Duration::from_secs(2), m.admin(doc! { "hello": 1 }))
                .await
                .ok()?
                .ok()?;
            let process = hello
                .get_document("topologyVersion")
                .ok()?
                .get_object_id("processId")
                .ok()?;
            Some((m, process))
        });
    let mut seen: Vec<(&Member, mongodb::bson::oid::ObjectId)> = Vec::new();
    for (m, process) in futures::future::join_all(asked).await.into_iter().flatten() {
        if let Some((other, _)) = seen.iter().find(|(_, p)| *p == process) {
            return Err(format!(
                "members {} and {} are one mongod (both answer with process id {process}): name \
                 each mongod once, by the name the other members reach it by; nothing changed",
                other.written, m.written
            ));
        }
        seen.push((m, process));
    }
    Ok(())
}

/// The progress line of a wait for `m` to answer, with the cause the
/// driver already saw, if any.
fn waiting_for(m: &Member, deadline: Instant) -> String {
    let mut line = format!(
        "waiting up to {} s for {} to answer",
        secs_until(deadline),
        m.host
    );
    if let Some(why) = m.conn.why_unreachable() {
        line.push_str(&format!(" ({why})"));
    }
    line
}

/// The error of a wait for `m` to answer.
fn not_answering(m: &Member, waits: Waits) -> impl Fn(PollError) -> String + '_ {
    move |e| match e {
        PollError::Failed(why) => why,
        PollError::TimedOut(last) => format!(
            "member {} did not answer within {} s: {}",
            m.host,
            waits.members.as_secs(),
            last.unwrap_or_else(|| m.conn.why_silent())
        ),
    }
}

/// Waits until the first member answers. `hello` needs no privileges, so
/// a rerun on a cluster whose users exist (keyFile, no localhost exception
/// any more) still finds it initiated and changes nothing.
async fn first_member_state(
    first: &Member,
    deadline: Instant,
    waits: Waits,
) -> Result<State, String> {
    poll_until(deadline, waits.poll, || async {
        let reply = match first.hello().await {
            Ok(reply) => reply,
            Err(other_program) => return Check::Failed(other_program),
        };
        match reply {
            Ok(hello) if hello.get_str("setName").is_ok() => Check::Done(State::Initiated),
            Ok(hello) if hello.get_bool("isreplicaset").unwrap_or(false) => {
                // Or removed from its set, which hello does not tell
                // (`crate::mongo::removed`): no initiation would take.
                match first.admin(doc! { "replSetGetStatus": 1 }).await {
                    Err(e) if code(&e) == Some(INVALID_REPLICA_SET_CONFIG) => Check::Failed(
                        format!("{}; nothing changed", removed_members(std::slice::from_ref(&first.host))),
                    ),
                    _ => Check::Done(State::NotInitiated),
                }
            }
            Ok(_) => Check::Failed(format!(
                "mongod at {} is not running as a replica-set member: start it with --replSet (replication.replSetName)",
                first.host
            )),
            Err(e) => match first.silence(&e).await {
                Silence::Refused(why) | Silence::Unusable(why) => Check::Failed(why),
                Silence::NoSuchName(why) => Check::Failed(first.unresolvable_first(&why)),
                Silence::NotYet(why) => Check::NotYet(why),
            },
        }
    })
    .await
    .map_err(not_answering(first, waits))
}

/// How a wait for another member ended well.
enum Answer {
    /// It answered as a replica-set member of no other set.
    Answered,
    /// Its name stopped resolving here during the wait (the resolver had
    /// not answered at first): left to mongod, as [`unresolvable`] says.
    NoSuchName(String),
}

/// Waits until another member answers, and makes sure it is a replica-set
/// member that belongs to no other set.
async fn wait_for_member(
    m: &Member,
    name: &str,
    deadline: Instant,
    waits: Waits,
) -> Result<Answer, String> {
    poll_until(deadline, waits.poll, || async {
        let reply = match m.hello().await {
            Ok(reply) => reply,
            Err(other_program) => return Check::Failed(other_program),
        };
        match reply {
            Ok(hello) => match hello.get_str("setName") {
                Ok(other) if other != name => Check::Failed(format!(
                    "member {} already belongs to replica set {other:?}",
                    m.host
                )),
                Err(_) if !hello.get_bool("isreplicaset").unwrap_or(false) => {
                    Check::Failed(format!(
                        "mongod at {} is not running as a replica-set member: start it with --replSet {name}",
                        m.host
                    ))
                }
                _ => Check::Done(Answer::Answered),
            },
            Err(e) if code(&e) == Some(UNAUTHORIZED) => Check::Failed(unauthorized(m, &e)),
            Err(e) => match m.silence(&e).await {
                Silence::Refused(why) | Silence::Unusable(why) => Check::Failed(why),
                Silence::NoSuchName(why) => Check::Done(Answer::NoSuchName(why)),
                Silence::NotYet(why) => Check::NotYet(why),
            },
        }
    })
    .await
    .map_err(not_answering(m, waits))
}

/// The configuration from `replSetGetConfig`, or, for a user without that
/// privilege, from `hello` (which lists every member but hidden ones, and
/// `replset init` never makes hidden ones).
async fn check_existing(members: &[Member], name: &str, hosts: &[String]) -> Result<(), String> {
    let first = &members[0];
    let existing = match first.admin(doc! { "replSetGetConfig": 1 }).await {
        Ok(reply) => config::parse_config_reply(&reply)?,
        Err(e) if code(&e) == Some(UNAUTHORIZED) => {
            let hello = first
                .admin(doc! { "hello": 1 })
                .await
                .map_err(|e| format!("{} stopped answering: {}", first.host, first.reason(&e)))?;
            config::parse_hello(&hello)?
        }
        Err(e) => {
            return Err(format!(
                "cannot read the replica-set config from {}: {}",
                first.host,
                first.reason(&e)
            ))
        }
    };
    if config::compare(&existing, name, hosts, &[]).is_ok() {
        return Ok(());
    }
    // To explain the difference: members asked for under another spelling
    // than the configuration's.
    let mut renamed = Vec::new();
    for m in members
        .iter()
        .filter(|m| !existing.members.contains(&m.host))
    {
        if let Some(me) = configured_as(m, &existing).await {
            renamed.push((m.host.clone(), me));
        }
    }
    config::compare(&existing, name, hosts, &renamed)
}

/// The host the configuration names `m` by, when `m` answers as one of its
/// members under another name: a member's `hello` says `me`, its host as
/// the configuration names it
/// (<https://www.mongodb.com/docs/manual/reference/command/hello/#mongodb-data-hello.me>).
/// `None` when it does not answer within 2 s, or is no configured member.
async fn configured_as(m: &Member, existing: &config::ExistingConfig) -> Option<String> {
    let hello = tokio::time::timeout(Duration::from_secs(2), m.admin(doc! { "hello": 1 }))
        .await
        .ok()?
        .ok()?;
    let me = hello.get_str("me").ok()?;
    let normalized = config::normalize_member(me).ok()?;
    (normalized != m.host && existing.members.contains(&normalized)).then(|| me.to_owned())
}

async fn wait_for_primary(
    first: &Member,
    waits: Waits,
    progress: &dyn Fn(&str),
) -> Result<String, String> {
    let deadline = Instant::now() + waits.primary;
    let wait = poll_until(deadline, waits.poll, || async {
        match first.admin(doc! { "hello": 1 }).await {
            Ok(hello) => match hello.get_str("primary") {
                Ok(primary) => Check::Done(primary.to_owned()),
                Err(_) => Check::NotYet("no primary elected yet".to_owned()),
            },
            Err(e) => first.not_yet(&e),
        }
    });
    announced(wait, || {
        progress(&format!(
            "waiting up to {} s for a primary to be elected",
            secs_until(deadline)
        ))
    })
    .await
    .map_err(|e| match e {
        PollError::Failed(why) => why,
        PollError::TimedOut(last) => format!(
            "no primary was elected within {} s ({})",
            waits.primary.as_secs(),
            last.unwrap_or_else(|| first.conn.why_silent())
        ),
    })
}

fn unauthorized(m: &Member, e: &Error) -> String {
    format!(
        "not authorized on {}: {}. Pass --uri with the credentials of a user that may administer the \
         replica set (clusterManager), or run init on the member itself before any user exists \
         (mongod's localhost exception)",
        m.host,
        m.reason(e)
    )
}

/// What mongod's refusal of `replSetInitiate` means, in words.
/// `unresolved`: the members whose names did not resolve here either.
fn initiate_error(host: &str, code: Option<i32>, text: &str, unresolved: &[&str]) -> String {
    match code {
        Some(INVALID_REPLICA_SET_CONFIG) if text.contains("maps to this node") => format!(
            "mongod at {host} finds that no host in the member list maps to this node: the first --member \
             must be the name and port by which that very mongod is known to the others, and that name \
             must resolve to one of its own addresses (check /etc/hosts and mongod's port). mongod said: {text}"
        ),
        Some(NODE_NOT_FOUND) => {
            let here = if unresolved.is_empty() {
                String::new()
            } else {
                format!(
                    ". {} did not resolve from this machine either: check the spelling, and \
                     /etc/hosts or DNS on the members",
                    unresolved.join(", ")
                )
            };
            format!(
                "mongod at {host} could not reach every member to check the configuration (each \
                 member must resolve and reach the others by the names given): {text}{here}"
            )
        }
        Some(UNAUTHORIZED) => format!(
            "not authorized to initiate the replica set on {host}: {text}. Pass --uri with the \
             credentials of a user that may (clusterManager), or run init on the first member \
             itself before any user exists (mongod's localhost exception)"
        ),
        _ => format!("replSetInitiate on {host} failed: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(members: &[&str]) -> InitRequest {
        InitRequest {
            name: "rs".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            uri: None,
            wait_secs: 120,
            allow_even: false,
            allow_fewer: false,
            user: None,
        }
    }

    fn short() -> Waits {
        Waits {
            members: Duration::from_millis(1500),
            primary: Duration::from_millis(1500),
            poll: Duration::from_millis(200),
        }
    }

    #[test]
    fn explains_a_member_list_that_does_not_include_the_node() {
        let text = "InvalidReplicaSetConfig (93): No host described in new configuration with {version: 1, term: 0} for replica set rs maps to this node";
        let e = initiate_error("storage1.local:27017", Some(93), text, &[]);
        assert!(
            e.contains("no host in the member list maps to this node"),
            "{e}"
        );
        assert!(e.contains("/etc/hosts"), "{e}");
        assert!(e.contains("storage1.local:27017"), "{e}");
        let q = initiate_error(
            "h:1",
            Some(74),
            "NodeNotFound (74): quorum check failed",
            &[],
        );
        assert!(q.contains("could not reach every member"), "{q}");
        assert!(!q.contains("either"), "{q}");
        let typo = initiate_error("h:1", Some(74), "NodeNotFound (74): x", &["Storage2.lcoal"]);
        assert!(
            typo.ends_with(
                "NodeNotFound (74): x. Storage2.lcoal did not resolve from this machine either: \
                 check the spelling, and /etc/hosts or DNS on the members"
            ),
            "{typo}"
        );
        let other = initiate_error("h:1", Some(2), "BadValue (2): nope", &[]);
        assert_eq!(other, "replSetInitiate on h:1 failed: BadValue (2): nope");
    }

    #[tokio::test]
    async fn unreachable_first_member_is_a_clear_error() {
        let started = Instant::now();
        let lines = std::cell::RefCell::new(Vec::new());
        let err = init(
            &request(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]),
            short(),
            &|line| lines.borrow_mut().push(line.to_owned()),
        )
        .await
        .unwrap_err();
        assert!(
            err.starts_with("member 127.0.0.1:1 did not answer within 1 s"),
            "{err}"
        );
        assert!(!err.contains("No available servers"), "{err}");
        let lines = lines.into_inner();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("waiting up to ")
                && lines[0].contains(" s for 127.0.0.1:1 to answer"),
            "{lines:?}"
        );
        // The wait, not the driver's 5 s server selection.
        let waited = started.elapsed();
        assert!(waited < Duration::from_millis(2500), "{waited:?}");
    }

    /// Within a wait bound no test sits out: the lookup, not the wait,
    /// ends it.
    #[tokio::test]
    async fn a_first_member_that_does_not_resolve_ends_init_before_any_wait() {
        let lines = std::cell::RefCell::new(Vec::new());
        let long = Waits::bounded(3600);
        let err = init(
            &request(&[" Storage1..Local ", "127.0.0.1:2", "127.0.0.1:3"]),
            long,
            &|line| lines.borrow_mut().push(line.to_owned()),
        )
        .await
        .unwrap_err();
        assert!(
            err.starts_with("member Storage1..Local does not resolve from this machine ("),
            "{err}"
        );
        assert!(lines.into_inner().is_empty());
    }

    #[tokio::test]
    async fn bad_requests_fail_before_connecting() {
        assert!(init(&request(&[]), short(), &|_| {})
            .await
            .unwrap_err()
            .contains("--member"));
        assert!(init(&request(&["h:1", "H:1"]), short(), &|_| {})
            .await
            .unwrap_err()
            .contains("twice"));
        let mut r = request(&["h:1", "h:2", "h:3"]);
        r.name = "a b".into();
        assert!(init(&r, short(), &|_| {}).await.is_err());
        r = request(&["h:1", "h:2", "h:3"]);
        r.uri = Some("mongodb://u:hunter22@h:notaport".into());
        let err = init(&r, short(), &|_| {}).await.unwrap_err();
        assert!(!err.contains("hunter22"), "{err}");
    }
}
