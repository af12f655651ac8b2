//! The least work any exact HTTP replay does, for `cargo xtask bench-replay`: walk a
//! capture's records, decode each frame's Ethernet/IP/TCP headers and run httparse on
//! every client segment's payload — no reassembly, no checksums, no sessions, nothing
//! kept. Its time against the read floor and against `seqshield replay` says how much
//! of the replay is bound to decoding and parsing on this machine.
//! Usage: parse_floor CAPTURE.pcap PORT... (prints the request heads parsed).

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapParser;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, capture, ports @ ..] = args.as_slice() else {
        eprintln!("usage: parse_floor CAPTURE.pcap PORT...");
        std::process::exit(2);
    };
    let ports: Vec<u16> = ports.iter().map(|p| p.parse().expect("PORT")).collect();
    // Mapped and populated, as `seqshield replay` reads a capture (nothing writes the
    // file while it is mapped).
    let file = std::fs::File::open(capture).expect("open the capture");
    let bytes = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.expect("map it");
    let (mut rest, parser) = PcapParser::new(&bytes).expect("a pcap file");
    let mut requests = 0u64;
    while !rest.is_empty() {
        let (next, packet) = parser.next_packet(rest).expect("a pcap record");
        rest = next;
        let Ok(frame) = SlicedPacket::from_ethernet(&packet.data) else {
            continue;
        };
        let (Some(NetSlice::Ipv4(_) | NetSlice::Ipv6(_)), Some(TransportSlice::Tcp(tcp))) =
            (&frame.net, &frame.transport)
        else {
            continue;
        };
        if !ports.contains(&tcp.destination_port()) || tcp.payload().is_empty() {
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(_)) = request.parse(tcp.payload()) {
            requests += 1;
        }
    }
    println!("{requests}");
}
