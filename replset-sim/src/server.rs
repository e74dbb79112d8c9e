//! One task per client connection: read a request, run it, write the reply.
//! Killing a member aborts these tasks, which drops the sockets mid-operation
//! exactly as a crashed mongod would. A member that vanished
//! (`Cluster::vanish`) sends nothing more: each task waits, its socket
//! open, until the member is killed or restarted.

use std::sync::Arc;

use bson::{doc, Bson, Document};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::commands::{self, Ctx, Outcome};
use crate::wire::{self, RequestKind, FLAG_EXHAUST_ALLOWED, FLAG_MORE_TO_COME};
use crate::Shared;

pub(crate) async fn serve(shared: Arc<Shared>, member: usize, sock: TcpStream) {
    let conn_id = {
        let mut st = shared.lock();
        let m = &mut st.members[member];
        m.next_connection_id += 1;
        m.next_connection_id
    };
    let ctx = Ctx {
        shared: &shared,
        member,
        conn_id,
        session: Default::default(),
    };
    let (mut rd, mut wr) = sock.into_split();
    loop {
        let req = match wire::read_request(&mut rd).await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        // A vanished host runs nothing it is sent.
        fall_silent_if_vanished(&shared, member).await;
        match req.kind {
            RequestKind::Msg { flags, body } => {
                let awaitable = is_awaitable_hello(&body);
                let outcome = commands::run(&ctx, body.clone()).await;
                let reply = match outcome {
                    Outcome::Reply(d) => d,
                    Outcome::Close => return,
                };
                fall_silent_if_vanished(&shared, member).await;
                if flags & FLAG_MORE_TO_COME != 0 {
                    // Unacknowledged request: mongod sends nothing back.
                    continue;
                }
                if awaitable && flags & FLAG_EXHAUST_ALLOWED != 0 {
                    // Streaming SDAM: keep pushing hello replies, each one
                    // as soon as the topology changes or maxAwaitTimeMS passes.
                    let Ok(mut last_id) =
                        wire::write_msg(&mut wr, req.request_id, FLAG_MORE_TO_COME, &reply).await
                    else {
                        return;
                    };
                    let mut body = body;
                    let mut last = reply;
                    loop {
                        if let Some(tv) = last.get("topologyVersion") {
                            body.insert("topologyVersion", tv.clone());
                        }
                        let mut probe = [0u8; 1];
                        let next = tokio::select! {
                            // The client never writes on an exhaust
                            // connection; any read result means it left.
                            _ = rd.read(&mut probe) => return,
                            o = commands::run(&ctx, body.clone()) => o,
                        };
                        let Outcome::Reply(d) = next else { return };
                        fall_silent_if_vanished(&shared, member).await;
                        match wire::write_msg(&mut wr, last_id, FLAG_MORE_TO_COME, &d).await {
                            Ok(id) => last_id = id,
                            Err(_) => return,
                        }
                        last = d;
                    }
                }
                if wire::write_msg(&mut wr, req.request_id, 0, &reply)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            RequestKind::Query { collection, query } => {
                let reply = legacy_query(&ctx, &collection, query).await;
                let reply = match reply {
                    Some(r) => r,
                    None => return,
                };
                fall_silent_if_vanished(&shared, member).await;
                if wire::write_reply(&mut wr, req.request_id, &reply)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // OP_COMPRESSED and removed legacy opcodes: we never advertise
            // compression, so a client sending it is broken; hang up.
            RequestKind::Unsupported => return,
        }
    }
}

/// Never returns once the member vanished: nothing is sent, and the
/// socket stays open until the member's connections are aborted.
async fn fall_silent_if_vanished(shared: &Shared, member: usize) {
    if shared.lock().members[member].silent {
        std::future::pending::<()>().await;
    }
}

fn is_awaitable_hello(body: &Document) -> bool {
    let name = body.keys().next().map(String::as_str).unwrap_or("");
    matches!(name, "hello" | "isMaster" | "ismaster")
        && body.contains_key("topologyVersion")
        && body.contains_key("maxAwaitTimeMS")
}

/// OP_QUERY is only accepted for the handshake commands, as in mongod 5.1+.
async fn legacy_query(ctx: &Ctx<'_>, collection: &str, query: Document) -> Option<Document> {
    let db = collection.strip_suffix(".$cmd")?;
    let mut cmd = match query.get("$query").or_else(|| query.get("query")) {
        Some(Bson::Document(inner)) => inner.clone(),
        _ => query,
    };
    let name = cmd.keys().next().cloned().unwrap_or_default();
    if !matches!(name.as_str(), "hello" | "isMaster" | "ismaster") {
        return Some(doc! {
            "ok": 0.0,
            "errmsg": format!(
                "Unsupported OP_QUERY command: {name}. The client driver may require an upgrade."
            ),
            "code": 352,
            "codeName": "UnsupportedOpQueryCommand",
        });
    }
    // Awaitable hello needs OP_MSG's exhaust flag; over OP_QUERY it is just
    // a plain handshake.
    cmd.remove("topologyVersion");
    cmd.remove("maxAwaitTimeMS");
    cmd.insert("$db", db);
    match commands::run(ctx, cmd).await {
        Outcome::Reply(d) => Some(d),
        Outcome::Close => None,
    }
}
