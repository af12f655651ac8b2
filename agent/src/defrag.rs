//! IP fragment reassembly (IPv4, and IPv6's fragment header), as Linux's `ip_defrag` /
//! `ipv6_frag` do it for the server: fragments are queued per (source, destination,
//! identification); a datagram is complete when its last fragment and every byte before
//! it arrived; exact duplicates are ignored and any other overlap discards the whole
//! datagram (RFC 5722, and Linux for IPv4 since 4.19); queues time out after
//! [`FRAG_TIMEOUT`] (`ipfrag_time`) and all queues together hold at most
//! [`MAX_FRAG_BYTES`] (`ipfrag_high_thresh`): beyond it new fragments are dropped, as
//! Linux drops them. Pure: time comes with the fragments.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::packet::Fragment;
use crate::{NANOS_PER_SEC, Nanos};

/// A datagram whose fragments have not all arrived is dropped after this long.
pub const FRAG_TIMEOUT: Nanos = 30 * NANOS_PER_SEC;
/// Bytes held across all unfinished datagrams (Linux's default `ipfrag_high_thresh`).
pub const MAX_FRAG_BYTES: usize = 4 << 20;
/// Largest datagram payload (the IPv4 total length field; IPv6 without jumbograms).
const MAX_DATAGRAM: u32 = 65_535;
/// What one held fragment costs besides its bytes (so tiny fragments are bounded too).
const FRAGMENT_OVERHEAD: usize = 64;
/// How often (capture time) unfinished datagrams are looked at for their timeout.
const SWEEP_INTERVAL: Nanos = NANOS_PER_SEC;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FragStats {
    pub fragments: u64,
    /// Datagrams put back together.
    pub reassembled: u64,
    /// Datagrams discarded: overlapping fragments (the server discards them too).
    pub overlaps: u64,
    /// Datagrams dropped unfinished: timeout, memory bound, inconsistent lengths.
    pub dropped: u64,
    /// Reassembled datagrams with bytes the capture did not keep (snaplen).
    pub incomplete: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
}

struct Queue {
    /// (offset, wire length, kept bytes), sorted by offset, never overlapping.
    parts: Vec<(u32, u32, Vec<u8>)>,
    /// Datagram length, once the last fragment arrived.
    total: Option<u32>,
    first_seen: Nanos,
    bytes: usize,
}

enum Insert {
    Added,
    Duplicate,
    Overlap,
    /// Lengths that contradict each other (two different ends, bytes past the end).
    Inconsistent,
}

/// Adds a fragment covering `[f.offset, end)` to its queue.
fn insert(queue: &mut Queue, f: &Fragment<'_>, end: u32) -> Insert {
    if !f.more {
        if queue.total.is_some_and(|t| t != end) || queue.parts.iter().any(|p| p.0 + p.1 > end) {
            return Insert::Inconsistent;
        }
        queue.total = Some(end);
    } else if queue.total.is_some_and(|t| end > t) {
        return Insert::Inconsistent;
    }
    let at = queue.parts.partition_point(|p| p.0 < f.offset);
    let overlaps_prev = at > 0 && {
        let p = &queue.parts[at - 1];
        p.0 + p.1 > f.offset
    };
    let overlaps_next = queue.parts.get(at).is_some_and(|p| p.0 < end);
    if overlaps_prev || overlaps_next {
        let duplicate = queue
            .parts
            .iter()
            .any(|p| p.0 <= f.offset && end <= p.0 + p.1);
        return if duplicate {
            Insert::Duplicate
        } else {
            Insert::Overlap
        };
    }
    queue
        .parts
        .insert(at, (f.offset, f.wire_len, f.payload.to_vec()));
    queue.bytes += f.payload.len() + FRAGMENT_OVERHEAD;
    Insert::Added
}

/// A datagram put back together: its payload (a TCP segment) and whether every byte of
/// it was captured.
pub struct Datagram {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ts: Nanos,
    pub payload: Vec<u8>,
    /// Wire length of the payload (more than `payload.len()` when fragments were cut).
    pub wire_len: u32,
}

#[derive(Default)]
pub struct Defrag {
    queues: HashMap<Key, Queue, foldhash::fast::RandomState>,
    /// Bytes held, overhead included.
    bytes: usize,
    last_sweep: Nanos,
    stats: FragStats,
}

impl Defrag {
    pub fn stats(&self) -> FragStats {
        self.stats
    }

    pub fn restore_stats(&mut self, stats: FragStats) {
        self.stats = stats;
    }

    /// Takes one fragment; returns the datagram it completes, if any.
    pub fn push(&mut self, f: &Fragment<'_>) -> Option<Datagram> {
        self.stats.fragments += 1;
        self.expire(f.ts);
        let key = Key {
            src: f.src,
            dst: f.dst,
            id: f.id,
        };
        let end = f.offset.checked_add(f.wire_len)?;
        if end > MAX_DATAGRAM || (f.more && !f.wire_len.is_multiple_of(8)) {
            self.drop_queue(&key);
            return None;
        }
        let cost = f.payload.len() + FRAGMENT_OVERHEAD;
        if self.bytes + cost > MAX_FRAG_BYTES {
            // Over `ipfrag_high_thresh` Linux takes no more fragments until queues time
            // out or complete: neither does the agent.
            self.stats.dropped += 1;
            return None;
        }
        let queue = self.queues.entry(key).or_insert_with(|| Queue {
            parts: Vec::new(),
            total: None,
            first_seen: f.ts,
            bytes: 0,
        });
        match insert(queue, f, end) {
            Insert::Added => self.bytes += cost,
            Insert::Duplicate => return None,
            Insert::Overlap => {
                self.stats.overlaps += 1;
                self.drop_queue(&key);
                return None;
            }
            Insert::Inconsistent => {
                self.drop_queue(&key);
                return None;
            }
        }
        let queue = self.queues.get(&key)?;
        let total = queue.total?;
        let mut next = 0;
        for p in &queue.parts {
            if p.0 != next {
                return None; // A hole: wait for it.
            }
            next = p.0 + p.1;
        }
        if next != total {
            return None;
        }
        let queue = self.queues.remove(&key)?;
        self.bytes -= queue.bytes;
        self.stats.reassembled += 1;
        let mut payload = Vec::with_capacity(queue.bytes);
        let mut cut = false;
        for (_, wire, kept) in &queue.parts {
            if cut {
                break; // Bytes after a cut cannot be placed in a contiguous buffer.
            }
            payload.extend_from_slice(kept);
            cut = kept.len() < *wire as usize;
        }
        if cut {
            self.stats.incomplete += 1;
        }
        let datagram = Datagram {
            src: f.src,
            dst: f.dst,
            ts: f.ts,
            payload,
            wire_len: total,
        };
        Some(datagram)
    }

    fn drop_queue(&mut self, key: &Key) {
        if let Some(q) = self.queues.remove(key) {
            self.bytes -= q.bytes;
            self.stats.dropped += 1;
        }
    }

    /// Drops queues older than [`FRAG_TIMEOUT`] (once per [`SWEEP_INTERVAL`]).
    fn expire(&mut self, now: Nanos) {
        if now.saturating_sub(self.last_sweep) < SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = now;
        let before = self.queues.len();
        let mut freed = 0;
        self.queues.retain(|_, q| {
            let keep = now.saturating_sub(q.first_seen) <= FRAG_TIMEOUT;
            if !keep {
                freed += q.bytes;
            }
            keep
        });
        self.bytes -= freed;
        self.stats.dropped += (before - self.queues.len()) as u64;
    }

    /// Unfinished datagrams held.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(ts: Nanos, id: u32, offset: u32, more: bool, bytes: &[u8]) -> Fragment<'_> {
        Fragment {
            ts,
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            id,
            offset,
            more,
            payload: bytes,
            wire_len: bytes.len() as u32,
        }
    }

    #[test]
    fn fragments_in_any_order_make_the_datagram() {
        let data: Vec<u8> = (0..40u8).collect();
        let mut d = Defrag::default();
        assert!(d.push(&frag(0, 7, 16, true, &data[16..32])).is_none());
        assert!(d.push(&frag(0, 7, 32, false, &data[32..])).is_none());
        // An exact duplicate is ignored.
        assert!(d.push(&frag(0, 7, 16, true, &data[16..32])).is_none());
        let dg = d.push(&frag(1, 7, 0, true, &data[..16])).unwrap();
        assert_eq!(dg.payload, data);
        assert_eq!((d.stats().reassembled, d.len()), (1, 0));
    }

    #[test]
    fn overlapping_fragments_discard_the_datagram() {
        let mut d = Defrag::default();
        assert!(d.push(&frag(0, 1, 0, true, &[b'a'; 16])).is_none());
        assert!(d.push(&frag(0, 1, 8, true, &[b'b'; 16])).is_none());
        assert!(d.push(&frag(0, 1, 24, false, b"end")).is_none());
        assert_eq!((d.stats().overlaps, d.stats().reassembled), (1, 0));
    }

    #[test]
    fn unfinished_datagrams_time_out_and_memory_is_bounded() {
        let mut d = Defrag::default();
        d.push(&frag(0, 1, 0, true, &[0; 8]));
        d.push(&frag(FRAG_TIMEOUT + 1, 2, 0, true, &[0; 8]));
        assert_eq!((d.len(), d.stats().dropped), (1, 1));
        let big = vec![0u8; 60_000];
        for id in 0..200 {
            d.push(&frag(FRAG_TIMEOUT + 2, 100 + id, 0, true, &big));
            assert!(d.bytes <= MAX_FRAG_BYTES);
        }
        // A flood of tiny fragments is bounded too (each costs its overhead).
        for id in 0..1_000_000 {
            d.push(&frag(FRAG_TIMEOUT + 3, 10_000 + id, 0, true, &[0; 8]));
        }
        assert!(d.bytes <= MAX_FRAG_BYTES);
        assert!(d.len() < MAX_FRAG_BYTES / FRAGMENT_OVERHEAD);
    }

    #[test]
    fn inconsistent_lengths_are_dropped() {
        let mut d = Defrag::default();
        d.push(&frag(0, 1, 16, false, b"x"));
        assert!(d.push(&frag(0, 1, 24, false, b"y")).is_none());
        assert_eq!(d.stats().dropped, 1);
        // A middle fragment whose length is not a multiple of 8.
        assert!(d.push(&frag(0, 2, 0, true, b"abc")).is_none());
    }
}
