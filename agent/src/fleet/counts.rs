//! The fleet's counts (SPEC §10): each agent adds its requests, N(x) and window counts
//! to one Redis hash per hour, batched once a second; reports read every agent's sum.
//! A batch is marked in Redis when added, so one sent again after a timeout (it may
//! have arrived) is never counted twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Fleet, FleetError, OPERATIONS_KEY, Target};
use crate::analytics::SeqKey;
use crate::ops::OpId;

/// Adds to the fleet's counts this often.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Distinct counts kept while Redis cannot take them; beyond, new ones are dropped and
/// counted (`deltas_dropped`).
const MAX_DELTAS: usize = 1 << 20;
/// How long a batch's mark stays: longer than any retry of it takes (backoff ≤ 5 s).
const BATCH_MARK_SECS: u64 = 600;
/// Adds one batch's counts to one hour's (KEYS[1]) unless the batch's mark (KEYS[2])
/// shows it was added already. ARGV: the counts' TTL, the mark's TTL (seconds), then
/// field, increment pairs.
const ADD_SCRIPT: &str = r#"
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  for i = 3, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 1
"#;
/// How long a report waits for the fleet's counts.
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// The counts of every agent of the fleet over some hours, by stable operation id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FleetCounts {
    /// Stable id → `"METHOD host/path"`, every operation any agent published.
    pub operations: HashMap<String, String>,
    pub requests: HashMap<String, u64>,
    pub occurrences: HashMap<String, u64>,
    /// Windows (stable ids, first to final) and their counts.
    pub windows: Vec<(Vec<String>, u64)>,
}

/// Reads the fleet's merged counts (see [`Fleet::reader`]).
#[derive(Debug, Clone)]
pub struct FleetReader {
    target: Target,
}

impl FleetReader {
    /// The counts of `hours` summed over the fleet, or why they could not be read.
    pub fn read(&self, hours: std::ops::RangeInclusive<u32>) -> Result<FleetCounts, FleetError> {
        let mut conn = self.target.connect(REPORT_TIMEOUT)?;
        let mut commands = vec![redis::cmd("HGETALL").arg(OPERATIONS_KEY).clone()];
        for hour in hours {
            commands.push(redis::cmd("HGETALL").arg(counts_key(hour)).clone());
        }
        let (operations, per_hour): (HashMap<String, String>, Vec<HashMap<String, u64>>) = {
            let mut replies = conn.batch(commands)?;
            let operations = redis::from_redis_value(replies.remove(0))?;
            let per_hour = replies
                .into_iter()
                .map(redis::from_redis_value)
                .collect::<Result<_, _>>()?;
            (operations, per_hour)
        };
        let mut counts = FleetCounts {
            operations,
            ..FleetCounts::default()
        };
        let mut windows: HashMap<Vec<String>, u64> = HashMap::new();
        for fields in per_hour {
            for (field, n) in fields {
                match field.split_once(' ') {
                    Some(("r", id)) => *counts.requests.entry(id.to_string()).or_default() += n,
                    Some(("o", id)) => *counts.occurrences.entry(id.to_string()).or_default() += n,
                    Some(("w", ids)) => {
                        let ops = ids.split(' ').map(str::to_string).collect();
                        *windows.entry(ops).or_default() += n;
                    }
                    _ => {}
                }
            }
        }
        counts.windows = windows.into_iter().collect();
        Ok(counts)
    }
}

/// One hour's counts of the whole fleet (in braces: a batch's mark goes to its slot).
fn counts_key(hour: u32) -> String {
    format!("seqshield:{{counts:{hour}}}")
}

/// Counts on their way to the fleet's: by hour, (field, increment).
pub(super) struct Batch {
    number: u64,
    hours: Vec<(u32, Vec<(String, u64)>)>,
}

/// What a count is of (SPEC §3): requests and N(x) of an operation, or one window of
/// operations (N(s) of its suffixes is summed when a report is made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Counted {
    Requests(OpId),
    Occurrences(OpId),
    Window(SeqKey),
}

impl Fleet {
    /// A request to `op` in `hour`, for the fleet's counts.
    pub fn count_request(&mut self, op: OpId, hour: u32) {
        self.count(hour, Counted::Requests(op));
    }

    /// A new occurrence of `op` in `hour`, and the window it completed (if any).
    pub fn count_occurrence(&mut self, op: OpId, window: Option<SeqKey>, hour: u32) {
        self.count(hour, Counted::Occurrences(op));
        if let Some(window) = window {
            self.count(hour, Counted::Window(window));
        }
    }

    fn count(&mut self, hour: u32, what: Counted) {
        if let Some(n) = self.deltas.get_mut(&(hour, what)) {
            *n += 1;
        } else if self.deltas.len() < MAX_DELTAS {
            self.deltas.insert((hour, what), 1);
        } else {
            self.stats.deltas_dropped += 1;
        }
    }

    /// Whether the counts are due to be added to the fleet's (once a second).
    pub fn flush_due(&self) -> bool {
        (!self.deltas.is_empty() || self.unsent.is_some())
            && self.last_flush.elapsed() >= FLUSH_INTERVAL
    }

    /// Adds this agent's counts to the fleet's: one pipelined round trip, a script call
    /// per hour. `id` names an operation by its stable id. A batch Redis may not have
    /// taken is sent again, unchanged, until it is acknowledged; each batch is marked in
    /// Redis when applied, so one that arrived although its answer timed out is never
    /// counted twice.
    pub fn flush<'a>(&mut self, id: impl Fn(OpId) -> &'a str) {
        self.last_flush = Instant::now();
        if self.unsent.is_none() && !self.deltas.is_empty() {
            self.batches += 1;
            let mut hours: Vec<(u32, Vec<(String, u64)>)> = Vec::new();
            for ((hour, what), n) in self.deltas.drain() {
                let field = match what {
                    Counted::Requests(op) => format!("r {}", id(op)),
                    Counted::Occurrences(op) => format!("o {}", id(op)),
                    Counted::Window(window) => {
                        let ids: Vec<&str> = window.ops().into_iter().map(&id).collect();
                        format!("w {}", ids.join(" "))
                    }
                };
                match hours.iter_mut().find(|(h, _)| *h == hour) {
                    Some((_, fields)) => fields.push((field, n)),
                    None => hours.push((hour, vec![(field, n)])),
                }
            }
            self.unsent = Some(Batch {
                number: self.batches,
                hours,
            });
        }
        let Some(batch) = &self.unsent else { return };
        let commands: Vec<redis::Cmd> = batch
            .hours
            .iter()
            .map(|(hour, fields)| {
                let key = counts_key(*hour);
                let mut command = redis::cmd("EVAL");
                command
                    .arg(ADD_SCRIPT)
                    .arg(2)
                    .arg(&key)
                    .arg(format!("{key}:batch:{:016x}:{}", self.agent, batch.number))
                    .arg(self.counts_ttl_secs)
                    .arg(BATCH_MARK_SECS);
                for (field, n) in fields {
                    command.arg(field).arg(n);
                }
                command
            })
            .collect();
        if self.call(|conn| conn.batch(commands)).is_some() {
            self.unsent = None;
            self.stats.flushes += 1;
        }
    }

    /// A handle that reads the fleet's counts on a connection of its own (reports are
    /// made off the capture thread).
    pub fn reader(&self) -> FleetReader {
        FleetReader {
            target: self.target.clone(),
        }
    }
}
