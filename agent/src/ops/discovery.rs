//! Discovery normalisation (SPEC §1): identifier-like path segments become `{var1}`,
//! `{var2}`, … so that `/users/42/accounts` and `/users/7/accounts` are one operation.

/// Segments this long that mix letters and digits are identifiers (tokens, slugs with ids).
const MIXED_ID_MIN_LEN: usize = 20;
/// Hex strings this long are identifiers (hashes, object ids).
const HEX_ID_MIN_LEN: usize = 16;

/// Appends the discovered template of `path` to `out`.
pub fn normalise_path(path: &str, out: &mut String) {
    let mut vars = 0;
    let mut first = true;
    for seg in path.split('/') {
        if !first {
            out.push('/');
        }
        first = false;
        if is_identifier(seg) {
            vars += 1;
            out.push_str("{var");
            push_decimal(out, vars);
            out.push('}');
        } else {
            out.push_str(seg);
        }
    }
}

/// Whether discovery could produce `template` for some request path: placeholders are
/// `{var1}`, `{var2}`, … in order and no other segment looks like an identifier.
pub fn is_discovered_template(template: &str) -> bool {
    let mut vars = 0u32;
    template.starts_with('/')
        && template.split('/').all(|seg| {
            if seg.starts_with('{') {
                vars += 1;
                seg == format!("{{var{vars}}}")
            } else {
                !is_identifier(seg)
            }
        })
}

fn push_decimal(out: &mut String, n: u32) {
    if n >= 10 {
        push_decimal(out, n / 10);
    }
    out.push(char::from(b'0' + (n % 10) as u8));
}

fn is_identifier(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    b.iter().all(u8::is_ascii_digit)
        || is_uuid(b)
        || (b.len() >= HEX_ID_MIN_LEN && b.iter().all(u8::is_ascii_hexdigit))
        || (b.len() >= MIXED_ID_MIN_LEN
            && b.iter().any(u8::is_ascii_alphabetic)
            && b.iter().any(u8::is_ascii_digit))
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        let mut s = String::new();
        normalise_path(p, &mut s);
        s
    }

    #[test]
    fn discovered_templates_are_recognised() {
        assert!(is_discovered_template("/users/{var1}/x/{var2}"));
        assert!(!is_discovered_template("/users/{name}"));
        assert!(!is_discovered_template("/users/{var2}"));
        assert!(!is_discovered_template("/users/42"));
    }

    #[test]
    fn identifier_like_segments_are_numbered() {
        assert_eq!(
            norm("/api/v1/users/42/accounts"),
            "/api/v1/users/{var1}/accounts"
        );
        assert_eq!(
            norm("/o/123e4567-e89b-12d3-a456-426614174000/x/deadbeefdeadbeef"),
            "/o/{var1}/x/{var2}"
        );
        assert_eq!(norm("/t/abcdefghij0123456789"), "/t/{var1}");
        // Words, short hex, long letters-only stay literal.
        assert_eq!(norm("/api/v1/transferFunds"), "/api/v1/transferFunds");
        assert_eq!(
            norm("/c/cafe/abcdefghijklmnopqrstuvwxyz"),
            "/c/cafe/abcdefghijklmnopqrstuvwxyz"
        );
        assert_eq!(norm("/"), "/");
        assert_eq!(
            norm("/a/1/2/3/4/5/6/7/8/9/10"),
            "/a/{var1}/{var2}/{var3}/{var4}/{var5}/{var6}/{var7}/{var8}/{var9}/{var10}"
        );
    }
}
