//! Incremental HTTP/1.x request extraction from one connection's in-order bytes.
//!
//! Heads are parsed with httparse straight from the delivered bytes when nothing is
//! carried over (the common case: no copy); only an unfinished head is buffered. Bodies
//! are skipped by `Content-Length` or chunked framing (RFC 9112 §6.3), so body bytes are
//! never taken for requests. Heads httparse refuses but servers serve get a second,
//! lenient reading (`lenient.rs`, counted). Malformed input is counted and the stream
//! resynchronises at the next line that looks like a request line.

use std::mem::MaybeUninit;

use crate::budget::{BufferBudget, Lease};
use crate::flow::Piece;

mod lenient;

/// Headers per request; more is a parse error (httparse `TooManyHeaders`).
pub const MAX_HEADERS: usize = 100;
/// Bytes of an unfinished request head kept while waiting for its end.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Longest line considered when looking for the next request line after an error.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// A parsed request head, borrowed from the connection's bytes.
#[derive(Debug)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The request target as sent (origin-form path, or absolute-form URI).
    pub target: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: &'a [httparse::Header<'a>],
}

impl<'a> RequestHead<'a> {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Every header with this (case-insensitive) name, in order.
    pub fn headers_named<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpStats {
    pub requests: u64,
    /// Bytes that are not HTTP/1.x where a request or chunk framing was expected.
    pub parse_errors: u64,
    /// Request heads cut by bytes the capture never saw.
    pub truncated_requests: u64,
    /// Requests whose head httparse refused but servers serve (obs-fold, `HTTP/1.2`,
    /// many headers, spaces in the target...), read leniently.
    pub lenient_requests: u64,
    /// Requests with both `Content-Length` and `Transfer-Encoding` (the latter wins,
    /// RFC 9112 §6.3), or a repeated `Content-Length` list.
    pub ambiguous_framing: u64,
    /// Unfinished heads dropped because `[capture] max_buffer_bytes` was reached (the
    /// requests they began are missed).
    pub heads_over_budget: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a request head.
    Head,
    /// Lost: looking for the next line that looks like a request line.
    Resync,
    /// Skipping this many body bytes.
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkDataEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
    /// A head whose body length cannot be known: the server answers 400 and closes
    /// the connection (RFC 9112 §6.3), so nothing after it is a request.
    Refused,
}

/// A carried-over buffer larger than this is freed once empty: a connection that once
/// sent a large head does not keep its buffer.
const KEPT_CARRY_CAPACITY: usize = 4096;

/// One connection's request stream.
#[derive(Debug)]
pub struct HttpStream {
    /// Bytes carried over between pieces (an unfinished head or framing line).
    carry: Vec<u8>,
    /// In `State::Head`: how much of `carry` is known to hold no end of head, so a head
    /// arriving in many small pieces is parsed once it is complete, not once per piece
    /// (which would scan it quadratically).
    scanned: usize,
    state: State,
    /// `carry`'s share of the buffer budget.
    lease: Lease,
    /// Parser runs over carried heads (tests check the quadratic case is gone).
    carried_parses: u32,
}

impl Default for HttpStream {
    fn default() -> Self {
        Self {
            carry: Vec::new(),
            scanned: 0,
            state: State::Head,
            lease: Lease::default(),
            carried_parses: 0,
        }
    }
}

impl HttpStream {
    /// Takes the next piece of the connection; calls `on_request` for each complete
    /// request head, in order. What is left carried over counts against `budget`.
    pub fn feed(
        &mut self,
        piece: Piece<'_>,
        budget: &BufferBudget,
        stats: &mut HttpStats,
        on_request: &mut impl FnMut(&RequestHead<'_>),
    ) {
        self.take_piece(piece, stats, on_request);
        if self.lease.set(budget, self.carry.capacity()) {
            return;
        }
        // The budget is spent: an unfinished head (or framing line) is given up as if
        // its bytes were lost; an empty buffer is just freed.
        if !self.carry.is_empty() {
            stats.heads_over_budget += 1;
            self.state = State::Resync;
            self.scanned = 0;
        }
        self.carry = Vec::new();
        self.lease.set(budget, 0);
    }

    fn take_piece(
        &mut self,
        piece: Piece<'_>,
        stats: &mut HttpStats,
        on_request: &mut impl FnMut(&RequestHead<'_>),
    ) {
        match piece {
            Piece::Gap(len) => self.gap(len, stats),
            Piece::Confirmed => {}
            Piece::Data(data) if self.carry.is_empty() => {
                let used = consume(&mut self.state, data, stats, on_request);
                self.carry.extend_from_slice(&data[used..]);
                self.after_consume();
            }
            Piece::Data(data) => {
                let mut carry = std::mem::take(&mut self.carry);
                carry.extend_from_slice(data);
                if self.state == State::Head
                    && carry.len() <= MAX_HEAD_BYTES
                    && !has_head_end(&carry[self.scanned.saturating_sub(3)..])
                {
                    // Still no end of head: nothing to parse yet.
                    self.scanned = carry.len();
                    self.carry = carry;
                    return;
                }
                self.carried_parses += 1;
                let used = consume(&mut self.state, &carry, stats, on_request);
                carry.drain(..used);
                self.carry = carry;
                self.after_consume();
            }
        }
    }

    /// Whether part of a request head arrived and the rest did not.
    pub fn mid_head(&self) -> bool {
        self.state == State::Head && !self.carry.is_empty()
    }

    /// What is carried now was looked at whole: an unfinished head holds no end of head.
    fn after_consume(&mut self) {
        self.scanned = if self.state == State::Head {
            self.carry.len()
        } else {
            0
        };
        if self.carry.is_empty() && self.carry.capacity() > KEPT_CARRY_CAPACITY {
            self.carry = Vec::new();
        }
    }

    /// Bytes that will never arrive: skipped inside a body of known length, otherwise
    /// the stream resynchronises.
    fn gap(&mut self, len: Option<u32>, stats: &mut HttpStats) {
        self.state = match (self.state, len) {
            (State::Body(left), Some(n)) if left > u64::from(n) => State::Body(left - u64::from(n)),
            (State::Body(left), Some(n)) if left == u64::from(n) => State::Head,
            (State::ChunkData(left), Some(n)) if left > u64::from(n) => {
                State::ChunkData(left - u64::from(n))
            }
            (State::ChunkData(left), Some(n)) if left == u64::from(n) => State::ChunkDataEnd,
            (State::Head, _) => {
                if !self.carry.is_empty() {
                    stats.truncated_requests += 1;
                }
                State::Resync
            }
            (State::Refused, _) => State::Refused,
            _ => State::Resync,
        };
        self.carry.clear();
        self.scanned = 0;
    }
}

/// Whether `bytes` holds the end of a request head: an empty line (CRLF CRLF, or bare
/// LFs as httparse accepts them).
fn has_head_end(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// Runs the state machine over `input`; returns how many bytes it is done with.
fn consume(
    state: &mut State,
    input: &[u8],
    stats: &mut HttpStats,
    on_request: &mut impl FnMut(&RequestHead<'_>),
) -> usize {
    let mut pos = 0;
    while pos < input.len() {
        let rest = &input[pos..];
        match *state {
            State::Head => {
                // Stray line ends between messages are allowed (RFC 9112 §2.2).
                if rest[0] == b'\r' || rest[0] == b'\n' {
                    pos += 1;
                    continue;
                }
                match parse_head(rest, stats, on_request) {
                    HeadOutcome::Done { len, next } => {
                        pos += len;
                        *state = next;
                    }
                    HeadOutcome::Partial if rest.len() > MAX_HEAD_BYTES => {
                        stats.parse_errors += 1;
                        *state = State::Resync;
                        pos += 1;
                    }
                    HeadOutcome::Partial => break,
                    HeadOutcome::Invalid => {
                        // Skip the whole line: restarting one byte later would read
                        // the rest of the same request line again ("ET /a HTTP/1.1").
                        stats.parse_errors += 1;
                        *state = State::Resync;
                        pos += rest
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(rest.len(), |e| e + 1);
                    }
                }
            }
            State::Refused => {
                pos = input.len();
            }
            State::Resync => match find_request_line(rest) {
                Resync::Found(at) => {
                    pos += at;
                    *state = State::Head;
                }
                Resync::NeedMore(keep_from) => {
                    pos += keep_from;
                    break;
                }
            },
            State::Body(left) | State::ChunkData(left) => {
                let n = left.min(rest.len() as u64);
                pos += n as usize;
                *state = match (*state, left - n) {
                    (State::Body(_), 0) => State::Head,
                    (State::Body(_), l) => State::Body(l),
                    (_, 0) => State::ChunkDataEnd,
                    (_, l) => State::ChunkData(l),
                };
            }
            State::ChunkSize => match httparse::parse_chunk_size(rest) {
                Ok(httparse::Status::Complete((len, size))) => {
                    pos += len;
                    *state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                Ok(httparse::Status::Partial) if rest.len() <= MAX_REQUEST_LINE => break,
                _ => {
                    stats.parse_errors += 1;
                    *state = State::Resync;
                }
            },
            State::ChunkDataEnd => {
                if rest.starts_with(b"\r\n") {
                    pos += 2;
                } else if rest[0] == b'\n' {
                    pos += 1;
                } else if rest == b"\r" {
                    break;
                } else {
                    stats.parse_errors += 1;
                    *state = State::Resync;
                    continue;
                }
                *state = State::ChunkSize;
            }
            State::Trailers => {
                let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
                    if rest.len() > MAX_HEAD_BYTES {
                        stats.parse_errors += 1;
                        *state = State::Resync;
                        continue;
                    }
                    break;
                };
                let line_is_empty = eol == 0 || (eol == 1 && rest[0] == b'\r');
                pos += eol + 1;
                if line_is_empty {
                    *state = State::Head;
                }
            }
        }
    }
    pos
}

enum HeadOutcome {
    Done { len: usize, next: State },
    Partial,
    Invalid,
}

fn parse_head(
    input: &[u8],
    stats: &mut HttpStats,
    on_request: &mut impl FnMut(&RequestHead<'_>),
) -> HeadOutcome {
    // Uninitialised header slots: no per-request memset of the whole array.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(input, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return HeadOutcome::Partial,
        Err(_) => return parse_lenient_head(input, stats, on_request),
    };
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return HeadOutcome::Invalid;
    };
    let head = RequestHead {
        method,
        target,
        minor_version,
        headers: req.headers,
    };
    deliver_head(&head, len, stats, on_request)
}

/// httparse refused the head: read it the way lenient servers do.
#[cold]
fn parse_lenient_head(
    input: &[u8],
    stats: &mut HttpStats,
    on_request: &mut impl FnMut(&RequestHead<'_>),
) -> HeadOutcome {
    match lenient::parse(input) {
        lenient::Outcome::Complete { len, parts } => {
            let head = RequestHead {
                method: parts.method,
                target: parts.target,
                minor_version: parts.minor_version,
                headers: &parts.headers,
            };
            let outcome = deliver_head(&head, len, stats, on_request);
            if matches!(outcome, HeadOutcome::Done { next, .. } if next != State::Refused) {
                stats.lenient_requests += 1;
            }
            outcome
        }
        lenient::Outcome::Partial => HeadOutcome::Partial,
        lenient::Outcome::Invalid => HeadOutcome::Invalid,
    }
}

/// Hands a parsed head on, unless its body framing cannot be known.
fn deliver_head(
    head: &RequestHead<'_>,
    len: usize,
    stats: &mut HttpStats,
    on_request: &mut impl FnMut(&RequestHead<'_>),
) -> HeadOutcome {
    let Some(next) = body_framing(head.headers, stats) else {
        // The body length cannot be known: servers answer 400 and close.
        stats.parse_errors += 1;
        return HeadOutcome::Done {
            len,
            next: State::Refused,
        };
    };
    stats.requests += 1;
    on_request(head);
    HeadOutcome::Done { len, next }
}

/// How the request's body is delimited (RFC 9112 §6.3), as the state after the head;
/// `None` when it cannot be known (unknown transfer coding, conflicting lengths).
fn body_framing(headers: &[httparse::Header<'_>], stats: &mut HttpStats) -> Option<State> {
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut repeated = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // RFC 9110 §8.6: a list of identical values (`5, 5`) is that one value;
            // differing values make the length unknowable.
            for part in h.value.split(|&b| b == b',') {
                let n = parse_content_length(part)?;
                if content_length.is_some_and(|c| c != n) {
                    return None;
                }
                repeated |= content_length.is_some();
                content_length = Some(n);
            }
        }
    }
    if repeated || (transfer_encoding.is_some() && content_length.is_some()) {
        stats.ambiguous_framing += 1;
    }
    if let Some(te) = transfer_encoding {
        // Transfer-Encoding wins over Content-Length; chunked must be the final coding.
        let last = te.rsplit(|&b| b == b',').next().unwrap_or(te);
        return last
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked")
            .then_some(State::ChunkSize);
    }
    Some(match content_length {
        Some(n) if n > 0 => State::Body(n),
        _ => State::Head,
    })
}

fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

enum Resync {
    /// A request line starts this many bytes in.
    Found(usize),
    /// None yet; bytes before this offset can be dropped, the rest may still become one.
    NeedMore(usize),
}

/// Finds the next line that looks like an HTTP/1.x request line.
fn find_request_line(input: &[u8]) -> Resync {
    let mut start = 0;
    loop {
        let line = &input[start..];
        match line.iter().position(|&b| b == b'\n') {
            Some(eol) => {
                if looks_like_request_line(&line[..eol]) {
                    return Resync::Found(start);
                }
                start += eol + 1;
            }
            None => {
                // An unfinished line that may still become a request line is kept:
                // a head split across segments right where the stream was joined.
                let could_be = lenient::request_line_prefix(line);
                return Resync::NeedMore(if could_be { start } else { input.len() });
            }
        }
    }
}

fn looks_like_request_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.len() <= MAX_REQUEST_LINE && lenient::request_line(line).is_some()
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds the pieces and returns "METHOD target" of each request, plus the stats.
    fn run(pieces: &[Piece<'_>]) -> (Vec<String>, HttpStats) {
        let mut stream = HttpStream::default();
        let mut stats = HttpStats::default();
        let mut seen = Vec::new();
        for p in pieces {
            stream.feed(
                *p,
                &BufferBudget::default(),
                &mut stats,
                &mut |r: &RequestHead<'_>| {
                    seen.push(format!("{} {}", r.method, r.target));
                },
            );
        }
        (seen, stats)
    }

    fn data(s: &str) -> Piece<'_> {
        Piece::Data(s.as_bytes())
    }

    #[test]
    fn pipelined_requests_in_one_piece() {
        let (seen, stats) = run(&[data(
            "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
        )]);
        assert_eq!(seen, ["GET /a", "GET /b"]);
        assert_eq!(stats.requests, 2);
    }

    #[test]
    fn head_split_anywhere() {
        let (seen, _) = run(&[
            data("GE"),
            data("T /a HT"),
            data("TP/1.1\r\nHo"),
            data("st: x\r\n\r"),
            data("\n"),
        ]);
        assert_eq!(seen, ["GET /a"]);
    }

    #[test]
    fn content_length_body_is_skipped() {
        let body = "GET /evil HTTP/1.1\r\n\r\n";
        let req = format!(
            "POST /p HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /b HTTP/1.1\r\n\r\n",
            body.len()
        );
        let (seen, stats) = run(&[data(&req)]);
        assert_eq!(seen, ["POST /p", "GET /b"]);
        assert_eq!(stats.parse_errors, 0);
    }

    #[test]
    fn chunked_body_is_skipped() {
        let req = "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                   16\r\nGET /evil HTTP/1.1\r\n\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n\
                   GET /b HTTP/1.1\r\n\r\n";
        for split in 0..req.len() {
            let (a, b) = req.split_at(split);
            let (seen, stats) = run(&[data(a), data(b)]);
            assert_eq!(seen, ["POST /p", "GET /b"], "split at {split}");
            assert_eq!(stats.parse_errors, 0);
        }
    }

    #[test]
    fn invalid_chunk_size_resyncs() {
        let req =
            "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /b HTTP/1.1\r\n\r\n";
        let (seen, stats) = run(&[data(req)]);
        assert_eq!(seen, ["POST /p", "GET /b"]);
        assert_eq!(stats.parse_errors, 1);
    }

    #[test]
    fn http_1_0() {
        let (seen, _) = run(&[data("GET /old HTTP/1.0\r\n\r\n")]);
        assert_eq!(seen, ["GET /old"]);
    }

    #[test]
    fn garbage_is_counted_and_skipped() {
        let (seen, stats) = run(&[data(
            "\x16\x03\x01garbage\r\nmore junk\r\nGET /ok HTTP/1.1\r\n\r\n",
        )]);
        assert_eq!(seen, ["GET /ok"]);
        assert_eq!(stats.parse_errors, 1);
    }

    #[test]
    fn heads_beyond_the_shared_budget_are_dropped_and_counted() {
        let budget = BufferBudget::new(1000);
        let mut stats = HttpStats::default();
        let mut seen = Vec::new();
        let mut feed = |stream: &mut HttpStream, bytes: &str, stats: &mut HttpStats| {
            stream.feed(data(bytes), &budget, stats, &mut |r: &RequestHead<'_>| {
                seen.push(r.target.to_string())
            })
        };
        let mut a = HttpStream::default();
        let mut b = HttpStream::default();
        let filler = format!("GET /a HTTP/1.1\r\nX: {}\r\n", "a".repeat(880));
        feed(&mut a, &filler, &mut stats);
        // B's unfinished head does not fit next to A's: dropped, counted.
        let long = format!("GET /b HTTP/1.1\r\nX: {}\r\n", "b".repeat(200));
        feed(&mut b, &long, &mut stats);
        assert_eq!(stats.heads_over_budget, 1);
        // Its end is skipped; a whole request after it needs no buffer and is read.
        feed(&mut b, "\r\nGET /c HTTP/1.1\r\n\r\n", &mut stats);
        // A finishes its head: read, and its grown buffer freed rather than kept over
        // the budget (not counted: nothing was lost).
        feed(&mut a, "\r\n", &mut stats);
        assert_eq!(stats.heads_over_budget, 1);
        // A connection dropped with a head in its buffer gives it back.
        feed(&mut a, "GET /d HTTP/1.1\r\n", &mut stats);
        feed(&mut a, "X: d\r\n", &mut stats);
        assert!(budget.used() > 0);
        drop(a);
        assert_eq!(budget.used(), 0);
        assert_eq!(seen, ["/c", "/a"]);
    }

    #[test]
    fn endless_header_lines_are_bounded() {
        let mut stream = HttpStream::default();
        let mut stats = HttpStats::default();
        stream.feed(
            data("GET / HTTP/1.1\r\n"),
            &BufferBudget::default(),
            &mut stats,
            &mut |_: &RequestHead<'_>| {},
        );
        let line =
            "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        for _ in 0..10_000 {
            stream.feed(
                data(line),
                &BufferBudget::default(),
                &mut stats,
                &mut |_: &RequestHead<'_>| {},
            );
            assert!(stream.carry.len() <= MAX_HEAD_BYTES + line.len());
        }
        assert!(stats.parse_errors >= 1);
        assert_eq!(stats.requests, 0);
    }

    #[test]
    fn gap_inside_a_body_is_skipped_without_resync() {
        let (seen, stats) = run(&[
            data("POST /p HTTP/1.1\r\nContent-Length: 100\r\n\r\nab"),
            Piece::Gap(Some(90)),
            data("cdefghijGET /b HTTP/1.1\r\n\r\n"),
        ]);
        assert_eq!(seen, ["POST /p", "GET /b"]);
        assert_eq!(stats.parse_errors, 0);
    }

    #[test]
    fn gap_inside_a_head_counts_a_truncated_request() {
        let (seen, stats) = run(&[
            data("GET /a HTTP/1.1\r\nX-Big: aaaa"),
            Piece::Gap(Some(3000)),
            data("aaaa\r\n\r\nGET /b HTTP/1.1\r\n\r\n"),
        ]);
        assert_eq!(seen, ["GET /b"]);
        assert_eq!(stats.truncated_requests, 1);
    }

    #[test]
    fn mid_stream_start_finds_the_next_request() {
        let (seen, stats) = run(&[
            Piece::Gap(None),
            data("dy bytes\r\nGET /b HTTP/1.1\r\n\r\n"),
        ]);
        assert_eq!(seen, ["GET /b"]);
        assert_eq!(stats.parse_errors, 0);
    }

    #[test]
    fn mid_stream_start_keeps_a_head_split_across_pieces() {
        // A keep-alive connection picked up again after a long silence: its next
        // request starts the piece, and its request line is not finished yet.
        let (seen, stats) = run(&[
            Piece::Gap(None),
            data("GET /api/v1/transfer"),
            data("Funds HTTP/1.1\r\nHost: x\r\n\r\n"),
        ]);
        assert_eq!(seen, ["GET /api/v1/transferFunds"]);
        assert_eq!(stats.parse_errors, 0);
        // A 2 KB request line over three pieces.
        let long = format!("GET /q?{} HTTP/1.1\r\n\r\n", "a".repeat(2000));
        let (a, rest) = long.split_at(700);
        let (b, c) = rest.split_at(700);
        let (seen, _) = run(&[Piece::Gap(None), data(a), data(b), data(c)]);
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn heads_servers_accept_are_read_leniently() {
        let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
        for (head, want) in [
            (
                "GET /a HTTP/1.1\r\nX-F: one\r\n two\r\nCookie: sid=1\r\n\r\n",
                "GET /a",
            ),
            ("GET /b HTTP/1.2\r\nHost: x\r\n\r\n", "GET /b"),
            (&format!("GET /c HTTP/1.1\r\n{many}\r\n"), "GET /c"),
            ("GET /d HTTP/1.1\r\nX-Ctl: a\x01b\r\n\r\n", "GET /d"),
            ("GET /e f HTTP/1.1\r\n\r\n", "GET /e f"),
        ] {
            let (seen, stats) = run(&[data(head), data("GET /next HTTP/1.1\r\n\r\n")]);
            assert_eq!(seen, [want, "GET /next"], "{head:?}");
            assert_eq!(
                (stats.lenient_requests, stats.parse_errors),
                (1, 0),
                "{head:?}"
            );
        }
    }

    #[test]
    fn repeated_and_conflicting_lengths() {
        let (seen, stats) = run(&[data(
            "POST /p HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nGET /GET /b HTTP/1.1\r\n\r\n",
        )]);
        assert_eq!(seen, ["POST /p", "GET /b"]);
        assert_eq!((stats.ambiguous_framing, stats.parse_errors), (1, 0));
        let (seen, stats) = run(&[data(
            "POST /p HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n",
        )]);
        // The server answers 400 and closes: nothing after that head is read.
        assert!(seen.is_empty(), "{seen:?}");
        assert_eq!(stats.parse_errors, 1);
        // Both framings: Transfer-Encoding wins (RFC 9112 §6.3), counted.
        let (seen, stats) = run(&[data(
            "POST /p HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
             0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        )]);
        assert_eq!(seen, ["POST /p", "GET /b"]);
        assert_eq!(stats.ambiguous_framing, 1);
    }

    #[test]
    fn an_unreadable_request_is_one_parse_error() {
        let (seen, stats) = run(&[data(
            "GET /a HTTP/9.9\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        )]);
        assert_eq!(seen, ["GET /b"]);
        assert_eq!(stats.parse_errors, 1);
    }

    #[test]
    fn a_head_in_tiny_pieces_is_parsed_once_and_its_buffer_freed() {
        let mut stream = HttpStream::default();
        let mut stats = HttpStats::default();
        let head = format!(
            "GET /a HTTP/1.1\r\n{}\r\n",
            "X-Filler: abcdefghijklmnopqrstuvwxyz\r\n".repeat(700)
        );
        assert!(head.len() > 20_000 && head.len() < MAX_HEAD_BYTES);
        let mut seen = 0;
        for b in head.as_bytes().chunks(1) {
            stream.feed(
                Piece::Data(b),
                &BufferBudget::default(),
                &mut stats,
                &mut |_: &RequestHead<'_>| seen += 1,
            );
        }
        assert_eq!(seen, 1);
        // Parsed when the empty line arrived, not once per byte.
        assert!(stream.carried_parses <= 2, "{}", stream.carried_parses);
        assert_eq!(stream.carry.capacity(), 0, "the head's buffer is kept");
    }

    #[test]
    fn unknown_transfer_coding_is_an_error() {
        let (seen, stats) = run(&[data(
            "POST /p HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nxx\r\nGET /b HTTP/1.1\r\n\r\n",
        )]);
        // RFC 9112 §6.3: 400 and close; what follows is never read.
        assert!(seen.is_empty(), "{seen:?}");
        assert_eq!(stats.parse_errors, 1);
    }

    fn pipelined() -> String {
        let mut s = String::new();
        for i in 0..6 {
            s.push_str(&format!(
                "GET /r/{i} HTTP/1.1\r\nHost: h\r\nCookie: sid=s{i}\r\n\r\n"
            ));
            s.push_str("POST /b HTTP/1.1\r\nContent-Length: 19\r\n\r\nGET /no HTTP/1.1\r\n\r\n");
        }
        s
    }

    proptest! {
        #[test]
        fn any_split_yields_the_same_requests(cuts in proptest::collection::vec(0usize..2000, 0..30)) {
            let text = pipelined();
            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                pieces.push(Piece::Data(&bytes[last..c]));
                last = c;
            }
            let (seen, stats) = run(&pieces);
            let (whole, _) = run(&[Piece::Data(bytes)]);
            prop_assert_eq!(seen.len(), 12);
            prop_assert_eq!(seen, whole);
            prop_assert_eq!(stats.parse_errors, 0);
        }

        #[test]
        fn garbage_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let mut stream = HttpStream::default();
            let mut stats = HttpStats::default();
            for c in &chunks {
                stream.feed(Piece::Data(c), &BufferBudget::default(), &mut stats, &mut |_: &RequestHead<'_>| {});
                prop_assert!(stream.carry.len() <= MAX_HEAD_BYTES + 300);
            }
        }
    }
}
