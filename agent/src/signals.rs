//! Per-session volume and enumeration signals: for each operation, how many requests a
//! session makes to it in a 10-minute window, and (with `[enumeration]` on) how many
//! distinct values of its path variables — a session walking object ids (BOLA) shows as
//! far more distinct values than the operation's sessions usually send.
//!
//! Windows are aligned to the clock (12:00–12:10, …). While a window is open its counts
//! sit in a table keyed by (session, operation); when the next one opens they are folded
//! into per-operation, per-hour histograms, which the report reads as percentiles over
//! the analytics window.

use std::collections::{BTreeMap, HashMap};

use crate::Nanos;
use crate::analytics::hour_of;
use crate::config::EnumerationConfig;
use crate::ops::{Catalog, OpId};
use crate::session::SessionId;

/// Length of a rate window.
pub const WINDOW: Nanos = 600 * crate::NANOS_PER_SEC;
/// Most (session, operation) pairs tracked in one window; beyond it, new pairs are
/// counted as untracked until the window closes.
pub const MAX_TRACKED: usize = 1 << 20;
/// Most distinct values remembered per (session, operation, window): the count stops
/// there, far above any sensible threshold.
pub const MAX_VALUES: usize = 1024;

/// Nearest-rank percentiles of a per-session count, over (session, window) pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Distribution {
    /// (session, 10-minute window) pairs with at least one request.
    pub windows: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// Counts of one value (requests, distinct values) → how many (session, window) pairs
/// had it, per hour of the window's start.
#[derive(Debug, Default, Clone)]
struct Histogram {
    by_hour: BTreeMap<u32, BTreeMap<u64, u64>>,
}

impl Histogram {
    fn add(&mut self, hour: u32, value: u64) {
        *self
            .by_hour
            .entry(hour)
            .or_default()
            .entry(value)
            .or_default() += 1;
    }

    /// Drops hours before `first_hour`.
    fn expire(&mut self, first_hour: u32) {
        self.by_hour = self.by_hour.split_off(&first_hour);
    }

    /// Merged counts from `first_hour` on.
    fn merged(&self, first_hour: u32, into: &mut BTreeMap<u64, u64>) {
        for counts in self.by_hour.range(first_hour..).map(|(_, c)| c) {
            for (&value, &n) in counts {
                *into.entry(value).or_default() += n;
            }
        }
    }
}

/// Nearest-rank percentiles of a value → frequency map.
pub fn distribution(counts: &BTreeMap<u64, u64>) -> Option<Distribution> {
    let total: u64 = counts.values().sum();
    if total == 0 {
        return None;
    }
    let rank = |p: u64| {
        // The smallest value with at least p% of the observations at or below it.
        let needed = (total * p).div_ceil(100).max(1);
        let mut seen = 0;
        for (&value, &n) in counts {
            seen += n;
            if seen >= needed {
                return value;
            }
        }
        0
    };
    Some(Distribution {
        windows: total,
        p50: rank(50),
        p90: rank(90),
        p99: rank(99),
        max: counts.keys().next_back().copied().unwrap_or(0),
    })
}

/// One (session, operation) pair in the open window.
#[derive(Debug, Default)]
struct Tracked {
    requests: u64,
    /// Keyed hashes of the path-variable values, in arrival order (enumeration on).
    values: Vec<u64>,
    alerted: bool,
}

/// What a request's signals are, once counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counted {
    /// The session's requests to the operation in this window, this one included.
    pub requests: u64,
    /// Distinct path-variable values in this window (0 with enumeration off).
    pub distinct_values: u64,
    pub enumeration_suspected: bool,
    /// The session just crossed the threshold (alert once per window).
    pub newly_suspected: bool,
    /// The threshold it crossed: `factor` × the operation's p99, at least `min_distinct`.
    pub threshold: u64,
}

pub struct Signals {
    /// Start of the open window.
    window_start: Nanos,
    open: HashMap<(SessionId, OpId), Tracked, foldhash::fast::RandomState>,
    requests: Vec<Histogram>,
    distinct: Vec<Histogram>,
    /// Per operation: the p99 of distinct values over the analytics window, as of the
    /// last window close (enumeration thresholds).
    distinct_p99: Vec<u64>,
    /// Per operation: segment indices of its path variables (computed once).
    variables: Vec<Option<Box<[u16]>>>,
    enumeration: EnumerationConfig,
    /// Key for the path-variable values' hashes.
    value_key: [u8; 32],
    window_hours: u32,
    /// Requests not tracked because the open window's table was full.
    pub untracked: u64,
}

impl Signals {
    /// `secret` is the install's key (values are hashed as session values are);
    /// `window` the analytics window the distributions cover.
    pub fn new(enumeration: EnumerationConfig, secret: &[u8; 32], window: Nanos) -> Self {
        Self {
            window_start: 0,
            open: HashMap::default(),
            requests: Vec::new(),
            distinct: Vec::new(),
            distinct_p99: Vec::new(),
            variables: Vec::new(),
            enumeration,
            value_key: *blake3::keyed_hash(secret, b"seqshield path variable values").as_bytes(),
            window_hours: window.div_ceil(crate::analytics::NANOS_PER_HOUR) as u32,
            untracked: 0,
        }
    }

    /// Counts a request of `session` to `op` at `now`; `routed` is its normalised path.
    pub fn record(
        &mut self,
        session: SessionId,
        op: OpId,
        now: Nanos,
        routed: &str,
        catalog: &Catalog,
    ) -> Counted {
        let start = now - now % WINDOW;
        if start > self.window_start {
            self.close_window(start);
        }
        let value = if self.enumeration.enabled {
            self.value_hash(op, routed, catalog)
        } else {
            None
        };
        let key = (session, op);
        if self.open.len() >= MAX_TRACKED && !self.open.contains_key(&key) {
            self.untracked += 1;
            return Counted::default();
        }
        let tracked = self.open.entry(key).or_default();
        tracked.requests += 1;
        if let Some(v) = value
            && tracked.values.len() < MAX_VALUES
            && !tracked.values.contains(&v)
        {
            tracked.values.push(v);
        }
        let mut counted = Counted {
            requests: tracked.requests,
            distinct_values: tracked.values.len() as u64,
            ..Counted::default()
        };
        if value.is_some() {
            let p99 = self.distinct_p99.get(usize::from(op)).copied().unwrap_or(0);
            let e = &self.enumeration;
            let threshold = ((p99 as f64 * e.factor).ceil() as u64).max(e.min_distinct);
            counted.threshold = threshold;
            counted.enumeration_suspected = counted.distinct_values > threshold;
            counted.newly_suspected = counted.enumeration_suspected && !tracked.alerted;
            tracked.alerted |= counted.enumeration_suspected;
        }
        counted
    }

    /// The keyed hash of a request's path-variable values; `None` for an operation
    /// without variables.
    fn value_hash(&mut self, op: OpId, routed: &str, catalog: &Catalog) -> Option<u64> {
        let i = usize::from(op);
        if self.variables.len() <= i {
            self.variables.resize(i + 1, None);
        }
        let variables = self.variables[i].get_or_insert_with(|| {
            let template = &catalog.get(op).path;
            template
                .split('/')
                .enumerate()
                .filter(|(_, s)| s.starts_with('{'))
                .map(|(j, _)| j as u16)
                .collect()
        });
        if variables.is_empty() {
            return None;
        }
        let mut h = blake3::Hasher::new_keyed(&self.value_key);
        let mut wanted = variables.iter().peekable();
        for (j, segment) in routed.split('/').enumerate() {
            if wanted.peek().is_some_and(|&&w| usize::from(w) == j) {
                wanted.next();
                h.update(segment.as_bytes());
                h.update(&[0]);
            }
        }
        let digest = h.finalize();
        Some(u64::from_le_bytes(
            digest.as_bytes()[..8].try_into().expect("8 bytes"),
        ))
    }

    /// Folds the open window into the histograms and opens the one at `start`.
    fn close_window(&mut self, start: Nanos) {
        let hour = hour_of(self.window_start);
        for ((_, op), tracked) in self.open.drain() {
            let i = usize::from(op);
            if self.requests.len() <= i {
                self.requests.resize_with(i + 1, Histogram::default);
                self.distinct.resize_with(i + 1, Histogram::default);
            }
            self.requests[i].add(hour, tracked.requests);
            if !tracked.values.is_empty() {
                self.distinct[i].add(hour, tracked.values.len() as u64);
            }
        }
        self.window_start = start;
        let first = self.first_hour(start);
        for h in self.requests.iter_mut().chain(self.distinct.iter_mut()) {
            h.expire(first);
        }
        if self.enumeration.enabled {
            self.distinct_p99 = (0..self.distinct.len())
                .map(|i| {
                    let mut counts = BTreeMap::new();
                    self.distinct[i].merged(first, &mut counts);
                    distribution(&counts).map_or(0, |d| d.p99)
                })
                .collect();
        }
    }

    fn first_hour(&self, now: Nanos) -> u32 {
        hour_of(now).saturating_sub(self.window_hours)
    }

    /// Every operation's distributions at `now` over the analytics window, the open
    /// window included, by operation id: one pass over the open window.
    pub fn distributions(&self, now: Nanos) -> Vec<OpSignals> {
        let first = self.first_hour(now);
        let merged = |closed: &[Histogram]| -> Vec<BTreeMap<u64, u64>> {
            closed
                .iter()
                .map(|h| {
                    let mut counts = BTreeMap::new();
                    h.merged(first, &mut counts);
                    counts
                })
                .collect()
        };
        let (mut requests, mut distinct) = (merged(&self.requests), merged(&self.distinct));
        for ((_, op), tracked) in &self.open {
            let i = usize::from(*op);
            if requests.len() <= i {
                requests.resize_with(i + 1, BTreeMap::new);
            }
            *requests[i].entry(tracked.requests).or_default() += 1;
            if !tracked.values.is_empty() {
                if distinct.len() <= i {
                    distinct.resize_with(i + 1, BTreeMap::new);
                }
                *distinct[i].entry(tracked.values.len() as u64).or_default() += 1;
            }
        }
        (0..requests.len().max(distinct.len()))
            .map(|i| OpSignals {
                session_rate: requests.get(i).and_then(distribution),
                distinct_values: distinct
                    .get(i)
                    .filter(|_| self.enumeration.enabled)
                    .and_then(distribution),
            })
            .collect()
    }
}

/// An operation's distributions (see [`Signals::distributions`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpSignals {
    /// Requests per session per window.
    pub session_rate: Option<Distribution>,
    /// Distinct path-variable values per session per window (enumeration on).
    pub distinct_values: Option<Distribution>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let counts: BTreeMap<u64, u64> = (1..=100).map(|v| (v, 1)).collect();
        let d = distribution(&counts).unwrap();
        assert_eq!(
            (d.windows, d.p50, d.p90, d.p99, d.max),
            (100, 50, 90, 99, 100)
        );
        let skewed = BTreeMap::from([(1, 98), (40, 2)]);
        let d = distribution(&skewed).unwrap();
        assert_eq!((d.p50, d.p90, d.p99, d.max), (1, 1, 40, 40));
        assert_eq!(distribution(&BTreeMap::new()), None);
        let one = BTreeMap::from([(7, 1)]);
        assert_eq!(distribution(&one).unwrap().p50, 7);
    }
}
