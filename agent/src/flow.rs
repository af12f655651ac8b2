//! TCP reassembly of the client → server direction, as the server's Linux stack does it.
//!
//! Segments of both directions arrive in capture order. The client's bytes are accepted
//! by the rules the server applies (the server's segments tell the reassembler its
//! receive window, what it has sent and acknowledged, and whether it answered a SYN), so
//! forged segments the server discards never reach the HTTP stream. The rules, with the
//! RFC sections and kernel functions they follow, are in ARCHITECTURE.md ("What the
//! server accepts"). The table hands each connection's accepted bytes on in sequence
//! order as [`Piece`]s, together with that connection's application state `S`.
//!
//! Holes are given up only when the server acknowledges past them (bytes the capture
//! missed: counted as loss). Connections with no server facts (a one-sided capture) or
//! whose server facts may have been lost (ring buffer loss) fall back to a timer,
//! counted; memory bounds drop the farthest out-of-order segments, as Linux prunes its
//! out-of-order queue.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use crate::budget::BufferBudget;
use crate::evict::EvictionQueue;
use crate::packet::{Checksum, Direction, FlowKey, MAX_WSCALE, Segment};
use crate::{NANOS_PER_SEC, Nanos};

/// In-order bytes of one connection, or the news that some are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Data(&'a [u8]),
    /// Bytes that will never arrive: `Some(n)` when the size of the hole is known,
    /// `None` when the capture joined the connection mid-stream.
    Gap(Option<u32>),
    /// The client has shown it is the real end of this connection: it acknowledged the
    /// server's initial sequence number (or, joined mid-stream, bytes the server sent),
    /// which a sender of spoofed packets cannot know. Sent once, before the bytes of the
    /// segment that showed it.
    Confirmed,
}

/// Connections tracked at once; the least recently seen of a sample is evicted beyond.
pub const MAX_FLOWS: usize = 65_536;
/// Out-of-order bytes held per connection (each segment also counts
/// [`SEGMENT_OVERHEAD`]). Beyond it the farthest segments are dropped, as Linux's
/// `tcp_prune_ofo_queue` does when a socket's receive buffer is full.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;
/// What one waiting segment costs besides its bytes (so 1-byte segments are bounded).
const SEGMENT_OVERHEAD: usize = 64;
/// Fallback when the server's acknowledgments cannot tell (no server facts for the
/// connection, or capture loss since the hole opened): a hole older than this is given
/// up.
pub const GAP_TIMEOUT: Nanos = 2 * NANOS_PER_SEC;
/// Default for `[capture] flow_idle_timeout`.
pub const DEFAULT_FLOW_IDLE_TIMEOUT: Nanos = 2 * 3600 * NANOS_PER_SEC;
/// A closed connection is remembered this long, so late retransmissions are not taken
/// for a connection picked up mid-stream (Linux's TIME_WAIT length, `TCP_TIMEWAIT_LEN`).
pub const CLOSED_LINGER: Nanos = 60 * NANOS_PER_SEC;
/// How often (in capture time) holes are checked against [`GAP_TIMEOUT`].
const HOLE_CHECK_INTERVAL: Nanos = NANOS_PER_SEC;
/// How often (in capture time) the table is walked for idle and closed connections:
/// their timeouts are a minute and more, and a walk costs the whole table (a replay of
/// hours of traffic walks it thousands of times).
const IDLE_SWEEP_INTERVAL: Nanos = 10 * NANOS_PER_SEC;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FlowStats {
    pub flows_opened: u64,
    pub flows_closed: u64,
    pub flows_expired: u64,
    pub flows_evicted: u64,
    /// Segments whose bytes had all been accepted already.
    pub retransmitted_segments: u64,
    /// Segments that arrived ahead of a hole and waited.
    pub out_of_order_segments: u64,
    /// Holes given up, for any reason below.
    pub gaps: u64,
    /// Bytes the server acknowledged that the capture never had (ring loss, snaplen
    /// aside: packets the capture did not see).
    pub capture_loss_bytes: u64,
    /// Holes given up on the fallback timer (no server facts, or capture loss).
    pub gaps_timed_out: u64,
    /// Holes given up because a connection without server facts filled its buffer.
    pub gaps_forced: u64,
    /// Out-of-order segments dropped by the memory bounds.
    pub pruned_segments: u64,
    /// Server → client segments read for their header facts.
    pub server_segments: u64,
    /// Client segments the server discards: bad checksum.
    pub bad_checksum_segments: u64,
    /// Client segments the server discards: outside its receive window.
    pub out_of_window_segments: u64,
    /// Client segments the server discards: no ACK flag, an ACK of data it never sent,
    /// data on a SYN.
    pub discarded_segments: u64,
    /// Client segments the server discards: a timestamp older than the connection's
    /// (PAWS, RFC 7323 §5).
    pub paws_rejected_segments: u64,
    /// RSTs the server ignores (RFC 5961 §3: not exactly at the next expected byte).
    pub ignored_resets: u64,
    /// SYNs on an open connection the server ignores (RFC 5961 §4).
    pub ignored_syns: u64,
    /// Urgent bytes taken out of the stream (Linux's default, no SO_OOBINLINE).
    pub urgent_bytes_removed: u64,
    /// Segments of a closed connection (late retransmissions, forged data).
    pub after_close_segments: u64,
    /// Connections that ended with no server facts seen (one-sided capture).
    pub one_sided_flows: u64,
}

/// Limits of a [`FlowTable`].
#[derive(Debug, Clone, Copy)]
pub struct FlowLimits {
    pub max_flows: usize,
    /// A connection silent this long is forgotten.
    pub idle_timeout: Nanos,
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self {
            max_flows: MAX_FLOWS,
            idle_timeout: DEFAULT_FLOW_IDLE_TIMEOUT,
        }
    }
}

struct Pending {
    seq: u32,
    wire_len: u32,
    data: Vec<u8>,
}

impl Pending {
    fn end(&self) -> u32 {
        self.seq.wrapping_add(self.wire_len)
    }

    fn cost(&self) -> usize {
        self.data.len() + SEGMENT_OVERHEAD
    }
}

/// What the server's own segments say.
#[derive(Debug, Clone, Copy)]
struct ServerView {
    /// The server's next sequence number: the client cannot acknowledge beyond it.
    snd_nxt: u32,
    /// The highest byte the server acknowledged.
    acked: u32,
    /// Right edge of the receive window the server advertised (it never shrinks it:
    /// `tcp_select_window`).
    right_edge: u32,
    /// Shift of the server's window field outside SYNs (RFC 7323 §2.3).
    wscale: u8,
}

/// A client SYN with a new initial sequence number on an open connection.
#[derive(Debug, Clone, Copy)]
struct IgnoredSyn {
    isn: u32,
    offers_wscale: bool,
    tsval: Option<u32>,
}

struct Flow<S> {
    /// Closed (FIN reached, RST accepted, or the server reset it): kept for a while so
    /// late segments are recognised, with no buffers.
    closed: bool,
    /// Sequence number of the next byte to accept (the server's `rcv_nxt`).
    next_seq: u32,
    /// The client's initial sequence number, when its SYN was seen.
    isn: Option<u32>,
    /// Whether the client's SYN offered window scaling (`None`: SYN not seen).
    client_wscale: Option<bool>,
    /// Whether the client's SYN carried timestamps, and the newest TSval the server
    /// keeps (`ts_recent`): PAWS applies when both SYNs carried them.
    client_ts: Option<bool>,
    ts_recent: Option<u32>,
    paws: bool,
    fin_seq: Option<u32>,
    server: Option<ServerView>,
    /// A SYN with another initial sequence number on this open connection: the server
    /// ignores it unless it is a new connection, which its SYN-ACK would show.
    new_isn: Option<IgnoredSyn>,
    /// The pending urgent byte's sequence number (Linux keeps one: `urg_seq`).
    urgent: Option<u32>,
    /// The server's initial sequence number (from its SYN-ACK), or the first server
    /// sequence number seen when joined mid-stream: a client ACK at or past it
    /// confirms the client.
    server_origin: Option<u32>,
    confirmed: bool,
    /// Sorted by start, per Linux's out-of-order rules (see `queue`).
    pending: Vec<Pending>,
    pending_bytes: usize,
    /// When the oldest hole opened, and the capture-loss count at that time.
    gap_since: Nanos,
    gap_loss: u64,
    last_seen: Nanos,
    /// On the table's list of connections with a hole (see `FlowTable::holes`).
    hole_watched: bool,
    app: S,
}

/// Bounded table of connections. `S` is the per-connection consumer state.
pub struct FlowTable<S> {
    flows: HashMap<FlowKey, Flow<S>, foldhash::fast::RandomState>,
    /// Which connection to evict when the table is full (closed ones first).
    eviction: EvictionQueue<FlowKey>,
    limits: FlowLimits,
    /// Connections that had bytes waiting behind a hole when last looked at: only
    /// these need the hole timer.
    holes: Vec<FlowKey>,
    last_hole_check: Nanos,
    last_sweep: Nanos,
    /// Out-of-order bytes held across connections count here, with the HTTP stage's
    /// unfinished heads.
    budget: BufferBudget,
    /// Events the capture lost so far: a hole that opened before a loss may never be
    /// acknowledged where the agent can see it.
    capture_loss: u64,
    stats: FlowStats,
}

impl<S: Default> Default for FlowTable<S> {
    fn default() -> Self {
        Self::new(FlowLimits::default(), BufferBudget::default())
    }
}

/// What the table lends a connection while it handles a segment.
struct Ctx<'a, D> {
    key: &'a FlowKey,
    /// Where a connection that opens a hole puts its key.
    holes: &'a mut Vec<FlowKey>,
    stats: &'a mut FlowStats,
    budget: &'a BufferBudget,
    deliver: &'a mut D,
}

impl<S: Default> FlowTable<S> {
    /// A table whose out-of-order bytes count against `budget` (shared with the
    /// consumers' own buffers).
    pub fn new(limits: FlowLimits, budget: BufferBudget) -> Self {
        Self {
            flows: HashMap::default(),
            eviction: EvictionQueue::default(),
            limits: FlowLimits {
                max_flows: limits.max_flows.max(1),
                ..limits
            },
            holes: Vec::new(),
            last_hole_check: 0,
            last_sweep: 0,
            budget,
            capture_loss: 0,
            stats: FlowStats::default(),
        }
    }

    pub fn stats(&self) -> FlowStats {
        self.stats
    }

    /// Connections tracked (closed ones still remembered included).
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

    /// An open connection's consumer state, and whether bytes wait behind a hole.
    pub fn peek(&self, key: &FlowKey) -> Option<(&S, bool)> {
        self.flows
            .get(key)
            .filter(|f| !f.closed)
            .map(|f| (&f.app, !f.pending.is_empty()))
    }

    /// The capture's running total of lost events (live: the ring buffer was full).
    pub fn set_capture_loss(&mut self, total: u64) {
        self.capture_loss = total;
    }

    /// Takes one segment of either direction; calls `deliver` with the connection's
    /// state for every piece that is now in order (possibly none, possibly several when
    /// a hole fills or the server acknowledges past one).
    pub fn push<D>(&mut self, seg: &Segment<'_>, deliver: &mut D)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        self.sweep(seg.ts, deliver);
        match seg.dir {
            Direction::ToClient => self.server_segment(seg, deliver),
            Direction::ToServer => self.client_segment(seg, deliver),
        }
    }

    fn client_segment<D>(&mut self, seg: &Segment<'_>, deliver: &mut D)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        if seg.checksum == Checksum::Bad {
            // Linux drops it before TCP looks at it (`tcp_checksum_complete`).
            self.stats.bad_checksum_segments += 1;
            return;
        }
        if seg.is_bare_ack() {
            return;
        }
        let opens = seg.flags.syn || (seg.flags.ack && seg.wire_len > 0 && !seg.flags.rst);
        let full = self.flows.len() >= self.limits.max_flows;
        if opens
            && full
            && !self.flows.contains_key(&seg.flow)
            && let Some(gone) = evict_one(&mut self.flows, &mut self.eviction, seg.ts)
        {
            self.budget.give_back(gone.pending_bytes);
            self.stats.flows_evicted += 1;
            if gone.server.is_none() && !gone.closed {
                self.stats.one_sided_flows += 1;
            }
        }
        let loss = self.capture_loss;
        let mut ctx = Ctx {
            key: &seg.flow,
            holes: &mut self.holes,
            stats: &mut self.stats,
            budget: &self.budget,
            deliver,
        };
        match self.flows.entry(seg.flow) {
            Entry::Vacant(v) => {
                if !opens {
                    // A RST, FIN or ACK-less segment of a connection we do not track:
                    // no socket would take data from it.
                    return;
                }
                ctx.stats.flows_opened += 1;
                self.eviction.push(seg.flow, seg.ts);
                let flow = v.insert(Flow::new(seg));
                if !seg.flags.syn {
                    // Joined mid-stream: the consumer must find a message start.
                    (ctx.deliver)(&mut flow.app, ctx.key, Piece::Gap(None));
                    flow.client_data(seg, loss, &mut ctx);
                } else if seg.wire_len > 0 {
                    ctx.stats.discarded_segments += 1; // SYN data: no TCP Fast Open.
                }
            }
            Entry::Occupied(mut o) => {
                let flow = o.get_mut();
                if flow.closed {
                    if seg.flags.syn && flow.isn != Some(seg.seq) {
                        ctx.stats.flows_opened += 1;
                        *flow = Flow::new(seg);
                    } else {
                        ctx.stats.after_close_segments += 1;
                    }
                    return;
                }
                flow.last_seen = seg.ts;
                if seg.flags.syn {
                    flow.client_syn(seg, &mut ctx);
                } else {
                    flow.client_data(seg, loss, &mut ctx);
                }
            }
        }
    }

    fn server_segment<D>(&mut self, seg: &Segment<'_>, deliver: &mut D)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        // Facts about connections the agent does not track teach it nothing.
        let Some(flow) = self.flows.get_mut(&seg.flow) else {
            return;
        };
        self.stats.server_segments += 1;
        if flow.closed {
            return;
        }
        flow.last_seen = seg.ts;
        let mut ctx = Ctx {
            key: &seg.flow,
            holes: &mut self.holes,
            stats: &mut self.stats,
            budget: &self.budget,
            deliver,
        };
        flow.server_facts(seg, &mut ctx);
    }

    /// Periodic upkeep in capture time: applies the fallback hole timer, forgets idle
    /// connections and closed ones whose linger time is over.
    pub fn sweep<D>(&mut self, now: Nanos, deliver: &mut D)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        if !self.holes.is_empty() && now.saturating_sub(self.last_hole_check) >= HOLE_CHECK_INTERVAL
        {
            self.last_hole_check = now;
            self.check_holes(now, deliver);
        }
        if now.saturating_sub(self.last_sweep) < IDLE_SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = now;
        let idle_timeout = self.limits.idle_timeout;
        let stats = &mut self.stats;
        let budget = &self.budget;
        self.flows.retain(|_, flow| {
            let idle = now.saturating_sub(flow.last_seen);
            if flow.closed {
                return idle <= CLOSED_LINGER;
            }
            let keep = idle <= idle_timeout;
            if !keep {
                stats.flows_expired += 1;
                budget.give_back(flow.pending_bytes);
                if flow.server.is_none() {
                    stats.one_sided_flows += 1;
                }
            }
            keep
        });
        let flows = &self.flows;
        self.eviction
            .compact(flows.len(), |k| flows.contains_key(k));
    }

    /// The fallback hole timer, on the connections that have a hole (not the table).
    fn check_holes<D>(&mut self, now: Nanos, deliver: &mut D)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        let loss = self.capture_loss;
        let mut watched = std::mem::take(&mut self.holes);
        let mut opened = Vec::new();
        watched.retain(|key| {
            // Gone (evicted, expired): the key may come back as a new connection,
            // which puts itself on the list when it opens a hole.
            let Some(flow) = self.flows.get_mut(key) else {
                return false;
            };
            let mut ctx = Ctx {
                key,
                holes: &mut opened,
                stats: &mut self.stats,
                budget: &self.budget,
                deliver,
            };
            flow.hole_timer(now, loss, &mut ctx);
            flow.hole_watched = !flow.closed && !flow.pending.is_empty();
            flow.hole_watched
        });
        watched.append(&mut opened);
        self.holes = watched;
    }
}

/// Evicts a connection not seen for a while, closed ones first (second chance,
/// `evict.rs`): O(1) amortised, so a flood of new connections costs no scans and active
/// connections stay.
fn evict_one<S>(
    flows: &mut HashMap<FlowKey, Flow<S>, foldhash::fast::RandomState>,
    eviction: &mut EvictionQueue<FlowKey>,
    now: Nanos,
) -> Option<Flow<S>> {
    let victim = eviction.victim(now, |k| {
        // A closed connection counts as never seen: it goes first.
        flows.get(k).map(|f| if f.closed { 0 } else { f.last_seen })
    })?;
    let gone = flows.remove(&victim);
    eviction.compact(flows.len(), |k| flows.contains_key(k));
    gone
}

/// Signed distance from `from` to `to` in sequence space (RFC 9293 §3.4 arithmetic).
fn seq_distance(from: u32, to: u32) -> i64 {
    i64::from(to.wrapping_sub(from) as i32)
}

/// `a` comes before `b` in sequence space (the kernel's `before()`).
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a` comes after `b` in sequence space (the kernel's `after()`).
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// The later of two sequence numbers.
fn later(a: u32, b: u32) -> u32 {
    if after(b, a) { b } else { a }
}

impl<S: Default> Flow<S> {
    /// A connection opened by a SYN, or joined mid-stream at a data segment.
    fn new(seg: &Segment<'_>) -> Self {
        if seg.flags.syn {
            let syn = IgnoredSyn {
                isn: seg.seq,
                offers_wscale: seg.wscale.is_some(),
                tsval: seg.tsval,
            };
            return Self::opened_by(syn, seg.ts);
        }
        Self::starting_at(seg.seq, None, None, None, seg.tsval, seg.ts)
    }

    /// A connection opened by this client SYN.
    fn opened_by(syn: IgnoredSyn, now: Nanos) -> Self {
        Self::starting_at(
            syn.isn.wrapping_add(1),
            Some(syn.isn),
            Some(syn.offers_wscale),
            Some(syn.tsval.is_some()),
            syn.tsval,
            now,
        )
    }

    fn starting_at(
        next_seq: u32,
        isn: Option<u32>,
        client_wscale: Option<bool>,
        client_ts: Option<bool>,
        ts_recent: Option<u32>,
        now: Nanos,
    ) -> Self {
        Self {
            closed: false,
            next_seq,
            isn,
            client_wscale,
            client_ts,
            ts_recent,
            paws: false,
            fin_seq: None,
            server: None,
            new_isn: None,
            urgent: None,
            server_origin: None,
            confirmed: false,
            pending: Vec::new(),
            pending_bytes: 0,
            gap_since: now,
            gap_loss: 0,
            last_seen: now,
            hole_watched: false,
            app: S::default(),
        }
    }

    /// Ends the connection: buffers go, the entry lingers to recognise late segments.
    fn close<D>(&mut self, ctx: &mut Ctx<'_, D>) {
        ctx.stats.flows_closed += 1;
        if self.server.is_none() {
            ctx.stats.one_sided_flows += 1;
        }
        ctx.budget.give_back(self.pending_bytes);
        self.pending = Vec::new();
        self.pending_bytes = 0;
        self.app = S::default();
        self.closed = true;
    }

    /// A SYN on an open connection.
    fn client_syn<D>(&mut self, seg: &Segment<'_>, ctx: &mut Ctx<'_, D>) {
        if self.isn == Some(seg.seq) {
            ctx.stats.retransmitted_segments += 1;
            return;
        }
        if self.server.is_none() {
            // One-sided: the server's answer cannot be seen; a new initial sequence
            // number on these ports is taken as a new connection.
            ctx.stats.flows_closed += 1;
            ctx.stats.one_sided_flows += 1;
            ctx.stats.flows_opened += 1;
            ctx.budget.give_back(self.pending_bytes);
            *self = Flow::new(seg);
            return;
        }
        // RFC 5961 §4.2 (`tcp_validate_incoming`): a challenge ACK, the segment is
        // dropped. It is a new connection only if the server answers with a SYN-ACK.
        ctx.stats.ignored_syns += 1;
        self.new_isn = Some(IgnoredSyn {
            isn: seg.seq,
            offers_wscale: seg.wscale.is_some(),
            tsval: seg.tsval,
        });
    }

    fn gap_timer_applies(&self, loss: u64) -> bool {
        self.server.is_none() || self.gap_loss != loss
    }

    fn hole_timer<D>(&mut self, now: Nanos, loss: u64, ctx: &mut Ctx<'_, D>)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        if !self.pending.is_empty()
            && self.gap_timer_applies(loss)
            && now.saturating_sub(self.gap_since) > GAP_TIMEOUT
            && self.skip_hole(ctx)
        {
            ctx.stats.gaps_timed_out += 1;
        }
    }

    /// A client segment without SYN on an open connection: the checks of Linux's
    /// `tcp_validate_incoming`, `tcp_ack` and `tcp_data_queue`, in that order.
    fn client_data<D>(&mut self, seg: &Segment<'_>, loss: u64, ctx: &mut Ctx<'_, D>)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        let view = self.server;
        // PAWS first (RFC 7323 §5, `tcp_paws_discard`): a timestamp older than the
        // newest one kept drops the segment; resets are exempt.
        if self.paws
            && !seg.flags.rst
            && let (Some(tsval), Some(recent)) = (seg.tsval, self.ts_recent)
            && (recent.wrapping_sub(tsval) as i32) > 1
        {
            ctx.stats.paws_rejected_segments += 1;
            return;
        }
        // `tcp_sequence`: a segment starting beyond the advertised window is dropped
        // (RSTs included: RFC 5961 §3.2).
        if let Some(v) = view
            && after(seg.seq, v.right_edge)
        {
            ctx.stats.out_of_window_segments += 1;
            return;
        }
        if seg.flags.rst {
            // RFC 5961 §3.2: only a RST exactly at the next expected byte resets;
            // any other in-window RST gets a challenge ACK and is ignored.
            if seg.seq == self.next_seq {
                self.close(ctx);
            } else {
                ctx.stats.ignored_resets += 1;
            }
            return;
        }
        if !seg.flags.ack {
            // An established socket drops segments without ACK (RFC 9293 §3.10.7.4).
            ctx.stats.discarded_segments += 1;
            return;
        }
        if let Some(v) = view
            && after(seg.ack, v.snd_nxt)
        {
            // `tcp_ack`: an ACK of data the server never sent drops the segment.
            ctx.stats.discarded_segments += 1;
            return;
        }
        if !self.confirmed
            && let Some(origin) = self.server_origin
            && !before(seg.ack, origin.wrapping_add(1))
        {
            // Not after the server's next sequence number either (checked above).
            self.confirmed = true;
            (ctx.deliver)(&mut self.app, ctx.key, Piece::Confirmed);
        }
        // `tcp_replace_ts_recent`: a segment at or before the last window update
        // (the server's latest ACK) with a timestamp not older refreshes `ts_recent`.
        if let Some(tsval) = seg.tsval
            && self
                .ts_recent
                .is_none_or(|r| (r.wrapping_sub(tsval) as i32) <= 0)
            && !after(seg.seq, view.map_or(self.next_seq, |v| v.acked))
        {
            self.ts_recent = Some(tsval);
        }
        if seg.flags.urg {
            self.note_urgent(seg.seq, seg.urgent);
        }
        if seg.wire_len > 0 {
            let end = seg.seq.wrapping_add(seg.wire_len);
            if !after(end, self.next_seq) {
                ctx.stats.retransmitted_segments += 1;
            } else {
                let first_new = if before(seg.seq, self.next_seq) {
                    self.next_seq
                } else {
                    seg.seq
                };
                // `tcp_data_queue`: new bytes must start inside the window.
                if view.is_some_and(|v| !before(first_new, v.right_edge)) {
                    ctx.stats.out_of_window_segments += 1;
                    return;
                }
                self.accept(seg, loss, ctx);
            }
        }
        if seg.flags.fin && self.fin_seq.is_none() {
            self.fin_seq = Some(seg.seq.wrapping_add(seg.wire_len));
        }
        self.hole_timer(seg.ts, loss, ctx);
        if self.fin_seq == Some(self.next_seq) {
            self.close(ctx);
        }
    }

    /// Linux's `tcp_check_urg` with `tcp_stdurg` off: the urgent byte is the one before
    /// the pointer; only one is kept, a later pointer replaces it; pointers behind what
    /// was already accepted are ignored.
    fn note_urgent(&mut self, seq: u32, pointer: u16) {
        let offset = u32::from(pointer).saturating_sub(1);
        let at = seq.wrapping_add(if pointer == 0 { 0 } else { offset });
        if before(at, self.next_seq) {
            return;
        }
        if self.urgent.is_some_and(|u| !after(at, u)) {
            return;
        }
        self.urgent = Some(at);
    }

    /// Queues or delivers a segment with new bytes.
    fn accept<D>(&mut self, seg: &Segment<'_>, loss: u64, ctx: &mut Ctx<'_, D>)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        if !after(seg.seq, self.next_seq) {
            self.deliver_from(seg.seq, seg.payload, seg.wire_len, ctx);
            self.drain(ctx);
            return;
        }
        ctx.stats.out_of_order_segments += 1;
        if self.pending.is_empty() {
            self.gap_since = seg.ts;
            self.gap_loss = loss;
            if !self.hole_watched {
                self.hole_watched = true;
                ctx.holes.push(*ctx.key);
            }
        }
        self.queue(seg, ctx);
        if self.pending_bytes > MAX_PENDING_BYTES || ctx.budget.over() {
            if self.server.is_some() {
                self.prune(ctx);
            } else {
                // One-sided: no acknowledgment will ever say the hole is lost.
                if self.skip_hole(ctx) {
                    ctx.stats.gaps_forced += 1;
                }
            }
        }
    }

    /// Inserts an out-of-order segment as `tcp_data_queue_ofo` does: a segment wholly
    /// inside a queued one is dropped (the queued bytes win); one that starts where a
    /// queued one starts and goes further replaces it; queued segments it wholly covers
    /// are removed; partial overlaps keep both, and the one that starts first wins the
    /// overlapping bytes when they are read.
    fn queue<D>(&mut self, seg: &Segment<'_>, ctx: &mut Ctx<'_, D>) {
        let base = self.next_seq;
        let start = seq_distance(base, seg.seq);
        let end = seg.seq.wrapping_add(seg.wire_len);
        let mut at = self
            .pending
            .partition_point(|p| seq_distance(base, p.seq) <= start);
        if let Some(prev) = at.checked_sub(1).map(|i| &self.pending[i])
            && before(seg.seq, prev.end())
        {
            if !after(end, prev.end()) {
                ctx.stats.retransmitted_segments += 1;
                return;
            }
            if prev.seq == seg.seq {
                at -= 1;
                let gone = self.pending.remove(at);
                self.pending_bytes -= gone.cost();
                ctx.budget.give_back(gone.cost());
            }
        }
        let new = Pending {
            seq: seg.seq,
            wire_len: seg.wire_len,
            data: seg.payload.to_vec(),
        };
        self.pending_bytes += new.cost();
        ctx.budget.take(new.cost());
        self.pending.insert(at, new);
        // Remove what the new segment wholly covers.
        while let Some(next) = self.pending.get(at + 1) {
            if !after(end, next.seq) || before(end, next.end()) {
                break;
            }
            let gone = self.pending.remove(at + 1);
            self.pending_bytes -= gone.cost();
            ctx.budget.give_back(gone.cost());
        }
    }

    /// Drops the farthest waiting segments until the bounds hold again.
    fn prune<D>(&mut self, ctx: &mut Ctx<'_, D>) {
        while self.pending_bytes > MAX_PENDING_BYTES || ctx.budget.over() {
            let Some(gone) = self.pending.pop() else {
                break;
            };
            self.pending_bytes -= gone.cost();
            ctx.budget.give_back(gone.cost());
            ctx.stats.pruned_segments += 1;
        }
    }

    /// What a server segment says: its window and sequence space, whether it reset the
    /// connection, and whether it acknowledged bytes the capture never had.
    fn server_facts<D>(&mut self, seg: &Segment<'_>, ctx: &mut Ctx<'_, D>)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        if seg.flags.rst {
            self.close(ctx);
            return;
        }
        if seg.flags.syn {
            if !seg.flags.ack {
                return; // A simultaneous open: not a server's answer.
            }
            if let Some(syn) = self.new_isn
                && seg.ack == syn.isn.wrapping_add(1)
            {
                // The server took the SYN the old connection ignored: a new connection.
                ctx.stats.flows_closed += 1;
                ctx.stats.flows_opened += 1;
                ctx.budget.give_back(self.pending_bytes);
                *self = Flow::opened_by(syn, seg.ts);
            }
            if self.server.is_none() || self.isn.is_some_and(|i| seg.ack == i.wrapping_add(1)) {
                // Scaling holds only when both SYNs carried the option (RFC 7323 §2.2).
                let wscale = match self.client_wscale {
                    Some(true) => seg.wscale.unwrap_or(0),
                    Some(false) => 0,
                    None => MAX_WSCALE,
                };
                // The window of a SYN-ACK is never scaled.
                let right_edge = seg.ack.wrapping_add(u32::from(seg.window));
                self.paws = self.client_ts == Some(true) && seg.tsval.is_some();
                self.server_origin = Some(seg.seq);
                self.server = Some(ServerView {
                    snd_nxt: seg.seq.wrapping_add(seg.seq_len()),
                    acked: seg.ack,
                    right_edge,
                    wscale,
                });
            }
            return;
        }
        if self.server.is_none() && self.client_ts.is_none() {
            // Joined mid-stream: timestamps are in use if the server sends them.
            self.paws = seg.tsval.is_some();
        }
        if self.server_origin.is_none() {
            // Joined mid-stream (or the SYN-ACK was missed): the client must acknowledge
            // bytes sent from here on.
            self.server_origin = Some(seg.seq.wrapping_sub(1));
        }
        let view = self.server.get_or_insert(ServerView {
            snd_nxt: seg.seq,
            acked: seg.ack,
            right_edge: seg.ack,
            // The handshake was not seen: the scale is unknown, so the window is read
            // as wide as it can be (never refuse what the server may accept).
            wscale: if self.client_wscale == Some(false) {
                0
            } else {
                MAX_WSCALE
            },
        });
        view.snd_nxt = later(view.snd_nxt, seg.seq.wrapping_add(seg.seq_len()));
        if !seg.flags.ack {
            return;
        }
        view.acked = later(view.acked, seg.ack);
        let edge = seg
            .ack
            .wrapping_add(u32::from(seg.window) << u32::from(view.wscale));
        view.right_edge = later(view.right_edge, edge);
        let mut target = seg.ack;
        if let Some(fin) = self.fin_seq
            && after(target, fin)
        {
            target = fin;
        }
        if after(target, self.next_seq) {
            self.catch_up(target, ctx);
        }
        if self.fin_seq == Some(self.next_seq) {
            self.close(ctx);
        }
    }

    /// The server acknowledged up to `target`: bytes before it that the capture never
    /// had are lost to the capture, not to the server.
    fn catch_up<D>(&mut self, target: u32, ctx: &mut Ctx<'_, D>)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        while before(self.next_seq, target) {
            let next_start = self.pending.first().map(|p| p.seq);
            match next_start {
                Some(s) if !after(s, self.next_seq) => {
                    let p = self.pending.remove(0);
                    self.pending_bytes -= p.cost();
                    ctx.budget.give_back(p.cost());
                    self.deliver_from(p.seq, &p.data, p.wire_len, ctx);
                }
                _ => {
                    let to = match next_start {
                        Some(s) if before(s, target) => s,
                        _ => target,
                    };
                    let hole = to.wrapping_sub(self.next_seq);
                    ctx.stats.gaps += 1;
                    ctx.stats.capture_loss_bytes += u64::from(hole);
                    (ctx.deliver)(&mut self.app, ctx.key, Piece::Gap(Some(hole)));
                    self.next_seq = to;
                }
            }
        }
        self.drain(ctx);
    }

    /// Delivers a segment that starts at or before `next_seq`, trimming what was
    /// accepted already and taking the urgent byte out.
    fn deliver_from<D>(&mut self, seq: u32, payload: &[u8], wire_len: u32, ctx: &mut Ctx<'_, D>)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        let old = seq_distance(seq, self.next_seq) as u64;
        if old >= u64::from(wire_len) {
            ctx.stats.retransmitted_segments += 1;
            return;
        }
        let old = old as usize;
        let fresh = payload.get(old..).unwrap_or(&[]);
        let fresh_wire = wire_len - old as u32;
        let mut unseen = fresh_wire - fresh.len() as u32;
        let urgent = self
            .urgent
            .map(|u| seq_distance(self.next_seq, u))
            .filter(|&d| (0..i64::from(fresh_wire)).contains(&d));
        match urgent {
            Some(d) => {
                let d = d as usize;
                self.urgent = None;
                ctx.stats.urgent_bytes_removed += 1;
                if d < fresh.len() {
                    for part in [&fresh[..d], &fresh[d + 1..]] {
                        if !part.is_empty() {
                            (ctx.deliver)(&mut self.app, ctx.key, Piece::Data(part));
                        }
                    }
                } else {
                    if !fresh.is_empty() {
                        (ctx.deliver)(&mut self.app, ctx.key, Piece::Data(fresh));
                    }
                    unseen -= 1;
                }
            }
            None if !fresh.is_empty() => {
                (ctx.deliver)(&mut self.app, ctx.key, Piece::Data(fresh));
            }
            None => {}
        }
        if unseen > 0 {
            // The capture kept fewer bytes than the segment carried (snaplen).
            (ctx.deliver)(&mut self.app, ctx.key, Piece::Gap(Some(unseen)));
        }
        self.next_seq = self.next_seq.wrapping_add(fresh_wire);
    }

    /// Delivers waiting segments that the stream has caught up with.
    fn drain<D>(&mut self, ctx: &mut Ctx<'_, D>)
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        while let Some(first) = self.pending.first() {
            if after(first.seq, self.next_seq) {
                break;
            }
            let p = self.pending.remove(0);
            self.pending_bytes -= p.cost();
            ctx.budget.give_back(p.cost());
            self.deliver_from(p.seq, &p.data, p.wire_len, ctx);
        }
    }

    /// Gives up on the hole before the first waiting segment (fallback only); whether
    /// there was one.
    fn skip_hole<D>(&mut self, ctx: &mut Ctx<'_, D>) -> bool
    where
        D: FnMut(&mut S, &FlowKey, Piece<'_>),
    {
        let Some(first) = self.pending.first() else {
            return false;
        };
        let hole = seq_distance(self.next_seq, first.seq);
        if hole > 0 {
            ctx.stats.gaps += 1;
            (ctx.deliver)(&mut self.app, ctx.key, Piece::Gap(Some(hole as u32)));
            self.next_seq = first.seq;
        }
        self.drain(ctx);
        hole > 0
    }
}

#[cfg(test)]
mod tests;
