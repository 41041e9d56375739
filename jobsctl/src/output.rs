//! What the management commands print: under `--json` the API's JSON as it came (one document)
//! or one compact document per line (NDJSON) when there are several; otherwise tables for
//! people. Nothing here decides anything.

use std::io::Write;

use chrono::{DateTime, Utc};
use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use serde_json::Value;

/// A table with a header row and no borders, like `ps` or `kubectl get`.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(
            header
                .iter()
                .map(|h| Cell::new(h.to_uppercase()))
                .collect::<Vec<_>>(),
        );
    t
}

/// A two-column table of names and values.
pub fn fields(rows: &[(&str, String)]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    for (k, v) in rows {
        t.add_row(vec![Cell::new(format!("{k}:")), Cell::new(v)]);
    }
    t
}

/// Right-aligns the columns at `indexes` (numbers).
pub fn numeric(t: &mut Table, indexes: &[usize]) {
    for i in indexes {
        if let Some(c) = t.column_mut(*i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Prints a table: columns two spaces apart, no padding at either end of a line.
pub fn print_table(t: &Table) {
    let mut t = t.clone();
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in t.lines() {
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// The body as it came, on one line of its own.
pub fn print_raw(text: &str) {
    println!("{}", text.trim_end());
}

/// One compact JSON document per line.
pub fn print_ndjson(v: &Value) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}

/// A JSON string as text, anything else as compact JSON, `-` for null.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A compact JSON rendering cut to `max` characters.
pub fn short_json(v: &Value, max: usize) -> String {
    let s = match v {
        Value::Null => return "-".into(),
        other => other.to_string(),
    };
    if s.chars().count() <= max {
        return s;
    }
    let cut: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC); other values as they are.
pub fn time(v: &Value) -> String {
    match v.as_str().map(DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => t
            .with_timezone(&Utc)
            .format("%Y-%m-%d %H:%M:%SZ")
            .to_string(),
        _ => text(v),
    }
}

/// `n/m` attempts.
pub fn attempts(job: &Value) -> String {
    format!("{}/{}", text(&job["attempts"]), text(&job["max_attempts"]))
}

/// The last error of a job as `CODE: message`.
pub fn last_error(job: &Value) -> String {
    let e = &job["last_error"];
    if e.is_null() {
        return "-".into();
    }
    let message = e["message"].as_str().unwrap_or_default();
    let message: String = message
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(80)
        .collect();
    match e["code"].as_str() {
        Some(c) => format!("{c}: {message}"),
        None => message,
    }
}

/// The list footer: how many, and how to see more.
pub fn more(shown: usize, page: &Value, noun: &str) {
    if page["has_more"] == Value::Bool(true) {
        if let Some(c) = page["next_cursor"].as_str() {
            println!("\n{shown} {noun} shown; more with --cursor {c} (or --all)");
            return;
        }
    }
    if shown == 0 {
        println!("no {noun}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_read_as_utc_seconds() {
        assert_eq!(
            time(&json!("2026-12-01T10:00:00.123+01:00")),
            "2026-12-01 09:00:00Z"
        );
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn long_json_is_cut() {
        assert_eq!(short_json(&json!({"a": 1}), 20), "{\"a\":1}");
        assert_eq!(short_json(&json!("abcdefgh"), 5), "\"abc…");
    }
}
