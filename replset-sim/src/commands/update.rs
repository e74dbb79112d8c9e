//! `update`, as far as the product uses it: documents modified by `$set`
//! and `$currentDate` only.

use bson::{doc, Bson, DateTime, Document};

use super::args::coll_name;
use super::insert::{await_write_concern, finish_write_reply, parse_write_concern};
use super::{CmdResult, Ctx};
use crate::error::CmdError;
use crate::matcher::{compare, matches};
use crate::state::{Role, State};

/// The fields one update statement sets, with `$currentDate` resolved
/// (`{$type: "timestamp"}` takes the next cluster time, as mongod does:
/// <https://www.mongodb.com/docs/manual/reference/operator/update/currentDate/>).
fn resolve(u: &Document, st: &mut State) -> Result<Document, CmdError> {
    let mut out = Document::new();
    for (op, fields) in u {
        let Bson::Document(fields) = fields else {
            return Err(CmdError::failed_to_parse(format!(
                "Modifiers operate on fields but we found type {} instead",
                fields.element_type() as u8
            )));
        };
        match op.as_str() {
            "$set" => out.extend(fields.clone()),
            "$currentDate" => {
                for (field, spec) in fields {
                    let value = match spec {
                        Bson::Boolean(true) => Bson::DateTime(DateTime::now()),
                        Bson::Document(d) => match d.get_str("$type") {
                            Ok("timestamp") => Bson::Timestamp(st.next_ts()),
                            Ok("date") => Bson::DateTime(DateTime::now()),
                            _ => return Err(CmdError::bad_value(
                                "The '$type' string field is required to be 'date' or 'timestamp'",
                            )),
                        },
                        _ => {
                            return Err(CmdError::bad_value(
                                "$currentDate takes true or {$type: 'date' | 'timestamp'}",
                            ))
                        }
                    };
                    out.insert(field.clone(), value);
                }
            }
            other if other.starts_with('$') => {
                return Err(CmdError::new(
                    9,
                    "FailedToParse",
                    format!(
                        "Unknown modifier: {other}. (only $set and $currentDate are simulated)"
                    ),
                ))
            }
            _ => {
                return Err(CmdError::bad_value(
                    "replacement updates are not simulated; use $set or $currentDate",
                ))
            }
        }
    }
    Ok(out)
}

/// `update` on the primary, then the write concern: the statements in
/// order, each on the first matching document or, with `multi: true`, on
/// every one (each document its own write, with its own `$currentDate`
/// timestamp and change event, as mongod applies a multi-update). Replies
/// `{n, nModified, writeErrors?, writeConcernError?, opTime, electionId}`;
/// a statement that fails (a result over 16 MiB) is reported in
/// `writeErrors`, not counted, and ends the command there when `ordered`
/// (the default), with what went before applied. A multi statement walks
/// the documents in `_id` order. `upsert` is
/// refused as not simulated.
pub(super) async fn update(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let coll = coll_name(body, "update")?;
    let ns = format!("{db}.{coll}");
    let statements = match body.get("updates") {
        Some(Bson::Array(a)) if !a.is_empty() => a.clone(),
        _ => {
            return Err(CmdError::failed_to_parse(
                "BSON field 'update.updates' is missing but a required field",
            )
            .into())
        }
    };
    let retryable = body.contains_key("txnNumber");
    let ordered = body.get_bool("ordered").unwrap_or(true);
    let (wc, n, modified, write_errors, last_pos, op_ts, term) = {
        let mut st = ctx.shared.lock();
        let wc = parse_write_concern(&st, body)?;
        if st.role(ctx.member) != Role::Primary {
            return Err(CmdError::not_writable_primary(retryable).into());
        }
        let (mut n, mut modified, mut last_pos) = (0i32, 0i32, None);
        let mut write_errors = Vec::new();
        'statements: for (index, statement) in statements.iter().enumerate() {
            let Bson::Document(statement) = statement else {
                return Err(CmdError::type_mismatch("updates must be objects").into());
            };
            if statement.get_bool("upsert").unwrap_or(false) {
                return Err(CmdError::bad_value("upsert: true is not simulated").into());
            }
            let multi = statement.get_bool("multi").unwrap_or(false);
            let q = statement.get_document("q").cloned().unwrap_or_default();
            let u = statement
                .get_document("u")
                .map_err(|_| CmdError::failed_to_parse("update statements need 'u' as a document"))?
                .clone();
            let now = std::time::Instant::now();
            let mut targets = Vec::new();
            for d in st.visible_docs(&ns, ctx.member, now) {
                if matches(d, &q)? {
                    targets.extend(d.get("_id").cloned());
                    if !multi {
                        break;
                    }
                }
            }
            // In `_id` order, as mongod walks its `_id` index for the
            // product's `{_id: {$in: [...]}}`.
            targets.sort_by(compare);
            let (mut matched, mut changed) = (0, 0);
            for id in targets {
                let updated = resolve(&u, &mut st)?;
                match st.update_doc(&ns, &id, updated) {
                    Ok(pos) => {
                        matched += 1;
                        if let Some(pos) = pos {
                            changed += 1;
                            last_pos = Some(pos);
                        }
                    }
                    Err(e) => {
                        write_errors.push(Bson::Document(
                            doc! {"index": index as i32, "code": e.code, "errmsg": e.msg},
                        ));
                        if ordered {
                            break 'statements;
                        }
                        continue 'statements;
                    }
                }
            }
            // A failed statement counts in `writeErrors` only.
            n += matched;
            modified += changed;
        }
        (wc, n, modified, write_errors, last_pos, st.last_ts, st.term)
    };
    ctx.shared.notify();
    let wce = match last_pos {
        Some(pos) => await_write_concern(ctx, &wc, pos).await,
        None => None,
    };
    let mut reply = doc! {"n": n, "nModified": modified};
    if !write_errors.is_empty() {
        reply.insert("writeErrors", write_errors);
    }
    Ok(finish_write_reply(reply, wce, op_ts, term))
}
