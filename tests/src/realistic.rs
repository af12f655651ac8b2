//! A capture shaped like a busy API host's, for end-to-end replay benchmarks: thousands
//! of sessions spread over hours on keep-alive connections (some carrying several
//! sessions, as behind a proxy), a wider API than the bank's four endpoints (discovered
//! from the traffic), both directions with response bodies, and a share of sessions
//! that transfer without checking the balance first (the bank rule's alerts).
//! Deterministic: the same shape always writes the same bytes.

use crate::bank::{HOST, Ident, MS, SEC, T0, jwt};
use crate::capture::{Capture, Conn};

/// How big the capture is.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub requests: usize,
    pub sessions: usize,
    pub connections: usize,
    pub seconds: u64,
}

impl Default for Shape {
    /// 300 000 requests, 20 000 sessions on 17 000 connections, over two hours.
    fn default() -> Self {
        Self {
            requests: 300_000,
            sessions: 20_000,
            connections: 17_000,
            seconds: 2 * 3600,
        }
    }
}

/// splitmix64: small, fast, and good enough to vary traffic reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What one request asks for: method, target, body.
type Call = (&'static str, String, Option<String>);

/// The next call of a session browsing the API (`user` and `account` are its own).
fn browse(rng: &mut Rng, user: u64, account: u64) -> Call {
    let page = rng.below(20);
    let other = rng.below(100_000);
    match rng.below(20) {
        0..=3 => ("GET", format!("/api/v1/accounts/{account}/balance"), None),
        4 => ("GET", format!("/api/v1/users/{user}/accounts"), None),
        5..=6 => (
            "GET",
            format!("/api/v1/accounts/{account}/transactions?page={page}"),
            None,
        ),
        7 => (
            "GET",
            format!("/api/v1/accounts/{account}/statements/{}", 1 + page % 12),
            None,
        ),
        8 => ("GET", format!("/api/v1/users/{user}/profile"), None),
        9 => (
            "PUT",
            format!("/api/v1/users/{user}/profile"),
            Some(format!(r#"{{"email":"u{user}@example.org"}}"#)),
        ),
        10 => ("GET", "/api/v1/cards".into(), None),
        11 => ("GET", format!("/api/v1/cards/{other}"), None),
        12 => (
            "POST",
            format!("/api/v1/cards/{other}/freeze"),
            Some("{}".into()),
        ),
        13 => ("GET", "/api/v1/payees".into(), None),
        14 => (
            "POST",
            "/api/v1/payees".into(),
            Some(format!(r#"{{"iban":"DE{other:020}"}}"#)),
        ),
        15 => ("DELETE", format!("/api/v1/payees/{other}"), None),
        16 => ("GET", "/api/v1/notifications".into(), None),
        17 => ("GET", format!("/api/v1/loans/{other}"), None),
        18 => (
            "GET",
            format!("/api/v1/rates/{}", ["EUR", "USD", "GBP"][page as usize % 3]),
            None,
        ),
        _ => transfer(account, other),
    }
}

fn transfer(account: u64, to: u64) -> Call {
    (
        "POST",
        "/api/v1/transferFunds".into(),
        Some(format!(r#"{{"from":{account},"to":{to},"amount":100}}"#)),
    )
}

/// One session's calls: log in, browse, and now and then transfer — after a balance
/// check, except for the careless (or malicious) few.
fn journey(rng: &mut Rng, user: u64, len: usize) -> Vec<Call> {
    let account = 1_000 + user;
    let careless = rng.chance(40);
    let mut calls = vec![(
        "POST",
        "/api/v1/login".to_string(),
        Some(format!(r#"{{"user":"u{user}","password":"hunter2"}}"#)),
    )];
    while calls.len() < len {
        let call = browse(rng, user, account);
        if call.1 == "/api/v1/transferFunds" && !careless {
            calls.push(("GET", format!("/api/v1/accounts/{account}/balance"), None));
        }
        calls.push(call);
    }
    calls.truncate(len.max(1));
    calls
}

fn request_bytes(call: &Call, ident: &Ident, request_id: u64) -> Vec<u8> {
    let (method, target, body) = call;
    let ident_line = match ident {
        Ident::Cookie(v) => format!("Cookie: theme=dark; lang=en; sid={v}\r\n"),
        Ident::Header(v) => format!("X-Session-Id: {v}\r\n"),
        Ident::Jwt(sub) => format!("Authorization: Bearer {}\r\n", jwt(sub)),
        Ident::None => String::new(),
    };
    let mut r = format!(
        "{method} {target} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) bank-web/4.2\r\n\
         Accept: application/json\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-GB,en;q=0.9\r\n\
         X-Request-Id: {request_id:016x}\r\n{ident_line}"
    );
    match body {
        Some(body) => r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => r.push_str("\r\n"),
    }
    r.into_bytes()
}

fn response_bytes(rng: &mut Rng) -> Vec<u8> {
    let body_len = 150 + rng.below(700) as usize;
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {body_len}\r\n\r\n"
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'x', body_len));
    r
}

/// Writes the capture: requests in time order across all connections, each answered.
pub fn capture(shape: &Shape) -> Capture {
    let mut rng = Rng(0x5e95_41e1_d000_0001);
    let span = shape.seconds * SEC;
    // Each session: when it starts, its think time, its calls.
    let mean_len = (shape.requests / shape.sessions.max(1)).max(1) as u64;
    let mut events: Vec<(u64, u32, u32)> = Vec::with_capacity(shape.requests + shape.sessions);
    let mut journeys = Vec::with_capacity(shape.sessions);
    // Session lengths vary around the mean and add up to exactly `requests`.
    let sessions = shape.sessions.clamp(1, shape.requests.max(1));
    let mut lengths: Vec<usize> = (0..sessions)
        .map(|_| (1 + rng.below(2 * mean_len - 1)) as usize)
        .collect();
    let mut sum: usize = lengths.iter().sum();
    while sum != shape.requests {
        let s = rng.below(sessions as u64) as usize;
        if sum > shape.requests && lengths[s] > 1 {
            lengths[s] -= 1;
            sum -= 1;
        } else if sum < shape.requests {
            lengths[s] += 1;
            sum += 1;
        }
    }
    for (s, &len) in lengths.iter().enumerate() {
        let calls = journey(&mut rng, s as u64, len);
        let think = (1 + rng.below(40)) * SEC;
        let duration = think * calls.len() as u64;
        let start = rng.below(span.saturating_sub(duration).max(1));
        for (i, _) in calls.iter().enumerate() {
            let jitter = rng.below(think / 2);
            events.push((start + i as u64 * think + jitter, s as u32, i as u32));
        }
        journeys.push(calls);
    }
    events.sort_unstable();

    let connection = |s: u32| s as usize % shape.connections.max(1);
    // Each connection closes after its last request.
    let mut last_event = vec![usize::MAX; shape.connections.max(1)];
    for (k, &(_, s, _)) in events.iter().enumerate() {
        last_event[connection(s)] = k;
    }
    let mut cap = Capture::new();
    let mut conns: Vec<Option<Conn>> = (0..shape.connections.max(1)).map(|_| None).collect();
    for (k, &(at, s, i)) in events.iter().enumerate() {
        let ts = T0 + at;
        let c = connection(s);
        let conn = match &mut conns[c] {
            Some(conn) => conn,
            slot => {
                let client = format!(
                    "10.{}.{}.{}:{}",
                    20 + c / 65_536,
                    c / 256 % 256,
                    c % 256,
                    20_000 + c % 40_000
                );
                slot.insert(cap.open(ts, &client, "10.0.0.2:80"))
            }
        };
        let ident = match s % 3 {
            0 => Ident::Cookie(format!("s{s:012x}")),
            1 => Ident::Header(format!("h{s:012x}")),
            _ => Ident::Jwt(format!("user-{s}")),
        };
        let call = &journeys[s as usize][i as usize];
        cap.send(ts, conn, &request_bytes(call, &ident, rng.next()));
        let response = response_bytes(&mut rng);
        cap.respond(ts + MS, conn, &response);
        if last_event[c] == k {
            cap.close(ts + 2 * MS, conn);
        }
    }
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_is_what_was_asked_for() {
        let shape = Shape {
            requests: 3_000,
            sessions: 200,
            connections: 170,
            seconds: 600,
        };
        let (report, alerts) = crate::replay(
            &crate::bank::config(2, ""),
            &capture(&shape).to_pcap(crate::capture::Link::Ethernet),
        );
        assert_eq!(report.stats.requests, 3_000);
        assert!(report.operations.len() >= 15, "{}", report.operations.len());
        assert!(!alerts.is_empty());
        assert!(report.sequences.len() > 100, "{}", report.sequences.len());
    }
}
