//! `insert`, the only write command: write concern (implicit majority,
//! `wtimeout`, `writeConcernError` 64), retryable writes keyed by
//! lsid + txnNumber (a retried statement is not applied twice), ordered
//! and unordered batches, and mongod's `_id` rules.

use std::time::{Duration, Instant};

use bson::{doc, oid::ObjectId, Bson, Document};

use super::args::{coll_name, get_doc, get_int};
use super::{wait_for, CmdResult, Ctx};
use crate::error::CmdError;
use crate::state::{optime, Config, Role, State, TxnRecord};

/// A parsed `writeConcern`.
pub(super) struct WriteConcern {
    /// Members that must have applied the write; `None` = unacknowledged.
    w: Option<usize>,
    /// `w: "majority"`: a majority of the voting members as the config says
    /// when the wait ends (a reconfig may change it meanwhile).
    majority: bool,
    /// How long to wait for `w` members; `None` = until they are there.
    wtimeout: Option<Duration>,
    /// As sent, echoed in `writeConcernError.errInfo`.
    raw: Document,
}

/// Reads `writeConcern` (absent = `{w: "majority"}`, the default since
/// 5.0). `UnknownReplWriteConcern` (79) for a named mode,
/// `UnsatisfiableWriteConcern` (100) for more members than the config has.
pub(super) fn parse_write_concern(st: &State, body: &Document) -> Result<WriteConcern, CmdError> {
    let raw = get_doc(body, "writeConcern")?.unwrap_or_default();
    let majority = matches!(raw.get("w"), None | Some(Bson::String(_)));
    let members = st.config.as_ref().map_or(1, |c| c.members.len());
    let majority_n = st.config.as_ref().map_or(1, Config::majority);
    let w = match raw.get("w") {
        None => Some(majority_n), // implicit default {w: "majority"} since 5.0
        Some(Bson::String(s)) if s == "majority" => Some(majority_n),
        Some(Bson::String(s)) => {
            return Err(CmdError::new(
                79,
                "UnknownReplWriteConcern",
                format!("No write concern mode named '{s}' found in replica set configuration"),
            ))
        }
        Some(_) => match get_int(&raw, "w")? {
            Some(0) => None,
            Some(n) if n > 0 => Some(n as usize),
            _ => {
                return Err(CmdError::failed_to_parse(
                    "w has to be a non-negative number",
                ))
            }
        },
    };
    if w.is_some_and(|n| n > members) {
        return Err(CmdError::new(
            100,
            "UnsatisfiableWriteConcern",
            "Not enough data-bearing nodes",
        ));
    }
    let wtimeout = get_int(&raw, "wtimeout")?
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms as u64));
    Ok(WriteConcern {
        w,
        majority,
        wtimeout,
        raw,
    })
}

/// Blocks until the write at `pos` is on `w` members. Majority is always
/// reachable while a primary exists (it steps down otherwise), so this only
/// waits for the secondary apply delay and for numeric `w` above the number
/// of reachable members.
pub(super) async fn await_write_concern(
    ctx: &Ctx<'_>,
    wc: &WriteConcern,
    pos: usize,
) -> Option<Document> {
    let need = wc.w?;
    if need <= 1 {
        return None;
    }
    {
        let mut st = ctx.shared.lock();
        st.write_concern_waiting += 1;
        st.peak_write_concern_waiting = st.peak_write_concern_waiting.max(st.write_concern_waiting);
    }
    let failure = wait_for_write_concern(ctx, wc, pos, need).await;
    ctx.shared.lock().write_concern_waiting -= 1;
    failure
}

async fn wait_for_write_concern(
    ctx: &Ctx<'_>,
    wc: &WriteConcern,
    pos: usize,
    need: usize,
) -> Option<Document> {
    let deadline = wc.wtimeout.map(|t| Instant::now() + t);
    let majority = wc.majority;
    let ok = wait_for(ctx, deadline, |st, now| {
        let Some(c) = st.config.as_ref() else {
            return false;
        };
        let has = |m: &&crate::state::ConfigMember| {
            st.reachable(m.member) && st.visible_len(m.member, now) >= pos
        };
        if majority {
            c.voters().filter(has).count() >= c.majority()
        } else {
            c.members.iter().filter(has).count() >= need
        }
    })
    .await;
    if ok {
        None
    } else {
        Some(doc! {
            "code": 64,
            "codeName": "WriteConcernFailed",
            "errmsg": "waiting for replication timed out",
            "errInfo": {"wtimeout": true, "writeConcern": wc.raw.clone()},
        })
    }
}

/// The session's identity as bytes, the key of the retry table.
fn lsid_key(body: &Document) -> Option<Vec<u8>> {
    let lsid = body.get_document("lsid").ok()?;
    let mut key = Vec::new();
    doc! {"id": lsid.get("id")?.clone()}
        .to_writer(&mut key)
        .ok()?;
    Some(key)
}

/// `insert`: applies `documents` in order on the primary, then waits for
/// the write concern. Replies `{n, writeErrors?, retriedStmtIds?,
/// writeConcernError?, opTime, electionId}`; `NotWritablePrimary` (10107,
/// with `RetryableWriteError` when retryable) off the primary,
/// `TransactionTooOld` (225) for an older txnNumber, `IllegalOperation` (20)
/// inside a transaction.
pub(super) async fn insert(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let coll = coll_name(body, "insert")?;
    let ns = format!("{db}.{coll}");
    let docs = match body.get("documents") {
        Some(Bson::Array(a)) => a.clone(),
        _ => {
            return Err(CmdError::failed_to_parse(
                "BSON field 'insert.documents' is missing but a required field",
            )
            .into())
        }
    };
    if docs.is_empty() || docs.len() > crate::state::MAX_WRITE_BATCH_SIZE as usize {
        return Err(CmdError::new(
            16,
            "InvalidLength",
            format!(
                "Write batch sizes must be between 1 and 100000. Got {} operations.",
                docs.len()
            ),
        )
        .into());
    }
    if body.contains_key("startTransaction") || body.contains_key("autocommit") {
        return Err(CmdError::new(
            20,
            "IllegalOperation",
            "multi-document transactions are not simulated",
        )
        .into());
    }
    let ordered = body.get_bool("ordered").unwrap_or(true);
    let txn = get_int(body, "txnNumber")?;
    let session = lsid_key(body);

    // `Cluster::stall_insert_of`: the documents take their timestamps
    // now, and the commit below waits, as mongod's can between the two.
    let mut stamped: Option<Vec<Result<Document, CmdError>>> = None;
    let stall = {
        let mut st = ctx.shared.lock();
        let stalls_this = st.insert_stall.as_ref().is_some_and(|(id, _)| {
            docs.iter()
                .any(|d| matches!(d, Bson::Document(d) if d.get("_id") == Some(id)))
        });
        if stalls_this && st.role(ctx.member) == Role::Primary {
            let wait = st.insert_stall.take().map(|(_, wait)| wait);
            stamped = Some(
                docs.iter()
                    .map(|d| match d {
                        Bson::Document(d) => prepare_doc(d.clone(), &mut st),
                        _ => Err(CmdError::type_mismatch("documents must be objects")),
                    })
                    .collect(),
            );
            st.stalled_inserts += 1;
            wait
        } else {
            None
        }
    };
    if let Some(wait) = stall {
        tokio::time::sleep(wait).await;
        ctx.shared.lock().stalled_inserts -= 1;
    }

    let (wc, n, write_errors, retried, last_pos, op_ts, term) = {
        let mut st = ctx.shared.lock();
        let wc = parse_write_concern(&st, body)?;
        if st.role(ctx.member) != Role::Primary {
            return Err(CmdError::not_writable_primary(txn.is_some()).into());
        }
        let retry_key = match (txn, &session) {
            (Some(t), Some(k)) => {
                let rec = st.sessions.entry(k.clone()).or_insert(TxnRecord {
                    txn_number: t,
                    done: Default::default(),
                });
                if rec.txn_number > t {
                    return Err(CmdError::new(
                        225,
                        "TransactionTooOld",
                        format!(
                            "Retryable write with txnNumber {t} is prohibited on session because \
                             a newer retryable write with txnNumber {} has already started on \
                             this session.",
                            rec.txn_number
                        ),
                    )
                    .into());
                }
                if rec.txn_number < t {
                    rec.txn_number = t;
                    rec.done.clear();
                }
                Some(k.clone())
            }
            _ => None,
        };
        let mut n = 0i32;
        let mut write_errors = Vec::new();
        let mut retried = Vec::new();
        let mut last_pos = None;
        for (i, d) in docs.iter().enumerate() {
            let stmt = i as i32;
            if let Some(k) = &retry_key {
                if st.sessions.get(k).is_some_and(|r| r.done.contains(&stmt)) {
                    n += 1;
                    retried.push(Bson::Int32(stmt));
                    continue;
                }
            }
            let prepared = match stamped.as_mut() {
                Some(stamped) => std::mem::replace(
                    &mut stamped[i],
                    Err(CmdError::type_mismatch("documents must be objects")),
                ),
                None => match d {
                    Bson::Document(d) => prepare_doc(d.clone(), &mut st),
                    _ => Err(CmdError::type_mismatch("documents must be objects")),
                },
            };
            let result = prepared.and_then(|d| st.insert_doc(&ns, d));
            match result {
                Ok(pos) => {
                    n += 1;
                    last_pos = Some(pos);
                    if let Some(k) = &retry_key {
                        if let Some(r) = st.sessions.get_mut(k) {
                            r.done.insert(stmt);
                        }
                    }
                }
                Err(e) => {
                    let mut we = doc! {"index": stmt, "code": e.code, "errmsg": e.msg.clone()};
                    if let Some(extra) = &e.extra {
                        for (k, v) in extra.iter() {
                            we.insert(k.clone(), v.clone());
                        }
                    }
                    write_errors.push(Bson::Document(we));
                    if ordered {
                        break;
                    }
                }
            }
        }
        let op_ts = st.last_ts;
        (wc, n, write_errors, retried, last_pos, op_ts, st.term)
    };
    ctx.shared.notify();

    let wce = match last_pos {
        Some(pos) => await_write_concern(ctx, &wc, pos).await,
        None => None,
    };
    let mut reply = doc! {"n": n};
    if !write_errors.is_empty() {
        reply.insert("writeErrors", write_errors);
    }
    if !retried.is_empty() {
        reply.insert("retriedStmtIds", retried);
    }
    Ok(finish_write_reply(reply, wce, op_ts, term))
}

/// What every write reply ends with: the write concern error if any, the
/// operation time and the primary's election id.
pub(super) fn finish_write_reply(
    mut reply: Document,
    write_concern_error: Option<Document>,
    op_ts: bson::Timestamp,
    term: i64,
) -> Document {
    if let Some(wce) = write_concern_error {
        reply.insert("writeConcernError", wce);
    }
    reply.insert("opTime", optime(op_ts, term));
    reply.insert("electionId", crate::state::election_id(term));
    reply.insert("ok", 1.0);
    reply.insert("operationTime", op_ts);
    reply
}

/// mongod puts a generated `_id` first, refuses arrays as `_id`, and
/// replaces an empty timestamp (`Timestamp(0, 0)`) in a top-level field
/// other than `_id` with the current cluster time, a value unique within the
/// mongod (<https://www.mongodb.com/docs/manual/reference/bson-types/#timestamps>).
/// It takes that value before it writes the oplog entry, whose timestamp is
/// therefore later: so does this.
fn prepare_doc(mut d: Document, st: &mut State) -> Result<Document, CmdError> {
    let empty: Vec<String> = d
        .iter()
        .filter(|(k, v)| {
            k.as_str() != "_id"
                && matches!(v, Bson::Timestamp(t) if t.time == 0 && t.increment == 0)
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in empty {
        d.insert(key, st.next_ts());
    }
    match d.get("_id") {
        Some(Bson::Array(_)) => Err(CmdError::new(
            53,
            "InvalidIdField",
            "The '_id' value cannot be of type array",
        )),
        Some(Bson::RegularExpression(_)) => Err(CmdError::new(
            53,
            "InvalidIdField",
            "The '_id' value cannot be of type regex",
        )),
        Some(_) => Ok(d),
        None => {
            let mut out = doc! {"_id": ObjectId::new()};
            out.extend(d);
            Ok(out)
        }
    }
}
