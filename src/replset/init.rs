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

use super::config;
use super::user;
use super::InitRequest;
use crate::mongo::errors::codes::{
    ALREADY_INITIALIZED, CONFIGURATION_IN_PROGRESS, INVALID_REPLICA_SET_CONFIG, NODE_NOT_FOUND,
    UNAUTHORIZED,
};
use crate::mongo::errors::command_code as code;
use crate::mongo::errors::{user_database_hint, Signals};
use crate::mongo::{bound_waits, connect, options, reason, Connection, Login, Purpose};
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
    host: String,
    conn: Connection,
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

    /// What the member answered, as a poll's check: a refusal of the
    /// credentials ends the wait, anything else is waited out.
    fn not_yet<T>(&self, e: &Error) -> Check<T> {
        match self.refused(e) {
            Some(why) => Check::Failed(why),
            None => Check::NotYet(self.why(e)),
        }
    }

    async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.conn.client.shutdown().immediate(true),
        )
        .await;
    }
}

/// How long a wait may go unannounced: a member that answers at once
/// needs no line, one still starting gets one while it is waited for.
const ANNOUNCE_AFTER: Duration = Duration::from_millis(500);

/// Runs `wait`; if it has not finished after [`ANNOUNCE_AFTER`], says once
/// through `progress` what it waits for and how long it may take.
async fn announced<T>(
    wait: impl std::future::Future<Output = T>,
    progress: &dyn Fn(&str),
    line: impl FnOnce() -> String,
) -> T {
    let mut wait = std::pin::pin!(wait);
    match tokio::time::timeout(ANNOUNCE_AFTER, &mut wait).await {
        Ok(out) => out,
        Err(_) => {
            progress(&line());
            wait.await
        }
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
    let (mut base, login) = match &request.uri {
        Some(uri) => options(uri).await?,
        None => (ClientOptions::default(), Login::default()),
    };
    // The driver's own waits (5 s by default) must not outlast ours.
    bound_waits(&mut base, waits.members.min(waits.primary));
    let mut all = Vec::with_capacity(members.len());
    for host in &members {
        let mut o = base.clone();
        o.hosts = vec![ServerAddress::parse(host)
            .map_err(|e| format!("member {host}: {}", reason(&e, login.secret.as_deref())))?];
        let conn = connect(o, login.clone(), Purpose::Direct)?;
        all.push(Member {
            host: host.clone(),
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
    let deadline = Instant::now() + waits.members;
    let state = announced(first_member_state(first, deadline, waits), progress, || {
        waiting_for(first, deadline)
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
        announced(wait_for_member(m, name, deadline, waits), progress, || {
            waiting_for(m, deadline)
        })
        .await?;
    }
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
        Err(e) => return Err(initiate_error(&first.host, code(&e), &first.reason(&e))),
    };
    let primary = wait_for_primary(first, waits, progress).await?;
    Ok(format!(
        "replica set {name} {how} with members {}. Primary: {primary}",
        hosts.join(", ")
    ))
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
        match first.admin(doc! { "hello": 1 }).await {
            Ok(hello) if hello.get_str("setName").is_ok() => Check::Done(State::Initiated),
            Ok(hello) if hello.get_bool("isreplicaset").unwrap_or(false) => {
                Check::Done(State::NotInitiated)
            }
            Ok(_) => Check::Failed(format!(
                "mongod at {} is not running as a replica-set member: start it with --replSet (replication.replSetName)",
                first.host
            )),
            Err(e) => first.not_yet(&e),
        }
    })
    .await
    .map_err(not_answering(first, waits))
}

/// Waits until another member answers, and makes sure it is a replica-set
/// member that belongs to no other set.
async fn wait_for_member(
    m: &Member,
    name: &str,
    deadline: Instant,
    waits: Waits,
) -> Result<(), String> {
    poll_until(deadline, waits.poll, || async {
        match m.admin(doc! { "hello": 1 }).await {
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
                _ => Check::Done(()),
            },
            Err(e) if code(&e) == Some(UNAUTHORIZED) => Check::Failed(unauthorized(m, &e)),
            Err(e) => m.not_yet(&e),
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
    announced(wait, progress, || {
        format!(
            "waiting up to {} s for a primary to be elected",
            secs_until(deadline)
        )
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

fn initiate_error(host: &str, code: Option<i32>, text: &str) -> String {
    match code {
        Some(INVALID_REPLICA_SET_CONFIG) if text.contains("maps to this node") => format!(
            "mongod at {host} finds that no host in the member list maps to this node: the first --member \
             must be the name and port by which that very mongod is known to the others, and that name \
             must resolve to one of its own addresses (check /etc/hosts and mongod's port). mongod said: {text}"
        ),
        Some(NODE_NOT_FOUND) => format!(
            "mongod at {host} could not reach every member to check the configuration (each member must \
             resolve and reach the others by the names given): {text}"
        ),
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
        let e = initiate_error("storage1.local:27017", Some(93), text);
        assert!(
            e.contains("no host in the member list maps to this node"),
            "{e}"
        );
        assert!(e.contains("/etc/hosts"), "{e}");
        assert!(e.contains("storage1.local:27017"), "{e}");
        let q = initiate_error("h:1", Some(74), "NodeNotFound (74): quorum check failed");
        assert!(q.contains("could not reach every member"), "{q}");
        let other = initiate_error("h:1", Some(2), "BadValue (2): nope");
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
