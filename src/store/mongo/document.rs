//! How a message is stored in MongoDB, its position in the store order
//! `(datetime, _id)`, and the filters and sorts that walk that order.

use std::cmp::Ordering;

use mongodb::bson::{doc, DateTime, Document};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::message::Message;

/// The collection, as the lab's app named it.
pub const COLLECTION: &str = "messages";
/// The index that serves the store order in both directions.
pub const ORDER_INDEX: &str = "datetime_1__id_1";

/// `{_id, name, text, datetime}`: the lab's fields, the id as `_id` so a
/// retried insert can never store a message twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    pub text: String,
    pub datetime: DateTime,
}

impl MessageDoc {
    /// The document for a message about to be inserted.
    pub fn from_message(m: &Message) -> Self {
        MessageDoc {
            id: m.id.clone(),
            name: m.name.clone(),
            text: m.text.clone(),
            datetime: DateTime::from_millis(millis(m.datetime)),
        }
    }

    /// The message the API shows. Errors: a datetime `time` cannot hold.
    pub fn into_message(self) -> Result<Message, String> {
        let nanos = i128::from(self.datetime.timestamp_millis()) * 1_000_000;
        let datetime = OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .map_err(|e| format!("message {} has an impossible datetime: {e}", self.id))?;
        Ok(Message {
            id: self.id,
            name: self.name,
            text: self.text,
            datetime,
        })
    }

    /// Where this document stands in the store order.
    pub fn position(&self) -> Position {
        Position {
            millis: self.datetime.timestamp_millis(),
            id: self.id.clone(),
        }
    }
}

/// Milliseconds since the Unix epoch, as a BSON datetime holds them.
pub fn millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A message's place in the store order: its datetime, then its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The `datetime` field, in ms since the epoch.
    pub millis: i64,
    /// The `_id` field.
    pub id: String,
}

impl Position {
    /// The position `ms` milliseconds before this one (before every id of
    /// that millisecond).
    pub fn earlier_by(&self, ms: i64) -> Position {
        Position {
            millis: self.millis.saturating_sub(ms),
            id: String::new(),
        }
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        // MongoDB compares strings by bytes (no collation is set), as does `str`.
        (self.millis, self.id.as_bytes()).cmp(&(other.millis, other.id.as_bytes()))
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

/// Messages strictly before or after `from` in the store order.
pub fn beyond(from: &Position, direction: Direction) -> Document {
    let op = match direction {
        Direction::Older => "$lt",
        Direction::Newer => "$gt",
    };
    let at = DateTime::from_millis(from.millis);
    doc! {
        "$or": [
            { "datetime": { op: at } },
            { "datetime": at, "_id": { op: from.id.as_str() } },
        ]
    }
}

/// Newest first for `Older` and `Latest` (then reversed), oldest first for
/// `Newer`; the order index serves both directions.
pub fn sort(direction: Direction) -> Document {
    match direction {
        Direction::Older => doc! { "datetime": -1, "_id": -1 },
        Direction::Newer => doc! { "datetime": 1, "_id": 1 },
    }
}

/// The keys of [`ORDER_INDEX`].
pub fn order_index_keys() -> Document {
    doc! { "datetime": 1, "_id": 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::NewMessage;

    #[test]
    fn round_trips_through_bson_with_millis() {
        let m = NewMessage::validate("ann", "hi <b>", Some("k-1"))
            .unwrap()
            .into_message(
                OffsetDateTime::from_unix_timestamp_nanos(1_572_714_485_123_456_789).unwrap(),
            );
        let d = MessageDoc::from_message(&m);
        let bson = mongodb::bson::to_document(&d).unwrap();
        assert_eq!(bson.get_str("_id").unwrap(), "k-1");
        assert_eq!(
            bson.get_datetime("datetime").unwrap().timestamp_millis(),
            1_572_714_485_123
        );
        let back: MessageDoc = mongodb::bson::from_document(bson).unwrap();
        assert_eq!(back.into_message().unwrap(), m);
    }

    #[test]
    fn position_orders_by_time_then_id_bytes() {
        let k = |ms, id: &str| Position {
            millis: ms,
            id: id.into(),
        };
        assert!(k(1, "b") < k(2, "a"));
        assert!(k(1, "a") < k(1, "b"));
        assert!(k(1, "Z") < k(1, "a"), "byte order, like MongoDB's default");
    }

    #[test]
    fn beyond_builds_the_tie_breaking_filter() {
        let from = Position {
            millis: 1000,
            id: "m5".into(),
        };
        let f = beyond(&from, Direction::Older);
        let expected = doc! { "$or": [
            { "datetime": { "$lt": DateTime::from_millis(1000) } },
            { "datetime": DateTime::from_millis(1000), "_id": { "$lt": "m5" } },
        ]};
        assert_eq!(f, expected);
        let g = beyond(&from, Direction::Newer);
        assert!(g.to_string().contains("$gt"));
        assert_eq!(sort(Direction::Older), doc! { "datetime": -1, "_id": -1 });
    }
}
