//! Cursors: the first batch every cursor-returning command answers with,
//! the member-local cursor that parks the rest, `getMore` (for find-style
//! cursors here, for change streams in [`crate::changestream`]) and
//! `killCursors`. Cursors live on one member and die with it.

use std::collections::VecDeque;
use std::time::Duration;

use bson::{doc, Bson, Document};

use super::args::{get_int, max_time};
use super::{CmdResult, Ctx};
use crate::changestream;
use crate::error::CmdError;
use crate::state::{Cursor, State};

/// Documents in a first batch when the command sets no `batchSize`, as in
/// mongod.
const DEFAULT_BATCH: usize = 101;

/// The most document bytes in one batch: as in mongod, a `find` or
/// `getMore` batch stops before the document that would take it past 16 MiB
/// (but always holds at least one), so a batch always fits a reply.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Takes the next batch off `docs`: up to `n` documents, fewer when they
/// would pass [`MAX_BATCH_BYTES`].
fn take_batch(docs: &mut VecDeque<Document>, n: usize) -> Vec<Document> {
    let mut bytes = 0;
    let mut count = 0;
    for d in docs.iter().take(n) {
        let size = bson::to_vec(d).map_or(0, |v| v.len());
        if count > 0 && bytes + size > MAX_BATCH_BYTES {
            break;
        }
        bytes += size;
        count += 1;
    }
    docs.drain(..count).collect()
}

/// `{cursor: {<batch_key>: docs, id, ns}, ok: 1}`; `batch_key` is
/// `firstBatch` or `nextBatch`, `id` 0 means the cursor is exhausted.
fn cursor_reply(id: i64, ns: &str, batch_key: &str, docs: Vec<Document>) -> Document {
    let batch: Vec<Bson> = docs.into_iter().map(Bson::Document).collect();
    doc! {
        "cursor": {
            batch_key: batch,
            "id": id,
            "ns": ns,
        },
        "ok": 1.0,
    }
}

/// Returns the first batch (`batch_size` documents, default 101, at most
/// [`MAX_BATCH_BYTES`]) and parks
/// the rest in a cursor on `member`, unless `single_batch` or nothing is
/// left (then the cursor id is 0).
pub(super) fn start_cursor(
    st: &mut State,
    member: usize,
    ns: &str,
    mut docs: VecDeque<Document>,
    batch_size: Option<usize>,
    single_batch: bool,
) -> Document {
    let n = batch_size.unwrap_or(DEFAULT_BATCH).min(docs.len());
    let first = take_batch(&mut docs, n);
    let id = if docs.is_empty() || single_batch {
        0
    } else {
        let id = st.new_cursor_id();
        st.members[member].cursors.insert(
            id,
            Cursor::Find {
                ns: ns.to_string(),
                docs,
            },
        );
        id
    };
    cursor_reply(id, ns, "firstBatch", first)
}

/// `getMore`: the next batch (`batchSize`, default all that is left, at most
/// [`MAX_BATCH_BYTES`]) of a
/// cursor on this member. `CursorNotFound` (43) for an unknown id,
/// `Unauthorized` (13) when `collection` names another namespace. Change
/// stream cursors wait up to `maxTimeMS` (default 1 s) for events.
pub(super) async fn get_more(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let id = get_int(body, "getMore")?.unwrap_or(0);
    let coll = body.get_str("collection").unwrap_or_default().to_string();
    let batch_size = get_int(body, "batchSize")?
        .filter(|b| *b > 0)
        .map(|b| b as usize);
    let (cursor, pid) = {
        let mut st = ctx.shared.lock();
        let pid = st.members[ctx.member].process_id;
        match st.members[ctx.member].cursors.remove(&id) {
            Some(c) => (c, pid),
            None => {
                return Err(CmdError::new(
                    43,
                    "CursorNotFound",
                    format!("cursor id {id} not found"),
                )
                .into())
            }
        }
    };
    let requested_ns = format!("{db}.{coll}");
    match cursor {
        Cursor::Find { ns, mut docs } => {
            let mut st = ctx.shared.lock();
            if !ns_matches(&ns, &requested_ns) {
                st.members[ctx.member].cursors.insert(
                    id,
                    Cursor::Find {
                        ns: ns.clone(),
                        docs,
                    },
                );
                return Err(wrong_ns(&requested_ns, &ns).into());
            }
            let n = batch_size.unwrap_or(usize::MAX).min(docs.len());
            let batch = take_batch(&mut docs, n);
            let out_id = if docs.is_empty() {
                0
            } else {
                st.members[ctx.member].cursors.insert(
                    id,
                    Cursor::Find {
                        ns: ns.clone(),
                        docs,
                    },
                );
                id
            };
            Ok(cursor_reply(out_id, &ns, "nextBatch", batch))
        }
        Cursor::Change(cur) => {
            if !ns_matches(&cur.cursor_ns, &requested_ns) {
                let ns = cur.cursor_ns.clone();
                ctx.shared.lock().members[ctx.member]
                    .cursors
                    .insert(id, Cursor::Change(cur));
                return Err(wrong_ns(&requested_ns, &ns).into());
            }
            let wait = max_time(body)?.unwrap_or(Duration::from_secs(1));
            changestream::get_more(ctx, id, pid, cur, batch_size, wait).await
        }
    }
}

/// Whether a `getMore` for `requested` may continue a cursor on
/// `cursor_ns`; command cursors (`<db>.$cmd...`) match any collection of
/// their database.
fn ns_matches(cursor_ns: &str, requested: &str) -> bool {
    cursor_ns == requested
        || cursor_ns
            .split_once(".$cmd")
            .is_some_and(|(db, _)| requested.starts_with(&format!("{db}.")))
}

fn wrong_ns(requested: &str, actual: &str) -> CmdError {
    CmdError::new(
        13,
        "Unauthorized",
        format!(
            "Requested getMore on namespace '{requested}', but cursor belongs to a different \
             namespace {actual}"
        ),
    )
}

/// `killCursors`: closes the listed cursors of this member and reports
/// which were found (`cursorsKilled`) and which were not
/// (`cursorsNotFound`). `FailedToParse` (9) without a `cursors` array.
pub(super) fn kill_cursors(ctx: &Ctx<'_>, _db: &str, body: &Document) -> CmdResult {
    let ids = match body.get("cursors") {
        Some(Bson::Array(a)) => a.clone(),
        _ => return Err(CmdError::failed_to_parse("killCursors needs 'cursors'").into()),
    };
    let mut st = ctx.shared.lock();
    let mut killed = Vec::new();
    let mut not_found = Vec::new();
    for id in ids {
        let id = match id {
            Bson::Int64(i) => i,
            Bson::Int32(i) => i as i64,
            _ => continue,
        };
        if st.members[ctx.member].cursors.remove(&id).is_some() {
            killed.push(Bson::Int64(id));
        } else {
            not_found.push(Bson::Int64(id));
        }
    }
    Ok(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
        "ok": 1.0,
    })
}
