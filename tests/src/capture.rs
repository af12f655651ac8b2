//! Builds TCP conversations packet by packet (real Ethernet/IP/TCP framing, made with
//! etherparse) and writes them as pcap or pcapng, in the link types seqshield reads.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use etherparse::PacketBuilder;
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgWriter};

/// Link-layer framing of a written capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    /// Linux cooked capture v1 (`tcpdump -i any` on older libpcap).
    LinuxSll,
    /// Linux cooked capture v2.
    LinuxSll2,
    /// Raw IP, no link header.
    RawIp,
}

/// One TCP connection being written: the next sequence numbers of both sides.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Next client → server sequence number.
    pub seq: u32,
    /// Next server → client sequence number.
    pub ack: u32,
}

const ETHERNET_HEADER_LEN: usize = 14;
const WINDOW: u16 = 65_535;

#[derive(Debug, Clone)]
struct Frame {
    ts: u64,
    /// An Ethernet frame.
    data: Vec<u8>,
    /// Which way a TCP frame goes (`None`: a raw frame).
    to_server: Option<bool>,
}

/// A capture under construction. Timestamps are nanoseconds since the epoch.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    frames: Vec<Frame>,
    /// Bytes kept per frame when written (like `tcpdump -s`); `None` keeps everything.
    pub snaplen: Option<usize>,
}

/// Parses `"10.0.0.1:40000"` or `"[2001:db8::1]:80"`.
pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| panic!("bad address {s:?}"))
}

impl Capture {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Three-way handshake; the client's initial sequence number derives from its port
    /// so conversations differ.
    pub fn open(&mut self, ts: u64, client: &str, server: &str) -> Conn {
        let isn = 1_000_000u32.wrapping_mul(u32::from(addr(client).port()) + 1);
        self.open_with_isn(ts, client, server, isn)
    }

    /// Three-way handshake with a chosen client initial sequence number.
    pub fn open_with_isn(&mut self, ts: u64, client: &str, server: &str, isn: u32) -> Conn {
        let (client, server) = (addr(client), addr(server));
        let mut conn = Conn {
            client,
            server,
            seq: isn,
            ack: 7_000_000,
        };
        self.tcp(ts, &conn, true, conn.seq, 0, Flags::SYN, b"");
        self.tcp(
            ts,
            &conn,
            false,
            conn.ack,
            conn.seq.wrapping_add(1),
            Flags::SYN_ACK,
            b"",
        );
        conn.seq = conn.seq.wrapping_add(1);
        conn.ack = conn.ack.wrapping_add(1);
        self.tcp(ts, &conn, true, conn.seq, conn.ack, Flags::ACK, b"");
        conn
    }

    /// A connection the capture joins after its start (no handshake seen).
    pub fn join(&self, client: &str, server: &str, seq: u32) -> Conn {
        Conn {
            client: addr(client),
            server: addr(server),
            seq,
            ack: 9_000_000,
        }
    }

    /// Client → server bytes in one segment, acknowledged by the server.
    pub fn send(&mut self, ts: u64, conn: &mut Conn, bytes: &[u8]) {
        self.send_split(ts, conn, bytes, &[]);
    }

    /// Client → server bytes cut at the given offsets into several segments, in order.
    pub fn send_split(&mut self, ts: u64, conn: &mut Conn, bytes: &[u8], cuts: &[usize]) {
        let mut last = 0;
        for &cut in cuts.iter().chain([&bytes.len()]) {
            if cut > last {
                self.segment(ts, conn, last as u32, &bytes[last..cut]);
            }
            last = cut.max(last);
        }
        conn.seq = conn.seq.wrapping_add(bytes.len() as u32);
        self.tcp(ts, conn, false, conn.ack, conn.seq, Flags::ACK, b"");
    }

    /// One client → server segment at `offset` from the connection's next sequence
    /// number, without advancing it: for retransmission and reordering tests.
    pub fn segment(&mut self, ts: u64, conn: &Conn, offset: u32, bytes: &[u8]) {
        self.tcp(
            ts,
            conn,
            true,
            conn.seq.wrapping_add(offset),
            conn.ack,
            Flags::PSH_ACK,
            bytes,
        );
    }

    /// Moves the connection's client sequence number on by `n` bytes.
    pub fn advance(&self, conn: &mut Conn, n: usize) {
        conn.seq = conn.seq.wrapping_add(n as u32);
    }

    /// Server → client bytes (responses: seqshield ignores them, real captures have them).
    pub fn respond(&mut self, ts: u64, conn: &mut Conn, bytes: &[u8]) {
        self.tcp(ts, conn, false, conn.ack, conn.seq, Flags::PSH_ACK, bytes);
        conn.ack = conn.ack.wrapping_add(bytes.len() as u32);
    }

    /// Orderly close from both sides.
    pub fn close(&mut self, ts: u64, conn: &mut Conn) {
        self.tcp(ts, conn, true, conn.seq, conn.ack, Flags::FIN_ACK, b"");
        self.tcp(
            ts,
            conn,
            false,
            conn.ack,
            conn.seq.wrapping_add(1),
            Flags::FIN_ACK,
            b"",
        );
        conn.seq = conn.seq.wrapping_add(1);
        conn.ack = conn.ack.wrapping_add(1);
        self.tcp(ts, conn, true, conn.seq, conn.ack, Flags::ACK, b"");
    }

    /// Client aborts the connection.
    pub fn reset(&mut self, ts: u64, conn: &Conn) {
        self.tcp(ts, conn, true, conn.seq, 0, Flags::RST, b"");
    }

    /// Whether a frame is too short to carry an Ethernet header.
    pub fn has_short_frames(&self) -> bool {
        self.frames
            .iter()
            .any(|f| f.data.len() < ETHERNET_HEADER_LEN)
    }

    /// An arbitrary Ethernet frame (garbage, other protocols).
    pub fn raw_frame(&mut self, ts: u64, data: Vec<u8>) {
        self.frames.push(Frame {
            ts,
            data,
            to_server: None,
        });
    }

    /// A segment as an attacker writes it (client → server): any sequence number,
    /// flags and checksum, relative to the connection's next sequence number.
    pub fn crafted(&mut self, ts: u64, conn: &Conn, craft: Craft<'_>) {
        let mut flags = Flags(craft.flags);
        if craft.urgent.is_some() {
            flags.0 |= Flags::URG.0;
        }
        let seq = conn.seq.wrapping_add(craft.offset as u32);
        let ack = conn.ack.wrapping_add(craft.ack_add);
        self.tcp_with(ts, conn, true, seq, ack, flags, craft.bytes, &craft);
    }

    /// Client → server bytes in one TCP segment carried by `pieces` IPv4 fragments
    /// (8-byte multiples), in reverse order; then the server's ACK.
    pub fn send_fragmented(&mut self, ts: u64, conn: &mut Conn, bytes: &[u8], pieces: usize) {
        let before = self.frames.len();
        self.segment(ts, conn, 0, bytes);
        let whole = self.frames.remove(before).data;
        let ip = &whole[ETHERNET_HEADER_LEN..];
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        let payload = &ip[header_len..];
        let step = (payload.len() / pieces.max(1)).div_ceil(8).max(1) * 8;
        let mut frames = Vec::new();
        for (i, part) in payload.chunks(step).enumerate() {
            let more = (i + 1) * step < payload.len();
            let mut header = ip[..header_len].to_vec();
            let total = (header_len + part.len()) as u16;
            header[2..4].copy_from_slice(&total.to_be_bytes());
            let flags_offset = ((i * step / 8) as u16) | if more { 0x2000 } else { 0 };
            header[6..8].copy_from_slice(&flags_offset.to_be_bytes());
            header[10..12].copy_from_slice(&[0, 0]);
            let sum = etherparse::checksum::Sum16BitWords::new()
                .add_slice(&header)
                .ones_complement()
                .to_be();
            header[10..12].copy_from_slice(&sum.to_be_bytes());
            let mut data = whole[..ETHERNET_HEADER_LEN].to_vec();
            data.extend_from_slice(&header);
            data.extend_from_slice(part);
            frames.push(Frame {
                ts,
                data,
                to_server: Some(true),
            });
        }
        frames.reverse();
        self.frames.extend(frames);
        conn.seq = conn.seq.wrapping_add(bytes.len() as u32);
        self.tcp(ts, conn, false, conn.ack, conn.seq, Flags::ACK, b"");
    }

    /// The server acknowledges the client's bytes up to `offset` from the connection's
    /// next sequence number (a bare ACK, window 65535).
    pub fn server_ack(&mut self, ts: u64, conn: &Conn, offset: usize) {
        let ack = conn.seq.wrapping_add(offset as u32);
        self.tcp(ts, conn, false, conn.ack, ack, Flags::ACK, b"");
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp(
        &mut self,
        ts: u64,
        conn: &Conn,
        to_server: bool,
        seq: u32,
        ack: u32,
        flags: Flags,
        payload: &[u8],
    ) {
        self.tcp_with(
            ts,
            conn,
            to_server,
            seq,
            ack,
            flags,
            payload,
            &Craft::default(),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp_with(
        &mut self,
        ts: u64,
        conn: &Conn,
        to_server: bool,
        seq: u32,
        ack: u32,
        flags: Flags,
        payload: &[u8],
        craft: &Craft<'_>,
    ) {
        let (src, dst) = if to_server {
            (conn.client, conn.server)
        } else {
            (conn.server, conn.client)
        };
        let mac = |to_server_side: bool| {
            if to_server_side {
                [2, 0, 0, 0, 0, 2]
            } else {
                [2, 0, 0, 0, 0, 1]
            }
        };
        let eth = PacketBuilder::ethernet2(mac(!to_server), mac(to_server));
        let ip = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
            _ => panic!("mixed address families in one connection"),
        };
        let mut tcp = ip.tcp(src.port(), dst.port(), seq, WINDOW);
        if flags.0 & Flags::SYN.0 != 0 {
            tcp = tcp.syn();
        }
        if flags.0 & Flags::FIN.0 != 0 {
            tcp = tcp.fin();
        }
        if flags.0 & Flags::RST.0 != 0 {
            tcp = tcp.rst();
        }
        if flags.0 & Flags::PSH.0 != 0 {
            tcp = tcp.psh();
        }
        if flags.0 & Flags::ACK.0 != 0 {
            tcp = tcp.ack(ack);
        }
        if let Some(urgent) = craft.urgent {
            tcp = tcp.urg(urgent);
        }
        let mut data = Vec::with_capacity(tcp.size(payload.len()));
        tcp.write(&mut data, payload).expect("packet builds");
        if craft.bad_checksum {
            // The TCP checksum field: after Ethernet and the IP header.
            let ip_len = if src.is_ipv4() { 20 } else { 40 };
            data[ETHERNET_HEADER_LEN + ip_len + 16] ^= 0x5a;
        }
        self.frames.push(Frame {
            ts,
            data,
            to_server: Some(to_server),
        });
    }

    /// The same capture without the server's packets (a one-sided capture).
    pub fn client_side_only(&self) -> Capture {
        Capture {
            frames: self
                .frames
                .iter()
                .filter(|f| f.to_server != Some(false))
                .cloned()
                .collect(),
            snaplen: self.snaplen,
        }
    }

    /// The capture as a classic pcap file (nanosecond timestamps).
    pub fn to_pcap(&self, link: Link) -> Vec<u8> {
        let header = PcapHeader {
            datalink: datalink(link),
            ts_resolution: pcap_file::TsResolution::NanoSecond,
            snaplen: self.snaplen.unwrap_or(262_144) as u32,
            ..PcapHeader::default()
        };
        let mut w = PcapWriter::with_header(Vec::new(), header).expect("pcap header");
        for f in &self.frames {
            let data = reframe(link, &f.data);
            let kept = self.snaplen.map_or(data.len(), |s| s.min(data.len()));
            w.write_packet(&PcapPacket::new(
                Duration::from_nanos(f.ts),
                data.len() as u32,
                &data[..kept],
            ))
            .expect("pcap packet");
        }
        w.into_writer()
    }

    /// The capture as pcapng (Ethernet, if_tsresol = nanoseconds).
    pub fn to_pcapng(&self) -> Vec<u8> {
        let mut w = PcapNgWriter::new(Vec::new()).expect("pcapng header");
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![InterfaceDescriptionOption::IfTsResol(9)],
        };
        w.write_block(&Block::InterfaceDescription(idb))
            .expect("idb");
        for f in &self.frames {
            let kept = self.snaplen.map_or(f.data.len(), |s| s.min(f.data.len()));
            let epb = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(f.ts),
                original_len: f.data.len() as u32,
                data: Cow::Borrowed(&f.data[..kept]),
                options: vec![],
            };
            w.write_block(&Block::EnhancedPacket(epb)).expect("epb");
        }
        w.into_inner()
    }
}

fn datalink(link: Link) -> DataLink {
    match link {
        Link::Ethernet => DataLink::ETHERNET,
        Link::LinuxSll => DataLink::LINUX_SLL,
        Link::LinuxSll2 => DataLink::LINUX_SLL2,
        Link::RawIp => DataLink::RAW,
    }
}

/// Swaps the Ethernet header of a frame for the link's own header.
fn reframe(link: Link, eth: &[u8]) -> Vec<u8> {
    if link == Link::Ethernet {
        return eth.to_vec();
    }
    let ether_type = [eth[12], eth[13]];
    let ip = &eth[ETHERNET_HEADER_LEN..];
    let mut out = Vec::with_capacity(eth.len() + 8);
    match link {
        Link::Ethernet | Link::RawIp => {}
        Link::LinuxSll => {
            // packet type "sent to us", ARPHRD_ETHER, 6-byte address padded to 8, protocol.
            out.extend_from_slice(&[0, 0, 0, 1, 0, 6]);
            out.extend_from_slice(&eth[6..12]);
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&ether_type);
        }
        Link::LinuxSll2 => {
            // protocol, reserved, ifindex 2, ARPHRD_ETHER, packet type, address length, address.
            out.extend_from_slice(&ether_type);
            out.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6]);
            out.extend_from_slice(&eth[6..12]);
            out.extend_from_slice(&[0, 0]);
        }
    }
    out.extend_from_slice(ip);
    out
}

/// How [`Capture::crafted`] writes a segment.
#[derive(Debug, Clone, Copy)]
pub struct Craft<'a> {
    /// Sequence number, as an offset from the connection's next one (may be negative
    /// modulo 2^32, or far ahead).
    pub offset: i64,
    pub bytes: &'a [u8],
    /// TCP flag bits ([`Craft::PSH_ACK`] by default).
    pub flags: u8,
    /// Added to the acknowledgment number (an ACK of data the server never sent).
    pub ack_add: u32,
    pub urgent: Option<u16>,
    pub bad_checksum: bool,
}

impl Craft<'_> {
    pub const FIN: u8 = 1;
    pub const SYN: u8 = 2;
    pub const RST: u8 = 4;
    pub const PSH_ACK: u8 = 8 | 16;
}

impl Default for Craft<'_> {
    fn default() -> Self {
        Self {
            offset: 0,
            bytes: b"",
            flags: Craft::PSH_ACK,
            ack_add: 0,
            urgent: None,
            bad_checksum: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Flags(u8);

impl Flags {
    const URG: Flags = Flags(32);
    const FIN: Flags = Flags(1);
    const SYN: Flags = Flags(2);
    const RST: Flags = Flags(4);
    const PSH: Flags = Flags(8);
    const ACK: Flags = Flags(16);
    const SYN_ACK: Flags = Flags(2 | 16);
    const PSH_ACK: Flags = Flags(8 | 16);
    const FIN_ACK: Flags = Flags(1 | 16);
}
