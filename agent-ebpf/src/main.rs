//! seqshield's kernel side: a TC ingress program that copies the start of every client
//! → server TCP payload on the configured ports into a ring buffer, with the flow key,
//! the raw TCP header and the lengths the agent needs to reassemble, and a TC egress
//! program that hands over the server's TCP headers (never its payload): what the
//! server acknowledged and advertised decides which client bytes it accepted. Nothing
//! clever happens here: parsing stops at TCP, every copy is bounded, and every failure
//! to hand an event over is counted.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;

use agent_common::{
    BlockEntry, CaptureConfig, CaptureEvent, Counter, DIRECTION_FRAGMENT, DIRECTION_HELD_FRAME,
    DIRECTION_RAW_IP, DIRECTION_TO_CLIENT, DIRECTION_TO_SERVER, EVENT_SIZES, EventHeader, FlowKey,
    Guard, HOLD_IDLE, HOLD_PEEK, HOLD_PENDING, HoldEntry, MAX_BLOCK_ENTRIES, MAX_GUARDS,
    MAX_SNAPLEN, PORT_SLOTS, Peek, REINJECT_META, RING_BYTES, TCP_ACK, TCP_FIN, TCP_HEADER_ROOM,
    TCP_RST, TCP_SYN, WAKEUP_BYTES, may_start_guarded,
};
use aya_ebpf::bindings::xdp_action;
use aya_ebpf::bindings::{
    BPF_CSUM_LEVEL_QUERY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_SHOT,
    TC_ACT_UNSPEC,
};
use aya_ebpf::helpers::generated::{bpf_csum_level, bpf_ktime_get_ns, bpf_skb_load_bytes};
use aya_ebpf::macros::{classifier, map, xdp};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::{TcContext, XdpContext};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map(name = "PORTS")]
static PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<CaptureConfig> = Array::with_max_entries(1, 0);

#[map(name = "BLOCKED_FLOWS")]
static BLOCKED_FLOWS: HashMap<FlowKey, BlockEntry> =
    HashMap::with_max_entries(MAX_BLOCK_ENTRIES, 0);

#[map(name = "BLOCKED_CLIENTS")]
static BLOCKED_CLIENTS: HashMap<[u8; 16], BlockEntry> =
    HashMap::with_max_entries(MAX_BLOCK_ENTRIES, 0);

#[map(name = "BLOCKED_PAIRS")]
static BLOCKED_PAIRS: HashMap<[u8; 32], BlockEntry> =
    HashMap::with_max_entries(MAX_BLOCK_ENTRIES, 0);

#[map(name = "FLAGGED_FLOWS")]
static FLAGGED_FLOWS: HashMap<FlowKey, BlockEntry> =
    HashMap::with_max_entries(MAX_BLOCK_ENTRIES, 0);

#[map(name = "HOLDS")]
static HOLDS: LruHashMap<FlowKey, HoldEntry> = LruHashMap::with_max_entries(MAX_BLOCK_ENTRIES, 0);

#[map(name = "GUARDS")]
static GUARDS: Array<Guard> = Array::with_max_entries(MAX_GUARDS, 0);

/// The first payload bytes of the segment being looked at (per CPU: scratch space off
/// the stack).
#[map(name = "PEEK")]
static PEEK: PerCpuArray<Peek> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(agent_common::COUNTERS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
/// The IPv6 fragment header.
const IPPROTO_FRAGMENT: u8 = 44;
const IPV6_HLEN: usize = 40;
/// IPv6 extension headers walked before giving up on finding TCP.
const MAX_IPV6_EXTENSIONS: usize = 4;

/// Runs on every packet entering the interface: copies client → server TCP on the
/// configured ports into the ring, then applies the agent's verdicts (drop a blocked
/// connection or client, mark a flagged one). Otherwise "carry on" (TC_ACT_UNSPEC: the
/// next program, or the stack, decides).
#[classifier]
pub fn seqshield_ingress(ctx: TcContext) -> i32 {
    count(Counter::Seen);
    try_ingress(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

/// Runs on every packet leaving the interface: hands the header of server → client
/// packets on the analysed ports to the agent, and drops those of blocked connections
/// (so a response the verdict beat never leaves), RSTs excepted.
#[classifier]
pub fn seqshield_egress(ctx: TcContext) -> i32 {
    try_egress(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

/// Does nothing ("carry on"); never loaded by the agent. The benchmarks' baseline: what
/// an attached classifier costs before it reads a byte (`cargo xtask bench-kernel`,
/// `cargo xtask bench-live`).
#[classifier]
pub fn seqshield_baseline(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Optional (`[enforce] xdp = true`): drops TCP packets from blocked client addresses to
/// the analysed ports at the driver, before the stack spends anything on them — also
/// their handshakes, so such clients time out instead of being reset.
#[xdp]
pub fn seqshield_xdp(ctx: XdpContext) -> u32 {
    if blocked_at_driver(&ctx).unwrap_or(false) {
        count(Counter::DroppedIngress);
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}

/// Never attached: the agent runs it on a released frame with
/// `BPF_F_TEST_XDP_LIVE_FRAMES`, and XDP_PASS puts the frame into the interface's
/// receive path as if it had just arrived (with the metadata that lets it through).
#[xdp]
pub fn seqshield_reinject(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Reads `T` at `offset` of the packet, bounds-checked for the verifier.
#[inline(always)]
fn xdp_read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let at = ctx.data() + offset;
    if at + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: inside [data, data_end) as checked above; unaligned read of plain bytes.
    Some(unsafe { core::ptr::read_unaligned(at as *const T) })
}

/// Reads `T` at `offset` of the packet: straight from the packet's linear data when it
/// holds those bytes (headers nearly always are), else through `bpf_skb_load_bytes`.
/// A helper call per header cost more than the bytes it copies.
#[inline(always)]
fn tc_read<T: Copy>(ctx: &TcContext, offset: usize) -> Result<T, i64> {
    let at = ctx.data() + offset;
    if at + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: inside [data, data_end) as checked above; unaligned read of plain bytes.
        return Ok(unsafe { core::ptr::read_unaligned(at as *const T) });
    }
    ctx.load::<T>(offset)
}

fn blocked_at_driver(ctx: &XdpContext) -> Option<bool> {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let (client, l4) = match u16::from_be(xdp_read::<u16>(ctx, 12)?) {
        ETH_P_IP => {
            let version_ihl = xdp_read::<u8>(ctx, ETH_HLEN)?;
            if xdp_read::<u8>(ctx, ETH_HLEN + 9)? != IPPROTO_TCP {
                return Some(false);
            }
            let mut client = [0u8; 16];
            client[..4].copy_from_slice(&xdp_read::<[u8; 4]>(ctx, ETH_HLEN + 12)?);
            if u16::from_be(xdp_read::<u16>(ctx, ETH_HLEN + 6)?) & 0x3fff != 0 {
                // A fragment may not carry the ports: a blocked client's go.
                return Some(live_entry(&BLOCKED_CLIENTS, &client, now).is_some());
            }
            (client, ETH_HLEN + usize::from(version_ihl & 0x0f) * 4)
        }
        ETH_P_IPV6 => {
            let client = xdp_read::<[u8; 16]>(ctx, ETH_HLEN + 8)?;
            match xdp_read::<u8>(ctx, ETH_HLEN + 6)? {
                IPPROTO_TCP => {}
                IPPROTO_FRAGMENT => {
                    return Some(live_entry(&BLOCKED_CLIENTS, &client, now).is_some());
                }
                _ => return Some(false),
            }
            (client, ETH_HLEN + IPV6_HLEN)
        }
        _ => return Some(false),
    };
    let server_port = u16::from_be(xdp_read::<u16>(ctx, l4 + 2)?);
    if !analysed(server_port) {
        return Some(false);
    }
    Some(live_entry(&BLOCKED_CLIENTS, &client, now).is_some())
}

/// Where the packet's TCP header is, and what the IP layer says about it. Made with
/// [`L3::zeroed`], not `Default`.
#[repr(C, align(8))]
struct L3 {
    l4: usize,
    /// TCP header + payload length per the IP header.
    ip_payload_len: usize,
    src: [u8; 16],
    dst: [u8; 16],
    frag_id: u32,
    /// In 8-byte units.
    frag_offset: u16,
    family: u8,
    /// 1 for an IP fragment: `l4` is where its bytes start, `ip_payload_len` their
    /// length, and the fragment fields say where they go.
    fragment: u8,
    frag_more: u8,
    /// 1 when the TCP header was not found (a long IPv6 extension chain): `l4` is the
    /// IP header and `ip_payload_len` the whole packet, handed over as it is.
    raw: u8,
    _pad: [u8; 5],
}

const _: () = assert!(core::mem::size_of::<L3>() == 64);

impl L3 {
    /// Zeroes `slot` with eight 8-byte stores. `Default` compiled to a call to a
    /// byte-at-a-time `memset` (about 300 instructions on every packet, both
    /// directions); volatile stores are not merged back into one.
    #[inline(always)]
    fn zeroed(slot: &mut MaybeUninit<L3>) -> &mut L3 {
        let words = slot.as_mut_ptr().cast::<u64>();
        for i in 0..core::mem::size_of::<L3>() / 8 {
            // SAFETY: `L3` is 64 bytes and 8-aligned: eight words, all inside `slot`.
            unsafe { words.add(i).write_volatile(0) };
        }
        // SAFETY: every field of `L3` is an integer or byte array: all zeroes is valid.
        unsafe { slot.assume_init_mut() }
    }
}

/// Reads the IP layer into `out` (written in place: a returned `L3` would be copied
/// through this function's stack, and the verifier's 512 bytes are per call chain).
fn l3(ctx: &TcContext, out: &mut L3) -> Result<(), i64> {
    match u16::from_be(tc_read::<u16>(ctx, 12)?) {
        ETH_P_IP => ipv4(ctx, out),
        ETH_P_IPV6 => ipv6(ctx, out),
        _ => Err(0),
    }
}

fn try_ingress(ctx: &TcContext) -> Result<i32, i64> {
    let mut slot = MaybeUninit::uninit();
    let l3 = L3::zeroed(&mut slot);
    self::l3(ctx, l3)?;
    let l3 = &*l3;
    if l3.fragment != 0 || l3.raw != 0 {
        return ingress_fragment(ctx, l3);
    }
    let tcp = tc_read::<[u8; 20]>(ctx, l3.l4)?;
    let server_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    if !analysed(server_port) {
        return Ok(TC_ACT_UNSPEC);
    }
    let client_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    let tcp_flags = tcp[13];
    let wire_len = l3.ip_payload_len.saturating_sub(data_offset);
    let config = CONFIG.get(0).copied().unwrap_or_default();
    let hold = config.enforce != 0 && config.hold != 0;
    // A released copy the agent put back: captured and judged already.
    let reinjected = hold && is_reinjected(ctx);
    // Monitor mode: the kernel changes nothing.
    let verdict = if config.enforce != 0 {
        ingress_verdict(ctx, l3, &tcp, wire_len)
    } else {
        TC_ACT_UNSPEC
    };
    if reinjected {
        count(Counter::Reinjected);
        return Ok(verdict);
    }
    let mut packet = Packet {
        l3,
        client_addr: &l3.src,
        server_addr: &l3.dst,
        client_port,
        server_port,
        tcp: &tcp,
        data_offset,
        wire_len,
        payload_at: l3.l4 + data_offset,
        direction: DIRECTION_TO_SERVER,
    };
    if hold && verdict == TC_ACT_UNSPEC && wire_len > 0 && should_hold(ctx, &config, &packet) {
        // Held: the whole frame goes to the agent, which puts it back when the verdict
        // allows it; the stack never sees this copy.
        packet.payload_at = 0;
        packet.wire_len = ctx.len() as usize;
        packet.direction = DIRECTION_HELD_FRAME;
        capture(ctx, MAX_SNAPLEN as u32, true, &packet);
        count(Counter::Held);
        return Ok(TC_ACT_SHOT);
    }
    if wire_len > 0 || tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        // The client's bare ACKs carry nothing the agent uses. Dropped requests are
        // captured too: the agent sees every request.
        capture(ctx, config.snaplen, config.enforce != 0, &packet);
    }
    Ok(verdict)
}

/// Whether the packet carries the metadata the agent puts before a re-injected frame.
#[inline(always)]
fn is_reinjected(ctx: &TcContext) -> bool {
    // SAFETY: reading two fields of the context the kernel passed in.
    let (meta, data) = unsafe {
        (
            (*ctx.skb.skb).data_meta as usize,
            (*ctx.skb.skb).data as usize,
        )
    };
    if meta + 4 > data {
        return false;
    }
    // SAFETY: [meta, meta + 4) is inside the metadata area, as checked above.
    unsafe { core::ptr::read_unaligned(meta as *const u32) == REINJECT_META }
}

/// What a connection's hold state says about its next client segment.
#[derive(PartialEq, Eq)]
enum HoldState {
    /// A hold is pending: this segment joins it (the rest of a head, a retransmission).
    Held,
    /// Let it through: bytes released already, or a hold given up (fail-open).
    Pass,
    /// Nothing pending: held if it may start a guarded request.
    Check,
}

/// Whether to hold this client segment until the agent's verdict: while its connection
/// has a hold pending, or when its first bytes may start a guarded request. A pending
/// hold older than the timeout lets the segment through instead (fail-open: a dead or
/// stuck agent costs latency, never the request). Each step is a function of its own
/// and the matcher runs from here, so no call chain goes over the verifier's 512 bytes
/// of stack.
#[inline(always)]
fn should_hold(ctx: &TcContext, config: &CaptureConfig, p: &Packet<'_>) -> bool {
    match hold_state(config, p) {
        HoldState::Held => true,
        HoldState::Pass => false,
        HoldState::Check => {
            // SAFETY: seqshield_guarded only reads the PEEK map `load_peek` filled.
            load_peek(ctx, p) && unsafe { seqshield_guarded(config.guards) } != 0 && hold_start(p)
        }
    }
}

fn hold_key(p: &Packet<'_>) -> FlowKey {
    FlowKey {
        client_addr: *p.client_addr,
        server_addr: *p.server_addr,
        client_port: p.client_port,
        server_port: p.server_port,
        family: p.l3.family,
        _pad: [0; 3],
    }
}

fn segment_end(p: &Packet<'_>) -> u32 {
    u32::from_be_bytes([p.tcp[4], p.tcp[5], p.tcp[6], p.tcp[7]]).wrapping_add(p.wire_len as u32)
}

#[inline(never)]
fn hold_state(config: &CaptureConfig, p: &Packet<'_>) -> HoldState {
    let key = hold_key(p);
    let Some(entry) = HOLDS.get_ptr_mut(key) else {
        return HoldState::Check;
    };
    // SAFETY: the map value stays valid while this program runs.
    let entry = unsafe { &mut *entry };
    if entry.state == HOLD_PENDING {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if now.wrapping_sub(entry.since_ns) < config.hold_timeout_ns {
            return HoldState::Held;
        }
        entry.state = HOLD_IDLE;
        count(Counter::HoldTimeouts);
        return HoldState::Pass;
    }
    // Only bytes released already (a retransmission): the stack discards them.
    if entry.released_seq.wrapping_sub(segment_end(p)) as i32 >= 0 {
        return HoldState::Pass;
    }
    HoldState::Check
}

/// Starts a hold on the segment's connection; false if the map refused.
#[inline(never)]
fn hold_start(p: &Packet<'_>) -> bool {
    let key = hold_key(p);
    let seq = u32::from_be_bytes([p.tcp[4], p.tcp[5], p.tcp[6], p.tcp[7]]);
    // SAFETY: the value is copied out at once.
    let released_seq = unsafe { HOLDS.get(key) }.map_or(seq, |e| e.released_seq);
    let entry = HoldEntry {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        since_ns: unsafe { bpf_ktime_get_ns() },
        released_seq,
        state: HOLD_PENDING,
    };
    // A full map evicts its least recently used hold (LRU): that one is released.
    HOLDS.insert(key, entry, 0).is_ok()
}

/// Copies the payload's first bytes into the PEEK map (zero past what arrived).
#[inline(never)]
fn load_peek(ctx: &TcContext, p: &Packet<'_>) -> bool {
    let Some(peek) = PEEK.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU value: no other writer while this program runs on this CPU.
    let peek = unsafe { &mut *peek };
    peek.words = [0; HOLD_PEEK / 8];
    let in_skb = (ctx.len() as usize).saturating_sub(p.payload_at);
    let n = p.wire_len.min(in_skb).min(HOLD_PEEK);
    if n == 0 {
        return false;
    }
    // Provably 1..=HOLD_PEEK for the verifier.
    let len = (core::hint::black_box(n - 1) & (HOLD_PEEK - 1)) + 1;
    // SAFETY: `peek` has HOLD_PEEK bytes and len <= HOLD_PEEK.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            p.payload_at as u32,
            peek.words.as_mut_ptr().cast(),
            len as u32,
        )
    };
    ret == 0
}

/// Whether the request start in the PEEK map may be guarded (1) or not (0). A global
/// BPF function: the verifier checks it once, on its own, instead of once for every
/// distinct state of its callers (IPv4/IPv6 and their header variants), which would
/// multiply the work past its limits.
///
/// # Safety
/// Reads the PEEK map only; `load_peek` fills it first.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn seqshield_guarded(guards: u32) -> u32 {
    let Some(peek) = PEEK.get(0) else {
        return 0;
    };
    u32::from(may_start_guarded(peek, |i| {
        if i < guards { GUARDS.get(i) } else { None }
    }))
}

/// Drops a blocked connection's or client's packets, marks a flagged connection's. Not
/// inlined: its frame is not on the stack while `l3` runs (the verifier's 512 bytes
/// are per call chain).
#[inline(never)]
fn ingress_verdict(ctx: &TcContext, l3: &L3, tcp: &[u8; 20], wire_len: usize) -> i32 {
    let client_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    let server_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let tcp_flags = tcp[13];
    let key = FlowKey {
        client_addr: l3.src,
        server_addr: l3.dst,
        client_port,
        server_port,
        family: l3.family,
        _pad: [0; 3],
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let new_connection = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if new_connection {
        // A hold of an earlier connection on these ports says nothing about this one.
        let _ = HOLDS.remove(key);
    }
    if live_entry(&BLOCKED_FLOWS, &key, now).is_some() {
        // A SYN reusing a blocked connection's ports is a new connection: not blocked.
        if new_connection {
            let _ = BLOCKED_FLOWS.remove(key);
        } else if tcp_flags & TCP_RST == 0 {
            count(Counter::DroppedIngress);
            return TC_ACT_SHOT;
        }
    }
    // Blocked clients keep their handshakes (the agent resets the connection when its
    // first request shows), but not their request bytes.
    if wire_len > 0 && live_entry(&BLOCKED_CLIENTS, &l3.src, now).is_some() {
        count(Counter::DroppedIngress);
        return TC_ACT_SHOT;
    }
    if let Some(entry) = live_entry(&FLAGGED_FLOWS, &key, now) {
        ctx.set_mark(entry.mark);
        count(Counter::Marked);
    }
    TC_ACT_UNSPEC
}

/// An IP fragment of a TCP datagram: its ports may be in another fragment, so every
/// one is handed over (TCP rarely fragments: path MTU discovery) and the agent puts the
/// datagram back together. A packet whose TCP header the program did not find (a long
/// IPv6 extension chain) is handed over whole, likewise. In enforce mode, fragments from blocked clients, or between
/// the two ends of a blocked connection, are dropped: blocks hold against fragmented
/// traffic. Not inlined: its frame is not on the stack while `l3` runs.
#[inline(never)]
fn ingress_fragment(ctx: &TcContext, l3: &L3) -> Result<i32, i64> {
    let config = CONFIG.get(0).copied().unwrap_or_default();
    let packet = Packet {
        l3,
        client_addr: &l3.src,
        server_addr: &l3.dst,
        client_port: 0,
        server_port: 0,
        tcp: &[0; 20],
        data_offset: 0,
        wire_len: l3.ip_payload_len,
        payload_at: l3.l4,
        direction: if l3.raw != 0 {
            DIRECTION_RAW_IP
        } else {
            DIRECTION_FRAGMENT
        },
    };
    capture(ctx, config.snaplen, config.enforce != 0, &packet);
    if config.enforce == 0 {
        return Ok(TC_ACT_UNSPEC);
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut pair = [0u8; 32];
    pair[..16].copy_from_slice(&l3.src);
    pair[16..].copy_from_slice(&l3.dst);
    if live_entry(&BLOCKED_CLIENTS, &l3.src, now).is_some()
        || live_entry(&BLOCKED_PAIRS, &pair, now).is_some()
    {
        count(Counter::DroppedIngress);
        return Ok(TC_ACT_SHOT);
    }
    Ok(TC_ACT_UNSPEC)
}

fn try_egress(ctx: &TcContext) -> Result<i32, i64> {
    let mut slot = MaybeUninit::uninit();
    let l3 = L3::zeroed(&mut slot);
    self::l3(ctx, l3)?;
    let l3 = &*l3;
    if l3.fragment != 0 || l3.raw != 0 {
        return Ok(TC_ACT_UNSPEC); // The server's own fragments carry nothing we need.
    }
    let tcp = tc_read::<[u8; 20]>(ctx, l3.l4)?;
    let server_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    if !analysed(server_port) {
        return Ok(TC_ACT_UNSPEC);
    }
    let enforce = server_facts(ctx, l3, &tcp);
    if !enforce || tcp[13] & TCP_RST != 0 {
        // Monitor mode changes nothing; resets always get through: neither end may hang.
        return Ok(TC_ACT_UNSPEC);
    }
    let key = FlowKey {
        client_addr: l3.dst,
        server_addr: l3.src,
        client_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        server_port,
        family: l3.family,
        _pad: [0; 3],
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if live_entry(&BLOCKED_FLOWS, &key, now).is_some() {
        count(Counter::DroppedEgress);
        return Ok(TC_ACT_SHOT);
    }
    Ok(TC_ACT_UNSPEC)
}

/// The entry for `key` if it has not expired; an expired one is removed.
fn live_entry<K>(map: &HashMap<K, BlockEntry>, key: &K, now: u64) -> Option<BlockEntry> {
    // SAFETY: the value is copied out at once; the reference is not kept.
    let entry = *unsafe { map.get(key) }?;
    if entry.expires_ns <= now {
        let _ = map.remove(key);
        return None;
    }
    Some(entry)
}

/// What a capture event says about its packet.
struct Packet<'a> {
    l3: &'a L3,
    client_addr: &'a [u8; 16],
    server_addr: &'a [u8; 16],
    client_port: u16,
    server_port: u16,
    /// The fixed TCP header, already read.
    tcp: &'a [u8; 20],
    /// TCP header length with options.
    data_offset: usize,
    wire_len: usize,
    payload_at: usize,
    /// DIRECTION_TO_SERVER, DIRECTION_TO_CLIENT, DIRECTION_FRAGMENT, DIRECTION_RAW_IP or
    /// DIRECTION_HELD_FRAME.
    direction: u8,
}

/// A header-only event for a server → client packet: the agent needs its sequence,
/// acknowledgment, window and flags (and a SYN-ACK's window scale), never its payload.
/// Returns whether the agent enforces. Not inlined: its frame is not on the stack while
/// `l3` runs (the verifier's 512-byte limit is per call chain).
#[inline(never)]
fn server_facts(ctx: &TcContext, l3: &L3, tcp: &[u8; 20]) -> bool {
    let enforce = CONFIG.get(0).is_some_and(|c| c.enforce != 0);
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    let packet = Packet {
        l3,
        client_addr: &l3.dst,
        server_addr: &l3.src,
        client_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        server_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        tcp,
        data_offset,
        wire_len: l3.ip_payload_len.saturating_sub(data_offset),
        payload_at: l3.l4 + data_offset,
        direction: DIRECTION_TO_CLIENT,
    };
    let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) else {
        count(Counter::Lost);
        return enforce;
    };
    let h = entry.as_mut_ptr();
    // SAFETY: the reserved record is ours until submitted.
    unsafe { fill_header(ctx, &mut *h, &packet, 0) };
    // No wakeup of its own, even when enforcing: verdicts follow client packets, and the
    // next one's wakeup drains this event first (the ring is in order).
    entry.submit(wakeup_flags(false));
    count(Counter::ServerFacts);
    enforce
}

/// Writes an event header: addresses, lengths, and the raw TCP header with options.
/// Not inlined: written once instead of in each event size's copy of `capture_into`,
/// which keeps the programs' combined stack under the verifier's 512 bytes.
#[inline(never)]
fn fill_header(ctx: &TcContext, h: &mut EventHeader, p: &Packet<'_>, copied: usize) {
    h.ktime_ns = unsafe { bpf_ktime_get_ns() };
    h.client_addr = *p.client_addr;
    h.server_addr = *p.server_addr;
    h.client_port = p.client_port;
    h.server_port = p.server_port;
    h.wire_len = p.wire_len as u32;
    h.copied = copied as u16;
    h.family = p.l3.family;
    h.direction = p.direction;
    h.truncated = u8::from(copied < p.wire_len);
    // Only client payload is checked: no helper call for the server's headers.
    h.csum_verified = if p.direction == DIRECTION_TO_SERVER {
        // SAFETY: a query that reads the skb's checksum state and changes nothing.
        let level = unsafe { bpf_csum_level(ctx.skb.skb, u64::from(BPF_CSUM_LEVEL_QUERY)) };
        u8::from(level >= 0)
    } else {
        0
    };
    h._pad = 0;
    h.frag_id = p.l3.frag_id;
    h.frag_offset = p.l3.frag_offset;
    h.frag_more = p.l3.frag_more;
    h._pad2 = 0;
    if p.direction == DIRECTION_FRAGMENT || p.direction == DIRECTION_RAW_IP {
        h.tcp_len = 0; // The payload is fragment data or a whole packet: no TCP here.
        return;
    }
    // Provably 1..=TCP_HEADER_ROOM for the verifier.
    let len = (core::hint::black_box(p.data_offset.wrapping_sub(1)) & (TCP_HEADER_ROOM - 1)) + 1;
    // SAFETY: `tcp` has TCP_HEADER_ROOM bytes and len <= TCP_HEADER_ROOM.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            p.l3.l4 as u32,
            h.tcp.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if ret == 0 && p.data_offset >= 20 {
        h.tcp_len = len as u8;
    } else {
        // A header shorter than its data offset claims: hand over the fixed part.
        h.tcp[..20].copy_from_slice(p.tcp);
        h.tcp_len = 20;
    }
}

/// Wakeups: when enforcing, every client event wakes the agent (its verdict must beat
/// the server's answer) — forced: the ring's default wakes the reader only when nothing
/// was waiting before the event, and the server's header events (never waking anyone)
/// usually are, which left verdicts to the agent's 2 ms drain timer. Otherwise only a
/// filling ring does and the agent drains on a timer: a wakeup per request costs both
/// sides a context switch.
#[inline(always)]
fn wakeup_flags(wake_every_event: bool) -> u64 {
    if wake_every_event || EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= WAKEUP_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Copies up to `snaplen` bytes of the packet into the smallest event size that holds
/// them. Not inlined, for the same reason as `ingress_verdict`.
#[inline(never)]
fn capture(ctx: &TcContext, snaplen: u32, wake_every_event: bool, p: &Packet<'_>) {
    let in_skb = (ctx.len() as usize).saturating_sub(p.payload_at);
    let want = p.wire_len.min(snaplen as usize).min(in_skb);
    let submitted = if want <= EVENT_SIZES[0] {
        capture_into::<{ EVENT_SIZES[0] }>(ctx, p, want, wake_every_event)
    } else if want <= EVENT_SIZES[1] {
        capture_into::<{ EVENT_SIZES[1] }>(ctx, p, want, wake_every_event)
    } else {
        capture_into::<{ EVENT_SIZES[2] }>(ctx, p, want, wake_every_event)
    };
    count(if submitted {
        Counter::Captured
    } else {
        Counter::Lost
    });
}

/// One event with room for `N` payload bytes; false when the ring is full.
#[inline(always)]
fn capture_into<const N: usize>(
    ctx: &TcContext,
    p: &Packet<'_>,
    want: usize,
    wake_every_event: bool,
) -> bool {
    let Some(mut entry) = EVENTS.reserve::<CaptureEvent<N>>(0) else {
        return false;
    };
    let event = entry.as_mut_ptr();
    let mut copied = 0usize;
    if want > 0 {
        // Provably 1..=N for the verifier: mask a copy it cannot see through.
        let len = (core::hint::black_box(want - 1) & (N - 1)) + 1;
        // SAFETY: `data` has N bytes and len <= N; the record is ours until submitted.
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                p.payload_at as u32,
                (*event).data.as_mut_ptr().cast(),
                len as u32,
            )
        };
        if ret == 0 {
            copied = len;
        }
    }
    // SAFETY: writing the header of the reserved record we own.
    unsafe { fill_header(ctx, &mut (*event).header, p, copied) };
    entry.submit(wakeup_flags(wake_every_event));
    true
}

fn ipv4(ctx: &TcContext, out: &mut L3) -> Result<(), i64> {
    // The fixed header in one helper call (each call costs more than the bytes).
    let h = tc_read::<[u8; 20]>(ctx, ETH_HLEN)?;
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if h[9] != IPPROTO_TCP {
        return Err(0);
    }
    // More fragments or a non-zero offset: a fragment, handed over for reassembly.
    let flags_offset = u16::from_be_bytes([h[6], h[7]]);
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    out.family = 4;
    out.fragment = u8::from(flags_offset & 0x3fff != 0);
    out.frag_more = u8::from(flags_offset & 0x2000 != 0);
    out.frag_offset = flags_offset & 0x1fff;
    out.frag_id = u32::from(u16::from_be_bytes([h[4], h[5]]));
    out.src[..4].copy_from_slice(&h[12..16]);
    out.dst[..4].copy_from_slice(&h[16..20]);
    out.l4 = ETH_HLEN + header_len;
    out.ip_payload_len = total_len.saturating_sub(header_len);
    Ok(())
}

fn ipv6(ctx: &TcContext, out: &mut L3) -> Result<(), i64> {
    // The first 8 bytes, then the addresses straight into `out`.
    let h = tc_read::<[u8; 8]>(ctx, ETH_HLEN)?;
    let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let mut next_header = h[6];
    let mut l4 = ETH_HLEN + IPV6_HLEN;
    let mut fragment = [0u8; 8];
    // Walk a few extension headers (hop-by-hop, routing, destination options, AH, and
    // a fragment header, after which the fragment's bytes start). Bounded for the
    // verifier.
    for _ in 0..MAX_IPV6_EXTENSIONS {
        let len = match next_header {
            IPPROTO_TCP => break,
            0 | 43 | 60 => (usize::from(ctx.load::<u8>(l4 + 1)?) + 1) * 8,
            51 => (usize::from(ctx.load::<u8>(l4 + 1)?) + 2) * 4,
            IPPROTO_FRAGMENT => {
                fragment = ctx.load::<[u8; 8]>(l4)?;
                8
            }
            _ => return Err(0), // Not TCP.
        };
        next_header = ctx.load::<u8>(l4)?;
        l4 += len;
        if fragment[0] != 0 || fragment[2] != 0 || fragment[3] != 0 {
            break; // The rest is fragment data (or its first bytes: the TCP header).
        }
    }
    if next_header != IPPROTO_TCP {
        // A longer chain than the program walks (Linux walks any): the whole packet goes
        // to the agent, which walks it there. Rare, and never dropped unseen.
        count(Counter::Unsupported);
        out.family = 6;
        out.raw = 1;
        load_into(ctx, ETH_HLEN + 8, &mut out.src)?;
        load_into(ctx, ETH_HLEN + 24, &mut out.dst)?;
        out.l4 = ETH_HLEN;
        out.ip_payload_len = IPV6_HLEN + payload_len;
        return Ok(());
    }
    let offset_more = u16::from_be_bytes([fragment[2], fragment[3]]);
    out.family = 6;
    out.fragment = u8::from(fragment[0] == IPPROTO_TCP);
    out.frag_more = u8::from(offset_more & 1 != 0);
    out.frag_offset = offset_more >> 3;
    out.frag_id = u32::from_be_bytes([fragment[4], fragment[5], fragment[6], fragment[7]]);
    load_into(ctx, ETH_HLEN + 8, &mut out.src)?;
    load_into(ctx, ETH_HLEN + 24, &mut out.dst)?;
    out.l4 = l4;
    out.ip_payload_len = payload_len.saturating_sub(l4 - ETH_HLEN - IPV6_HLEN);
    Ok(())
}

/// Copies 16 packet bytes at `offset` into `dst` (one helper call, no stack copy).
#[inline(always)]
fn load_into(ctx: &TcContext, offset: usize, dst: &mut [u8; 16]) -> Result<(), i64> {
    // SAFETY: `dst` has 16 bytes, the length copied.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            dst.as_mut_ptr().cast(),
            16,
        )
    };
    if ret == 0 { Ok(()) } else { Err(ret) }
}

/// Whether `port` is an analysed server port: one array slot per port, a lookup the
/// verifier turns into a bounds check and a load (a hash map lookup cost a hash per
/// packet).
#[inline(always)]
fn analysed(port: u16) -> bool {
    PORTS.get(u32::from(port)).is_some_and(|&v| v != 0)
}

fn count(counter: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *c += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
