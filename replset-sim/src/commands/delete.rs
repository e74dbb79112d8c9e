//! `delete`, as another client (the lab's app, an operator's shell) sends
//! it: `deleteOne` and `deleteMany` with a filter.

use bson::{doc, Bson, Document};

use super::args::coll_name;
use super::insert::{await_write_concern, finish_write_reply, parse_write_concern};
use super::{CmdResult, Ctx};
use crate::error::CmdError;
use crate::matcher::{compare, matches};
use crate::state::Role;

/// `delete` on the primary, then the write concern: the statements in
/// order, each removing the first matching document (`limit: 1`, a
/// `deleteOne`) or every one (`limit: 0`, a `deleteMany`), each document
/// its own write and change event, as mongod's oplog has one entry per
/// deleted document
/// (<https://www.mongodb.com/docs/manual/reference/command/delete/>).
/// Replies `{n, opTime, electionId}` and `writeConcernError` as `insert`.
/// A `limit` other than 0 or 1 is refused, as mongod refuses it. A
/// statement's documents are taken in `_id` order. A retried statement
/// (same `txnNumber`) is applied again instead of being answered from the
/// session's record (FIDELITY.md).
pub(super) async fn delete(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let coll = coll_name(body, "delete")?;
    let ns = format!("{db}.{coll}");
    let statements = match body.get("deletes") {
        Some(Bson::Array(a)) if !a.is_empty() => a.clone(),
        _ => {
            return Err(CmdError::failed_to_parse(
                "BSON field 'delete.deletes' is missing but a required field",
            )
            .into())
        }
    };
    let retryable = body.contains_key("txnNumber");
    let (wc, n, last_pos, op_ts, term) = {
        let mut st = ctx.shared.lock();
        let wc = parse_write_concern(&st, body)?;
        if st.role(ctx.member) != Role::Primary {
            return Err(CmdError::not_writable_primary(retryable).into());
        }
        let (mut n, mut last_pos) = (0i32, None);
        for statement in &statements {
            let Bson::Document(statement) = statement else {
                return Err(CmdError::type_mismatch("deletes must be objects").into());
            };
            let q = statement
                .get_document("q")
                .map_err(|_| CmdError::failed_to_parse("delete statements need 'q' as a document"))?
                .clone();
            let one = match statement.get("limit") {
                Some(Bson::Int32(1)) | Some(Bson::Int64(1)) => true,
                Some(Bson::Int32(0)) | Some(Bson::Int64(0)) => false,
                Some(Bson::Double(l)) if *l == 1.0 => true,
                Some(Bson::Double(l)) if *l == 0.0 => false,
                _ => {
                    return Err(CmdError::failed_to_parse(
                        "The limit field in delete objects must be 0 or 1",
                    )
                    .into())
                }
            };
            let now = std::time::Instant::now();
            let mut targets = Vec::new();
            for d in st.visible_docs(&ns, ctx.member, now) {
                if matches(d, &q)? {
                    targets.extend(d.get("_id").cloned());
                }
            }
            targets.sort_by(compare);
            if one {
                targets.truncate(1);
            }
            for id in targets {
                if let Some(pos) = st.delete_doc(&ns, &id) {
                    n += 1;
                    last_pos = Some(pos);
                }
            }
        }
        (wc, n, last_pos, st.last_ts, st.term)
    };
    ctx.shared.notify();
    let wce = match last_pos {
        Some(pos) => await_write_concern(ctx, &wc, pos).await,
        None => None,
    };
    Ok(finish_write_reply(doc! {"n": n}, wce, op_ts, term))
}
