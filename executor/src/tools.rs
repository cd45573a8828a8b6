//! The file tools of `agent_toolset_20260401`: `read`, `write`, `edit`,
//! `glob`, `grep`. Each takes the published JSON input and returns content
//! blocks plus `is_error`; bad input and failures are tool errors with a
//! message naming the path or field, never panics.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use protocol::executor::ExecutorSettings;
use serde::Deserialize;
use serde_json::{json, Value};

/// A tool's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Content blocks.
    pub content: Vec<Value>,
    /// Whether the tool failed.
    pub is_error: bool,
    /// The command's exit status (`bash` only, when it ran to its end).
    pub exit_code: Option<i32>,
}

impl Output {
    /// A text result.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            content: vec![json!({"type": "text", "text": text.into()})],
            is_error: false,
            exit_code: None,
        }
    }
    /// A tool error.
    pub fn error(text: impl Into<String>) -> Self {
        Self {
            content: vec![json!({"type": "text", "text": text.into()})],
            is_error: true,
            exit_code: None,
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(tool: &str, input: &Value) -> Result<T, Output> {
    T::deserialize(input).map_err(|e| Output::error(format!("invalid input for {tool}: {e}")))
}

/// Resolve `path` against the working directory.
pub fn resolve(workdir: &str, path: &str) -> PathBuf {
    let p = Path::new(path);
    let joined = if p.is_absolute() {
        p.to_owned()
    } else {
        Path::new(workdir).join(p)
    };
    // Drop `.` components so results read `/workspace/src`, not `/workspace/./src`.
    joined.components().collect()
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> Output {
    let reason = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    };
    Output::error(format!("cannot {what} {}: {reason}", path.display()))
}

fn is_binary(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(8192)].contains(&0) || std::str::from_utf8(bytes).is_err()
}

fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadInput {
    file_path: String,
    #[serde(default)]
    view_range: Option<Vec<i64>>,
}

/// `read`: a text file with line numbers (optionally a 1-based inclusive
/// range; end <= 0 means to the end), an image block, or a PDF document block.
pub fn read(s: &ExecutorSettings, input: &Value) -> Output {
    let i: ReadInput = match parse("read", input) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let path = resolve(&s.workdir, &i.file_path);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) => return io_error("read", &path, &e),
    };
    if meta.is_dir() {
        return Output::error(format!(
            "{} is a directory, not a file (use glob or bash ls)",
            path.display()
        ));
    }
    let range = match &i.view_range {
        None => None,
        Some(r) if r.len() == 2 => {
            if r[0] < 1 {
                return Output::error(format!("view_range start must be >= 1, got {}", r[0]));
            }
            if r[1] > 0 && r[1] < r[0] {
                return Output::error(format!("view_range end {} is before start {}", r[1], r[0]));
            }
            Some((
                r[0] as usize,
                if r[1] <= 0 { usize::MAX } else { r[1] as usize },
            ))
        }
        Some(r) => {
            return Output::error(format!(
                "view_range must be [start, end], got {} numbers",
                r.len()
            ))
        }
    };
    let size = meta.len();
    let media_limit = s.image_max_bytes.max(s.file_max_bytes);
    if size > s.file_max_bytes && (range.is_none() || size > 64 * media_limit) {
        // Peek: an image or a PDF gets its own limit.
        let head = std::fs::File::open(&path)
            .and_then(|mut f| {
                let mut b = [0u8; 16];
                let n = std::io::Read::read(&mut f, &mut b)?;
                Ok(b[..n].to_vec())
            })
            .unwrap_or_default();
        let media = image_type(&head).is_some() || head.starts_with(b"%PDF-");
        if !media || size > media_limit * 4 {
            return Output::error(format!(
                "{} is {size} bytes, more than the {}-byte limit; pass view_range to read part of it, or use bash (head, sed -n)",
                path.display(),
                s.file_max_bytes
            ));
        }
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => return io_error("read", &path, &e),
    };
    if let Some(mt) = image_type(&bytes) {
        if bytes.len() as u64 > s.image_max_bytes {
            return Output::error(format!(
                "{} is a {mt} image of {} bytes, more than the {}-byte image limit",
                path.display(),
                bytes.len(),
                s.image_max_bytes
            ));
        }
        let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
        return Output {
            content: vec![
                json!({"type": "image", "source": {"type": "base64", "media_type": mt, "data": data}}),
            ],
            is_error: false,
            exit_code: None,
        };
    }
    if bytes.starts_with(b"%PDF-") {
        let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
        return Output {
            content: vec![
                json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}}),
            ],
            is_error: false,
            exit_code: None,
        };
    }
    if is_binary(&bytes) {
        return Output::error(format!(
            "{} is a binary file ({} bytes); read shows text, images and PDFs only (try bash: xxd, file)",
            path.display(),
            bytes.len()
        ));
    }
    let text = String::from_utf8_lossy(&bytes);
    if text.is_empty() {
        return Output::text(format!("<{} is empty>", path.display()));
    }
    let (start, end) = range.unwrap_or((1, usize::MAX));
    let total_lines = text.lines().count();
    if start > total_lines {
        return Output::error(format!(
            "view_range start {start} is beyond the end of {} ({total_lines} lines)",
            path.display()
        ));
    }
    let mut out = String::with_capacity(text.len() + total_lines * 8);
    for (n, line) in text.lines().enumerate().skip(start - 1) {
        let n = n + 1;
        if n > end {
            break;
        }
        out.push_str(&format!("{n:>6}\t{line}\n"));
        if out.len() as u64 > s.file_max_bytes.max(64 * 1024) * 2 {
            out.push_str(&format!(
                "[output truncated at line {n} of {total_lines}; use view_range for more]\n"
            ));
            break;
        }
    }
    Output::text(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteInput {
    file_path: String,
    content: String,
}

/// `write`: create or overwrite a file, creating parent directories.
pub fn write(s: &ExecutorSettings, input: &Value) -> Output {
    let i: WriteInput = match parse("write", input) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let path = resolve(&s.workdir, &i.file_path);
    if path.is_dir() {
        return Output::error(format!("{} is a directory", path.display()));
    }
    if let Some(parent) = path.parent() {
        if let Err(e) = std::fs::create_dir_all(parent) {
            return io_error("create directory", parent, &e);
        }
    }
    match std::fs::write(&path, i.content.as_bytes()) {
        Ok(()) => Output::text(format!(
            "wrote {} bytes to {}",
            i.content.len(),
            path.display()
        )),
        Err(e) => io_error("write", &path, &e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditInput {
    file_path: String,
    old_string: String,
    new_string: String,
    #[serde(default)]
    replace_all: bool,
}

/// `edit`: replace `old_string` (which must occur exactly once unless
/// `replace_all`) with `new_string`.
pub fn edit(s: &ExecutorSettings, input: &Value) -> Output {
    let i: EditInput = match parse("edit", input) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let path = resolve(&s.workdir, &i.file_path);
    if i.old_string.is_empty() {
        return Output::error("old_string must not be empty (use write to create a file)");
    }
    if i.old_string == i.new_string {
        return Output::error("old_string and new_string are identical: nothing to change");
    }
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => return Output::error(format!("{} is a directory", path.display())),
        Ok(m) if m.len() > s.file_max_bytes => {
            return Output::error(format!(
                "{} is {} bytes, more than the {}-byte limit for edit",
                path.display(),
                m.len(),
                s.file_max_bytes
            ))
        }
        Ok(_) => {}
        Err(e) => return io_error("edit", &path, &e),
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => return io_error("read", &path, &e),
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return Output::error(format!("{} is not a UTF-8 text file", path.display()));
    };
    let count = text.matches(&i.old_string).count();
    if count == 0 {
        return Output::error(format!("old_string was not found in {}", path.display()));
    }
    if count > 1 && !i.replace_all {
        return Output::error(format!(
            "old_string occurs {count} times in {}; include more surrounding context to make it unique, or set replace_all",
            path.display()
        ));
    }
    let new = if i.replace_all {
        text.replace(&i.old_string, &i.new_string)
    } else {
        text.replacen(&i.old_string, &i.new_string, 1)
    };
    match std::fs::write(&path, new) {
        Ok(()) => Output::text(format!(
            "replaced {count} occurrence{} in {}",
            if count == 1 { "" } else { "s" },
            path.display()
        )),
        Err(e) => io_error("write", &path, &e),
    }
}

/// Walk `root` depth-first (not following symlinked directories, skipping
/// `.git`), calling `f` for each regular file; stops after `limit` entries.
fn walk(root: &Path, limit: usize, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let mut stack = vec![root.to_owned()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > limit {
                return;
            }
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                if e.file_name() == ".git"
                    || (dir == Path::new("/")
                        && matches!(e.file_name().to_str(), Some("proc" | "sys" | "dev")))
                {
                    continue;
                }
                stack.push(p);
            } else if let Ok(m) = std::fs::metadata(&p) {
                if m.is_file() {
                    f(&p, &m);
                }
            }
        }
    }
}

const WALK_LIMIT: usize = 200_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobInput {
    pattern: String,
    #[serde(default)]
    path: Option<String>,
}

/// `glob`: files matching a doublestar pattern, newest first, capped.
pub fn glob(s: &ExecutorSettings, input: &Value) -> Output {
    let i: GlobInput = match parse("glob", input) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let base = resolve(&s.workdir, i.path.as_deref().unwrap_or("."));
    let (root, pattern, absolute) = if i.pattern.starts_with('/') {
        // Literal leading components become the walk root.
        let mut root = PathBuf::from("/");
        for comp in i.pattern.split('/').filter(|c| !c.is_empty()) {
            if comp.contains(['*', '?', '[', '{']) {
                break;
            }
            root.push(comp);
        }
        (root, i.pattern.clone(), true)
    } else {
        (base, i.pattern.clone(), false)
    };
    let matcher = match globset::GlobBuilder::new(&pattern)
        .literal_separator(true)
        .build()
    {
        Ok(g) => g.compile_matcher(),
        Err(e) => return Output::error(format!("invalid glob pattern `{pattern}`: {e}")),
    };
    if !root.exists() {
        return Output::error(format!(
            "cannot search {}: no such file or directory",
            root.display()
        ));
    }
    let mut hits: Vec<(SystemTime, PathBuf)> = Vec::new();
    let check = |p: &Path, m: &std::fs::Metadata, hits: &mut Vec<(SystemTime, PathBuf)>| {
        let candidate = if absolute {
            Some(p)
        } else {
            p.strip_prefix(&root).ok()
        };
        if candidate.is_some_and(|c| matcher.is_match(c)) {
            hits.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), p.to_owned()));
        }
    };
    if root.is_file() {
        if let Ok(m) = std::fs::metadata(&root) {
            check(&root, &m, &mut hits);
        }
    } else {
        walk(&root, WALK_LIMIT, &mut |p, m| check(p, m, &mut hits));
    }
    if hits.is_empty() {
        return Output::text(format!(
            "no files match `{}` under {}",
            i.pattern,
            root.display()
        ));
    }
    hits.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let total = hits.len();
    let max = s.glob_max_results as usize;
    let mut out: String = hits
        .iter()
        .take(max)
        .map(|(_, p)| format!("{}\n", p.display()))
        .collect();
    if total > max {
        out.push_str(&format!(
            "[truncated: showing {max} of {total} matches, newest first]\n"
        ));
    }
    Output::text(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrepInput {
    pattern: String,
    #[serde(default)]
    path: Option<String>,
}

/// `grep`: lines matching a regex, as `path:line:text`, capped.
pub fn grep(s: &ExecutorSettings, input: &Value) -> Output {
    let i: GrepInput = match parse("grep", input) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let re = match regex::Regex::new(&i.pattern) {
        Ok(r) => r,
        Err(e) => return Output::error(format!("invalid regex `{}`: {e}", i.pattern)),
    };
    let root = resolve(&s.workdir, i.path.as_deref().unwrap_or("."));
    if !root.exists() {
        return Output::error(format!(
            "cannot search {}: no such file or directory",
            root.display()
        ));
    }
    let max_bytes = s.grep_max_bytes as usize;
    let max_line = s.grep_max_line_chars as usize;
    let mut out = String::new();
    let mut matches = 0usize;
    let mut truncated = false;
    let mut search = |p: &Path, m: &std::fs::Metadata| {
        if truncated || m.len() > 50 * 1024 * 1024 {
            return;
        }
        let Ok(bytes) = std::fs::read(p) else { return };
        if bytes[..bytes.len().min(8192)].contains(&0) {
            return;
        }
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            if re.is_match(line) {
                matches += 1;
                let shown: String = if line.chars().count() > max_line {
                    let cut: String = line.chars().take(max_line).collect();
                    format!("{cut}[… line truncated]")
                } else {
                    line.to_owned()
                };
                let entry = format!("{}:{}:{shown}\n", p.display(), n + 1);
                if out.len() + entry.len() > max_bytes {
                    truncated = true;
                    return;
                }
                out.push_str(&entry);
            }
        }
    };
    if root.is_file() {
        if let Ok(m) = std::fs::metadata(&root) {
            search(&root, &m);
        }
    } else {
        walk(&root, WALK_LIMIT, &mut search);
    }
    if matches == 0 {
        return Output::text(format!(
            "no matches for `{}` under {}",
            i.pattern,
            root.display()
        ));
    }
    if truncated {
        out.push_str(&format!(
            "[truncated: output capped at {max_bytes} bytes]\n"
        ));
    }
    Output::text(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> ExecutorSettings {
        ExecutorSettings {
            workdir: dir.display().to_string(),
            ..Default::default()
        }
    }

    fn text(o: &Output) -> &str {
        o.content[0]["text"].as_str().unwrap()
    }

    #[test]
    fn write_read_edit_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path());
        let w = write(
            &s,
            &json!({"file_path": "a/b/c.txt", "content": "one\ntwo\nthree\ntwo\n"}),
        );
        assert!(!w.is_error, "{}", text(&w));
        let r = read(&s, &json!({"file_path": "a/b/c.txt", "view_range": [2, 3]}));
        assert_eq!(text(&r), "     2\ttwo\n     3\tthree\n");
        let r = read(
            &s,
            &json!({"file_path": "a/b/c.txt", "view_range": [3, -1]}),
        );
        assert_eq!(text(&r), "     3\tthree\n     4\ttwo\n");
        let e = edit(
            &s,
            &json!({"file_path": "a/b/c.txt", "old_string": "two", "new_string": "2"}),
        );
        assert!(
            e.is_error && text(&e).contains("occurs 2 times"),
            "{}",
            text(&e)
        );
        let e = edit(
            &s,
            &json!({"file_path": "a/b/c.txt", "old_string": "zzz", "new_string": "2"}),
        );
        assert!(e.is_error && text(&e).contains("not found"));
        let e = edit(
            &s,
            &json!({"file_path": "a/b/c.txt", "old_string": "two", "new_string": "2", "replace_all": true}),
        );
        assert!(!e.is_error);
        assert_eq!(
            std::fs::read_to_string(d.path().join("a/b/c.txt")).unwrap(),
            "one\n2\nthree\n2\n"
        );
    }

    #[test]
    fn read_errors_are_clear() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path());
        let r = read(&s, &json!({"file_path": "missing"}));
        assert!(r.is_error && text(&r).contains("no such file"));
        std::fs::write(d.path().join("bin"), [0u8, 1, 2, 255]).unwrap();
        let r = read(&s, &json!({"file_path": "bin"}));
        assert!(r.is_error && text(&r).contains("binary"));
        let r = read(&s, &json!({"path": "x"}));
        assert!(r.is_error && text(&r).contains("invalid input for read"));
    }

    #[test]
    fn glob_and_grep() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path());
        write(
            &s,
            &json!({"file_path": "src/a.rs", "content": "fn main() {}\n"}),
        );
        write(
            &s,
            &json!({"file_path": "src/deep/b.rs", "content": "// nothing\nfn helper() {}\n"}),
        );
        write(
            &s,
            &json!({"file_path": "README", "content": "fn in readme\n"}),
        );
        let g = glob(&s, &json!({"pattern": "**/*.rs"}));
        assert_eq!(text(&g).lines().count(), 2, "{}", text(&g));
        let g = glob(&s, &json!({"pattern": "*.rs"}));
        assert!(text(&g).starts_with("no files match"));
        let r = grep(&s, &json!({"pattern": "^fn \\w+\\(", "path": "src"}));
        assert_eq!(text(&r).lines().count(), 2, "{}", text(&r));
        assert!(text(&r).contains("b.rs:2:fn helper() {}"));
        let r = grep(&s, &json!({"pattern": "("}));
        assert!(r.is_error);
    }
}
