//! One memory budget for the bytes the agent buffers while waiting for more
//! (`[capture] max_buffer_bytes`): segments queued behind a reassembly hole and
//! unfinished request heads. Both are sized by whoever sends the packets, so each is
//! capped per connection and all of them together here; what does not fit is dropped
//! and counted by the stage that dropped it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Default for `[capture] max_buffer_bytes`: room for 2 048 connections each holding
/// the largest head the agent keeps (32 KiB), far above what real clients leave waiting.
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 64 << 20;

/// Shared count of buffered bytes against a limit. Clones share the count.
#[derive(Debug, Clone)]
pub struct BufferBudget(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    used: AtomicUsize,
    limit: usize,
}

impl Default for BufferBudget {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BUFFER_BYTES)
    }
}

impl BufferBudget {
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Shared {
            used: AtomicUsize::new(0),
            limit,
        }))
    }

    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Bytes buffered now.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Whether more is buffered than the limit allows: the caller drops something.
    pub fn over(&self) -> bool {
        self.used() > self.0.limit
    }

    /// Counts `bytes` more (the caller checks [`over`](Self::over) and gives back).
    pub fn take(&self, bytes: usize) {
        // Relaxed: the count is only ever read by the thread that buffers, and by
        // metrics, which need no ordering with anything else.
        self.0.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn give_back(&self, bytes: usize) {
        self.0.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One buffer's share of a budget, given back when it is dropped (a connection
/// evicted or expired with a head in its buffer returns the bytes with it).
#[derive(Debug, Default)]
pub struct Lease {
    budget: Option<BufferBudget>,
    bytes: usize,
}

impl Lease {
    /// Sets the share to `bytes`; false when it grew past what the budget holds (the
    /// caller then drops the buffer).
    pub fn set(&mut self, budget: &BufferBudget, bytes: usize) -> bool {
        let grew = bytes > self.bytes;
        if bytes != self.bytes {
            let held = self.budget.get_or_insert_with(|| budget.clone());
            if bytes > self.bytes {
                held.take(bytes - self.bytes);
            } else {
                held.give_back(self.bytes - bytes);
            }
            self.bytes = bytes;
        }
        !grew || !budget.over()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give_back(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_give_back_what_they_hold_when_dropped() {
        let budget = BufferBudget::new(100);
        let mut a = Lease::default();
        assert!(a.set(&budget, 60));
        let mut b = Lease::default();
        assert!(!b.set(&budget, 50), "110 of 100");
        assert!(budget.over());
        assert!(b.set(&budget, 40), "shrunk to fit");
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.set(&budget, 0));
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
