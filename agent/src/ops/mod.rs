//! API operations (SPEC §1): configured endpoints and OpenAPI imports matched first, then
//! discovery; every operation is interned to a small [`OpId`] for the hot path and has a
//! stable text id derived from (method, host, template).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::config::{Config, ConfigError, EndpointConfig};

mod discovery;
mod normalise;
mod openapi;

pub use discovery::{is_discovered_template, normalise_path};
pub use normalise::{is_ip_literal, normalise_request_path};

/// Index of an operation in the [`Catalog`].
pub type OpId = u16;

/// Hard ceiling on operations (configured + discovered): ids must fit an [`OpId`].
pub const MAX_CATALOG: usize = u16::MAX as usize - 1;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Operation {
    /// Stable across restarts and hosts: a hash of method, host and template.
    pub id: String,
    pub host: String,
    pub method: String,
    /// Path template, as configured or as discovered.
    pub path: String,
    pub configured: bool,
}

impl Operation {
    fn new(host: &str, method: &str, path: &str, configured: bool) -> Self {
        Self {
            id: stable_id(host, method, path),
            host: host.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            configured,
        }
    }

    /// `"METHOD host/path-template"`, the form rules and reports use.
    pub fn human(&self) -> String {
        human_form(&self.method, &self.host, &self.path)
    }
}

fn human_form(method: &str, host: &str, path: &str) -> String {
    format!("{method} {host}{path}")
}

/// 12 hex characters of BLAKE3 over the operation's parts: short, and the same on every
/// host and across restarts.
pub fn stable_id(host: &str, method: &str, path: &str) -> String {
    let mut h = blake3::Hasher::new();
    for part in [method, host, path] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    let digest = h.finalize();
    let mut id = String::with_capacity(12);
    for b in &digest.as_bytes()[..6] {
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// What a request maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Op(OpId),
    /// No endpoint matched and discovery is off.
    Unmatched,
    /// Discovery is full (`max_operations`): counted as `other`, not sequenced.
    Other,
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Param,
}

/// Most path segments a configured template may have.
pub const MAX_TEMPLATE_SEGMENTS: usize = 32;

#[derive(Debug, Clone)]
struct Template {
    /// Empty matches any host.
    host: String,
    segments: Vec<Segment>,
    op: OpId,
}

impl Template {
    /// `parts`: the request path split at '/', without the leading empty part.
    fn matches(&self, host: &str, parts: &[&str]) -> bool {
        self.segments.len() == parts.len()
            && (self.host.is_empty() || self.host == host)
            && self
                .segments
                .iter()
                .zip(parts)
                .all(|(seg, part)| match seg {
                    Segment::Literal(l) => l == part,
                    Segment::Param => !part.is_empty(),
                })
    }
}

/// Configured templates of one method, most literal segments first, then file order.
#[derive(Debug)]
struct MethodTemplates {
    method: String,
    templates: Vec<Template>,
}

/// Splits a path at '/' (after the leading one) into `out`; `None` when it has more
/// segments than any template can.
fn split_path<'p>(path: &'p str, out: &mut [&'p str; MAX_TEMPLATE_SEGMENTS]) -> Option<usize> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let mut n = 0;
    let mut start = 0;
    for (i, b) in rest.bytes().enumerate() {
        if b == b'/' {
            *out.get_mut(n)? = &rest[start..i];
            n += 1;
            start = i + 1;
        }
    }
    *out.get_mut(n)? = &rest[start..];
    Some(n + 1)
}

/// Every known operation, and the matcher from requests to them.
#[derive(Debug)]
pub struct Catalog {
    ops: Vec<Operation>,
    /// `"METHOD host/path"` → id, for discovered lookups and rule references.
    by_human: HashMap<String, OpId, foldhash::fast::RandomState>,
    /// Stable id → id, for rule references and the histories other agents share.
    by_stable: HashMap<String, OpId, foldhash::fast::RandomState>,
    /// Configured templates, by method (a handful: a list beats a map).
    templates: Vec<MethodTemplates>,
    discovery: bool,
    max_discovered: usize,
    discovered: usize,
    /// `[operations] default_host`, and the hosts endpoints name (which keep theirs).
    default_host: Option<String>,
    known_hosts: Vec<String>,
    /// Reused to build discovered keys without allocating per request.
    scratch: String,
}

impl Catalog {
    /// Builds the catalog from `[[endpoint]]` and the OpenAPI file of a config.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut endpoints = config.endpoints.clone();
        if let Some(path) = config.openapi_path() {
            endpoints.extend(openapi::endpoints(&path).map_err(|reason| {
                ConfigError::new(
                    &config.source,
                    "operations.openapi",
                    format!("{}: {reason}", path.display()),
                )
            })?);
        }
        let mut catalog = Self {
            ops: Vec::new(),
            by_human: HashMap::default(),
            by_stable: HashMap::default(),
            templates: Vec::new(),
            discovery: config.operations.discovery,
            max_discovered: config.operations.max_operations,
            discovered: 0,
            default_host: None,
            known_hosts: Vec::new(),
            scratch: String::new(),
        };
        if let Some(host) = &config.operations.default_host {
            let mut normal = String::new();
            normalise_host(host.as_bytes(), &mut normal);
            catalog.default_host = Some(normal);
        }
        for ep in &endpoints {
            catalog
                .add_endpoint(ep)
                .map_err(|reason| ConfigError::new(&config.source, "endpoint", reason))?;
        }
        for group in &mut catalog.templates {
            // Stable sort: ties keep file order (SPEC §1).
            group.templates.sort_by_key(|t| {
                std::cmp::Reverse(
                    t.segments
                        .iter()
                        .filter(|s| matches!(s, Segment::Literal(_)))
                        .count(),
                )
            });
        }
        Ok(catalog)
    }

    fn add_endpoint(&mut self, ep: &EndpointConfig) -> Result<(), String> {
        let host = ep.host.to_ascii_lowercase();
        if !host.is_empty() && !self.known_hosts.contains(&host) {
            self.known_hosts.push(host.clone());
        }
        let human = human_form(&ep.method, &host, &ep.path);
        if self.by_human.contains_key(&human) {
            return Ok(()); // The same endpoint twice (config and OpenAPI): one operation.
        }
        let op = self.intern(Operation::new(&host, &ep.method, &ep.path, true))?;
        let segments: Vec<Segment> = ep
            .path
            .strip_prefix('/')
            .unwrap_or(&ep.path)
            .split('/')
            .map(|s| {
                if s.len() > 2 && s.starts_with('{') && s.ends_with('}') {
                    Segment::Param
                } else {
                    Segment::Literal(s.to_string())
                }
            })
            .collect();
        if segments.len() > MAX_TEMPLATE_SEGMENTS {
            return Err(format!(
                "{}: more than {MAX_TEMPLATE_SEGMENTS} path segments",
                ep.path
            ));
        }
        let template = Template { host, segments, op };
        match self.templates.iter_mut().find(|g| g.method == ep.method) {
            Some(group) => group.templates.push(template),
            None => self.templates.push(MethodTemplates {
                method: ep.method.clone(),
                templates: vec![template],
            }),
        }
        Ok(())
    }

    fn intern(&mut self, op: Operation) -> Result<OpId, String> {
        if self.ops.len() >= MAX_CATALOG {
            return Err(format!("more than {MAX_CATALOG} operations"));
        }
        let id = self.ops.len() as OpId;
        self.by_human.insert(op.human(), id);
        self.by_stable.insert(op.id.clone(), id);
        self.ops.push(op);
        Ok(id)
    }

    /// The operation with this stable id, if the catalog knows it.
    pub fn by_stable_id(&self, id: &str) -> Option<OpId> {
        self.by_stable.get(id).copied()
    }

    pub fn get(&self, id: OpId) -> &Operation {
        &self.ops[usize::from(id)]
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (OpId, &Operation)> {
        self.ops.iter().enumerate().map(|(i, op)| (i as OpId, op))
    }

    /// With `default_host` set: a missing host, an IP literal, or a host no endpoint
    /// names becomes the default host, as a server's default virtual host serves it.
    pub fn canonical_host(&self, host: &mut String) {
        let Some(default) = &self.default_host else {
            return;
        };
        if host.is_empty() || is_ip_literal(host) || !self.known_hosts.contains(host) {
            host.clear();
            host.push_str(default);
        }
    }

    /// Maps a request (host already normalised, path without query) to its operation.
    pub fn resolve(&mut self, host: &str, method: &str, path: &str) -> Resolved {
        if let Some(group) = self.templates.iter().find(|g| g.method == method) {
            let mut parts = [""; MAX_TEMPLATE_SEGMENTS];
            if let Some(n) = split_path(path, &mut parts)
                && let Some(t) = group
                    .templates
                    .iter()
                    .find(|t| t.matches(host, &parts[..n]))
            {
                return Resolved::Op(t.op);
            }
        }
        if !self.discovery {
            return Resolved::Unmatched;
        }
        let mut key = std::mem::take(&mut self.scratch);
        key.clear();
        key.push_str(method);
        key.push(' ');
        key.push_str(host);
        let template_at = key.len();
        normalise_path(path, &mut key);
        let resolved = match self.by_human.get(key.as_str()) {
            Some(&op) => Resolved::Op(op),
            None if self.discovered >= self.max_discovered => Resolved::Other,
            None => {
                let op = Operation::new(host, method, &key[template_at..], false);
                match self.intern(op) {
                    Ok(id) => {
                        self.discovered += 1;
                        Resolved::Op(id)
                    }
                    Err(_) => Resolved::Other,
                }
            }
        };
        self.scratch = key;
        resolved
    }

    /// Operation id for a saved operation (snapshot restore): the same operation if the
    /// catalog knows it, else a discovered one while discovery has room.
    pub fn restore(&mut self, op: &Operation) -> Option<OpId> {
        if let Some(&id) = self.by_human.get(&op.human()) {
            return Some(id);
        }
        if !self.discovery || self.discovered >= self.max_discovered {
            return None;
        }
        let id = self
            .intern(Operation::new(&op.host, &op.method, &op.path, false))
            .ok()?;
        self.discovered += 1;
        Some(id)
    }

    /// Finds the operation a rule names, by stable id or `"METHOD host/path-template"`.
    /// With discovery on, a human form that discovery would produce is accepted and
    /// interned ahead of its first request.
    pub fn lookup_for_rule(&mut self, name: &str) -> Result<OpId, String> {
        if let Some(&op) = self.by_human.get(name) {
            return Ok(op);
        }
        if let Some(op) = self.by_stable_id(name) {
            return Ok(op);
        }
        let parsed = name.split_once(' ').and_then(|(method, rest)| {
            let slash = rest.find('/')?;
            Some((method, &rest[..slash], &rest[slash..]))
        });
        let Some((method, host, path)) = parsed else {
            return Err(format!(
                "unknown operation {name:?}: not an operation id, and not of the form \"METHOD host/path\""
            ));
        };
        if !self.discovery {
            return Err(format!(
                "unknown operation {name:?}: no [[endpoint]] matches it and discovery is off"
            ));
        }
        let host = host.to_ascii_lowercase();
        if !is_discovered_template(path) {
            return Err(format!(
                "unknown operation {name:?}: no [[endpoint]] has this template, and discovery would not produce it \
                 (discovered placeholders are {{var1}}, {{var2}}, ...)"
            ));
        }
        if let Resolved::Op(op) = self.resolve(&host, method, path) {
            return Ok(op);
        }
        Err(format!(
            "unknown operation {name:?}: the operation catalog is full"
        ))
    }
}

/// Splits a request target into its authority (absolute-form, RFC 9112 §3.2.2) and its
/// path without query or fragment.
pub fn split_target(target: &str) -> (Option<&str>, &str) {
    let (authority, rest) = match target.as_bytes().first() {
        // Origin form, by far the most common: no authority to look for.
        Some(b'/') => (None, target),
        _ => match target.find("://") {
            Some(i) if !target[..i].contains('/') => {
                let after = &target[i + 3..];
                let end = after.find(['/', '?', '#']).unwrap_or(after.len());
                (Some(&after[..end]), &after[end..])
            }
            _ => (None, target),
        },
    };
    let path_end = rest
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(rest.len());
    let path = &rest[..path_end];
    match (authority, path.is_empty()) {
        (Some(_), true) => (authority, "/"),
        _ => (authority, path),
    }
}

/// Lowercases a host and drops a `:port` suffix (keeping IPv6 brackets) and a trailing
/// dot (`bank.test.` is `bank.test`), into `out`.
pub fn normalise_host(raw: &[u8], out: &mut String) {
    out.clear();
    let raw = raw.trim_ascii();
    // Userinfo in an absolute-form authority is not part of the host.
    let raw = match raw.iter().rposition(|&b| b == b'@') {
        Some(at) => &raw[at + 1..],
        None => raw,
    };
    let host = if raw.first() == Some(&b'[') {
        match raw.iter().position(|&b| b == b']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(colon) if raw[colon + 1..].iter().all(u8::is_ascii_digit) => &raw[..colon],
            _ => raw,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    let plain = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-');
    if host.iter().all(plain) {
        // Already normal (the common case): one copy.
        out.push_str(std::str::from_utf8(host).unwrap_or_default());
        return;
    }
    for &b in host {
        out.push(if b.is_ascii() {
            b.to_ascii_lowercase() as char
        } else {
            char::REPLACEMENT_CHARACTER
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn catalog(toml: &str) -> Catalog {
        let config = Config::parse(toml, Path::new("t.toml")).unwrap();
        Catalog::from_config(&config).unwrap()
    }

    #[test]
    fn hosts_are_normalised_and_unknown_ones_take_the_default() {
        let mut out = String::new();
        for raw in ["Bank.Test", "bank.test.", "bank.test:8080", "BANK.TEST.:80"] {
            normalise_host(raw.as_bytes(), &mut out);
            assert_eq!(out, "bank.test", "{raw}");
        }
        let toml = r#"
            [operations]
            default_host = "Bank.Test"
            [[endpoint]]
            host = "bank.test"
            method = "GET"
            path = "/a"
            [[endpoint]]
            host = "admin.test"
            method = "GET"
            path = "/a"
        "#;
        let c = catalog(toml);
        for (raw, want) in [
            ("", "bank.test"),
            ("10.0.0.2", "bank.test"),
            ("[2001:db8::1]", "bank.test"),
            ("evil.test", "bank.test"),
            ("bank.test", "bank.test"),
            ("admin.test", "admin.test"),
        ] {
            let mut host = raw.to_string();
            c.canonical_host(&mut host);
            assert_eq!(host, want, "{raw:?}");
        }
        // Without default_host, hosts are left as they are.
        let c = catalog("[[endpoint]]\nhost = \"bank.test\"\nmethod = \"GET\"\npath = \"/a\"\n");
        let mut host = "10.0.0.2".to_string();
        c.canonical_host(&mut host);
        assert_eq!(host, "10.0.0.2");
    }

    #[test]
    fn more_literal_segments_win_then_file_order() {
        let mut c = catalog(
            r#"
[[endpoint]]
host = "bank.test"
method = "GET"
path = "/api/{a}/{b}"
[[endpoint]]
host = "bank.test"
method = "GET"
path = "/api/users/{id}"
[[endpoint]]
host = "bank.test"
method = "GET"
path = "/api/{x}/me"
"#,
        );
        let Resolved::Op(op) = c.resolve("bank.test", "GET", "/api/users/7") else {
            panic!()
        };
        assert_eq!(c.get(op).path, "/api/users/{id}");
        let Resolved::Op(op) = c.resolve("bank.test", "GET", "/api/users/me") else {
            panic!()
        };
        assert_eq!(
            c.get(op).path,
            "/api/users/{id}",
            "equal literals: the earlier one"
        );
        let Resolved::Op(op) = c.resolve("bank.test", "GET", "/api/a/b") else {
            panic!()
        };
        assert_eq!(c.get(op).path, "/api/{a}/{b}");
        // A param never matches an empty segment; the method is case-sensitive.
        let Resolved::Op(op) = c.resolve("bank.test", "GET", "/api/users/") else {
            panic!()
        };
        assert!(!c.get(op).configured);
        let Resolved::Op(op) = c.resolve("bank.test", "get", "/api/users/7") else {
            panic!()
        };
        assert_eq!(c.get(op).path, "/api/users/{var1}");
    }

    #[test]
    fn discovery_is_capped_and_can_be_off() {
        let mut c = catalog("[operations]\nmax_operations = 2\n");
        assert!(matches!(c.resolve("h", "GET", "/a"), Resolved::Op(_)));
        assert!(matches!(c.resolve("h", "GET", "/b/12"), Resolved::Op(_)));
        assert!(
            matches!(c.resolve("h", "GET", "/b/13"), Resolved::Op(_)),
            "same template"
        );
        assert_eq!(c.resolve("h", "GET", "/c"), Resolved::Other);
        let mut c = catalog("[operations]\ndiscovery = false\n");
        assert_eq!(c.resolve("h", "GET", "/a"), Resolved::Unmatched);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(
            stable_id("bank.test", "GET", "/a"),
            stable_id("bank.test", "GET", "/a")
        );
        assert_ne!(
            stable_id("bank.test", "GET", "/a"),
            stable_id("bank.test", "POST", "/a")
        );
        assert_eq!(stable_id("h", "GET", "/a").len(), 12);
    }

    #[test]
    fn rules_name_operations_by_id_or_human_form() {
        let mut c = catalog("[[endpoint]]\nhost = \"b\"\nmethod = \"GET\"\npath = \"/x/{id}\"\n");
        let id = c.get(0).id.clone();
        assert_eq!(c.lookup_for_rule(&id), Ok(0));
        assert_eq!(c.lookup_for_rule("GET b/x/{id}"), Ok(0));
        let op = c.lookup_for_rule("POST b/transfer").unwrap();
        assert_eq!(c.resolve("b", "POST", "/transfer"), Resolved::Op(op));
        assert!(c.lookup_for_rule("POST b/users/{name}").is_err());
        assert!(c.lookup_for_rule("nonsense").is_err());
    }

    #[test]
    fn targets_and_hosts() {
        assert_eq!(split_target("/a/b?x=1#f"), (None, "/a/b"));
        assert_eq!(
            split_target("http://Bank.Test:8080/a?q"),
            (Some("Bank.Test:8080"), "/a")
        );
        assert_eq!(split_target("http://h"), (Some("h"), "/"));
        assert_eq!(split_target("*"), (None, "*"));
        let mut out = String::new();
        normalise_host(b"Bank.TEST:8080", &mut out);
        assert_eq!(out, "bank.test");
        normalise_host(b"[2001:DB8::1]:80", &mut out);
        assert_eq!(out, "[2001:db8::1]");
        normalise_host(b"user@h", &mut out);
        assert_eq!(out, "h");
    }
}
