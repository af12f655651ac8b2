//! Fleet mode (SPEC §10): the agents of several API hosts keep each session's history in
//! one Redis (or Redis Cluster), so a rule sees a session's requests whatever host
//! served them.
//!
//! For each request of an identified session a Lua script applies the idle reset, the
//! collapse of repeats and the history length of SPEC §3 to the shared history, exactly
//! as `session::History` does locally, and returns it; the requests of a batch go in one
//! pipelined round trip. Keys name the session by its keyed hash only. Each agent adds
//! its counts to one hash per hour once a second; reports read the merged ones. A Redis
//! that is down or slower than `timeout` makes the agent carry on with its local view
//! (counted, logged once per change) and retry with backoff; a late answer is never
//! waited for.
//!
//! The connection is synchronous and owned by the pipeline's thread: requests are
//! analysed in order, so one connection keeps each session's updates in order and a
//! pool would add nothing.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use redis::{ConnectionLike, IntoConnectionInfo as _};

use crate::config::{Config, FleetConfig, RedisNodes};
use crate::ops::{OpId, Operation};
use crate::session::{Entry, HISTORY_LEN, SessionId};
use crate::state::{self, StateError};
use crate::{Nanos, duration_nanos};

mod counts;

use counts::{Batch, Counted};
pub use counts::{FleetCounts, FleetReader};

/// The shared history update (KEYS[1]: the session's history; ARGV: operation id, time
/// as seconds and nanoseconds, idle timeout in ns, history length, TTL in ms). Returns
/// `{new occurrence, state}`. The state is fixed-width so the script never parses it:
/// `"<last s:10> <last ns:9>"` then per entry, oldest first, `"|<op:12> <s:10> <ns:9>"`
/// (operation ids are 12 characters). Times travel as two integers: Lua numbers are
/// doubles, and nanoseconds since 1970 do not fit in 53 bits.
const RECORD_SCRIPT: &str = r#"
local op, s, ns = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local idle, cap, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local W, H = 34, 20
local entry = string.format('|%s %010d %09d', op, s, ns)
local body = ''
local last_s, last_ns = s, ns
local raw = redis.call('GET', KEYS[1])
if raw then
  last_s, last_ns = tonumber(string.sub(raw, 1, 10)), tonumber(string.sub(raw, 12, 20))
  body = string.sub(raw, H + 1)
  if #body > 0 and (s - last_s) * 1e9 + (ns - last_ns) > idle then
    body = ''
  end
  if s > last_s or (s == last_s and ns > last_ns) then
    last_s, last_ns = s, ns
  end
end
local new = 1
local n = #body / W
if n > 0 and string.sub(body, #body - W + 2, #body - W + 13) == op then
  body = string.sub(body, 1, #body - W) .. entry
  new = 0
else
  body = body .. entry
  if n + 1 > cap then
    body = string.sub(body, W + 1)
  end
end
local state = string.format('%010d %09d', last_s, last_ns) .. body
redis.call('SET', KEYS[1], state, 'PX', ttl)
return {new, state}
"#;

/// The fleet's session-hash secret: created once by the first agent, read by the rest.
const SECRET_KEY: &str = "seqshield:secret";
/// Operation id → `"METHOD host/path"`, so an agent can name an operation another
/// agent discovered first.
const OPERATIONS_KEY: &str = "seqshield:operations";
/// The fleet's secret as this agent last read it, in the state dir: an agent restarted
/// while Redis is down still hashes sessions as the fleet does.
pub const FLEET_KEY_FILE: &str = "fleet.key";
/// Extra time a batch of requests' scripts may take, per request.
const BATCH_ALLOWANCE: Duration = Duration::from_micros(50);
/// Longest wait before retrying a Redis that was down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: the key file must hold at least 32 bytes")]
    ShortKey { path: String },
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis: an unexpected reply: {0}")]
    Reply(#[from] redis::ParsingError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Fallbacks and round trips, for the report and the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FleetStats {
    /// Requests analysed with the shared history.
    pub shared: u64,
    /// Requests analysed with the local view because Redis was down or slow.
    pub fallbacks: u64,
    /// Round trips to Redis (script calls, operation lookups, count flushes, connects).
    pub round_trips: u64,
    /// Times this agent's counts were added to the fleet's.
    pub flushes: u64,
    /// Counts lost because Redis was away long enough for the unflushed ones to fill
    /// their bound.
    pub deltas_dropped: u64,
}

/// The shared history of one session after a request was added to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedHistory {
    /// The request was a new occurrence, not a collapsed repeat.
    pub new: bool,
    /// (operation id, time of its latest request), oldest first.
    pub entries: Vec<(String, Nanos)>,
}

enum Connection {
    One(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Connection {
    fn commands(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Self::One(c) => c,
            Self::Cluster(c) => c.as_mut(),
        }
    }

    fn set_read_timeout(&mut self, timeout: Duration) -> redis::RedisResult<()> {
        match self {
            Self::One(c) => c.set_read_timeout(Some(timeout)),
            Self::Cluster(c) => c.set_read_timeout(Some(timeout)),
        }
    }

    /// Sends `commands` as one pipeline (a cluster's is split by node) and returns
    /// their replies.
    fn batch(&mut self, commands: Vec<redis::Cmd>) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            Self::One(c) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query(c)
            }
            Self::Cluster(c) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query(c.as_mut())
            }
        }
    }
}

/// An agent's link to the fleet's Redis.
pub struct Fleet {
    target: Target,
    timeout: Duration,
    script: std::sync::Arc<redis::Script>,
    /// How long Redis keeps an untouched history (wall clock): longer than any idle
    /// timeout it could still matter for.
    ttl_ms: u64,
    idle_timeout: Nanos,
    conn: Option<Connection>,
    retry_at: Instant,
    backoff: Duration,
    /// Operations already written to the fleet's operation table.
    published: Vec<bool>,
    /// This agent's counts not yet added to the fleet's.
    deltas: HashMap<(u32, Counted), u64, foldhash::fast::RandomState>,
    /// A batch of counts sent but not acknowledged: sent again, unchanged.
    unsent: Option<Batch>,
    /// Batches made so far, and this agent run's random name: a batch's mark in Redis.
    batches: u64,
    agent: u64,
    /// How long Redis keeps an hour's counts: the window and a margin.
    counts_ttl_secs: u64,
    last_flush: Instant,
    stats: FleetStats,
}

impl Fleet {
    /// Reads the password file and prepares the link; connects on first use (and tries
    /// once now, so a wrong address shows in the log at start).
    pub fn new(
        config: &FleetConfig,
        nodes: &RedisNodes,
        idle_timeout: Nanos,
        window: Nanos,
    ) -> Result<Self, FleetError> {
        let password = match &config.password_file {
            Some(path) => Some(read_file(path)?.trim().to_string()),
            None => None,
        };
        let nodes_config = nodes;
        let nodes = nodes
            .urls()
            .iter()
            .map(|url| {
                let info = url.as_str().into_connection_info()?;
                Ok(match &password {
                    Some(p) => {
                        let settings = info.redis_settings().clone().set_password(p);
                        info.set_redis_settings(settings)
                    }
                    None => info,
                })
            })
            .collect::<Result<Vec<_>, FleetError>>()?;
        let ca = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| FleetError::File {
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        let mut fleet = Self {
            target: Target {
                // A list names cluster nodes, even a list of one.
                cluster: matches!(nodes_config, RedisNodes::Cluster(_)),
                nodes,
                ca,
            },
            timeout: config.timeout,
            script: std::sync::Arc::new(redis::Script::new(RECORD_SCRIPT)),
            ttl_ms: (idle_timeout / 1_000_000).saturating_add(60_000),
            idle_timeout,
            conn: None,
            retry_at: Instant::now(),
            backoff: FIRST_BACKOFF,
            published: Vec::new(),
            deltas: HashMap::default(),
            unsent: None,
            batches: 0,
            agent: random_u64()?,
            counts_ttl_secs: window / crate::NANOS_PER_SEC + 2 * 3600,
            last_flush: Instant::now(),
            stats: FleetStats::default(),
        };
        fleet.link();
        Ok(fleet)
    }

    pub fn stats(&self) -> FleetStats {
        self.stats
    }

    /// The session-hash secret every agent of the fleet uses: `key_file` when the
    /// operator distributes one, else the one kept in Redis (created by the first agent
    /// that asks). The Redis one is cached in `state_dir`, so an agent restarted while
    /// Redis is down still hashes sessions as the fleet does.
    pub fn session_secret(
        &mut self,
        config: &FleetConfig,
        state_dir: &Path,
    ) -> Result<Option<[u8; 32]>, FleetError> {
        if let Some(path) = &config.key_file {
            let bytes = std::fs::read(path).map_err(|source| FleetError::File {
                path: path.display().to_string(),
                source,
            })?;
            if bytes.len() < 32 {
                return Err(FleetError::ShortKey {
                    path: path.display().to_string(),
                });
            }
            return Ok(Some(*blake3::hash(&bytes).as_bytes()));
        }
        let cached = state_dir.join(FLEET_KEY_FILE);
        let candidate = state::random_secret()?;
        let shared: Option<String> = self.call(|conn| {
            let link = conn.commands();
            redis::cmd("SET")
                .arg(SECRET_KEY)
                .arg(&candidate)
                .arg("NX")
                .exec(link)?;
            redis::cmd("GET").arg(SECRET_KEY).query(link)
        });
        match shared.as_deref().and_then(state::parse_key) {
            Some(secret) => {
                state::write_secret(&cached, &state::key_hex(&secret))?;
                Ok(Some(secret))
            }
            None => Ok(std::fs::read_to_string(&cached)
                .ok()
                .and_then(|text| state::parse_key(text.trim()))),
        }
    }

    /// Adds a request (`op`: the operation's stable id) to the session's shared history
    /// and returns it; `None` when Redis cannot answer in time (use the local view).
    pub fn record(&mut self, session: SessionId, op: &str, at: Nanos) -> Option<SharedHistory> {
        let key = history_key(session);
        let (script, ttl_ms, idle_timeout) = (self.script.clone(), self.ttl_ms, self.idle_timeout);
        let reply: Option<(i64, String)> = self.call(|conn| {
            script
                .key(&key)
                .arg(op)
                .arg(at / 1_000_000_000)
                .arg(at % 1_000_000_000)
                .arg(idle_timeout)
                .arg(HISTORY_LEN)
                .arg(ttl_ms)
                .invoke(conn.commands())
        });
        let Some((new, state)) = reply else {
            self.stats.fallbacks += 1;
            return None;
        };
        self.stats.shared += 1;
        Some(SharedHistory {
            new: new == 1,
            entries: parse_state(&state),
        })
    }

    /// [`Fleet::record`] for a batch of requests, in order, in one round trip (each
    /// sees the ones before it, as Redis runs the scripts in order); `None` when Redis
    /// cannot answer in time. A Redis Cluster is asked one request at a time.
    pub fn record_batch(
        &mut self,
        calls: &[(SessionId, &str, Nanos)],
    ) -> Option<Vec<SharedHistory>> {
        if self.target.cluster || calls.len() == 1 {
            return calls
                .iter()
                .map(|&(session, op, at)| self.record(session, op, at))
                .collect();
        }
        // One pipeline, sent again unchanged if Redis has to be given the script first
        // (batches never go to a Cluster: see above).
        let mut pipe = redis::pipe();
        for &(session, op, at) in calls {
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(1)
                .arg(history_key(session))
                .arg(op)
                .arg(at / 1_000_000_000)
                .arg(at % 1_000_000_000)
                .arg(self.idle_timeout)
                .arg(HISTORY_LEN)
                .arg(self.ttl_ms);
        }
        // Redis runs the whole batch before it answers: the timeout grows with it.
        let (base, batch) = (
            self.timeout,
            self.timeout + BATCH_ALLOWANCE * calls.len() as u32,
        );
        let script = self.script.clone();
        let replies = self.call(|conn| {
            conn.set_read_timeout(batch)?;
            let first: redis::RedisResult<Vec<redis::Value>> = pipe.query(conn.commands());
            // A Redis that restarted has forgotten the script: load it, send again.
            let forgotten = match &first {
                Err(e) => e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript),
                Ok(values) => values
                    .iter()
                    .any(|v| matches!(v, redis::Value::ServerError(_))),
            };
            let replies = if forgotten {
                script.load(conn.commands())?;
                pipe.query(conn.commands())
            } else {
                first
            };
            conn.set_read_timeout(base)?;
            replies
        });
        let Some(replies) = replies else {
            self.stats.fallbacks += calls.len() as u64;
            return None;
        };
        let parsed: Result<Vec<(i64, String)>, _> =
            replies.into_iter().map(redis::from_redis_value).collect();
        let Ok(parsed) = parsed else {
            self.stats.fallbacks += calls.len() as u64;
            return None;
        };
        self.stats.shared += calls.len() as u64;
        Some(
            parsed
                .into_iter()
                .map(|(new, state)| SharedHistory {
                    new: new == 1,
                    entries: parse_state(&state),
                })
                .collect(),
        )
    }

    /// Writes an operation to the fleet's table once per agent run (ids are the same on
    /// every host; the human form lets other agents name it).
    pub fn publish_operation(&mut self, op: OpId, operation: &Operation) {
        let slot = usize::from(op);
        if self.published.get(slot).copied().unwrap_or(false) {
            return;
        }
        let done: Option<()> = self.call(|conn| {
            redis::cmd("HSETNX")
                .arg(OPERATIONS_KEY)
                .arg(&operation.id)
                .arg(operation.human())
                .exec(conn.commands())
        });
        if done.is_some() {
            if self.published.len() <= slot {
                self.published.resize(slot + 1, false);
            }
            self.published[slot] = true;
        }
    }

    /// The human form of an operation another agent published.
    pub fn operation(&mut self, id: &str) -> Option<String> {
        self.call(|conn| {
            redis::cmd("HGET")
                .arg(OPERATIONS_KEY)
                .arg(id)
                .query(conn.commands())
        })
    }

    /// Runs one exchange with Redis if it is reachable: on any error or timeout the
    /// connection is dropped (a late answer would desynchronise it) and retried later.
    fn call<T>(
        &mut self,
        exchange: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        self.link()?;
        self.stats.round_trips += 1;
        let conn = self.conn.as_mut()?;
        match exchange(conn) {
            Ok(v) => Some(v),
            Err(e) => {
                self.down(&e);
                None
            }
        }
    }

    /// The connection, made if it is time to try.
    fn link(&mut self) -> Option<&mut Connection> {
        if self.conn.is_none() {
            if Instant::now() < self.retry_at {
                return None;
            }
            self.stats.round_trips += 1;
            match self.connect() {
                Ok(conn) => {
                    tracing::info!(
                        event = "fleet_up",
                        "fleet store reachable: sharing sessions"
                    );
                    self.conn = Some(conn);
                    self.backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    self.down(&e);
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }

    fn connect(&self) -> redis::RedisResult<Connection> {
        self.target.connect(self.timeout)
    }

    fn down(&mut self, error: &redis::RedisError) {
        if self.conn.take().is_some() || self.backoff == FIRST_BACKOFF {
            tracing::warn!(
                event = "fleet_down",
                %error,
                retry_in_ms = self.backoff.as_millis() as u64,
                "fleet store unreachable or slow: using this host's view of sessions"
            );
        }
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// Where the fleet's Redis is, and how to reach it.
#[derive(Debug, Clone)]
struct Target {
    nodes: Vec<redis::ConnectionInfo>,
    cluster: bool,
    /// `[fleet] ca_file`: the CA that signed Redis's certificate (PEM), for `rediss://`;
    /// without it the system's roots.
    ca: Option<Vec<u8>>,
}

impl Target {
    fn connect(&self, timeout: Duration) -> redis::RedisResult<Connection> {
        let t = Some(timeout);
        let certificates = || redis::TlsCertificates {
            client_tls: None,
            root_cert: self.ca.clone(),
        };
        let tls = self
            .nodes
            .iter()
            .any(|n| matches!(n.addr(), redis::ConnectionAddr::TcpTls { .. }));
        if tls {
            // rustls needs its cryptography chosen once per process.
            static PROVIDER: std::sync::Once = std::sync::Once::new();
            PROVIDER.call_once(|| {
                let _ = rustls::crypto::ring::default_provider().install_default();
            });
        }
        if self.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(self.nodes.clone())
                .connection_timeout(timeout);
            if tls {
                builder = builder.certs(certificates());
            }
            let conn = builder.build()?.get_connection()?;
            conn.set_read_timeout(t)?;
            conn.set_write_timeout(t)?;
            Ok(Connection::Cluster(Box::new(conn)))
        } else {
            let node = self.nodes[0].clone();
            let client = if tls {
                redis::Client::build_with_tls(node, certificates())?
            } else {
                redis::Client::open(node)?
            };
            let conn = client.get_connection_with_timeout(timeout)?;
            conn.set_read_timeout(t)?;
            conn.set_write_timeout(t)?;
            Ok(Connection::One(conn))
        }
    }
}

/// The session-hash key a pipeline starts with, and the fleet link when `[fleet] redis`
/// is set: the fleet's shared secret then (this host's `local` key only while neither
/// Redis nor a cached copy can give it — sessions are then not shared, and the log says
/// so).
pub fn start(config: &Config, local: [u8; 32]) -> Result<([u8; 32], Option<Fleet>), FleetError> {
    let Some(nodes) = &config.fleet.redis else {
        return Ok((local, None));
    };
    let mut fleet = Fleet::new(
        &config.fleet,
        nodes,
        duration_nanos(config.sequence.idle_timeout),
        duration_nanos(config.sequence.window),
    )?;
    let key = match fleet.session_secret(&config.fleet, &config.state.dir)? {
        Some(key) => key,
        None => {
            tracing::warn!(
                event = "fleet_secret_unavailable",
                "the fleet's session-hash secret is not reachable and not cached: hashing \
                 sessions with this host's key until a restart (sessions are not shared)"
            );
            local
        }
    };
    Ok((key, Some(fleet)))
}

fn random_u64() -> Result<u64, FleetError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| FleetError::State(StateError::Random(e)))?;
    Ok(u64::from_le_bytes(bytes))
}

/// A session's history key: the keyed hash only (never a raw value), in braces so a
/// Redis Cluster keeps every key of a session in one slot.
fn history_key(session: SessionId) -> String {
    format!("seqshield:{{{session}}}:history")
}

fn parse_state(state: &str) -> Vec<(String, Nanos)> {
    state
        .split('|')
        .skip(1)
        .filter_map(|item| {
            let mut parts = item.split(' ');
            let op = parts.next()?;
            let s: u64 = parts.next()?.parse().ok()?;
            let ns: u64 = parts.next()?.parse().ok()?;
            Some((op.to_string(), s * 1_000_000_000 + ns))
        })
        .collect()
}

/// A history as the local session table keeps it, from the shared one; operations are
/// named by `resolve` (stable id → this agent's id), unknown ones left out.
pub fn local_entries(
    shared: &SharedHistory,
    mut resolve: impl FnMut(&str) -> Option<OpId>,
) -> Vec<Entry> {
    shared
        .entries
        .iter()
        .filter_map(|(id, at)| {
            Some(Entry {
                op: resolve(id)?,
                at: *at,
            })
        })
        .collect()
}

fn read_file(path: &Path) -> Result<String, FleetError> {
    std::fs::read_to_string(path).map_err(|source| FleetError::File {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_times_beyond_53_bits() {
        let at = 1_764_000_000_123_456_789u64;
        let state = format!(
            "1764000000 123456789|abcdef012345 {} {}|0123456789ab 1764000001 000000005",
            at / 1_000_000_000,
            at % 1_000_000_000
        );
        assert_eq!(
            parse_state(&state),
            vec![
                ("abcdef012345".to_string(), at),
                ("0123456789ab".to_string(), 1_764_000_001_000_000_005)
            ]
        );
    }

    #[test]
    fn keys_hold_the_hash_in_a_hash_tag() {
        assert_eq!(
            history_key(SessionId(0xab)),
            "seqshield:{00000000000000ab}:history"
        );
    }
}
