//! Indexes: `createIndexes` records ascending/descending key specs (unique
//! ones are enforced on insert; none is used to plan queries),
//! `listIndexes` lists them and `dropIndexes` drops them.

use std::collections::VecDeque;

use bson::{doc, Bson, Document};

use super::admission::check_readable;
use super::args::{coll_name, get_doc, get_int};
use super::cursors::start_cursor;
use super::{CmdResult, Ctx};
use crate::error::CmdError;
use crate::state::{IndexSpec, IndexTarget, Role};

/// `createIndexes` on the primary: `{numIndexesBefore, numIndexesAfter,
/// createdCollectionAutomatically, note?}`. Keys must be 1/-1
/// (`CannotCreateIndex` 67 otherwise) and each spec needs a `name`
/// (`FailedToParse` 9).
pub(super) fn create_indexes(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
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

/// `listIndexes`: a cursor over the collection's index specs;
/// `NamespaceNotFound` (26) if the collection does not exist.
pub(super) fn list_indexes(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
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

/// `dropIndexes` on the primary: `{nIndexesWas, msg?}`, as mongod documents
/// it (<https://www.mongodb.com/docs/manual/reference/command/dropIndexes/>):
/// `index` is `"*"` (every index but `_id`'s, with mongod's `msg`), one
/// name, a key pattern, or a list of names, dropped all or none. The `_id`
/// index is refused (`InvalidOptions` 72), as is a name or key pattern no
/// index has (`IndexNotFound` 27, <https://www.mongodb.com/docs/manual/reference/error-codes/>);
/// see [`crate::state::State::drop_indexes`]. A missing `index` is
/// mongod's parser error (40414), one of another type `TypeMismatch` (14).
/// Like mongod before 6.0, and after without `showExpandedEvents`, no
/// change stream sees it.
pub(super) fn drop_indexes(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let coll = coll_name(body, "dropIndexes")?;
    let ns = format!("{db}.{coll}");
    let wrong_type = |what: &str| {
        CmdError::type_mismatch(format!(
            "BSON field 'dropIndexes.index' is the wrong type '{what}', expected types \
             '[string, object, array]'"
        ))
    };
    let which = match body.get("index") {
        None => {
            return Err(CmdError::new(
                40414,
                "Location40414",
                "BSON field 'dropIndexes.index' is missing but a required field",
            )
            .into())
        }
        Some(Bson::String(s)) if s == "*" => IndexTarget::All,
        Some(Bson::String(s)) => IndexTarget::Names(vec![s.clone()]),
        Some(Bson::Document(key)) => IndexTarget::Key(key.clone()),
        Some(Bson::Array(names)) => IndexTarget::Names(
            names
                .iter()
                .map(|n| match n {
                    Bson::String(s) => Ok(s.clone()),
                    other => Err(CmdError::type_mismatch(format!(
                        "dropIndexes {ns} failed to drop multiple indexes: index name must be a \
                         string, not {:?}",
                        other.element_type()
                    ))),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(other) => return Err(wrong_type(&format!("{:?}", other.element_type())).into()),
    };
    let mut st = ctx.shared.lock();
    if st.role(ctx.member) != Role::Primary {
        return Err(CmdError::not_writable_primary(false).into());
    }
    let was = st.drop_indexes(&ns, &which)?;
    let mut reply = doc! {"nIndexesWas": was as i32};
    if matches!(which, IndexTarget::All) {
        reply.insert("msg", "non-_id indexes dropped for collection");
    }
    reply.insert("ok", 1.0);
    Ok(reply)
}
