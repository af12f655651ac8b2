//! The TOML configuration (SPEC §8): serde structs with documented defaults, loaded with
//! errors that name the file, the key and the reason.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A refused configuration: where, which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    pub file: String,
    /// Dotted path of the offending key (`rule[1].title`), or `-` for the whole file.
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            file: file.display().to_string(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub capture: CaptureConfig,
    pub operations: OperationsConfig,
    #[serde(rename = "endpoint")]
    pub endpoints: Vec<EndpointConfig>,
    pub session: SessionConfig,
    pub sequence: SequenceConfig,
    #[serde(rename = "rule")]
    pub rules: Vec<RuleConfig>,
    pub enforce: EnforceConfig,
    pub admin: AdminConfig,
    pub state: StateConfig,
    pub alerts: AlertsConfig,
    pub fleet: FleetConfig,
    pub enumeration: EnumerationConfig,
    /// Directory of the config file: relative paths in it (the OpenAPI file) resolve here.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this config came from, for error messages of later stages.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Interface the live agent attaches to (live mode only).
    pub interface: Option<String>,
    /// Server ports whose client → server traffic is analysed.
    pub ports: Vec<u16>,
    /// Payload bytes the kernel program copies per packet.
    pub snaplen: u32,
    /// A connection silent this long is forgotten (a later request picks it up again
    /// mid-stream). Long by default: servers such as Go's keep idle keep-alive
    /// connections open indefinitely; the flow table's cap bounds memory either way.
    #[serde(deserialize_with = "human_duration")]
    pub flow_idle_timeout: Duration,
    /// Bytes buffered across all connections while waiting for more: segments queued
    /// behind a reassembly hole and unfinished request heads (each also capped per
    /// connection). Beyond it the newest are dropped and counted.
    pub max_buffer_bytes: usize,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            interface: None,
            ports: vec![80, 8080],
            snaplen: 4096,
            flow_idle_timeout: Duration::from_secs(2 * 3600),
            max_buffer_bytes: crate::budget::DEFAULT_MAX_BUFFER_BYTES,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperationsConfig {
    /// Requests that match no endpoint become discovered operations.
    pub discovery: bool,
    /// Cap on discovered operations; later requests count as `other`.
    pub max_operations: usize,
    /// Optional OpenAPI v3 file (JSON or YAML), relative to the config file.
    pub openapi: Option<PathBuf>,
    /// When set, a request whose host is missing, an IP address, or named by no
    /// endpoint is taken as this host (the server's default virtual host serves it), so
    /// the `Host` header cannot move a request out of a rule's reach.
    pub default_host: Option<String>,
}

impl Default for OperationsConfig {
    fn default() -> Self {
        Self {
            discovery: true,
            max_operations: 10_000,
            openapi: None,
            default_host: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Index in the file's `[[endpoint]]` list (error messages).
    #[serde(skip)]
    pub position: usize,
    /// Empty matches any host; the operation's host is then empty too.
    #[serde(default)]
    pub host: String,
    pub method: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Identifier {
    Header(String),
    Cookie(String),
    JwtClaim(String),
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identifier::Header(name) => write!(f, "header:{}", name.to_ascii_lowercase()),
            Identifier::Cookie(name) => write!(f, "cookie:{name}"),
            Identifier::JwtClaim(path) => write!(f, "jwt_claim:{path}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Tried in order; the first one present with a non-empty value names the session.
    pub identifiers: Vec<Identifier>,
    /// Verify JWTs (HS256) with the shared secret in this file before a claim names a
    /// session; a token that does not verify names none.
    pub jwt_secret_file: Option<PathBuf>,
    /// Verify JWTs with the public keys of this JWKS file (RSA: RS256, EC: ES256, oct:
    /// HS256), likewise.
    pub jwks_file: Option<PathBuf>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            identifiers: vec![
                Identifier::Cookie("sid".into()),
                Identifier::Header("x-session-id".into()),
                Identifier::JwtClaim("sub".into()),
            ],
            jwt_secret_file: None,
            jwks_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SequenceConfig {
    /// Longest sequence counted and reported (2..=9).
    pub max_ops: usize,
    /// A session silent for longer than this starts a fresh history.
    #[serde(deserialize_with = "human_duration")]
    pub idle_timeout: Duration,
    /// Counts cover this much time before the report time (hourly buckets).
    #[serde(deserialize_with = "human_duration")]
    pub window: Duration,
    /// Sequences seen fewer times than this are left out of reports.
    pub min_support: u64,
    /// Live sessions kept; the least recently seen are evicted beyond it.
    pub max_sessions: usize,
    /// Distinct sequences tracked; the least supported are evicted beyond it.
    pub max_sequences: usize,
}

impl Default for SequenceConfig {
    fn default() -> Self {
        Self {
            max_ops: 9,
            idle_timeout: Duration::from_secs(600),
            window: Duration::from_secs(24 * 3600),
            min_support: 5,
            max_sessions: 1_000_000,
            max_sequences: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Allow,
    Block,
    /// A per-session request limit on one operation.
    Rate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Log,
    Block,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Index in the file's `[[rule]]` list (error messages).
    #[serde(skip)]
    pub position: usize,
    /// UUID; generated when absent.
    pub id: Option<String>,
    pub title: String,
    /// `allow` / `block` (a sequence) or `rate`; expression rules have none.
    #[serde(default)]
    pub kind: Option<RuleKind>,
    pub action: RuleAction,
    /// Operation ids or `"METHOD host/path-template"`.
    #[serde(default)]
    pub sequence: Vec<String>,
    /// A CEL condition over the request and its session (README "Expression rules"):
    /// the rule is violated when it holds.
    #[serde(default)]
    pub expression: Option<String>,
    /// Rate rules: the operation limited.
    #[serde(default)]
    pub operation: Option<String>,
    /// Rate rules: most requests a session may make to the operation per `period`.
    #[serde(default)]
    pub limit: Option<u64>,
    /// Rate rules: the window the limit counts over (aligned to the clock).
    #[serde(default, deserialize_with = "optional_human_duration")]
    pub period: Option<Duration>,
    /// Higher first; ties keep file order.
    #[serde(default)]
    pub priority: i64,
    /// Allow rules only: the final operation must come at least this long after the
    /// latest request to the previous one.
    #[serde(default, deserialize_with = "optional_human_duration")]
    pub min_interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforceMode {
    Monitor,
    Enforce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockScope {
    Connection,
    Session,
    ClientIp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnforceConfig {
    /// `monitor` reports `would_block`; `enforce` blocks.
    pub mode: EnforceMode,
    pub block_scope: BlockScope,
    /// Every kernel block entry expires after this.
    #[serde(deserialize_with = "human_duration")]
    pub block_ttl: Duration,
    /// skb->mark given to packets of flagged (logged) connections.
    pub flag_mark: u32,
    /// History entries a rule looks back at.
    pub lookback_ops: usize,
    /// Entries older than this are out of a rule's sight.
    #[serde(deserialize_with = "human_duration")]
    pub lookback: Duration,
    /// Enforce mode: also drop blocked clients' packets at the driver (XDP), handshakes
    /// included (they time out instead of being reset).
    pub xdp: bool,
    /// Enforce mode: hold requests to guarded operations (final operations of `block`
    /// rules) in the kernel until their verdict, so a violating one never reaches the
    /// application (SPEC §4).
    pub hold: bool,
    /// A held request with no verdict after this is released (fail-open).
    #[serde(deserialize_with = "human_duration")]
    pub hold_timeout: Duration,
}

impl Default for EnforceConfig {
    fn default() -> Self {
        Self {
            mode: EnforceMode::Monitor,
            block_scope: BlockScope::Connection,
            block_ttl: Duration::from_secs(600),
            flag_mark: 0x5e9,
            lookback_ops: 9,
            lookback: Duration::from_secs(600),
            xdp: false,
            hold: false,
            hold_timeout: Duration::from_millis(50),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin API address: loopback only unless the operator says otherwise;
    /// `"unix:/run/seqshield/admin.sock"` serves it on a 0600 unix socket instead.
    pub listen: String,
    /// The bearer token's file (created 0600 on first run); default: in `[state] dir`.
    pub token_file: Option<PathBuf>,
    /// Require the token for every endpoint but /healthz (it is always required to
    /// change anything, and for everything when `listen` is not loopback).
    pub require_token: bool,
    /// Leave `/metrics` open to reads without the token (for a Prometheus that has none).
    pub metrics_public: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            token_file: None,
            require_token: false,
            metrics_public: false,
        }
    }
}

impl AdminConfig {
    /// Where the bearer token is kept.
    pub fn token_path(&self, state_dir: &Path) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| state_dir.join(crate::state::ADMIN_TOKEN_FILE))
    }

    /// Whether reads need the token too: asked for, or reachable beyond this host (a
    /// unix socket is 0600, loopback is this host's).
    pub fn reads_need_token(&self) -> bool {
        if self.require_token {
            return true;
        }
        !self.stays_on_this_host()
    }

    /// Whether only this host can reach `listen`: a unix socket, a loopback address, or
    /// `localhost`.
    pub fn stays_on_this_host(&self) -> bool {
        let listen = &self.listen;
        listen.starts_with(crate::admin::UNIX_PREFIX)
            || listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback())
            || listen
                .rsplit_once(':')
                .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Alerts go to this file (JSON lines) instead of stdout.
    pub file: Option<PathBuf>,
    /// The file is rotated when it would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`file.1` … `file.N`).
    pub keep: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            file: None,
            max_bytes: 100 * 1024 * 1024,
            keep: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Learned counts and the session-hash key live here.
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/seqshield"),
        }
    }
}

/// `[fleet]` (SPEC §10): the agents of several API hosts share session histories in
/// Redis. Without `redis` nothing is shared.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// `redis://host:port/db` (or `redis+unix:///path`), or a list of Redis Cluster nodes.
    pub redis: Option<RedisNodes>,
    /// A slower answer falls back to the local view (counted).
    #[serde(deserialize_with = "human_duration")]
    pub timeout: Duration,
    /// The session-hash secret, distributed by the operator; by default one secret is
    /// created in Redis by the first agent and used by all.
    pub key_file: Option<PathBuf>,
    /// Redis password, read from this file (not written in the config).
    pub password_file: Option<PathBuf>,
    /// `rediss://`: the CA that signed Redis's certificate (PEM); default: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            redis: None,
            timeout: Duration::from_millis(5),
            key_file: None,
            password_file: None,
            ca_file: None,
        }
    }
}

/// `[enumeration]`: the BOLA signal. A session whose distinct path-variable values for
/// one operation in a 10-minute window pass `factor` × the operation's p99 (and
/// `min_distinct`) raises an `enumeration_suspected` alert; rules read it as
/// `session.enumeration_suspected`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnumerationConfig {
    pub enabled: bool,
    pub factor: f64,
    /// Fewer distinct values than this are never suspect (a young operation has no p99
    /// yet, and a p99 of 1 makes small counts look far above it).
    pub min_distinct: u64,
}

impl Default for EnumerationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            factor: 5.0,
            min_distinct: 20,
        }
    }
}

/// One Redis, or the nodes of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RedisNodes {
    One(String),
    Cluster(Vec<String>),
}

impl RedisNodes {
    pub fn urls(&self) -> &[String] {
        match self {
            Self::One(url) => std::slice::from_ref(url),
            Self::Cluster(urls) => urls,
        }
    }
}

/// Most identifiers a session definition may list (SPEC §2).
pub const MAX_IDENTIFIERS: usize = 10;
/// Longest rule title (SPEC §4).
pub const MAX_TITLE_CHARS: usize = 50;
/// Smallest `[capture] max_buffer_bytes`.
pub const MIN_BUFFER_BYTES: usize = 1 << 20;

impl Config {
    /// Reads and validates a config file. Checks that need the operation catalog (rule
    /// operations) happen when the pipeline is built.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "-", format!("cannot read the file: {e}")))?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_all(text, path).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Like [`Config::parse`], but finds every error it can in one pass: each section and
    /// each `[[endpoint]]` / `[[rule]]` is read on its own, so one mistake does not hide
    /// the next. Never returns an empty error list.
    pub fn parse_all(text: &str, path: &Path) -> Result<Self, Vec<ConfigError>> {
        let (config, errors) = Self::check(text, path);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// What could be read (defaults where a key was bad), and every error found.
    pub fn check(text: &str, path: &Path) -> (Self, Vec<ConfigError>) {
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                return (
                    Config::default(),
                    vec![ConfigError::new(path, "-", one_line(&e.to_string()))],
                );
            }
        };
        let mut errors = Vec::new();
        let mut config = Config {
            source: path.to_path_buf(),
            base_dir: path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            ..Config::default()
        };
        for (key, value) in table {
            match key.as_str() {
                "capture" => section(&mut config.capture, value, &key, path, &mut errors),
                "operations" => section(&mut config.operations, value, &key, path, &mut errors),
                "session" => section(&mut config.session, value, &key, path, &mut errors),
                "sequence" => section(&mut config.sequence, value, &key, path, &mut errors),
                "enforce" => section(&mut config.enforce, value, &key, path, &mut errors),
                "admin" => section(&mut config.admin, value, &key, path, &mut errors),
                "state" => section(&mut config.state, value, &key, path, &mut errors),
                "alerts" => section(&mut config.alerts, value, &key, path, &mut errors),
                "fleet" => section(&mut config.fleet, value, &key, path, &mut errors),
                "enumeration" => section(&mut config.enumeration, value, &key, path, &mut errors),
                "endpoint" => array(&mut config.endpoints, value, &key, path, &mut errors, |e, i| e.position = i),
                "rule" => array(&mut config.rules, value, &key, path, &mut errors, |r, i| r.position = i),
                other => errors.push(ConfigError::new(
                    path,
                    other,
                    "unknown section (expected capture, operations, endpoint, session, sequence, rule, enforce, admin, state, alerts, fleet, enumeration)",
                )),
            }
        }
        config.validate(&mut errors);
        (config, errors)
    }

    fn validate(&self, errors: &mut Vec<ConfigError>) {
        let mut err =
            |key: &str, reason: String| errors.push(ConfigError::new(&self.source, key, reason));
        let e = &self.enumeration;
        if !(e.factor.is_finite() && e.factor >= 1.0) {
            err(
                "enumeration.factor",
                format!("must be a number of at least 1, got {}", e.factor),
            );
        }
        let seq = &self.sequence;
        if !(2..=9).contains(&seq.max_ops) {
            err(
                "sequence.max_ops",
                format!("must be 2..=9, got {}", seq.max_ops),
            );
        }
        if seq.window < Duration::from_secs(3600) {
            err(
                "sequence.window",
                "must be at least 1h (hourly buckets)".into(),
            );
        }
        if seq.max_sessions == 0 || seq.max_sequences == 0 {
            err(
                "sequence",
                "max_sessions and max_sequences must be at least 1".into(),
            );
        }
        if self.session.identifiers.len() > MAX_IDENTIFIERS {
            err(
                "session.identifiers",
                format!(
                    "at most {MAX_IDENTIFIERS} identifiers, got {}",
                    self.session.identifiers.len()
                ),
            );
        }
        for (i, ident) in self.session.identifiers.iter().enumerate() {
            let (Identifier::Header(name) | Identifier::Cookie(name) | Identifier::JwtClaim(name)) =
                ident;
            if name.is_empty() {
                err(
                    &format!("session.identifiers[{i}]"),
                    "name must not be empty".into(),
                );
            }
        }
        let listen = &self.admin.listen;
        let valid_listen = match listen.strip_prefix("unix:") {
            Some(path) => path.starts_with('/'),
            None => {
                listen.parse::<std::net::SocketAddr>().is_ok()
                    || listen
                        .rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            }
        };
        if !valid_listen {
            err(
                "admin.listen",
                format!("{listen:?} is neither host:port nor unix:/absolute/path"),
            );
        }
        let hold_timeout = self.enforce.hold_timeout;
        if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&hold_timeout) {
            err(
                "enforce.hold_timeout",
                format!(
                    "must be 1ms..=10s (a held request waits this long at most), got {hold_timeout:?}"
                ),
            );
        }
        if self.capture.ports.is_empty() {
            err("capture.ports", "list at least one server port".into());
        }
        if let Some(nodes) = &self.fleet.redis {
            if nodes.urls().is_empty() {
                err("fleet.redis", "list at least one Redis node".into());
            }
            for url in nodes.urls() {
                if let Some(reason) = unusable_redis_url(url) {
                    err("fleet.redis", format!("{url:?}: {reason}"));
                }
            }
        }
        let fleet_timeout = self.fleet.timeout;
        if !(Duration::from_micros(100)..=Duration::from_secs(1)).contains(&fleet_timeout) {
            err(
                "fleet.timeout",
                format!(
                    "must be 100us..=1s (every request of a session may wait this long), got {fleet_timeout:?}"
                ),
            );
        }
        if self.capture.snaplen == 0 {
            err("capture.snaplen", "must be at least 1".into());
        }
        if self.capture.max_buffer_bytes < MIN_BUFFER_BYTES {
            err(
                "capture.max_buffer_bytes",
                format!(
                    "must be at least {MIN_BUFFER_BYTES} (1 MiB): one connection alone may \
                     buffer 256 KiB out of order and a 32 KiB head"
                ),
            );
        }
        for ep in &self.endpoints {
            let i = ep.position;
            if !ep.path.starts_with('/') {
                err(
                    &format!("endpoint[{i}].path"),
                    format!("must start with '/', got {:?}", ep.path),
                );
            }
            if ep.method.is_empty() || ep.method.contains(' ') {
                err(
                    &format!("endpoint[{i}].method"),
                    format!("not an HTTP method: {:?}", ep.method),
                );
            }
        }
        for rule in &self.rules {
            let i = rule.position;
            let chars = rule.title.chars().count();
            if !(1..=MAX_TITLE_CHARS).contains(&chars) {
                err(
                    &format!("rule[{i}].title"),
                    format!("must be 1-{MAX_TITLE_CHARS} characters, got {chars}"),
                );
            }
            let key = |k: &str| format!("rule[{i}].{k}");
            match (rule.kind, &rule.expression) {
                (Some(_), Some(_)) => err(
                    &key("expression"),
                    "an expression rule takes no kind (the expression is the condition)".into(),
                ),
                (None, None) => err(
                    &key("kind"),
                    "missing: give kind (allow, block, rate) or an expression".into(),
                ),
                (Some(RuleKind::Allow | RuleKind::Block), None) if rule.sequence.len() < 2 => err(
                    &key("sequence"),
                    format!("needs 2 or more operations, got {}", rule.sequence.len()),
                ),
                (Some(RuleKind::Rate), None) => {
                    if rule.operation.is_none() {
                        err(
                            &key("operation"),
                            "missing: the operation a rate rule limits".into(),
                        );
                    }
                    if rule.limit.is_none_or(|n| n == 0) {
                        err(
                            &key("limit"),
                            "missing or 0: most requests per period".into(),
                        );
                    }
                    if rule.period.is_some_and(|p| p < Duration::from_secs(1)) {
                        err(&key("period"), "must be at least 1s".into());
                    }
                }
                _ => {}
            }
            let sequence_rule = matches!(rule.kind, Some(RuleKind::Allow | RuleKind::Block));
            if !sequence_rule && !rule.sequence.is_empty() {
                err(
                    &key("sequence"),
                    "only allow and block rules take a sequence".into(),
                );
            }
            if rule.kind != Some(RuleKind::Rate) {
                for (name, given) in [
                    ("operation", rule.operation.is_some()),
                    ("limit", rule.limit.is_some()),
                    ("period", rule.period.is_some()),
                ] {
                    if given {
                        err(&key(name), "only rate rules take one".into());
                    }
                }
            }
            if let Some(id) = &rule.id
                && uuid::Uuid::parse_str(id).is_err()
            {
                err(&format!("rule[{i}].id"), format!("not a UUID: {id:?}"));
            }
            if rule.min_interval.is_some() && rule.kind != Some(RuleKind::Allow) {
                err(
                    &format!("rule[{i}].min_interval"),
                    "only allow rules take a min_interval".into(),
                );
            }
        }
    }

    /// The OpenAPI file path, resolved against the config file's directory.
    pub fn openapi_path(&self) -> Option<PathBuf> {
        self.operations
            .openapi
            .as_ref()
            .map(|p| self.base_dir.join(p))
    }
}

/// Reads one section into `target`, or records why not (key paths inside the section).
fn section<T: serde::de::DeserializeOwned>(
    target: &mut T,
    value: toml::Value,
    name: &str,
    path: &Path,
    errors: &mut Vec<ConfigError>,
) {
    if let Some(v) = read_reporting_every_key(value, name, path, errors) {
        *target = v;
    }
}

/// Deserializes a table; on an error, records it, drops the key it names and tries
/// again, so every bad key of the table is reported.
fn read_reporting_every_key<T: serde::de::DeserializeOwned>(
    mut value: toml::Value,
    name: &str,
    path: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut removed: Vec<String> = Vec::new();
    loop {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return Some(v),
            Err(e) => {
                // A required key we removed ourselves is already reported.
                let message = e.inner().to_string();
                if removed
                    .iter()
                    .any(|k| message.contains(&format!("missing field `{k}`")))
                {
                    return None;
                }
                errors.push(at(path, name, &e));
                let first = e.path().iter().next().and_then(|seg| match seg {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    _ => None,
                })?;
                value.as_table_mut()?.remove(&first)?;
                removed.push(first);
            }
        }
    }
}

/// Reads each element of an array of tables on its own.
fn array<T: serde::de::DeserializeOwned>(
    target: &mut Vec<T>,
    value: toml::Value,
    name: &str,
    path: &Path,
    errors: &mut Vec<ConfigError>,
    set_position: fn(&mut T, usize),
) {
    let toml::Value::Array(items) = value else {
        errors.push(ConfigError::new(
            path,
            name,
            format!("write it as [[{name}]] tables"),
        ));
        return;
    };
    for (i, item) in items.into_iter().enumerate() {
        let before = errors.len();
        let read = read_reporting_every_key::<T>(item, &format!("{name}[{i}]"), path, errors);
        // An entry with a bad key is left out whole: checks of the rest of it would only
        // repeat the mistake in other words.
        if let Some(mut v) = read.filter(|_| errors.len() == before) {
            set_position(&mut v, i);
            target.push(v);
        }
    }
}

fn at(path: &Path, prefix: &str, e: &serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let inner = e.path().to_string();
    let key = if inner == "." {
        prefix.to_string()
    } else {
        format!("{prefix}.{inner}")
    };
    ConfigError::new(path, key, one_line(&e.inner().to_string()))
}

/// toml errors span several lines (a source excerpt); keep them to one.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_excerpt_line(l))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Source excerpt lines of a toml error: `4 | key = 1`, `|`, `^^^`.
fn is_excerpt_line(line: &str) -> bool {
    let rest = line
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start();
    rest.starts_with('|') || line.chars().all(|c| c == '^' || c == ' ')
}

/// Why a `[fleet] redis` URL cannot be used, if it cannot.
fn unusable_redis_url(url: &str) -> Option<String> {
    use redis::IntoConnectionInfo as _;
    url.into_connection_info().err().map(|e| e.to_string())
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration {text:?} ({e}); write e.g. \"500ms\", \"10m\", \"24h\"")
    })
}

fn human_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_human_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    human_duration(de).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/seqshield/test.toml"))
    }

    #[test]
    fn fleet_keys_are_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.fleet.redis, None);
        assert_eq!(c.fleet.timeout, Duration::from_millis(5));
        let c = parse("[fleet]\nredis = \"redis://10.0.0.5:6379/0\"\n").unwrap();
        assert_eq!(c.fleet.redis.unwrap().urls(), ["redis://10.0.0.5:6379/0"]);
        let c = parse("[fleet]\nredis = [\"redis://a:7000\", \"redis://b:7001\"]\n").unwrap();
        assert_eq!(c.fleet.redis.unwrap().urls().len(), 2);
        for (text, key) in [
            ("[fleet]\nredis = \"http://x\"\n", "fleet.redis"),
            ("[fleet]\nredis = []\n", "fleet.redis"),
            ("[fleet]\ntimeout = \"5s\"\n", "fleet.timeout"),
            ("[fleet]\nredis_url = \"redis://x\"\n", "fleet"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.key.starts_with(key), "{text}: {e}");
            assert_eq!(e.file, "/etc/seqshield/test.toml");
        }
    }

    #[test]
    fn hold_and_admin_exposure_are_checked() {
        let c = parse("[enforce]\nhold = true\n").unwrap();
        assert!(c.enforce.hold);
        assert_eq!(c.enforce.hold_timeout, Duration::from_millis(50));
        let e = parse("[enforce]\nhold_timeout = \"0ms\"\n").unwrap_err();
        assert!(e.to_string().contains("enforce.hold_timeout"), "{e}");
        // Beyond loopback every read needs the token (SPEC §8).
        let c = parse("[admin]\nlisten = \"0.0.0.0:9464\"\n").unwrap();
        assert!(c.admin.reads_need_token());
        assert!(
            !parse("[admin]\nlisten = \"localhost:9464\"\n")
                .unwrap()
                .admin
                .reads_need_token()
        );
        assert!(parse("[admin]\nlisten = \"127.0.0.1:9464\"\n").is_ok());
    }

    #[test]
    fn empty_config_takes_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.capture.ports, vec![80, 8080]);
        assert_eq!(c.sequence.max_ops, 9);
        assert_eq!(c.sequence.idle_timeout, Duration::from_secs(600));
        assert_eq!(c.sequence.min_support, 5);
        assert_eq!(c.enforce.mode, EnforceMode::Monitor);
        assert_eq!(c.enforce.flag_mark, 0x5e9);
        assert_eq!(c.session.identifiers.len(), 3);
    }

    #[test]
    fn spec_example_parses() {
        let c = parse(
            r#"
[capture]
interface = "eth0"
ports = [80, 8080]
snaplen = 4096
[operations]
discovery = true
max_operations = 10000
[[endpoint]]
host = "bank.test"
method = "GET"
path = "/api/v1/users/{user_id}/accounts"
[session]
identifiers = [ { cookie = "sid" }, { header = "x-session-id" }, { jwt_claim = "sub" } ]
[sequence]
max_ops = 9
idle_timeout = "10m"
window = "24h"
min_support = 5
[[rule]]
title = "transfer needs a balance check"
kind = "allow"
action = "block"
sequence = ["GET bank.test/api/v1/accounts/{account_id}/balance", "POST bank.test/api/v1/transferFunds"]
priority = 10
min_interval = "500ms"
[enforce]
mode = "enforce"
flag_mark = 0x5e9
lookback = "10m"
[admin]
listen = "127.0.0.1:9464"
[state]
dir = "/var/lib/seqshield"
"#,
        )
        .unwrap();
        assert_eq!(c.rules[0].min_interval, Some(Duration::from_millis(500)));
        assert_eq!(c.session.identifiers[2], Identifier::JwtClaim("sub".into()));
        assert_eq!(c.enforce.mode, EnforceMode::Enforce);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = parse("[sequence]\nmin_suport = 3\n").unwrap_err();
        assert_eq!(e.file, "/etc/seqshield/test.toml");
        assert!(e.key.contains("sequence"), "{e}");
        assert!(e.reason.contains("min_suport"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = parse("[sequence]\nmin_support = \"five\"\n").unwrap_err();
        assert_eq!(e.key, "sequence.min_support", "{e}");
    }

    #[test]
    fn bad_duration_says_how_to_write_one() {
        let e = parse("[sequence]\nidle_timeout = \"ten minutes\"\n").unwrap_err();
        assert_eq!(e.key, "sequence.idle_timeout");
        assert!(e.reason.contains("\"10m\""), "{e}");
    }

    #[test]
    fn rule_checks_name_the_rule() {
        let long = "x".repeat(51);
        let e = parse(&format!(
            "[[rule]]\ntitle = \"ok\"\nkind = \"allow\"\naction = \"log\"\nsequence = [\"a\", \"b\"]\n\
             [[rule]]\ntitle = \"{long}\"\nkind = \"allow\"\naction = \"log\"\nsequence = [\"a\", \"b\"]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "rule[1].title");
        let e = parse(
            "[[rule]]\ntitle = \"t\"\nkind = \"block\"\naction = \"log\"\nsequence = [\"a\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "rule[0].sequence");
        assert!(e.reason.contains("2 or more"));
    }

    #[test]
    fn admin_listens_on_host_port_or_a_unix_socket() {
        assert!(parse("[admin]\nlisten = \"127.0.0.1:9464\"\n").is_ok());
        assert!(parse("[admin]\nlisten = \"localhost:9464\"\n").is_ok());
        assert!(parse("[admin]\nlisten = \"unix:/run/seqshield/admin.sock\"\n").is_ok());
        let e = parse("[admin]\nlisten = \"unix:relative.sock\"\n").unwrap_err();
        assert_eq!(e.key, "admin.listen");
        assert!(parse("[admin]\nlisten = \"9464\"\n").is_err());
    }

    #[test]
    fn syntax_error_is_one_line() {
        let e = parse("[sequence\n").unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
