//! Session identification from hostile headers: cookies, a session header and JWT
//! claims (base64url, JSON) in one request head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqshield::config::Identifier;
use seqshield::http::RequestHead;
use seqshield::session::{SessionCache, SessionIdentifier};

fuzz_target!(|data: &[u8]| {
    // Three header values, split at the first two 0xff bytes.
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let (cookie, header, authorization) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let headers = [
        httparse::Header {
            name: "Cookie",
            value: cookie,
        },
        httparse::Header {
            name: "X-Session",
            value: header,
        },
        httparse::Header {
            name: "Authorization",
            value: authorization,
        },
    ];
    let head = RequestHead {
        method: "GET",
        target: "/",
        minor_version: 1,
        headers: &headers,
    };
    let identifiers = [
        Identifier::JwtClaim("sub".into()),
        Identifier::Cookie("sid".into()),
        Identifier::Header("x-session".into()),
    ];
    for i in 0..identifiers.len() {
        let identifier = SessionIdentifier::new(&identifiers[i..i + 1], &[7; 32]);
        let _ = identifier.identify(&head, &mut SessionCache::default());
    }
});
