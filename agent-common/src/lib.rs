//! Types shared by seqshield's kernel programs and the agent: `#[repr(C)]` layouts and
//! map names, no logic. The `user` feature marks them as plain data for aya.
#![no_std]

/// Payload bytes a capture event can carry (a power of two: the kernel's copy length is
/// masked to it, which is what the verifier can prove bounded).
pub const MAX_SNAPLEN: usize = 4096;

/// Bytes of the capture ring buffer (a power of two, a multiple of the page size).
pub const RING_BYTES: u32 = 32 << 20;

/// Unread bytes in the ring at which the kernel wakes the agent at once; below it the
/// agent drains on its own timer ([`DRAIN_INTERVAL_MS`]).
pub const WAKEUP_BYTES: u64 = (RING_BYTES / 8) as u64;

/// How often the agent drains the ring when the kernel does not wake it.
pub const DRAIN_INTERVAL_MS: u64 = 2;

/// Slots of the kernel's port filter: one per TCP port.
pub const PORT_SLOTS: u32 = 65_536;

/// Map names, as the kernel object defines them.
pub mod maps {
    /// RingBuf of [`super::CaptureEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// HashMap<u16 server port (host order), u8>: the ports whose ingress is captured.
    pub const PORTS: &str = "PORTS";
    /// Array<[`super::CaptureConfig`]> of one element.
    pub const CONFIG: &str = "CONFIG";
    /// PerCpuArray<u64> indexed by [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// HashMap<[`super::FlowKey`], [`super::BlockEntry`]>: connections whose packets are
    /// dropped in both directions (RSTs excepted, so resets get through).
    pub const BLOCKED_FLOWS: &str = "BLOCKED_FLOWS";
    /// HashMap<[u8; 16] client address, [`super::BlockEntry`]>: clients whose request
    /// bytes are dropped (handshakes pass, so the agent can reset them).
    pub const BLOCKED_CLIENTS: &str = "BLOCKED_CLIENTS";
    /// HashMap<[u8; 32] client address + server address, [`super::BlockEntry`]>: IP
    /// fragments between the two ends of a blocked connection are dropped (a fragment
    /// may not carry the ports).
    pub const BLOCKED_PAIRS: &str = "BLOCKED_PAIRS";
    /// HashMap<[`super::FlowKey`], [`super::BlockEntry`]>: connections whose packets get
    /// `mark` in skb->mark.
    pub const FLAGGED_FLOWS: &str = "FLAGGED_FLOWS";
    /// LruHashMap<[`super::FlowKey`], [`super::HoldEntry`]>: connections with a request
    /// held until its verdict (`[enforce] hold`). LRU: a full map forgets the oldest
    /// hold, which only releases it (fail-open).
    pub const HOLDS: &str = "HOLDS";
    /// Array<[`super::Guard`]> of [`super::MAX_GUARDS`]: the request starts that are held
    /// (the first `CaptureConfig::guards` entries are in use).
    pub const GUARDS: &str = "GUARDS";
}

/// The XDP program the agent runs with `BPF_F_TEST_XDP_LIVE_FRAMES` to put a released
/// frame back into the receive path (never attached).
pub const REINJECT_PROGRAM: &str = "seqshield_reinject";

/// XDP metadata the agent puts before a re-injected frame: the TC program lets such a
/// copy through without capturing or holding it again. Only an XDP program on this host
/// can set metadata, so a packet from the wire cannot claim it.
pub const REINJECT_META: u32 = 0x5e95_4e1d;

/// Request starts the kernel can hold at once; more guarded operations are merged into
/// fewer, wider guards by the agent. 8 guards of 64 bytes over a 64-byte peek is what
/// the verifier takes comfortably (16 × 128 went past its 1 M-instruction budget).
pub const MAX_GUARDS: u32 = 8;
/// 64-bit words of a guard's pattern: the method, one space and the path prefix.
pub const GUARD_WORDS: usize = 8;
/// Longest method a guard holds (with its space it fits the first two words).
pub const GUARD_METHOD_LEN: usize = 15;
/// Payload bytes the kernel looks at to decide whether a segment starts a guarded
/// request.
pub const HOLD_PEEK: usize = 64;

/// A held connection, as the kernel keeps it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldEntry {
    /// When the hold started (`bpf_ktime_get_ns`): after `hold_timeout_ns` the client's
    /// next retransmission passes (fail-open).
    pub since_ns: u64,
    /// Sequence number after the last byte released: retransmissions of bytes before it
    /// pass (they were delivered already).
    pub released_seq: u32,
    /// [`HOLD_PENDING`] or [`HOLD_IDLE`].
    pub state: u32,
}

/// The connection's segments are held until the agent's verdict.
pub const HOLD_PENDING: u32 = 1;
/// Nothing held: new segments are checked for a guarded request start.
pub const HOLD_IDLE: u32 = 0;

/// One guarded request start: `METHOD /literal/path/prefix` as 64-bit words (bytes in
/// little-endian order, as both the agent's and the BPF target's loads read them), with
/// the masks of the bytes in use, so the kernel compares eight bytes per step.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Guard {
    pub pattern: [u64; GUARD_WORDS],
    /// Bytes of `pattern` in use.
    pub mask: [u64; GUARD_WORDS],
    /// The method's bytes (without its space).
    pub method_mask: [u64; 2],
    pub method_len: u8,
    pub len: u8,
    pub _pad: [u8; 6],
}

impl Guard {
    /// The guard for `method` and the literal start of a path template, the prefix cut
    /// to what fits (which only widens it). `None` for an empty or over-long method.
    pub fn new(method: &[u8], prefix: &[u8]) -> Option<Self> {
        if method.is_empty() || method.len() > GUARD_METHOD_LEN {
            return None;
        }
        let mut bytes = [0u8; GUARD_WORDS * 8];
        bytes[..method.len()].copy_from_slice(method);
        bytes[method.len()] = b' ';
        let room = bytes.len() - method.len() - 1;
        let prefix = &prefix[..prefix.len().min(room)];
        bytes[method.len() + 1..method.len() + 1 + prefix.len()].copy_from_slice(prefix);
        let len = method.len() + 1 + prefix.len();
        let mut guard = Self {
            method_len: method.len() as u8,
            len: len as u8,
            ..Self::default()
        };
        for (w, chunk) in bytes.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            guard.pattern[w] = u64::from_le_bytes(word);
            guard.mask[w] = bytes_below(len.saturating_sub(w * 8));
            if w < 2 {
                guard.method_mask[w] = bytes_below(method.len().saturating_sub(w * 8));
            }
        }
        Some(guard)
    }
}

/// The first payload bytes of a segment, as 64-bit words (see [`Guard`]), zero past the
/// bytes that arrived.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peek {
    pub words: [u64; HOLD_PEEK / 8],
}

impl Peek {
    #[inline(always)]
    pub fn byte(&self, i: usize) -> u8 {
        (self.words[(i >> 3) & (HOLD_PEEK / 8 - 1)] >> ((i & 7) * 8)) as u8
    }
}

const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// 0x80 in each byte of `word` equal to `c`, 0 elsewhere (exact: no carries between
/// bytes).
#[inline(always)]
fn bytes_equal(word: u64, c: u8) -> u64 {
    let x = word ^ (0x0101_0101_0101_0101 * u64::from(c));
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// Every bit of bytes `0..k` of a word.
#[inline(always)]
const fn bytes_below(k: usize) -> u64 {
    if k >= 8 {
        u64::MAX
    } else {
        (1u64 << (k * 8)) - 1
    }
}

/// Every bit of the non-zero bytes of `word`. A zero byte is one that has not arrived
/// (HTTP request lines hold no NUL): it matches anything, so a segment that ends early
/// is held (the rest may complete the match).
#[inline(always)]
fn arrived(word: u64) -> u64 {
    !((bytes_equal(word, 0) >> 7) * 0xff)
}

/// Whether the bytes that arrived agree with `words`/`masks` (a guard's pattern or
/// method).
#[inline(always)]
fn agrees<const N: usize>(peek: &Peek, words: &[u64; N], masks: &[u64; N]) -> bool {
    let mut differ = 0u64;
    for w in 0..N {
        differ |= (peek.words[w] ^ words[w]) & masks[w] & arrived(peek.words[w]);
    }
    differ == 0
}

/// Whether the segment may start a request exactly as `guard` spells it: method, one
/// space, the path prefix (bytes that have not arrived match).
#[inline(always)]
pub fn starts_as(peek: &Peek, guard: &Guard) -> bool {
    agrees(peek, &guard.pattern, &guard.mask)
}

/// How a segment's start relates to a guard's method.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum MethodMatch {
    /// Another method.
    Other,
    /// The method, one space, then a path: what follows decides.
    Plain,
    /// The method, then something only the agent can read: another blank, a target that
    /// is not a path (absolute-form), or the end of the bytes that arrived.
    Unusual,
}

/// Whether the segment may start with `guard`'s method (bytes that have not arrived
/// match), and how the request line goes on.
#[inline(always)]
pub fn method_match(peek: &Peek, guard: &Guard) -> MethodMatch {
    let method = [guard.pattern[0], guard.pattern[1]];
    if !agrees(peek, &method, &guard.method_mask) {
        return MethodMatch::Other;
    }
    let at = usize::from(guard.method_len);
    match (peek.byte(at), peek.byte(at + 1)) {
        (b' ', b'/') => MethodMatch::Plain,
        (0 | b' ' | b'\t', _) => MethodMatch::Unusual,
        _ => MethodMatch::Other, // A longer method ("POSTX"): another operation.
    }
}

/// All ones when `x` is not zero (without a branch).
#[inline(always)]
fn all_if_nonzero(x: u64) -> u64 {
    0u64.wrapping_sub((x | x.wrapping_neg()) >> 63)
}

/// Whether the request target (from the first `/` to the first blank, `?`, `#` or line
/// end) holds what normalisation may change (a percent-encoding, a dot-segment, `//`:
/// SPEC §1), or does not end within the bytes that arrived. Branches only to stop.
#[inline(never)]
pub fn unusual_target(peek: &Peek) -> bool {
    // All ones once the target started; 0x80 in byte 0 when the byte before the current
    // word was '/'.
    let mut started = 0u64;
    let mut slash_before = 0u64;
    for w in 0..HOLD_PEEK / 8 {
        let word = peek.words[w];
        let slash = bytes_equal(word, b'/');
        let first_slash = slash & slash.wrapping_neg();
        let target = (started | (!first_slash.wrapping_sub(1) & all_if_nonzero(slash))) & HIGH;
        started |= all_if_nonzero(slash);
        let end = (bytes_equal(word, 0)
            | bytes_equal(word, b' ')
            | bytes_equal(word, b'\t')
            | bytes_equal(word, b'?')
            | bytes_equal(word, b'#')
            | bytes_equal(word, b'\r')
            | bytes_equal(word, b'\n'))
            & target;
        let after_slash = (slash << 8) | slash_before;
        let odd =
            (bytes_equal(word, b'%') | (after_slash & (bytes_equal(word, b'.') | slash))) & target;
        if end != 0 {
            let first = end & end.wrapping_neg();
            // The bytes ran out before the target ended: undecided.
            return first & bytes_equal(word, 0) != 0 || odd & (first - 1) != 0;
        }
        if odd != 0 {
            return true;
        }
        slash_before = (slash >> 56) & 0x80;
    }
    true
}

/// Whether the payload starts with an empty line, which servers skip before a request
/// line: whatever follows is only known to the agent.
#[inline(always)]
pub fn starts_with_empty_line(peek: &Peek) -> bool {
    matches!(peek.byte(0), b'\r' | b'\n')
}

/// The kernel's decision for a segment's first bytes against the guards in use: hold
/// when it may start a request to a guarded operation as the agent will read it. The
/// agent matches normalised paths, so a request whose method matches a guard's and whose
/// target is spelled unusually is held too: the agent decides it, at the cost of latency
/// to the sender who spells requests oddly.
#[inline(always)]
pub fn may_start_guarded<'g>(peek: &Peek, guards: impl Fn(u32) -> Option<&'g Guard>) -> bool {
    if starts_with_empty_line(peek) {
        return true;
    }
    let mut method_seen = false;
    for i in 0..MAX_GUARDS {
        let Some(guard) = guards(i) else { break };
        if starts_as(peek, guard) {
            return true;
        }
        match method_match(peek, guard) {
            MethodMatch::Other => {}
            MethodMatch::Plain => method_seen = true,
            MethodMatch::Unusual => return true,
        }
    }
    method_seen && unusual_target(peek)
}

/// The egress program's name in the object.
pub const EGRESS_PROGRAM: &str = "seqshield_egress";

/// Entries each enforcement map holds.
pub const MAX_BLOCK_ENTRIES: u32 = 65_536;

/// A connection as the kernel maps key it: always client → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IPv4 in the first four bytes, the rest zero.
    pub client_addr: [u8; 16],
    pub server_addr: [u8; 16],
    /// Host order.
    pub client_port: u16,
    pub server_port: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// A block or flag, valid until `expires_ns` (CLOCK_MONOTONIC, as `bpf_ktime_get_ns`):
/// every entry expires, so nothing blocks forever whatever happens to the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    pub expires_ns: u64,
    /// skb->mark for flagged flows.
    pub mark: u32,
    pub _pad: u32,
}

/// The capture program's name in the object.
pub const CAPTURE_PROGRAM: &str = "seqshield_ingress";

/// The optional XDP program's name: drops blocked clients' packets at the driver.
pub const XDP_PROGRAM: &str = "seqshield_xdp";

/// A classifier that does nothing, never loaded by the agent: the benchmarks attach or
/// run it to measure what the TC hook costs before a program reads a byte.
pub const BASELINE_PROGRAM: &str = "seqshield_baseline";

/// Per-CPU counters the kernel keeps; the agent sums them across CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the program ran on.
    Seen = 0,
    /// Events handed to the ring buffer.
    Captured = 1,
    /// Events lost because the ring buffer was full.
    Lost = 2,
    /// IPv6 packets with an extension header chain longer than the program walks: handed
    /// over whole for the agent to walk.
    Unsupported = 3,
    /// Client → server packets dropped (blocked flow or client).
    DroppedIngress = 4,
    /// Server → client packets of blocked flows dropped.
    DroppedEgress = 5,
    /// Packets marked as flagged.
    Marked = 6,
    /// Server → client header events handed over.
    ServerFacts = 7,
    /// Client segments held until the agent's verdict.
    Held = 8,
    /// Holds the kernel gave up on: no verdict within the hold timeout (fail-open).
    HoldTimeouts = 9,
    /// Re-injected copies of released segments let through.
    Reinjected = 10,
}

pub const COUNTERS: u32 = 11;

/// Settings the agent writes before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Payload bytes to copy per packet (at most [`MAX_SNAPLEN`]).
    pub snaplen: u32,
    /// 1 in enforce mode: apply the block and flag maps, and wake the agent for every
    /// event (its verdicts must beat the server's answer). 0 (monitor): the kernel only
    /// copies, and wakes the agent only when the ring fills up (it drains on a timer).
    pub enforce: u32,
    /// 1 (enforce mode, `[enforce] hold`): segments that may start a guarded request are
    /// held until the agent's verdict.
    pub hold: u32,
    /// Entries of the GUARDS map in use.
    pub guards: u32,
    /// A hold older than this lets the client's retransmissions through (fail-open).
    pub hold_timeout_ns: u64,
}

/// Direction of a captured packet: client → server, with payload.
pub const DIRECTION_TO_SERVER: u8 = 0;
/// Server → client, header facts only (what the server acknowledged and advertised).
pub const DIRECTION_TO_CLIENT: u8 = 1;
/// An IP fragment of a TCP datagram sent to this host: `client_addr` is its source,
/// `server_addr` its destination, the `frag_*` fields say where its bytes go, and the
/// payload is the fragment's (the agent puts the datagram back together).
pub const DIRECTION_FRAGMENT: u8 = 2;
/// A whole IP packet (from its IP header) whose TCP header the kernel program did not
/// find: an IPv6 extension header chain longer than it walks. The agent walks it.
pub const DIRECTION_RAW_IP: u8 = 3;
/// A held client → server segment: the payload is the whole Ethernet frame (the agent
/// puts it back into the stack when the verdict allows it); `wire_len` is the frame's
/// length.
pub const DIRECTION_HELD_FRAME: u8 = 4;

/// TCP flag bits as they appear in the header's flags byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Bytes of the raw TCP header an event carries: the longest header (60) rounded up to
/// a power of two, so the kernel's copy length can be masked to it.
pub const TCP_HEADER_ROOM: usize = 64;

/// The fixed part of a capture event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ktime_ns: u64,
    /// Client address (IPv4 in the first four bytes), network order, whatever the
    /// direction.
    pub client_addr: [u8; 16],
    /// Server address, likewise.
    pub server_addr: [u8; 16],
    /// Host order.
    pub client_port: u16,
    pub server_port: u16,
    /// TCP payload length on the wire.
    pub wire_len: u32,
    /// Payload bytes copied into the event.
    pub copied: u16,
    /// 4 or 6.
    pub family: u8,
    /// [`DIRECTION_TO_SERVER`] or [`DIRECTION_TO_CLIENT`].
    pub direction: u8,
    /// 1 when `copied < wire_len`.
    pub truncated: u8,
    /// 1 when the kernel already verified the TCP checksum (the NIC did:
    /// CHECKSUM_UNNECESSARY); otherwise the agent checks it.
    pub csum_verified: u8,
    /// Bytes of `tcp` that hold the TCP header (its data offset: 20 to 60).
    pub tcp_len: u8,
    pub _pad: u8,
    /// The raw TCP header, options included: sequence and acknowledgment numbers,
    /// flags, window, urgent pointer, window scale. Unused in fragment events.
    pub tcp: [u8; TCP_HEADER_ROOM],
    /// Fragment events: the IP identification (IPv4's 16 bits, or IPv6's 32).
    pub frag_id: u32,
    /// Fragment events: the offset of the payload in the datagram, in 8-byte units.
    pub frag_offset: u16,
    /// Fragment events: 1 when more fragments follow.
    pub frag_more: u8,
    pub _pad2: u8,
}

/// What the kernel puts in the ring buffer for one packet: the header, then room for `N`
/// payload bytes. The kernel reserves the smallest of [`EVENT_SIZES`] that fits, so a
/// small request does not cost a 4 KiB slot of ring (memory traffic, ring capacity).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureEvent<const N: usize = MAX_SNAPLEN> {
    pub header: EventHeader,
    pub data: [u8; N],
}

/// Payload room of the event sizes (powers of two: the copy length is masked to them).
pub const EVENT_SIZES: [usize; 3] = [512, 2048, MAX_SNAPLEN];

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C) structs of integers and byte arrays with explicit padding: every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::CaptureConfig {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::BlockEntry {}
    unsafe impl aya::Pod for super::HoldEntry {}
    unsafe impl aya::Pod for super::Guard {}
}

impl EventHeader {
    pub const SIZE: usize = core::mem::size_of::<EventHeader>();

    /// Reads a header from the start of a ring-buffer record.
    pub fn read(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        // SAFETY: length checked; EventHeader is plain data (any bit pattern is valid) and
        // read_unaligned makes no alignment assumption about the record.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<EventHeader>()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_stable() {
        assert_eq!(EventHeader::SIZE, 128);
        assert_eq!(core::mem::size_of::<CaptureEvent>(), 128 + MAX_SNAPLEN);
        assert!(EventHeader::read(&[0u8; 127]).is_none());
        assert_eq!(core::mem::size_of::<FlowKey>(), 40);
        assert_eq!(core::mem::size_of::<BlockEntry>(), 16);
        assert_eq!(core::mem::size_of::<HoldEntry>(), 16);
        assert_eq!(core::mem::size_of::<Guard>(), 152);
        assert!(Guard::new(b"", b"/").is_none());
        assert!(Guard::new(b"ABCDEFGHIJKLMNOP", b"/").is_none());
        let long = Guard::new(b"POST", &[b'a'; 200]).unwrap();
        assert_eq!(long.len, 64);
        assert_eq!(core::mem::size_of::<CaptureConfig>(), 24);
    }

    fn holds(payload: &str, g: &Guard) -> bool {
        let mut bytes = [0u8; HOLD_PEEK];
        let n = payload.len().min(HOLD_PEEK);
        bytes[..n].copy_from_slice(&payload.as_bytes()[..n]);
        let mut peek = Peek {
            words: [0; HOLD_PEEK / 8],
        };
        for (w, chunk) in peek.words.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().unwrap());
        }
        let other = Guard::new(b"DELETE", b"/admin").unwrap();
        let guards = [other, *g];
        n > 0 && may_start_guarded(&peek, |i| guards.get(i as usize))
    }

    #[test]
    fn guarded_starts_are_held_and_others_pass() {
        let g = Guard::new(b"POST", b"/api/v1/transferFunds").unwrap();
        for held in [
            "POST /api/v1/transferFunds HTTP/1.1\r\n",
            "POST /api/v1/transferFunds?x=1 HTTP/1.1\r\n",
            "POST  /api/v1/transferFundsX HTTP/1.1\r\n", // prefix only: the agent decides
            "POST /api/v1/tr",                           // the segment ends: undecided
            "PO",
            "POST /api/v1/%74ransferFunds HTTP/1.1\r\n",
            "POST /api/v1/x/../transferFunds HTTP/1.1\r\n",
            "POST /api//v1/transferFunds HTTP/1.1\r\n",
            "POST /api/v1/./transferFunds HTTP/1.1\r\n",
            "POST /api/v1/transferFund%73 HTTP/1.1\r\n",
            "POST /a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z/0/1/2/3/4/5/6/7/8/9/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z",
            "POST\t/api/v1/login HTTP/1.1\r\n",
            "POST http://bank.test/api/v1/transferFunds HTTP/1.1\r\n",
            "\r\nPOST /api/v1/transferFunds HTTP/1.1\r\n",
        ] {
            assert!(holds(held, &g), "{held:?} must be held");
        }
        for passes in [
            "GET /api/v1/transferFunds HTTP/1.1\r\n",
            "POST /api/v1/login HTTP/1.1\r\n",
            "POST /api/v1/login?next=/a/../b HTTP/1.1\r\n",
            "POST /api/v1/login HTTP/1.1\r\nReferer: https://x//./%41\r\n",
            "POSTX /api/v1/transferFunds HTTP/1.1\r\n",
            "post /api/v1/transferFunds HTTP/1.1\r\n",
            "{\"amount\": 5}",
            "",
            "GET /a/../%2e HTTP/1.1\r\n",
        ] {
            assert!(!holds(passes, &g), "{passes:?} must pass");
        }
    }
}
