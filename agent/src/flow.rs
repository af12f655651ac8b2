//! TCP reassembly of the client → server direction, one state per connection.
//!
//! Segments arrive in capture order; the table hands each connection's bytes on in
//! sequence order as [`Piece`]s, together with that connection's application state `S`
//! (the HTTP stream). Retransmissions are delivered once, out-of-order segments wait in a
//! bounded buffer, and holes that never fill are skipped after [`GAP_TIMEOUT`] or when the
//! buffer is full, announced as a [`Piece::Gap`] so the consumer can resynchronise.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use crate::source::{FlowKey, Segment};
use crate::{NANOS_PER_SEC, Nanos};

/// In-order bytes of one connection, or the news that some are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Data(&'a [u8]),
    /// Bytes that will never arrive: `Some(n)` when the size of the hole is known,
    /// `None` when the capture joined the connection mid-stream.
    Gap(Option<u32>),
}

/// Connections tracked at once; the least recently seen of a sample is evicted beyond.
pub const MAX_FLOWS: usize = 65_536;
/// Out-of-order bytes held per connection before the hole in front of them is skipped.
pub const MAX_PENDING_BYTES: usize = 64 * 1024;
/// Out-of-order segments held per connection.
pub const MAX_PENDING_SEGMENTS: usize = 64;
/// A hole older than this is given up on (a lost packet the capture will never see).
pub const GAP_TIMEOUT: Nanos = 2 * NANOS_PER_SEC;
/// A connection silent for this long is forgotten.
pub const FLOW_IDLE_TIMEOUT: Nanos = 300 * NANOS_PER_SEC;
/// How often (in capture time) idle connections and stale holes are looked for.
const SWEEP_INTERVAL: Nanos = NANOS_PER_SEC;
/// Connections looked at to pick one to evict when the table is full.
const EVICTION_SAMPLE: usize = 8;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowStats {
    pub flows_opened: u64,
    pub flows_closed: u64,
    pub flows_expired: u64,
    pub flows_evicted: u64,
    /// Segments whose bytes had all been delivered already.
    pub retransmitted_segments: u64,
    /// Segments that arrived ahead of a hole and waited.
    pub out_of_order_segments: u64,
    /// Holes skipped because they never filled.
    pub gaps: u64,
}

struct Pending {
    seq: u32,
    wire_len: u32,
    data: Vec<u8>,
}

struct Flow<S> {
    /// Sequence number of the next byte to deliver.
    next_seq: u32,
    /// Initial sequence number, when the SYN was seen (tells a retransmitted SYN from a
    /// new connection on the same ports).
    isn: Option<u32>,
    fin_seq: Option<u32>,
    /// Sorted by distance from `next_seq`.
    pending: Vec<Pending>,
    pending_bytes: usize,
    /// When the oldest waiting segment arrived.
    gap_since: Nanos,
    last_seen: Nanos,
    app: S,
}

/// Bounded table of connections. `S` is the per-connection consumer state.
pub struct FlowTable<S> {
    flows: HashMap<FlowKey, Flow<S>, foldhash::fast::RandomState>,
    max_flows: usize,
    last_sweep: Nanos,
    stats: FlowStats,
}

impl<S: Default> Default for FlowTable<S> {
    fn default() -> Self {
        Self::new(MAX_FLOWS)
    }
}

impl<S: Default> FlowTable<S> {
    pub fn new(max_flows: usize) -> Self {
        Self {
            flows: HashMap::default(),
            max_flows: max_flows.max(1),
            last_sweep: 0,
            stats: FlowStats::default(),
        }
    }

    pub fn stats(&self) -> FlowStats {
        self.stats
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Carries on the totals of an earlier run (snapshot restore).
    pub fn restore_stats(&mut self, stats: FlowStats) {
        self.stats = stats;
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Takes one segment; calls `deliver` with the connection's state for every piece that
    /// is now in order (possibly none, possibly several when a hole fills).
    pub fn push(
        &mut self,
        seg: &Segment<'_>,
        deliver: &mut impl FnMut(&mut S, &FlowKey, Piece<'_>),
    ) {
        self.sweep(seg.ts, deliver);
        if seg.flags.rst {
            if self.flows.remove(&seg.flow).is_some() {
                self.stats.flows_closed += 1;
            }
            return;
        }
        if seg.is_bare_ack() {
            return;
        }
        let data_seq = if seg.flags.syn {
            seg.seq.wrapping_add(1)
        } else {
            seg.seq
        };
        let opens = seg.flags.syn || seg.wire_len > 0;
        if opens && self.flows.len() >= self.max_flows && !self.flows.contains_key(&seg.flow) {
            evict_one(&mut self.flows);
            self.stats.flows_evicted += 1;
        }
        let flow = match self.flows.entry(seg.flow) {
            Entry::Occupied(o) => {
                let flow = o.into_mut();
                if seg.flags.syn && flow.isn != Some(seg.seq) {
                    // Same ports, new initial sequence number: a new connection.
                    *flow = Flow::new(data_seq, Some(seg.seq), seg.ts);
                    self.stats.flows_closed += 1;
                    self.stats.flows_opened += 1;
                }
                flow
            }
            Entry::Vacant(v) => {
                if !opens {
                    // A bare ACK or FIN of a connection we do not track: nothing to learn.
                    return;
                }
                self.stats.flows_opened += 1;
                let flow = v.insert(Flow::new(
                    data_seq,
                    seg.flags.syn.then_some(seg.seq),
                    seg.ts,
                ));
                if !seg.flags.syn {
                    // Joined mid-stream: the consumer must find a message start.
                    deliver(&mut flow.app, &seg.flow, Piece::Gap(None));
                }
                flow
            }
        };
        let stats = &mut self.stats;
        flow.last_seen = seg.ts;
        if seg.wire_len > 0 {
            flow.accept(
                data_seq,
                seg.payload,
                seg.wire_len,
                seg.ts,
                stats,
                &seg.flow,
                deliver,
            );
        } else if seg.flags.syn && flow.isn == Some(seg.seq) && flow.next_seq != data_seq {
            stats.retransmitted_segments += 1;
        }
        if seg.flags.fin {
            flow.fin_seq = Some(data_seq.wrapping_add(seg.wire_len));
        }
        if !flow.pending.is_empty() && seg.ts.saturating_sub(flow.gap_since) > GAP_TIMEOUT {
            flow.skip_hole(stats, &seg.flow, deliver);
        }
        if flow.fin_seq == Some(flow.next_seq) {
            self.flows.remove(&seg.flow);
            self.stats.flows_closed += 1;
        }
    }

    /// Periodic upkeep in capture time: skips holes older than [`GAP_TIMEOUT`] and
    /// forgets connections idle for [`FLOW_IDLE_TIMEOUT`].
    pub fn sweep(&mut self, now: Nanos, deliver: &mut impl FnMut(&mut S, &FlowKey, Piece<'_>)) {
        if now.saturating_sub(self.last_sweep) < SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = now;
        let stats = &mut self.stats;
        self.flows.retain(|key, flow| {
            if !flow.pending.is_empty() && now.saturating_sub(flow.gap_since) > GAP_TIMEOUT {
                flow.skip_hole(stats, key, deliver);
            }
            let keep = now.saturating_sub(flow.last_seen) <= FLOW_IDLE_TIMEOUT;
            if !keep {
                stats.flows_expired += 1;
            }
            keep
        });
    }
}

/// Evicts the least recently seen of a few connections: an O(1) approximation of LRU
/// that keeps a flood of new connections from costing a scan each.
fn evict_one<S>(flows: &mut HashMap<FlowKey, Flow<S>, foldhash::fast::RandomState>) {
    let victim = flows
        .iter()
        .take(EVICTION_SAMPLE)
        .min_by_key(|(_, f)| f.last_seen)
        .map(|(k, _)| *k);
    if let Some(key) = victim {
        flows.remove(&key);
    }
}

/// Signed distance from `from` to `to` in sequence space (RFC 9293 §3.4 arithmetic).
fn seq_distance(from: u32, to: u32) -> i64 {
    i64::from(to.wrapping_sub(from) as i32)
}

impl<S: Default> Flow<S> {
    fn new(next_seq: u32, isn: Option<u32>, now: Nanos) -> Self {
        Self {
            next_seq,
            isn,
            fin_seq: None,
            pending: Vec::new(),
            pending_bytes: 0,
            gap_since: now,
            last_seen: now,
            app: S::default(),
        }
    }
}

impl<S> Flow<S> {
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        seq: u32,
        payload: &[u8],
        wire_len: u32,
        now: Nanos,
        stats: &mut FlowStats,
        key: &FlowKey,
        deliver: &mut impl FnMut(&mut S, &FlowKey, Piece<'_>),
    ) {
        let ahead = seq_distance(self.next_seq, seq);
        if ahead <= 0 {
            self.deliver_from(seq, payload, wire_len, stats, key, deliver);
            self.drain(stats, key, deliver);
            return;
        }
        // Ahead of a hole: wait for the hole to fill.
        stats.out_of_order_segments += 1;
        let pos = self
            .pending
            .partition_point(|p| seq_distance(self.next_seq, p.seq) < ahead);
        if self
            .pending
            .get(pos)
            .is_some_and(|p| p.seq == seq && p.wire_len >= wire_len)
        {
            stats.retransmitted_segments += 1;
            return;
        }
        if self.pending.is_empty() {
            self.gap_since = now;
        }
        self.pending.insert(
            pos,
            Pending {
                seq,
                wire_len,
                data: payload.to_vec(),
            },
        );
        self.pending_bytes += payload.len();
        if self.pending_bytes > MAX_PENDING_BYTES || self.pending.len() > MAX_PENDING_SEGMENTS {
            self.skip_hole(stats, key, deliver);
        }
    }

    /// Delivers a segment that starts at or before `next_seq`, trimming what was
    /// delivered already.
    fn deliver_from(
        &mut self,
        seq: u32,
        payload: &[u8],
        wire_len: u32,
        stats: &mut FlowStats,
        key: &FlowKey,
        deliver: &mut impl FnMut(&mut S, &FlowKey, Piece<'_>),
    ) {
        let old = seq_distance(seq, self.next_seq) as u64;
        if old >= u64::from(wire_len) {
            stats.retransmitted_segments += 1;
            return;
        }
        let old = old as usize;
        let fresh = payload.get(old..).unwrap_or(&[]);
        let fresh_wire = wire_len - old as u32;
        if !fresh.is_empty() {
            deliver(&mut self.app, key, Piece::Data(fresh));
        }
        if fresh_wire as usize > fresh.len() {
            // The capture kept fewer bytes than the segment carried (snaplen).
            deliver(
                &mut self.app,
                key,
                Piece::Gap(Some(fresh_wire - fresh.len() as u32)),
            );
        }
        self.next_seq = self.next_seq.wrapping_add(fresh_wire);
    }

    /// Delivers waiting segments that the stream has caught up with.
    fn drain(
        &mut self,
        stats: &mut FlowStats,
        key: &FlowKey,
        deliver: &mut impl FnMut(&mut S, &FlowKey, Piece<'_>),
    ) {
        while let Some(first) = self.pending.first() {
            if seq_distance(self.next_seq, first.seq) > 0 {
                break;
            }
            let p = self.pending.remove(0);
            self.pending_bytes -= p.data.len();
            self.deliver_from(p.seq, &p.data, p.wire_len, stats, key, deliver);
        }
    }

    /// Gives up on the hole before the first waiting segment.
    fn skip_hole(
        &mut self,
        stats: &mut FlowStats,
        key: &FlowKey,
        deliver: &mut impl FnMut(&mut S, &FlowKey, Piece<'_>),
    ) {
        let Some(first) = self.pending.first() else {
            return;
        };
        let hole = seq_distance(self.next_seq, first.seq);
        if hole > 0 {
            stats.gaps += 1;
            deliver(&mut self.app, key, Piece::Gap(Some(hole as u32)));
            self.next_seq = first.seq;
        }
        self.drain(stats, key, deliver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::TcpFlags;

    fn key() -> FlowKey {
        FlowKey {
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
        }
    }

    fn seg(ts: Nanos, seq: u32, flags: TcpFlags, payload: &[u8]) -> Segment<'_> {
        Segment {
            ts,
            flow: key(),
            seq,
            flags,
            payload,
            wire_len: payload.len() as u32,
        }
    }

    const SYN: TcpFlags = TcpFlags {
        syn: true,
        fin: false,
        rst: false,
    };
    const NONE: TcpFlags = TcpFlags {
        syn: false,
        fin: false,
        rst: false,
    };
    const FIN: TcpFlags = TcpFlags {
        syn: false,
        fin: true,
        rst: false,
    };

    /// Collects what the consumer sees, as text with gaps marked.
    #[derive(Default)]
    struct Seen(String);

    fn run(segments: &[Segment<'_>]) -> (String, FlowStats, usize) {
        let mut table: FlowTable<Seen> = FlowTable::default();
        let mut out = String::new();
        for s in segments {
            table.push(
                s,
                &mut |app: &mut Seen, _k: &FlowKey, piece: Piece<'_>| match piece {
                    Piece::Data(d) => app.0.push_str(std::str::from_utf8(d).unwrap()),
                    Piece::Gap(n) => app.0.push_str(&format!("<gap {n:?}>")),
                },
            );
            if let Some(f) = table.flows.get(&key()) {
                out = f.app.0.clone();
            }
        }
        (out, table.stats(), table.len())
    }

    #[test]
    fn in_order_with_handshake() {
        let (out, stats, _) = run(&[
            seg(0, 99, SYN, b""),
            seg(1, 100, NONE, b"abc"),
            seg(2, 103, NONE, b"def"),
        ]);
        assert_eq!(out, "abcdef");
        assert_eq!(stats.flows_opened, 1);
    }

    #[test]
    fn retransmission_is_delivered_once() {
        let (out, stats, _) = run(&[
            seg(0, 99, SYN, b""),
            seg(1, 100, NONE, b"abc"),
            seg(2, 100, NONE, b"abc"),
            seg(3, 101, NONE, b"bcdef"),
        ]);
        assert_eq!(out, "abcdef");
        assert_eq!(stats.retransmitted_segments, 1);
    }

    #[test]
    fn out_of_order_waits_for_the_hole() {
        let (out, stats, _) = run(&[
            seg(0, 99, SYN, b""),
            seg(1, 103, NONE, b"def"),
            seg(2, 106, NONE, b"ghi"),
            seg(3, 100, NONE, b"abc"),
        ]);
        assert_eq!(out, "abcdefghi");
        assert_eq!(stats.out_of_order_segments, 2);
        assert_eq!(stats.gaps, 0);
    }

    #[test]
    fn a_hole_that_never_fills_is_skipped_after_the_timeout() {
        let late = GAP_TIMEOUT + 10;
        let (out, stats, _) = run(&[
            seg(0, 99, SYN, b""),
            seg(1, 100, NONE, b"abc"),
            seg(2, 106, NONE, b"ghi"),
            seg(late, 109, NONE, b"jkl"),
        ]);
        assert_eq!(out, "abc<gap Some(3)>ghijkl");
        assert_eq!(stats.gaps, 1);
    }

    #[test]
    fn mid_stream_start_is_announced() {
        let (out, _, _) = run(&[seg(0, 5000, NONE, b"xyz")]);
        assert_eq!(out, "<gap None>xyz");
    }

    #[test]
    fn snaplen_cut_is_a_known_gap() {
        let mut s = seg(1, 100, NONE, b"ab");
        s.wire_len = 10;
        let (out, _, _) = run(&[seg(0, 99, SYN, b""), s, seg(2, 110, NONE, b"z")]);
        assert_eq!(out, "ab<gap Some(8)>z");
    }

    #[test]
    fn fin_closes_and_rst_forgets() {
        let (_, stats, live) = run(&[seg(0, 99, SYN, b""), seg(1, 100, FIN, b"abc")]);
        assert_eq!((stats.flows_closed, live), (1, 0));
        let rst = TcpFlags { rst: true, ..NONE };
        let (_, stats, live) = run(&[seg(0, 99, SYN, b""), seg(1, 100, rst, b"")]);
        assert_eq!((stats.flows_closed, live), (1, 0));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let (out, _, _) = run(&[
            seg(0, u32::MAX - 1, SYN, b""),
            seg(1, u32::MAX, NONE, b"ab"),
            seg(2, 1, NONE, b"cd"),
        ]);
        assert_eq!(out, "abcd");
    }

    #[test]
    fn pending_buffer_is_bounded() {
        let big = vec![b'x'; 1000];
        let mut segs = vec![seg(0, 99, SYN, b"")];
        // A hole at 100..101, then far more waiting data than the cap.
        for i in 0..100u32 {
            segs.push(seg(1, 101 + i * 1000, NONE, &big));
        }
        let mut table: FlowTable<Seen> = FlowTable::default();
        for s in &segs {
            table.push(s, &mut |_: &mut Seen, _: &FlowKey, _: Piece<'_>| {});
            let f = table.flows.get(&key()).unwrap();
            assert!(f.pending_bytes <= MAX_PENDING_BYTES);
        }
        assert_eq!(table.stats().gaps, 1);
    }

    #[test]
    fn flow_table_is_bounded() {
        let mut table: FlowTable<Seen> = FlowTable::new(4);
        for port in 0..100u16 {
            let mut s = seg(u64::from(port), 1, NONE, b"x");
            s.flow.client.set_port(port);
            table.push(&s, &mut |_: &mut Seen, _: &FlowKey, _: Piece<'_>| {});
            assert!(table.len() <= 4);
        }
        assert_eq!(table.stats().flows_evicted, 96);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A stream cut into segments, some sent twice, sent in a shuffled order where
        /// no segment moves far (the out-of-order buffer holds them all).
        fn mangled(len: usize) -> impl Strategy<Value = (Vec<u8>, Vec<(usize, usize)>)> {
            (
                proptest::collection::vec(1usize..40, 1..60),
                proptest::collection::vec(any::<(u8, bool)>(), 60),
            )
                .prop_map(move |(sizes, noise)| {
                    let data: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                    let mut cuts = Vec::new();
                    let mut at = 0;
                    for s in sizes {
                        if at >= len {
                            break;
                        }
                        let end = (at + s).min(len);
                        cuts.push((at, end));
                        at = end;
                    }
                    if at < len {
                        cuts.push((at, len));
                    }
                    let mut order: Vec<(usize, usize)> = Vec::new();
                    for (i, c) in cuts.iter().enumerate() {
                        let (shift, dup) = noise[i % noise.len()];
                        order.push(*c);
                        if dup {
                            order.push(*c);
                        }
                        // Swap with a recent neighbour to reorder.
                        let back = usize::from(shift % 4).min(order.len() - 1);
                        let last = order.len() - 1;
                        order.swap(last, last - back);
                    }
                    (data, order)
                })
        }

        proptest! {
            #[test]
            fn any_segmentation_duplication_and_reordering_delivers_the_stream_once((data, order) in mangled(800)) {
                let mut table: FlowTable<Vec<u8>> = FlowTable::default();
                let syn = seg(0, 999, SYN, b"");
                let mut sink = |app: &mut Vec<u8>, _: &FlowKey, piece: Piece<'_>| match piece {
                    Piece::Data(d) => app.extend_from_slice(d),
                    Piece::Gap(_) => panic!("no gap expected"),
                };
                table.push(&syn, &mut sink);
                for (a, b) in order {
                    table.push(&seg(1, 1000 + a as u32, NONE, &data[a..b]), &mut sink);
                }
                let got = table.flows.get(&key()).map(|f| f.app.clone()).unwrap_or_default();
                prop_assert_eq!(got, data);
            }
        }
    }
}
