//! An incremental Server-Sent Events decoder (the WHATWG framing): bytes in,
//! complete events out. No I/O; chunks may split anywhere, including inside a
//! UTF-8 sequence or between `\r` and `\n`.

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if one was given.
    pub event: Option<String>,
    /// The `id:` field of this event, if one was given (a resumable stream's
    /// position, sent back as `Last-Event-ID`).
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Why the byte stream is not valid SSE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// A line is not UTF-8.
    #[error("sse line {line} is not valid utf-8")]
    NotUtf8 {
        /// 1-based line number.
        line: u64,
    },
    /// One event (or one line) grew beyond the cap.
    #[error("sse event at line {line} exceeds {limit_bytes} bytes")]
    TooLarge {
        /// 1-based line number.
        line: u64,
        /// The cap.
        limit_bytes: usize,
    },
}

/// Incremental decoder.
#[derive(Debug)]
pub struct SseDecoder {
    buf: Vec<u8>,
    /// A `\r` ended the previous chunk: a `\n` starting the next one belongs to it.
    pending_cr: bool,
    event: Option<String>,
    id: Option<String>,
    data: String,
    has_data: bool,
    line_no: u64,
    limit_bytes: usize,
}

impl SseDecoder {
    /// A decoder refusing events larger than `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            pending_cr: false,
            event: None,
            id: None,
            data: String::new(),
            has_data: false,
            line_no: 0,
            limit_bytes,
        }
    }

    /// Feed bytes; returns the events completed by them.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        if self.pending_cr {
            self.pending_cr = false;
            if chunk.first() == Some(&b'\n') {
                chunk = &chunk[1..];
            }
        }
        let mut start = 0;
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            if b == b'\n' || b == b'\r' {
                self.buf.extend_from_slice(&chunk[start..i]);
                let line = std::mem::take(&mut self.buf);
                self.line(&line, &mut out)?;
                if b == b'\r' {
                    if i + 1 < chunk.len() {
                        if chunk[i + 1] == b'\n' {
                            i += 1;
                        }
                    } else {
                        self.pending_cr = true;
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
        self.buf.extend_from_slice(&chunk[start..]);
        if self.buf.len() + self.data.len() > self.limit_bytes {
            return Err(SseError::TooLarge {
                line: self.line_no + 1,
                limit_bytes: self.limit_bytes,
            });
        }
        Ok(out)
    }

    /// The stream ended. A trailing event without its blank line is
    /// discarded, as the SSE specification says.
    pub fn finish(&mut self) -> bool {
        let incomplete = !self.buf.is_empty() || self.has_data;
        self.buf.clear();
        self.data.clear();
        self.has_data = false;
        self.event = None;
        self.id = None;
        incomplete
    }

    fn line(&mut self, raw: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.line_no += 1;
        let line =
            std::str::from_utf8(raw).map_err(|_| SseError::NotUtf8 { line: self.line_no })?;
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: self.event.take(),
                    id: self.id.take(),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event = None;
            self.id = None;
            self.data.clear();
            self.has_data = false;
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(()); // comment
        }
        let (field, value) = match line.find(':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                if self.data.len() > self.limit_bytes {
                    return Err(SseError::TooLarge {
                        line: self.line_no,
                        limit_bytes: self.limit_bytes,
                    });
                }
            }
            // An id with a NUL is ignored, as the specification says.
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            // `retry` is the client's business; unknown fields are ignored.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(d.push(c).unwrap());
        }
        out
    }

    #[test]
    fn decodes_events_split_at_every_byte() {
        let text = b"event: a\ndata: {\"x\":1}\n\n: comment\r\nevent: b\r\nid: 7\r\ndata: l1\r\ndata: l2\r\n\r\ndata:no-space\r\r";
        let whole = all(&[text]);
        assert_eq!(
            whole,
            vec![
                SseEvent {
                    event: Some("a".into()),
                    id: None,
                    data: "{\"x\":1}".into()
                },
                SseEvent {
                    event: Some("b".into()),
                    id: Some("7".into()),
                    data: "l1\nl2".into()
                },
                SseEvent {
                    event: None,
                    id: None,
                    data: "no-space".into()
                },
            ]
        );
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(all(&bytes), whole);
        for split in 0..text.len() {
            let (a, b) = text.split_at(split);
            assert_eq!(all(&[a, b]), whole, "split at {split}");
        }
    }

    #[test]
    fn a_character_split_across_reads_is_kept_whole() {
        let text = "id: 3\ndata: h\u{e9}llo \u{1f600}\n\n".as_bytes();
        // Inside the two bytes of U+00E9, and twice inside the four of U+1F600.
        let emoji = text.len() - 6;
        for split in [14, emoji + 1, emoji + 3] {
            let (a, b) = text.split_at(split);
            let got = all(&[a, b]);
            assert_eq!(got.len(), 1, "split at {split}");
            assert_eq!(got[0].data, "h\u{e9}llo \u{1f600}", "split at {split}");
            assert_eq!(got[0].id.as_deref(), Some("3"));
        }
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_trailing_partial_is_reported() {
        let mut d = SseDecoder::new(1024);
        assert!(d.push(b"event: ping\n\n").unwrap().is_empty());
        assert!(d.push(b"data: x").unwrap().is_empty());
        assert!(d.finish());
    }

    #[test]
    fn rejects_invalid_utf8_and_oversized_events() {
        let mut d = SseDecoder::new(1024);
        assert!(matches!(
            d.push(b"data: \xff\n"),
            Err(SseError::NotUtf8 { line: 1 })
        ));
        let mut d = SseDecoder::new(8);
        assert!(matches!(
            d.push(b"data: 0123456789"),
            Err(SseError::TooLarge { .. })
        ));
        // Lines that each fit but add up past the cap are refused too.
        let mut d = SseDecoder::new(8);
        let e = d.push(b"data: 01234\ndata: 56789\n").unwrap_err();
        assert_eq!(e.to_string(), "sse event at line 2 exceeds 8 bytes");
    }
}
