//! pcap / pcapng replay: frames (Ethernet, Linux cooked capture v1/v2, raw IP, BSD
//! loopback; IPv4 and IPv6) decoded with etherparse into client → server [`Segment`]s.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};

use etherparse::{EtherType, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};

use super::{FlowKey, Segment, TcpFlags};
use crate::Nanos;

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("cannot read the capture: {0}")]
    Io(#[from] std::io::Error),
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
    /// Frames that are not TCP to an analysed port (other traffic, server → client).
    pub ignored: u64,
    /// Frames that could not be decoded down to TCP (truncated headers, IP fragments).
    pub undecodable: u64,
    /// The file ended inside a packet record (a capture that was cut off).
    pub truncated_file: bool,
}

/// Reads every frame of a pcap or pcapng stream and calls `on_segment` for each TCP
/// segment sent to one of `ports`.
pub fn for_each_segment<R: Read>(
    reader: R,
    ports: &[u16],
    mut on_segment: impl FnMut(Segment<'_>),
) -> Result<PcapCounters, PcapError> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let magic = reader
        .fill_buf()?
        .get(..4)
        .map(|m| [m[0], m[1], m[2], m[3]]);
    let mut decoder = Decoder {
        ports,
        counters: PcapCounters::default(),
    };
    if magic == Some([0x0a, 0x0d, 0x0d, 0x0a]) {
        read_pcapng(reader, &mut decoder, &mut on_segment)?;
    } else {
        read_pcap(reader, &mut decoder, &mut on_segment)?;
    }
    Ok(decoder.counters)
}

fn read_pcap<R: Read>(
    reader: R,
    decoder: &mut Decoder<'_>,
    on_segment: &mut impl FnMut(Segment<'_>),
) -> Result<(), PcapError> {
    let mut pcap = PcapReader::new(reader).map_err(PcapError::Format)?;
    let header = pcap.header();
    check_link(header.datalink)?;
    let frac_nanos: u64 = match header.ts_resolution {
        pcap_file::TsResolution::MicroSecond => 1_000,
        pcap_file::TsResolution::NanoSecond => 1,
    };
    // Raw records: pcap-file 2.0 refuses packets whose wire length exceeds the file's
    // snaplen, which is exactly what a `tcpdump -s N` capture holds
    // (courvoif/pcap-file#36, fixed after 2.0.0).
    while let Some(packet) = pcap.next_raw_packet() {
        match packet {
            Ok(p) => {
                let ts = u64::from(p.ts_sec) * 1_000_000_000 + u64::from(p.ts_frac) * frac_nanos;
                let cut = p.orig_len.saturating_sub(p.data.len() as u32);
                decoder.frame(header.datalink, ts, &p.data, cut, on_segment);
            }
            Err(e) => return decoder.end_of_file(e),
        }
    }
    Ok(())
}

fn read_pcapng<R: Read>(
    reader: R,
    decoder: &mut Decoder<'_>,
    on_segment: &mut impl FnMut(Segment<'_>),
) -> Result<(), PcapError> {
    let mut pcapng = PcapNgReader::new(reader).map_err(PcapError::Format)?;
    // Per interface: link type and nanoseconds per timestamp unit.
    let mut interfaces: Vec<(DataLink, u64)> = Vec::new();
    while let Some(block) = pcapng.next_block() {
        let block = match block {
            Ok(b) => b,
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
                decoder.frame(link, raw.saturating_mul(unit), &epb.data, cut, on_segment);
            }
            Block::SimplePacket(spb) => {
                // No timestamp in a simple packet block: it inherits "unknown" (0).
                let link = interfaces
                    .first()
                    .map(|i| i.0)
                    .unwrap_or(DataLink::ETHERNET);
                let cut = spb.original_len.saturating_sub(spb.data.len() as u32);
                decoder.frame(link, 0, &spb.data, cut, on_segment);
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
            pcap_file::PcapError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.counters.truncated_file = true;
                Ok(())
            }
            pcap_file::PcapError::IoError(io) => Err(PcapError::Io(io)),
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
        on_segment: &mut impl FnMut(Segment<'_>),
    ) {
        self.counters.frames += 1;
        let Some(packet) = slice_frame(link, data) else {
            self.counters.undecodable += 1;
            return;
        };
        let (src, dst, payload_incomplete) = match &packet.net {
            Some(LaxNetSlice::Ipv4(ip)) => {
                let h = ip.header();
                let p = ip.payload();
                if p.fragmented {
                    self.counters.undecodable += 1;
                    return;
                }
                (
                    IpAddr::V4(h.source_addr()),
                    IpAddr::V4(h.destination_addr()),
                    p.incomplete,
                )
            }
            Some(LaxNetSlice::Ipv6(ip)) => {
                let h = ip.header();
                let p = ip.payload();
                if p.fragmented {
                    self.counters.undecodable += 1;
                    return;
                }
                (
                    IpAddr::V6(h.source_addr()),
                    IpAddr::V6(h.destination_addr()),
                    p.incomplete,
                )
            }
            _ => {
                self.counters.ignored += 1;
                return;
            }
        };
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            // Not TCP, or a TCP header the capture cut.
            if matches!(packet.net.as_ref().and_then(|n| n.ip_payload_ref()), Some(p) if p.ip_number == etherparse::IpNumber::TCP)
            {
                self.counters.undecodable += 1;
            } else {
                self.counters.ignored += 1;
            }
            return;
        };
        let server_port = tcp.destination_port();
        if !self.ports.contains(&server_port) {
            self.counters.ignored += 1;
            return;
        }
        self.counters.segments += 1;
        let payload = tcp.payload();
        let missing = if payload_incomplete { cut } else { 0 };
        on_segment(Segment {
            ts,
            flow: FlowKey {
                client: SocketAddr::new(src, tcp.source_port()),
                server: SocketAddr::new(dst, server_port),
            },
            seq: tcp.sequence_number(),
            flags: TcpFlags {
                syn: tcp.syn(),
                fin: tcp.fin(),
                rst: tcp.rst(),
            },
            payload,
            wire_len: (payload.len() as u32).saturating_add(missing),
        });
    }
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
