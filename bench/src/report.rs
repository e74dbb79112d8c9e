//! The printed result: Markdown tables (readable in a terminal, pasted as
//! they are into `docs/performance.md`) and the unit formatting they use.

use hdrhistogram::Histogram;

/// A table with a header row; columns are padded to their widest cell.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it should have as many cells as the header.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as Markdown, one line per row, ending with a newline.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = (0..columns)
                .map(|i| {
                    let cell = cells.get(i).map(String::as_str).unwrap_or("");
                    format!("{cell:<width$}", width = widths[i])
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = line(&self.header);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("| {} |\n", rule.join(" | ")));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// A duration given in microseconds: `850 µs`, `2.91 ms`, `1.20 s`.
pub fn micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// The median and 99th percentile of a latency histogram in µs, or `-`
/// for an empty one.
pub fn p50_p99(latency: &Histogram<u64>) -> (String, String) {
    if latency.is_empty() {
        return ("-".into(), "-".into());
    }
    (
        micros(latency.value_at_quantile(0.5)),
        micros(latency.value_at_quantile(0.99)),
    )
}

/// A byte count (possibly negative, for a difference) in B, KiB or MiB.
pub fn bytes(b: f64) -> String {
    let magnitude = b.abs();
    if magnitude < 1024.0 {
        format!("{b:.0} B")
    } else if magnitude < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    }
}

/// A whole number with thousands separators: `19,312`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(2_914), "2.91 ms");
        assert_eq!(micros(1_200_000), "1.20 s");
        assert_eq!(bytes(-2048.0), "-2.0 KiB");
        assert_eq!(bytes(36_557.0), "35.7 KiB");
        assert_eq!(count(19_312), "19,312");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000_000), "1,000,000");
    }
}
