//! How a message is stored in MongoDB, how documents written by others (the
//! lab's app) are read, a document's position in the store order, and the
//! filters and sorts that walk that order.
//!
//! The store order is `(position, datetime, _id)`:
//! - `position` is a BSON Timestamp the primary assigns at insert: the
//!   document is inserted with an empty timestamp in that top-level field,
//!   and mongod replaces it with its cluster time, a value unique within the
//!   mongod (<https://www.mongodb.com/docs/manual/reference/bson-types/#timestamps>).
//!   So the order does not depend on any app instance's clock.
//! - Documents without `position` (the lab's history) sort first, as BSON
//!   sorts a missing field like `null` before any timestamp
//!   (<https://www.mongodb.com/docs/manual/reference/bson-type-comparison-order/>),
//!   and among themselves by `datetime`, then `_id`.
//! - `_id` is a string (simplechat's ids) or an ObjectId (the lab's, and
//!   any id of 24 lower-case hex digits); strings sort before ObjectIds.

use std::borrow::Cow;
use std::cmp::Ordering;

use icu_properties::props::BidiControl;
use icu_properties::CodePointSetData;
use mongodb::bson::serde_helpers::Utf8LossyDeserialization;
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document, RawDocument, Timestamp};
use time::OffsetDateTime;
use unicode_normalization::{is_nfc, UnicodeNormalization};

use crate::message::{is_visible, trim_invisible_ends, Message, NAME_MAX_CHARS, TEXT_MAX_CHARS};

/// The collection, as the lab's app named it.
pub const COLLECTION: &str = "messages";
/// The field that holds the primary-assigned position.
pub const POSITION: &str = "position";

/// The empty timestamp a message is inserted with in `position`: mongod
/// replaces one in a top-level field with the cluster time at the insert
/// (<https://www.mongodb.com/docs/manual/reference/bson-types/#timestamps>),
/// so it is never a position of its own.
pub(super) const EMPTY_POSITION: Timestamp = Timestamp {
    time: 0,
    increment: 0,
};
/// The index that serves the store order in both directions.
pub const ORDER_INDEX: &str = "position_1_datetime_1__id_1";

/// A document's `_id` as simplechat reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocId {
    /// simplechat's own ids, and any other string a user chose.
    Text(String),
    /// The lab's ids (pymongo generates them).
    ObjectId(ObjectId),
}

impl DocId {
    /// The `_id` for a public id: 24 lower-case hex digits are an ObjectId
    /// (so the lab's messages keep their ids and a post that reuses one is
    /// a retry of that message), anything else a string.
    pub fn from_public(id: &str) -> DocId {
        let is_oid_hex = id.len() == 24
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        match ObjectId::parse_str(id) {
            Ok(oid) if is_oid_hex => DocId::ObjectId(oid),
            _ => DocId::Text(id.to_owned()),
        }
    }

    /// The id the API shows: the string itself, or the ObjectId's hex.
    pub fn public(&self) -> String {
        match self {
            DocId::Text(s) => s.clone(),
            DocId::ObjectId(oid) => oid.to_hex(),
        }
    }

    /// The `_id` a document holds, if it is of a type messages have (a
    /// string or an ObjectId).
    pub fn from_bson(id: &Bson) -> Option<DocId> {
        match id {
            Bson::String(s) => Some(DocId::Text(s.clone())),
            Bson::ObjectId(oid) => Some(DocId::ObjectId(*oid)),
            _ => None,
        }
    }

    /// The value stored in `_id`.
    pub fn bson(&self) -> Bson {
        match self {
            DocId::Text(s) => Bson::String(s.clone()),
            DocId::ObjectId(oid) => Bson::ObjectId(*oid),
        }
    }
}

impl Ord for DocId {
    fn cmp(&self, other: &Self) -> Ordering {
        // BSON order: strings before ObjectIds; strings by bytes (no
        // collation is set), ObjectIds by their 12 bytes.
        match (self, other) {
            (DocId::Text(a), DocId::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (DocId::ObjectId(a), DocId::ObjectId(b)) => a.bytes().cmp(&b.bytes()),
            (DocId::Text(_), DocId::ObjectId(_)) => Ordering::Less,
            (DocId::ObjectId(_), DocId::Text(_)) => Ordering::Greater,
        }
    }
}

impl PartialOrd for DocId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Why a document in the collection is not a message simplechat can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Malformed {
    /// `_id` is neither a string nor an ObjectId.
    IdType,
    /// `_id` is a string no API id can be (see `message::validate_id`).
    IdText,
    /// `name` is missing or not a string.
    Name,
    /// `text` is missing or not a string.
    Text,
    /// `datetime` is missing or not a date.
    Datetime,
    /// `position` is there but not a timestamp.
    Position,
    /// `position` is further ahead of the clock than any cluster time can
    /// be ([`AHEAD_LIMIT_SECS`]).
    PositionAhead,
    /// `position` is before simplechat's first and more than
    /// [`WRITTEN_MARGIN_SECS`] before the time the document's own ObjectId
    /// or `datetime` says it was written ([`Position::impossible`]).
    PositionBeforeWritten,
    /// A field simplechat reads (`_id`, `name`, `text`, `datetime`,
    /// `position`) holds a string that is not UTF-8, or a field name before
    /// it is not UTF-8 ([`read_fields`]).
    Utf8,
}

impl Malformed {
    /// The key `/api/status` counts it under.
    pub fn kind(self) -> &'static str {
        match self {
            Malformed::IdType => "id_type",
            Malformed::IdText => "id_text",
            Malformed::Name => "name",
            Malformed::Text => "text",
            Malformed::Datetime => "datetime",
            Malformed::Position => "position",
            Malformed::PositionAhead => "position_ahead",
            Malformed::PositionBeforeWritten => "position_before_written",
            Malformed::Utf8 => "utf8",
        }
    }

    /// What the kind means, for the log.
    pub fn meaning(self) -> &'static str {
        match self {
            Malformed::IdType => "an _id that is neither a string nor an ObjectId",
            Malformed::IdText => "a string _id no message id can be",
            Malformed::Name => "a missing name, or one that is no string",
            Malformed::Text => "a missing text, or one that is no string",
            Malformed::Datetime => "a missing datetime, or one that is no date of the years 0000 to 9999",
            Malformed::Position => "a position that is neither null nor a timestamp",
            Malformed::PositionAhead => {
                "a position more than a year ahead of the clock, which no MongoDB cluster time can be"
            }
            Malformed::PositionBeforeWritten => {
                "a position before simplechat's first message and more than a day before the document's own ObjectId or datetime says it was written"
            }
            Malformed::Utf8 => {
                "a string _id, name or text that is not valid UTF-8 (another client wrote raw bytes)"
            }
        }
    }
}

/// How far ahead of this instance's clock, in seconds, a `position` can
/// be: mongod does not let its cluster time (which every position is)
/// advance more than `maxAcceptableLogicalClockDriftSecs` (default one
/// year) past its wall clock
/// (<https://www.mongodb.com/docs/manual/reference/parameters/#mongodb-parameter-param.maxAcceptableLogicalClockDriftSecs>),
/// plus a day for this instance's clock against the primary's. A position
/// further ahead was written by hand (or by another program), and has no
/// place the cache and MongoDB's sort could agree on: every later message
/// would sort before it.
pub const AHEAD_LIMIT_SECS: i64 = 366 * 86_400;

/// How much earlier, in seconds, than the time a document says it was
/// written (its ObjectId's second, or its `datetime`) its `position` may be.
/// A position is the primary's cluster time when the document was inserted
/// (or, for the lab's documents, positioned later), so it comes after
/// both, but on other clocks: the lab stored naive local times (up to 14
/// hours ahead of UTC), and machines' clocks differ.
pub const WRITTEN_MARGIN_SECS: i64 = 86_400;

/// The datetimes the API can show, in ms since the epoch: RFC 3339 writes
/// a year in four digits (`date-fullyear = 4DIGIT`,
/// <https://www.rfc-editor.org/rfc/rfc3339#section-5.6>), so from
/// 0000-01-01T00:00:00.000Z to 9999-12-31T23:59:59.999Z. A BSON date holds
/// far more (`new Date(8.64e15)` in the shell).
const SHOWN_MILLIS: std::ops::RangeInclusive<i64> = -62_167_219_200_000..=253_402_300_799_999;

/// A stored message: `{_id, name, text, datetime, position?}`. Other
/// fields are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageDoc {
    pub id: DocId,
    /// At most [`NAME_MAX_CHARS`] characters ([`shown_name`]).
    pub name: String,
    /// At most [`TEXT_MAX_CHARS`] characters ([`shown_text`]).
    pub text: String,
    pub datetime: DateTime,
    /// `None` for documents simplechat did not write.
    pub position: Option<Timestamp>,
    /// The stored name or text is shown other than stored: cut, as it was
    /// longer than a message's, or mended, as it broke another rule a post
    /// follows ([`mended_name`], [`mended_text`]). Only logged: whether a
    /// post is the stored one is decided on the stored name and text
    /// (`insert::resolve_duplicate`).
    pub altered: bool,
}

/// The text a message shows for a stored `text` (another app's, which set
/// no limit: a lab text may be megabytes): itself when it has at most
/// [`TEXT_MAX_CHARS`] characters; otherwise its beginning, whole graphemes
/// only, and a marker that says it was cut and how long it is, at most
/// [`TEXT_MAX_CHARS`] characters in all. So every message shown, cached,
/// listed or streamed is as bounded as the messages simplechat accepts.
/// `None` when it was not cut.
pub fn shown_text(text: &str) -> Option<String> {
    if text.len() <= TEXT_MAX_CHARS {
        return None;
    }
    let total = text.chars().count();
    if total <= TEXT_MAX_CHARS {
        return None;
    }
    let marker = format!("\u{2026}\n[cut: the message has {total} characters]");
    let keep = TEXT_MAX_CHARS - marker.chars().count();
    let mut shown = whole_graphemes(text, keep).to_owned();
    shown.push_str(&marker);
    Some(shown)
}

/// The name a message shows for a stored `name`: itself when it has at
/// most [`NAME_MAX_CHARS`] characters, otherwise its beginning, whole
/// graphemes only, and `…`, at most [`NAME_MAX_CHARS`] characters in all.
/// `None` when it was not cut.
pub fn shown_name(name: &str) -> Option<String> {
    // A character past the limit, or nothing to cut.
    name.chars().nth(NAME_MAX_CHARS)?;
    let mut shown = whole_graphemes(name, NAME_MAX_CHARS - 1).to_owned();
    shown.push('\u{2026}');
    Some(shown)
}

/// What a message shows for the name of a document another app wrote (the
/// lab's app had no rules), by the rules a posted name follows besides its
/// length: NFC, without what shows as nothing at either end (white space,
/// zero-width and format characters, Hangul fillers, the blank braille
/// cell: [`trim_invisible_ends`], as a post's), each control or
/// bidirectional control character as U+FFFD (one would break the line,
/// the other reorder what is shown beside the name), and [`NAMELESS`] when
/// no visible character is left. `None` when the name keeps those rules.
pub fn mended_name(name: &str) -> Option<String> {
    let bidi_control = CodePointSetData::new::<BidiControl>();
    let breaks_a_rule = |c: char| c.is_control() || bidi_control.contains(c);
    if is_nfc(name)
        && trim_invisible_ends(name).len() == name.len()
        && !name.chars().any(breaks_a_rule)
        && name.chars().any(is_visible)
    {
        return None;
    }
    let composed: String = name.nfc().collect();
    let mended: String = trim_invisible_ends(&composed)
        .chars()
        .map(|c| if breaks_a_rule(c) { '\u{FFFD}' } else { c })
        .collect();
    Some(if mended.chars().any(is_visible) {
        mended
    } else {
        NAMELESS.to_owned()
    })
}

/// What a message shows for the text of a document another app wrote, by
/// the rules a posted text follows besides its length: line breaks as LF,
/// trimmed, each control character but newline and tab as U+FFFD, and
/// [`EMPTY_TEXT`] when nothing is left. `None` when the text keeps those
/// rules.
pub fn mended_text(text: &str) -> Option<String> {
    let breaks_a_rule = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.is_empty() && text.trim().len() == text.len() && !text.chars().any(breaks_a_rule) {
        return None;
    }
    let lines = text.replace("\r\n", "\n").replace('\r', "\n");
    let trimmed = lines.trim();
    if trimmed.is_empty() {
        return Some(EMPTY_TEXT.to_owned());
    }
    Some(
        trimmed
            .chars()
            .map(|c| if breaks_a_rule(c) { '\u{FFFD}' } else { c })
            .collect(),
    )
}

/// `stored` as a message shows it, and whether it was cut: mended
/// (`mend`), then cut if still too long (`cut`). One longer than `small`
/// bytes cannot fit even mended, and may be megabytes: it is trimmed and
/// cut first, so only what is shown is copied and mended (and cut again,
/// should mending make it longer: U+0958 is two characters in NFC).
fn shown<'a>(
    stored: &'a str,
    small: usize,
    mend: fn(&str) -> Option<String>,
    cut: fn(&str) -> Option<String>,
) -> (Cow<'a, str>, bool) {
    let mut shown = Cow::Borrowed(stored.trim());
    let mut was_cut = false;
    if stored.len() > small {
        if let Some(c) = cut(&shown) {
            (shown, was_cut) = (Cow::Owned(c), true);
        }
    }
    if let Some(mended) = mend(&shown) {
        shown = Cow::Owned(mended);
    }
    if let Some(c) = cut(&shown) {
        (shown, was_cut) = (Cow::Owned(c), true);
    }
    (shown, was_cut)
}

/// The name shown for a document whose name has no visible character.
pub const NAMELESS: &str = "(no name)";
/// The text shown for a document whose text is empty or only blanks.
pub const EMPTY_TEXT: &str = "(empty message)";

/// The longest beginning of `text` that is whole graphemes (extended
/// grapheme clusters) and at most `most` characters: a cut between two
/// characters of one grapheme would drop a letter's accent, halve a flag
/// or leave a joiner dangling.
fn whole_graphemes(text: &str, most: usize) -> &str {
    use unicode_segmentation::UnicodeSegmentation;
    let mut end = 0;
    let mut chars = 0;
    for grapheme in text.graphemes(true) {
        chars += grapheme.chars().count();
        if chars > most {
            break;
        }
        end += grapheme.len();
    }
    &text[..end]
}

/// The fields a message is read from.
const READ_FIELDS: [&str; 5] = ["_id", "name", "text", "datetime", POSITION];

/// The fields of `raw` a message is read from ([`READ_FIELDS`]), and no
/// other, so a string that is not UTF-8 elsewhere (an extra field another
/// app keeps) is never decoded and changes nothing. mongod stores strings
/// as a client sends them: what it receives is checked for BSON structure
/// only, UTF-8 only by the `validate` command's `checkBSONConformance`
/// (`validateBSON` in mongod's `src/mongo/bson/bson_validate.h`;
/// <https://www.mongodb.com/docs/manual/reference/command/validate/>), so
/// documents come as raw bytes, and each field is decoded only here.
///
/// Errors: [`Malformed::Utf8`] when one of those fields holds a string
/// that is not UTF-8, or a field name before the last of them is not
/// UTF-8 (the walk through the document cannot go past it).
pub fn read_fields(raw: &RawDocument) -> Result<Document, Malformed> {
    let mut fields = Document::new();
    for element in raw.iter_elements() {
        let element = element.map_err(|_| Malformed::Utf8)?;
        if !READ_FIELDS.contains(&element.key()) {
            continue;
        }
        // Only UTF-8 can fail here: mongod checked the structure.
        let value = element.value().map_err(|_| Malformed::Utf8)?;
        let value = Bson::try_from(value.to_raw_bson()).map_err(|_| Malformed::Utf8)?;
        fields.insert(element.key(), value);
        if fields.len() == READ_FIELDS.len() {
            break;
        }
    }
    Ok(fields)
}

/// Where `raw` stands in the store order, whatever its strings:
/// [`sort_key`] of its fields, or for a string `_id` that is not UTF-8,
/// of its fields with each such sequence as U+FFFD. That key is not the
/// document's own (MongoDB compares the bytes), so a read that starts
/// beyond it may meet the document again ([`super::collections`] reads on
/// past it).
pub fn raw_sort_key(raw: &RawDocument) -> Option<Position> {
    match read_fields(raw) {
        Ok(fields) => sort_key(&fields),
        Err(_) => sort_key(&lossy(raw)?),
    }
}

/// `raw` with each sequence that is not UTF-8 in its strings as U+FFFD.
pub fn lossy(raw: &RawDocument) -> Option<Document> {
    mongodb::bson::from_slice::<Utf8LossyDeserialization<Document>>(raw.as_bytes())
        .ok()
        .map(|d| d.0)
}

impl MessageDoc {
    /// Whether this is a stray: no position, and an ObjectId made from
    /// `from` on ([`not_stray`], the change stream's module docs).
    pub fn is_stray(&self, from: Option<ObjectId>) -> bool {
        match (&self.id, from) {
            (DocId::ObjectId(oid), Some(from)) => self.position.is_none() && *oid >= from,
            _ => false,
        }
    }

    /// The document that inserts `m`: the lab's fields, the id as `_id` so
    /// a retried insert can never store a message twice, and an empty
    /// `position` for the primary to fill in.
    pub fn for_insert(m: &Message) -> Document {
        doc! {
            "_id": DocId::from_public(&m.id).bson(),
            "name": m.name.as_str(),
            "text": m.text.as_str(),
            "datetime": DateTime::from_millis(millis(m.datetime)),
            POSITION: EMPTY_POSITION,
        }
    }

    /// Reads any document of the collection. A naive datetime (the lab's)
    /// is taken as UTC, as pymongo stored it. A name or text longer than a
    /// message's is cut ([`shown_name`], [`shown_text`]), and one that
    /// breaks another rule a post follows is mended ([`mended_name`],
    /// [`mended_text`]), so every message shown keeps the API's rules.
    ///
    /// Errors: why it is not a message.
    pub fn from_document(d: &Document) -> Result<MessageDoc, Malformed> {
        let id = match d.get("_id") {
            Some(Bson::String(s)) => {
                if crate::message::validate_id(s).is_err() {
                    return Err(Malformed::IdText);
                }
                DocId::from_public(s)
            }
            Some(Bson::ObjectId(oid)) => DocId::ObjectId(*oid),
            _ => return Err(Malformed::IdType),
        };
        // A string `_id` that looks like an ObjectId would be a second
        // message with the same public id.
        if matches!(
            (&id, d.get("_id")),
            (DocId::ObjectId(_), Some(Bson::String(_)))
        ) {
            return Err(Malformed::IdText);
        }
        let stored_name = d.get_str("name").map_err(|_| Malformed::Name)?;
        let stored_text = d.get_str("text").map_err(|_| Malformed::Text)?;
        // A name mended to NFC may be a quarter as long, a text with CRLF
        // line breaks half: one at most this many bytes may fit once
        // mended, and is mended before it is cut.
        let (name, name_cut) = shown(stored_name, NAME_MAX_CHARS * 16, mended_name, shown_name);
        let (text, text_cut) = shown(stored_text, TEXT_MAX_CHARS * 8, mended_text, shown_text);
        let altered = name_cut || text_cut || name != stored_name || text != stored_text;
        let (name, text) = (name.into_owned(), text.into_owned());
        let datetime = *d
            .get_datetime("datetime")
            .map_err(|_| Malformed::Datetime)?;
        if !SHOWN_MILLIS.contains(&datetime.timestamp_millis()) {
            return Err(Malformed::Datetime);
        }
        let position = match d.get(POSITION) {
            None | Some(Bson::Null) => None,
            Some(Bson::Timestamp(t)) => Some(*t),
            Some(_) => return Err(Malformed::Position),
        };
        Ok(MessageDoc {
            id,
            name,
            text,
            datetime,
            position,
            altered,
        })
    }

    /// The message the API shows. Errors: a datetime `time` cannot hold.
    pub fn into_message(self) -> Result<Message, String> {
        let nanos = i128::from(self.datetime.timestamp_millis()) * 1_000_000;
        let id = self.id.public();
        let datetime = OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .map_err(|e| format!("message {id} has an impossible datetime: {e}"))?;
        Ok(Message {
            id,
            name: self.name,
            text: self.text,
            datetime,
        })
    }

    /// Where this document stands in the store order.
    pub fn position(&self) -> Position {
        Position {
            stamp: self.position,
            millis: self.datetime.timestamp_millis(),
            id: self.id.clone(),
        }
    }
}

/// Milliseconds since the Unix epoch, as a BSON datetime holds them.
pub fn millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A message's place in the store order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The primary-assigned `position`; `None` sorts first.
    pub stamp: Option<Timestamp>,
    /// The `datetime` field, in ms since the epoch.
    pub millis: i64,
    /// The `_id` field.
    pub id: DocId,
}

impl Position {
    /// Why this position cannot be one MongoDB gave, if it cannot:
    /// - more than [`AHEAD_LIMIT_SECS`] ahead of `now_secs` (this
    ///   instance's clock, in seconds since the epoch): no cluster time is;
    /// - before `history_from` (simplechat's first position; `None` to
    ///   check every position, as the search for that first one does) and
    ///   more than [`WRITTEN_MARGIN_SECS`] before the second its ObjectId
    ///   `_id` was made or its `datetime`: taken before the document was
    ///   written.
    ///
    /// Positions from `history_from` on were taken by this deployment, so
    /// they are not checked against the document's own times: a post may
    /// have an id of 24 hex digits from any second, and a lab document
    /// positioned by simplechat may carry any `datetime`. Positions before
    /// it are another deployment's (an import, a restore) or written by
    /// hand.
    pub fn impossible(&self, history_from: Option<Timestamp>, now_secs: i64) -> Option<Malformed> {
        let stamp = self.stamp?;
        let secs = i64::from(stamp.time);
        if secs > now_secs.saturating_add(AHEAD_LIMIT_SECS) {
            return Some(Malformed::PositionAhead);
        }
        if history_from.is_some_and(|from| stamp_key(&Some(stamp)) >= stamp_key(&Some(from))) {
            return None;
        }
        let id_secs = match &self.id {
            DocId::ObjectId(oid) => oid.timestamp().timestamp_millis().div_euclid(1000),
            DocId::Text(_) => i64::MIN,
        };
        let written = id_secs.max(self.millis.div_euclid(1000));
        (written > secs.saturating_add(WRITTEN_MARGIN_SECS))
            .then_some(Malformed::PositionBeforeWritten)
    }

    /// A position at or before every message stored up to `margin_ms`
    /// before this one (in cluster time for positioned messages, in
    /// `datetime` for the others).
    pub fn earlier_by(&self, margin_ms: i64) -> Position {
        let margin_secs = u32::try_from((margin_ms + 999) / 1000).unwrap_or(u32::MAX);
        Position {
            stamp: self.stamp.map(|t| Timestamp {
                time: t.time.saturating_sub(margin_secs),
                increment: 0,
            }),
            millis: if self.stamp.is_some() {
                i64::MIN
            } else {
                self.millis.saturating_sub(margin_ms)
            },
            id: DocId::Text(String::new()),
        }
    }
}

fn stamp_key(t: &Option<Timestamp>) -> Option<(u32, u32)> {
    t.map(|t| (t.time, t.increment))
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        (stamp_key(&self.stamp), self.millis, &self.id).cmp(&(
            stamp_key(&other.stamp),
            other.millis,
            &other.id,
        ))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Which way a read walks the store order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Towards older messages (newest first).
    Older,
    /// Towards newer messages (oldest first).
    Newer,
}

/// A cursor on store positions: which part of the order a read wants.
#[derive(Debug, Clone)]
pub enum Range {
    /// The newest messages.
    Latest,
    /// The oldest messages.
    Oldest,
    /// Messages strictly before or after a position.
    Beyond(Position, Direction),
}

/// `_id` strictly beyond `id`, across types: comparison operators only
/// match values of the operand's BSON type
/// (<https://www.mongodb.com/docs/manual/reference/method/db.collection.find/#type-bracketing>),
/// so the other type is named with `$type`.
fn id_beyond(id: &DocId, direction: Direction) -> Document {
    match (id, direction) {
        (DocId::Text(s), Direction::Newer) => {
            doc! { "$or": [ { "_id": { "$gt": s.as_str() } }, { "_id": { "$type": "objectId" } } ] }
        }
        (DocId::Text(s), Direction::Older) => doc! { "_id": { "$lt": s.as_str() } },
        (DocId::ObjectId(oid), Direction::Newer) => doc! { "_id": { "$gt": *oid } },
        (DocId::ObjectId(oid), Direction::Older) => {
            doc! { "$or": [ { "_id": { "$lt": *oid } }, { "_id": { "$type": "string" } } ] }
        }
    }
}

/// Messages strictly before or after `from` in the store order.
pub fn beyond(from: &Position, direction: Direction) -> Document {
    let op = match direction {
        Direction::Older => "$lt",
        Direction::Newer => "$gt",
    };
    let at = DateTime::from_millis(from.millis);
    // Same stamp (or none), then the same datetime, then the id decides.
    let same_stamp = match from.stamp {
        Some(t) => doc! { POSITION: t },
        None => doc! { POSITION: Bson::Null },
    };
    let mut later_datetime = same_stamp.clone();
    later_datetime.insert("datetime", doc! { op: at });
    let mut same_datetime = same_stamp;
    same_datetime.insert("datetime", at);
    same_datetime.insert("$and", vec![Bson::Document(id_beyond(&from.id, direction))]);
    let mut clauses = vec![
        Bson::Document(later_datetime),
        Bson::Document(same_datetime),
    ];
    match (from.stamp, direction) {
        (Some(t), Direction::Newer) => {
            clauses.push(Bson::Document(doc! { POSITION: { "$gt": t } }))
        }
        (Some(t), Direction::Older) => {
            clauses.push(Bson::Document(doc! { POSITION: { "$lt": t } }));
            clauses.push(Bson::Document(doc! { POSITION: Bson::Null }));
        }
        (None, Direction::Newer) => {
            clauses.push(Bson::Document(doc! { POSITION: { "$type": "timestamp" } }))
        }
        (None, Direction::Older) => {}
    }
    doc! { "$or": clauses }
}

/// Documents whose order keys have the types the order is defined on: an
/// `_id` that is a string or an ObjectId, a `datetime` that is a date, a
/// `position` that is missing, null or a timestamp. Reads that walk the
/// order ask only for these, so that every document a page returns has a
/// [`Position`] the next page can start from, whatever else it lacks; the
/// others cannot be placed in the order and are counted apart
/// ([`ill_typed`]). `$type` with a list matches any of its types
/// (<https://www.mongodb.com/docs/manual/reference/operator/query/type/>).
pub fn well_typed() -> Document {
    doc! {
        "_id": { "$type": ["string", "objectId"] },
        "datetime": { "$type": "date" },
        "$or": [ { POSITION: Bson::Null }, { POSITION: { "$type": "timestamp" } } ],
    }
}

/// The documents that are not strays from `from` on: a stray has no
/// position and an ObjectId made from `from` on (a comparison with an
/// ObjectId matches ObjectIds only, so string ids are never strays:
/// <https://www.mongodb.com/docs/manual/reference/method/db.collection.find/#type-bracketing>).
pub fn not_stray(from: ObjectId) -> Document {
    doc! { "$nor": [ { POSITION: Bson::Null, "_id": { "$gte": from } } ] }
}

/// The first ObjectId of the second after `history_from`'s: where strays
/// begin (the change stream's module docs). A document of that very second
/// may have been there before simplechat's first message, so it stays
/// history.
pub fn strays_from(history_from: Timestamp) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&history_from.time.saturating_add(1).to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// The documents [`well_typed`] leaves out.
pub fn ill_typed() -> Document {
    doc! { "$nor": [ well_typed() ] }
}

/// Where a document read by a walk stands in the order, whether or not it
/// is a message (a `name` that is no string still has a place): what the
/// next page starts beyond. `None` for keys of other types.
pub fn sort_key(d: &Document) -> Option<Position> {
    let id = DocId::from_bson(d.get("_id")?)?;
    let stamp = match d.get(POSITION) {
        None | Some(Bson::Null) => None,
        Some(Bson::Timestamp(t)) => Some(*t),
        Some(_) => return None,
    };
    Some(Position {
        stamp,
        millis: d.get_datetime("datetime").ok()?.timestamp_millis(),
        id,
    })
}

/// Newest first for `Older` (then reversed), oldest first for `Newer`; the
/// order index serves both directions.
pub fn sort(direction: Direction) -> Document {
    match direction {
        Direction::Older => doc! { POSITION: -1, "datetime": -1, "_id": -1 },
        Direction::Newer => doc! { POSITION: 1, "datetime": 1, "_id": 1 },
    }
}

/// The keys of [`ORDER_INDEX`].
pub fn order_index_keys() -> Document {
    doc! { POSITION: 1, "datetime": 1, "_id": 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::NewMessage;

    fn at(stamp: Option<(u32, u32)>, ms: i64, id: DocId) -> Position {
        Position {
            stamp: stamp.map(|(time, increment)| Timestamp { time, increment }),
            millis: ms,
            id,
        }
    }

    #[test]
    fn inserts_carry_an_empty_position_and_reads_round_trip() {
        let m = NewMessage::validate("ann", "hi <b>", Some("k-1"))
            .unwrap()
            .into_message(
                OffsetDateTime::from_unix_timestamp_nanos(1_572_714_485_123_456_789).unwrap(),
            );
        let mut d = MessageDoc::for_insert(&m);
        assert_eq!(d.get_str("_id").unwrap(), "k-1");
        assert_eq!(
            d.get_timestamp(POSITION).unwrap(),
            Timestamp {
                time: 0,
                increment: 0
            }
        );
        d.insert(
            POSITION,
            Timestamp {
                time: 7,
                increment: 1,
            },
        );
        let back = MessageDoc::from_document(&d).unwrap();
        assert_eq!(
            back.position,
            Some(Timestamp {
                time: 7,
                increment: 1
            })
        );
        assert_eq!(back.into_message().unwrap(), m);
    }

    #[test]
    fn lab_documents_are_read_and_malformed_ones_named() {
        let oid = ObjectId::parse_str("65f0a1b2c3d4e5f601234567").unwrap();
        let lab = doc! { "_id": oid, "name": "amit", "text": "hi", "datetime": DateTime::from_millis(5), "extra": 1 };
        let m = MessageDoc::from_document(&lab).unwrap();
        assert_eq!(m.id.public(), "65f0a1b2c3d4e5f601234567");
        assert_eq!(m.position, None);
        let bad = |d: Document| MessageDoc::from_document(&d).unwrap_err();
        assert_eq!(
            bad(doc! { "_id": 5, "name": "a", "text": "b", "datetime": DateTime::from_millis(1) }),
            Malformed::IdType
        );
        assert_eq!(
            bad(
                doc! { "_id": "a b", "name": "a", "text": "b", "datetime": DateTime::from_millis(1) }
            ),
            Malformed::IdText
        );
        assert_eq!(
            bad(doc! { "_id": "x", "text": "b", "datetime": DateTime::from_millis(1) }),
            Malformed::Name
        );
        assert_eq!(
            bad(doc! { "_id": "x", "name": "a", "text": 3, "datetime": DateTime::from_millis(1) }),
            Malformed::Text
        );
        assert_eq!(
            bad(doc! { "_id": "x", "name": "a", "text": "b", "datetime": "yesterday" }),
            Malformed::Datetime
        );
        for ms in [253_402_300_800_000, -62_167_219_200_001, i64::MAX, i64::MIN] {
            assert_eq!(
                bad(
                    doc! { "_id": "x", "name": "a", "text": "b", "datetime": DateTime::from_millis(ms) }
                ),
                Malformed::Datetime
            );
        }
        for ms in [253_402_300_799_999, -62_167_219_200_000] {
            let edge = doc! { "_id": "x", "name": "a", "text": "b", "datetime": DateTime::from_millis(ms) };
            let m = MessageDoc::from_document(&edge)
                .unwrap()
                .into_message()
                .unwrap();
            let shown = crate::message::format_datetime(&m.datetime);
            assert!(shown.len() == 24 && shown.ends_with('Z'), "{shown}");
        }
        assert_eq!(
            bad(
                doc! { "_id": "65f0a1b2c3d4e5f601234567", "name": "a", "text": "b", "datetime": DateTime::from_millis(1) }
            ),
            Malformed::IdText
        );
    }

    /// A string that is not UTF-8 (`caf\xe9`, Latin-1) in a field a
    /// message is read from makes the document no message; in another
    /// field it is never decoded.
    #[test]
    fn only_the_fields_a_message_is_read_from_must_be_utf8() {
        let raw = |field: &str| {
            let mut d = doc! { "_id": "x", "name": "a", "text": "b",
            "datetime": DateTime::from_millis(1), "extra": "c" };
            d.insert(field, "XXXX");
            let mut bytes = Vec::new();
            d.to_writer(&mut bytes).unwrap();
            let at = bytes.windows(4).position(|w| w == b"XXXX").unwrap();
            bytes[at..at + 4].copy_from_slice(b"caf\xe9");
            mongodb::bson::RawDocumentBuf::from_bytes(bytes).unwrap()
        };
        for field in ["_id", "name", "text"] {
            assert_eq!(read_fields(&raw(field)), Err(Malformed::Utf8), "{field}");
        }
        let fields = read_fields(&raw("extra")).unwrap();
        assert!(!fields.contains_key("extra"));
        assert_eq!(MessageDoc::from_document(&fields).unwrap().text, "b");
        // The key of a document whose `_id` is not UTF-8 is its lossy one.
        let key = raw_sort_key(&raw("_id")).unwrap();
        assert_eq!(key.id, DocId::Text("caf\u{FFFD}".into()));
    }

    #[test]
    fn names_and_texts_longer_than_a_messages_are_shown_cut_with_a_marker() {
        let oid = ObjectId::new();
        let text = "é".repeat(200_000);
        let name = "n".repeat(1000);
        let lab =
            doc! { "_id": oid, "name": &name, "text": &text, "datetime": DateTime::from_millis(5) };
        let m = MessageDoc::from_document(&lab).unwrap();
        assert!(m.altered);
        assert_eq!(m.text.chars().count(), TEXT_MAX_CHARS);
        assert!(m.text.starts_with(&"é".repeat(1900)), "{}", &m.text[..20]);
        assert!(
            m.text
                .ends_with("é\u{2026}\n[cut: the message has 200000 characters]"),
            "{}",
            &m.text[m.text.len() - 60..]
        );
        assert_eq!(m.name.chars().count(), NAME_MAX_CHARS);
        assert_eq!(m.name, format!("{}\u{2026}", "n".repeat(63)));
        // At the limits nothing is cut.
        let text = "é".repeat(TEXT_MAX_CHARS);
        let name = "n".repeat(NAME_MAX_CHARS);
        let lab =
            doc! { "_id": oid, "name": &name, "text": &text, "datetime": DateTime::from_millis(5) };
        let m = MessageDoc::from_document(&lab).unwrap();
        assert!(!m.altered);
        assert_eq!((m.name, m.text), (name, text));
        // Only the name is too long.
        let lab = doc! { "_id": oid, "name": "n".repeat(65), "text": "hi", "datetime": DateTime::from_millis(5) };
        let m = MessageDoc::from_document(&lab).unwrap();
        assert!(m.altered);
        assert_eq!(m.text, "hi");
    }

    /// The lab's app had no rules: an empty or blank name or text, control
    /// characters (a NUL, an ESC, a carriage return) or a bidi override in
    /// a name were shown as stored, against the API's own rules for a
    /// message. They are now shown mended; what is shown always passes
    /// the rules of a post, and the message counts as altered, so no post
    /// is taken for a retry of it.
    #[test]
    fn names_and_texts_no_post_could_have_are_shown_mended() {
        let shown = |name: &str, text: &str| {
            let lab = doc! { "_id": ObjectId::new(), "name": name, "text": text,
            "datetime": DateTime::from_millis(5) };
            let m = MessageDoc::from_document(&lab).unwrap();
            // As a post would store them: the rules change nothing more.
            let posted = NewMessage::validate(&m.name, &m.text, None)
                .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", m.name, m.text));
            assert_eq!((&posted.name, &posted.text), (&m.name, &m.text));
            (m.name, m.text, m.altered)
        };
        let case = |name: &str, text: &str, altered| (name.to_owned(), text.to_owned(), altered);
        assert_eq!(shown("ann", "hello"), case("ann", "hello", false));
        assert_eq!(shown("", ""), case(NAMELESS, EMPTY_TEXT, true));
        assert_eq!(shown(" \t", " \r\n "), case(NAMELESS, EMPTY_TEXT, true));
        assert_eq!(shown("\u{200B}", "x"), case(NAMELESS, "x", true));
        // What shows as nothing at a name's ends, as a post's name loses it:
        // else a second "zero" that looks like the first.
        for (stored, name) in [
            ("\u{200B}zero", "zero"),
            ("\u{FEFF}bom", "bom"),
            ("ann\u{3164}", "ann"),
            ("ann\u{2800}", "ann"),
            ("\u{2060}ann\u{FE0F}", "ann"),
            ("\u{00AD} e\u{301}va \u{200D}", "\u{e9}va"),
        ] {
            assert_eq!(shown(stored, "x"), case(name, "x", true), "{stored:?}");
        }
        // Inside a name they stay, as in a post's.
        assert_eq!(shown("a\u{200D}b", "x"), case("a\u{200D}b", "x", false));
        assert_eq!(
            shown(" bob ", "hi\r\nthere\0!\u{1b}[31m"),
            case("bob", "hi\nthere\u{FFFD}!\u{FFFD}[31m", true)
        );
        assert_eq!(
            shown("eve\u{202E}gnp.exe", "ok"),
            case("eve\u{FFFD}gnp.exe", "ok", true)
        );
        assert_eq!(shown("\0", "ok"), case("\u{FFFD}", "ok", true));
        assert_eq!(
            shown("e\u{301}", "tab\tok\n"),
            case("\u{e9}", "tab\tok", true)
        );
        // Texts keep bidi controls, as posts may.
        assert_eq!(
            shown("ann", "\u{202B}abc"),
            case("ann", "\u{202B}abc", false)
        );
        // A name NFC makes longer is cut to a name's length.
        let (name, _, altered) = shown(&"\u{958}".repeat(NAME_MAX_CHARS), "x");
        assert!(altered && name.chars().count() <= NAME_MAX_CHARS, "{name}");
        // A long blank name is nameless, not its cut.
        assert_eq!(shown(&" ".repeat(100), "x"), case(NAMELESS, "x", true));
    }

    /// The lab's form sent CRLF line breaks, and a name may be stored
    /// decomposed (NFD): counted as stored, such a text or name was cut
    /// though it fits the limits once mended as a post is (LF, NFC).
    #[test]
    fn a_text_or_name_that_fits_once_mended_is_not_cut() {
        let text = "ab\r\n".repeat(666);
        let name = "e\u{301}".repeat(NAME_MAX_CHARS);
        let lab = doc! { "_id": ObjectId::new(), "name": &name, "text": &text,
        "datetime": DateTime::from_millis(5) };
        let m = MessageDoc::from_document(&lab).unwrap();
        assert_eq!(m.text, "ab\n".repeat(666).trim_end());
        assert_eq!(m.name, "\u{e9}".repeat(NAME_MAX_CHARS));
        assert!(m.altered, "shown other than stored");
        // One longer than any mended form could fit is still cut, with its
        // length as stored.
        let text = "ab\r\n".repeat(10_000);
        let m = MessageDoc::from_document(&doc! { "_id": ObjectId::new(), "name": "n",
        "text": &text, "datetime": DateTime::from_millis(5) })
        .unwrap();
        assert!(
            m.text.ends_with("[cut: the message has 39998 characters]"),
            "{}",
            m.text
        );
        assert!(!m.text.contains('\r'));
    }

    /// The cut counted characters, so it could end inside a grapheme: a
    /// letter kept without its accent, a flag halved into a lone regional
    /// indicator, a family emoji cut to one person and a dangling joiner.
    /// It now keeps whole graphemes only (and so may keep fewer
    /// characters than fit).
    #[test]
    fn a_cut_never_splits_a_grapheme() {
        use unicode_segmentation::UnicodeSegmentation;
        let oid = ObjectId::new();
        for unit in [
            "e\u{301}",
            "\u{1F1EB}\u{1F1F7}",
            "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
            "\u{1100}\u{1161}\u{11A8}",
            "a\u{301}\u{302}\u{303}",
        ] {
            let lab = doc! {
                "_id": oid,
                "name": unit.repeat(100),
                "text": unit.repeat(3000),
                "datetime": DateTime::from_millis(5),
            };
            let m = MessageDoc::from_document(&lab).unwrap();
            assert!(m.altered);
            let (kept_text, marker) = m.text.split_once('\u{2026}').unwrap();
            assert!(marker.starts_with("\n[cut: "), "{marker}");
            let (kept_name, rest) = m.name.split_once('\u{2026}').unwrap();
            assert_eq!(rest, "");
            // A name is shown NFC, as a posted one is stored.
            let nfc_unit: String = unit.nfc().collect();
            for (kept, unit) in [(kept_text, unit), (kept_name, nfc_unit.as_str())] {
                assert!(!kept.is_empty(), "{unit:?}");
                assert!(
                    kept.graphemes(true).all(|g| g == unit),
                    "{unit:?}: cut inside a grapheme: {:?}",
                    kept.graphemes(true).next_back()
                );
            }
            assert!(m.text.chars().count() <= TEXT_MAX_CHARS);
            assert!(m.name.chars().count() <= NAME_MAX_CHARS);
            assert!(m.text.chars().count() > TEXT_MAX_CHARS - unit.chars().count() - 1);
        }
    }

    #[test]
    fn public_ids_of_24_lower_hex_digits_are_object_ids() {
        assert!(matches!(
            DocId::from_public("65f0a1b2c3d4e5f601234567"),
            DocId::ObjectId(_)
        ));
        assert!(matches!(
            DocId::from_public("65F0A1B2C3D4E5F601234567"),
            DocId::Text(_)
        ));
        assert!(matches!(DocId::from_public("0190c0ffee"), DocId::Text(_)));
    }

    #[test]
    fn order_is_position_then_datetime_then_id_with_unpositioned_first() {
        let oid = DocId::ObjectId(ObjectId::parse_str("65f0a1b2c3d4e5f601234567").unwrap());
        let text = |s: &str| DocId::Text(s.into());
        // The lab's history, by datetime, strings before ObjectIds.
        assert!(at(None, 1, text("z")) < at(None, 2, text("a")));
        assert!(at(None, 2, text("z")) < at(None, 2, oid.clone()));
        // Anything positioned is newer than everything unpositioned, whatever
        // the clocks said.
        assert!(at(None, i64::MAX, oid.clone()) < at(Some((1, 1)), 0, text("a")));
        assert!(at(Some((1, 2)), 0, text("a")) < at(Some((2, 1)), -5, text("a")));
        let p = at(Some((100, 3)), 9, text("m"));
        assert!(p.earlier_by(5000) < at(Some((95, 1)), i64::MIN + 1, text("")));
        assert!(p.earlier_by(5000) > at(Some((94, 9)), 0, text("")));
    }

    /// A position more than a year and a day ahead of the clock, or one
    /// before simplechat's first that is more than a day older than its
    /// own document, is no position MongoDB gave; one of this deployment
    /// (from simplechat's first on) is never checked against the
    /// document's times.
    #[test]
    fn positions_no_mongodb_could_give_are_named() {
        let now = 1_800_000_000_i64;
        let secs = |s: i64| u32::try_from(s).unwrap();
        let oid_at = |s: i64| {
            let mut bytes = [1u8; 12];
            bytes[..4].copy_from_slice(&secs(s).to_be_bytes());
            DocId::ObjectId(ObjectId::from_bytes(bytes))
        };
        let first = Some(Timestamp {
            time: secs(now - 1000),
            increment: 1,
        });
        let text = |s: &str| DocId::Text(s.into());
        let check = |stamp: i64, millis: i64, id: DocId, from| {
            at(Some((secs(stamp), 1)), millis, id).impossible(from, now)
        };
        // Ahead of the clock: a year and a day is the limit.
        assert_eq!(
            check(4_000_000_000, 0, text("x"), first),
            Some(Malformed::PositionAhead)
        );
        assert_eq!(check(now + AHEAD_LIMIT_SECS, 0, text("x"), first), None);
        assert_eq!(
            check(now + AHEAD_LIMIT_SECS + 1, 0, text("x"), first),
            Some(Malformed::PositionAhead)
        );
        // Before the first, and before its own ObjectId or datetime.
        let day = WRITTEN_MARGIN_SECS;
        assert_eq!(
            check(1, now * 1000, oid_at(now), first),
            Some(Malformed::PositionBeforeWritten)
        );
        assert_eq!(
            check(1, 0, oid_at(now), None),
            Some(Malformed::PositionBeforeWritten)
        );
        assert_eq!(
            check(1, now * 1000, text("x"), first),
            Some(Malformed::PositionBeforeWritten)
        );
        assert_eq!(
            check(
                now - 2000,
                (now - 2000 + day) * 1000,
                oid_at(now - 2000 + day),
                first
            ),
            None
        );
        assert_eq!(
            check(now - 2000, 0, oid_at(now - 2000 + day + 1), first),
            Some(Malformed::PositionBeforeWritten)
        );
        // An import: older than the first, agreeing with its own times.
        assert_eq!(
            check(
                now - 86_400 * 365,
                (now - 86_400 * 365) * 1000,
                oid_at(now - 86_400 * 365),
                first
            ),
            None
        );
        // From the first on, a post's id or a lab datetime may say anything.
        assert_eq!(
            check(now - 1000, i64::MAX / 2, oid_at(now + 10 * day), first),
            None
        );
        assert_eq!(check(now, 0, oid_at(i64::from(u32::MAX)), first), None);
        // No position: nothing to check.
        assert_eq!(at(None, 0, oid_at(now)).impossible(first, now), None);
    }

    #[test]
    fn strays_begin_the_second_after_the_first_position() {
        let from = strays_from(Timestamp {
            time: 1_700_000_000,
            increment: 9,
        });
        assert_eq!(from.bytes()[..4], 1_700_000_001_u32.to_be_bytes());
        assert_eq!(from.bytes()[4..], [0u8; 8]);
    }

    #[test]
    fn beyond_covers_every_case_of_the_order() {
        let f = beyond(
            &at(Some((5, 1)), 1000, DocId::Text("m5".into())),
            Direction::Older,
        );
        let text = f.to_string();
        assert!(text.contains("\"$lt\": Timestamp(5, 1)"), "{text}");
        assert!(text.contains("\"position\": null"), "{text}");
        let g = beyond(&at(None, 1000, DocId::Text("m5".into())), Direction::Newer);
        let text = g.to_string();
        assert!(text.contains("\"$type\": \"timestamp\""), "{text}");
        assert!(text.contains("\"$type\": \"objectId\""), "{text}");
        assert_eq!(
            sort(Direction::Older),
            doc! { "position": -1, "datetime": -1, "_id": -1 }
        );
    }
}
