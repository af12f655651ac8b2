//! Counters of rate rules: per rule and session, the requests in the current period.
//! Periods are aligned to the clock (a `10m` period is 12:00–12:10, 12:10–12:20, …), as
//! the rate distributions of the report count them.

use std::collections::HashMap;

use crate::Nanos;
use crate::session::SessionId;

/// Most (rule, session) counters kept (about 13 MB); beyond it, new ones are not counted
/// until the finished periods are dropped.
pub const MAX_COUNTERS: usize = 1 << 18;

#[derive(Debug, Default)]
pub struct RateCounters {
    /// (rule index, session) → (end of the counted period in seconds since the epoch,
    /// rounded up, requests in it).
    counts: HashMap<(u32, SessionId), (u32, u32), foldhash::fast::RandomState>,
    /// Requests not counted because the table was full of current periods.
    pub untracked: u64,
}

impl RateCounters {
    /// Counts a request of `session` at `now` for rule `rule`; its count in this period.
    pub fn count(&mut self, rule: u32, session: SessionId, now: Nanos, period: Nanos) -> u64 {
        // Periods are at least a second, so ends rounded up to the second still tell
        // periods apart, and fit in 32 bits until 2106.
        let period = period.max(crate::NANOS_PER_SEC);
        let end = (now / period + 1).saturating_mul(period);
        let end = end.div_ceil(crate::NANOS_PER_SEC) as u32;
        let now_secs = (now / crate::NANOS_PER_SEC) as u32;
        if self.counts.len() >= MAX_COUNTERS && !self.counts.contains_key(&(rule, session)) {
            self.counts.retain(|_, (until, _)| *until > now_secs);
            if self.counts.len() >= MAX_COUNTERS {
                self.untracked += 1;
                return 0;
            }
        }
        let (until, n) = self.counts.entry((rule, session)).or_insert((end, 0));
        if *until != end {
            (*until, *n) = (end, 0);
        }
        *n = n.saturating_add(1);
        u64::from(*n)
    }

    /// A counter's current value, 0 when none.
    pub fn get(&self, rule: u32, session: SessionId) -> u64 {
        self.counts
            .get(&(rule, session))
            .map_or(0, |&(_, n)| u64::from(n))
    }

    /// Rules were reloaded: indices changed.
    pub fn clear(&mut self) {
        self.counts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_aligned_period_and_session() {
        let mut c = RateCounters::default();
        let (s1, s2) = (SessionId(1), SessionId(2));
        let s = crate::NANOS_PER_SEC;
        assert_eq!(c.count(0, s1, 5 * s, 10 * s), 1);
        assert_eq!(c.count(0, s1, 9 * s, 10 * s), 2);
        assert_eq!(c.count(0, s2, 9 * s, 10 * s), 1, "per session");
        assert_eq!(c.count(1, s1, 9 * s, 10 * s), 1, "per rule");
        assert_eq!(
            c.count(0, s1, 10 * s, 10 * s),
            1,
            "a new period starts at 10 s"
        );
        assert_eq!(c.get(0, s1), 1);
        // 1.5 s periods: [9, 10.5) and [10.5, 12) end at 11 and 12 once rounded up.
        assert_eq!(c.count(2, s1, 10 * s, 3 * s / 2), 1);
        assert_eq!(
            c.count(2, s1, 10 * s + s / 2, 3 * s / 2),
            1,
            "the next period"
        );
    }
}
