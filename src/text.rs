//! Text meant for people: one line, bounded; client input made safe to
//! show in a line.

use std::borrow::Cow;

use icu_properties::props::{BidiControl, DefaultIgnorableCodePoint, GeneralCategory};
use icu_properties::{CodePointMapData, CodePointSetData, CodePointSetDataBorrowed};

/// Folds control characters and runs of white space into single spaces and
/// caps the result at 400 bytes (then `…`), so an error fits a log line, a
/// JSON reason or a terminal line.
pub fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    // Server-selection messages list every server's full description; the
    // first few hundred characters say what matters.
    const MAX: usize = 400;
    if out.len() > MAX {
        let mut end = MAX;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

/// `text` with every character [`needs_escape`] names, but newline,
/// written as [`escape`] writes it (as an error echoes client input,
/// `crate::api::echo`); nothing cut, backslashes kept. For a whole log
/// record, which may carry client input its writer did not echo (Rocket
/// logs each request's target as sent, and hyper lets any UTF-8 through
/// there, such as U+0085 or U+202E): such a character would end the line in
/// some viewers, or reorder it. A newline is kept: hyper refuses it in a
/// target or header, so no client input carries one, and a record with one
/// is meant to span lines.
pub fn escape_in_log(text: &str) -> Cow<'_, str> {
    let bidi_control = CodePointSetData::new::<BidiControl>();
    let escaped = |c: char| c != '\n' && needs_escape(c, bidi_control);
    escape_where(text, escaped)
}

/// `text` with every character that shows as nothing or changes how the
/// text around it is drawn written as [`escape`] writes it (`\u{202e}`);
/// nothing cut, backslashes kept. Those are the ones [`needs_escape`] names
/// (controls, line and paragraph separators, bidirectional controls) and
/// the other invisible ones: format characters (general category Cf: the
/// zero-width space and joiners, the byte order mark, the soft hyphen, tag
/// characters) and Default_Ignorable_Code_Point characters (variation
/// selectors, the Hangul fillers). For a text the server wrote but a client
/// can hand back changed, such as a refused form post's error kept in a
/// cookie: the server's own texts hold none of them (what an error repeats
/// of client input is escaped the same way, `crate::api::echo`), so such a
/// text reads as written, and a forged one shows what it holds instead of
/// reordering or hiding it.
pub fn escape_invisible(text: &str) -> Cow<'_, str> {
    let bidi_control = CodePointSetData::new::<BidiControl>();
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    let categories = CodePointMapData::<GeneralCategory>::new();
    let escaped = |c: char| {
        needs_escape(c, bidi_control)
            || categories.get(c) == GeneralCategory::Format
            || ignorable.contains(c)
    };
    escape_where(text, escaped)
}

/// `text` with each character `escaped` names written as [`escape`]
/// writes it; borrowed when there is none.
fn escape_where(text: &str, escaped: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(&escaped) {
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

/// Whether `c` is written as an escape where client input is shown: a
/// control character (general category Cc) or a line or paragraph
/// separator, which may end the line it is in, or a bidirectional control
/// (the Unicode Bidi_Control property), which may reorder it.
pub fn needs_escape(c: char, bidi_control: CodePointSetDataBorrowed<'_>) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || bidi_control.contains(c)
}

/// `c` as a Rust-style escape: `\u{202e}`.
pub fn escape(c: char) -> String {
    format!("\\u{{{:x}}}", u32::from(c))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn invisible_and_reordering_characters_show_as_escapes() {
        let written = "name must be at most 64 characters (got 65): \\u{202e} é字 👍🏽";
        assert_eq!(escape_invisible(written), written);
        assert_eq!(
            escape_invisible("a\u{202e}b\u{2067}c\u{200b}d\u{feff}e\u{ad}f\u{e0041}g"),
            "a\\u{202e}b\\u{2067}c\\u{200b}d\\u{feff}e\\u{ad}f\\u{e0041}g"
        );
        assert_eq!(
            escape_invisible("x\u{fe0f}\u{3164}\u{2028}\n\u{85}"),
            "x\\u{fe0f}\\u{3164}\\u{2028}\\u{a}\\u{85}"
        );
    }

    #[test]
    fn folds_and_caps() {
        assert_eq!(one_line("a\nb\t c"), "a b c");
        assert!(one_line(&"x".repeat(1000)).chars().count() <= 401);
        assert!(one_line(&"é".repeat(300)).ends_with('…'));
    }
}
