//! The fixed-width tables every operator command prints by default: a
//! header row, then one row per item, columns left-aligned and two spaces
//! apart, no trailing blanks. Widths count characters, not bytes.

/// Render `headers` and `rows` (each row as many cells as headers) as lines
/// ending in `\n`.
pub fn render<R: AsRef<[String]>>(headers: &[&str], rows: &[R]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.as_ref().iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn columns_line_up_by_characters_without_trailing_blanks() {
        let rows = vec![
            vec!["ağent".to_owned(), "x".to_owned()],
            vec!["b".to_owned(), String::new()],
        ];
        assert_eq!(render(&["ID", "NOTE"], &rows), "ID     NOTE\nağent  x\nb\n");
        assert_eq!(render::<Vec<String>>(&["A", "B"], &[]), "A  B\n");
    }
}
