//! Command implementations. Each one decides, under the shared lock, what
//! this member may do in its current role, then answers with mongod's reply
//! shape, error codes and error labels.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, oid::ObjectId, Bson, Document};

use crate::changestream;
use crate::error::CmdError;
use crate::matcher;
use crate::state::{optime, Config, ConfigMember, Cursor, IndexSpec, Role, State, TxnRecord};
use crate::Shared;

pub(crate) struct Ctx<'a> {
    pub shared: &'a Arc<Shared>,
    pub member: usize,
    pub conn_id: i64,
}

pub(crate) enum Outcome {
    Reply(Document),
    /// Hang up without replying (member gone, or an injected fault).
    Close,
}

/// Command results that must drop the connection instead of replying.
pub(crate) enum Fail {
    Cmd(CmdError),
    Close,
}

impl From<CmdError> for Fail {
    fn from(e: CmdError) -> Self {
        Fail::Cmd(e)
    }
}

pub(crate) type CmdResult = Result<Document, Fail>;

const DEFAULT_BATCH: usize = 101;

pub(crate) async fn run(ctx: &Ctx<'_>, body: Document) -> Outcome {
    let name = body.keys().next().cloned().unwrap_or_default();
    {
        let st = ctx.shared.lock();
        if !st.reachable(ctx.member) {
            return Outcome::Close;
        }
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

/// `REPLSET_SIM_TRACE=1` prints every command and reply to stderr, which is
/// the quickest way to see what a driver actually sent.
fn trace_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("REPLSET_SIM_TRACE").is_some_and(|v| v != "0"))
}

pub(crate) fn error_doc(st: &State, member: usize, e: &CmdError) -> Document {
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

async fn dispatch(ctx: &Ctx<'_>, name: &str, db: &str, body: &Document) -> CmdResult {
    match name {
        "hello" | "isMaster" | "ismaster" => hello(ctx, body, name != "hello").await,
        "ping" => Ok(doc! {"ok": 1.0}),
        "buildInfo" | "buildinfo" => Ok(build_info()),
        "endSessions" => Ok(doc! {"ok": 1.0}),
        "insert" => insert(ctx, db, body).await,
        "find" => find(ctx, db, body).await,
        "getMore" => get_more(ctx, db, body).await,
        "killCursors" => kill_cursors(ctx, db, body),
        "createIndexes" => create_indexes(ctx, db, body),
        "listIndexes" => list_indexes(ctx, db, body),
        "aggregate" => aggregate(ctx, db, body).await,
        "count" => count(ctx, db, body),
        "drop" => drop_coll(ctx, db, body),
        "create" => create_coll(ctx, db, body),
        "listCollections" => list_collections(ctx, db, body),
        "dropDatabase" => drop_database(ctx, db),
        "replSetGetStatus" => admin_only(name, db).and_then(|_| repl_status(ctx)),
        "replSetGetConfig" => admin_only(name, db).and_then(|_| repl_config(ctx)),
        "replSetInitiate" => admin_only(name, db).and_then(|_| repl_initiate(ctx, body)),
        "replSetStepDown" => admin_only(name, db).and_then(|_| repl_step_down(ctx)),
        _ => Err(CmdError::new(59, "CommandNotFound", format!("no such command: '{name}'")).into()),
    }
}

fn admin_only(name: &str, db: &str) -> Result<(), Fail> {
    if db == "admin" {
        Ok(())
    } else {
        Err(CmdError::admin_only(name).into())
    }
}

fn build_info() -> Document {
    doc! {
        "version": "8.0.0",
        "gitVersion": "replset-sim",
        "versionArray": [8, 0, 0, 0],
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": crate::state::MAX_BSON_OBJECT_SIZE,
        "storageEngines": ["replset-sim-memory"],
        "modules": [],
        "ok": 1.0,
    }
}

// ---------------------------------------------------------------- helpers

/// Waits until `cond` holds or `deadline` passes, waking on every state
/// change and whenever a lagged secondary applies the next log entry.
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

pub(crate) fn get_int(body: &Document, key: &str) -> Result<Option<i64>, CmdError> {
    match body.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Int32(i)) => Ok(Some(*i as i64)),
        Some(Bson::Int64(i)) => Ok(Some(*i)),
        Some(Bson::Double(d)) if d.fract() == 0.0 => Ok(Some(*d as i64)),
        Some(other) => Err(CmdError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{:?}', expected a number",
            other.element_type()
        ))),
    }
}

pub(crate) fn get_doc(body: &Document, key: &str) -> Result<Option<Document>, CmdError> {
    match body.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d.clone())),
        Some(other) => Err(CmdError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{:?}', expected type 'object'",
            other.element_type()
        ))),
    }
}

fn coll_name(body: &Document, cmd: &str) -> Result<String, CmdError> {
    match body.get(cmd) {
        Some(Bson::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(CmdError::new(
            73,
            "InvalidNamespace",
            format!("collection name has invalid type for {cmd}"),
        )),
    }
}

fn max_time(body: &Document) -> Result<Option<Duration>, CmdError> {
    Ok(get_int(body, "maxTimeMS")?
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms as u64)))
}

/// mongod treats any `$readPreference` other than primary as secondaryOk.
fn secondary_ok(body: &Document) -> bool {
    body.get_document("$readPreference")
        .ok()
        .and_then(|rp| rp.get_str("mode").ok())
        .is_some_and(|m| m != "primary")
}

fn check_readable(st: &State, member: usize, body: &Document) -> Result<(), CmdError> {
    match st.role(member) {
        Role::Primary => Ok(()),
        Role::Secondary if secondary_ok(body) => Ok(()),
        Role::Secondary => Err(CmdError::not_primary_no_secondary_ok()),
        Role::Ghost | Role::Down => Err(CmdError::not_primary_or_secondary()),
    }
}

/// Reads with `afterClusterTime` wait until this member has applied that
/// point, as causally consistent reads on a lagged secondary do in mongod.
async fn wait_after_cluster_time(ctx: &Ctx<'_>, body: &Document) -> Result<(), CmdError> {
    let Some(rc) = get_doc(body, "readConcern")? else {
        return Ok(());
    };
    let Some(Bson::Timestamp(after)) = rc.get("afterClusterTime").cloned() else {
        return Ok(());
    };
    let deadline = max_time(body)?.map(|d| Instant::now() + d);
    let member = ctx.member;
    let ok = wait_for(ctx, deadline, |st, now| {
        let len = st.visible_len(member, now);
        let ts = st.last_optime(len).0;
        (ts.time, ts.increment) >= (after.time, after.increment)
            || st.last_ts.time < after.time
            || (st.last_ts.time == after.time && st.last_ts.increment < after.increment)
    })
    .await;
    if ok {
        Ok(())
    } else {
        Err(CmdError::new(
            50,
            "MaxTimeMSExpired",
            "operation exceeded time limit",
        ))
    }
}

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

/// Returns the first batch and parks the rest in a member-local cursor.
fn start_cursor(
    st: &mut State,
    member: usize,
    ns: &str,
    mut docs: VecDeque<Document>,
    batch_size: Option<usize>,
    single_batch: bool,
) -> Document {
    let n = batch_size.unwrap_or(DEFAULT_BATCH).min(docs.len());
    let first: Vec<Document> = docs.drain(..n).collect();
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

// ------------------------------------------------------------------ hello

async fn hello(ctx: &Ctx<'_>, body: &Document, legacy: bool) -> CmdResult {
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
    let st = ctx.shared.lock();
    if !st.reachable(ctx.member) {
        return Err(Fail::Close);
    }
    Ok(st.hello(ctx.member, legacy, hello_ok, ctx.conn_id))
}

// ----------------------------------------------------------------- writes

struct WriteConcern {
    /// Members that must have applied the write; `None` = unacknowledged.
    w: Option<usize>,
    wtimeout: Option<Duration>,
    raw: Document,
}

fn parse_write_concern(st: &State, body: &Document) -> Result<WriteConcern, CmdError> {
    let raw = get_doc(body, "writeConcern")?.unwrap_or_default();
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
    Ok(WriteConcern { w, wtimeout, raw })
}

/// Blocks until the write at `pos` is on `w` members. Majority is always
/// reachable while a primary exists (it steps down otherwise), so this only
/// waits for the secondary apply delay and for numeric `w` above the number
/// of reachable members.
async fn await_write_concern(ctx: &Ctx<'_>, wc: &WriteConcern, pos: usize) -> Option<Document> {
    let need = wc.w?;
    if need <= 1 {
        return None;
    }
    let deadline = wc.wtimeout.map(|t| Instant::now() + t);
    let ok = wait_for(ctx, deadline, |st, now| {
        let applied = st
            .config
            .as_ref()
            .map(|c| {
                c.members
                    .iter()
                    .filter(|m| st.reachable(m.member) && st.visible_len(m.member, now) >= pos)
                    .count()
            })
            .unwrap_or(0);
        applied >= need
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

fn lsid_key(body: &Document) -> Option<Vec<u8>> {
    let lsid = body.get_document("lsid").ok()?;
    let mut key = Vec::new();
    doc! {"id": lsid.get("id")?.clone()}
        .to_writer(&mut key)
        .ok()?;
    Some(key)
}

async fn insert(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
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
            let result = match d {
                Bson::Document(d) => prepare_doc(d.clone()).and_then(|d| st.insert_doc(&ns, d)),
                _ => Err(CmdError::type_mismatch("documents must be objects")),
            };
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
    if let Some(wce) = wce {
        reply.insert("writeConcernError", wce);
    }
    reply.insert("opTime", optime(op_ts, term));
    reply.insert("electionId", crate::state::election_id(term));
    reply.insert("ok", 1.0);
    reply.insert("operationTime", op_ts);
    Ok(reply)
}

/// mongod puts a generated `_id` first and refuses arrays as `_id`.
fn prepare_doc(d: Document) -> Result<Document, CmdError> {
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

fn create_indexes(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let coll = coll_name(body, "createIndexes")?;
    let ns = format!("{db}.{coll}");
    let specs = match body.get("indexes") {
        Some(Bson::Array(a)) if !a.is_empty() => a.clone(),
        _ => return Err(CmdError::bad_value("Must specify at least one index to create").into()),
    };
    let mut parsed = Vec::new();
    for s in specs {
        let Bson::Document(s) = s else {
            return Err(CmdError::type_mismatch("index specs must be objects").into());
        };
        let key = get_doc(&s, "key")?
            .filter(|k| !k.is_empty())
            .ok_or_else(|| CmdError::failed_to_parse("index spec needs a non-empty 'key'"))?;
        for (k, v) in &key {
            let ok = matches!(v, Bson::Int32(1 | -1) | Bson::Int64(1 | -1))
                || matches!(v, Bson::Double(d) if *d == 1.0 || *d == -1.0);
            if !ok {
                return Err(CmdError::new(
                    67,
                    "CannotCreateIndex",
                    format!("index type for '{k}' is not supported by the simulator"),
                )
                .into());
            }
        }
        let name = s
            .get_str("name")
            .map_err(|_| {
                CmdError::failed_to_parse(
                    "The 'name' field is a required property of an index specification",
                )
            })?
            .to_string();
        let unique = s.get_bool("unique").unwrap_or(false);
        parsed.push(IndexSpec { name, key, unique });
    }
    let mut st = ctx.shared.lock();
    if st.role(ctx.member) != Role::Primary {
        return Err(CmdError::not_writable_primary(false).into());
    }
    let mut before = None;
    let mut after = 0;
    let mut created_coll = false;
    for spec in parsed {
        let (b, a, c) = st.create_index(&ns, spec)?;
        before.get_or_insert(b);
        after = a;
        created_coll |= c;
    }
    let before = before.unwrap_or(after);
    let mut reply = doc! {
        "numIndexesBefore": before as i32,
        "numIndexesAfter": after as i32,
        "createdCollectionAutomatically": created_coll,
    };
    if before == after && !created_coll {
        reply.insert("note", "all indexes already exist");
    }
    reply.insert("ok", 1.0);
    Ok(reply)
}

/// Options the simulator does not implement are refused loudly, so a test
/// that needs one fails instead of passing on a silently different answer.
fn refuse_options(body: &Document, command: &str, unsupported: &[&str]) -> Result<(), CmdError> {
    match unsupported.iter().find(|o| body.contains_key(**o)) {
        Some(option) => Err(CmdError::bad_value(format!(
            "{command} option '{option}' is not supported by the simulator"
        ))),
        None => Ok(()),
    }
}

fn create_coll(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let coll = coll_name(body, "create")?;
    let ns = format!("{db}.{coll}");
    refuse_options(
        body,
        "create",
        &[
            "capped",
            "timeseries",
            "validator",
            "viewOn",
            "clusteredIndex",
        ],
    )?;
    let mut st = ctx.shared.lock();
    if st.role(ctx.member) != Role::Primary {
        return Err(CmdError::not_writable_primary(false).into());
    }
    if st.colls.get(&ns).is_some_and(|c| c.exists()) {
        return Err(CmdError::new(
            48,
            "NamespaceExists",
            format!("Collection {ns} already exists."),
        )
        .into());
    }
    st.create_collection(&ns);
    Ok(doc! {"ok": 1.0})
}

fn list_collections(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let mut st = ctx.shared.lock();
    check_readable(&st, ctx.member, body)?;
    let filter = get_doc(body, "filter")?.unwrap_or_default();
    let name_only = body.get_bool("nameOnly").unwrap_or(false);
    let prefix = format!("{db}.");
    let mut out = VecDeque::new();
    for (ns, c) in &st.colls {
        let Some(name) = ns.strip_prefix(&prefix) else {
            continue;
        };
        if !c.exists() {
            continue;
        }
        let entry = if name_only {
            doc! {"name": name, "type": "collection"}
        } else {
            doc! {
                "name": name,
                "type": "collection",
                "options": {},
                "info": {"readOnly": false},
                "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            }
        };
        if matcher::matches(&entry, &filter)? {
            out.push_back(entry);
        }
    }
    let batch = get_doc(body, "cursor")?
        .and_then(|c| get_int(&c, "batchSize").ok().flatten())
        .map(|b| b as usize);
    let cursor_ns = format!("{db}.$cmd.listCollections");
    Ok(start_cursor(
        &mut st, ctx.member, &cursor_ns, out, batch, false,
    ))
}

fn drop_coll(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let coll = coll_name(body, "drop")?;
    let ns = format!("{db}.{coll}");
    let mut st = ctx.shared.lock();
    if st.role(ctx.member) != Role::Primary {
        return Err(CmdError::not_writable_primary(false).into());
    }
    let n = st.colls.get(&ns).map_or(0, |c| c.indexes.len()) as i32;
    st.drop_collection(&ns);
    drop(st);
    ctx.shared.notify();
    Ok(doc! {"nIndexesWas": n, "ns": ns, "ok": 1.0})
}

fn drop_database(ctx: &Ctx<'_>, db: &str) -> CmdResult {
    let mut st = ctx.shared.lock();
    if st.role(ctx.member) != Role::Primary {
        return Err(CmdError::not_writable_primary(false).into());
    }
    st.drop_database(db);
    drop(st);
    ctx.shared.notify();
    Ok(doc! {"dropped": db, "ok": 1.0})
}

// ------------------------------------------------------------------ reads

struct Query {
    filter: Document,
    sort: Option<Vec<(String, bool)>>,
    skip: usize,
    limit: Option<usize>,
    projection: Option<matcher::Projection>,
}

fn run_query(st: &State, member: usize, ns: &str, q: &Query) -> Result<Vec<Document>, CmdError> {
    let mut out = Vec::new();
    for d in st.visible_docs(ns, member, Instant::now()) {
        if matcher::matches(d, &q.filter)? {
            out.push(d.clone());
        }
    }
    if let Some(keys) = &q.sort {
        matcher::sort_docs(&mut out, keys);
    }
    let out = out
        .into_iter()
        .skip(q.skip)
        .take(q.limit.unwrap_or(usize::MAX))
        .map(|d| matcher::project(d, &q.projection))
        .collect();
    Ok(out)
}

async fn find(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let coll = coll_name(body, "find")?;
    let ns = format!("{db}.{coll}");
    refuse_options(
        body,
        "find",
        &[
            "collation",
            "min",
            "max",
            "returnKey",
            "showRecordId",
            "tailable",
        ],
    )?;
    {
        let st = ctx.shared.lock();
        check_readable(&st, ctx.member, body)?;
    }
    wait_after_cluster_time(ctx, body).await?;
    let filter = get_doc(body, "filter")?.unwrap_or_default();
    let sort = match get_doc(body, "sort")? {
        Some(s) if !s.is_empty() => Some(matcher::parse_sort(&s)?),
        _ => None,
    };
    let projection = matcher::parse_projection(&get_doc(body, "projection")?.unwrap_or_default())?;
    let skip = get_int(body, "skip")?.unwrap_or(0);
    if skip < 0 {
        return Err(CmdError::bad_value("skip value must be non-negative").into());
    }
    let limit = get_int(body, "limit")?.unwrap_or(0);
    let batch_size = get_int(body, "batchSize")?;
    if batch_size.is_some_and(|b| b < 0) {
        return Err(CmdError::bad_value("batchSize value must be non-negative").into());
    }
    let single_batch = body.get_bool("singleBatch").unwrap_or(false) || limit < 0;
    let q = Query {
        filter,
        sort,
        skip: skip as usize,
        limit: (limit != 0).then_some(limit.unsigned_abs() as usize),
        projection,
    };
    let mut st = ctx.shared.lock();
    check_readable(&st, ctx.member, body)?;
    let docs = run_query(&st, ctx.member, &ns, &q)?;
    let batch = match (batch_size, single_batch, q.limit) {
        (_, true, Some(l)) => Some(l),
        (Some(b), _, _) => Some(b as usize),
        _ => None,
    };
    Ok(start_cursor(
        &mut st,
        ctx.member,
        &ns,
        docs.into(),
        batch,
        single_batch,
    ))
}

fn count(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let coll = coll_name(body, "count")?;
    let ns = format!("{db}.{coll}");
    let st = ctx.shared.lock();
    check_readable(&st, ctx.member, body)?;
    let q = Query {
        filter: get_doc(body, "query")?.unwrap_or_default(),
        sort: None,
        skip: get_int(body, "skip")?.unwrap_or(0).max(0) as usize,
        limit: get_int(body, "limit")?
            .filter(|l| *l != 0)
            .map(|l| l.unsigned_abs() as usize),
        projection: None,
    };
    let n = run_query(&st, ctx.member, &ns, &q)?.len();
    Ok(doc! {"n": n as i32, "ok": 1.0})
}

fn list_indexes(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let coll = coll_name(body, "listIndexes")?;
    let ns = format!("{db}.{coll}");
    let mut st = ctx.shared.lock();
    check_readable(&st, ctx.member, body)?;
    let specs = match st.colls.get(&ns).filter(|c| c.exists()) {
        Some(c) => c.indexes.clone(),
        None => {
            return Err(
                CmdError::new(26, "NamespaceNotFound", format!("ns does not exist: {ns}")).into(),
            )
        }
    };
    let docs: VecDeque<Document> = specs
        .into_iter()
        .map(|s| {
            let mut d = doc! {"v": 2, "key": s.key, "name": s.name};
            if s.unique && d.get_str("name").ok() != Some("_id_") {
                d.insert("unique", true);
            }
            d
        })
        .collect();
    let cursor_ns = format!("{db}.$cmd.listIndexes.{coll}");
    let batch = get_doc(body, "cursor")?
        .and_then(|c| get_int(&c, "batchSize").ok().flatten())
        .map(|b| b as usize);
    Ok(start_cursor(
        &mut st, ctx.member, &cursor_ns, docs, batch, false,
    ))
}

async fn get_more(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
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
            let batch: Vec<Document> = docs.drain(..n).collect();
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

fn kill_cursors(ctx: &Ctx<'_>, _db: &str, body: &Document) -> CmdResult {
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

async fn aggregate(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let pipeline: Vec<Document> = match body.get("pipeline") {
        Some(Bson::Array(a)) => a
            .iter()
            .map(|s| match s {
                Bson::Document(d) if d.len() == 1 => Ok(d.clone()),
                _ => Err(CmdError::new(
                    40323,
                    "Location40323",
                    "A pipeline stage specification object must contain exactly one field.",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(
                CmdError::type_mismatch("'pipeline' option must be specified as an array").into(),
            )
        }
    };
    if body.get_bool("explain").unwrap_or(false) {
        return Err(CmdError::bad_value("explain is not supported by the simulator").into());
    }
    let cursor_opts =
        match get_doc(body, "cursor")? {
            Some(c) => c,
            None => return Err(CmdError::failed_to_parse(
                "The 'cursor' option is required, except for aggregate with the explain argument",
            )
            .into()),
        };
    let batch = get_int(&cursor_opts, "batchSize")?.map(|b| b.max(0) as usize);
    let target = match body.get("aggregate") {
        Some(Bson::String(c)) => Some(c.clone()),
        Some(Bson::Int32(1)) | Some(Bson::Int64(1)) | Some(Bson::Double(_)) => None,
        _ => {
            return Err(CmdError::failed_to_parse(
                "Invalid aggregate namespace: must be a collection name or 1",
            )
            .into())
        }
    };
    if pipeline
        .first()
        .is_some_and(|s| s.contains_key("$changeStream"))
    {
        return changestream::open(ctx, db, target, pipeline, batch, body);
    }
    let Some(coll) = target else {
        return Err(CmdError::new(
            73,
            "InvalidNamespace",
            "{aggregate: 1} is only supported here with a leading $changeStream stage",
        )
        .into());
    };
    let ns = format!("{db}.{coll}");
    {
        let st = ctx.shared.lock();
        check_readable(&st, ctx.member, body)?;
    }
    wait_after_cluster_time(ctx, body).await?;
    let mut st = ctx.shared.lock();
    check_readable(&st, ctx.member, body)?;
    let mut docs: Vec<Document> = st
        .visible_docs(&ns, ctx.member, Instant::now())
        .into_iter()
        .cloned()
        .collect();
    for stage in &pipeline {
        docs = apply_stage(docs, stage)?;
    }
    Ok(start_cursor(
        &mut st,
        ctx.member,
        &ns,
        docs.into(),
        batch,
        false,
    ))
}

/// The few pipeline stages a store plausibly issues (countDocuments uses
/// `$match`/`$skip`/`$limit`/`$group`); anything else is refused loudly.
pub(crate) fn apply_stage(
    docs: Vec<Document>,
    stage: &Document,
) -> Result<Vec<Document>, CmdError> {
    let (name, arg) = stage.iter().next().expect("one field checked by caller");
    match (name.as_str(), arg) {
        ("$match", Bson::Document(f)) => {
            let mut out = Vec::new();
            for d in docs {
                if matcher::matches(&d, f)? {
                    out.push(d);
                }
            }
            Ok(out)
        }
        ("$sort", Bson::Document(s)) => {
            let keys = matcher::parse_sort(s)?;
            let mut docs = docs;
            matcher::sort_docs(&mut docs, &keys);
            Ok(docs)
        }
        ("$skip", n) => {
            let n = get_int(&doc! {"n": n.clone()}, "n")?.unwrap_or(0).max(0) as usize;
            Ok(docs.into_iter().skip(n).collect())
        }
        ("$limit", n) => {
            let n = get_int(&doc! {"n": n.clone()}, "n")?.unwrap_or(0);
            if n <= 0 {
                return Err(CmdError::new(
                    15958,
                    "Location15958",
                    "the limit must be positive",
                ));
            }
            Ok(docs.into_iter().take(n as usize).collect())
        }
        ("$project", Bson::Document(p)) => {
            let p = matcher::parse_projection(p)?;
            Ok(docs.into_iter().map(|d| matcher::project(d, &p)).collect())
        }
        ("$count", Bson::String(field)) => Ok(if docs.is_empty() {
            Vec::new()
        } else {
            vec![doc! {field.clone(): docs.len() as i32}]
        }),
        ("$group", Bson::Document(g)) => group_constant(docs, g),
        _ => Err(CmdError::new(
            40324,
            "Location40324",
            format!(
                "Unrecognized pipeline stage name: '{name}' (or not supported by the simulator)"
            ),
        )),
    }
}

/// `$group` with a constant `_id` and constant `$sum` accumulators only.
fn group_constant(docs: Vec<Document>, g: &Document) -> Result<Vec<Document>, CmdError> {
    let unsupported =
        || CmdError::bad_value("only {_id: <constant>, f: {$sum: <number>}} $group is simulated");
    let id = g.get("_id").cloned().unwrap_or(Bson::Null);
    if matches!(&id, Bson::String(s) if s.starts_with('$')) || matches!(id, Bson::Document(_)) {
        return Err(unsupported());
    }
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = doc! {"_id": id};
    for (k, v) in g.iter().filter(|(k, _)| *k != "_id") {
        let Bson::Document(acc) = v else {
            return Err(unsupported());
        };
        let per = match acc.get("$sum") {
            Some(Bson::Int32(i)) => *i as i64,
            Some(Bson::Int64(i)) => *i,
            _ => return Err(unsupported()),
        };
        let total = per * docs.len() as i64;
        match i32::try_from(total) {
            Ok(t) => out.insert(k.clone(), t),
            Err(_) => out.insert(k.clone(), total),
        };
    }
    Ok(vec![out])
}

// ---------------------------------------------------------------- replset

fn member_status(st: &State, viewer: usize, member: usize, entry: &ConfigMember) -> Document {
    let now = Instant::now();
    let seen = st.reachable(viewer) && st.reachable(member) || viewer == member;
    let role = if seen { st.role(member) } else { Role::Down };
    let mut d = doc! {"_id": entry.id, "name": entry.host.clone()};
    d.insert("health", if role == Role::Down { 0.0 } else { 1.0 });
    d.insert("state", role.state_code());
    d.insert(
        "stateStr",
        if role == Role::Down {
            "(not reachable/healthy)"
        } else {
            role.state_str()
        },
    );
    d.insert(
        "uptime",
        if role == Role::Down {
            0
        } else {
            st.members[member].started.elapsed().as_secs() as i32
        },
    );
    let (ts, t, wall) = if role == Role::Down {
        st.last_optime(0)
    } else {
        st.last_optime(st.visible_len(member, now))
    };
    d.insert("optime", optime(ts, t));
    d.insert("optimeDate", wall);
    let sync_source = match (role, st.primary) {
        (Role::Secondary, Some(p)) if p != member && st.reachable(p) => st.host(p),
        _ => String::new(),
    };
    d.insert("syncSourceHost", sync_source);
    if role == Role::Primary {
        d.insert("electionTime", st.election_ts);
        d.insert("electionDate", st.election_wall);
    }
    if role == Role::Down {
        d.insert("lastHeartbeatMessage", "Connection refused (simulated)");
    } else {
        d.insert("lastHeartbeatMessage", "");
    }
    d.insert(
        "configVersion",
        if role == Role::Down {
            -1
        } else {
            st.config.as_ref().map_or(-1, |c| c.version)
        },
    );
    if member == viewer {
        d.insert("self", true);
    } else {
        d.insert("lastHeartbeat", bson::DateTime::now());
        d.insert("pingMs", 0i64);
    }
    d
}

fn repl_status(ctx: &Ctx<'_>) -> CmdResult {
    let st = ctx.shared.lock();
    let Some(config) = st.config.clone().filter(|c| c.entry(ctx.member).is_some()) else {
        return Err(CmdError::not_yet_initialized().into());
    };
    let me = st.role(ctx.member);
    let (ts, t, wall) = st.last_optime(st.visible_len(ctx.member, Instant::now()));
    let members: Vec<Bson> = config
        .members
        .iter()
        .map(|e| Bson::Document(member_status(&st, ctx.member, e.member, e)))
        .collect();
    let sync_source = match (me, st.primary) {
        (Role::Secondary, Some(p)) if st.reachable(p) => st.host(p),
        _ => String::new(),
    };
    let majority = config.majority() as i32;
    Ok(doc! {
        "set": st.set_name.clone(),
        "date": bson::DateTime::now(),
        "myState": me.state_code(),
        "term": st.term,
        "syncSourceHost": sync_source,
        "heartbeatIntervalMillis": 2000i64,
        "majorityVoteCount": majority,
        "writeMajorityCount": majority,
        "votingMembersCount": config.members.len() as i32,
        "writableVotingMembersCount": config.members.len() as i32,
        "optimes": {
            "lastCommittedOpTime": optime(ts, t),
            "lastCommittedWallTime": wall,
            "appliedOpTime": optime(ts, t),
            "durableOpTime": optime(ts, t),
            "lastAppliedWallTime": wall,
            "lastDurableWallTime": wall,
        },
        "members": members,
        "ok": 1.0,
    })
}

fn config_doc(st: &State, config: &Config) -> Document {
    let members: Vec<Bson> = config
        .members
        .iter()
        .map(|m| {
            Bson::Document(doc! {
                "_id": m.id,
                "host": m.host.clone(),
                "arbiterOnly": false,
                "buildIndexes": true,
                "hidden": false,
                "priority": 1.0,
                "tags": {},
                "secondaryDelaySecs": 0i64,
                "votes": 1,
            })
        })
        .collect();
    doc! {
        "_id": st.set_name.clone(),
        "version": config.version,
        "term": st.term,
        "members": members,
        "protocolVersion": 1i64,
        "writeConcernMajorityJournalDefault": true,
        "settings": {
            "chainingAllowed": true,
            "heartbeatIntervalMillis": 2000,
            "heartbeatTimeoutSecs": 10,
            "electionTimeoutMillis": st.election_delay.as_millis() as i64,
            "replicaSetId": st.replica_set_id,
        },
    }
}

fn repl_config(ctx: &Ctx<'_>) -> CmdResult {
    let st = ctx.shared.lock();
    let Some(config) = st.config.clone().filter(|c| c.entry(ctx.member).is_some()) else {
        return Err(CmdError::not_yet_initialized().into());
    };
    Ok(doc! {"config": config_doc(&st, &config), "ok": 1.0})
}

fn invalid_config(msg: impl Into<String>) -> Fail {
    CmdError::new(93, "InvalidReplicaSetConfig", msg).into()
}

/// Which simulated member a config host names: only loopback names can
/// map, by port (a real mongod also requires the host to be local).
fn resolve_host(st: &State, host: &str) -> Option<usize> {
    let (name, port) = host.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if !matches!(name, "127.0.0.1" | "localhost") {
        return None;
    }
    st.members.iter().position(|m| m.port == port)
}

fn repl_initiate(ctx: &Ctx<'_>, body: &Document) -> CmdResult {
    let mut st = ctx.shared.lock();
    if st.config.is_some() {
        return Err(CmdError::new(23, "AlreadyInitialized", "already initialized").into());
    }
    let me_host = format!("127.0.0.1:{}", st.members[ctx.member].port);
    let cfg = match body.get("replSetInitiate") {
        Some(Bson::Document(d)) => d.clone(),
        // rs.initiate() without a config: a one-member set of this node.
        _ => doc! {"_id": st.set_name.clone(), "members": [{"_id": 0, "host": me_host}]},
    };
    let set_id = cfg.get_str("_id").unwrap_or_default().to_string();
    if set_id != st.set_name {
        return Err(invalid_config(format!(
            "Attempting to initiate a replica set with name {set_id}, but command line reports {}; rejecting",
            st.set_name
        )));
    }
    let version = get_int(&cfg, "version")?.unwrap_or(1) as i32;
    let raw_members = match cfg.get("members") {
        Some(Bson::Array(a)) if !a.is_empty() => a.clone(),
        _ => {
            return Err(invalid_config(
                "replica set configuration must have a non-empty members array",
            ))
        }
    };
    let mut members = Vec::new();
    let mut unresolved = Vec::new();
    for m in raw_members {
        let Bson::Document(m) = m else {
            return Err(invalid_config("members entries must be objects"));
        };
        let id =
            get_int(&m, "_id")?.ok_or_else(|| invalid_config("member is missing '_id'"))? as i32;
        let host = m
            .get_str("host")
            .map_err(|_| invalid_config("member is missing 'host'"))?
            .to_string();
        if members
            .iter()
            .any(|x: &(i32, String, Option<usize>)| x.0 == id || x.1 == host)
        {
            return Err(invalid_config(format!(
                "Found two member configurations with the same host field or _id: {id} {host}"
            )));
        }
        let resolved = resolve_host(&st, &host);
        if resolved.is_none() {
            unresolved.push(host.clone());
        }
        members.push((id, host, resolved));
    }
    if !members.iter().any(|m| m.2 == Some(ctx.member)) {
        return Err(invalid_config(format!(
            "No host described in new configuration with {{version: {version}, term: 0}} for replica set {} maps to this node",
            st.set_name
        )));
    }
    let mut dupes = members.iter().filter_map(|m| m.2).collect::<Vec<_>>();
    dupes.sort();
    dupes.dedup();
    if dupes.len() != members.iter().filter(|m| m.2.is_some()).count() {
        return Err(invalid_config(
            "two hosts in the configuration map to the same node",
        ));
    }
    let down: Vec<String> = members
        .iter()
        .filter(|m| m.2.is_some_and(|i| !st.reachable(i)))
        .map(|m| m.1.clone())
        .chain(unresolved)
        .collect();
    if !down.is_empty() {
        return Err(CmdError::new(
            74,
            "NodeNotFound",
            format!(
                "replSetInitiate quorum check failed because not all proposed set members \
                 responded affirmatively: {} failed with Connection refused",
                down.join(", ")
            ),
        )
        .into());
    }
    st.config = Some(Config {
        version,
        members: members
            .into_iter()
            .map(|(id, host, m)| ConfigMember {
                id,
                host,
                member: m.expect("all resolved"),
            })
            .collect(),
    });
    st.preferred_candidate = Some(ctx.member);
    st.bump_topology();
    ctx.shared.schedule_election(&mut st);
    drop(st);
    ctx.shared.notify();
    Ok(doc! {"ok": 1.0})
}

fn repl_step_down(ctx: &Ctx<'_>) -> CmdResult {
    let mut st = ctx.shared.lock();
    if st.role(ctx.member) != Role::Primary {
        return Err(CmdError::not_writable_primary(false)
            .with_msg("not primary so can't step down")
            .into());
    }
    st.step_down();
    ctx.shared.schedule_election(&mut st);
    drop(st);
    ctx.shared.notify();
    Ok(doc! {"ok": 1.0})
}
