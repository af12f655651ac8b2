//! A bank-style API (the SPEC's example): users log in, list accounts, check a balance and
//! transfer funds; attackers skip straight from login to the transfer.

use crate::capture::{Capture, Conn};

pub const HOST: &str = "bank.test";
pub const LOGIN: &str = "POST bank.test/api/v1/login";
pub const ACCOUNTS: &str = "GET bank.test/api/v1/users/{user_id}/accounts";
pub const BALANCE: &str = "GET bank.test/api/v1/accounts/{account_id}/balance";
pub const TRANSFER: &str = "POST bank.test/api/v1/transferFunds";
pub const RULE_TITLE: &str = "transfer needs a balance check";

/// The bank API's endpoints and its allow rule (one file for every test, demo and
/// benchmark).
pub const API_TOML: &str = include_str!("../fixtures/bank-api.toml");

/// Issue 15's rules for benchmarks, appended to [`config`]: three expression rules (one
/// evaluated on every request), a rate rule and the enumeration signal, above the bank's
/// allow rule (which would end the evaluation first). They seldom fire: a benchmark
/// with them times rules, not alert writing (a synthetic session takes a step a
/// millisecond, so "too soon" is under 1 ms here).
pub const EXPRESSION_RULES: &str = r#"
[enumeration]
enabled = true

[[rule]]
title = "transfer too soon after login"
action = "log"
priority = 20
expression = '''sequence.current_op == "POST bank.test/api/v1/transferFunds" && sequence.msec_since_op["POST bank.test/api/v1/login"] < 1'''

[[rule]]
title = "transfer without listing accounts"
action = "log"
priority = 20
expression = '''sequence.current_op == "POST bank.test/api/v1/transferFunds" && !sequence.previous_ops.exists(op, op == "GET bank.test/api/v1/users/{user_id}/accounts")'''

[[rule]]
title = "busy session posting"
action = "log"
priority = 20
expression = '''session.request_count > 200 && http.request.method == "POST"'''

[[rule]]
title = "balance checks"
kind = "rate"
action = "log"
priority = 20
operation = "GET bank.test/api/v1/accounts/{account_id}/balance"
limit = 100
"#;

/// The rule's id in [`API_TOML`].
pub const RULE_ID: &str = "6f1c1f9e-3f43-4a53-9d2c-2a4c1d3e5b7a";

/// [`API_TOML`] with ports 80 and 8080, the three identifiers and `min_support`;
/// `extra` is appended (sections such as `[state]`).
pub fn config(min_support: u64, extra: &str) -> String {
    format!(
        "[capture]\nports = [80, 8080]\n\n[session]\nidentifiers = [ {{ cookie = \"sid\" }}, {{ header = \"x-session-id\" }}, {{ jwt_claim = \"sub\" }} ]\n\n\
         [sequence]\nmin_support = {min_support}\n\n{API_TOML}\n{extra}\n"
    )
}

/// How a client names its session.
#[derive(Debug, Clone)]
pub enum Ident {
    Cookie(String),
    Header(String),
    /// A JWT whose `sub` claim is this value.
    Jwt(String),
    None,
}

impl Ident {
    fn header_line(&self) -> String {
        match self {
            Ident::Cookie(v) => format!("Cookie: theme=dark; sid={v}\r\n"),
            Ident::Header(v) => format!("X-Session-Id: {v}\r\n"),
            Ident::Jwt(sub) => format!("Authorization: Bearer {}\r\n", jwt(sub)),
            Ident::None => String::new(),
        }
    }
}

/// An unsigned JWT carrying `sub` (seqshield reads claims without checking signatures).
pub fn jwt(sub: &str) -> String {
    let b64 = |s: &str| base64url(s.as_bytes());
    format!(
        "{}.{}.c2ln",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"{sub}","scope":"bank"}}"#))
    )
}

fn base64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// One request with a Content-Length body when `body` is given.
pub fn request(method: &str, path: &str, ident: &Ident, body: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: bank-client/1.0\r\nAccept: application/json\r\n{}",
        ident.header_line()
    );
    if let Some(body) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        r.push_str("\r\n");
    }
    r.into_bytes()
}

pub fn login(ident: &Ident, user: u32) -> Vec<u8> {
    request(
        "POST",
        "/api/v1/login",
        ident,
        Some(&format!(r#"{{"user":"u{user}","password":"hunter2"}}"#)),
    )
}

pub fn accounts(ident: &Ident, user: u32) -> Vec<u8> {
    request(
        "GET",
        &format!("/api/v1/users/{user}/accounts"),
        ident,
        None,
    )
}

pub fn balance(ident: &Ident, account: u32) -> Vec<u8> {
    request(
        "GET",
        &format!("/api/v1/accounts/{account}/balance?currency=EUR"),
        ident,
        None,
    )
}

pub fn transfer(ident: &Ident, from: u32, to: u32) -> Vec<u8> {
    request(
        "POST",
        "/api/v1/transferFunds",
        ident,
        Some(&format!(r#"{{"from":{from},"to":{to},"amount":100}}"#)),
    )
}

/// The legit journey: login → accounts → balance → transfer.
pub fn legit_journey(ident: &Ident, user: u32) -> Vec<Vec<u8>> {
    vec![
        login(ident, user),
        accounts(ident, user),
        balance(ident, 1000 + user),
        transfer(ident, 1000 + user, 2000 + user),
    ]
}

/// The attacker's journey: login → transfer, skipping the balance check.
pub fn attacker_journey(ident: &Ident, user: u32) -> Vec<Vec<u8>> {
    vec![login(ident, user), transfer(ident, 1000 + user, 666)]
}

/// Sends `requests` on a fresh keep-alive connection, one request per segment, each
/// answered by a small response; returns the time after the last one.
pub fn session_on_one_connection(
    cap: &mut Capture,
    t: u64,
    client: &str,
    requests: &[Vec<u8>],
) -> u64 {
    let mut conn = cap.open(t, client, "10.0.0.2:80");
    let t = send_all(cap, t, &mut conn, requests);
    cap.close(t, &mut conn);
    t + MS
}

fn send_all(cap: &mut Capture, mut t: u64, conn: &mut Conn, requests: &[Vec<u8>]) -> u64 {
    for r in requests {
        t += MS;
        cap.send(t, conn, r);
        cap.respond(
            t + MS / 2,
            conn,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        );
    }
    t
}

pub const MS: u64 = 1_000_000;
pub const SEC: u64 = 1_000 * MS;
/// 2026-11-26T00:00:00Z: capture times start here.
pub const T0: u64 = 1_795_651_200 * SEC;

/// Synthetic load for benchmarks and the demo: `sessions` sessions of eleven requests
/// (attackers: four), `concurrency` keep-alive connections open at a time, every
/// `attacker_every`-th session an attacker. Requests are interleaved across connections as
/// on a busy server. Returns the capture and every request sent, in order.
pub fn synthetic(
    sessions: usize,
    concurrency: usize,
    attacker_every: usize,
) -> (Capture, Vec<Vec<u8>>) {
    let mut cap = Capture::new();
    let mut sent = Vec::new();
    let mut t = T0;
    for batch_start in (0..sessions).step_by(concurrency) {
        let batch: Vec<usize> = (batch_start..(batch_start + concurrency).min(sessions)).collect();
        let mut conns = Vec::new();
        let mut scripts = Vec::new();
        for &s in &batch {
            let ident = match s % 3 {
                0 => Ident::Cookie(format!("c{s:08x}")),
                1 => Ident::Header(format!("h{s:08x}")),
                _ => Ident::Jwt(format!("user-{s}")),
            };
            let user = s as u32;
            let script = if attacker_every > 0 && s % attacker_every == attacker_every - 1 {
                let mut a = attacker_journey(&ident, user);
                a.extend(attacker_journey(&ident, user));
                a
            } else {
                let mut j = legit_journey(&ident, user);
                j.extend(legit_journey(&ident, user).into_iter().skip(1));
                j.extend([
                    balance(&ident, 1000 + user),
                    transfer(&ident, 1000 + user, 3000),
                ]);
                j.push(accounts(&ident, user));
                j.push(balance(&ident, 1000 + user));
                j
            };
            let client = format!(
                "10.{}.{}.{}:{}",
                1 + s / 65_536 % 200,
                s / 256 % 256,
                s % 256,
                10_000 + s % 50_000
            );
            conns.push(cap.open(t, &client, "10.0.0.2:80"));
            scripts.push(script);
        }
        let longest = scripts.iter().map(Vec::len).max().unwrap_or(0);
        for step in 0..longest {
            for (conn, script) in conns.iter_mut().zip(&scripts) {
                if let Some(r) = script.get(step) {
                    t += 10_000;
                    cap.send(t, conn, r);
                    sent.push(r.clone());
                }
            }
        }
        for conn in &mut conns {
            t += 10_000;
            cap.close(t, conn);
        }
    }
    (cap, sent)
}
