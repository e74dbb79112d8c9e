//! Reading command fields the way mongod does: numbers of any BSON numeric
//! type, `TypeMismatch` (14) for a field of the wrong type, and loud refusal
//! of options the simulator does not implement.

use std::time::Duration;

use bson::{Bson, Document};

use crate::error::CmdError;

/// Integer field `key`: `None` when absent or null; int32, int64 and
/// whole doubles are accepted. Other types are `TypeMismatch` (14).
pub(super) fn get_int(body: &Document, key: &str) -> Result<Option<i64>, CmdError> {
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

/// Sub-document field `key` (cloned): `None` when absent or null, other
/// types are `TypeMismatch` (14).
pub(super) fn get_doc(body: &Document, key: &str) -> Result<Option<Document>, CmdError> {
    match body.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d.clone())),
        Some(other) => Err(CmdError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{:?}', expected type 'object'",
            other.element_type()
        ))),
    }
}

/// The collection a command names in its first field (`{find: "<coll>"}`):
/// a non-empty string, else `InvalidNamespace` (73).
pub(super) fn coll_name(body: &Document, cmd: &str) -> Result<String, CmdError> {
    match body.get(cmd) {
        Some(Bson::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(CmdError::new(
            73,
            "InvalidNamespace",
            format!("collection name has invalid type for {cmd}"),
        )),
    }
}

/// `maxTimeMS` (milliseconds) as a duration; `None` when absent or not
/// positive, `TypeMismatch` (14) when not a number.
pub(super) fn max_time(body: &Document) -> Result<Option<Duration>, CmdError> {
    Ok(get_int(body, "maxTimeMS")?
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms as u64)))
}

/// Options the simulator does not implement are refused loudly, so a test
/// that needs one fails instead of passing on a silently different answer.
///
/// `BadValue` (2) naming the first of `unsupported` present in `body`.
pub(super) fn refuse_options(
    body: &Document,
    command: &str,
    unsupported: &[&str],
) -> Result<(), CmdError> {
    match unsupported.iter().find(|o| body.contains_key(**o)) {
        Some(option) => Err(CmdError::bad_value(format!(
            "{command} option '{option}' is not supported by the simulator"
        ))),
        None => Ok(()),
    }
}
