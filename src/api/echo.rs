//! Client input repeated in an error message, bounded and made safe to
//! show: an error names what it refuses (a field, a header's value, an
//! id), and whatever a client sent must neither flood the message nor
//! reorder or break the text around it where it is shown.

use icu_properties::props::BidiControl;
use icu_properties::CodePointSetData;

use crate::text::{escape, needs_escape};

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
        } else if needs_escape(c, bidi_control) {
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

#[cfg(test)]
mod tests {
    use super::{echo, ECHO_MAX_CHARS};

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
