//! Query filters, BSON ordering, sorting and projection: the subset of
//! mongod's query language the store issues, with unknown operators rejected
//! instead of silently matching nothing.

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::error::CmdError;

/// mongod's canonical type order, used both for sorting mixed types and for
/// "type bracketing" (`$lt` only compares values of the same bracket).
fn type_rank(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 1,
        Bson::Null | Bson::Undefined => 2,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 3,
        Bson::String(_) | Bson::Symbol(_) => 4,
        Bson::Document(_) => 5,
        Bson::Array(_) => 6,
        Bson::Binary(_) => 7,
        Bson::ObjectId(_) => 8,
        Bson::Boolean(_) => 9,
        Bson::DateTime(_) => 10,
        Bson::Timestamp(_) => 11,
        Bson::RegularExpression(_) => 12,
        Bson::DbPointer(_) => 13,
        Bson::JavaScriptCode(_) => 14,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::MaxKey => 16,
    }
}

fn as_f64(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(*i as f64),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        // Decimal128 has no arithmetic in bson 2; it compares as NaN-like
        // and is documented as unsupported.
        _ => None,
    }
}

fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        _ => None,
    }
}

/// Total order over BSON values, mongod-style (binary collation for strings).
pub(crate) fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        _ if ra == 3 => match (as_i64(a), as_i64(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => {
                let (x, y) = (as_f64(a).unwrap_or(f64::NAN), as_f64(b).unwrap_or(f64::NAN));
                // mongod sorts NaN below every other number.
                match (x.is_nan(), y.is_nan()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
                }
            }
        },
        (Bson::String(x), Bson::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::Symbol(x), Bson::Symbol(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::String(x), Bson::Symbol(y)) | (Bson::Symbol(x), Bson::String(y)) => {
            x.as_bytes().cmp(y.as_bytes())
        }
        (Bson::Document(x), Bson::Document(y)) => compare_docs(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (p, q) in x.iter().zip(y.iter()) {
                let c = compare(p, q);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then(x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => {
            x.pattern.cmp(&y.pattern).then(x.options.cmp(&y.options))
        }
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

fn compare_docs(x: &Document, y: &Document) -> Ordering {
    let mut xi = x.iter();
    let mut yi = y.iter();
    loop {
        match (xi.next(), yi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let c = type_rank(va)
                    .cmp(&type_rank(vb))
                    .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
                    .then_with(|| compare(va, vb));
                if c != Ordering::Equal {
                    return c;
                }
            }
        }
    }
}

pub(crate) fn values_equal(a: &Bson, b: &Bson) -> bool {
    type_rank(a) == type_rank(b) && compare(a, b) == Ordering::Equal
}

/// Resolves a dotted path; arrays along the way fan out like mongod's
/// implicit array traversal. `None` entries stand for "missing".
fn lookup<'a>(doc: &'a Document, path: &str) -> Vec<Option<&'a Bson>> {
    let mut parts = path.splitn(2, '.');
    let head = parts.next().unwrap_or("");
    let rest = parts.next();
    match (doc.get(head), rest) {
        (None, _) => vec![None],
        (Some(v), None) => vec![Some(v)],
        (Some(Bson::Document(sub)), Some(rest)) => lookup(sub, rest),
        (Some(Bson::Array(items)), Some(rest)) => {
            let mut out = Vec::new();
            for item in items {
                if let Bson::Document(sub) = item {
                    out.extend(lookup(sub, rest).into_iter().filter(|v| v.is_some()));
                }
            }
            if out.is_empty() {
                out.push(None);
            }
            out
        }
        (Some(_), Some(_)) => vec![None],
    }
}

/// The value a sort key sees: missing sorts like null.
pub(crate) fn sort_value<'a>(doc: &'a Document, path: &str) -> &'a Bson {
    static NULL: Bson = Bson::Null;
    lookup(doc, path)
        .into_iter()
        .flatten()
        .next()
        .unwrap_or(&NULL)
}

fn bad_value(msg: impl Into<String>) -> CmdError {
    CmdError::new(2, "BadValue", msg)
}

/// Does `doc` satisfy `filter`?
pub(crate) fn matches(doc: &Document, filter: &Document) -> Result<bool, CmdError> {
    for (key, cond) in filter {
        let ok = if let Some(op) = key.strip_prefix('$') {
            match op {
                "and" | "or" | "nor" => {
                    let clauses = match cond {
                        Bson::Array(a) if !a.is_empty() => a,
                        _ => return Err(bad_value(format!("${op} must be a nonempty array"))),
                    };
                    let mut results = Vec::with_capacity(clauses.len());
                    for c in clauses {
                        match c {
                            Bson::Document(d) => results.push(matches(doc, d)?),
                            _ => {
                                return Err(bad_value(
                                    "$or/$and/$nor entries need to be full objects",
                                ))
                            }
                        }
                    }
                    match op {
                        "and" => results.iter().all(|r| *r),
                        "or" => results.iter().any(|r| *r),
                        _ => !results.iter().any(|r| *r),
                    }
                }
                "comment" => true,
                _ => return Err(bad_value(format!("unknown top level operator: ${op}"))),
            }
        } else {
            field_matches(doc, key, cond)?
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn is_operator_doc(cond: &Bson) -> Option<&Document> {
    match cond {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => Some(d),
        _ => None,
    }
}

fn field_matches(doc: &Document, path: &str, cond: &Bson) -> Result<bool, CmdError> {
    let values = lookup(doc, path);
    match is_operator_doc(cond) {
        None => Ok(eq_matches(&values, cond)),
        Some(ops) => {
            for (op, arg) in ops {
                if !op_matches(&values, op, arg)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

/// Equality with mongod's array rule: an array field matches if the whole
/// array or any element equals the operand; `null` also matches "missing".
fn eq_matches(values: &[Option<&Bson>], operand: &Bson) -> bool {
    values.iter().any(|v| match v {
        None => matches!(operand, Bson::Null),
        Some(v) => {
            values_equal(v, operand)
                || matches!(v, Bson::Array(items) if items.iter().any(|i| values_equal(i, operand)))
        }
    })
}

fn cmp_matches(values: &[Option<&Bson>], operand: &Bson, accept: fn(Ordering) -> bool) -> bool {
    let test = |v: &Bson| type_rank(v) == type_rank(operand) && accept(compare(v, operand));
    values.iter().any(|v| match v {
        None => false,
        Some(Bson::Array(items)) if !matches!(operand, Bson::Array(_)) => items.iter().any(test),
        Some(v) => test(v),
    })
}

fn op_matches(values: &[Option<&Bson>], op: &str, arg: &Bson) -> Result<bool, CmdError> {
    Ok(match op {
        "$eq" => eq_matches(values, arg),
        "$ne" => !eq_matches(values, arg),
        "$lt" => cmp_matches(values, arg, |o| o == Ordering::Less),
        "$lte" => cmp_matches(values, arg, |o| o != Ordering::Greater),
        "$gt" => cmp_matches(values, arg, |o| o == Ordering::Greater),
        "$gte" => cmp_matches(values, arg, |o| o != Ordering::Less),
        "$in" | "$nin" => {
            let Bson::Array(items) = arg else {
                return Err(bad_value(format!("{op} needs an array")));
            };
            let hit = items.iter().any(|i| eq_matches(values, i));
            if op == "$in" {
                hit
            } else {
                !hit
            }
        }
        "$type" => {
            let wanted: Vec<u8> = match arg {
                Bson::Array(items) => items.iter().map(type_code).collect::<Result<_, _>>()?,
                single => vec![type_code(single)?],
            };
            values
                .iter()
                .flatten()
                .any(|v| wanted.contains(&bson_type_code(v)))
        }
        "$exists" => {
            let want = match arg {
                Bson::Boolean(b) => *b,
                other => as_f64(other).is_some_and(|n| n != 0.0),
            };
            values.iter().any(|v| v.is_some()) == want
        }
        "$not" => match arg {
            Bson::Document(inner) => {
                let mut all = true;
                for (op, arg) in inner {
                    if !op_matches(values, op, arg)? {
                        all = false;
                    }
                }
                !all
            }
            _ => return Err(bad_value("$not needs a regex or a document")),
        },
        other => return Err(bad_value(format!("unknown operator: {other}"))),
    })
}

/// The BSON type number of a value, as `$type` names it
/// (<https://www.mongodb.com/docs/manual/reference/operator/query/type/>).
fn bson_type_code(v: &Bson) -> u8 {
    v.element_type() as u8
}

/// A `$type` operand: a number or one of the aliases this simulator knows.
fn type_code(arg: &Bson) -> Result<u8, CmdError> {
    let alias = |name: &str| -> Option<u8> {
        Some(match name {
            "double" => 1,
            "string" => 2,
            "object" => 3,
            "array" => 4,
            "binData" => 5,
            "objectId" => 7,
            "bool" => 8,
            "date" => 9,
            "null" => 10,
            "int" => 16,
            "timestamp" => 17,
            "long" => 18,
            _ => return None,
        })
    };
    match arg {
        Bson::String(name) => {
            alias(name).ok_or_else(|| bad_value(format!("Unknown type name alias: {name}")))
        }
        other => as_f64(other)
            .filter(|n| (1.0..=19.0).contains(n))
            .map(|n| n as u8)
            .ok_or_else(|| bad_value("Invalid numerical type code")),
    }
}

/// Validates a sort specification and returns (path, ascending) pairs.
pub(crate) fn parse_sort(spec: &Document) -> Result<Vec<(String, bool)>, CmdError> {
    let mut keys = Vec::new();
    for (k, v) in spec {
        let dir = match as_f64(v) {
            Some(1.0) => true,
            Some(-1.0) => false,
            _ => {
                return Err(bad_value(format!(
                    "$sort key ordering must be 1 (for ascending) or -1 (for descending); \
                     {k} has {v}"
                )))
            }
        };
        keys.push((k.clone(), dir));
    }
    Ok(keys)
}

pub(crate) fn sort_docs(docs: &mut [Document], keys: &[(String, bool)]) {
    docs.sort_by(|a, b| {
        for (path, asc) in keys {
            let c = compare(sort_value(a, path), sort_value(b, path));
            let c = if *asc { c } else { c.reverse() };
            if c != Ordering::Equal {
                return c;
            }
        }
        Ordering::Equal
    });
}

pub(crate) enum Projection {
    Include(Vec<String>, bool),
    Exclude(Vec<String>),
}

/// Top-level inclusion or exclusion projections only; anything fancier is
/// refused so a store relying on it fails loudly.
pub(crate) fn parse_projection(spec: &Document) -> Result<Option<Projection>, CmdError> {
    if spec.is_empty() {
        return Ok(None);
    }
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    let mut id = None;
    for (k, v) in spec {
        let on = match v {
            Bson::Boolean(b) => *b,
            other => match as_f64(other) {
                Some(n) => n != 0.0,
                None => {
                    return Err(bad_value(format!(
                        "unsupported projection value for {k} in the simulator"
                    )))
                }
            },
        };
        if k.contains('.') || k.starts_with('$') {
            return Err(bad_value(format!(
                "unsupported projection path {k} in the simulator"
            )));
        }
        if k == "_id" {
            id = Some(on);
        } else if on {
            include.push(k.clone());
        } else {
            exclude.push(k.clone());
        }
    }
    if !include.is_empty() && !exclude.is_empty() {
        return Err(CmdError::new(
            31254,
            "Location31254",
            "Cannot do exclusion on field in inclusion projection",
        ));
    }
    if !include.is_empty() || id == Some(true) && exclude.is_empty() {
        Ok(Some(Projection::Include(include, id != Some(false))))
    } else {
        if id == Some(false) {
            exclude.push("_id".into());
        }
        Ok(Some(Projection::Exclude(exclude)))
    }
}

pub(crate) fn project(doc: Document, p: &Option<Projection>) -> Document {
    match p {
        None => doc,
        Some(Projection::Include(fields, with_id)) => doc
            .into_iter()
            .filter(|(k, _)| (k == "_id" && *with_id) || fields.contains(k))
            .collect(),
        Some(Projection::Exclude(fields)) => doc
            .into_iter()
            .filter(|(k, _)| !fields.contains(k))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, DateTime};

    #[test]
    fn keyset_pagination_filter() {
        let d = DateTime::from_millis(1000);
        let m = doc! {"_id": "b", "datetime": d};
        let f = doc! {"$or": [{"datetime": {"$lt": d}}, {"datetime": d, "_id": {"$lt": "c"}}]};
        assert!(matches(&m, &f).unwrap());
        let f = doc! {"$or": [{"datetime": {"$lt": d}}, {"datetime": d, "_id": {"$lt": "a"}}]};
        assert!(!matches(&m, &f).unwrap());
    }

    #[test]
    fn type_bracketing_and_unknown_operators() {
        let m = doc! {"x": 5};
        assert!(!matches(&m, &doc! {"x": {"$lt": "zzz"}}).unwrap());
        assert!(matches(&m, &doc! {"x": {"$lt": 5.5}}).unwrap());
        assert!(matches(&m, &doc! {"x": {"$in": [1, 5]}}).unwrap());
        assert!(matches(&m, &doc! {"y": null}).unwrap());
        assert_eq!(
            matches(&m, &doc! {"x": {"$regexx": 1}}).unwrap_err().code,
            2
        );
        assert_eq!(matches(&m, &doc! {"$where": "1"}).unwrap_err().code, 2);
    }

    #[test]
    fn sorts_by_compound_key() {
        let mut docs = vec![
            doc! {"_id": "a", "t": 2},
            doc! {"_id": "b", "t": 1},
            doc! {"_id": "c", "t": 2},
        ];
        sort_docs(&mut docs, &parse_sort(&doc! {"t": -1, "_id": -1}).unwrap());
        let ids: Vec<_> = docs.iter().map(|d| d.get_str("_id").unwrap()).collect();
        assert_eq!(ids, ["c", "a", "b"]);
    }
}
