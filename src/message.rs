//! The chat message and the rules a posted message must satisfy.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub const NAME_MAX_CHARS: usize = 64;
pub const TEXT_MAX_CHARS: usize = 2000;
pub const ID_MAX_CHARS: usize = 64;

/// A stored message, exactly as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub name: String,
    pub text: String,
    /// RFC 3339, UTC, millisecond precision: MongoDB dates carry milliseconds,
    /// so both stores agree on what a round trip gives back.
    #[serde(with = "rfc3339_millis")]
    pub datetime: OffsetDateTime,
}

/// A message that passed validation and is about to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: String,
    pub name: String,
    pub text: String,
}

impl NewMessage {
    /// Validates user input. `id` is the client's idempotency key; without one
    /// the server makes a time-ordered id.
    pub fn validate(name: &str, text: &str, id: Option<&str>) -> Result<Self, Invalid> {
        let name = normalize(name);
        let text = normalize(text);
        check_len("name", &name, NAME_MAX_CHARS)?;
        check_len("text", &text, TEXT_MAX_CHARS)?;
        // A name is one line: a newline or tab in it would only break layouts.
        if name.chars().any(char::is_control) {
            return Err(Invalid::new(
                "name",
                "name must not contain control characters",
            ));
        }
        if text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(Invalid::new(
                "text",
                "text must not contain control characters other than newline and tab",
            ));
        }
        let id = match id {
            Some(id) => {
                validate_id(id)?;
                id.to_owned()
            }
            None => new_id(),
        };
        Ok(NewMessage { id, name, text })
    }

    /// The same post again: what an idempotent retry must match.
    pub fn same_content(&self, stored: &Message) -> bool {
        self.name == stored.name && self.text == stored.text
    }

    pub fn into_message(self, datetime: OffsetDateTime) -> Message {
        Message {
            id: self.id,
            name: self.name,
            text: self.text,
            datetime: truncate_to_millis(datetime),
        }
    }
}

/// Why input was refused, and which field was at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Invalid {
            field,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Browsers submit textarea newlines as CRLF; storing them as LF keeps a
/// form post and a JSON post of the same text identical.
fn normalize(s: &str) -> String {
    s.replace("\r\n", "\n")
        .replace('\r', "\n")
        .trim()
        .to_owned()
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    let n = value.chars().count();
    if n == 0 {
        return Err(Invalid::new(field, format!("{field} must not be empty")));
    }
    if n > max {
        return Err(Invalid::new(
            field,
            format!("{field} must be at most {max} characters (got {n})"),
        ));
    }
    Ok(())
}

/// Ids appear in URLs and SSE `id:` lines, so they are restricted to
/// characters that need no escaping in either.
pub fn validate_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > ID_MAX_CHARS {
        return Err(Invalid::new(
            "id",
            format!("id must be 1 to {ID_MAX_CHARS} characters"),
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Invalid::new(
            "id",
            "id may contain only letters, digits, '-' and '_'",
        ));
    }
    Ok(())
}

/// UUIDv7: time-ordered, so ids made by one instance sort roughly by time,
/// and unique across instances without coordination.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

pub fn truncate_to_millis(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1_000_000).unwrap_or(t)
}

pub fn now_millis() -> OffsetDateTime {
    truncate_to_millis(OffsetDateTime::now_utc())
}

mod rfc3339_millis {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use time::{format_description::well_known::Rfc3339, OffsetDateTime, UtcOffset};

    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );

    pub fn format(t: &OffsetDateTime) -> String {
        t.to_offset(UtcOffset::UTC)
            .format(FORMAT)
            .unwrap_or_else(|_| t.to_string())
    }

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &Rfc3339).map_err(D::Error::custom)
    }
}

pub use rfc3339_millis::format as format_datetime;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_accepts_limits() {
        let m = NewMessage::validate("  ann ", &"x".repeat(2000), None).unwrap();
        assert_eq!(m.name, "ann");
        assert_eq!(m.text.chars().count(), 2000);
        assert!(NewMessage::validate(&"é".repeat(64), "hi", None).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_control() {
        assert_eq!(
            NewMessage::validate("  ", "hi", None).unwrap_err().field,
            "name"
        );
        assert_eq!(
            NewMessage::validate("a", " \n ", None).unwrap_err().field,
            "text"
        );
        assert_eq!(
            NewMessage::validate(&"a".repeat(65), "hi", None)
                .unwrap_err()
                .field,
            "name"
        );
        assert_eq!(
            NewMessage::validate("a", &"a".repeat(2001), None)
                .unwrap_err()
                .field,
            "text"
        );
        assert_eq!(
            NewMessage::validate("a\u{7}", "hi", None)
                .unwrap_err()
                .field,
            "name"
        );
        assert_eq!(
            NewMessage::validate("a", "b\u{1b}[31m", None)
                .unwrap_err()
                .field,
            "text"
        );
        assert_eq!(
            NewMessage::validate("a", "hi", Some("a b"))
                .unwrap_err()
                .field,
            "id"
        );
        assert_eq!(
            NewMessage::validate("a", "hi", Some("")).unwrap_err().field,
            "id"
        );
    }

    #[test]
    fn keeps_newlines_and_tabs_in_text_and_normalizes_crlf() {
        let m = NewMessage::validate("a", "one\r\ntwo\tthree\rfour", None).unwrap();
        assert_eq!(m.text, "one\ntwo\tthree\nfour");
    }

    #[test]
    fn datetime_round_trips_as_rfc3339_utc_millis() {
        let m = NewMessage::validate("a", "b", Some("k1"))
            .unwrap()
            .into_message(
                OffsetDateTime::from_unix_timestamp_nanos(1_572_714_485_123_456_789).unwrap(),
            );
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["datetime"], "2019-11-02T17:08:05.123Z");
        let back: Message = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn server_ids_are_unique_and_valid() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(validate_id(&a).is_ok());
    }
}
