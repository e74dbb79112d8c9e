//! The driver's connection and monitoring traffic: `hello` (and the legacy
//! `isMaster`/`ismaster`), including the awaitable form the driver's
//! streaming monitor sends and the authentication fields of a connection
//! handshake, `ping`, and `endSessions`, which drivers send when a client
//! shuts down.

use std::time::{Duration, Instant};

use bson::{doc, Document};

use super::args::{get_doc, get_int};
use super::{wait_for, CmdResult, Ctx, Fail};

/// `hello`, or `isMaster` when `legacy` (then the role field is `ismaster`
/// instead of `isWritablePrimary`). With `topologyVersion` and
/// `maxAwaitTimeMS` (milliseconds) it is the awaitable form: it returns as
/// soon as this member's `topologyVersion` differs from the one sent, or
/// after `maxAwaitTimeMS`.
/// Closes the connection if the member became unreachable meanwhile.
pub(super) async fn hello(ctx: &Ctx<'_>, body: &Document, legacy: bool) -> CmdResult {
    let hello_ok = body.get_bool("helloOk").unwrap_or(false);
    if let (Some(tv), Some(max_await)) = (
        get_doc(body, "topologyVersion")?,
        get_int(body, "maxAwaitTimeMS")?,
    ) {
        let pid = tv.get_object_id("processId").ok();
        let counter = get_int(&tv, "counter")?.unwrap_or(-1);
        let member = ctx.member;
        let deadline = Instant::now() + Duration::from_millis(max_await.max(0) as u64);
        wait_for(ctx, Some(deadline), |st, _| {
            !st.reachable(member)
                || Some(st.members[member].process_id) != pid
                || st.topology_counter != counter
        })
        .await;
    }
    let mut reply = {
        let st = ctx.shared.lock();
        if !st.reachable(ctx.member) {
            return Err(Fail::Close);
        }
        st.hello(ctx.member, legacy, hello_ok, ctx.conn_id)
    };
    super::sasl::hello_fields(ctx, body, &mut reply);
    Ok(reply)
}

/// `ping`: `{ok: 1}` on any member in any state.
pub(super) fn ping() -> Document {
    doc! {"ok": 1.0}
}

/// `endSessions`: accepted and ignored (sessions never expire here).
pub(super) fn end_sessions() -> Document {
    doc! {"ok": 1.0}
}
