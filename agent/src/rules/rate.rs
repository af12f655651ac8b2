//! Counters of rate rules: per rule and session, the requests in the current period.
//! Periods are aligned to the clock (a `10m` period is 12:00–12:10, 12:10–12:20, …), as
//! the rate distributions of the report count them.

use std::collections::HashMap;

use crate::Nanos;
use crate::session::SessionId;

/// Most (rule, session) counters kept; beyond it, new ones are not counted until the
/// finished periods are dropped.
pub const MAX_COUNTERS: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct RateCounters {
    /// (rule index, session) → (end of the counted period, requests in it).
    counts: HashMap<(u32, SessionId), (Nanos, u64), foldhash::fast::RandomState>,
    /// Requests not counted because the table was full of current periods.
    pub untracked: u64,
}

impl RateCounters {
    /// Counts a request of `session` at `now` for rule `rule`; its count in this period.
    pub fn count(&mut self, rule: u32, session: SessionId, now: Nanos, period: Nanos) -> u64 {
        let end = (now / period.max(1) + 1).saturating_mul(period.max(1));
        if self.counts.len() >= MAX_COUNTERS && !self.counts.contains_key(&(rule, session)) {
            self.counts.retain(|_, (until, _)| *until > now);
            if self.counts.len() >= MAX_COUNTERS {
                self.untracked += 1;
                return 0;
            }
        }
        let (until, n) = self.counts.entry((rule, session)).or_insert((end, 0));
        if *until != end {
            (*until, *n) = (end, 0);
        }
        *n += 1;
        *n
    }

    /// A counter's current value, 0 when none.
    pub fn get(&self, rule: u32, session: SessionId) -> u64 {
        self.counts.get(&(rule, session)).map_or(0, |&(_, n)| n)
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
        assert_eq!(c.count(0, s1, 5, 10), 1);
        assert_eq!(c.count(0, s1, 9, 10), 2);
        assert_eq!(c.count(0, s2, 9, 10), 1, "per session");
        assert_eq!(c.count(1, s1, 9, 10), 1, "per rule");
        assert_eq!(c.count(0, s1, 10, 10), 1, "a new period starts at 10");
        assert_eq!(c.get(0, s1), 1);
    }
}
