//! Request identity (SPEC §1): the path and host a request is matched on are normalised
//! the way servers route them, so spelling a request differently cannot move it to
//! another operation (or out of a rule's reach).

/// Normalises a request path (query and fragment already removed) per RFC 3986 §6.2.2:
/// percent-encoded unreserved characters decoded, other percent-encodings' hex
/// uppercased, dot-segments removed (§5.2.4), runs of `/` merged, a trailing `/` dropped
/// (the root excepted). Paths already in normal form (nearly all) are returned as they
/// are, without a copy.
pub fn normalise_request_path<'a>(path: &'a str, scratch: &'a mut String) -> &'a str {
    if is_normal(path) {
        return path;
    }
    // 1. Percent-encodings.
    let mut decoded = String::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            let c = h << 4 | l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(char::from(c));
            } else {
                decoded.push('%');
                decoded.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                decoded.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
            continue;
        }
        // Copy up to the next '%' in one go (keeps multi-byte characters whole).
        let next = bytes[i + 1..]
            .iter()
            .position(|&b| b == b'%')
            .map_or(bytes.len(), |p| i + 1 + p);
        decoded.push_str(&path[i..next]);
        i = next;
    }
    // 2.–4. Segments: empty ones (runs of '/') and '.' dropped, '..' pops.
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    scratch.clear();
    if segments.is_empty() {
        scratch.push('/');
    }
    for seg in segments {
        scratch.push('/');
        scratch.push_str(seg);
    }
    scratch
}

/// No percent sign, no empty segment, no segment starting with a dot (a `.` or `..`, or
/// a rare name such as `.well-known` that then takes the slow path), no trailing slash
/// (but the root). Eight bytes at a time (SWAR): this runs for every request.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes == b"/" {
        return true;
    }
    if bytes.first() != Some(&b'/') || bytes.last() == Some(&b'/') {
        return false;
    }
    // A slash in the last byte of a word, for the first byte of the next.
    let mut carry = 0u64;
    let mut words = bytes.chunks_exact(8);
    let tail = {
        let mut last = [0u8; 8]; // zero bytes match none of '%', '/', '.'
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        u64::from_le_bytes(last)
    };
    for word in words
        .by_ref()
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .chain([tail])
    {
        let slash = byte_eq(word, b'/');
        let after = slash | byte_eq(word, b'.');
        if byte_eq(word, b'%') != 0 || ((slash << 8) | carry) & after != 0 {
            return false;
        }
        carry = slash >> 56;
    }
    true
}

/// 0x80 in each byte of `word` equal to `c`, 0 elsewhere (exact: no false positives).
fn byte_eq(word: u64, c: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let t = word ^ (u64::from(c) * 0x0101_0101_0101_0101);
    !(((t & LOW7) + LOW7) | t) & !LOW7
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a (normalised) host is an IP literal: an IPv4 address, or a bracketed IPv6 one.
pub fn is_ip_literal(host: &str) -> bool {
    host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(p: &str) -> String {
        let mut s = String::new();
        normalise_request_path(p, &mut s).to_string()
    }

    #[test]
    fn spellings_of_one_path_are_one_path() {
        for p in [
            "/api/v1/transferFunds",
            "/api/v1/%74ransferFunds",
            "/api/v1/transferFunds/",
            "/api//v1/./transferFunds",
            "/api/v1/x/../transferFunds",
            "//api/v1/transferFunds//",
            "/api/%76%31/transfer%46unds",
            "/../api/v1/transferFunds",
        ] {
            assert_eq!(norm(p), "/api/v1/transferFunds", "{p}");
        }
    }

    #[test]
    fn reserved_encodings_stay_encoded_in_upper_case() {
        assert_eq!(norm("/a%2fb"), "/a%2Fb");
        assert_eq!(norm("/a%2Fb/%7e%2D"), "/a%2Fb/~-");
        assert_eq!(norm("/a%zz"), "/a%zz");
        assert_eq!(norm("/a%4"), "/a%4");
        assert_eq!(norm("/caf\u{e9}%41"), "/caf\u{e9}A");
    }

    #[test]
    fn root_and_empty() {
        assert_eq!(norm("/"), "/");
        assert_eq!(norm("//"), "/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm(""), "/");
    }

    #[test]
    fn the_fast_check_agrees_with_normalising() {
        for p in [
            "/",
            "/a",
            "/a/b",
            "/a/",
            "//a",
            "/a//b",
            "/./a",
            "/a/.",
            "/a/..",
            "/..a",
            "/a..",
            "/.a/b.",
            "/a%41",
            "",
            "a/b",
            "/...",
            "/a/.../b",
            "/abcdefg/.x",
            "/abcdef//x",
            "/abcdefghijklmnop%",
            "/api/v1/accounts/1007/balance",
        ] {
            let mut s = String::new();
            let normal = normalise_request_path(p, &mut s).to_string();
            // The fast check may send a normal path down the slow one (`/.a`), never
            // the other way round; plain paths stay on the fast one.
            if is_normal(p) {
                assert_eq!(normal, p, "{p:?}");
            }
            let plain =
                p.starts_with('/') && !p.contains('%') && !p.contains("//") && !p.contains("/.");
            assert_eq!(
                is_normal(p),
                plain && (p == "/" || !p.ends_with('/')),
                "{p:?}"
            );
        }
    }

    #[test]
    fn ip_literals() {
        assert!(is_ip_literal("10.0.0.2"));
        assert!(is_ip_literal("[2001:db8::1]"));
        assert!(!is_ip_literal("bank.test"));
        assert!(!is_ip_literal("10.0.0.2.example"));
    }

    proptest! {
        #[test]
        fn normalising_is_idempotent(p in "(/(%[0-9a-fA-F]{2}|[a-z.~]{0,3}){0,6})") {
            let once = norm(&p);
            prop_assert_eq!(norm(&once), once.clone());
            prop_assert!(once.starts_with('/'));
            // The fast check never passes a path that normalising would change.
            if is_normal(&p) {
                prop_assert_eq!(&once, &p);
            }
        }
    }
}
