//! Per-session volume and enumeration signals: for each operation, how many requests a
//! session makes to it in a 10-minute window, and (with `[enumeration]` on) how many
//! distinct values of its path variables — a session walking object ids (BOLA) shows as
//! far more distinct values than the operation's sessions usually send.
//!
//! Windows are aligned to the clock (12:00–12:10, …). While a window is open its counts
//! sit in a table keyed by (session, operation); when the next one opens they are folded
//! into per-operation, per-hour histograms, which the report reads as percentiles over
//! the analytics window.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::Nanos;
use crate::analytics::hour_of;
use crate::config::EnumerationConfig;
use crate::ops::{Catalog, OpId};
use crate::session::SessionId;

/// Length of a rate window.
pub const WINDOW: Nanos = 600 * crate::NANOS_PER_SEC;
/// Most (session, operation) pairs tracked in one window (about 9 MB); beyond it, new
/// pairs are counted as untracked until the window closes. A flood of one-request
/// sessions must not cost every session another entry.
pub const MAX_TRACKED: usize = 1 << 18;
/// Most distinct values counted per (session, operation, window): the count stops
/// there, far above any sensible threshold.
pub const MAX_VALUES: u8 = 255;
/// Most values remembered in one window over all pairs (8 bytes each, about 18 MB).
pub const MAX_STORED_VALUES: usize = 1 << 21;

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
    fn export(&self) -> SavedHistogram {
        self.by_hour
            .iter()
            .map(|(&hour, counts)| (hour, counts.iter().map(|(&v, &n)| (v, n)).collect()))
            .collect()
    }

    fn import(saved: SavedHistogram) -> Self {
        Self {
            by_hour: saved
                .into_iter()
                .map(|(hour, counts)| (hour, counts.into_iter().collect()))
                .collect(),
        }
    }

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

/// One (session, operation) pair in the open window, in 8 bytes.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    op: OpId,
    alerted: bool,
    /// Distinct path-variable values (enumeration on; 0 for an operation without
    /// variables).
    distinct: u8,
    requests: u32,
}

/// A (session, operation) pair's key: session ids are keyed hashes (uniform), so mixing
/// in the operation keeps keys apart but for a chance of one in 2^64 per pair of pairs.
fn pair_key(session: SessionId, op: OpId) -> u64 {
    session.0 ^ u64::from(op).wrapping_mul(0x9e37_79b9_7f4a_7c15)
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
    open: HashMap<u64, Tracked, foldhash::fast::RandomState>,
    /// Enumeration on: every value a pair sent in the open window, as its session id
    /// xor the keyed hash of (operation, values) — one set for all pairs, so a request
    /// costs one lookup in it and no allocation per pair.
    values: HashSet<u64, foldhash::fast::RandomState>,
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
            values: HashSet::default(),
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
        let key = pair_key(session, op);
        if self.open.len() >= MAX_TRACKED && !self.open.contains_key(&key) {
            self.untracked += 1;
            return Counted::default();
        }
        let tracked = self.open.entry(key).or_insert(Tracked {
            op,
            alerted: false,
            distinct: 0,
            requests: 0,
        });
        tracked.requests = tracked.requests.saturating_add(1);
        let mut counted = Counted {
            requests: u64::from(tracked.requests),
            ..Counted::default()
        };
        let Some(value) = value else {
            return counted;
        };
        if tracked.distinct < MAX_VALUES
            && self.values.len() < MAX_STORED_VALUES
            && self.values.insert(session.0 ^ value)
        {
            tracked.distinct += 1;
        }
        counted.distinct_values = u64::from(tracked.distinct);
        let p99 = self.distinct_p99.get(usize::from(op)).copied().unwrap_or(0);
        let e = &self.enumeration;
        counted.threshold = ((p99 as f64 * e.factor).ceil() as u64).max(e.min_distinct);
        counted.enumeration_suspected = counted.distinct_values > counted.threshold;
        counted.newly_suspected = counted.enumeration_suspected && !tracked.alerted;
        tracked.alerted |= counted.enumeration_suspected;
        counted
    }

    /// The keyed hash of a request's operation (by its stable id: snapshots keep these
    /// across catalogs) and path-variable values; `None` for an operation without
    /// variables.
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
        h.update(catalog.get(op).id.as_bytes());
        h.update(&[0]);
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
        for tracked in self.open.drain().map(|(_, t)| t) {
            let i = usize::from(tracked.op);
            if self.requests.len() <= i {
                self.requests.resize_with(i + 1, Histogram::default);
                self.distinct.resize_with(i + 1, Histogram::default);
            }
            self.requests[i].add(hour, u64::from(tracked.requests));
            if tracked.distinct > 0 {
                self.distinct[i].add(hour, u64::from(tracked.distinct));
            }
        }
        self.values.clear();
        self.window_start = start;
        let first = self.first_hour(start);
        for h in self.requests.iter_mut().chain(self.distinct.iter_mut()) {
            h.expire(first);
        }
        self.update_thresholds(start);
    }

    /// The enumeration thresholds' p99s as of `now`.
    fn update_thresholds(&mut self, now: Nanos) {
        let first = self.first_hour(now);
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
        let open = || self.open.values().map(|t| (usize::from(t.op), t));
        tally(
            &mut requests,
            open().map(|(i, t)| (i, u64::from(t.requests))),
        );
        if self.enumeration.enabled {
            let with_values = open().filter(|(_, t)| t.distinct > 0);
            tally(
                &mut distinct,
                with_values.map(|(i, t)| (i, u64::from(t.distinct))),
            );
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

/// Adds each (operation, value) to `into[operation]`'s count of `value`. Values under
/// `DENSE` are counted in an array first and merged once: a report walks every open pair
/// under the pipeline's lock, and most pairs hold a few requests (a map entry per pair
/// cost 7 ms at 262 144 pairs).
fn tally(into: &mut Vec<BTreeMap<u64, u64>>, pairs: impl Iterator<Item = (usize, u64)>) {
    const DENSE: usize = 64;
    // A row of DENSE counts per operation seen (not per operation id: ids go to 65 535);
    // `rows[op]` is its row + 1, 0 while it has none.
    let (mut rows, mut dense) = (Vec::<u32>::new(), Vec::<u64>::new());
    for (i, value) in pairs {
        if into.len() <= i {
            into.resize_with(i + 1, BTreeMap::new);
        }
        match usize::try_from(value) {
            Ok(v) if v < DENSE => {
                if rows.len() <= i {
                    rows.resize(i + 1, 0);
                }
                if rows[i] == 0 {
                    dense.resize(dense.len() + DENSE, 0);
                    rows[i] = (dense.len() / DENSE) as u32;
                }
                dense[(rows[i] as usize - 1) * DENSE + v] += 1;
            }
            _ => *into[i].entry(value).or_default() += 1,
        }
    }
    for (i, &row) in rows.iter().enumerate().filter(|&(_, &row)| row > 0) {
        let counts = &dense[(row as usize - 1) * DENSE..][..DENSE];
        for (v, &n) in counts.iter().enumerate().filter(|&(_, &n)| n > 0) {
            *into[i].entry(v as u64).or_default() += n;
        }
    }
}

/// A histogram as snapshots keep it: (hour, [(value, pairs with it)]).
pub type SavedHistogram = Vec<(u32, Vec<(u64, u64)>)>;

/// The signals as snapshots keep them, operations by the catalog's ids at save time.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SignalsState {
    pub window_start: Nanos,
    /// The open window: (session, operation, requests, alerted, distinct values).
    pub open: Vec<(u64, OpId, u32, bool, u8)>,
    /// Its path-variable values, as kept (independent of operation ids).
    pub values: Vec<u64>,
    /// By operation: requests per pair in the closed windows.
    pub requests: Vec<SavedHistogram>,
    /// By operation: distinct values per pair in the closed windows.
    pub distinct: Vec<SavedHistogram>,
}

impl Signals {
    pub fn export(&self) -> SignalsState {
        let session = |key: u64, op: OpId| pair_key(SessionId(key), op);
        let mut state = SignalsState {
            window_start: self.window_start,
            open: self
                .open
                .iter()
                .map(|(&key, t)| {
                    let session = session(key, t.op);
                    (session, t.op, t.requests, t.alerted, t.distinct)
                })
                .collect(),
            values: self.values.iter().copied().collect(),
            requests: self.requests.iter().map(Histogram::export).collect(),
            distinct: self.distinct.iter().map(Histogram::export).collect(),
        };
        // In a stable order (hash maps iterate in a random one).
        state.open.sort_unstable();
        state.values.sort_unstable();
        state
    }

    /// Takes back saved signals; counts of operations that are gone are dropped.
    pub fn import(&mut self, saved: SignalsState, remap: &dyn Fn(OpId) -> Option<OpId>) {
        self.window_start = saved.window_start;
        for (session, op, requests, alerted, distinct) in saved.open {
            if let Some(op) = remap(op) {
                let key = pair_key(SessionId(session), op);
                self.open.insert(
                    key,
                    Tracked {
                        op,
                        alerted,
                        distinct,
                        requests,
                    },
                );
            }
        }
        // Bounded as recording bounds it, whatever the file says.
        let room = MAX_STORED_VALUES.saturating_sub(self.values.len());
        self.values.extend(saved.values.into_iter().take(room));
        let by_op = |saved: Vec<SavedHistogram>| {
            let mut out: Vec<Histogram> = Vec::new();
            for (old, h) in saved.into_iter().enumerate() {
                let Some(op) = u16::try_from(old).ok().and_then(remap) else {
                    continue;
                };
                let i = usize::from(op);
                if out.len() <= i {
                    out.resize_with(i + 1, Histogram::default);
                }
                out[i] = Histogram::import(h);
            }
            out
        };
        self.requests = by_op(saved.requests);
        self.distinct = by_op(saved.distinct);
        self.requests.resize_with(
            self.distinct.len().max(self.requests.len()),
            Histogram::default,
        );
        self.distinct
            .resize_with(self.requests.len(), Histogram::default);
        self.update_thresholds(self.window_start);
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

    const DAY: Nanos = 24 * 3600 * crate::NANOS_PER_SEC;
    const T: Nanos = 1_800_000_000 * crate::NANOS_PER_SEC;

    /// A catalog of `endpoints` (`[[endpoint]]` TOML).
    fn catalog(endpoints: &str) -> Catalog {
        let config =
            crate::config::Config::parse(endpoints, std::path::Path::new("c.toml")).unwrap();
        Catalog::from_config(&config).unwrap()
    }

    fn new_signals(enumeration: bool) -> Signals {
        let enumeration = EnumerationConfig {
            enabled: enumeration,
            ..EnumerationConfig::default()
        };
        Signals::new(enumeration, &[1; 32], DAY)
    }

    const ENDPOINT_A: &str = "[[endpoint]]\nhost = \"h\"\nmethod = \"GET\"\npath = \"/a/{id}\"\n";

    #[test]
    fn a_flood_of_pairs_is_bounded_and_counted() {
        let catalog = catalog("");
        let mut signals = new_signals(false);
        let now = T;
        for i in 0..MAX_TRACKED as u64 + 10 {
            signals.record(
                SessionId(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                0,
                now,
                "/",
                &catalog,
            );
        }
        assert_eq!(signals.open.len(), MAX_TRACKED);
        assert_eq!(signals.untracked, 10);
        assert_eq!(std::mem::size_of::<Tracked>(), 8);
        // The next window starts empty.
        signals.record(SessionId(1), 0, now + WINDOW, "/", &catalog);
        assert_eq!(signals.open.len(), 1);
    }

    #[test]
    fn a_snapshot_keeps_windows_values_and_thresholds() {
        let catalog = catalog(ENDPOINT_A);
        let mut signals = new_signals(true);
        let t = T;
        for (session, id, at) in [(1, "1", t), (1, "2", t), (2, "9", t), (1, "3", t + WINDOW)] {
            signals.record(SessionId(session), 0, at, &format!("/a/{id}"), &catalog);
        }
        let saved = signals.export();
        let mut restored = new_signals(true);
        restored.import(saved.clone(), &|op| Some(op));
        assert_eq!(restored.export(), saved);
        let now = t + WINDOW;
        let (a, b) = (signals.distributions(now), restored.distributions(now));
        assert_eq!(a[0].session_rate, b[0].session_rate);
        assert_eq!(a[0].distinct_values, b[0].distinct_values);
        assert_eq!(b[0].distinct_values.unwrap().windows, 3);
        assert_eq!(restored.distinct_p99, signals.distinct_p99);
        // The open window carries on: session 1's next value is its second.
        let counted = restored.record(SessionId(1), 0, now, "/a/4", &catalog);
        assert_eq!((counted.requests, counted.distinct_values), (2, 2));
    }

    #[test]
    fn distinct_values_are_counted_per_session_and_operation_and_stop_at_the_cap() {
        let catalog = catalog(&format!(
            "{ENDPOINT_A}[[endpoint]]\nhost = \"h\"\nmethod = \"GET\"\npath = \"/b/{{id}}\"\n"
        ));
        let mut signals = new_signals(true);
        let mut record = |session: u64, op: OpId, path: &str| {
            signals
                .record(SessionId(session), op, T, path, &catalog)
                .distinct_values
        };
        assert_eq!(record(1, 0, "/a/7"), 1);
        assert_eq!(record(1, 0, "/a/7"), 1, "a repeated value");
        assert_eq!(record(2, 0, "/a/7"), 1, "another session's own count");
        assert_eq!(record(1, 1, "/b/7"), 1, "another operation's own count");
        assert_eq!(record(1, 0, "/a/8"), 2);
        let last = (0..400)
            .map(|i| record(3, 0, &format!("/a/{i}")))
            .last()
            .unwrap();
        assert_eq!(last, u64::from(MAX_VALUES));
    }

    #[test]
    fn open_window_counts_small_and_large_are_tallied_alike() {
        let catalog = catalog("");
        let mut signals = new_signals(false);
        let t = T;
        // Session s makes `requests[s]` requests: counts either side of the dense array.
        // Two operations, ids apart, each with its own counts.
        let by_op: [(OpId, &[u64]); 2] = [(3, &[1, 1, 2, 63, 64, 65, 200, 200]), (0, &[5, 7, 7])];
        for (op, requests) in by_op {
            for (s, &n) in requests.iter().enumerate() {
                for _ in 0..n {
                    signals.record(SessionId(s as u64 + 1), op, t, "/", &catalog);
                }
            }
        }
        let distributions = signals.distributions(t);
        for (op, requests) in by_op {
            let counts = requests.iter().fold(BTreeMap::new(), |mut m, &n| {
                *m.entry(n).or_insert(0) += 1;
                m
            });
            let rate = distributions[usize::from(op)].session_rate;
            assert_eq!(rate, distribution(&counts), "operation {op}");
        }
        assert_eq!(distributions[3].session_rate.unwrap().max, 200);
    }

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
