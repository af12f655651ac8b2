//! What capture sources hand the pipeline: TCP segments of analysed connections, in both
//! directions. Client → server segments carry the request bytes; server → client
//! segments carry only header facts (sequence, acknowledgment, window, flags), which is
//! what tells the reassembler what the server's TCP stack accepted.

use std::net::{IpAddr, SocketAddr};

use crate::Nanos;

/// Which way a segment travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    ToServer,
    /// Server → client: header facts only, the payload is never looked at.
    ToClient,
}

/// Whether a segment's TCP checksum holds (RFC 9293 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checksum {
    /// Verified, by the NIC or by the source.
    Valid,
    /// Wrong: the server's stack discards the segment (`TcpInCsumErrors`).
    Bad,
    /// Not verifiable (the capture kept only part of the payload) or left to the
    /// sender's offload (a local sender's partial checksum): taken as valid.
    #[default]
    Unverified,
}

/// One TCP segment of an analysed connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Segment<'a> {
    /// Capture time of the packet.
    pub ts: Nanos,
    pub flow: FlowKey,
    pub dir: Direction,
    pub seq: u32,
    /// Acknowledgment number (meaningful when `flags.ack`).
    pub ack: u32,
    pub flags: TcpFlags,
    /// The raw window field (scaled by the sender's window scale outside SYNs).
    pub window: u16,
    /// The urgent pointer (meaningful when `flags.urg`).
    pub urgent: u16,
    /// The window scale option of a SYN (RFC 7323 §2), when present.
    pub wscale: Option<u8>,
    /// The timestamp option's TSval (RFC 7323 §3), when present.
    pub tsval: Option<u32>,
    pub checksum: Checksum,
    /// The payload bytes the capture kept (always empty server → client).
    pub payload: &'a [u8],
    /// The payload length on the wire: more than `payload.len()` when the capture was
    /// cut short (snaplen), so reassembly knows the size of the hole.
    pub wire_len: u32,
}

impl Segment<'_> {
    /// A client acknowledgement with no bytes and no SYN, FIN or RST: nothing for the
    /// agent. The kernel program does not even hand these over; replay skips them
    /// likewise. (The server's bare ACKs do matter: they move its window.)
    pub fn is_bare_ack(&self) -> bool {
        self.dir == Direction::ToServer
            && self.wire_len == 0
            && !self.flags.syn
            && !self.flags.fin
            && !self.flags.rst
    }

    /// Sequence space the segment occupies (SYN and FIN count one each).
    pub fn seq_len(&self) -> u32 {
        self.wire_len + u32::from(self.flags.syn) + u32::from(self.flags.fin)
    }
}

/// What a capture source hands the pipeline: a TCP segment, or an IP fragment (its
/// datagram is put back together first, as the server's stack does).
#[derive(Debug, Clone, Copy)]
pub enum Captured<'a> {
    Segment(Segment<'a>),
    Fragment(Fragment<'a>),
    /// A whole IP packet the kernel program could not walk to its TCP header (a long
    /// IPv6 extension chain): decoded in userspace.
    RawIp {
        ts: Nanos,
        /// From the IP header on, as far as the capture kept it.
        packet: &'a [u8],
        /// Bytes of the packet the capture did not keep.
        cut: u32,
    },
    /// A client segment the kernel holds until its verdict (`[enforce] hold`): the whole
    /// Ethernet frame, decoded like a capture file's, and kept by the agent to put back
    /// into the stack if the verdict allows it.
    HeldFrame {
        ts: Nanos,
        frame: &'a [u8],
        /// Bytes of the frame the capture did not keep.
        cut: u32,
    },
}

/// One fragment of an IPv4 datagram, or of an IPv6 packet with a fragment header,
/// carrying TCP.
#[derive(Debug, Clone, Copy)]
pub struct Fragment<'a> {
    pub ts: Nanos,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 identification, or the IPv6 fragment header's.
    pub id: u32,
    /// Where these bytes go in the datagram's payload, in bytes.
    pub offset: u32,
    /// More fragments follow.
    pub more: bool,
    /// The fragment's bytes the capture kept.
    pub payload: &'a [u8],
    /// The fragment's length on the wire.
    pub wire_len: u32,
}

/// A connection, named from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl Default for FlowKey {
    fn default() -> Self {
        let unspecified = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
        Self {
            client: unspecified,
            server: unspecified,
        }
    }
}

impl std::hash::Hash for FlowKey {
    // Addresses and ports as whole words: `SocketAddr`'s derived hash feeds the hasher
    // byte slices and discriminants, several calls per address. IPv4, by far the most
    // common, fits two words; every packet of both directions is hashed.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let ports = u32::from(self.client.port()) << 16 | u32::from(self.server.port());
        match (self.client.ip(), self.server.ip()) {
            (IpAddr::V4(c), IpAddr::V4(s)) => {
                state.write_u64(u64::from(c.to_bits()) << 32 | u64::from(s.to_bits()));
            }
            (c, s) => {
                let word = |ip: IpAddr| match ip {
                    IpAddr::V4(v4) => u128::from(v4.to_bits()),
                    IpAddr::V6(v6) => v6.to_bits() ^ (1 << 127),
                };
                state.write_u128(word(c));
                state.write_u128(word(s));
            }
        }
        state.write_u32(ports);
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub ack: bool,
    pub urg: bool,
}

impl TcpFlags {
    /// From the TCP header's flags byte.
    pub fn from_byte(b: u8) -> Self {
        Self {
            fin: b & 0x01 != 0,
            syn: b & 0x02 != 0,
            rst: b & 0x04 != 0,
            ack: b & 0x10 != 0,
            urg: b & 0x20 != 0,
        }
    }
}

/// TCP header fields beyond ports, sequence and flags, read from the raw header bytes
/// (options included): what both sources hand on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpExtras {
    pub ack: u32,
    pub window: u16,
    pub urgent: u16,
    pub wscale: Option<u8>,
    pub tsval: Option<u32>,
}

/// TCP option kinds (RFC 9293 §3.2, RFC 7323).
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_WSCALE: u8 = 3;
const TCPOPT_TIMESTAMP: u8 = 8;
/// The largest shift RFC 7323 §2.3 allows; larger values are used as 14.
pub const MAX_WSCALE: u8 = 14;

/// Reads the acknowledgment, window, urgent pointer and window-scale option of a raw TCP
/// header (`header` = the header with its options; at least the 20 fixed bytes).
pub fn tcp_extras(header: &[u8]) -> TcpExtras {
    let word = |at: usize| {
        header
            .get(at..at + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    let ack = header
        .get(8..12)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let mut wscale = None;
    let mut tsval = None;
    let mut opts = header.get(20..).unwrap_or_default();
    while let Some(&kind) = opts.first() {
        match kind {
            TCPOPT_EOL => break,
            TCPOPT_NOP => opts = &opts[1..],
            _ => {
                let Some(&len) = opts.get(1) else { break };
                let len = usize::from(len);
                if len < 2 || len > opts.len() {
                    break;
                }
                if kind == TCPOPT_WSCALE && len == 3 {
                    wscale = Some(opts[2].min(MAX_WSCALE));
                }
                if kind == TCPOPT_TIMESTAMP && len == 10 {
                    tsval = Some(u32::from_be_bytes([opts[2], opts[3], opts[4], opts[5]]));
                }
                opts = &opts[len..];
            }
        }
    }
    TcpExtras {
        ack,
        window: word(14),
        urgent: word(18),
        wscale,
        tsval,
    }
}

/// Builds the segment of a TCP header and payload between `src` and `dst`: direction
/// by which side uses an analysed port (`None`: neither does, or no TCP header).
#[inline]
pub fn tcp_segment<'a>(
    ts: Nanos,
    src: IpAddr,
    dst: IpAddr,
    header: &[u8],
    payload: &'a [u8],
    wire_len: u32,
    ports: &[u16],
) -> Option<Segment<'a>> {
    if header.len() < 20 {
        return None;
    }
    let sport = u16::from_be_bytes([header[0], header[1]]);
    let dport = u16::from_be_bytes([header[2], header[3]]);
    let (dir, flow) = if ports.contains(&dport) {
        let flow = FlowKey {
            client: SocketAddr::new(src, sport),
            server: SocketAddr::new(dst, dport),
        };
        (Direction::ToServer, flow)
    } else if ports.contains(&sport) {
        let flow = FlowKey {
            client: SocketAddr::new(dst, dport),
            server: SocketAddr::new(src, sport),
        };
        (Direction::ToClient, flow)
    } else {
        return None;
    };
    Some(segment_from_header(
        ts, flow, dir, header, payload, wire_len, false,
    ))
}

/// The segment a raw TCP header (options included, at least 20 bytes) and its payload
/// describe, once its connection and direction are known: the one place both sources
/// read TCP headers. `nic_verified`: the receiving NIC already checked the checksum;
/// otherwise it is checked here when the capture kept the whole segment.
#[inline]
pub fn segment_from_header<'a>(
    ts: Nanos,
    flow: FlowKey,
    dir: Direction,
    header: &[u8],
    payload: &'a [u8],
    wire_len: u32,
    nic_verified: bool,
) -> Segment<'a> {
    let wire_len = wire_len.max(payload.len() as u32);
    let checksum = if nic_verified {
        Checksum::Valid
    } else if dir == Direction::ToServer
        && payload.len() as u32 == wire_len
        && header.len() + payload.len() <= MAX_VERIFIED_SEGMENT
    {
        let (src, dst) = (flow.client.ip(), flow.server.ip());
        tcp_checksum(src, dst, header, payload)
    } else {
        Checksum::Unverified
    };
    let extras = tcp_extras(header);
    Segment {
        ts,
        flow,
        dir,
        seq: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
        ack: extras.ack,
        flags: TcpFlags::from_byte(header[13]),
        window: extras.window,
        urgent: extras.urgent,
        wscale: extras.wscale,
        tsval: extras.tsval,
        checksum,
        // The server's payload is never looked at.
        payload: if dir == Direction::ToServer {
            payload
        } else {
            &[]
        },
        wire_len,
    }
}

/// Longest TCP segment (header and payload) whose checksum a capture verifies. Larger
/// ones are receive-offload aggregates (GRO/LRO) whose checksum field belongs to their
/// first packet; the NIC verified the packets they were made of. No wire segment is
/// larger on a 1500-byte MTU.
pub const MAX_VERIFIED_SEGMENT: usize = 1480;

/// Checks a TCP checksum over the pseudo-header, the TCP `header` (options included)
/// and the whole `payload`. A checksum field that holds only the pseudo-header sum is what a local
/// sender with checksum offload leaves in the packet before the device would finish it
/// (Linux `__tcp_v4_send_check`); such packets never come from the wire, so they are
/// taken as unverified rather than bad.
pub fn tcp_checksum(src: IpAddr, dst: IpAddr, header: &[u8], payload: &[u8]) -> Checksum {
    let Some(field) = header.get(16..18) else {
        return Checksum::Bad;
    };
    let Ok(len) = u32::try_from(header.len() + payload.len()) else {
        return Checksum::Unverified;
    };
    let mut pseudo = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum_words(&d.octets(), sum_words(&s.octets(), 0)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum_words(&d.octets(), sum_words(&s.octets(), 0)),
        _ => return Checksum::Bad,
    };
    pseudo = sum_words(&len.to_be_bytes(), pseudo);
    pseudo = sum_words(&[0, 6], pseudo);
    // A TCP header is a whole number of 32-bit words: summing it and then the payload
    // is summing the segment.
    if fold(sum_words(payload, sum_words(header, pseudo))) == 0xffff {
        return Checksum::Valid;
    }
    if fold(pseudo) == u16::from_ne_bytes([field[0], field[1]]) {
        return Checksum::Unverified;
    }
    Checksum::Bad
}

/// Writes the TCP checksum of `segment` (header, options and payload) in place.
pub fn set_tcp_checksum(src: IpAddr, dst: IpAddr, segment: &mut [u8]) {
    if segment.len() < 20 {
        return;
    }
    segment[16..18].fill(0);
    let mut acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum_words(&d.octets(), sum_words(&s.octets(), 0)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum_words(&d.octets(), sum_words(&s.octets(), 0)),
        _ => return,
    };
    acc = sum_words(&(segment.len() as u32).to_be_bytes(), acc);
    acc = sum_words(&[0, 6], acc);
    let sum = !fold(sum_words(segment, acc));
    // The sum is in memory order: stored as it is.
    segment[16..18].copy_from_slice(&sum.to_ne_bytes());
}

/// The RFC 1071 sum of `data` as 16-bit words in memory order, added to `acc`, unfolded.
/// Eight bytes a step as two 32-bit halves (a ones'-complement sum folds the same way
/// whatever the word width), so the loop has no carry chain.
fn sum_words(data: &[u8], mut acc: u64) -> u64 {
    // 32 bytes a step as eight 32-bit words into eight sums: independent additions the
    // compiler vectorises.
    let mut blocks = data.chunks_exact(32);
    let mut lanes = [0u64; 8];
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            *lane += u64::from(u32::from_ne_bytes(word.try_into().expect("4 bytes")));
        }
    }
    acc += lanes.iter().sum::<u64>();
    let mut chunks = blocks.remainder().chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        acc += (word & 0xffff_ffff) + (word >> 32);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for pair in &mut rest {
        acc += u64::from(u16::from_ne_bytes([pair[0], pair[1]]));
    }
    if let [last] = rest.remainder() {
        acc += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    acc
}

/// Folds a sum to 16 bits with end-around carries.
fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1000, 512)
            .ack(77)
            .write(&mut out, payload)
            .unwrap();
        out.drain(..20); // the IPv4 header
        out
    }

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    #[test]
    fn checksums_verify_and_damage_is_seen() {
        let seg = built(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            tcp_checksum(v4([10, 0, 0, 1]), v4([10, 0, 0, 2]), &seg[..20], &seg[20..]),
            Checksum::Valid
        );
        let mut bad = seg.clone();
        bad[25] ^= 1;
        assert_eq!(
            tcp_checksum(v4([10, 0, 0, 1]), v4([10, 0, 0, 2]), &bad[..20], &bad[20..]),
            Checksum::Bad
        );
        // Odd length, other addresses: still consistent.
        let odd = built(b"abc");
        assert_eq!(
            tcp_checksum(v4([10, 0, 0, 1]), v4([10, 0, 0, 2]), &odd[..20], &odd[20..]),
            Checksum::Valid
        );
        assert_eq!(
            tcp_checksum(v4([10, 0, 0, 9]), v4([10, 0, 0, 2]), &odd[..20], &odd[20..]),
            Checksum::Bad
        );
    }

    #[test]
    fn an_offloaded_partial_checksum_is_unverified() {
        let mut seg = built(b"hello");
        let (s, d) = (v4([10, 0, 0, 1]), v4([10, 0, 0, 2]));
        // What Linux leaves for the device: the folded pseudo-header sum.
        let pseudo = etherparse::checksum::Sum16BitWords::new()
            .add_4bytes([10, 0, 0, 1])
            .add_4bytes([10, 0, 0, 2])
            .add_4bytes((seg.len() as u32).to_be_bytes())
            .add_2bytes([0, 6]);
        let partial = (!pseudo.ones_complement()).to_ne_bytes();
        seg[16..18].copy_from_slice(&partial);
        assert_eq!(
            tcp_checksum(s, d, &seg[..20], &seg[20..]),
            Checksum::Unverified
        );
    }

    proptest::proptest! {
        #[test]
        fn the_fast_sum_is_the_internet_checksum(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let ours = !fold(sum_words(&data, 0));
            let reference = etherparse::checksum::Sum16BitWords::new().add_slice(&data).ones_complement();
            proptest::prop_assert_eq!(ours, reference);
        }
    }

    #[test]
    fn options_are_read() {
        // SYN with MSS, SACK-permitted, timestamps, NOP, window scale 7.
        let mut h = vec![0u8; 20];
        h[8..12].copy_from_slice(&5u32.to_be_bytes());
        h[14..16].copy_from_slice(&64240u16.to_be_bytes());
        h[18..20].copy_from_slice(&3u16.to_be_bytes());
        h.extend_from_slice(&[
            2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ]);
        let x = tcp_extras(&h);
        assert_eq!(
            x,
            TcpExtras {
                ack: 5,
                window: 64240,
                urgent: 3,
                wscale: Some(7),
                tsval: Some(1),
            }
        );
        // A malformed option list stops the walk, no panic.
        h.truncate(20);
        h.extend_from_slice(&[3, 9, 1]);
        assert_eq!(tcp_extras(&h).wscale, None);
        assert_eq!(tcp_extras(&h[..4]), TcpExtras::default());
    }
}
