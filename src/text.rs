//! Text meant for people: one line, bounded.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_and_caps() {
        assert_eq!(one_line("a\nb\t c"), "a b c");
        assert!(one_line(&"x".repeat(1000)).chars().count() <= 401);
        assert!(one_line(&"é".repeat(300)).ends_with('…'));
    }
}
