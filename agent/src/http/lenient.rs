//! A second reading of request heads httparse refuses but servers serve (nginx, Go,
//! Python): obs-fold continuation lines (RFC 9112 §5.2), versions such as `HTTP/1.2`,
//! more headers than httparse's array holds, spaces inside the target, control bytes
//! in header values, malformed header lines (ignored, as nginx's
//! `ignore_invalid_headers` does). It takes the request line and the headers as they
//! are; what the pipeline needs from them (host, session identifiers, framing) is read
//! the usual way afterwards. Only reached when httparse fails, so it costs nothing on
//! well-formed traffic.

use super::{MAX_REQUEST_LINE, is_tchar};

/// Headers the lenient reading keeps; more is a parse error (servers refuse such heads
/// by size long before: nginx's `large_client_header_buffers`).
pub const MAX_LENIENT_HEADERS: usize = 1024;
/// Longest method token.
pub const MAX_METHOD_LEN: usize = 32;

/// The parts of a request head, borrowed from the input.
pub struct Parts<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub minor_version: u8,
    /// Values of folded headers span their continuation lines, line ends included.
    pub headers: Vec<httparse::Header<'a>>,
}

pub enum Outcome<'a> {
    Complete { len: usize, parts: Parts<'a> },
    Partial,
    Invalid,
}

/// Reads a request head from the start of `input`.
pub fn parse(input: &[u8]) -> Outcome<'_> {
    let Some(eol) = input.iter().position(|&b| b == b'\n') else {
        return if request_line_prefix(input) {
            Outcome::Partial
        } else {
            Outcome::Invalid
        };
    };
    let Some((method, target, minor_version)) = request_line(strip_cr(&input[..eol])) else {
        return Outcome::Invalid;
    };
    // (name, value start, value end) as offsets into `input`.
    let mut fields: Vec<(&str, usize, usize)> = Vec::new();
    let mut at = eol + 1;
    loop {
        let rest = &input[at..];
        let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
            return Outcome::Partial;
        };
        let line = strip_cr(&rest[..eol]);
        if line.is_empty() {
            let headers = fields
                .into_iter()
                .map(|(name, start, end)| httparse::Header {
                    name,
                    value: trim(&input[start..end]),
                })
                .collect();
            return Outcome::Complete {
                len: at + eol + 1,
                parts: Parts {
                    method,
                    target,
                    minor_version,
                    headers,
                },
            };
        }
        if line.contains(&0) {
            return Outcome::Invalid; // NUL: every server refuses it.
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // obs-fold: the line continues the previous field's value.
            match fields.last_mut() {
                Some(field) => field.2 = at + line.len(),
                None => return Outcome::Invalid,
            }
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = &line[..colon];
            if !name.is_empty() && name.iter().all(|&b| is_tchar(b)) {
                // SAFETY-free: tchars are ASCII.
                let name = std::str::from_utf8(name).unwrap_or_default();
                fields.push((name, at + colon + 1, at + line.len()));
                if fields.len() > MAX_LENIENT_HEADERS {
                    return Outcome::Invalid;
                }
            }
        }
        at += eol + 1;
    }
}

/// `method SP target SP HTTP/1.d`, leniently: runs of spaces between the parts, spaces
/// inside the target (up to the last ` HTTP/`), any `HTTP/1.x` version.
pub fn request_line(line: &[u8]) -> Option<(&str, &str, u8)> {
    let sp = line.iter().position(|&b| b == b' ')?;
    let method = &line[..sp];
    if method.is_empty() || method.len() > MAX_METHOD_LEN || !method.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let rest = &line[sp..];
    let version_at = rest.windows(6).rposition(|w| w == b" HTTP/")?;
    let version = &rest[version_at + 1..];
    let minor = match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit() => d - b'0',
        _ => return None,
    };
    let target = trim(&rest[..version_at]);
    if target.is_empty()
        || !target
            .iter()
            .all(|&b| b == b' ' || (0x21..0x7f).contains(&b))
    {
        return None;
    }
    Some((
        std::str::from_utf8(method).ok()?,
        std::str::from_utf8(target).ok()?,
        minor.min(1),
    ))
}

/// Whether an unfinished line could still become a request line: a method token, then
/// spaces and printable bytes (a target, a version).
pub fn request_line_prefix(line: &[u8]) -> bool {
    if line.len() > MAX_REQUEST_LINE {
        return false;
    }
    let method_len = line.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len > MAX_METHOD_LEN || (method_len == 0 && !line.is_empty()) {
        return false;
    }
    let rest = strip_cr(&line[method_len..]);
    rest.first().is_none_or(|&b| b == b' ')
        && rest.iter().all(|&b| b == b' ' || (0x21..0x7f).contains(&b))
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(input: &str) -> (String, Vec<(String, String)>, usize) {
        match parse(input.as_bytes()) {
            Outcome::Complete { len, parts } => (
                format!(
                    "{} {} 1.{}",
                    parts.method, parts.target, parts.minor_version
                ),
                parts
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
                len,
            ),
            _ => panic!("not complete: {input:?}"),
        }
    }

    #[test]
    fn heads_servers_accept() {
        let (line, headers, len) =
            complete("GET /a HTTP/1.2\r\nHost: x\r\nX-Long: one\r\n two\r\n\r\nrest");
        assert_eq!(line, "GET /a 1.1");
        assert_eq!(headers[0], ("Host".into(), "x".into()));
        assert_eq!(headers[1], ("X-Long".into(), "one\r\n two".into()));
        assert_eq!(len, 47);
        let (line, headers, _) =
            complete("GET /a b  HTTP/1.1\r\nBad Header\r\nCookie: sid=\x01x\r\n\r\n");
        assert_eq!(line, "GET /a b 1.1");
        assert_eq!(headers, [("Cookie".into(), "sid=\x01x".into())]);
    }

    #[test]
    fn what_servers_refuse_stays_refused() {
        for bad in [
            "GET /a HTTP/2.0\r\n\r\n",
            "G\x01T /a HTTP/1.1\r\n\r\n",
            "GET  HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.1\r\n continuation first\r\n\r\n",
            "GET /a HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        ] {
            assert!(matches!(parse(bad.as_bytes()), Outcome::Invalid), "{bad:?}");
        }
        assert!(matches!(
            parse(b"GET /a HTTP/1.1\r\nHost: x\r\n"),
            Outcome::Partial
        ));
        assert!(matches!(parse(b"GET /api/v1/tra"), Outcome::Partial));
        assert!(matches!(parse(b"\x16\x03\x01"), Outcome::Invalid));
    }

    #[test]
    fn request_line_prefixes() {
        for p in [
            "",
            "G",
            "GET",
            "GET ",
            "GET /a/b?c=1",
            "GET /a HTTP/1.",
            "GET /a HTTP/1.1\r",
        ] {
            assert!(request_line_prefix(p.as_bytes()), "{p:?}");
        }
        for p in ["/a/b", "ody-bytes\"}", "\x16\x03", "GET\t/a"] {
            assert!(!request_line_prefix(p.as_bytes()), "{p:?}");
        }
    }
}
