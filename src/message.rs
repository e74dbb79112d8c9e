//! The chat message and the rules a posted message must satisfy.

use icu_properties::props::{
    BidiControl, DefaultIgnorableCodePoint, Emoji, GeneralCategory, GeneralCategoryGroup,
    Ideographic, Script, VariationSelector, WhiteSpace,
};
use icu_properties::{CodePointMapData, CodePointSetData};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use unicode_normalization::UnicodeNormalization;

/// The longest name, in Unicode scalar values (`char`s, not bytes), counted
/// after trimming and NFC.
pub const NAME_MAX_CHARS: usize = 64;
/// The longest text, in Unicode scalar values, counted after trimming and
/// turning CRLF into LF.
pub const TEXT_MAX_CHARS: usize = 2000;
/// The longest id; ids are ASCII, so characters and bytes agree.
pub const ID_MAX_CHARS: usize = 64;

/// A stored message, exactly as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Unique in the store: the client's idempotency key, else a UUIDv7 in
    /// 32 hex digits ([`new_id`]).
    pub id: String,
    /// The author's name, trimmed, NFC, at most [`NAME_MAX_CHARS`].
    pub name: String,
    /// Trimmed, newlines as LF, at most [`TEXT_MAX_CHARS`].
    pub text: String,
    /// RFC 3339, UTC, millisecond precision: MongoDB dates carry milliseconds,
    /// so both stores agree on what a round trip gives back.
    #[serde(with = "rfc3339_millis")]
    pub datetime: OffsetDateTime,
}

/// A message that passed validation and is about to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The id it will be stored under (see [`Message::id`]).
    pub id: String,
    /// As [`Message::name`].
    pub name: String,
    /// As [`Message::text`].
    pub text: String,
}

impl NewMessage {
    /// Validates user input. `id` is the client's idempotency key; without one
    /// the server makes a time-ordered id.
    pub fn validate(name: &str, text: &str, id: Option<&str>) -> Result<Self, Invalid> {
        let name = validate_name(name)?;
        let text = normalize(text);
        check_len("text", &text, TEXT_MAX_CHARS)?;
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

    /// The same post again: what an idempotent retry must match, against a
    /// name and text as a store holds them, whoever wrote them. Each is
    /// taken through the rules of a post, and must then be this post's: a
    /// message stored by an older version may keep what the rules now
    /// mend (format characters at a name's ends, a name not in NFC), and
    /// the same body retried after an upgrade is still the same post. One
    /// those rules refuse (too long, a control character, a bidi control in
    /// a name, nothing visible) is no post's, whatever a read shows in its
    /// place.
    pub fn same_as_stored(&self, name: &str, text: &str) -> bool {
        let name =
            self.name == name || validate_name(name).is_ok_and(|current| current == self.name);
        let text = self.text == text || normalize(text) == self.text;
        name && text
    }

    /// The message as stored at `datetime`, truncated to milliseconds.
    pub fn into_message(self, datetime: OffsetDateTime) -> Message {
        Message {
            id: self.id,
            name: self.name,
            text: self.text,
            datetime: truncate_to_millis(datetime),
        }
    }
}

/// Validates a name by the rules of a posted one, and returns it as it
/// would be stored (trimmed, NFC).
///
/// Errors: the first rule the name breaks, with `field` `name`.
pub fn validate_name(name: &str) -> Result<String, Invalid> {
    // NFC first, so the same name typed two ways (a precomposed `é` or
    // `e` + U+0301) is one name, and is counted as it is stored.
    let typed: String = normalize(name).nfc().collect();
    let name = trim_invisible_ends(&typed).to_owned();
    if name.is_empty() && !typed.is_empty() {
        // Typed, but only characters that show as nothing.
        return Err(invisible_name());
    }
    check_len("name", &name, NAME_MAX_CHARS)?;
    // A name is one line: a newline or tab in it would only break layouts.
    if name.chars().any(char::is_control) {
        return Err(Invalid::new(
            "name",
            "name must not contain control characters",
        ));
    }
    // The line and paragraph separators (general categories Zl and Zp,
    // one character each) break a line as a newline does.
    if let Some(c) = name.chars().find(|c| matches!(c, '\u{2028}' | '\u{2029}')) {
        return Err(Invalid::new(
            "name",
            format!(
                "name must be one line: it must not contain a line or paragraph separator \
                 (found U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    check_name_is_shown_as_typed(&name)?;
    Ok(name)
}

/// Why input was refused, and which field was at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The input field at fault: `name`, `text` or `id`; the API's error
    /// body repeats it as `field`.
    pub field: &'static str,
    /// One sentence for the user, naming the rule broken.
    pub message: String,
}

impl Invalid {
    /// A refusal of `field` because of `message`.
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

/// The name rules beyond length and control characters, each its own error:
///
/// - no Bidi_Control character (U+061C, U+200E, U+200F, U+202A–U+202E,
///   U+2066–U+2069): they exist to reorder text, and in a name they would
///   reorder the time and text shown beside it;
/// - at least one visible character (see [`is_visible`]): a name made only
///   of zero-width, blank or filler characters shows as nothing, and the
///   message looks anonymous.
///
/// Texts keep bidi controls (people write mixed-direction text with them);
/// the page isolates every name and text instead.
fn check_name_is_shown_as_typed(name: &str) -> Result<(), Invalid> {
    let bidi_control = CodePointSetData::new::<BidiControl>();
    if let Some(c) = name.chars().find(|&c| bidi_control.contains(c)) {
        return Err(Invalid::new(
            "name",
            format!(
                "name must not contain bidirectional control characters (found U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    if !name.chars().any(is_visible) {
        return Err(invisible_name());
    }
    Ok(())
}

/// The refusal of a name made only of characters that show as nothing.
fn invisible_name() -> Invalid {
    Invalid::new(
        "name",
        "name must contain a visible character, not only invisible or blank ones",
    )
}

/// U+2800, the braille cell with no dot raised (see [`is_visible`]).
const BRAILLE_PATTERN_BLANK: char = '\u{2800}';

/// Whether `c` shows as something on its own, by Unicode properties
/// (ICU's data) with one exception: not White_Space, not
/// Default_Ignorable_Code_Point (zero-width characters, joiners, variation
/// selectors, the Hangul fillers), not a format character (Cf), separator
/// (Z*) or control (Cc), and not a combining mark (M*), which only draws on
/// the character before it.
///
/// One graphic character shows as nothing too: U+2800 BRAILLE PATTERN
/// BLANK, a symbol (So) whose glyph is the braille cell with no dot raised.
/// No Unicode property sets it apart from the other 255 patterns, so it is
/// named here; it is the blank that "invisible name" tricks use once the
/// Hangul fillers (default ignorable) are refused.
pub fn is_visible(c: char) -> bool {
    if c == BRAILLE_PATTERN_BLANK {
        return false;
    }
    const INVISIBLE: GeneralCategoryGroup = GeneralCategoryGroup::Format
        .union(GeneralCategoryGroup::Separator)
        .union(GeneralCategoryGroup::Control)
        .union(GeneralCategoryGroup::Mark);
    !(CodePointSetData::new::<WhiteSpace>().contains(c)
        || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
        || INVISIBLE.contains(CodePointMapData::<GeneralCategory>::new().get(c)))
}

/// `name` without what shows as nothing at either end: white space,
/// format characters (general category Cf: zero-width space and joiners,
/// the byte order mark, soft hyphen, word joiner), the other
/// Default_Ignorable_Code_Point characters (the combining grapheme joiner,
/// the Hangul fillers, variation selectors that select nothing) and U+2800
/// BRAILLE PATTERN BLANK. There they join or separate nothing, so
/// `U+FEFF` + `ann`, `ann` + `U+FE0F` or `ann` + `U+3164` would be a
/// second `ann` that looks like the first. Inside a name they stay (a ZWNJ
/// in a Persian word, the ZWJ of an emoji sequence). At the end a
/// variation selector stays where it selects a glyph (see
/// [`selects_a_variant`]), and so does an emoji tag sequence (a
/// subdivision flag, 🏴 then tag characters, Cf, then CANCEL TAG): it is
/// drawn as one flag. A post's name is trimmed so, and so is the name of a
/// document another app wrote when it is read.
pub fn trim_invisible_ends(name: &str) -> &str {
    // Bidi controls are format characters too, but a name may not hold
    // one anywhere: left for that rule's own error.
    let bidi_control = CodePointSetData::new::<BidiControl>();
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    let invisible = |c: char| {
        c.is_whitespace()
            || c == BRAILLE_PATTERN_BLANK
            || ((ignorable.contains(c)
                || CodePointMapData::<GeneralCategory>::new().get(c) == GeneralCategory::Format)
                && !bidi_control.contains(c))
    };
    let mut kept = name.trim_start_matches(invisible);
    while !ends_with_emoji_tag_sequence(kept) {
        let mut back = kept.chars().rev();
        match (back.next(), back.next()) {
            (Some(c), Some(base)) if selects_a_variant(base, c) => break,
            (Some(c), _) if invisible(c) => kept = &kept[..kept.len() - c.len_utf8()],
            _ => break,
        }
    }
    kept
}

/// Whether the variation selector `selector` after `base` may select a
/// glyph of it, by where Unicode defines variation sequences
/// (<https://www.unicode.org/faq/vs.html>): VS15 and VS16 (text and emoji
/// presentation) after an emoji, the other selectors after an ideograph
/// (ideographic variation sequences and the CJK compatibility
/// ideographs), a Mongolian letter (the free variation selectors choose its
/// form) or a symbol (the standardized variants of mathematical and other
/// symbols). After a letter of another script, `ann` + `U+FE0F`, nothing
/// is defined and nothing changes. Not a variation selector: `false`.
fn selects_a_variant(base: char, selector: char) -> bool {
    if !CodePointSetData::new::<VariationSelector>().contains(selector) {
        return false;
    }
    if matches!(selector, '\u{FE0E}' | '\u{FE0F}') {
        return CodePointSetData::new::<Emoji>().contains(base);
    }
    CodePointSetData::new::<Ideographic>().contains(base)
        || CodePointMapData::<Script>::new().get(base) == Script::Mongolian
        || GeneralCategoryGroup::Symbol
            .contains(CodePointMapData::<GeneralCategory>::new().get(base))
}

/// Whether `s` ends with an emoji tag sequence: an emoji, one or more tag
/// characters (U+E0020 to U+E007E), then CANCEL TAG (U+E007F), as UTS #51
/// defines it (ED-14a, <https://www.unicode.org/reports/tr51/#def_emoji_tag_sequence>).
fn ends_with_emoji_tag_sequence(s: &str) -> bool {
    let mut back = s.chars().rev();
    if back.next() != Some('\u{E007F}') {
        return false;
    }
    let mut tags = 0;
    for c in back {
        if ('\u{E0020}'..='\u{E007E}').contains(&c) {
            tags += 1;
        } else {
            return tags > 0 && CodePointSetData::new::<Emoji>().contains(c);
        }
    }
    false
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

/// `t` without its sub-millisecond part: MongoDB dates hold milliseconds, so
/// both stores keep exactly this.
pub fn truncate_to_millis(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1_000_000).unwrap_or(t)
}

/// How far behind the newest message's datetime the clock may be and a
/// new message still get that datetime rather than the clock's: a clock
/// NTP steps back a little keeps times in store order. Further behind,
/// the clock's time is taken (and warned of): one post made with a clock
/// far ahead must not stamp every later message with its time. Store
/// order never depends on datetimes, so either is in order.
pub const CLOCK_SLACK_MILLIS: i64 = 1_000;

/// The datetime, in Unix milliseconds, of a message stored at `now` after
/// one stamped `newest`: `newest` when the clock is behind it by at most
/// [`CLOCK_SLACK_MILLIS`], else `now`.
pub fn stamp_millis(now: i64, newest: i64) -> i64 {
    if now < newest && newest - now <= CLOCK_SLACK_MILLIS {
        newest
    } else {
        now
    }
}

/// Says in the log, at most once a minute, that this machine's clock is
/// behind the newest message's datetime by more than
/// [`CLOCK_SLACK_MILLIS`]: new messages then carry times earlier than
/// older ones (in store order all the same), which readers see.
#[derive(Debug, Default)]
pub struct ClockBehind {
    warned: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ClockBehind {
    /// A message is being stamped while the clock is `behind` ms behind
    /// the newest message's datetime (no warning up to
    /// [`CLOCK_SLACK_MILLIS`]); `store` names the store in the warning.
    pub fn check(&self, store: &str, behind: i64) {
        if behind <= CLOCK_SLACK_MILLIS {
            return;
        }
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(60)) {
            return;
        }
        *warned = Some(std::time::Instant::now());
        log::warn!(
            "{store}: this machine's clock is {:.1} s behind the newest message's time; new \
             messages get the clock's time, earlier than that message's (their order is the \
             store's all the same). Check the clock (timedatectl), or whether that message \
             was posted while it was ahead",
            behind as f64 / 1000.0
        );
    }
}

/// The current time in UTC, to the millisecond: the precision a stored
/// message's datetime has.
pub fn now_millis() -> OffsetDateTime {
    truncate_to_millis(OffsetDateTime::now_utc())
}

mod rfc3339_millis {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use time::{format_description::well_known::Rfc3339, OffsetDateTime, UtcOffset};

    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );

    /// RFC 3339 in UTC with exactly three fraction digits, e.g.
    /// `2024-05-01T12:00:00.250Z`, as the API shows [`super::Message::datetime`].
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

    fn name_error(name: &str) -> Invalid {
        NewMessage::validate(name, "hi", None).unwrap_err()
    }

    #[test]
    fn names_refuse_every_bidi_control_and_texts_keep_them() {
        for c in [
            '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
            '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ] {
            let e = name_error(&format!("ann{c}"));
            assert_eq!(e.field, "name");
            assert!(
                e.message.contains(&format!(
                    "bidirectional control characters (found U+{:04X})",
                    u32::from(c)
                )),
                "{e}"
            );
            let m = NewMessage::validate("ann", &format!("abc{c}def"), None).unwrap();
            assert!(m.text.contains(c), "texts keep U+{:04X}", u32::from(c));
        }
        // Right-to-left letters are not controls.
        assert_eq!(
            NewMessage::validate("עמית", "hi", None).unwrap().name,
            "עמית"
        );
        assert!(NewMessage::validate("علي", "hi", None).is_ok());
    }

    #[test]
    fn names_of_only_invisible_or_blank_characters_are_refused() {
        for name in [
            "\u{200B}",                 // zero-width space (Cf, default ignorable)
            "\u{200B}\u{200C}\u{200D}", // zero-width space, non-joiner, joiner
            "\u{2060}\u{FEFF}",         // word joiner, zero-width no-break space
            "\u{3164}",                 // Hangul filler (Lo, but default ignorable)
            "\u{115F}\u{1160}\u{FFA0}", // the other Hangul fillers
            "\u{00AD}",                 // soft hyphen
            "\u{034F}",                 // combining grapheme joiner
            "\u{FE0F}",                 // a variation selector alone
            "\u{00A0}\u{2003}\u{3000}", // no-break, em and ideographic spaces
            "\u{0301}\u{0301}",         // combining marks with nothing to sit on
            "\u{1D173}",                // musical symbol begin beam (Cf, outside the BMP)
            "\u{E0041}",                // a tag character
            "\u{2800}\u{2800}",         // braille pattern blank (So, but no dot)
            "\u{2800}\u{200B}\u{3164}", // the blanks together
        ] {
            let e = name_error(name);
            assert_eq!(e.field, "name", "{name:?}");
            assert!(
                e.message.contains("visible character") || e.message.contains("must not be empty"),
                "{name:?}: {e}"
            );
        }
        // One visible character is enough.
        assert!(NewMessage::validate("\u{200B}a", "hi", None).is_ok());
        assert!(NewMessage::validate("\u{2800}\u{2801}", "hi", None).is_ok());
        assert!(NewMessage::validate("👍🏽", "hi", None).is_ok());
        assert!(NewMessage::validate("👨\u{200D}👩\u{200D}👧", "hi", None).is_ok());
        assert!(NewMessage::validate("می\u{200C}خواهم", "hi", None).is_ok());
        // Texts are not held to it: a text of only a zero-width space is a text.
        assert!(NewMessage::validate("ann", "\u{200B}", None).is_ok());
    }

    /// A format character or space at either end of a name shows as
    /// nothing, so it would make a second name that looks like the first;
    /// inside a name format characters stay, and a name is one line.
    #[test]
    fn names_lose_invisible_characters_at_their_ends_and_stay_one_line() {
        for (typed, stored) in [
            ("\u{FEFF}ann", "ann"),
            ("ann\u{200B}", "ann"),
            (" \u{200D}bob\u{2060}\u{00AD} ", "bob"),
            ("\u{3000}zoe\u{200C}", "zoe"),
            ("می\u{200C}خواهم", "می\u{200C}خواهم"),
            ("👨\u{200D}👩\u{200D}👧", "👨\u{200D}👩\u{200D}👧"),
            ("❤\u{FE0F}", "❤\u{FE0F}"),
            // Scotland's flag, and a space after it.
            (
                "Ann \u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F} ",
                "Ann \u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
            ),
            // Tag characters after no emoji draw nothing.
            ("ann\u{E0067}\u{E007F}", "ann"),
            ("\u{1F3F4}\u{E007F}", "\u{1F3F4}"),
            // Default ignorable, blank or selecting nothing at the ends.
            ("ann\u{FE0F}", "ann"),
            ("ann\u{FE0E}\u{FE0F}", "ann"),
            ("\u{FE0F}ann", "ann"),
            ("ann\u{034F}", "ann"),
            ("\u{034F}ann\u{E0100}", "ann"),
            ("ann\u{3164}", "ann"),
            ("\u{115F}\u{1160}ann\u{FFA0}", "ann"),
            ("\u{2800}ann\u{2800}", "ann"),
            ("a\u{2800}b", "a\u{2800}b"),
            // Selecting a glyph at the end: an emoji's presentation, an
            // ideograph's variant, a Mongolian letter's form, a symbol's.
            ("ann \u{263A}\u{FE0F}", "ann \u{263A}\u{FE0F}"),
            ("ann \u{263A}\u{FE0E}", "ann \u{263A}\u{FE0E}"),
            ("\u{845B}\u{E0100}", "\u{845B}\u{E0100}"),
            ("\u{1820}\u{180B}", "\u{1820}\u{180B}"),
            ("a\u{2229}\u{FE00}", "a\u{2229}\u{FE00}"),
            ("\u{845B}\u{FE0F}", "\u{845B}"),
        ] {
            let message = NewMessage::validate(typed, "hi", None).unwrap();
            assert_eq!(message.name, stored, "{typed:?}");
        }
        for name in ["a\u{2028}b", "a\u{2029}b"] {
            let e = name_error(name);
            assert_eq!(e.field, "name");
            assert!(e.message.contains("one line"), "{name:?}: {e}");
        }
        // Texts keep theirs.
        let text = NewMessage::validate("ann", "\u{FEFF}hi\u{2028}there", None).unwrap();
        assert_eq!(text.text, "\u{FEFF}hi\u{2028}there");
    }

    #[test]
    fn names_are_stored_nfc_so_one_name_typed_two_ways_is_one_name() {
        let composed = NewMessage::validate("Ren\u{00E9}e", "hi", None).unwrap();
        let decomposed = NewMessage::validate("Rene\u{0301}e", "hi", None).unwrap();
        assert_eq!(composed.name, "Ren\u{00E9}e");
        assert_eq!(decomposed.name, composed.name);
        // Counted as stored: 64 decomposed letters are 64 characters in NFC.
        assert!(NewMessage::validate(&"e\u{0301}".repeat(64), "hi", None).is_ok());
        // Texts are stored as sent.
        let text = NewMessage::validate("a", "e\u{0301}", None).unwrap();
        assert_eq!(text.text, "e\u{0301}");
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

    /// A stored name and text are this post when today's rules make them
    /// its own; one those rules refuse is no post's, even when the post
    /// repeats what a read shows for it.
    #[test]
    fn a_stored_name_and_text_are_compared_under_todays_rules() {
        let post = NewMessage::validate("Zo\u{eb}", "line one\nline two", None).unwrap();
        // Not NFC, untrimmed, CRLF, format characters at the name's ends.
        assert!(post.same_as_stored("Zoe\u{308}", "line one\nline two"));
        assert!(post.same_as_stored(" \u{feff}Zoe\u{308}\u{200b}", " line one\r\nline two\n"));
        assert!(!post.same_as_stored("Zoe", "line one\nline two"));
        assert!(!post.same_as_stored("Zo\u{eb}", "line one"));
        // Refused by today's rules: a bidi control, a control character, a
        // name too long, whatever stands in their place when shown.
        let shown = NewMessage::validate("eve\u{fffd}x", "a\u{fffd}b", None).unwrap();
        assert!(!shown.same_as_stored("eve\u{202e}x", "a\u{fffd}b"));
        assert!(!shown.same_as_stored("eve\u{fffd}x", "a\u{0}b"));
        let long = "n".repeat(NAME_MAX_CHARS + 1);
        let shown_cut = format!("{}\u{2026}", &long[..NAME_MAX_CHARS - 1]);
        let cut = NewMessage::validate(&shown_cut, "hi", None).unwrap();
        assert!(!cut.same_as_stored(&long, "hi"));
    }
}
