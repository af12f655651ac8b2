//! Arbitrary TCP segment streams on one connection, both directions, after a real
//! handshake: the reassembler's rules (windows, overlaps, resets, urgent data) and the
//! HTTP extraction behind them. Each record: a control byte (direction, SYN, FIN, RST,
//! URG, ACK), a 16-bit sequence offset, a 16-bit acknowledgment offset, a length byte,
//! then that many payload bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcap_file::pcap::{PcapPacket, PcapWriter};
use seqshield_fuzz::{PORT, bank_config, bank_pipeline};

const CLIENT_ISN: u32 = 1_000;
const SERVER_ISN: u32 = 5_000;

fn frame(to_server: bool, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let (src, dst, sport, dport) = if to_server {
        ([10, 0, 0, 2], [10, 0, 0, 1], 40_000, PORT)
    } else {
        ([10, 0, 0, 1], [10, 0, 0, 2], PORT, 40_000)
    };
    let mut b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 65_535);
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x04 != 0 {
        b = b.fin();
    }
    if flags & 0x08 != 0 {
        b = b.rst();
    }
    if flags & 0x10 != 0 {
        b = b.urg(1);
    }
    if flags & 0x20 != 0 {
        b = b.ack(ack);
    }
    let mut out = Vec::new();
    let _ = b.write(&mut out, payload);
    out
}

fuzz_target!(|data: &[u8]| {
    let mut frames = vec![
        frame(true, CLIENT_ISN, 0, 0x02, &[]),
        frame(false, SERVER_ISN, CLIENT_ISN + 1, 0x22, &[]),
        frame(true, CLIENT_ISN + 1, SERVER_ISN + 1, 0x20, &[]),
    ];
    let mut rest = data;
    while let [ctl, s0, s1, a0, a1, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        let to_server = ctl & 0x01 == 0;
        let (base, peer) = if to_server {
            (CLIENT_ISN + 1, SERVER_ISN + 1)
        } else {
            (SERVER_ISN + 1, CLIENT_ISN + 1)
        };
        let seq = base.wrapping_add(u32::from(u16::from_le_bytes([*s0, *s1])));
        let ack = peer.wrapping_add(u32::from(u16::from_le_bytes([*a0, *a1])));
        frames.push(frame(to_server, seq, ack, *ctl, payload));
        rest = next;
    }
    let mut file = Vec::new();
    {
        let Ok(mut writer) = PcapWriter::new(&mut file) else {
            return;
        };
        for (i, f) in frames.iter().enumerate() {
            let ts = std::time::Duration::from_micros(1_000 * i as u64);
            let _ = writer.write_packet(&PcapPacket::new(ts, f.len() as u32, f));
        }
    }
    let config = bank_config();
    let mut pipeline = bank_pipeline(&config);
    let mut alerts = Vec::new();
    let _ = pipeline.replay_pcap(&file, &[PORT], &mut alerts);
});
