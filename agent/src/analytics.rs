//! Sequence analytics (SPEC §3): N(x) and N(s) over a sliding window of hourly buckets,
//! precedence scores with a Wilson lower bound, in a bounded sequence table.

use std::collections::HashMap;

use crate::ops::OpId;
use crate::session::Entry;
use crate::{NANOS_PER_SEC, Nanos};

/// Longest sequence (SPEC §3: 2 to 9 operations).
pub const MAX_SEQUENCE_OPS: usize = 9;
pub const NANOS_PER_HOUR: Nanos = 3600 * NANOS_PER_SEC;
/// z for a two-sided 95% interval.
const WILSON_Z: f64 = 1.959_963_984_540_054;
/// Share of the sequence table freed when it is full.
const EVICT_FRACTION: usize = 10;

pub fn hour_of(ts: Nanos) -> u32 {
    (ts / NANOS_PER_HOUR) as u32
}

/// Counts per hour over one window. The latest hour's count is kept inline, so the
/// common case (another event in the same hour) touches no other memory; earlier hours
/// of the window live in a ring allocated only once an entry spans more than one hour.
#[derive(Debug, Clone)]
pub struct Hourly {
    last_hour: u32,
    last_count: u32,
    /// Hours before `last_hour` still in the window, at index `hour % slots`.
    earlier: Option<Box<[u32]>>,
}

/// An [`Hourly`] as snapshots store it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HourlyState {
    pub last_hour: u32,
    pub last_count: u32,
    pub earlier: Option<Vec<u32>>,
}

impl Hourly {
    fn state(&self) -> HourlyState {
        HourlyState {
            last_hour: self.last_hour,
            last_count: self.last_count,
            earlier: self.earlier.as_ref().map(|e| e.to_vec()),
        }
    }

    fn from_state(state: HourlyState, slots: u32) -> Option<Self> {
        if state
            .earlier
            .as_ref()
            .is_some_and(|e| e.len() != slots as usize)
        {
            return None;
        }
        Some(Self {
            last_hour: state.last_hour,
            last_count: state.last_count,
            earlier: state.earlier.map(Vec::into_boxed_slice),
        })
    }

    fn new(hour: u32) -> Self {
        Self {
            last_hour: hour,
            last_count: 0,
            earlier: None,
        }
    }

    /// `slots`: hours in the window, the latest included.
    fn add(&mut self, hour: u32, slots: u32) {
        if hour == self.last_hour {
            self.last_count = self.last_count.saturating_add(1);
            return;
        }
        if hour > self.last_hour {
            let gap = hour - self.last_hour;
            if gap >= slots {
                // Everything recorded so far has left the window.
                self.earlier = None;
            } else if self.last_count > 0 || self.earlier.is_some() {
                let (last_hour, last_count) = (self.last_hour, self.last_count);
                let ring = self.ring(slots);
                ring[(last_hour % slots) as usize] = last_count;
                for h in last_hour + 1..hour {
                    ring[(h % slots) as usize] = 0;
                }
            }
            self.last_hour = hour;
            self.last_count = 1;
            return;
        }
        if self.last_hour - hour < slots {
            let slot = &mut self.ring(slots)[(hour % slots) as usize];
            *slot = slot.saturating_add(1);
        }
        // Otherwise older than the window: dropped.
    }

    fn ring(&mut self, slots: u32) -> &mut [u32] {
        self.earlier
            .get_or_insert_with(|| vec![0; slots as usize].into_boxed_slice())
    }

    /// The count of one hour (0 outside what is kept).
    pub fn at(&self, hour: u32, slots: u32) -> u64 {
        if hour == self.last_hour {
            return u64::from(self.last_count);
        }
        match &self.earlier {
            Some(ring) if hour < self.last_hour && hour + slots > self.last_hour => {
                u64::from(ring[(hour % slots) as usize])
            }
            _ => 0,
        }
    }

    /// Sum over the `slots` hours ending with hour `now`.
    pub fn total(&self, now: u32, slots: u32) -> u64 {
        let oldest = now.saturating_sub(slots - 1);
        let mut sum = 0;
        if (oldest..=now).contains(&self.last_hour) {
            sum += u64::from(self.last_count);
        }
        if let Some(ring) = &self.earlier {
            let from = oldest.max(self.last_hour.saturating_sub(slots - 1));
            let to = now.min(self.last_hour.saturating_sub(1));
            if self.last_hour > 0 && from <= to {
                sum += (from..=to)
                    .map(|h| u64::from(ring[(h % slots) as usize]))
                    .sum::<u64>();
            }
        }
        sum
    }
}

/// A sequence of 2..=9 operation ids, packed most recent first (16 bits each, stored as
/// id + 1 so that 0 marks the end): cheap to hash, compare and extend backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqKey([u64; 3]);

impl std::hash::Hash for SeqKey {
    // Three words, not a byte slice: the hasher's fast integer path.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
        state.write_u64(self.0[1]);
        state.write_u64(self.0[2]);
    }
}

impl SeqKey {
    fn with(mut self, position: usize, op: OpId) -> Self {
        self.0[position / 4] |= u64::from(op as u32 + 1) << ((position % 4) * 16);
        self
    }

    /// Operations in chronological order (first → final).
    pub fn ops(&self) -> Vec<OpId> {
        let mut ops: Vec<OpId> = (0..MAX_SEQUENCE_OPS)
            .map(|i| ((self.0[i / 4] >> ((i % 4) * 16)) & 0xffff) as u32)
            .take_while(|&v| v != 0)
            .map(|v| (v - 1) as OpId)
            .collect();
        ops.reverse();
        ops
    }

    /// Operations in the key.
    pub fn len(&self) -> usize {
        (0..MAX_SEQUENCE_OPS)
            .take_while(|&i| (self.0[i / 4] >> ((i % 4) * 16)) & 0xffff != 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.0[0] & 0xffff == 0
    }

    /// The last `k` operations (the key's first `k` positions: most recent first).
    fn suffix(&self, k: usize) -> Self {
        let mut out = [0u64; 3];
        for (i, word) in out.iter_mut().enumerate() {
            let keep = k.saturating_sub(i * 4).min(4);
            *word = match keep {
                0 => 0,
                4 => self.0[i],
                n => self.0[i] & ((1u64 << (n * 16)) - 1),
            };
        }
        Self(out)
    }

    /// A sort key ordering keys by their final operation, then the one before, ...
    fn most_recent_first(&self) -> [u64; 3] {
        // Position 0 sits in a word's low 16 bits: reverse the 16-bit lanes so that it
        // is the most significant.
        self.0.map(|w| {
            let w = w.rotate_left(32);
            ((w & 0xffff_0000_ffff_0000) >> 16) | ((w & 0x0000_ffff_0000_ffff) << 16)
        })
    }

    /// How many of their most recent operations two keys share.
    fn shared_recent(&self, other: &Self) -> usize {
        for (i, (a, b)) in self.0.iter().zip(&other.0).enumerate() {
            let diff = a ^ b;
            if diff != 0 {
                return (i * 4 + diff.trailing_zeros() as usize / 16).min(MAX_SEQUENCE_OPS);
            }
        }
        MAX_SEQUENCE_OPS
    }

    /// From operations in chronological order.
    pub fn from_ops(ops: &[OpId]) -> Self {
        ops.iter()
            .rev()
            .enumerate()
            .fold(Self::default(), |k, (i, &op)| k.with(i, op))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SequenceScore {
    /// Chronological: the final operation last.
    pub ops: Vec<OpId>,
    pub count: u64,
    pub last_op_count: u64,
    pub score: f64,
    pub score_lower: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpTotals {
    pub requests: u64,
    pub occurrences: u64,
}

#[derive(Debug, Clone)]
struct OpCounts {
    requests: Hourly,
    occurrences: Hourly,
}

/// Learned counts as snapshots store them. Operation ids are the catalog's at save time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AnalyticsState {
    pub slots: u32,
    /// Per operation id: (requests, occurrences).
    pub ops: Vec<(HourlyState, HourlyState)>,
    /// Operations first to final, and the counts.
    pub sequences: Vec<(Vec<OpId>, HourlyState)>,
    pub evicted: u64,
}

/// Learned counts.
pub struct Analytics {
    /// Hours in the window, the report's own hour included.
    slots: u32,
    max_ops: usize,
    max_sequences: usize,
    ops: Vec<OpCounts>,
    sequences: HashMap<SeqKey, Hourly, foldhash::fast::RandomState>,
    evicted: u64,
}

impl Analytics {
    /// `window` rounds up to whole hours; `max_ops` is the longest sequence counted.
    pub fn new(window: Nanos, max_ops: usize, max_sequences: usize) -> Self {
        let hours = window.div_ceil(NANOS_PER_HOUR).max(1) as u32;
        Self {
            slots: hours + 1,
            max_ops: max_ops.clamp(2, MAX_SEQUENCE_OPS),
            max_sequences: max_sequences.max(1),
            ops: Vec::new(),
            sequences: HashMap::default(),
            evicted: 0,
        }
    }

    fn op(&mut self, op: OpId, hour: u32) -> &mut OpCounts {
        let i = usize::from(op);
        if i >= self.ops.len() {
            self.ops.resize_with(i + 1, || OpCounts {
                requests: Hourly::new(hour),
                occurrences: Hourly::new(hour),
            });
        }
        &mut self.ops[i]
    }

    /// Any request mapped to `op` (identified or not, repeats included).
    pub fn record_request(&mut self, op: OpId, now: Nanos) {
        let (hour, slots) = (hour_of(now), self.slots);
        self.op(op, hour).requests.add(hour, slots);
    }

    /// A new occurrence of the final entry of `history` (oldest first): N(x), and one
    /// count for the window of its last 2..=max_ops operations. N(s) of every suffix s
    /// of a window is the sum over the windows that end with s — summed when a report
    /// asks (`scores`), so a request costs one table probe instead of eight. Returns
    /// the window counted, if the history was long enough for one.
    pub fn record_occurrence(&mut self, history: &[Entry], now: Nanos) -> Option<SeqKey> {
        let last = history.last()?;
        let (hour, slots) = (hour_of(now), self.slots);
        self.op(last.op, hour).occurrences.add(hour, slots);
        let longest = self.max_ops.min(history.len());
        if longest < 2 {
            return None;
        }
        let key = (0..longest).fold(SeqKey::default(), |key, i| {
            key.with(i, history[history.len() - 1 - i].op)
        });
        if let Some(counts) = self.sequences.get_mut(&key) {
            counts.add(hour, slots);
            return Some(key);
        }
        if self.sequences.len() >= self.max_sequences {
            self.evict_low_support(hour);
        }
        let mut counts = Hourly::new(hour);
        counts.add(hour, slots);
        self.sequences.insert(key, counts);
        Some(key)
    }

    /// Hours in the window, the report's own hour included.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Frees a tenth of the table, lowest window counts first.
    fn evict_low_support(&mut self, now: u32) {
        let target = (self.sequences.len() / EVICT_FRACTION).max(1);
        let slots = self.slots;
        let mut totals: Vec<u64> = self
            .sequences
            .values()
            .map(|c| c.total(now, slots))
            .collect();
        let (_, &mut cutoff, _) = totals.select_nth_unstable(target - 1);
        let mut at_cutoff_budget = target - totals.iter().filter(|&&t| t < cutoff).count();
        let before = self.sequences.len();
        self.sequences.retain(|_, c| {
            let t = c.total(now, slots);
            if t < cutoff {
                return false;
            }
            if t == cutoff && at_cutoff_budget > 0 {
                at_cutoff_budget -= 1;
                return false;
            }
            true
        });
        self.evicted += (before - self.sequences.len()) as u64;
    }

    pub fn export(&self) -> AnalyticsState {
        AnalyticsState {
            slots: self.slots,
            ops: self
                .ops
                .iter()
                .map(|c| (c.requests.state(), c.occurrences.state()))
                .collect(),
            sequences: self
                .sequences
                .iter()
                .map(|(k, c)| (k.ops(), c.state()))
                .collect(),
            evicted: self.evicted,
        }
    }

    /// Takes back saved counts; `remap` turns saved operation ids into current ones (or
    /// `None`: that operation is gone, its counts too). A different window is refused.
    pub fn import(
        &mut self,
        state: AnalyticsState,
        remap: &dyn Fn(OpId) -> Option<OpId>,
    ) -> Result<(), String> {
        if state.slots != self.slots {
            return Err(format!(
                "saved with a {} h window, configured {} h",
                state.slots.saturating_sub(1),
                self.slots - 1
            ));
        }
        let bad = || "counts with a wrong number of hourly buckets".to_string();
        for (old, (requests, occurrences)) in state.ops.into_iter().enumerate() {
            let Some(op) = remap(old as OpId) else {
                continue;
            };
            let hour = requests.last_hour;
            let _ = self.op(op, hour);
            let counts = &mut self.ops[usize::from(op)];
            counts.requests = Hourly::from_state(requests, self.slots).ok_or_else(bad)?;
            counts.occurrences = Hourly::from_state(occurrences, self.slots).ok_or_else(bad)?;
        }
        for (ops, counts) in state.sequences {
            if !(2..=MAX_SEQUENCE_OPS).contains(&ops.len()) {
                return Err(format!("a sequence of {} operations", ops.len()));
            }
            let Some(ops) = ops.iter().map(|&op| remap(op)).collect::<Option<Vec<_>>>() else {
                continue;
            };
            if self.sequences.len() < self.max_sequences {
                self.sequences.insert(
                    SeqKey::from_ops(&ops),
                    Hourly::from_state(counts, self.slots).ok_or_else(bad)?,
                );
            }
        }
        self.evicted = state.evicted;
        Ok(())
    }

    pub fn sequences_evicted(&self) -> u64 {
        self.evicted
    }

    pub fn tracked_sequences(&self) -> usize {
        self.sequences.len()
    }

    pub fn op_totals(&self, op: OpId, now: Nanos) -> OpTotals {
        let hour = hour_of(now);
        self.ops
            .get(usize::from(op))
            .map_or(OpTotals::default(), |c| OpTotals {
                requests: c.requests.total(hour, self.slots),
                occurrences: c.occurrences.total(hour, self.slots),
            })
    }

    /// Requests to `op` in each hour of the window ending at `now`, oldest first.
    pub fn hourly_requests(&self, op: OpId, now: Nanos) -> Vec<u64> {
        let (hour, slots) = (hour_of(now), self.slots);
        let oldest = hour.saturating_sub(slots - 1);
        (oldest..=hour)
            .map(|h| {
                self.ops
                    .get(usize::from(op))
                    .map_or(0, |c| c.requests.at(h, slots))
            })
            .collect()
    }

    /// Sequences with at least `min_support` occurrences in the window ending at `now`,
    /// highest score first (ties: higher count first, then operation ids).
    pub fn scores(&self, now: Nanos, min_support: u64) -> Vec<SequenceScore> {
        self.score_inputs(now).scores(min_support)
    }

    /// What scoring needs, copied out: each counted window's total as of `now` and each
    /// operation's occurrences. One pass, no hashing: the live agent takes it under the
    /// pipeline's lock and scores outside it (capture does not wait for a report).
    pub fn score_inputs(&self, now: Nanos) -> ScoreInputs {
        let hour = hour_of(now);
        ScoreInputs {
            windows: self
                .sequences
                .iter()
                .filter_map(|(window, hourly)| {
                    let n = hourly.total(hour, self.slots);
                    (n > 0).then_some((*window, n))
                })
                .collect(),
            occurrences: self
                .ops
                .iter()
                .map(|c| c.occurrences.total(hour, self.slots))
                .collect(),
        }
    }
}

/// Counted windows and operation totals at one point in time (see
/// [`Analytics::score_inputs`]).
pub struct ScoreInputs {
    windows: Vec<(SeqKey, u64)>,
    occurrences: Vec<u64>,
}

impl ScoreInputs {
    /// Inputs from counts made elsewhere (the fleet's merged counts): each window's
    /// total, and occurrences by operation id.
    pub fn from_counts(windows: Vec<(SeqKey, u64)>, occurrences: Vec<u64>) -> Self {
        Self {
            windows,
            occurrences,
        }
    }

    /// The scores [`Analytics::scores`] gives.
    pub fn scores(mut self, min_support: u64) -> Vec<SequenceScore> {
        // N(s): every window counts for each of its suffixes of 2 or more operations.
        // Sorted by their operations from the final one back, windows that share their
        // last k operations are neighbours, so each suffix's count is one run of a
        // single pass (no table of every suffix of every window).
        self.windows
            .sort_unstable_by_key(|(window, _)| window.most_recent_first());
        let mut out = Vec::new();
        let mut emit = |suffix: SeqKey, count: u64| {
            if count < min_support.max(1) {
                return;
            }
            let ops = suffix.ops();
            let Some(&last) = ops.last() else { return };
            let last_op_count = self
                .occurrences
                .get(usize::from(last))
                .copied()
                .unwrap_or(0)
                .max(count);
            out.push(SequenceScore {
                score: count as f64 / last_op_count as f64,
                score_lower: wilson_lower(count, last_op_count),
                ops,
                count,
                last_op_count,
            });
        };
        // runs[k]: the count of the current run of windows sharing their last k ops.
        let mut runs = [0u64; MAX_SEQUENCE_OPS + 1];
        let mut previous: Option<SeqKey> = None;
        // Ends the runs of `previous`'s suffixes longer than `shared`.
        let mut end_runs = |previous: SeqKey, shared: usize, runs: &mut [u64]| {
            for (k, run) in runs.iter_mut().enumerate().skip((shared + 1).max(2)) {
                if *run > 0 {
                    emit(previous.suffix(k), std::mem::take(run));
                }
            }
        };
        for &(window, n) in &self.windows {
            if let Some(p) = previous {
                end_runs(p, p.shared_recent(&window), &mut runs);
            }
            for run in &mut runs[2..=window.len()] {
                *run += n;
            }
            previous = Some(window);
        }
        if let Some(p) = previous {
            end_runs(p, 0, &mut runs);
        }
        out.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(b.count.cmp(&a.count))
                .then_with(|| a.ops.cmp(&b.ops))
        });
        out
    }
}

/// Lower end of the Wilson score interval (95%) for `successes` out of `trials`.
pub fn wilson_lower(successes: u64, trials: u64) -> f64 {
    if trials == 0 {
        return 0.0;
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = WILSON_Z * WILSON_Z;
    let centre = p + z2 / (2.0 * n);
    let margin = WILSON_Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - margin) / (1.0 + z2 / n)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Nanos = NANOS_PER_HOUR;

    fn hist(ops: &[OpId]) -> Vec<Entry> {
        ops.iter().map(|&op| Entry { op, at: 0 }).collect()
    }

    #[test]
    fn seq_key_round_trips() {
        let ops = [3, 0, 65_000, 7, 1, 2, 3, 4, 5];
        assert_eq!(SeqKey::from_ops(&ops).ops(), ops);
        assert_eq!(SeqKey::from_ops(&[1, 2]).ops(), [1, 2]);
        assert_ne!(SeqKey::from_ops(&[1, 2]), SeqKey::from_ops(&[2, 1]));
    }

    #[test]
    fn seq_key_suffixes() {
        let k = SeqKey::from_ops(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(k.len(), 6);
        assert_eq!(k.suffix(2).ops(), [5, 6]);
        assert_eq!(k.suffix(5).ops(), [2, 3, 4, 5, 6]);
        assert_eq!(k.suffix(6), k);
        assert!(SeqKey::default().is_empty());
    }

    #[test]
    fn window_counts_equal_counting_every_suffix() {
        // Model: N(s) for every suffix of 2..=max_ops of each occurrence's history.
        let mut a = Analytics::new(24 * H, 5, 100_000);
        let mut model: std::collections::HashMap<Vec<OpId>, u64> = std::collections::HashMap::new();
        let mut history: Vec<Entry> = Vec::new();
        let mut x: u32 = 7;
        for _ in 0..3000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let op = ((x >> 16) % 4) as OpId;
            if history.last().is_some_and(|e| e.op == op) {
                continue;
            }
            history.push(Entry { op, at: 0 });
            if history.len() > 10 {
                history.remove(0);
            }
            a.record_occurrence(&history, 0);
            for k in 2..=history.len().min(5) {
                *model
                    .entry(history[history.len() - k..].iter().map(|e| e.op).collect())
                    .or_default() += 1;
            }
        }
        let got: std::collections::HashMap<Vec<OpId>, u64> = a
            .scores(0, 1)
            .into_iter()
            .map(|s| (s.ops, s.count))
            .collect();
        assert_eq!(got, model);
    }

    #[test]
    fn suffixes_are_counted() {
        let mut a = Analytics::new(24 * H, 9, 1000);
        a.record_occurrence(&hist(&[1]), 0);
        a.record_occurrence(&hist(&[1, 2]), 0);
        a.record_occurrence(&hist(&[1, 2, 3]), 0);
        let s = a.scores(0, 1);
        let got: Vec<_> = s
            .iter()
            .map(|s| (s.ops.clone(), s.count, s.last_op_count))
            .collect();
        assert_eq!(
            got,
            [
                (vec![1, 2], 1, 1),
                (vec![1, 2, 3], 1, 1),
                (vec![2, 3], 1, 1)
            ]
        );
    }

    #[test]
    fn window_drops_old_hours() {
        let mut h = Hourly::new(100);
        h.add(100, 25);
        h.add(110, 25);
        assert_eq!(h.total(110, 25), 2);
        assert_eq!(h.total(124, 25), 2);
        assert_eq!(h.total(125, 25), 1, "hour 100 left the window");
        assert_eq!(h.total(135, 25), 0);
        h.add(90, 25); // before the latest hour (110) but within its window: counts
        assert_eq!(h.total(110, 25), 3);
        h.add(80, 25); // older than 24 h before hour 110: dropped
        assert_eq!(h.total(110, 25), 3);
        h.add(111, 25);
        h.add(111, 25);
        assert_eq!(h.total(111, 25), 5);
        h.add(140, 25); // everything earlier left the window
        assert_eq!(h.total(140, 25), 1);
    }

    #[test]
    fn hourly_matches_a_plain_model() {
        // Model: a list of event hours; total = events in [now - 24, now].
        let mut h = Hourly::new(1000);
        let mut events = Vec::new();
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let hour = 1000 + (x >> 16) % 100;
            h.add(hour, 25);
            let latest = events.iter().copied().max().unwrap_or(0).max(hour);
            if latest - hour < 25 {
                events.push(hour);
            }
            let now = latest + (x >> 8) % 3;
            let want = events
                .iter()
                .filter(|&&e| e + 24 >= now && e <= now)
                .count() as u64;
            assert_eq!(h.total(now, 25), want);
            for hour in now.saturating_sub(24)..=now {
                let want = events.iter().filter(|&&e| e == hour).count() as u64;
                assert_eq!(h.at(hour, 25), want, "hour {hour}");
            }
        }
    }

    #[test]
    fn table_is_bounded_and_evicts_low_support_first() {
        let mut a = Analytics::new(24 * H, 2, 100);
        for _ in 0..50 {
            a.record_occurrence(&hist(&[1, 2]), 0);
        }
        for i in 0..1000u16 {
            a.record_occurrence(&hist(&[10 + i, 5000 + i]), 0);
            assert!(a.tracked_sequences() <= 100);
        }
        assert!(a.sequences_evicted() > 0);
        assert!(
            a.scores(0, 50).iter().any(|s| s.ops == [1, 2]),
            "the well-supported sequence stays"
        );
    }

    proptest::proptest! {
        /// The single sorted pass counts every suffix as a table of all suffixes does.
        #[test]
        fn suffix_counts_match_a_table_of_every_suffix(
            windows in proptest::collection::hash_map(
                proptest::collection::vec(0u16..4, 2..=MAX_SEQUENCE_OPS),
                1u64..5,
                0..60,
            ),
            occurrences in proptest::collection::vec(0u64..400, 4),
            min_support in 1u64..4,
        ) {
            let windows: Vec<(SeqKey, u64)> = windows
                .iter()
                .map(|(ops, &n)| (SeqKey::from_ops(ops), n))
                .collect();
            let mut table: HashMap<Vec<OpId>, u64> = HashMap::new();
            for (window, n) in &windows {
                for k in 2..=window.len() {
                    *table.entry(window.suffix(k).ops()).or_default() += n;
                }
            }
            let got = ScoreInputs { windows, occurrences: occurrences.clone() }.scores(min_support);
            let got: HashMap<Vec<OpId>, (u64, u64)> = got
                .into_iter()
                .map(|s| (s.ops, (s.count, s.last_op_count)))
                .collect();
            let want: HashMap<Vec<OpId>, (u64, u64)> = table
                .into_iter()
                .filter(|&(_, count)| count >= min_support)
                .map(|(ops, count)| {
                    let last = occurrences[usize::from(*ops.last().unwrap())].max(count);
                    (ops, (count, last))
                })
                .collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn wilson_matches_reference_values() {
        // Reference: p=0.5, n=10 → 0.2366 (Wilson 1927 / standard tables).
        assert!((wilson_lower(5, 10) - 0.2366).abs() < 1e-3);
        assert!((wilson_lower(10, 10) - 0.7225).abs() < 1e-3);
        assert_eq!(wilson_lower(0, 10), 0.0);
    }
}
