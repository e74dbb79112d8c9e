//! Queries: `find` and `count` over the documents this member can see
//! (secondaries see them `secondary_lag` late): filter, sort, skip, limit
//! and projection, with the semantics `crate::matcher` implements.

use std::time::Instant;

use bson::{doc, Document};

use super::admission::{check_readable, wait_after_cluster_time};
use super::args::{coll_name, get_doc, get_int, refuse_options};
use super::cursors::start_cursor;
use super::{CmdResult, Ctx};
use crate::error::CmdError;
use crate::matcher;
use crate::state::State;

/// A parsed query: which documents, in which order, which slice of them,
/// and which fields.
struct Query {
    filter: Document,
    /// Sort keys, `true` for ascending.
    sort: Option<Vec<(String, bool)>>,
    skip: usize,
    /// `None`: no limit.
    limit: Option<usize>,
    projection: Option<matcher::Projection>,
}

/// The documents of `ns` visible on `member` now that match `q`, sorted,
/// sliced and projected.
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

/// `find`: the first batch and a cursor for the rest. A negative `limit`
/// or `singleBatch` returns one batch and no cursor. Options the simulator
/// does not implement (`collation`, `tailable`, ...) are `BadValue` (2).
pub(super) async fn find(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
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

/// `count`: `{n}` matching `query`, after `skip` and `limit` (what the
/// driver's `estimated_document_count` sends).
pub(super) fn count(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
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
