//! pcap / pcapng replay: frames (Ethernet, Linux cooked capture v1/v2, raw IP, BSD
//! loopback; IPv4 and IPv6) decoded with etherparse into client → server [`Segment`]s.

use std::net::IpAddr;

use etherparse::{
    EtherType, Ipv4HeaderSlice, Ipv6ExtensionSlice, Ipv6HeaderSlice, LaxNetSlice, LaxSlicedPacket,
    TcpHeaderSlice, TransportSlice,
};
use pcap_file::DataLink;
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::{Block, PcapNgParser};

use crate::Nanos;
use crate::packet::{Captured, Direction, Fragment, tcp_segment};

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("not a pcap or pcapng file (or a corrupt one): {0}")]
    Format(pcap_file::PcapError),
    #[error("unsupported link type {0:?}: capture on an Ethernet, loopback or `any` interface")]
    LinkType(DataLink),
}

/// What the reader saw besides the segments it handed on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PcapCounters {
    pub frames: u64,
    /// TCP segments to an analysed port (handed on).
    pub segments: u64,
    /// TCP segments from an analysed port (handed on for their header facts).
    pub server_segments: u64,
    /// Frames that are not TCP to or from an analysed port.
    pub ignored: u64,
    /// Frames that could not be decoded down to TCP (truncated headers).
    pub undecodable: u64,
    /// IP fragments of TCP datagrams (handed on for reassembly).
    pub fragments: u64,
    /// The file ended inside a packet record (a capture that was cut off).
    pub truncated_file: bool,
}

/// Decodes every frame of a pcap or pcapng capture held in memory (a file is mapped, not
/// read: records are decoded in place, never copied) and calls `on_packet` for each TCP
/// segment to or from one of `ports`, and for each IP fragment of a TCP datagram.
pub fn for_each_packet(
    capture: &[u8],
    ports: &[u16],
    mut on_packet: impl FnMut(Captured<'_>),
) -> Result<PcapCounters, PcapError> {
    let mut decoder = Decoder {
        ports,
        counters: PcapCounters::default(),
    };
    if capture.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        read_pcapng(capture, &mut decoder, &mut on_packet)?;
    } else {
        read_pcap(capture, &mut decoder, &mut on_packet)?;
    }
    Ok(decoder.counters)
}

fn read_pcap(
    capture: &[u8],
    decoder: &mut Decoder<'_>,
    on_packet: &mut impl FnMut(Captured<'_>),
) -> Result<(), PcapError> {
    let (mut rest, parser) = PcapParser::new(capture).map_err(PcapError::Format)?;
    let header = parser.header();
    check_link(header.datalink)?;
    let frac_nanos: u64 = match header.ts_resolution {
        pcap_file::TsResolution::MicroSecond => 1_000,
        pcap_file::TsResolution::NanoSecond => 1,
    };
    // Raw records: pcap-file 2.0 refuses packets whose wire length exceeds the file's
    // snaplen, which is exactly what a `tcpdump -s N` capture holds
    // (courvoif/pcap-file#36, fixed after 2.0.0).
    while !rest.is_empty() {
        match parser.next_raw_packet(rest) {
            Ok((next, p)) => {
                let ts = u64::from(p.ts_sec) * 1_000_000_000 + u64::from(p.ts_frac) * frac_nanos;
                let cut = p.orig_len.saturating_sub(p.data.len() as u32);
                decoder.frame(header.datalink, ts, &p.data, cut, on_packet);
                rest = next;
            }
            Err(e) => return decoder.end_of_file(e),
        }
    }
    Ok(())
}

fn read_pcapng(
    capture: &[u8],
    decoder: &mut Decoder<'_>,
    on_packet: &mut impl FnMut(Captured<'_>),
) -> Result<(), PcapError> {
    let (mut rest, mut parser) = PcapNgParser::new(capture).map_err(PcapError::Format)?;
    // Per interface: link type and nanoseconds per timestamp unit.
    let mut interfaces: Vec<(DataLink, u64)> = Vec::new();
    while !rest.is_empty() {
        let block = match parser.next_block(rest) {
            Ok((next, block)) => {
                rest = next;
                block
            }
            Err(e) => return decoder.end_of_file(e),
        };
        match block {
            Block::SectionHeader(_) => interfaces.clear(),
            Block::InterfaceDescription(idb) => {
                check_link(idb.linktype)?;
                interfaces.push((idb.linktype, nanos_per_unit(&idb.options)));
            }
            Block::EnhancedPacket(epb) => {
                let Some(&(link, unit)) = interfaces.get(epb.interface_id as usize) else {
                    decoder.counters.frames += 1;
                    decoder.counters.undecodable += 1;
                    continue;
                };
                // pcap-file 2.0 returns the raw 64-bit timestamp as if it were
                // nanoseconds; scale it by the interface's if_tsresol (default µs).
                let raw = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                let cut = epb.original_len.saturating_sub(epb.data.len() as u32);
                decoder.frame(link, raw.saturating_mul(unit), &epb.data, cut, on_packet);
            }
            Block::SimplePacket(spb) => {
                // No timestamp in a simple packet block: it inherits "unknown" (0).
                let link = interfaces.first().map_or(DataLink::ETHERNET, |i| i.0);
                let cut = spb.original_len.saturating_sub(spb.data.len() as u32);
                decoder.frame(link, 0, &spb.data, cut, on_packet);
            }
            _ => {}
        }
    }
    Ok(())
}

fn nanos_per_unit(
    options: &[pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption<'_>],
) -> u64 {
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    let resol = options.iter().find_map(|o| match o {
        InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
        _ => None,
    });
    match resol {
        None => 1_000,
        // High bit clear: a power of ten (pcapng spec §4.2, if_tsresol).
        Some(r) if r & 0x80 == 0 => 10u64
            .checked_pow(9u32.saturating_sub(u32::from(r)))
            .unwrap_or(1)
            .max(1),
        // Powers of two are rare; approximate to the nearest nanosecond.
        Some(r) => (1_000_000_000u64 >> u32::from(r & 0x7f).min(63)).max(1),
    }
}

fn check_link(link: DataLink) -> Result<(), PcapError> {
    match link {
        DataLink::ETHERNET
        | DataLink::LINUX_SLL
        | DataLink::LINUX_SLL2
        | DataLink::RAW
        | DataLink::IPV4
        | DataLink::IPV6
        | DataLink::NULL
        | DataLink::LOOP => Ok(()),
        other => Err(PcapError::LinkType(other)),
    }
}

struct Decoder<'p> {
    ports: &'p [u16],
    counters: PcapCounters,
}

impl Decoder<'_> {
    /// A read error ends the replay; a record cut off at the end of the file (a capture
    /// that was killed) is only noted.
    fn end_of_file(&mut self, e: pcap_file::PcapError) -> Result<(), PcapError> {
        match e {
            pcap_file::PcapError::IncompleteBuffer => {
                self.counters.truncated_file = true;
                Ok(())
            }
            other => Err(PcapError::Format(other)),
        }
    }

    /// `cut`: bytes of the frame the capture did not keep.
    fn frame(
        &mut self,
        link: DataLink,
        ts: Nanos,
        data: &[u8],
        cut: u32,
        on_packet: &mut impl FnMut(Captured<'_>),
    ) {
        self.counters.frames += 1;
        match captured(decode(link, data, cut), ts, self.ports) {
            Ok(packet) => {
                match &packet {
                    Captured::Fragment(_) => self.counters.fragments += 1,
                    Captured::Segment(s) if s.dir == Direction::ToServer => {
                        self.counters.segments += 1;
                    }
                    _ => self.counters.server_segments += 1,
                }
                on_packet(packet);
            }
            Err(Skipped::NotOurs) => self.counters.ignored += 1,
            Err(Skipped::Undecodable) => self.counters.undecodable += 1,
        }
    }
}

/// Why a frame gives the pipeline nothing.
enum Skipped {
    /// Another protocol, or TCP on no analysed port.
    NotOurs,
    Undecodable,
}

/// What a decoded frame gives the pipeline: a segment of an analysed connection, or a
/// fragment to put back together.
#[inline]
fn captured<'a>(decoded: Decoded<'a>, ts: Nanos, ports: &[u16]) -> Result<Captured<'a>, Skipped> {
    match decoded {
        Decoded::Tcp(tcp) => tcp_segment(
            ts,
            tcp.src,
            tcp.dst,
            tcp.header.slice(),
            tcp.payload,
            tcp.wire_len,
            ports,
        )
        .map(Captured::Segment)
        .ok_or(Skipped::NotOurs),
        Decoded::Fragment(fragment) => Ok(Captured::Fragment(Fragment { ts, ..fragment })),
        Decoded::NotTcp => Err(Skipped::NotOurs),
        Decoded::Undecodable => Err(Skipped::Undecodable),
    }
}

/// Decodes a raw IP packet (IPv4 or IPv6, any extension headers) into what it carries
/// for the pipeline: the decoder of capture files, for packets the kernel program could
/// not walk itself.
pub fn decode_ip<'a>(ts: Nanos, packet: &'a [u8], cut: u32, ports: &[u16]) -> Option<Captured<'a>> {
    captured(decode(DataLink::RAW, packet, cut), ts, ports).ok()
}

/// Decodes an Ethernet frame (a segment the kernel held) into what it carries for the
/// pipeline: the decoder of capture files.
pub fn decode_frame<'a>(
    ts: Nanos,
    frame: &'a [u8],
    cut: u32,
    ports: &[u16],
) -> Option<Captured<'a>> {
    captured(decode(DataLink::ETHERNET, frame, cut), ts, ports).ok()
}

/// A decoded TCP segment of a frame.
struct TcpView<'a> {
    src: IpAddr,
    dst: IpAddr,
    header: TcpHeaderSlice<'a>,
    /// The payload bytes the capture kept.
    payload: &'a [u8],
    /// The payload length on the wire.
    wire_len: u32,
}

enum Decoded<'a> {
    Tcp(TcpView<'a>),
    /// An IP fragment of a TCP datagram (its time is set by the caller).
    Fragment(Fragment<'a>),
    /// Another protocol: not ours to look at.
    NotTcp,
    /// Cut or broken below TCP.
    Undecodable,
}

const ETHERNET_HEADER_LEN: usize = 14;
const IPV6_HEADER_LEN: usize = 40;

/// Decodes a frame down to TCP. The common shapes (Ethernet, cooked or raw framing; IPv4
/// or IPv6 without extension headers) go through etherparse's header slices, which cost
/// a few bounds checks; everything else (VLAN tags, IPv6 extension headers) through its
/// lax full slicer.
fn decode(link: DataLink, data: &[u8], cut: u32) -> Decoded<'_> {
    let l3 = match link {
        DataLink::ETHERNET => data.get(12..14).zip(data.get(ETHERNET_HEADER_LEN..)),
        DataLink::LINUX_SLL => data.get(14..16).zip(data.get(SLL_HEADER_LEN..)),
        DataLink::LINUX_SLL2 => data.get(0..2).zip(data.get(SLL2_HEADER_LEN..)),
        _ => None,
    };
    let l3 = match l3 {
        Some((ether_type, l3)) => match u16::from_be_bytes([ether_type[0], ether_type[1]]) {
            0x0800 | 0x86dd => Some(l3),
            _ => None,
        },
        None => match link {
            DataLink::NULL | DataLink::LOOP => data.get(NULL_HEADER_LEN..),
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Some(data),
            _ => None,
        },
    };
    let fast = l3.and_then(|l3| match l3.first().map(|b| b >> 4) {
        Some(4) => decode_ipv4(l3),
        Some(6) => decode_ipv6(l3),
        _ => None,
    });
    fast.unwrap_or_else(|| decode_lax(link, data, cut))
}

/// `None`: not a shape the fast path knows; the lax slicer decides.
fn decode_ipv4(l3: &[u8]) -> Option<Decoded<'_>> {
    let Ok(ip) = Ipv4HeaderSlice::from_slice(l3) else {
        return Some(Decoded::Undecodable);
    };
    if ip.protocol() != etherparse::IpNumber::TCP {
        return Some(Decoded::NotTcp);
    }
    let header_len = ip.slice().len();
    let total = usize::from(ip.total_len()).max(header_len);
    let payload = l3.get(header_len..total.min(l3.len()))?;
    let (src, dst) = (
        IpAddr::V4(ip.source_addr()),
        IpAddr::V4(ip.destination_addr()),
    );
    if ip.is_fragmenting_payload() {
        return Some(Decoded::Fragment(Fragment {
            ts: 0,
            src,
            dst,
            id: u32::from(ip.identification()),
            offset: u32::from(ip.fragments_offset().byte_offset()),
            more: ip.more_fragments(),
            payload,
            wire_len: (total - header_len) as u32,
        }));
    }
    Some(tcp_in(src, dst, payload, total - header_len))
}

fn decode_ipv6(l3: &[u8]) -> Option<Decoded<'_>> {
    let Ok(ip) = Ipv6HeaderSlice::from_slice(l3) else {
        return Some(Decoded::Undecodable);
    };
    if ip.next_header() != etherparse::IpNumber::TCP {
        return None; // Extension headers (or not TCP): the lax slicer walks them.
    }
    let wire = usize::from(ip.payload_length());
    let payload = l3.get(IPV6_HEADER_LEN..(IPV6_HEADER_LEN + wire).min(l3.len()))?;
    let (src, dst) = (
        IpAddr::V6(ip.source_addr()),
        IpAddr::V6(ip.destination_addr()),
    );
    Some(tcp_in(src, dst, payload, wire))
}

fn tcp_in<'a>(
    src: IpAddr,
    dst: IpAddr,
    ip_payload: &'a [u8],
    wire_ip_payload: usize,
) -> Decoded<'a> {
    let Ok(header) = TcpHeaderSlice::from_slice(ip_payload) else {
        return Decoded::Undecodable;
    };
    let header_len = header.slice().len();
    Decoded::Tcp(TcpView {
        src,
        dst,
        payload: &ip_payload[header_len..],
        wire_len: wire_ip_payload.saturating_sub(header_len) as u32,
        header,
    })
}

fn decode_lax(link: DataLink, data: &[u8], cut: u32) -> Decoded<'_> {
    let Some(packet) = slice_frame(link, data) else {
        return Decoded::Undecodable;
    };
    let (src, dst, ip_payload) = match &packet.net {
        Some(LaxNetSlice::Ipv4(ip)) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
            ip.payload(),
        ),
        Some(LaxNetSlice::Ipv6(ip)) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
            ip.payload(),
        ),
        _ => return Decoded::NotTcp,
    };
    if ip_payload.ip_number != etherparse::IpNumber::TCP {
        return Decoded::NotTcp;
    }
    if ip_payload.fragmented {
        let fragment = |id: u32, offset: u16, more: bool| {
            let payload = ip_payload.payload;
            let missing = if ip_payload.incomplete { cut } else { 0 };
            Decoded::Fragment(Fragment {
                ts: 0,
                src,
                dst,
                id,
                offset: u32::from(offset),
                more,
                payload,
                wire_len: (payload.len() as u32).saturating_add(missing),
            })
        };
        return match &packet.net {
            Some(LaxNetSlice::Ipv4(ip)) => {
                let h = ip.header();
                fragment(
                    u32::from(h.identification()),
                    h.fragments_offset().byte_offset(),
                    h.more_fragments(),
                )
            }
            Some(LaxNetSlice::Ipv6(ip)) => ip
                .extensions()
                .clone()
                .into_iter()
                .find_map(|ext| match ext {
                    Ipv6ExtensionSlice::Fragment(f) => Some(fragment(
                        f.identification(),
                        f.fragment_offset().byte_offset(),
                        f.more_fragments(),
                    )),
                    _ => None,
                })
                .unwrap_or(Decoded::Undecodable),
            _ => Decoded::Undecodable,
        };
    }
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return Decoded::Undecodable;
    };
    let Ok(header) = TcpHeaderSlice::from_slice(tcp.slice()) else {
        return Decoded::Undecodable;
    };
    let payload = tcp.payload();
    let missing = if ip_payload.incomplete { cut } else { 0 };
    Decoded::Tcp(TcpView {
        src,
        dst,
        header,
        payload,
        wire_len: (payload.len() as u32).saturating_add(missing),
    })
}

/// Linux cooked capture headers (`tcpdump -i any`): v1 is 16 bytes with the protocol
/// at offset 14, v2 is 20 bytes with the protocol first.
const SLL_HEADER_LEN: usize = 16;
const SLL2_HEADER_LEN: usize = 20;
/// BSD loopback (DLT_NULL / DLT_LOOP): a 4-byte address family before the IP header.
const NULL_HEADER_LEN: usize = 4;

fn slice_frame(link: DataLink, data: &[u8]) -> Option<LaxSlicedPacket<'_>> {
    match link {
        DataLink::ETHERNET => LaxSlicedPacket::from_ethernet(data).ok(),
        DataLink::LINUX_SLL => {
            let proto = data.get(14..16)?;
            let ether_type = EtherType(u16::from_be_bytes([proto[0], proto[1]]));
            Some(LaxSlicedPacket::from_ether_type(
                ether_type,
                data.get(SLL_HEADER_LEN..)?,
            ))
        }
        DataLink::LINUX_SLL2 => {
            let proto = data.get(0..2)?;
            let ether_type = EtherType(u16::from_be_bytes([proto[0], proto[1]]));
            Some(LaxSlicedPacket::from_ether_type(
                ether_type,
                data.get(SLL2_HEADER_LEN..)?,
            ))
        }
        DataLink::NULL | DataLink::LOOP => {
            LaxSlicedPacket::from_ip(data.get(NULL_HEADER_LEN..)?).ok()
        }
        _ => LaxSlicedPacket::from_ip(data).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, VlanId};

    fn frame(builder_vlan: bool, payload: &[u8]) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2; 6], [4; 6]);
        let mut out = Vec::new();
        if builder_vlan {
            eth.single_vlan(VlanId::try_new(10).unwrap())
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(40000, 80, 7, 1000)
                .write(&mut out, payload)
                .unwrap();
        } else {
            eth.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(40000, 80, 7, 1000)
                .write(&mut out, payload)
                .unwrap();
        }
        out
    }

    fn tcp_of(d: Decoded<'_>) -> (Vec<u8>, u32, u16) {
        match d {
            Decoded::Tcp(t) => (t.payload.to_vec(), t.wire_len, t.header.destination_port()),
            _ => panic!("not decoded as TCP"),
        }
    }

    #[test]
    fn vlan_tagged_frames_take_the_lax_path() {
        let f = frame(true, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            tcp_of(decode(DataLink::ETHERNET, &f, 0)),
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 18, 80)
        );
    }

    #[test]
    fn cut_frames_report_the_wire_length_on_both_paths() {
        let payload = vec![b'x'; 500];
        for vlan in [false, true] {
            let f = frame(vlan, &payload);
            let kept = &f[..f.len() - 400];
            let (got, wire, _) = tcp_of(decode(DataLink::ETHERNET, kept, 400));
            assert_eq!((got.len(), wire), (100, 500), "vlan: {vlan}");
        }
    }

    #[test]
    fn non_tcp_and_broken_frames() {
        let mut udp = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(53, 53)
            .write(&mut udp, b"x")
            .unwrap();
        assert!(matches!(
            decode(DataLink::ETHERNET, &udp, 0),
            Decoded::NotTcp
        ));
        let f = frame(false, b"abc");
        assert!(matches!(
            decode(DataLink::ETHERNET, &f[..30], 0),
            Decoded::Undecodable
        ));
    }
}
