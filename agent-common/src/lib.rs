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

/// Most server ports the capture filter holds.
pub const MAX_PORTS: u32 = 64;

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
}

pub const COUNTERS: u32 = 8;

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
    }
}
