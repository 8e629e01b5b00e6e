//! An incremental Server-Sent Events parser (WHATWG HTML "event stream interpretation").
//!
//! Bytes arrive in whatever pieces the network delivers; [`SseParser::feed`] takes each piece
//! and emits every event completed so far. Lines end in CRLF, LF or CR (Gemini uses CRLF, the
//! others LF), a CR at the very end of one piece may be followed by the LF at the start of the
//! next, multi-byte UTF-8 characters may be split between pieces (lines are decoded only once
//! complete), `data` lines accumulate with `\n`, comments (`:` lines, used as keep-alives) and
//! unknown fields are ignored, and an event without data is not dispatched.
//!
//! Written here rather than taken from `eventsource-stream` (already in the workspace) because
//! this parser must bound its buffer: an upstream that never ends a line would otherwise grow
//! memory without limit. It is also synchronous (no stream adapter), so the same code is used
//! by the clients and measured directly by `benches/sse_parse.rs`, where it is compared with
//! `eventsource-stream` and a naive split-based parser in one run (BENCHMARKS.md).

/// Largest line or event accepted, in bytes (model streams send events of a few KiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; empty means the default type `message`.
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
    /// The last `id:` seen (it persists across events, as the spec says).
    pub id: Option<String>,
    /// A `retry:` reconnection time in milliseconds, if this event carried one.
    pub retry_ms: Option<u64>,
}

/// The stream broke the parser's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server-sent event larger than {limit} bytes")]
pub struct SseTooLarge {
    /// The limit that was passed.
    pub limit: usize,
}

/// Incremental parser state.
#[derive(Debug)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Set when the previous piece ended in CR: an LF at the start of the next one belongs to it.
    skip_lf: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    retry_ms: Option<u64>,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    /// A parser with [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        SseParser::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser that fails once a line or an event's data grows past `max_event_bytes`.
    pub fn with_limit(max_event_bytes: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            skip_lf: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            last_id: None,
            retry_ms: None,
            max_event_bytes,
        }
    }

    /// Parses `chunk`, pushing every completed event onto `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseTooLarge> {
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        if self.buf.is_empty() {
            // Fast path: parse straight from the chunk and keep only its unfinished tail.
            let consumed = self.parse_lines(chunk, out)?;
            self.buf.extend_from_slice(&chunk[consumed..]);
        } else {
            self.buf.extend_from_slice(chunk);
            let buf = std::mem::take(&mut self.buf);
            let consumed = self.parse_lines(&buf, out);
            self.buf = buf;
            let consumed = consumed?;
            self.buf.drain(..consumed);
        }
        if self.buf.len() > self.max_event_bytes {
            return Err(SseTooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }

    /// Ends the stream. Per the spec an event not terminated by a blank line is discarded;
    /// this returns true when such a partial event (or line) was pending, so callers can tell a
    /// cut-off stream from a clean end.
    pub fn finish(&mut self) -> bool {
        let partial = !self.buf.is_empty() || self.has_data;
        self.buf.clear();
        self.reset_event();
        partial
    }

    /// Parses complete lines of `bytes`; returns how many bytes were consumed.
    fn parse_lines(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<usize, SseTooLarge> {
        let mut start = 0;
        while let Some(offset) = memchr::memchr2(b'\n', b'\r', &bytes[start..]) {
            let end = start + offset;
            let line = &bytes[start..end];
            let mut next = end + 1;
            if bytes[end] == b'\r' {
                match bytes.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            self.line(line, out)?;
            start = next;
        }
        Ok(start)
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseTooLarge> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.has_data = true;
                push_utf8(&mut self.data, value);
                if self.data.len() > self.max_event_bytes {
                    return Err(SseTooLarge {
                        limit: self.max_event_bytes,
                    });
                }
            }
            b"event" => {
                self.event.clear();
                push_utf8(&mut self.event, value);
            }
            b"id" if !value.contains(&0) => {
                self.last_id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry_ms = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data),
                id: self.last_id.clone(),
                retry_ms: self.retry_ms.take(),
            });
        }
        self.reset_event();
    }

    fn reset_event(&mut self) {
        self.event.clear();
        self.data.clear();
        self.has_data = false;
    }
}

fn push_utf8(target: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => target.push_str(s),
        Err(_) => target.push_str(&String::from_utf8_lossy(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            p.feed(chunk, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn every_split_of_a_mixed_stream_gives_the_same_events() {
        let input = "event: message_start\ndata: {\"a\":1}\n\n: keep-alive\r\n\r\ndata: line one\r\ndata: line two\r\n\r\nid: 7\rdata: héllo wörld ✓\r\r\ndata\n\nevent: ignored-without-data\n\n";
        let expected = parse_in_pieces(input.as_bytes(), input.len());
        assert_eq!(
            expected,
            vec![
                SseEvent {
                    event: "message_start".into(),
                    data: "{\"a\":1}".into(),
                    id: None,
                    retry_ms: None
                },
                SseEvent {
                    event: String::new(),
                    data: "line one\nline two".into(),
                    id: None,
                    retry_ms: None
                },
                SseEvent {
                    event: String::new(),
                    data: "héllo wörld ✓".into(),
                    id: Some("7".into()),
                    retry_ms: None
                },
                SseEvent {
                    event: String::new(),
                    data: String::new(),
                    id: Some("7".into()),
                    retry_ms: None
                },
            ]
        );
        for piece in 1..input.len() {
            assert_eq!(
                parse_in_pieces(input.as_bytes(), piece),
                expected,
                "piece {piece}"
            );
        }
    }

    #[test]
    fn no_space_after_colon_and_retry_are_understood() {
        let events = parse_in_pieces(b"retry: 1500\ndata:{}\n\n", 4);
        assert_eq!(events[0].data, "{}");
        assert_eq!(events[0].retry_ms, Some(1500));
    }

    #[test]
    fn an_unterminated_event_is_reported_at_finish_not_dispatched() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b"data: partial\n", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(p.finish());
        assert!(!p.finish());
    }

    #[test]
    fn a_line_that_never_ends_hits_the_limit() {
        let mut p = SseParser::with_limit(64);
        let mut out = Vec::new();
        assert!(p.feed(&[b'x'; 65], &mut out).is_err());
        let mut p = SseParser::with_limit(64);
        let many = "data: 0123456789\n".repeat(10);
        assert!(p.feed(many.as_bytes(), &mut out).is_err());
    }
}
