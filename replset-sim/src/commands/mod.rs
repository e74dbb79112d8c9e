//! Command dispatch and the reply envelope. [`run`] routes one command
//! document to its family's module, turns a [`CmdError`] into mongod's error
//! reply, and gossips `$clusterTime`/`operationTime` as a replica-set member
//! does. Each family module decides, under the shared lock, what this member
//! may do in its current role, then answers with mongod's reply shape, error
//! codes and error labels.
//!
//! Families: [`handshake`] (hello, ping, endSessions), [`insert`],
//! [`update`], [`delete`], [`query`]
//! (find, count), [`cursors`] (getMore, killCursors and the cursors other
//! commands open), [`aggregate`] (pipelines and the `$changeStream` entry),
//! [`indexes`], [`collections`], [`replset`] (the `replSet*` admin
//! commands), [`sasl`] (authentication), [`users`] (user management) and
//! [`reconfig`] (`replSetReconfig`, `replSetStepDown`).
//! [`args`] parses command fields; [`admission`] holds the checks that run
//! before a command does its work, access control among them.

mod admission;
mod aggregate;
mod args;
mod collections;
mod cursors;
mod delete;
mod handshake;
mod indexes;
mod insert;
mod query;
mod reconfig;
mod replset;
mod sasl;
mod update;
mod users;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bson::{doc, Bson, Document};

use crate::auth::{Principal, Session};
use crate::error::CmdError;
use crate::state::{Role, State};
use crate::{HoldPoint, Shared};

use admission::{admin_only, authorize};

/// Who is asking: the cluster, the member this connection reached, the
/// connection's id (reported by `hello` as `connectionId`) and whom it
/// authenticated as.
pub(crate) struct Ctx<'a> {
    pub shared: &'a Arc<Shared>,
    pub member: usize,
    pub conn_id: i64,
    /// A std `Mutex`: held only to read or replace the state, never across
    /// an `.await`, and never while taking the shared lock.
    pub session: Mutex<Session>,
}

impl Ctx<'_> {
    pub(crate) fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn principal(&self) -> Option<Principal> {
        self.session().principal.clone()
    }
}

/// What the connection does with a command's result.
pub(crate) enum Outcome {
    /// Send this document as the reply.
    Reply(Document),
    /// Hang up without replying (member gone, or an injected fault).
    Close,
}

/// Command results that must drop the connection instead of replying.
pub(crate) enum Fail {
    /// Answer with mongod's error reply (`ok: 0`, `code`, `errmsg`, ...).
    Cmd(CmdError),
    /// Hang up without replying.
    Close,
}

impl From<CmdError> for Fail {
    fn from(e: CmdError) -> Self {
        Fail::Cmd(e)
    }
}

/// A command's reply document (`ok: 1` and its fields), or how it failed.
pub(crate) type CmdResult = Result<Document, Fail>;

/// Runs one command document (first key = command name, `$db` required) on
/// `ctx.member`. Replies with [`Outcome::Close`] when the member is
/// unreachable (killed or partitioned) or an injected fault drops the reply.
pub(crate) async fn run(ctx: &Ctx<'_>, body: Document) -> Outcome {
    let name = body.keys().next().cloned().unwrap_or_default();
    let gate = {
        let mut st = ctx.shared.lock();
        if !st.reachable(ctx.member) {
            return Outcome::Close;
        }
        *st.commands_run.entry(name.clone()).or_default() += 1;
        if st.take_refusal(&name) {
            return Outcome::Reply(error_doc(
                &st,
                ctx.member,
                &CmdError::not_writable_primary(false),
            ));
        }
        st.take_hold(&name, HoldPoint::BeforeRunning, &body)
    };
    if let Some((label, gate)) = gate {
        wait_at(ctx, &label, gate).await;
    }
    let result = match body.get("$db") {
        Some(Bson::String(db)) => {
            let db = db.clone();
            dispatch(ctx, &name, &db, &body).await
        }
        _ => Err(Fail::Cmd(CmdError::new(
            40571,
            "Location40571",
            "OP_MSG requests require a $db argument",
        ))),
    };
    let gate = ctx
        .shared
        .lock()
        .take_hold(&name, HoldPoint::BeforeReplying, &body);
    if let Some((label, gate)) = gate {
        wait_at(ctx, &label, gate).await;
    }
    let mut reply = match result {
        Ok(d) => d,
        Err(Fail::Close) => return Outcome::Close,
        Err(Fail::Cmd(e)) => {
            let st = ctx.shared.lock();
            error_doc(&st, ctx.member, &e)
        }
    };
    let mut st = ctx.shared.lock();
    if trace_enabled() {
        eprintln!(
            "replset-sim member {} conn {}: {body} -> {reply}",
            ctx.member, ctx.conn_id
        );
    }
    if !st.reachable(ctx.member) || st.take_drop_reply(&name) {
        return Outcome::Close;
    }
    if matches!(st.role(ctx.member), Role::Primary | Role::Secondary) {
        let visible = st.visible_len(ctx.member, Instant::now());
        let op_time = match reply.get("operationTime") {
            Some(Bson::Timestamp(t)) => *t,
            _ => st.last_optime(visible).0,
        };
        st.cluster_time_fields(&mut reply, op_time);
    }
    Outcome::Reply(reply)
}

/// Waits at a [`crate::Cluster::hold_next`] until the test releases
/// `label`, counted in [`crate::Cluster::held`] meanwhile.
async fn wait_at(ctx: &Ctx<'_>, label: &str, mut gate: tokio::sync::watch::Receiver<bool>) {
    *ctx.shared
        .lock()
        .held_now
        .entry(label.to_owned())
        .or_default() += 1;
    // A gate dropped unopened (the cluster is going away) lets it go too.
    let _ = gate.wait_for(|open| *open).await;
    if let Some(n) = ctx.shared.lock().held_now.get_mut(label) {
        *n -= 1;
    }
}

/// `REPLSET_SIM_TRACE=1` prints every command and reply to stderr, which is
/// the quickest way to see what a driver actually sent.
fn trace_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("REPLSET_SIM_TRACE").is_some_and(|v| v != "0"))
}

/// mongod's error reply for `e`: `ok: 0`, `errmsg`, `code`, `codeName`,
/// `errorLabels` if any, `topologyVersion` for state-change errors, and the
/// error's extra fields.
fn error_doc(st: &State, member: usize, e: &CmdError) -> Document {
    let mut d = doc! {
        "ok": 0.0,
        "errmsg": e.msg.clone(),
        "code": e.code,
        "codeName": e.code_name,
    };
    if !e.labels.is_empty() {
        d.insert(
            "errorLabels",
            e.labels
                .iter()
                .map(|l| Bson::String(l.to_string()))
                .collect::<Vec<_>>(),
        );
    }
    if e.with_topology_version {
        d.insert("topologyVersion", st.topology_version(member));
    }
    if let Some(extra) = &e.extra {
        for (k, v) in extra.iter() {
            d.insert(k.clone(), v.clone());
        }
    }
    d
}

/// Routes a command by name to its family. Unknown names get mongod's
/// `CommandNotFound` (59).
async fn dispatch(ctx: &Ctx<'_>, name: &str, db: &str, body: &Document) -> CmdResult {
    authorize(ctx, name, db, body)?;
    match name {
        "hello" | "isMaster" | "ismaster" => handshake::hello(ctx, body, name != "hello").await,
        "ping" => Ok(handshake::ping()),
        "endSessions" => Ok(handshake::end_sessions()),
        "insert" => insert::insert(ctx, db, body).await,
        "update" => update::update(ctx, db, body).await,
        "delete" => delete::delete(ctx, db, body).await,
        "find" => query::find(ctx, db, body).await,
        "count" => query::count(ctx, db, body),
        "getMore" => cursors::get_more(ctx, db, body).await,
        "killCursors" => cursors::kill_cursors(ctx, db, body),
        "aggregate" => aggregate::aggregate(ctx, db, body).await,
        "createIndexes" => indexes::create_indexes(ctx, db, body),
        "listIndexes" => indexes::list_indexes(ctx, db, body),
        "dropIndexes" => indexes::drop_indexes(ctx, db, body),
        "create" => collections::create_coll(ctx, db, body),
        "listCollections" => collections::list_collections(ctx, db, body),
        "drop" => collections::drop_coll(ctx, db, body),
        "dropDatabase" => collections::drop_database(ctx, db),
        "replSetGetStatus" => admin_only(name, db).and_then(|_| replset::repl_status(ctx)),
        "replSetGetConfig" => admin_only(name, db).and_then(|_| replset::repl_config(ctx, body)),
        "replSetInitiate" => admin_only(name, db).and_then(|_| replset::repl_initiate(ctx, body)),
        "saslStart" => sasl::sasl_start(ctx, db, body),
        "saslContinue" => sasl::sasl_continue(ctx, body),
        "createUser" => users::create_user(ctx, db, body),
        "updateUser" => users::update_user(ctx, db, body),
        "usersInfo" => users::users_info(ctx, db, body, ctx.principal()),
        "replSetReconfig" => match admin_only(name, db) {
            Ok(()) => reconfig::reconfig(ctx, body).await,
            Err(e) => Err(e),
        },
        "replSetStepDown" => match admin_only(name, db) {
            Ok(()) => reconfig::step_down(ctx, body).await,
            Err(e) => Err(e),
        },
        _ => Err(CmdError::new(59, "CommandNotFound", format!("no such command: '{name}'")).into()),
    }
}

/// Waits until `cond` holds or `deadline` passes (`None`: no deadline),
/// waking on every state change and whenever a lagged secondary applies the
/// next log entry. `cond` runs under the shared lock with the current time.
/// Returns whether `cond` held.
pub(crate) async fn wait_for<F>(ctx: &Ctx<'_>, deadline: Option<Instant>, mut cond: F) -> bool
where
    F: FnMut(&mut State, Instant) -> bool,
{
    let mut rx = ctx.shared.changed.subscribe();
    loop {
        rx.borrow_and_update();
        let now = Instant::now();
        let wake = {
            let mut st = ctx.shared.lock();
            if cond(&mut st, now) {
                return true;
            }
            st.next_visibility(now)
        };
        if deadline.is_some_and(|d| now >= d) {
            return false;
        }
        let until = match (wake, deadline) {
            (Some(w), Some(d)) => Some(w.min(d)),
            (w, d) => w.or(d),
        };
        match until {
            Some(u) => {
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = tokio::time::sleep_until(u.into()) => {}
                }
            }
            None => {
                let _ = rx.changed().await;
            }
        }
    }
}
