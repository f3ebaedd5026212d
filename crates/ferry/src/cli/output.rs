//! Plain-text tables and the stdout writer every command prints through.

use std::io::Write;

use super::error::{CliError, Result};

/// An aligned text table: columns separated by two spaces, no trailing
/// blanks, a header row in capitals.
#[derive(Debug, Default)]
pub struct Table {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: Some(header.iter().map(|h| h.to_string()).collect()),
            rows: Vec::new(),
        }
    }

    /// A table without a header, for `KEY  value` summaries.
    pub fn plain() -> Table {
        Table::default()
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let all: Vec<&Vec<String>> = self.header.iter().chain(self.rows.iter()).collect();
        let columns = all.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in &all {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in all {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Writes to stdout. A closed pipe (`ferry consume ... | head`) is reported
/// as `Err(Closed)` so a command can stop cleanly instead of panicking.
#[derive(Debug)]
pub struct Out {
    inner: std::io::BufWriter<std::io::Stdout>,
}

/// Stdout was closed by its reader.
#[derive(Debug)]
pub struct Closed;

impl Out {
    pub fn new() -> Out {
        Out {
            inner: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), Closed> {
        self.inner.write_all(bytes).map_err(|_| Closed)
    }

    pub fn flush(&mut self) -> std::result::Result<(), Closed> {
        self.inner.flush().map_err(|_| Closed)
    }
}

/// Prints text to stdout in one go; a closed stdout is not an error.
pub fn print(text: &str) {
    let mut out = Out::new();
    let _ = out.write(text.as_bytes()).and_then(|()| out.flush());
}

/// Prints a JSON value on one line.
pub fn print_json(value: &serde_json::Value) {
    print(&format!("{value}\n"));
}

/// Splits `KEY=VALUE`.
pub fn key_value(s: &str, flag: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(CliError::local(format!(
            "{flag} expects KEY=VALUE, got {s:?}"
        ))),
    }
}

/// Text for bytes that are usually UTF-8 (keys, values, header values).
pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["NAME", "PARTITIONS"]);
        t.row(["orders", "3"]);
        t.row(["a", ""]);
        assert_eq!(t.render(), "NAME    PARTITIONS\norders  3\na\n");
    }
}
