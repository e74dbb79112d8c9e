//! Strings that are not valid UTF-8, kept byte for byte.
//!
//! mongod stores what a client sends as long as it is well-formed BSON: the
//! validation it applies to what arrives (`net.wireObjectCheck`, on by
//! default: <https://www.mongodb.com/docs/manual/reference/configuration-options/#mongodb-setting-net.wireObjectCheck>)
//! is `validateBSON`'s default mode, whose checks "are structural only"
//! (lengths, NUL terminators, booleans, nesting); the validity of UTF-8
//! strings is checked only in its full mode
//! (`src/mongo/bson/bson_validate.h` in mongodb/mongo), which the
//! `validate` command's `checkBSONConformance` asks for
//! (<https://www.mongodb.com/docs/manual/reference/command/validate/>).
//! So a document whose string is not UTF-8 is inserted, stored, and sent
//! back as it was (SERVER-93732, "The server should reject
//! inserting/updating strings containing invalid UTF-8", is unresolved:
//! <https://jira.mongodb.org/browse/SERVER-93732>).
//!
//! The simulator holds documents as `bson::Document`, whose strings are
//! Rust `String`s. So a request's string value that is not UTF-8 is read in
//! as a marker string holding its bytes in hex ([`mark_invalid`]), which
//! the simulator stores, copies into change events and returns like any
//! string, and each reply turns every marker back into the bytes it stands
//! for ([`unmark`]) before it is sent.

use std::io;

/// How a string that is not UTF-8 begins once read in: a noncharacter
/// (U+10FFFF), which no client's text holds, then a name, then the bytes
/// in lower-case hex.
const MARKER: &str = "\u{10FFFF}replset-sim invalid UTF-8:";

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// The BSON document `doc` with every string value (in nested documents and
/// arrays too) that is not UTF-8 replaced by its marker. `None` when it has
/// none.
pub(crate) fn mark_invalid(doc: &[u8]) -> io::Result<Option<Vec<u8>>> {
    rewrite(doc, &|bytes| {
        std::str::from_utf8(bytes).is_err().then(|| {
            let mut marked = MARKER.as_bytes().to_vec();
            for b in bytes {
                marked.extend_from_slice(format!("{b:02x}").as_bytes());
            }
            marked
        })
    })
}

/// The BSON document `doc` with every marker made by [`mark_invalid`]
/// replaced by the bytes it stands for: what mongod would send. `None`
/// when it holds none.
pub(crate) fn unmark(doc: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let needle = MARKER.as_bytes();
    if !doc.windows(needle.len()).any(|w| w == needle) {
        return Ok(None);
    }
    rewrite(doc, &|bytes| {
        let hex = bytes.strip_prefix(needle)?;
        if hex.len() % 2 != 0 {
            return None;
        }
        hex.chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
            })
            .collect()
    })
}

fn read_i32(buf: &[u8], at: usize) -> io::Result<i32> {
    let bytes = buf.get(at..at + 4).ok_or_else(|| bad("truncated BSON"))?;
    Ok(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn read_len(buf: &[u8], at: usize) -> io::Result<usize> {
    usize::try_from(read_i32(buf, at)?).map_err(|_| bad("negative BSON length"))
}

/// Where the NUL ending the C string at `at` is.
fn cstring_end(buf: &[u8], at: usize) -> io::Result<usize> {
    buf.get(at..)
        .and_then(|rest| rest.iter().position(|b| *b == 0))
        .map(|n| at + n)
        .ok_or_else(|| bad("unterminated cstring"))
}

/// `doc` with each string value's bytes (without its NUL) that `change`
/// maps replaced by what it maps them to; `None` when `change` mapped
/// none. Walks the BSON element types of <https://bsonspec.org/spec.html>.
fn rewrite(doc: &[u8], change: &dyn Fn(&[u8]) -> Option<Vec<u8>>) -> io::Result<Option<Vec<u8>>> {
    let len = read_len(doc, 0)?;
    if len < 5 || len > doc.len() || doc[len - 1] != 0 {
        return Err(bad("malformed BSON document"));
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[0; 4]);
    let mut changed = false;
    let mut at = 4;
    while at < len - 1 {
        let kind = doc[at];
        let value = cstring_end(doc, at + 1)? + 1;
        out.extend_from_slice(&doc[at..value]);
        let size = match kind {
            0x01 | 0x09 | 0x11 | 0x12 => 8,
            0x02 => {
                let n = read_len(doc, value)?;
                let bytes = doc
                    .get(value + 4..value + 4 + n.saturating_sub(1))
                    .ok_or_else(|| bad("truncated string"))?;
                if let Some(new) = change(bytes) {
                    let new_len =
                        i32::try_from(new.len() + 1).map_err(|_| bad("string too long"))?;
                    out.extend_from_slice(&new_len.to_le_bytes());
                    out.extend_from_slice(&new);
                    out.push(0);
                    changed = true;
                    at = value + 4 + n;
                    continue;
                }
                4 + n
            }
            0x03 | 0x04 => {
                let n = read_len(doc, value)?;
                let inner = doc
                    .get(value..value + n)
                    .ok_or_else(|| bad("truncated document"))?;
                if let Some(new) = rewrite(inner, change)? {
                    out.extend_from_slice(&new);
                    changed = true;
                    at = value + n;
                    continue;
                }
                n
            }
            0x05 => 5 + read_len(doc, value)?,
            0x06 | 0x0A | 0x7F | 0xFF => 0,
            0x07 => 12,
            0x08 => 1,
            0x0B => cstring_end(doc, cstring_end(doc, value)? + 1)? + 1 - value,
            0x0C => 4 + read_len(doc, value)? + 12,
            0x0D | 0x0E => 4 + read_len(doc, value)?,
            0x0F => read_len(doc, value)?,
            0x10 => 4,
            0x13 => 16,
            other => return Err(bad(&format!("unknown BSON element type {other:#04x}"))),
        };
        let end = value + size;
        out.extend_from_slice(doc.get(value..end).ok_or_else(|| bad("truncated BSON"))?);
        at = end;
    }
    if !changed {
        return Ok(None);
    }
    out.push(0);
    let total = i32::try_from(out.len()).map_err(|_| bad("document too long"))?;
    out[..4].copy_from_slice(&total.to_le_bytes());
    Ok(Some(out))
}
