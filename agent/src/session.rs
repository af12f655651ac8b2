//! Sessions (SPEC §2, §3): which session a request belongs to, and each session's
//! history of recent operations, in a bounded table.
//!
//! Raw identifier values never leave this module: a session is named by a keyed BLAKE3
//! hash of its value, with one key per configured identifier derived from the install's
//! secret, so cookie `sid=X` and JWT `sub=X` are different sessions.

use std::fmt;
use std::hash::BuildHasher;

use base64::Engine as _;

use crate::Nanos;
use crate::config::{ConfigError, Identifier};
use crate::evict::EvictionQueue;
use crate::http::RequestHead;
use crate::ops::OpId;

/// Operations a session remembers (SPEC §3).
pub const HISTORY_LEN: usize = 10;

/// A session, named by the keyed hash of its identifier value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Finds a request's session from the configured identifiers, in order.
pub struct SessionIdentifier {
    identifiers: Vec<(Identifier, [u8; 32])>,
    /// When set, a JWT names a session only if its signature verifies.
    verifier: Option<JwtVerifier>,
}

/// The keys JWTs must be signed with (`[session] jwt_secret_file`, `jwks_file`).
pub struct JwtVerifier {
    keys: Vec<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwtVerifier({} keys)", self.keys.len())
    }
}

impl JwtVerifier {
    /// The verifier the config asks for, if any; unreadable or unusable key files are
    /// refused with the file and key named.
    pub fn from_config(config: &crate::config::Config) -> Result<Option<Self>, ConfigError> {
        let session = &config.session;
        let err = |key: &str, reason: String| ConfigError::new(&config.source, key, reason);
        let mut keys = Vec::new();
        if let Some(path) = &session.jwt_secret_file {
            let secret = std::fs::read(path).map_err(|e| {
                err(
                    "session.jwt_secret_file",
                    format!("{}: {e}", path.display()),
                )
            })?;
            let secret = secret.trim_ascii_end();
            if secret.is_empty() {
                return Err(err(
                    "session.jwt_secret_file",
                    format!("{} is empty", path.display()),
                ));
            }
            keys.push((
                jsonwebtoken::DecodingKey::from_secret(secret),
                validation(jsonwebtoken::Algorithm::HS256),
            ));
        }
        if let Some(path) = &session.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err("session.jwks_file", format!("{}: {e}", path.display())))?;
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text).map_err(|e| {
                err(
                    "session.jwks_file",
                    format!("{} is not a JWKS: {e}", path.display()),
                )
            })?;
            for (i, jwk) in set.keys.iter().enumerate() {
                use jsonwebtoken::jwk::AlgorithmParameters as P;
                let algorithm = match &jwk.algorithm {
                    P::RSA(_) => jsonwebtoken::Algorithm::RS256,
                    P::EllipticCurve(_) => jsonwebtoken::Algorithm::ES256,
                    P::OctetKey(_) => jsonwebtoken::Algorithm::HS256,
                    P::OctetKeyPair(_) => jsonwebtoken::Algorithm::EdDSA,
                };
                let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| {
                    err(
                        "session.jwks_file",
                        format!("{}: key {i}: {e}", path.display()),
                    )
                })?;
                keys.push((key, validation(algorithm)));
            }
            if keys.is_empty() {
                return Err(err(
                    "session.jwks_file",
                    format!("{} holds no keys", path.display()),
                ));
            }
        }
        Ok((!keys.is_empty()).then_some(Self { keys }))
    }

    /// The token's claims if one of the keys verifies its signature. Expiry is not
    /// checked: the claim only has to be genuine to name its holder's session.
    fn verified_claims(&self, token: &str) -> Option<serde_json::Value> {
        self.keys.iter().find_map(|(key, validation)| {
            jsonwebtoken::decode::<serde_json::Value>(token, key, validation)
                .ok()
                .map(|data| data.claims)
        })
    }
}

fn validation(algorithm: jsonwebtoken::Algorithm) -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(algorithm);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims = std::collections::HashSet::new();
    v
}

impl SessionIdentifier {
    /// `secret` is the install's key (state dir); each identifier gets its own derived key.
    pub fn new(identifiers: &[Identifier], secret: &[u8; 32]) -> Self {
        let identifiers = identifiers
            .iter()
            .map(|ident| {
                let key = blake3::keyed_hash(secret, ident.to_string().as_bytes());
                (ident.clone(), *key.as_bytes())
            })
            .collect();
        Self {
            identifiers,
            verifier: None,
        }
    }

    /// JWT claims then name a session only when the token verifies.
    pub fn with_verifier(mut self, verifier: Option<JwtVerifier>) -> Self {
        self.verifier = verifier;
        self
    }

    /// The session of a request, or `None` when it carries no identifier (unidentified).
    /// `cache` belongs to the request's connection.
    pub fn identify(&self, head: &RequestHead<'_>, cache: &mut SessionCache) -> Option<SessionId> {
        for (i, (ident, key)) in self.identifiers.iter().enumerate() {
            let raw = match ident {
                Identifier::Header(name) => head.header(name).map(<[u8]>::trim_ascii),
                Identifier::Cookie(name) => head
                    .headers_named("cookie")
                    .find_map(|v| cookie_value(v, name.as_bytes())),
                // The whole Authorization value: the same token names the same claim.
                Identifier::JwtClaim(_) => head.header("authorization").map(<[u8]>::trim_ascii),
            };
            let Some(raw) = raw.filter(|v| !v.is_empty()) else {
                continue;
            };
            if let Some(id) = cache.get(i, raw) {
                return Some(id);
            }
            let id = match ident {
                Identifier::JwtClaim(path) => match jwt_claim(raw, path, self.verifier.as_ref()) {
                    Some(claim) => SessionId(hash64(key, claim.as_bytes())),
                    None => continue,
                },
                _ => SessionId(hash64(key, raw)),
            };
            cache.put(i, raw, id);
            return Some(id);
        }
        None
    }

    /// Hash of `value` under each configured identifier, for `seqshield session-hash`.
    pub fn hashes_of(&self, value: &str) -> Vec<(String, SessionId)> {
        self.identifiers
            .iter()
            .map(|(ident, key)| (ident.to_string(), SessionId(hash64(key, value.as_bytes()))))
            .collect()
    }
}

fn hash64(key: &[u8; 32], value: &[u8]) -> u64 {
    let h = blake3::keyed_hash(key, value);
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The value of cookie `name` in one `Cookie` header (RFC 6265 §5.4 `name=value; ...`).
fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let value = pair[eq + 1..].trim_ascii();
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        (pair[..eq].trim_ascii() == name && !value.is_empty()).then_some(value)
    })
}

/// A claim (dotted path) from the payload of an `Authorization: Bearer` JWT. Without a
/// verifier the signature is not checked (the claim only names a session, it grants
/// nothing — but a forged one can name someone else's); with one, a token that does not
/// verify names nothing.
fn jwt_claim(authorization: &[u8], path: &str, verifier: Option<&JwtVerifier>) -> Option<String> {
    let auth = std::str::from_utf8(authorization).ok()?.trim();
    let (scheme, token) = auth.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let claims: serde_json::Value = match verifier {
        Some(verifier) => verifier.verified_claims(token.trim())?,
        None => {
            let payload = token.trim().split('.').nth(1)?;
            let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()?;
            serde_json::from_slice(&json).ok()?
        }
    };
    let value = path.split('.').try_fold(&claims, |v, key| v.get(key))?;
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// The identifier value a connection last sent and the session it named. Keep-alive
/// connections repeat the same cookie or token on every request, so it is hashed (or
/// decoded) once per connection, not once per request.
#[derive(Debug, Default)]
pub struct SessionCache {
    /// Index of the identifier, +1 (0: empty).
    identifier: usize,
    raw: Vec<u8>,
    id: SessionId,
}

/// Longer identifier values are not cached (they are rare and would pin memory).
const MAX_CACHED_VALUE: usize = 4096;

impl SessionCache {
    fn get(&self, identifier: usize, raw: &[u8]) -> Option<SessionId> {
        (self.identifier == identifier + 1 && self.raw == raw).then_some(self.id)
    }

    fn put(&mut self, identifier: usize, raw: &[u8], id: SessionId) {
        if raw.len() <= MAX_CACHED_VALUE {
            self.identifier = identifier + 1;
            self.raw.clear();
            self.raw.extend_from_slice(raw);
            self.id = id;
        }
    }
}

/// One remembered request to an operation. Packed to 10 bytes (an operation id and a
/// time, no padding): a session's history is most of what a live session costs, and a
/// flood of a million sessions is a million histories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C, packed(2))]
pub struct Entry {
    pub op: OpId,
    /// Time of the latest request to this operation at this position.
    pub at: Nanos,
}

/// A session's most recent operations, oldest first, repeats collapsed.
#[derive(Debug, Clone, Default)]
pub struct History {
    entries: [Entry; HISTORY_LEN],
    len: u8,
}

impl History {
    pub fn entries(&self) -> &[Entry] {
        &self.entries[..usize::from(self.len)]
    }

    /// Records a request; returns whether it is a new occurrence (not a collapsed repeat).
    pub fn record(&mut self, op: OpId, at: Nanos) -> bool {
        let len = usize::from(self.len);
        if len > 0 && self.entries[len - 1].op == op {
            self.entries[len - 1].at = at;
            return false;
        }
        if len == HISTORY_LEN {
            self.entries.copy_within(1.., 0);
            self.entries[HISTORY_LEN - 1] = Entry { op, at };
        } else {
            self.entries[len] = Entry { op, at };
            self.len += 1;
        }
        true
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Takes another copy's entries (the fleet's shared history), the newest
    /// `HISTORY_LEN` of them.
    pub fn replace(&mut self, entries: &[Entry]) {
        let entries = &entries[entries.len().saturating_sub(HISTORY_LEN)..];
        self.entries[..entries.len()].copy_from_slice(entries);
        self.len = entries.len() as u8;
    }
}

#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Kept here rather than in the table's index (which holds 4-byte slots).
    pub id: SessionId,
    pub history: History,
    pub last_seen: Nanos,
    /// When the session started (its first request after an idle reset), in
    /// milliseconds modulo 2^32: ages are exact up to 49 days in 4 bytes.
    started_ms: u32,
    /// Requests to operations since it started (saturating).
    requests: u16,
}

impl Session {
    /// Requests to operations since the session started, this one included.
    pub fn requests(&self) -> u64 {
        u64::from(self.requests)
    }

    /// Time since the session's first request (after an idle reset), to the millisecond.
    pub fn age(&self, now: Nanos) -> Nanos {
        u64::from(millis_u32(now).wrapping_sub(self.started_ms)) * 1_000_000
    }

    fn start(&mut self, now: Nanos) {
        self.history.clear();
        self.started_ms = millis_u32(now);
        self.requests = 0;
    }
}

/// `t` in milliseconds modulo 2^32 (how a session's start is kept).
pub fn millis_u32(t: Nanos) -> u32 {
    (t / 1_000_000) as u32
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SessionStats {
    /// Removed because the table was full (`max_sessions`).
    pub sessions_evicted: u64,
    /// Removed after `idle_timeout` without a request.
    pub sessions_expired: u64,
}

/// A session as snapshots store it (the id is the keyed hash, never the raw value).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionState {
    pub id: u64,
    pub last_seen: Nanos,
    /// (operation id, time of its latest request), oldest first.
    pub history: Vec<(OpId, Nanos)>,
    /// When it started, in milliseconds modulo 2^32 (see [`Session::age`]).
    pub started_ms: u32,
    pub requests: u16,
}

/// Sessions kept in fixed-size chunks, found through an index of 4-byte slots: the
/// table grows a chunk at a time. (A hash map of whole sessions doubles, and while it
/// rehashes holds both copies: at a million sessions that was 555 MB of a 659 MB peak;
/// an index of (id, slot) pairs cost 34 bytes a session, this one 10.)
struct SessionTable {
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    chunks: Vec<Box<[Session]>>,
    /// Slots of removed sessions, reused first.
    free: Vec<u32>,
}

/// Sessions per chunk (a chunk is about 480 KB).
const CHUNK_SESSIONS: usize = 4096;

fn in_chunks(chunks: &[Box<[Session]>], slot: u32) -> &Session {
    let slot = slot as usize;
    &chunks[slot / CHUNK_SESSIONS][slot % CHUNK_SESSIONS]
}

impl SessionTable {
    fn new() -> Self {
        Self {
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            chunks: Vec::new(),
            free: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn slot_mut(&mut self, slot: u32) -> &mut Session {
        let slot = slot as usize;
        &mut self.chunks[slot / CHUNK_SESSIONS][slot % CHUNK_SESSIONS]
    }

    fn get(&self, id: &SessionId) -> Option<&Session> {
        let hash = self.hasher.hash_one(id);
        let chunks = &self.chunks;
        self.index
            .find(hash, |&slot| in_chunks(chunks, slot).id == *id)
            .map(|&slot| in_chunks(chunks, slot))
    }

    fn contains(&self, id: &SessionId) -> bool {
        self.get(id).is_some()
    }

    /// The session, and whether it was just created (empty).
    fn get_or_insert(&mut self, id: SessionId) -> (&mut Session, bool) {
        let hash = self.hasher.hash_one(id);
        let chunks = &self.chunks;
        if let Some(&slot) = self
            .index
            .find(hash, |&slot| in_chunks(chunks, slot).id == id)
        {
            return (self.slot_mut(slot), false);
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            // No free slot: every slot below the count of sessions is in use.
            let slot = self.index.len();
            if slot == self.chunks.len() * CHUNK_SESSIONS {
                self.chunks
                    .push(vec![Session::default(); CHUNK_SESSIONS].into_boxed_slice());
            }
            slot as u32
        });
        *self.slot_mut(slot) = Session {
            id,
            ..Session::default()
        };
        let Self {
            index,
            hasher,
            chunks,
            ..
        } = self;
        index.insert_unique(hash, slot, |&s| hasher.hash_one(in_chunks(chunks, s).id));
        (self.slot_mut(slot), true)
    }

    fn insert(&mut self, session: Session) {
        let id = session.id;
        *self.get_or_insert(id).0 = session;
    }

    fn remove(&mut self, id: &SessionId) {
        let hash = self.hasher.hash_one(id);
        let chunks = &self.chunks;
        if let Ok(entry) = self
            .index
            .find_entry(hash, |&slot| in_chunks(chunks, slot).id == *id)
        {
            let (slot, _) = entry.remove();
            self.free.push(slot);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&Session) -> bool) {
        let Self {
            index,
            chunks,
            free,
            ..
        } = self;
        index.retain(|&mut slot| {
            let kept = keep(in_chunks(chunks, slot));
            if !kept {
                free.push(slot);
            }
            kept
        });
    }

    fn iter(&self) -> impl Iterator<Item = &Session> {
        self.index.iter().map(|&slot| in_chunks(&self.chunks, slot))
    }
}

/// Live sessions, bounded by `max_sessions`.
pub struct Sessions {
    map: SessionTable,
    /// Which session to evict when `max_sessions` is reached.
    eviction: EvictionQueue<SessionId>,
    max_sessions: usize,
    idle_timeout: Nanos,
    last_sweep: Nanos,
    stats: SessionStats,
}

impl Sessions {
    pub fn new(max_sessions: usize, idle_timeout: Nanos) -> Self {
        Self {
            map: SessionTable::new(),
            eviction: EvictionQueue::default(),
            max_sessions: max_sessions.max(1),
            idle_timeout,
            last_sweep: 0,
            stats: SessionStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    pub fn export(&self) -> Vec<SessionState> {
        self.map
            .iter()
            .map(|s| SessionState {
                id: s.id.0,
                last_seen: s.last_seen,
                history: s.history.entries().iter().map(|e| (e.op, e.at)).collect(),
                started_ms: s.started_ms,
                requests: s.requests,
            })
            .collect()
    }

    /// Takes back saved sessions (up to `max_sessions`); entries whose operation is gone
    /// are dropped from their history.
    pub fn import(
        &mut self,
        sessions: Vec<SessionState>,
        stats: SessionStats,
        remap: &dyn Fn(OpId) -> Option<OpId>,
    ) {
        for saved in sessions {
            if self.map.len() >= self.max_sessions {
                break;
            }
            let mut history = History::default();
            for (op, at) in saved.history.iter().rev().take(HISTORY_LEN).rev() {
                if let Some(op) = remap(*op) {
                    history.record(op, *at);
                }
            }
            self.map.insert(Session {
                id: SessionId(saved.id),
                history,
                last_seen: saved.last_seen,
                started_ms: saved.started_ms,
                requests: saved.requests,
            });
            self.eviction.push(SessionId(saved.id), saved.last_seen);
        }
        self.stats = stats;
    }

    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.map.get(&id)
    }

    /// The session for a request at `now`, created if new, the request counted; it starts
    /// again (history cleared, age and count reset) when its previous request was more
    /// than `idle_timeout` ago.
    pub fn touch(&mut self, id: SessionId, now: Nanos) -> &mut Session {
        self.expire_idle(now);
        if self.map.len() >= self.max_sessions && !self.map.contains(&id) {
            self.evict_one(now);
        }
        let idle_timeout = self.idle_timeout;
        let (session, new) = self.map.get_or_insert(id);
        if new {
            self.eviction.push(id, now);
        }
        if new || now.saturating_sub(session.last_seen) > idle_timeout {
            session.start(now);
        }
        session.requests = session.requests.saturating_add(1);
        session.last_seen = session.last_seen.max(now);
        session
    }

    /// Forgets idle sessions, at most once per idle timeout of capture time.
    fn expire_idle(&mut self, now: Nanos) {
        if now.saturating_sub(self.last_sweep) < self.idle_timeout.max(1) {
            return;
        }
        self.last_sweep = now;
        let before = self.map.len();
        let idle_timeout = self.idle_timeout;
        self.map
            .retain(|s| now.saturating_sub(s.last_seen) <= idle_timeout);
        self.stats.sessions_expired += (before - self.map.len()) as u64;
        let map = &self.map;
        self.eviction.compact(map.len(), |id| map.contains(id));
    }

    /// Evicts a session not seen for a while (second chance, `evict.rs`): O(1)
    /// amortised, so a flood of new sessions costs no scans, and active sessions stay.
    fn evict_one(&mut self, now: Nanos) {
        let map = &self.map;
        let victim = self
            .eviction
            .victim(now, |id| map.get(id).map(|s| s.last_seen));
        if let Some(id) = victim {
            self.map.remove(&id);
            self.stats.sessions_evicted += 1;
        }
        let map = &self.map;
        self.eviction.compact(map.len(), |id| map.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_session_costs_128_bytes_and_freed_slots_are_reused() {
        assert_eq!(std::mem::size_of::<Entry>(), 10);
        assert_eq!(std::mem::size_of::<Session>(), 128);
        let mut table = SessionTable::new();
        for i in 0..5_000u64 {
            let (s, new) = table.get_or_insert(SessionId(i));
            assert!(new && s.history.entries().is_empty());
            s.history.record(1, i);
        }
        assert_eq!(table.chunks.len(), 2);
        table.retain(|s| s.history.entries()[0].at % 2 == 0);
        table.remove(&SessionId(4));
        assert_eq!(table.len(), 2_499);
        for i in 10_000..12_501u64 {
            let (s, new) = table.get_or_insert(SessionId(i));
            assert!(
                new && s.history.entries().is_empty(),
                "a reused slot starts empty"
            );
        }
        assert_eq!(table.chunks.len(), 2, "freed slots were reused");
        let at = |id| table.get(&SessionId(id)).map(|s| s.history.entries()[0].at);
        assert_eq!((at(6), at(4), at(7)), (Some(6), None, None));
        assert_eq!(table.iter().count(), 5_000);
    }

    fn head_with<'a>(headers: &'a [httparse::Header<'a>]) -> RequestHead<'a> {
        RequestHead {
            method: "GET",
            target: "/",
            minor_version: 1,
            headers,
        }
    }

    fn ident() -> SessionIdentifier {
        SessionIdentifier::new(
            &[
                Identifier::Cookie("sid".into()),
                Identifier::Header("X-Session-Id".into()),
                Identifier::JwtClaim("user.id".into()),
            ],
            &[7; 32],
        )
    }

    fn jwt(payload: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "Bearer {}.{}.sig",
            b64.encode(r#"{"alg":"none"}"#),
            b64.encode(payload)
        )
    }

    #[test]
    fn identifiers_in_order_and_distinct_per_identifier() {
        let id = ident();
        let cookie = [httparse::Header {
            name: "Cookie",
            value: b"a=1; sid=X; b=2",
        }];
        let header = [httparse::Header {
            name: "x-session-id",
            value: b"X",
        }];
        let both = [cookie[0], header[0]];
        let by_cookie = id
            .identify(&head_with(&cookie), &mut SessionCache::default())
            .unwrap();
        let by_header = id
            .identify(&head_with(&header), &mut SessionCache::default())
            .unwrap();
        assert_ne!(
            by_cookie, by_header,
            "cookie sid=X and header X are different sessions"
        );
        assert_eq!(
            id.identify(&head_with(&both), &mut SessionCache::default()),
            Some(by_cookie),
            "first identifier wins"
        );
        let hashes = id.hashes_of("X");
        assert_eq!(hashes[0], ("cookie:sid".into(), by_cookie));
        assert_eq!(hashes[1], ("header:x-session-id".into(), by_header));
    }

    #[test]
    fn empty_values_do_not_identify() {
        let id = ident();
        let h = [
            httparse::Header {
                name: "Cookie",
                value: b"sid=",
            },
            httparse::Header {
                name: "X-Session-Id",
                value: b"  ",
            },
        ];
        assert_eq!(
            id.identify(&head_with(&h), &mut SessionCache::default()),
            None
        );
    }

    #[test]
    fn jwt_claim_by_dotted_path() {
        let id = ident();
        let token = jwt(r#"{"user":{"id":42}}"#);
        let h = [httparse::Header {
            name: "Authorization",
            value: token.as_bytes(),
        }];
        let got = id
            .identify(&head_with(&h), &mut SessionCache::default())
            .unwrap();
        assert_eq!(got, id.hashes_of("42")[2].1);
        let bad = [httparse::Header {
            name: "Authorization",
            value: b"Bearer not-a-jwt",
        }];
        assert_eq!(
            id.identify(&head_with(&bad), &mut SessionCache::default()),
            None
        );
    }

    /// A verifier from a config whose key files are written in a temp dir.
    fn verifier(
        secret: Option<&[u8]>,
        jwks: Option<&str>,
    ) -> Result<Option<JwtVerifier>, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        if let Some(secret) = secret {
            let path = dir.path().join("jwt.secret");
            std::fs::write(&path, secret).unwrap();
            config.session.jwt_secret_file = Some(path);
        }
        if let Some(jwks) = jwks {
            let path = dir.path().join("jwks.json");
            std::fs::write(&path, jwks).unwrap();
            config.session.jwks_file = Some(path);
        }
        JwtVerifier::from_config(&config)
    }

    fn signed(sub: &str, key: &[u8]) -> String {
        let claims = serde_json::json!({ "sub": sub });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap();
        format!("Bearer {token}")
    }

    fn session_of(id: &SessionIdentifier, authorization: &str) -> Option<SessionId> {
        let h = [httparse::Header {
            name: "Authorization",
            value: authorization.as_bytes(),
        }];
        id.identify(&head_with(&h), &mut SessionCache::default())
    }

    #[test]
    fn verified_jwts_name_sessions_and_forged_ones_do_not() {
        let subs = [Identifier::JwtClaim("sub".into())];
        let secret = b"a shared secret of the API's auth service";
        let id = SessionIdentifier::new(&subs, &[7; 32])
            .with_verifier(verifier(Some(&secret[..]), None).unwrap());
        let alice = id.hashes_of("alice")[0].1;
        assert_eq!(session_of(&id, &signed("alice", secret)), Some(alice));
        // Signed with another key, unsigned, or a payload swapped under a good signature.
        assert_eq!(session_of(&id, &signed("alice", b"guess")), None);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let unsigned = format!(
            "Bearer {}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(r#"{"sub":"alice"}"#)
        );
        assert_eq!(session_of(&id, &unsigned), None);
        let good = signed("bob", secret);
        let parts: Vec<&str> = good.split('.').collect();
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(r#"{"sub":"alice"}"#),
            parts[2]
        );
        assert_eq!(session_of(&id, &swapped), None);
        // Without a verifier the claim is read as it is (the documented default).
        let open = SessionIdentifier::new(&subs, &[7; 32]);
        assert_eq!(session_of(&open, &unsigned), Some(alice));
    }

    #[test]
    fn jwks_keys_verify_and_bad_key_files_are_refused() {
        let secret = b"jwks shared key";
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let jwks = format!(r#"{{"keys":[{{"kty":"oct","k":"{k}","alg":"HS256"}}]}}"#);
        let id = SessionIdentifier::new(&[Identifier::JwtClaim("sub".into())], &[7; 32])
            .with_verifier(verifier(None, Some(&jwks)).unwrap());
        assert!(session_of(&id, &signed("carol", secret)).is_some());
        assert!(session_of(&id, &signed("carol", b"other")).is_none());
        let e = verifier(None, Some("not json")).unwrap_err();
        assert_eq!(e.key, "session.jwks_file");
        let e = verifier(None, Some(r#"{"keys":[]}"#)).unwrap_err();
        assert!(e.reason.contains("no keys"), "{e}");
        let e = verifier(Some(b"\n"), None).unwrap_err();
        assert_eq!(e.key, "session.jwt_secret_file");
        assert!(verifier(None, None).unwrap().is_none());
    }

    #[test]
    fn history_collapses_repeats_and_keeps_ten() {
        let mut h = History::default();
        assert!(h.record(1, 10));
        assert!(!h.record(1, 20));
        assert_eq!(h.entries(), &[Entry { op: 1, at: 20 }]);
        for op in 2..=12 {
            assert!(h.record(op, u64::from(op)));
        }
        assert_eq!(h.entries().len(), HISTORY_LEN);
        assert_eq!(h.entries()[0].op, 3);
        assert_eq!(h.entries()[9].op, 12);
    }

    #[test]
    fn idle_reset_is_strictly_more_than_the_timeout() {
        let mut s = Sessions::new(10, 100);
        s.touch(SessionId(1), 0).history.record(1, 0);
        assert_eq!(s.touch(SessionId(1), 100).history.entries().len(), 1);
        assert_eq!(s.touch(SessionId(1), 201).history.entries().len(), 0);
    }

    #[test]
    fn a_session_counts_its_requests_and_age_until_an_idle_reset() {
        let ms = 1_000_000;
        let mut s = Sessions::new(10, 1_000 * ms);
        let t0 = 1_700_000_000_000 * ms;
        assert_eq!(s.touch(SessionId(1), t0).requests(), 1);
        let session = s.touch(SessionId(1), t0 + 900 * ms);
        assert_eq!(
            (session.requests(), session.age(t0 + 900 * ms)),
            (2, 900 * ms)
        );
        let session = s.touch(SessionId(1), t0 + 2_000 * ms);
        assert_eq!(
            (session.requests(), session.age(t0 + 2_000 * ms)),
            (1, 0),
            "idle reset"
        );
    }

    #[test]
    fn table_is_bounded() {
        let mut s = Sessions::new(100, u64::MAX);
        for i in 0..10_000u64 {
            s.touch(SessionId(i), i);
            assert!(s.len() <= 100);
        }
        assert_eq!(s.stats().sessions_evicted, 9_900);
    }

    #[test]
    fn an_active_session_survives_a_flood_of_new_ones() {
        let mut s = Sessions::new(100, u64::MAX);
        s.touch(SessionId(u64::MAX), 0).history.record(7, 0);
        for i in 0..10_000u64 {
            s.touch(SessionId(i), i);
            s.touch(SessionId(u64::MAX), i);
            assert!(s.eviction.len() <= 2 * s.len() + 1024);
        }
        let active = s
            .get(SessionId(u64::MAX))
            .expect("the active session was evicted");
        assert_eq!(active.history.entries().len(), 1, "its history was lost");
    }
}
