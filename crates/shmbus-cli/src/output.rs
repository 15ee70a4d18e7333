//! Writing results: stdout that tolerates a closed pipe, aligned tables, sizes and times.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::CliError;

/// Standard output. A closed pipe (`shmbus echo t | head`) becomes [`CliError::BrokenPipe`],
/// which `main` turns into a quiet exit.
#[derive(Debug)]
pub(crate) struct Out {
    w: io::BufWriter<io::Stdout>,
}

impl Out {
    /// Buffered standard output.
    pub(crate) fn new() -> Out {
        Out {
            w: io::BufWriter::new(io::stdout()),
        }
    }

    /// Writes `s` as it is.
    pub(crate) fn put(&mut self, s: &str) -> Result<(), CliError> {
        self.w.write_all(s.as_bytes()).map_err(CliError::output)
    }

    /// Writes `s` and a newline.
    pub(crate) fn line(&mut self, s: &str) -> Result<(), CliError> {
        self.put(s)?;
        self.put("\n")
    }

    /// Writes `value` as one line of compact JSON.
    pub(crate) fn json<T: serde::Serialize>(&mut self, value: &T) -> Result<(), CliError> {
        let s = serde_json::to_string(value).map_err(|e| CliError::output(io::Error::other(e)))?;
        self.line(&s)
    }

    /// Writes `value` as pretty JSON (one document).
    pub(crate) fn json_pretty<T: serde::Serialize>(&mut self, value: &T) -> Result<(), CliError> {
        let s = serde_json::to_string_pretty(value)
            .map_err(|e| CliError::output(io::Error::other(e)))?;
        self.line(&s)
    }

    /// Sends what is buffered (streaming commands call it after every message).
    pub(crate) fn flush(&mut self) -> Result<(), CliError> {
        self.w.flush().map_err(CliError::output)
    }
}

/// A table printed in aligned columns, two spaces apart.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub(crate) fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty, extra cells are dropped).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether the table has no rows.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, a newline after every line; `indent` spaces before each line.
    pub(crate) fn render(&self, indent: usize) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let empty = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = " ".repeat(indent);
            for (i, w) in widths.iter().enumerate() {
                let cell = row.get(i).unwrap_or(&empty);
                line.push_str(cell);
                if i + 1 < n {
                    let pad = w.saturating_sub(cell.chars().count()) + 2;
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `bytes` in binary units: `512 B`, `4.0 KiB`, `1.5 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A Unix time in nanoseconds as `YYYY-MM-DD hh:mm:ss UTC`.
pub(crate) fn utc(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How long ago `unix_ns` was, roughly (`3 s ago`, `2 h ago`); empty if in the future.
pub(crate) fn age(unix_ns: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let Some(s) = now.checked_sub(unix_ns).map(|ns| ns / 1_000_000_000) else {
        return String::new();
    };
    match s {
        0..120 => format!("{s} s ago"),
        120..7200 => format!("{} min ago", s / 60),
        7200..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// Year, month, day of the day `days` after 1970-01-01 (proleptic Gregorian calendar; the
/// usual era-based conversion: 400-year eras of 146097 days, years starting in March).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["KIND", "NAME", "X"]);
        t.row(vec!["topic".into(), "a.b".into(), "1".into()]);
        t.row(vec!["semaphore".into(), "é".into()]);
        assert_eq!(
            t.render(0),
            "KIND       NAME  X\ntopic      a.b   1\nsemaphore  é\n"
        );
    }

    #[test]
    fn sizes_and_dates() {
        assert_eq!(size(100), "100 B");
        assert_eq!(size(8192), "8.0 KiB");
        assert_eq!(size(3 << 20), "3.0 MiB");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_000_000_000), "2023-11-14 22:13:20 UTC");
    }
}
