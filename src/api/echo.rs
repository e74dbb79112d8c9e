//! Client input repeated in an error message, bounded and made safe to
//! show: an error names what it refuses (a field, a header's value, an
//! id), and whatever a client sent must neither flood the message nor
//! reorder or break the text around it where it is shown.

use std::borrow::Cow;

use icu_properties::props::BidiControl;
use icu_properties::{CodePointSetData, CodePointSetDataBorrowed};

/// The most characters an echo shows of what a client sent; a longer echo
/// ends with `…` where it was cut.
pub const ECHO_MAX_CHARS: usize = 80;

/// `input` as an error message repeats it: every control character
/// (general category Cc, and the line and paragraph separators U+2028,
/// U+2029) and every bidirectional control (the Unicode Bidi_Control
/// property, such as U+202E) written as a Rust-style escape (`\u{202e}`),
/// a backslash as `\\` so an escape cannot be forged, and at most
/// [`ECHO_MAX_CHARS`] characters of the result, then `…` when cut.
pub fn echo(input: &str) -> String {
    let bidi_control = CodePointSetData::new::<BidiControl>();
    let mut shown = String::new();
    let mut count = 0;
    for c in input.chars() {
        let piece = if c == '\\' {
            "\\\\".to_owned()
        } else if breaks_a_line(c, bidi_control) {
            escape(c)
        } else {
            c.to_string()
        };
        let length = piece.chars().count();
        if count + length > ECHO_MAX_CHARS {
            shown.push('…');
            return shown;
        }
        shown.push_str(&piece);
        count += length;
    }
    shown
}

/// `text` with every control character but newline, every line or
/// paragraph separator and every bidirectional control escaped as [`echo`]
/// escapes them; nothing cut, backslashes kept. For a whole log record,
/// which may carry client input its writer did not echo (Rocket logs each
/// request's target as sent, and hyper lets any UTF-8 through there, such
/// as U+0085 or U+202E): such a character would end the line in some
/// viewers, or reorder it. A newline is kept: hyper refuses it in a target
/// or header, so no client input carries one, and a record with one is
/// meant to span lines.
pub fn escape_in_log(text: &str) -> Cow<'_, str> {
    let bidi_control = CodePointSetData::new::<BidiControl>();
    let escaped = |c: char| c != '\n' && breaks_a_line(c, bidi_control);
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escaped(c) {
            shown.push_str(&escape(c));
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

/// Whether `c` may end or reorder the line it is shown in: a control
/// character (general category Cc), a line or paragraph separator, or a
/// bidirectional control.
fn breaks_a_line(c: char, bidi_control: CodePointSetDataBorrowed<'_>) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || bidi_control.contains(c)
}

/// `c` as a Rust-style escape: `\u{202e}`.
fn escape(c: char) -> String {
    format!("\\u{{{:x}}}", u32::from(c))
}

#[cfg(test)]
mod tests {
    use super::{echo, escape_in_log, ECHO_MAX_CHARS};

    #[test]
    fn a_log_record_keeps_its_lines_and_order() {
        assert_eq!(escape_in_log("GET /a:"), "GET /a:");
        assert_eq!(
            escape_in_log("GET /a\u{202e}b\u{85}c\\d\r:"),
            "GET /a\\u{202e}b\\u{85}c\\d\\u{d}:"
        );
        assert_eq!(escape_in_log("one\ntwo\t"), "one\ntwo\\u{9}");
        let long = "é".repeat(500);
        assert_eq!(escape_in_log(&long), long);
    }

    #[test]
    fn controls_and_bidi_controls_are_escaped_and_long_input_is_cut() {
        assert_eq!(echo("name"), "name");
        assert_eq!(echo("a\u{202e}b\nc\u{2066}"), "a\\u{202e}b\\u{a}c\\u{2066}");
        assert_eq!(echo("a\\u{202e}"), "a\\\\u{202e}");
        assert_eq!(echo("é字"), "é字");
        let long = "x".repeat(200);
        let cut = echo(&long);
        assert_eq!(cut, format!("{}…", "x".repeat(ECHO_MAX_CHARS)));
        assert_eq!(
            echo(&"x".repeat(ECHO_MAX_CHARS)),
            "x".repeat(ECHO_MAX_CHARS)
        );
        // An escape is not split by the cut.
        let escaped = echo(&format!("{}\u{202e}", "x".repeat(ECHO_MAX_CHARS - 3)));
        assert_eq!(escaped, format!("{}…", "x".repeat(ECHO_MAX_CHARS - 3)));
    }
}
