//! Collections and databases: `create`, `listCollections`, `drop` and
//! `dropDatabase`. Drops are logged, so change streams see them.

use std::collections::VecDeque;

use bson::{doc, Document};

use super::admission::check_readable;
use super::args::{coll_name, get_doc, get_int, refuse_options};
use super::cursors::start_cursor;
use super::{CmdResult, Ctx};
use crate::error::CmdError;
use crate::matcher;
use crate::state::Role;

/// `create` on the primary; `NamespaceExists` (48) if it exists, `BadValue`
/// (2) for capped, time-series, validated, clustered collections and views.
pub(super) fn create_coll(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
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

/// `listCollections`: a cursor over the database's collections, filtered
/// by `filter` (matched against each entry), names only with `nameOnly`.
pub(super) fn list_collections(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
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

/// `drop` on the primary: `{nIndexesWas, ns}`; dropping a missing
/// collection succeeds with `nIndexesWas: 0`.
pub(super) fn drop_coll(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
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

/// `dropDatabase` on the primary: `{dropped: <db>}`.
pub(super) fn drop_database(ctx: &Ctx<'_>, db: &str) -> CmdResult {
    let mut st = ctx.shared.lock();
    if st.role(ctx.member) != Role::Primary {
        return Err(CmdError::not_writable_primary(false).into());
    }
    st.drop_database(db);
    drop(st);
    ctx.shared.notify();
    Ok(doc! {"dropped": db, "ok": 1.0})
}
