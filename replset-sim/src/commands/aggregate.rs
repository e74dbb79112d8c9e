//! `aggregate`: a leading `$changeStream` stage opens a change stream
//! (handed to [`crate::changestream`]); any other pipeline runs over this
//! member's visible documents with the few stages a store plausibly issues.

use std::time::Instant;

use bson::{doc, Bson, Document};

use super::admission::{check_readable, wait_after_cluster_time};
use super::args::{get_doc, get_int};
use super::cursors::start_cursor;
use super::{CmdResult, Ctx};
use crate::changestream;
use crate::error::CmdError;
use crate::matcher;

/// `aggregate`: a cursor over the pipeline's output. `FailedToParse` (9)
/// without `cursor`, `Location40323` for a stage with more than one field,
/// `Location40324` for an unsupported stage, `BadValue` (2) for `explain`.
pub(super) async fn aggregate(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
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
fn apply_stage(docs: Vec<Document>, stage: &Document) -> Result<Vec<Document>, CmdError> {
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
