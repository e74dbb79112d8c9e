//! Request bodies: size cap, media type and parsing, each with its own error.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use rocket::data::{Data, ToByteUnit};
use rocket::form::ValueField;
use rocket::http::{RawStr, Status};
use rocket::tokio::io::AsyncReadExt;
use rocket::Request;
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::echo::echo;
use super::error::ApiError;
use crate::message::{ID_MAX_CHARS, NAME_MAX_CHARS, TEXT_MAX_CHARS};

/// The most bytes one accepted character can take in a body, whichever
/// way a client encodes it:
/// - JSON: a character outside the Basic Multilingual Plane as a
///   surrogate pair of `\uXXXX` escapes (12 bytes); a newline sent as CRLF
///   (normalised to one LF) as `\u000d\u000a` (12 bytes).
/// - A form: 4 UTF-8 bytes, each percent-encoded (`%F0%9F%98%80`,
///   12 bytes); CRLF as `%0D%0A` (6 bytes).
pub const WORST_BYTES_PER_CHAR: u64 = 12;

/// The most bytes one accepted character of a name can take: names are
/// counted after NFC normalisation, and one composed character may arrive
/// decomposed as up to 4 code points of up to 3 UTF-8 bytes, each byte
/// percent-encoded (4 × 3 × 3).
pub const WORST_BYTES_PER_NAME_CHAR: u64 = 36;

/// What surrounds the three values, at worst: the field names with every
/// character escaped (`\u006e`, 6 bytes; `%6E` in a form, 3), quotes,
/// colons, commas and braces (JSON) or `=` and `&` (form), and room for
/// insignificant whitespace and whitespace trimmed from the values.
pub const FRAMING_BYTES: u64 = ("name".len() + "text".len() + "id".len()) as u64 * 6 + 13 + 1024;

/// Larger bodies get 413. Derived from the character limits, so every
/// name, text and id the rules accept fits in every encoding a client may
/// send: 64 × 36 + (2000 + 64) × 12 + 1,097 = 28,169 bytes.
pub const BODY_LIMIT_BYTES: u64 = NAME_MAX_CHARS as u64 * WORST_BYTES_PER_NAME_CHAR
    + (TEXT_MAX_CHARS + ID_MAX_CHARS) as u64 * WORST_BYTES_PER_CHAR
    + FRAMING_BYTES;

/// The 413 refusal.
pub fn too_large() -> ApiError {
    ApiError::new(
        Status::PayloadTooLarge,
        format!("request body is larger than {BODY_LIMIT_BYTES} bytes"),
    )
}

/// Room a body is first read into; most posts are a few hundred bytes.
const FIRST_READ_BYTES: usize = 1024;

/// Reads the whole body, refusing it if it is larger than the limit.
///
/// Read straight into the returned buffer, not with Rocket's `into_bytes`,
/// which copies through an 8 KiB buffer allocated zeroed for each body
/// (tokio's `io::copy`): a cost of every post.
pub async fn read_capped(data: Data<'_>) -> Result<Vec<u8>, ApiError> {
    // One byte past the limit tells a body of exactly the limit from a
    // longer one.
    let mut stream = data.open((BODY_LIMIT_BYTES + 1).bytes());
    let mut body = Vec::with_capacity(FIRST_READ_BYTES);
    stream
        .read_to_end(&mut body)
        .await
        .map_err(|e| ApiError::new(Status::BadRequest, format!("cannot read body: {e}")))?;
    if body.len() as u64 > BODY_LIMIT_BYTES {
        return Err(too_large());
    }
    Ok(body)
}

/// The request's `Content-Type` as sent, if it has one.
fn content_type<'r>(req: &'r Request<'_>) -> Option<&'r str> {
    req.headers().get_one("Content-Type")
}

/// Whether `c` may be in a token (RFC 9110 §5.6.2).
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// The token `s` starts with, and what follows it.
fn token(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c| !is_tchar(c)).unwrap_or(s.len());
    (end > 0).then(|| s.split_at(end))
}

/// What follows a quoted string whose opening quote is already taken off.
fn after_quoted(s: &str) -> Option<&str> {
    let mut chars = s.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some(&s[at + 1..]),
            '\\' => {
                chars.next()?;
            }
            _ => {}
        }
    }
    None
}

/// The type and subtype of a `Content-Type` value, if it is a media type
/// as RFC 9110 §8.3.1 writes one: `type/subtype` and parameters, with
/// optional whitespace on either side of each `;`. Rocket's parser refuses
/// the whitespace before one (`application/json ; charset=utf-8`), and its
/// `None` cannot tell such a header from a missing one; the `mime` crate
/// (0.3) refuses that whitespace too, so the grammar is written here. Parameters must be
/// well formed, and are otherwise ignored ([`media_type_and_charset`]
/// reads `charset`).
fn media_type(value: &str) -> Option<(&str, &str)> {
    media_type_and_charset(value).map(|(kind, subtype, _)| (kind, subtype))
}

/// [`media_type`], with the value of its `charset` parameter, if it has
/// one (unquoted; RFC 9110 §8.3.2). Only a quoted `charset` with escapes
/// is copied; other parameters are passed over.
fn media_type_and_charset(value: &str) -> Option<(&str, &str, Option<Cow<'_, str>>)> {
    const OWS: [char; 2] = [' ', '\t'];
    let (kind, rest) = token(value.trim_matches(OWS))?;
    let (subtype, mut rest) = token(rest.strip_prefix('/')?)?;
    let mut charset = None;
    loop {
        rest = rest.trim_start_matches(OWS);
        if rest.is_empty() {
            return Some((kind, subtype, charset));
        }
        rest = rest.strip_prefix(';')?.trim_start_matches(OWS);
        // RFC 9110 allows an empty parameter (`type/sub;` or `;;`).
        if rest.is_empty() || rest.starts_with(';') {
            continue;
        }
        let (name, after_name) = token(rest)?;
        let value = after_name.strip_prefix('=')?;
        let (parameter, after) = match value.strip_prefix('"') {
            Some(quoted) => {
                let after = after_quoted(quoted)?;
                (Err(&quoted[..quoted.len() - after.len() - 1]), after)
            }
            None => {
                let (parameter, after) = token(value)?;
                (Ok(parameter), after)
            }
        };
        if name.eq_ignore_ascii_case("charset") {
            charset = Some(match parameter {
                Ok(token) => Cow::Borrowed(token),
                Err(inside) => unquote(inside),
            });
        }
        rest = after;
    }
}

/// The text of a quoted string's inside, its backslash escapes undone
/// (copied only when it has one).
fn unquote(inside: &str) -> Cow<'_, str> {
    if !inside.contains('\\') {
        return Cow::Borrowed(inside);
    }
    let mut text = String::with_capacity(inside.len());
    let mut chars = inside.chars();
    while let Some(c) = chars.next() {
        text.extend(if c == '\\' { chars.next() } else { Some(c) });
    }
    Cow::Owned(text)
}

/// Whether a `Content-Type` value says JSON (`application/json`, with any
/// parameters such as `charset=UTF-8`, or any `+json` type).
pub fn is_json_content_type(value: &str) -> bool {
    media_type(value).is_some_and(|(kind, subtype)| is_json_type(kind, subtype))
}

/// Whether `kind/subtype` is `application/json` or a JSON-based type: a
/// named subtype with the `+json` suffix (RFC 6839 §3.1), such as
/// `application/problem+json`; not a wildcard, and not a bare `+json`.
fn is_json_type(kind: &str, subtype: &str) -> bool {
    if kind.eq_ignore_ascii_case("application") && subtype.eq_ignore_ascii_case("json") {
        return true;
    }
    // A token is ASCII, so any byte is a char boundary.
    let name_len = subtype.len().saturating_sub("+json".len());
    kind != "*"
        && name_len > 0
        && !subtype[..name_len].contains('*')
        && subtype[name_len..].eq_ignore_ascii_case("+json")
}

/// The body a route reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A JSON object (`POST /api/messages`).
    Json,
    /// An `application/x-www-form-urlencoded` form (`POST /messages`).
    Form,
}

impl BodyKind {
    /// The body the route at `path` reads when posted to, if it has one.
    pub fn of_post(path: &str) -> Option<BodyKind> {
        match path {
            "/api/messages" => Some(BodyKind::Json),
            "/messages" => Some(BodyKind::Form),
            _ => None,
        }
    }

    /// What the route expects, for a 415.
    fn expected(self) -> &'static str {
        match self {
            BodyKind::Json => "a JSON body (Content-Type: application/json)",
            BodyKind::Form => "a form body (application/x-www-form-urlencoded)",
        }
    }

    /// Whether the media type `kind/subtype` says this kind of body.
    fn is_type(self, kind: &str, subtype: &str) -> bool {
        match self {
            BodyKind::Json => is_json_type(kind, subtype),
            BodyKind::Form => {
                kind.eq_ignore_ascii_case("application")
                    && subtype.eq_ignore_ascii_case("x-www-form-urlencoded")
            }
        }
    }
}

/// The request headers a body is refused by before it is read, as the
/// application is given them.
#[derive(Debug, Clone, Default)]
pub struct BodyHeaders<'a> {
    /// `Content-Type`, if sent.
    pub content_type: Option<&'a str>,
    /// `Content-Length`, if sent (a body sent chunked has none).
    pub content_length: Option<&'a str>,
    /// Each `Content-Encoding` line, as sent.
    pub content_encoding: Vec<&'a str>,
}

impl<'a> BodyHeaders<'a> {
    /// The headers of a request Rocket holds.
    fn of(req: &'a Request<'_>) -> Self {
        BodyHeaders {
            content_type: content_type(req),
            content_length: req.headers().get_one("Content-Length"),
            content_encoding: req.headers().get("Content-Encoding").collect(),
        }
    }
}

/// The content codings a request body may have, as the `Accept-Encoding`
/// of a 415 refusing any other says: none but `identity` (bodies are read
/// as sent).
pub const ACCEPTED_CODINGS: &str = "identity";

/// The refusal of a `kind` body from its request's headers alone, so the
/// body need not be read (nor a `100 Continue` sent, RFC 9110 §10.1.1):
/// - 415 for a `Content-Type` that is not `kind`'s, or whose `charset` is
///   not UTF-8 (any case): JSON is UTF-8 (RFC 8259 §8.1), and so is every
///   form this service reads; no `charset` means UTF-8;
/// - 415 for a content coding other than `identity` (RFC 9110 §8.4,
///   §15.5.16): bodies are read as sent; this 415 alone has
///   `Accept-Encoding` ([`ACCEPTED_CODINGS`]);
/// - 413 for a `Content-Length` above [`BODY_LIMIT_BYTES`]. A body sent
///   without a length is refused 413 once it is read past the cap
///   ([`read_capped`]).
pub fn head_refusal(kind: BodyKind, headers: BodyHeaders<'_>) -> Option<ApiError> {
    let Some((_, _, charset)) = headers
        .content_type
        .and_then(media_type_and_charset)
        .filter(|(type_, subtype, _)| kind.is_type(type_, subtype))
    else {
        return Some(unsupported(headers.content_type, kind.expected()));
    };
    if let Some(charset) = charset.filter(|c| !c.eq_ignore_ascii_case("utf-8")) {
        return Some(ApiError::new(
            Status::UnsupportedMediaType,
            format!(
                "charset {} is not supported: the body must be UTF-8",
                echo(&charset)
            ),
        ));
    }
    let codings = headers
        .content_encoding
        .iter()
        .flat_map(|line| line.split(','))
        .map(|coding| coding.trim_matches([' ', '\t']));
    for coding in codings {
        if !coding.is_empty() && !coding.eq_ignore_ascii_case("identity") {
            // RFC 9110 §15.5.16 and §12.5.3: a 415 for a content coding
            // ought to say which codings are accepted, so a client can tell
            // it from a 415 for the media type.
            return Some(ApiError {
                accept_encoding: Some(ACCEPTED_CODINGS),
                ..ApiError::new(
                    Status::UnsupportedMediaType,
                    format!(
                        "content coding {} is not supported: send the body unencoded",
                        echo(coding)
                    ),
                )
            });
        }
    }
    let length = headers
        .content_length
        .and_then(|length| length.trim().parse::<u64>().ok());
    if length.is_some_and(|length| length > BODY_LIMIT_BYTES) {
        return Some(too_large());
    }
    None
}

/// The 415 refusal of a body that is not of the type `expected` describes,
/// naming the Content-Type the request has, as sent, and saying when it is
/// no media type at all (RFC 9110 §8.3.1), as a value that is not UTF-8 is
/// not.
fn unsupported(content_type: Option<&str>, expected: &str) -> ApiError {
    let error = match content_type {
        None => format!("expected {expected}, got none"),
        Some(sent) if media_type(sent).is_none() => format!(
            "the Content-Type is not a valid media type (RFC 9110 §8.3.1): expected {expected}, got {}",
            echo(sent)
        ),
        Some(sent) => format!("expected {expected}, got {}", echo(sent)),
    };
    ApiError::new(Status::UnsupportedMediaType, error)
}

/// A JSON object read into `T`; any other JSON value is refused with the
/// parser's own message and position. serde's derived `Deserialize` also
/// fills a struct from an array, by position (`["ann", "hi"]` as a post),
/// which the contract does not allow.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OnlyMap<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for OnlyMap<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(OnlyMap(PhantomData))
            .map(Object)
    }
}

/// A JSON body, which must be an object. The Content-Type must say JSON:
/// anything else, or none, gets 415 (a form cannot post JSON across sites
/// that way either); a body longer than the cap gets 413
/// ([`head_refusal`]).
pub async fn json<T: serde::de::DeserializeOwned>(
    req: &Request<'_>,
    data: Data<'_>,
) -> Result<T, ApiError> {
    if let Some(refusal) = head_refusal(BodyKind::Json, BodyHeaders::of(req)) {
        return Err(refusal);
    }
    parse_json(&read_capped(data).await?)
}

/// A JSON object read from `bytes` into `T`, after a UTF-8 byte order
/// mark if it has one. Errors: 400 with the parser's message and position
/// (in the text after such a mark), for malformed JSON or any value but an
/// object; for a lone surrogate escape, in words of its own naming the
/// field ([`LoneSurrogate`]); for bytes that are not UTF-8, naming the
/// first.
///
/// The whole body is held to these, fields `T` has no use for too: serde
/// skips such a field's value without decoding it, and would let through
/// what no JSON text may hold (a lone surrogate, bytes that are not UTF-8:
/// RFC 8259 §8.1, §8.2; I-JSON, RFC 7493 §2.1, says such strings MUST NOT
/// appear).
///
/// The mark: RFC 8259 §8.1 says senders must not add one and lets a parser
/// ignore it "in the interests of interoperability"; Windows tools and
/// editors write UTF-8 with one, and serde_json refuses it as "expected
/// value at line 1 column 1". Its three bytes fit in the body limit's room
/// for whitespace ([`FRAMING_BYTES`]).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let Object(value) = serde_json::from_slice(bytes).map_err(|e| malformed(bytes, &e))?;
    match not_unicode(bytes).or_else(|| key_given_twice(bytes)) {
        Some(refusal) => Err(refusal),
        None => Ok(value),
    }
}

/// The 400 for `bytes`, a JSON object serde_json read whole, when an object
/// in it (the body, or one in a value) has a key twice: I-JSON, RFC 7493
/// §2.3, says objects "MUST NOT have members with duplicate names", and
/// which of the two a reader takes is its own choice. serde_json refuses a
/// message field given twice itself ("duplicate field"); another key, and
/// any key in a value it skips, it lets through.
fn key_given_twice(bytes: &[u8]) -> Option<ApiError> {
    // The keys of each object open around the byte read; `None` for an
    // array. serde_json read the body whole, so it nests at most 128 deep.
    let mut open: Vec<Option<Vec<Cow<'_, str>>>> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                open.push(Some(Vec::new()));
                expect_key = true;
            }
            b'[' => {
                open.push(None);
                expect_key = false;
            }
            b'}' | b']' => {
                open.pop();
                expect_key = false;
            }
            b',' => expect_key = matches!(open.last(), Some(Some(_))),
            b'"' => {
                let end = i + 1 + string_length(&bytes[i + 1..])?;
                if let (true, Some(Some(keys))) = (expect_key, open.last_mut()) {
                    // Decoded only when it holds an escape: most keys are
                    // as written.
                    let raw = &bytes[i + 1..end];
                    let key: Cow<'_, str> = if raw.contains(&b'\\') {
                        Cow::Owned(serde_json::from_slice(&bytes[i..=end]).ok()?)
                    } else {
                        Cow::Borrowed(std::str::from_utf8(raw).ok()?)
                    };
                    if keys.contains(&key) {
                        return Some(ApiError::new(
                            Status::BadRequest,
                            format!(
                                "malformed JSON body: key \"{}\" is given twice in one object \
                                 (I-JSON, RFC 7493 §2.3){}",
                                echo(&key),
                                position(bytes, end + 1)
                            ),
                        ));
                    }
                    keys.push(key);
                    expect_key = false;
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The 400 for `bytes`, JSON that serde_json read whole, when a string in
/// it is not Unicode: bytes that are not UTF-8, or a lone surrogate escape.
/// serde_json checks both in what it decodes, so only a value it skipped
/// (a field no message has) can hold either.
fn not_unicode(bytes: &[u8]) -> Option<ApiError> {
    if let Err(e) = std::str::from_utf8(bytes) {
        let at = e.valid_up_to();
        // Bytes serde_json skipped are in a string: outside one it reads
        // every byte.
        let place = string_literals(bytes, at + 1, |literal| {
            (at < literal.end).then_some(literal.place)
        })
        .unwrap_or(Place::Unknown);
        return Some(ApiError {
            field: place.field(),
            ..ApiError::new(
                Status::BadRequest,
                format!(
                    "malformed JSON body: {} is not valid UTF-8: byte 0x{:02X} is no part of a \
                     UTF-8 character (JSON text is UTF-8, RFC 8259 §8.1){}",
                    place.whose(),
                    bytes[at],
                    position(bytes, at + 1)
                ),
            )
        });
    }
    // Most bodies have no escape of a character: no walk through them.
    if !bytes.windows(2).any(|pair| pair == br"\u") {
        return None;
    }
    let (lone, at) = LoneSurrogate::first(bytes)?;
    Some(lone.refusal(&position(bytes, at)))
}

/// ` at line L column C` for byte `end` of `bytes`, as serde_json says a
/// position: `end` bytes read, lines counted from 1, a column the bytes
/// read on its line.
fn position(bytes: &[u8], end: usize) -> String {
    let before = &bytes[..end.min(bytes.len())];
    let line = 1 + before.iter().filter(|b| **b == b'\n').count();
    let start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1);
    format!(" at line {line} column {}", before.len() - start)
}

/// U+FEFF, the byte order mark, in UTF-8.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The 400 for `bytes`, a body serde_json could not read with `e`.
fn malformed(bytes: &[u8], e: &serde_json::Error) -> ApiError {
    let position = format!(" at line {} column {}", e.line(), e.column());
    let at = byte_offset(bytes, e.line(), e.column());
    if let Some(lone) = LoneSurrogate::at(bytes, at) {
        return lone.refusal(&position);
    }
    // Stopped at bytes that are not UTF-8 (in a field it decodes, serde
    // says "invalid unicode code point"): said as for a field it skips,
    // naming the field.
    if std::str::from_utf8(bytes).is_err_and(|bad| bad.valid_up_to() < at) {
        if let Some(refusal) = not_unicode(bytes) {
            return refusal;
        }
    }
    // A raw control character stops the parser inside the string that
    // holds it: said, in words of ours (serde_json's, echoed as input,
    // would read with doubled backslashes), with where that string is.
    if e.to_string().starts_with("control character") {
        let place = string_literals(bytes, at, |literal| {
            (at <= literal.end + 1).then_some(literal.place)
        })
        .unwrap_or(Place::Unknown);
        return ApiError {
            field: place.field(),
            ..ApiError::new(
                Status::BadRequest,
                format!(
                    "malformed JSON body: a control character (U+0000 to U+001F) in {}, which \
                     JSON writes escaped (\\n, \\t, \\u0000){position}",
                    place.whose()
                ),
            )
        };
    }
    ApiError {
        field: field_of(bytes, at, e),
        ..ApiError::new(Status::BadRequest, malformed_json(e, &position))
    }
}

/// The message field a body's data error is about, as every other refusal
/// of a field names it: the one serde_json names (`duplicate field
/// `name``, `missing field `text``), else the field whose value stopped it
/// at byte `at` (`invalid type: integer `5`, expected a string`), the last
/// key of the object before `at`. `None` for a syntax error, and for a key
/// that is no message field.
fn field_of(bytes: &[u8], at: usize, e: &serde_json::Error) -> Option<&'static str> {
    if e.classify() != serde_json::error::Category::Data {
        return None;
    }
    let message = e.to_string();
    for named in ["duplicate field `", "missing field `"] {
        if let Some((_, rest)) = message.split_once(named) {
            return rest.split_once('`').and_then(|(name, _)| known_field(name));
        }
    }
    let mut last_key = None;
    string_literals(bytes, at, |literal| {
        if literal.place == Place::Key {
            last_key = serde_json::from_slice::<String>(&bytes[literal.start..=literal.end]).ok();
        }
        None::<()>
    });
    last_key.as_deref().and_then(known_field)
}

/// The 400's error for a body serde_json could not read: its message may
/// quote the body (a key, a value), so it is echoed ([`echo`]); the
/// position stays whole.
fn malformed_json(e: &serde_json::Error, position: &str) -> String {
    let message = e.to_string();
    match message.strip_suffix(position) {
        Some(what) => format!("malformed JSON body: {}{position}", echo(what)),
        None => format!("malformed JSON body: {}", echo(&message)),
    }
}

/// The index in `bytes` of serde_json's error position: `line` counts
/// from 1, `column` the bytes read on that line (0 before its first).
fn byte_offset(bytes: &[u8], line: usize, column: usize) -> usize {
    let start = match line {
        0 | 1 => 0,
        _ => bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
            .map_or(bytes.len(), |(at, _)| at + 1),
    };
    (start + column).min(bytes.len())
}

/// A `\u` escape of a UTF-16 surrogate (U+D800 to U+DFFF) without its pair,
/// in a body. JSON text is Unicode (RFC 8259 §8.2): a surrogate is half
/// of a pair of escapes that encodes one character beyond U+FFFF, and no
/// character alone. serde_json refuses one it decodes as "lone leading
/// surrogate in hex escape" (a trailing one too) or "unexpected end of hex
/// escape", and lets one through in a value it skips; the refusal here
/// says what is wrong in the words of the other body errors, and names
/// the field.
#[derive(Debug, PartialEq, Eq)]
struct LoneSurrogate<'a> {
    /// The escape, as sent (`\ud800`, `\uDC00`).
    escape: &'a str,
    /// Where it is.
    place: Place,
}

/// Where in a body's object a string is.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// A key of the object.
    Key,
    /// The value of a message field.
    Field(&'static str),
    /// Within the value of another key of the object (as sent, decoded):
    /// that value itself when `whole`, else a string inside it.
    Other { key: String, whole: bool },
    /// Anywhere else (a key that could not be decoded).
    Unknown,
}

impl Place {
    /// The message field this place is, which the 400 names.
    fn field(&self) -> Option<&'static str> {
        match self {
            Place::Field(field) => Some(field),
            _ => None,
        }
    }

    /// The string this place holds, in the API's words: the field, or the
    /// key as errors echo client input ([`echo`]).
    fn whose(&self) -> String {
        match self {
            Place::Key => "a key of the object".to_owned(),
            Place::Field(field) => (*field).to_owned(),
            Place::Other { key, whole: true } => format!("the value of {}", echo(key)),
            Place::Other { key, whole: false } => format!("a string in {}", echo(key)),
            Place::Unknown => "a string".to_owned(),
        }
    }
}

/// A string literal of a body, as [`string_literals`] finds it.
struct Literal {
    /// The index of its opening quote.
    start: usize,
    /// The index of its closing quote.
    end: usize,
    /// Where it is in the object.
    place: Place,
}

/// Calls `visit` with each string literal of `bytes` (a JSON text well
/// formed up to where the walk stops) that starts before `until`, in
/// order, until `visit` returns `Some`, and returns that.
fn string_literals<R>(
    bytes: &[u8],
    until: usize,
    mut visit: impl FnMut(Literal) -> Option<R>,
) -> Option<R> {
    let mut depth = 0usize;
    // At depth 1, whether the next string is a key, and the last key.
    let mut expect_key = false;
    let mut key: Option<String> = None;
    let mut i = 0;
    while i < until.min(bytes.len()) {
        match bytes[i] {
            b'{' => {
                depth += 1;
                expect_key = depth == 1;
            }
            b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect_key = true,
            b'"' => {
                // An unterminated string is an error of its own.
                let end = i + 1 + string_length(&bytes[i + 1..])?;
                let in_key = depth == 1 && expect_key;
                let place = match (in_key, depth, key.as_deref()) {
                    (true, _, _) => Place::Key,
                    (false, 1, Some(key)) => match known_field(key) {
                        Some(field) => Place::Field(field),
                        None => Place::Other {
                            key: key.to_owned(),
                            whole: true,
                        },
                    },
                    (false, _, Some(key)) => Place::Other {
                        key: key.to_owned(),
                        whole: false,
                    },
                    (false, _, None) => Place::Unknown,
                };
                if let Some(found) = visit(Literal {
                    start: i,
                    end,
                    place,
                }) {
                    return Some(found);
                }
                if in_key {
                    key = serde_json::from_slice(&bytes[i..=end]).ok();
                    expect_key = false;
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

impl<'a> LoneSurrogate<'a> {
    /// The lone surrogate that stopped the parser at byte `at` of `bytes`:
    /// the first in the string literal that `at` is in (or just past), and
    /// before `at`, so an error of another kind is not taken for one. The
    /// JSON before `at` is well formed, as the parser read it so far.
    fn at(bytes: &'a [u8], at: usize) -> Option<Self> {
        let found = string_literals(bytes, at, |literal| {
            (at <= literal.end + 1).then(|| {
                let (start, escape) = first_lone_surrogate(&bytes[literal.start + 1..literal.end])?;
                (literal.start + 1 + start < at).then_some(LoneSurrogate {
                    escape,
                    place: literal.place,
                })
            })
        });
        found.flatten()
    }

    /// The first lone surrogate in `bytes`, a JSON text serde_json read
    /// whole, and the index of the byte just past its escape.
    fn first(bytes: &'a [u8]) -> Option<(Self, usize)> {
        string_literals(bytes, bytes.len(), |literal| {
            let (start, escape) = first_lone_surrogate(&bytes[literal.start + 1..literal.end])?;
            Some((
                LoneSurrogate {
                    escape,
                    place: literal.place,
                },
                literal.start + 1 + start + escape.len(),
            ))
        })
    }

    /// The 400 refusing it, with ` at line L column C`, and the message
    /// field it is in, if it is in one.
    fn refusal(&self, position: &str) -> ApiError {
        ApiError {
            field: self.place.field(),
            ..ApiError::new(
                Status::BadRequest,
                format!("malformed JSON body: {}{position}", self.what()),
            )
        }
    }

    /// What is wrong, in the API's words.
    fn what(&self) -> String {
        format!(
            "{} is not valid Unicode: {} is a lone surrogate, which is not a character \
             (a surrogate escape is half of a pair that encodes one character, as \
             \\ud83d\\ude00 does)",
            self.place.whose(),
            // Six bytes of ASCII, `\u` and four hex digits: nothing to echo.
            self.escape
        )
    }
}

/// The length of the string literal whose opening quote is just before
/// `rest`, up to its closing quote; `None` when it has none.
fn string_length(rest: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'"' => return Some(i),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// The first `\u` escape of a surrogate without its pair in the inside of
/// a string literal, with its index there.
fn first_lone_surrogate(literal: &[u8]) -> Option<(usize, &str)> {
    let unit = |at: usize| -> Option<u16> {
        let hex = literal.get(at..at + 6)?.strip_prefix(b"\\u")?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let mut i = 0;
    while i < literal.len() {
        if literal[i] != b'\\' {
            i += 1;
            continue;
        }
        match unit(i) {
            Some(0xD800..=0xDBFF) if matches!(unit(i + 6), Some(0xDC00..=0xDFFF)) => i += 12,
            Some(0xD800..=0xDFFF) => {
                return Some((i, std::str::from_utf8(&literal[i..i + 6]).ok()?));
            }
            Some(_) => i += 6,
            None => i += 2,
        }
    }
    None
}

/// A JSON object request body as a data guard; take it as
/// `Result<JsonBody<T>, ApiError>` so the handler answers refusals in the
/// API's error shape. Not Rocket's `Json`: its refusals carry no `field` or
/// JSON body.
pub struct JsonBody<T>(pub T);

#[rocket::async_trait]
impl<'r, T: serde::de::DeserializeOwned> rocket::data::FromData<'r> for JsonBody<T> {
    type Error = ApiError;

    async fn from_data(req: &'r Request<'_>, data: Data<'r>) -> rocket::data::Outcome<'r, Self> {
        match json(req, data).await {
            Ok(value) => rocket::data::Outcome::Success(JsonBody(value)),
            Err(e) => rocket::data::Outcome::Error((e.status, e)),
        }
    }
}

/// Decodes an `application/x-www-form-urlencoded` body as strictly as a
/// JSON body is read: a value or name that is not UTF-8 once decoded is a
/// 400 (not U+FFFD), and so is a field given twice (by one name, or two
/// that set one field: [`field_key`]), naming it.
pub fn decode_form(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::new(Status::BadRequest, "form body is not UTF-8"))?;
    let mut seen = HashSet::new();
    let mut fields = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = RawStr::new(name).url_decode().map_err(|_| {
            ApiError::new(
                Status::BadRequest,
                "a form field name is not UTF-8 once decoded",
            )
        })?;
        let field = known_field(field_key(&name));
        let value = RawStr::new(value).url_decode().map_err(|_| ApiError {
            field,
            ..ApiError::new(
                Status::BadRequest,
                format!("form field {} is not UTF-8 once decoded", echo(&name)),
            )
        })?;
        if !seen.insert(field_key(&name).to_owned()) {
            return Err(ApiError {
                field,
                ..ApiError::new(
                    Status::BadRequest,
                    format!(
                        "form field {} is given more than once",
                        echo(field_key(&name))
                    ),
                )
            });
        }
        fields.push((name.into_owned(), value.into_owned()));
    }
    Ok(fields)
}

/// The field a form or query name sets, as Rocket reads names: its first
/// key, the first run between `.`, `[` and `]` that is not empty
/// (`text[]`, `text.x`, `.text` and `[text]` all set `text`; Rocket's form
/// guide, "Field names"). Two names with one key are one field given
/// twice.
pub fn field_key(name: &str) -> &str {
    name.split(['.', '[', ']'])
        .find(|key| !key.is_empty())
        .unwrap_or_default()
}

/// The `field` an error names: a field of a message, or none for others.
pub fn known_field(name: &str) -> Option<&'static str> {
    ["name", "text", "id", "limit", "before", "after"]
        .into_iter()
        .find(|known| *known == name)
}

/// An `application/x-www-form-urlencoded` body, decoded by [`decode_form`]
/// (a value that is not UTF-8, or a field given twice, is a 400) and parsed
/// leniently (unknown fields ignored) into `T`. Not Rocket's `Form`, whose
/// refusals would not re-render the page with the error.
pub struct FormBody<T>(pub T);

#[rocket::async_trait]
impl<'r, T: for<'a> rocket::form::FromForm<'a> + Send + 'static> rocket::data::FromData<'r>
    for FormBody<T>
{
    type Error = ApiError;

    async fn from_data(req: &'r Request<'_>, data: Data<'r>) -> rocket::data::Outcome<'r, Self> {
        let parsed = async {
            if let Some(refusal) = head_refusal(BodyKind::Form, BodyHeaders::of(req)) {
                return Err(refusal);
            }
            let bytes = read_capped(data).await?;
            let fields = decode_form(&bytes)?;
            let values = fields
                .iter()
                .map(|(name, value)| ValueField::from((name.as_str(), value.as_str())));
            rocket::form::Form::<T>::parse_iter(values).map_err(|e| {
                ApiError::new(
                    Status::BadRequest,
                    format!("malformed form: {}", echo(&e.to_string())),
                )
            })
        }
        .await;
        match parsed {
            Ok(value) => rocket::data::Outcome::Success(FormBody(value)),
            Err(e) => rocket::data::Outcome::Error((e.status, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_longest_values_in_the_worst_encoding() {
        // 4-byte characters, every byte percent-encoded, in a form.
        let emoji = "\u{1F600}";
        let pct = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
        let form = format!(
            "{}={}&{}={}&{}={}",
            pct("name"),
            pct(&emoji.repeat(NAME_MAX_CHARS)),
            pct("text"),
            pct(&emoji.repeat(TEXT_MAX_CHARS)),
            pct("id"),
            pct(&"a".repeat(ID_MAX_CHARS)),
        );
        assert!(form.len() as u64 <= BODY_LIMIT_BYTES, "{}", form.len());
        // The same as JSON with every character a \u escape.
        let esc = |s: &str| {
            s.encode_utf16()
                .map(|u| format!("\\u{u:04x}"))
                .collect::<String>()
        };
        let json = format!(
            "{{\"{}\":\"{}\",\"{}\":\"{}\",\"{}\":\"{}\"}}",
            esc("name"),
            esc(&emoji.repeat(NAME_MAX_CHARS)),
            esc("text"),
            esc(&"\r\n".repeat(TEXT_MAX_CHARS)),
            esc("id"),
            esc(&"a".repeat(ID_MAX_CHARS)),
        );
        assert!(json.len() as u64 <= BODY_LIMIT_BYTES, "{}", json.len());
        assert_eq!(BODY_LIMIT_BYTES, 28_169);
    }

    #[derive(Debug, serde::Deserialize)]
    struct Post {
        #[serde(default)]
        name: String,
        #[allow(dead_code)]
        #[serde(default)]
        text: String,
    }

    #[test]
    fn json_bodies_must_be_objects_and_other_errors_read_as_before() {
        let object = |body: &str| serde_json::from_str::<Object<Post>>(body).map(|o| o.0);
        assert_eq!(object(r#" {"name": "ann"}"#).unwrap().name, "ann");
        for array in [r#"["ann", "hi"]"#, r#"[{"name": "ann"}]"#] {
            let e = object(array).unwrap_err().to_string();
            assert!(e.contains("expected a JSON object"), "{e}");
        }
        for malformed in [
            r#"{"name": 5}"#,
            r#"{"name": "a", "#,
            r#"{"name": "a", "name": "b"}"#,
            r#"{"name": "a"} x"#,
        ] {
            assert_eq!(
                object(malformed).unwrap_err().to_string(),
                serde_json::from_str::<Post>(malformed)
                    .unwrap_err()
                    .to_string(),
                "{malformed}"
            );
        }
    }

    /// A key given twice is refused, whichever key: which of the two a
    /// reader takes is its own choice (I-JSON, RFC 7493 §2.3).
    #[test]
    fn a_key_given_twice_is_refused() {
        let e = parse_json::<Post>(br#"{"name": "a", "z": 1, "\u007a": [2]}"#).unwrap_err();
        assert_eq!(
            e.error,
            "malformed JSON body: key \"z\" is given twice in one object (I-JSON, RFC 7493 \
             §2.3) at line 1 column 30"
        );
        assert!(
            parse_json::<Post>(br#"{"name": "a", "z": {"z": 1}, "y": [{"y": 1}, {"y": 2}]}"#)
                .is_ok()
        );
        // In a value the message has no use for too: every object.
        for body in [
            &br#"{"name": "a", "x": {"z": 1, "z": 2}}"#[..],
            br#"{"name": "a", "x": [1, {"z": ",", "\u007a": 2}]}"#,
            br#"{"x": {"y": {"name": 1, "name": 2}}, "name": "a"}"#,
        ] {
            let e = parse_json::<Post>(body).unwrap_err();
            assert!(
                e.error.contains("is given twice in one object"),
                "{}",
                e.error
            );
        }
    }

    /// A raw control character in a string is said in words whose
    /// backslashes read as written, not doubled as an echo of input.
    #[test]
    fn a_raw_control_character_is_said_with_single_backslashes() {
        let e = parse_json::<Post>(b"{\"name\":\"a\",\"text\":\"x\x00y\"}").unwrap_err();
        assert_eq!(e.field, Some("text"));
        assert_eq!(
            e.error,
            "malformed JSON body: a control character (U+0000 to U+001F) in text, which JSON \
             writes escaped (\\n, \\t, \\u0000) at line 1 column 22"
        );
        let e = parse_json::<Post>(b"{\"name\":\"a\",\"zz\":\"\x01\"}").unwrap_err();
        assert_eq!(e.field, None);
        assert!(e.error.contains("in the value of zz,"), "{}", e.error);
    }

    /// A value of the wrong type, or a field given twice, is refused naming
    /// the field, as every other refusal of one; a syntax error or another
    /// key names none.
    #[test]
    fn a_wrongly_typed_or_repeated_field_is_named() {
        let field = |body: &str| parse_json::<Post>(body.as_bytes()).unwrap_err().field;
        for (body, named) in [
            (r#"{"name": 5, "text": "x"}"#, Some("name")),
            (r#"{"name": "a", "text": 5}"#, Some("text")),
            (r#"{"name": null}"#, Some("name")),
            (r#"{"x": {"name": 1}, "text": [1]}"#, Some("text")),
            ("{\"na\\u006de\": true}", Some("name")),
            (r#"{"name": "a", "name": "b"}"#, Some("name")),
            (r#"{"name": "a", "text": "b", "text": "c"}"#, Some("text")),
            (r#"{"name": "a", "z": 1, "z": [2]}"#, None),
            (r#"{"name": "a", "#, None),
            (r#"{"name": "a"} x"#, None),
        ] {
            assert_eq!(field(body), named, "{body}");
        }
    }

    /// A lone surrogate escape is told in the API's words, naming the
    /// field; any other error, even in the same string, keeps the parser's.
    #[test]
    fn a_lone_surrogate_is_named_with_its_field() {
        let refusal = |body: &str| parse_json::<Post>(body.as_bytes()).unwrap_err();
        let e = refusal(r#"{"name":"a","text":"\ud800"}"#);
        assert_eq!(e.field, Some("text"));
        assert_eq!(
            e.error,
            "malformed JSON body: text is not valid Unicode: \\ud800 is a lone surrogate, \
             which is not a character (a surrogate escape is half of a pair that encodes one \
             character, as \\ud83d\\ude00 does) at line 1 column 27"
        );
        assert!(refusal(r#"{"\ud800":1}"#)
            .error
            .contains("a key of the object"));
        // Each of these fails for another reason than the surrogate, and
        // names the field that reason is about, if any.
        for (body, why, field) in [
            (r#"{"name":"a\x \ud800"}"#, "invalid escape", None),
            (r#"{"name":"\ud800"#, "EOF while parsing a string", None),
            (r#"{"x":"\ud800","name":5}"#, "invalid type", Some("name")),
            (
                r#"{"name":"\ud83d\ude00","text":7}"#,
                "invalid type",
                Some("text"),
            ),
        ] {
            let e = refusal(body);
            assert!(
                e.error.contains(why) && !e.error.contains("surrogate") && e.field == field,
                "{body}: {e:?}"
            );
        }
        // A pair is a character: parsed.
        let post = parse_json::<Post>(r#"{"name":"\ud83d\ude00"}"#.as_bytes()).unwrap();
        assert_eq!(post.name, "\u{1F600}");
    }

    /// serde skips a field the message has no use for without decoding
    /// it; a lone surrogate there is refused all the same, saying where.
    #[test]
    fn a_lone_surrogate_is_refused_in_a_field_serde_skips() {
        let refusal = |body: &str| parse_json::<Post>(body.as_bytes()).unwrap_err();
        for (body, whose, position) in [
            (
                r#"{"name":"a","x":"\ud800"}"#,
                "the value of x",
                "at line 1 column 23",
            ),
            (
                "{\"name\":\"a\",\n\"x\":[1,{\"y\":\"ok \\udfff\"}]}",
                "a string in x",
                "at line 2 column 22",
            ),
            (
                r#"{"name":"a","x":{"\uDBFF":1}}"#,
                "a string in x",
                "at line 1 column 24",
            ),
        ] {
            let e = refusal(body);
            assert_eq!(e.field, None, "{body}");
            assert!(
                e.error.starts_with(&format!(
                    "malformed JSON body: {whose} is not valid Unicode: \\u"
                )) && e.error.ends_with(position),
                "{body}: {}",
                e.error
            );
        }
        let e = refusal(r#"{"name":"a","limit":"\ud800"}"#);
        assert_eq!(e.field, Some("limit"));
        // Pairs and other escapes are characters: parsed.
        let post = parse_json::<Post>(r#"{"name":"a","x":"\ud83d\ude00\u0041\\u"}"#.as_bytes());
        assert_eq!(post.unwrap().name, "a");
    }

    /// serde reads a skipped value's bytes without decoding them as UTF-8.
    #[test]
    fn bytes_that_are_not_utf8_are_refused_in_a_field_serde_skips() {
        let e = parse_json::<Post>(b"{\"name\":\"a\",\"x\":\"b\xffc\"}").unwrap_err();
        assert_eq!(e.field, None);
        assert_eq!(
            e.error,
            "malformed JSON body: the value of x is not valid UTF-8: byte 0xFF is no part of a \
             UTF-8 character (JSON text is UTF-8, RFC 8259 §8.1) at line 1 column 19"
        );
        // In a field the message has, the same words, naming it (before:
        // serde's "invalid unicode code point", no field).
        let e = parse_json::<Post>(b"{\"name\":\"a\xff\",\"text\":\"x\"}").unwrap_err();
        assert_eq!(e.field, Some("name"));
        assert_eq!(
            e.error,
            "malformed JSON body: name is not valid UTF-8: byte 0xFF is no part of a \
             UTF-8 character (JSON text is UTF-8, RFC 8259 §8.1) at line 1 column 11"
        );
        let e = parse_json::<Post>(b"{\"name\":\"a\",\"text\":\"a\xed\xa0\x80\"}").unwrap_err();
        assert_eq!(e.field, Some("text"));
        assert!(
            e.error
                .starts_with("malformed JSON body: text is not valid UTF-8"),
            "{}",
            e.error
        );
        // A syntax error before such bytes is told first, as serde finds it.
        let e = parse_json::<Post>(b"{\"name\" 1, \"text\":\"\xff\"}").unwrap_err();
        assert!(e.error.contains("expected `:`"), "{}", e.error);
    }

    #[test]
    fn serde_positions_are_byte_offsets() {
        let body = b"{\n  \"a\": 1,\n  \"b\"";
        assert_eq!(byte_offset(body, 1, 0), 0);
        assert_eq!(byte_offset(body, 2, 3), 5);
        assert_eq!(byte_offset(body, 3, 2), 14);
        assert_eq!(byte_offset(body, 9, 9), body.len());
    }

    #[test]
    fn json_types_are_json_and_json_based_types_only() {
        for (kind, subtype) in [
            ("application", "json"),
            ("APPLICATION", "JSON"),
            ("application", "problem+json"),
            ("text", "x-custom+JSON"),
        ] {
            assert!(is_json_type(kind, subtype), "{kind}/{subtype}");
        }
        for (kind, subtype) in [
            ("text", "json"),
            ("text", "+json"),
            ("application", "+json"),
            ("*", "*+json"),
            ("application", "*+json"),
            ("application", "json5"),
            ("application", "jsonx+xml"),
        ] {
            assert!(!is_json_type(kind, subtype), "{kind}/{subtype}");
        }
    }

    #[test]
    fn media_types_allow_whitespace_around_parameters() {
        for (value, expected) in [
            ("application/json", Some(("application", "json"))),
            (
                "application/json ; charset=utf-8",
                Some(("application", "json")),
            ),
            ("text/plain\t;\tcharset=utf-8;", Some(("text", "plain"))),
            ("a/b;;x=\"q;\\\"\";y=z ;", Some(("a", "b"))),
            ("json", None),
            ("application/", None),
            ("application /json", None),
            ("application/json charset=utf-8", None),
            ("application/json; charset", None),
            ("application/json; charset=", None),
            ("application/json; charset = utf-8", None),
            ("application/json; x=\"unterminated", None),
            ("", None),
        ] {
            assert_eq!(media_type(value), expected, "{value:?}");
        }
    }

    #[test]
    fn forms_refuse_invalid_utf8_and_repeated_fields() {
        assert_eq!(
            decode_form(b"name=a&text=%FF").unwrap_err().field,
            Some("text")
        );
        assert_eq!(
            decode_form(b"name=a&name=b").unwrap_err().field,
            Some("name")
        );
        assert_eq!(
            decode_form(b"name=a+b&text=%E5%AD%97").unwrap(),
            vec![("name".into(), "a b".into()), ("text".into(), "字".into())]
        );
    }
}
