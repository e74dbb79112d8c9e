//! Change streams over the shared log. A resume token names a log position,
//! so any member can resume a stream opened on another one, which is the
//! property failover tests rely on.

use std::time::{Duration, Instant};

use bson::{doc, Bson, Document, Timestamp};

use crate::commands::{wait_for, CmdResult, Ctx};
use crate::error::CmdError;
use crate::matcher;
use crate::state::{
    ChangeCursor, Cursor, LogEntry, NsFilter, Op, Role, State, MAX_BSON_OBJECT_SIZE,
};

const KIND_EVENT: u8 = 0;
const KIND_INVALIDATE: u8 = 1;

/// `{_data: hex}` like mongod's, but the hex is this simulator's own
/// layout: timestamp, 1-based log position, event kind. Tokens sort in
/// stream order, which is all clients may assume.
fn token(ts: Timestamp, pos: usize, kind: u8) -> Document {
    doc! {"_data": format!("{:08X}{:08X}{:016X}{:02X}", ts.time, ts.increment, pos, kind)}
}

fn position_token(st: &State, next: usize) -> Document {
    token(st.last_optime(next).0, next, KIND_EVENT)
}

fn invalid_token() -> CmdError {
    CmdError::new(260, "InvalidResumeToken", "resume token is malformed")
}

fn not_found_token() -> CmdError {
    CmdError::new(
        280,
        "ChangeStreamFatalError",
        "cannot resume stream; the resume token was not found",
    )
}

/// mongod's answer when a stream's resume point is older than the oldest
/// oplog entry
/// (<https://www.mongodb.com/docs/manual/reference/error-codes/>: 286).
fn history_lost() -> CmdError {
    CmdError::new(
        286,
        "ChangeStreamHistoryLost",
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
    )
}

fn parse_token(st: &State, v: &Bson) -> Result<(usize, u8), CmdError> {
    let Bson::Document(d) = v else {
        return Err(invalid_token());
    };
    let data = d.get_str("_data").map_err(|_| invalid_token())?;
    if data.len() != 34 || !data.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid_token());
    }
    let time = u32::from_str_radix(&data[0..8], 16).map_err(|_| invalid_token())?;
    let inc = u32::from_str_radix(&data[8..16], 16).map_err(|_| invalid_token())?;
    let pos = usize::from_str_radix(&data[16..32], 16).map_err(|_| invalid_token())?;
    let kind = u8::from_str_radix(&data[32..34], 16).map_err(|_| invalid_token())?;
    // A token must name an entry of this log (or the empty start), which
    // also rejects tokens minted by another cluster.
    let expected = st.last_optime(pos).0;
    if pos > st.log.len() || expected.time != time || expected.increment != inc {
        return Err(not_found_token());
    }
    Ok((pos, kind))
}

fn ns_doc(ns: &str) -> Document {
    match ns.split_once('.') {
        Some((db, coll)) => doc! {"db": db, "coll": coll},
        None => doc! {"db": ns},
    }
}

fn invalidate(e: &LogEntry, pos: usize) -> Document {
    doc! {
        "_id": token(e.ts, pos, KIND_INVALIDATE),
        "operationType": "invalidate",
        "clusterTime": e.ts,
        "wallTime": e.wall,
    }
}

/// An event that ends the stream watching its namespace: it is followed by
/// `invalidate` (or only that, when resuming past the event itself).
fn ending(
    event: Document,
    e: &LogEntry,
    pos: usize,
    invalidate_only: bool,
    invalidated: &mut bool,
) -> Vec<Document> {
    *invalidated = true;
    if invalidate_only {
        vec![invalidate(e, pos)]
    } else {
        vec![event, invalidate(e, pos)]
    }
}

/// The events one log entry produces for a stream; sets `invalidated` when
/// the stream must end after them.
fn events_for(
    e: &LogEntry,
    pos: usize,
    filter: &NsFilter,
    invalidate_only: bool,
    invalidated: &mut bool,
) -> Vec<Document> {
    let in_db = |ns: &str, db: &str| ns.split_once('.').is_some_and(|(d, _)| d == db);
    // Whether a document change in `ns` belongs to this stream.
    let wanted = |ns: &str| match filter {
        NsFilter::Collection(c) => c == ns,
        NsFilter::Database(db) => in_db(ns, db),
        NsFilter::Cluster => true,
    };
    match &e.op {
        Op::Insert { ns, doc } => {
            if !wanted(ns) {
                return Vec::new();
            }
            let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
            vec![doc! {
                "_id": token(e.ts, pos, KIND_EVENT),
                "operationType": "insert",
                "clusterTime": e.ts,
                "wallTime": e.wall,
                "fullDocument": doc.clone(),
                "ns": ns_doc(ns),
                "documentKey": {"_id": id},
            }]
        }
        Op::Update { ns, id, updated } => {
            if !wanted(ns) {
                return Vec::new();
            }
            // Without `fullDocument: updateLookup` mongod sends only the
            // change itself.
            vec![doc! {
                "_id": token(e.ts, pos, KIND_EVENT),
                "operationType": "update",
                "clusterTime": e.ts,
                "wallTime": e.wall,
                "ns": ns_doc(ns),
                "documentKey": {"_id": id.clone()},
                "updateDescription": {
                    "updatedFields": updated.clone(),
                    "removedFields": [],
                    "truncatedArrays": [],
                },
            }]
        }
        Op::Delete { ns, id } => {
            if !wanted(ns) {
                return Vec::new();
            }
            // The document is gone: only its key, as mongod sends it
            // without pre-images.
            vec![doc! {
                "_id": token(e.ts, pos, KIND_EVENT),
                "operationType": "delete",
                "clusterTime": e.ts,
                "wallTime": e.wall,
                "ns": ns_doc(ns),
                "documentKey": {"_id": id.clone()},
            }]
        }
        Op::Drop { ns } => {
            let drop_ev = doc! {
                "_id": token(e.ts, pos, KIND_EVENT),
                "operationType": "drop",
                "clusterTime": e.ts,
                "wallTime": e.wall,
                "ns": ns_doc(ns),
            };
            match filter {
                NsFilter::Collection(c) if c == ns => {
                    ending(drop_ev, e, pos, invalidate_only, invalidated)
                }
                NsFilter::Database(db) if in_db(ns, db) => vec![drop_ev],
                NsFilter::Cluster => vec![drop_ev],
                _ => Vec::new(),
            }
        }
        Op::DropDatabase { db } => {
            let ev = doc! {
                "_id": token(e.ts, pos, KIND_EVENT),
                "operationType": "dropDatabase",
                "clusterTime": e.ts,
                "wallTime": e.wall,
                "ns": {"db": db.clone()},
            };
            match filter {
                NsFilter::Database(d) if d == db => {
                    ending(ev, e, pos, invalidate_only, invalidated)
                }
                NsFilter::Cluster => vec![ev],
                _ => Vec::new(),
            }
        }
    }
}

fn apply_stages(mut ev: Document, stages: &[Document]) -> Result<Option<Document>, CmdError> {
    for stage in stages {
        let (name, arg) = stage.iter().next().expect("validated");
        match (name.as_str(), arg) {
            ("$match", Bson::Document(f)) => {
                if !matcher::matches(&ev, f)? {
                    return Ok(None);
                }
            }
            ("$project", Bson::Document(p)) => {
                let original_id = ev.get("_id").cloned();
                ev = matcher::project(ev, &matcher::parse_projection(p)?);
                if ev.get("_id") != original_id.as_ref() {
                    return Err(CmdError::new(
                        280,
                        "ChangeStreamFatalError",
                        "Encountered an event whose _id field, which contains the resume token, \
                         was modified by the pipeline. Modifying the _id field of an event makes \
                         it impossible to resume the stream from that point. Only \
                         transformations that retain the unmodified _id field are allowed.",
                    ));
                }
            }
            _ => unreachable!("stages validated when the stream opened"),
        }
    }
    Ok(Some(ev))
}

/// mongod fails a change stream whose next event, after the pipeline, is
/// larger than a document may be (16 MiB): "If a change stream has large
/// events that exceed 16 MB, a BSONObjectTooLarge exception is returned"
/// (<https://www.mongodb.com/docs/manual/reference/operator/aggregation/changeStreamSplitLargeEvent/>).
/// An insert event carries the whole document, so a document within about
/// 200 bytes of the limit makes one.
fn check_size(ev: &Document) -> Result<(), CmdError> {
    let size = bson::to_vec(ev).map_or(0, |v| v.len());
    if size > MAX_BSON_OBJECT_SIZE as usize {
        return Err(CmdError::new(
            10334,
            "BSONObjectTooLarge",
            format!(
                "BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and {MAX_BSON_OBJECT_SIZE}(16MB)"
            ),
        ));
    }
    Ok(())
}

fn scan(
    st: &State,
    member: usize,
    cur: &mut ChangeCursor,
    limit: usize,
) -> Result<Vec<Document>, CmdError> {
    // An open stream whose next entry left the oplog.
    if cur.next < st.history_floor {
        return Err(history_lost());
    }
    // Held: the cursor stays where it is, so what it has not read comes,
    // in order, once the hold ends.
    if st.change_streams_held {
        return Ok(Vec::new());
    }
    let visible = st.visible_len(member, Instant::now());
    let mut out = Vec::new();
    while cur.next < visible && out.len() < limit && !cur.invalidated {
        let pos = cur.next + 1;
        let invalidate_only = cur.invalidate_only_at == Some(pos);
        let evs = events_for(
            &st.log[cur.next],
            pos,
            &cur.filter,
            invalidate_only,
            &mut cur.invalidated,
        );
        cur.next += 1;
        for ev in evs {
            if let Some(ev) = apply_stages(ev, &cur.stages)? {
                check_size(&ev)?;
                out.push(ev);
            }
        }
    }
    Ok(out)
}

const OPTIONS: [&str; 8] = [
    "fullDocument",
    "fullDocumentBeforeChange",
    "resumeAfter",
    "startAfter",
    "startAtOperationTime",
    "allChangesForCluster",
    "showExpandedEvents",
    "allowToRunOnConfigDB",
];

pub(crate) fn open(
    ctx: &Ctx<'_>,
    db: &str,
    target: Option<String>,
    pipeline: Vec<Document>,
    batch: Option<usize>,
    body: &Document,
) -> CmdResult {
    let spec = match pipeline[0].get("$changeStream") {
        Some(Bson::Document(d)) => d.clone(),
        _ => {
            return Err(CmdError::failed_to_parse(
                "the $changeStream stage specification must be an object",
            )
            .into())
        }
    };
    for k in spec.keys() {
        if !OPTIONS.contains(&k.as_str()) {
            return Err(CmdError::new(
                40415,
                "Location40415",
                format!("BSON field '$changeStream.{k}' is an unknown field."),
            )
            .into());
        }
    }
    match spec.get("fullDocument") {
        None => {}
        Some(Bson::String(s))
            if matches!(
                s.as_str(),
                "default" | "updateLookup" | "whenAvailable" | "required"
            ) => {}
        Some(other) => {
            return Err(
                CmdError::bad_value(format!("unsupported fullDocument option {other}")).into(),
            )
        }
    }
    match spec.get("fullDocumentBeforeChange") {
        None => {}
        Some(Bson::String(s)) if matches!(s.as_str(), "off" | "whenAvailable") => {}
        Some(other) => {
            return Err(CmdError::bad_value(format!(
                "fullDocumentBeforeChange {other} is not simulated (no pre-images)"
            ))
            .into())
        }
    }
    let resume_opts = ["resumeAfter", "startAfter", "startAtOperationTime"]
        .iter()
        .filter(|k| spec.contains_key(**k))
        .count();
    if resume_opts > 1 {
        return Err(CmdError::new(
            40674,
            "Location40674",
            "Only one type of resume option is allowed, but multiple were found.",
        )
        .into());
    }
    let all_cluster = spec.get_bool("allChangesForCluster").unwrap_or(false);
    let (filter, cursor_ns) = match (&target, all_cluster) {
        (Some(c), false) => (
            NsFilter::Collection(format!("{db}.{c}")),
            format!("{db}.{c}"),
        ),
        (None, true) if db == "admin" => (NsFilter::Cluster, "admin.$cmd.aggregate".to_string()),
        (None, false) if db != "admin" => (
            NsFilter::Database(db.to_string()),
            format!("{db}.$cmd.aggregate"),
        ),
        _ => {
            return Err(CmdError::new(
                73,
                "InvalidNamespace",
                "$changeStream may only be run on admin database if allChangesForCluster is true",
            )
            .into())
        }
    };
    let stages: Vec<Document> = pipeline[1..].to_vec();
    for s in &stages {
        let (name, arg) = s.iter().next().expect("one field");
        let ok = matches!(
            (name.as_str(), arg),
            ("$match" | "$project", Bson::Document(_))
        );
        if !ok {
            return Err(CmdError::bad_value(format!(
                "stage {name} after $changeStream is not supported by the simulator \
                 ($match and $project are)"
            ))
            .into());
        }
    }

    let mut st = ctx.shared.lock();
    match st.role(ctx.member) {
        Role::Primary => {}
        Role::Secondary
            if body
                .get_document("$readPreference")
                .ok()
                .and_then(|r| r.get_str("mode").ok())
                .is_some_and(|m| m != "primary") => {}
        Role::Secondary => return Err(CmdError::not_primary_no_secondary_ok().into()),
        _ => {
            return Err(CmdError::new(
                40573,
                "Location40573",
                "The $changeStream stage is only supported on replica sets",
            )
            .into())
        }
    }
    let mut invalidate_only_at = None;
    let next = if let Some(t) = spec.get("resumeAfter").or_else(|| spec.get("startAfter")) {
        let (pos, kind) = parse_token(&st, t)?;
        if kind == KIND_INVALIDATE && spec.contains_key("resumeAfter") {
            return Err(CmdError::new(
                260,
                "InvalidResumeToken",
                "Attempting to resume a change stream using 'resumeAfter' is not allowed from an \
                 invalidate notification.",
            )
            .into());
        }
        if kind == KIND_EVENT && pos > 0 {
            // Resuming right after a drop that invalidated this stream must
            // still deliver the invalidate.
            let mut inv = false;
            events_for(&st.log[pos - 1], pos, &filter, false, &mut inv);
            if inv {
                invalidate_only_at = Some(pos);
                pos - 1
            } else {
                pos
            }
        } else {
            pos
        }
    } else if let Some(t) = spec.get("startAtOperationTime") {
        let Bson::Timestamp(t) = t else {
            return Err(CmdError::type_mismatch("startAtOperationTime must be a timestamp").into());
        };
        st.log
            .partition_point(|e| (e.ts.time, e.ts.increment) < (t.time, t.increment))
    } else {
        st.visible_len(ctx.member, Instant::now())
    };
    // A token names the entry it follows, which must still be in the oplog;
    // `startAtOperationTime` may name the oldest entry itself.
    let resumes_at = if spec.contains_key("startAtOperationTime") {
        next + 1
    } else if spec.contains_key("resumeAfter") || spec.contains_key("startAfter") {
        next
    } else {
        usize::MAX
    };
    if st.history_floor > 0 && resumes_at <= st.history_floor {
        return Err(history_lost().into());
    }
    let mut cur = ChangeCursor {
        cursor_ns: cursor_ns.clone(),
        filter,
        stages,
        next,
        batch_size: batch,
        invalidated: false,
        invalidate_only_at,
    };
    let events = scan(&st, ctx.member, &mut cur, batch.unwrap_or(101))?;
    let pbrt = position_token(&st, cur.next);
    let id = if cur.invalidated {
        0
    } else {
        let id = st.new_cursor_id();
        st.members[ctx.member]
            .cursors
            .insert(id, Cursor::Change(cur));
        id
    };
    Ok(reply(id, &cursor_ns, "firstBatch", events, pbrt))
}

fn reply(id: i64, ns: &str, key: &str, events: Vec<Document>, pbrt: Document) -> Document {
    let batch: Vec<Bson> = events.into_iter().map(Bson::Document).collect();
    doc! {
        "cursor": {
            key: batch,
            "postBatchResumeToken": pbrt,
            "id": id,
            "ns": ns,
        },
        "ok": 1.0,
    }
}

/// An awaitData getMore: returns as soon as events are visible on this
/// member, or an empty batch when `wait` runs out.
pub(crate) async fn get_more(
    ctx: &Ctx<'_>,
    id: i64,
    process_id: bson::oid::ObjectId,
    mut cur: ChangeCursor,
    batch_size: Option<usize>,
    wait: Duration,
) -> CmdResult {
    let deadline = Instant::now() + wait;
    let member = ctx.member;
    let limit = batch_size
        .or(cur.batch_size.filter(|b| *b > 0))
        .unwrap_or(usize::MAX);
    let mut events = Vec::new();
    let mut failure = None;
    wait_for(ctx, Some(deadline), |st, _| {
        match scan(st, member, &mut cur, limit) {
            Ok(evs) => {
                events.extend(evs);
                !events.is_empty() || cur.invalidated
            }
            Err(e) => {
                failure = Some(e);
                true
            }
        }
    })
    .await;
    if let Some(e) = failure {
        return Err(e.into());
    }
    let mut st = ctx.shared.lock();
    let pbrt = position_token(&st, cur.next);
    let ns = cur.cursor_ns.clone();
    let same_process = st.members[member].process_id == process_id && st.members[member].alive;
    let out_id = if cur.invalidated || !same_process {
        0
    } else {
        st.members[member].cursors.insert(id, Cursor::Change(cur));
        id
    };
    Ok(reply(out_id, &ns, "nextBatch", events, pbrt))
}
