//! MongoDB wire protocol framing: OP_MSG in both directions, plus the legacy
//! OP_QUERY request / OP_REPLY response pair that old drivers use for their
//! first handshake.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use bson::{Bson, Document};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(crate) const OP_REPLY: i32 = 1;
pub(crate) const OP_QUERY: i32 = 2004;
pub(crate) const OP_MSG: i32 = 2013;

pub(crate) const FLAG_CHECKSUM_PRESENT: u32 = 1;
pub(crate) const FLAG_MORE_TO_COME: u32 = 1 << 1;
pub(crate) const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;

/// mongod's `maxMessageSizeBytes`; anything larger is a framing error.
pub(crate) const MAX_MESSAGE_SIZE: i32 = 48_000_000;

static NEXT_REQUEST_ID: AtomicI32 = AtomicI32::new(1);

pub(crate) fn next_request_id() -> i32 {
    NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed)
}

/// One decoded client request.
pub(crate) struct Request {
    pub request_id: i32,
    pub kind: RequestKind,
}

pub(crate) enum RequestKind {
    /// OP_MSG: document sequences are already folded into the body as arrays,
    /// which is how mongod presents them to command implementations.
    Msg { flags: u32, body: Document },
    /// OP_QUERY against `<db>.$cmd`.
    Query { collection: String, query: Document },
    /// Any opcode we do not speak; the connection is closed, as mongod does.
    Unsupported,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_i32(buf: &[u8], pos: &mut usize) -> io::Result<i32> {
    let bytes = buf
        .get(*pos..*pos + 4)
        .ok_or_else(|| bad("truncated message"))?;
    *pos += 4;
    Ok(i32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

fn read_cstring(buf: &[u8], pos: &mut usize) -> io::Result<String> {
    let rest = buf.get(*pos..).ok_or_else(|| bad("truncated message"))?;
    let end = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| bad("unterminated cstring"))?;
    let s = std::str::from_utf8(&rest[..end])
        .map_err(|_| bad("cstring is not UTF-8"))?
        .to_owned();
    *pos += end + 1;
    Ok(s)
}

fn read_document(buf: &[u8], pos: &mut usize) -> io::Result<Document> {
    let mut p = *pos;
    let len = read_i32(buf, &mut p)?;
    if len < 5 {
        return Err(bad("document length too small"));
    }
    let end = *pos + len as usize;
    let slice = buf
        .get(*pos..end)
        .ok_or_else(|| bad("truncated document"))?;
    // A string that is not UTF-8 is no reason to refuse a document: mongod
    // checks structure only (`raw_strings`).
    let marked = crate::raw_strings::mark_invalid(slice)?;
    let doc = Document::from_reader(marked.as_deref().unwrap_or(slice))
        .map_err(|e| bad(format!("invalid BSON: {e}")))?;
    *pos = end;
    Ok(doc)
}

/// Reads one request; `Ok(None)` is a clean end of stream between messages.
pub(crate) async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Request>> {
    let mut header = [0u8; 16];
    match r.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut header[1..]).await?;
    let mut p = 0;
    let length = read_i32(&header, &mut p)?;
    let request_id = read_i32(&header, &mut p)?;
    let _response_to = read_i32(&header, &mut p)?;
    let op_code = read_i32(&header, &mut p)?;
    if !(16..=MAX_MESSAGE_SIZE).contains(&length) {
        return Err(bad(format!("message length {length} out of range")));
    }
    let mut buf = vec![0u8; length as usize - 16];
    r.read_exact(&mut buf).await?;

    let kind = match op_code {
        OP_MSG => parse_op_msg(&buf)?,
        OP_QUERY => parse_op_query(&buf)?,
        _ => RequestKind::Unsupported,
    };
    Ok(Some(Request { request_id, kind }))
}

fn parse_op_msg(buf: &[u8]) -> io::Result<RequestKind> {
    let mut pos = 0;
    let flags = read_i32(buf, &mut pos)? as u32;
    // Checksums are accepted but not verified: the driver never sends them
    // and loopback does not corrupt bytes.
    let end = if flags & FLAG_CHECKSUM_PRESENT != 0 {
        buf.len().checked_sub(4).ok_or_else(|| bad("truncated"))?
    } else {
        buf.len()
    };
    let mut body: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    while pos < end {
        let kind = buf[pos];
        pos += 1;
        match kind {
            0 => {
                if body.is_some() {
                    return Err(bad("more than one body section"));
                }
                body = Some(read_document(buf, &mut pos)?);
            }
            1 => {
                let start = pos;
                let size = read_i32(buf, &mut pos)?;
                let seq_end = start + size as usize;
                if seq_end > end {
                    return Err(bad("document sequence overruns message"));
                }
                let ident = read_cstring(buf, &mut pos)?;
                let mut docs = Vec::new();
                while pos < seq_end {
                    docs.push(Bson::Document(read_document(buf, &mut pos)?));
                }
                sequences.push((ident, docs));
            }
            other => return Err(bad(format!("unknown OP_MSG section kind {other}"))),
        }
    }
    let mut body = body.ok_or_else(|| bad("OP_MSG without a body section"))?;
    for (ident, docs) in sequences {
        body.insert(ident, Bson::Array(docs));
    }
    Ok(RequestKind::Msg { flags, body })
}

fn parse_op_query(buf: &[u8]) -> io::Result<RequestKind> {
    let mut pos = 0;
    let _flags = read_i32(buf, &mut pos)?;
    let collection = read_cstring(buf, &mut pos)?;
    let _skip = read_i32(buf, &mut pos)?;
    let _n_return = read_i32(buf, &mut pos)?;
    let query = read_document(buf, &mut pos)?;
    Ok(RequestKind::Query { collection, query })
}

/// `body` encoded as mongod would send it: strings that arrived as other
/// than UTF-8 go back as the bytes they were (`raw_strings`).
fn encode(body: &Document) -> io::Result<Vec<u8>> {
    let mut doc = Vec::new();
    body.to_writer(&mut doc)
        .map_err(|e| bad(format!("cannot encode reply: {e}")))?;
    Ok(crate::raw_strings::unmark(&doc)?.unwrap_or(doc))
}

fn header(len: usize, response_to: i32, op_code: i32) -> (i32, Vec<u8>) {
    let request_id = next_request_id();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as i32).to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
    (request_id, out)
}

/// Writes an OP_MSG reply and returns its request id (needed to chain
/// exhaust replies, whose `responseTo` is the previous reply's id).
pub(crate) async fn write_msg<W: AsyncWrite + Unpin>(
    w: &mut W,
    response_to: i32,
    flags: u32,
    body: &Document,
) -> io::Result<i32> {
    let doc = encode(body)?;
    let len = 16 + 4 + 1 + doc.len();
    let (id, mut out) = header(len, response_to, OP_MSG);
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&doc);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(id)
}

pub(crate) async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    response_to: i32,
    body: &Document,
) -> io::Result<()> {
    let doc = encode(body)?;
    let len = 16 + 4 + 8 + 4 + 4 + doc.len();
    let (_, mut out) = header(len, response_to, OP_REPLY);
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    out.extend_from_slice(&doc);
    w.write_all(&out).await?;
    w.flush().await
}
