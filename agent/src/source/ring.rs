//! Capture events from the kernel ring buffer → [`Segment`]s. Pure: the aya plumbing is
//! in `live.rs`, so this conversion is tested without a kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_common::{
    DIRECTION_FRAGMENT, DIRECTION_HELD_FRAME, DIRECTION_RAW_IP, DIRECTION_TO_CLIENT, EventHeader,
};

use crate::Nanos;
use crate::packet::{Captured, Direction, FlowKey, Fragment, segment_from_header};

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct KernelClock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, in nanoseconds.
    offset: i128,
}

impl KernelClock {
    /// Measures the offset now (re-measure now and then: NTP steps the wall clock).
    pub fn measure() -> Self {
        Self {
            offset: i128::from(clock_ns(libc::CLOCK_REALTIME))
                - i128::from(clock_ns(libc::CLOCK_MONOTONIC)),
        }
    }

    /// For tests: a fixed offset.
    pub fn with_offset(offset: i128) -> Self {
        Self { offset }
    }

    pub fn to_wall(&self, ktime_ns: u64) -> Nanos {
        (i128::from(ktime_ns) + self.offset).clamp(0, i128::from(u64::MAX)) as Nanos
    }
}

/// Wall-clock now, in the pipeline's unit.
pub fn wall_clock_now() -> Nanos {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Decodes one ring-buffer record; `None` for a record too short for what it claims.
pub fn packet_from_record<'a>(record: &'a [u8], clock: &KernelClock) -> Option<Captured<'a>> {
    let h = EventHeader::read(record)?;
    let payload = record.get(EventHeader::SIZE..EventHeader::SIZE + usize::from(h.copied))?;
    let ip = |a: [u8; 16]| match h.family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    };
    if h.direction == DIRECTION_HELD_FRAME {
        return Some(Captured::HeldFrame {
            ts: clock.to_wall(h.ktime_ns),
            frame: payload,
            cut: h.wire_len.saturating_sub(u32::from(h.copied)),
        });
    }
    if h.direction == DIRECTION_RAW_IP {
        return Some(Captured::RawIp {
            ts: clock.to_wall(h.ktime_ns),
            packet: payload,
            cut: h.wire_len.saturating_sub(u32::from(h.copied)),
        });
    }
    if h.direction == DIRECTION_FRAGMENT {
        return Some(Captured::Fragment(Fragment {
            ts: clock.to_wall(h.ktime_ns),
            src: ip(h.client_addr)?,
            dst: ip(h.server_addr)?,
            id: h.frag_id,
            offset: u32::from(h.frag_offset) * 8,
            more: h.frag_more != 0,
            payload,
            wire_len: h.wire_len.max(u32::from(h.copied)),
        }));
    }
    let tcp = h.tcp.get(..usize::from(h.tcp_len))?;
    if tcp.len() < 20 {
        return None;
    }
    let (client, server) = (ip(h.client_addr)?, ip(h.server_addr)?);
    let dir = if h.direction == DIRECTION_TO_CLIENT {
        Direction::ToClient
    } else {
        Direction::ToServer
    };
    let flow = FlowKey {
        client: SocketAddr::new(client, h.client_port),
        server: SocketAddr::new(server, h.server_port),
    };
    Some(Captured::Segment(segment_from_header(
        clock.to_wall(h.ktime_ns),
        flow,
        dir,
        tcp,
        payload,
        h.wire_len,
        h.csum_verified != 0,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Checksum;

    fn record(family: u8, copied: u16, wire_len: u32, payload: &[u8]) -> Vec<u8> {
        let mut client = [0u8; 16];
        let mut server = [0u8; 16];
        if family == 4 {
            client[..4].copy_from_slice(&[10, 0, 0, 1]);
            server[..4].copy_from_slice(&[10, 0, 0, 2]);
        } else {
            client = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
            server = "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets();
        }
        let mut tcp = [0u8; 64];
        tcp[4..8].copy_from_slice(&77u32.to_be_bytes());
        tcp[8..12].copy_from_slice(&5u32.to_be_bytes());
        tcp[12] = 6 << 4;
        tcp[13] = agent_common::TCP_SYN | 0x10;
        tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
        tcp[20..24].copy_from_slice(&[1, 3, 3, 7]); // NOP, window scale 7
        let h = EventHeader {
            ktime_ns: 5_000,
            client_addr: client,
            server_addr: server,
            client_port: 40_000,
            server_port: 80,
            wire_len,
            copied,
            family,
            direction: 0,
            truncated: u8::from(u32::from(copied) < wire_len),
            csum_verified: 1,
            tcp_len: 24,
            _pad: 0,
            tcp,
            frag_id: 0,
            frag_offset: 0,
            frag_more: 0,
            _pad2: 0,
        };
        // SAFETY (test): viewing a plain-data header as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&h as *const EventHeader).cast::<u8>(), EventHeader::SIZE)
        };
        let mut r = bytes.to_vec();
        r.extend_from_slice(payload);
        r.resize(EventHeader::SIZE + 4096, 0);
        r
    }

    #[test]
    fn ipv4_and_ipv6_records_become_segments() {
        let clock = KernelClock::with_offset(1_000);
        let r = record(4, 3, 10, b"GET");
        let Some(Captured::Segment(s)) = packet_from_record(&r, &clock) else {
            panic!("not a segment")
        };
        assert_eq!(s.flow.client, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(s.flow.server, "10.0.0.2:80".parse().unwrap());
        assert_eq!(
            (s.payload, s.wire_len, s.seq, s.ts),
            (&b"GET"[..], 10, 77, 6_000)
        );
        assert!(s.flags.syn && s.flags.ack && !s.flags.fin);
        assert_eq!((s.ack, s.window, s.wscale), (5, 1024, Some(7)));
        assert_eq!(s.checksum, Checksum::Valid);
        let r = record(6, 0, 0, b"");
        let Some(Captured::Segment(s)) = packet_from_record(&r, &clock) else {
            panic!("not a segment")
        };
        assert_eq!(s.flow.client, "[2001:db8::1]:40000".parse().unwrap());
    }

    #[test]
    fn short_or_bad_records_are_refused() {
        let clock = KernelClock::with_offset(0);
        assert!(packet_from_record(&[0u8; 10], &clock).is_none());
        let mut r = record(4, 3, 3, b"GET");
        r.truncate(EventHeader::SIZE + 2);
        assert!(packet_from_record(&r, &clock).is_none());
        assert!(packet_from_record(&record(5, 0, 0, b""), &clock).is_none());
    }
}
