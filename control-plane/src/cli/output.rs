//! How the API-backed commands print: JSON values on one line, `key: value`
//! lines for one object, fixed-width tables (`super::table`) for lists, and
//! cells cut to one short line.

use std::io::Write;

use serde_json::Value;

use super::api::OperatorError;

pub(super) fn truncate(s: &str, max_chars: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max_chars {
        return one_line;
    }
    let mut out: String = one_line.chars().take(max_chars).collect();
    out.push('…');
    out
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn print_json(v: &Value) -> Result<(), OperatorError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    Ok(())
}

/// One column of a list: its header, where its cell is in each item (a
/// JSON pointer), and the most characters a cell shows (`None`: all).
pub(super) type Column<'a> = (&'a str, &'a str, Option<usize>);

/// A list command's output: the items as one JSON array with `json`, else
/// a table of `columns`.
pub(super) fn print_list(
    items: Vec<Value>,
    json: bool,
    columns: &[Column<'_>],
) -> Result<(), OperatorError> {
    if json {
        return print_json(&Value::Array(items));
    }
    let headers: Vec<&str> = columns.iter().map(|c| c.0).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            columns
                .iter()
                .map(|(_, pointer, max)| {
                    let cell = text(item.pointer(pointer).unwrap_or(&Value::Null));
                    match max {
                        Some(m) => truncate(&cell, *m),
                        None => cell,
                    }
                })
                .collect()
        })
        .collect();
    std::io::stdout()
        .lock()
        .write_all(super::table::render(&headers, &rows).as_bytes())?;
    Ok(())
}

/// A show command's human output: `name: value` lines, one per
/// `(name, JSON pointer)` that is present and not null.
pub(super) fn print_fields(v: &Value, fields: &[(&str, &str)]) -> Result<(), OperatorError> {
    let mut out = std::io::stdout().lock();
    for (name, pointer) in fields {
        let Some(value) = v.pointer(pointer).filter(|x| !x.is_null()) else {
            continue;
        };
        writeln!(out, "{:<16} {}", format!("{name}:"), text(value))?;
    }
    Ok(())
}
