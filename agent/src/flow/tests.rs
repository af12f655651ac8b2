//! The reassembler against what Linux's receive path does with each shape of segment.

use super::*;
use crate::packet::TcpFlags;

fn key() -> FlowKey {
    FlowKey {
        client: "10.0.0.1:40000".parse().unwrap(),
        server: "10.0.0.2:80".parse().unwrap(),
    }
}

const ISN: u32 = 99;
const SERVER_ISN: u32 = 5000;
const MS: Nanos = 1_000_000;

const SYN: TcpFlags = TcpFlags {
    syn: true,
    fin: false,
    rst: false,
    ack: false,
    urg: false,
};
const ACK: TcpFlags = TcpFlags {
    syn: false,
    fin: false,
    rst: false,
    ack: true,
    urg: false,
};
const FIN: TcpFlags = TcpFlags { fin: true, ..ACK };
const RST: TcpFlags = TcpFlags {
    rst: true,
    ack: false,
    ..ACK
};
const SYN_ACK: TcpFlags = TcpFlags { syn: true, ..ACK };

/// A client data segment (ACK set, acknowledging the server's SYN).
fn seg(ts: Nanos, seq: u32, flags: TcpFlags, payload: &[u8]) -> Segment<'_> {
    Segment {
        ts,
        flow: key(),
        seq,
        ack: SERVER_ISN + 1,
        flags,
        window: 512,
        payload,
        wire_len: payload.len() as u32,
        ..Segment::default()
    }
}

/// A server segment with header facts only.
fn srv(ts: Nanos, ack: u32, window: u16, flags: TcpFlags) -> Segment<'static> {
    Segment {
        ts,
        flow: key(),
        dir: Direction::ToClient,
        seq: SERVER_ISN + u32::from(!flags.syn),
        ack,
        flags,
        window,
        ..Segment::default()
    }
}

/// Handshake with a 64 KiB unscaled window.
fn handshake() -> Vec<Segment<'static>> {
    vec![
        seg(0, ISN, SYN, b""),
        Segment {
            seq: SERVER_ISN,
            ..srv(0, ISN + 1, 65_535, SYN_ACK)
        },
    ]
}

/// Collects what the consumer sees, as text with gaps marked.
#[derive(Default)]
struct Seen(String);

struct Run {
    out: String,
    stats: FlowStats,
    live: usize,
}

fn run(segments: &[Segment<'_>]) -> Run {
    run_with(FlowTable::default(), segments)
}

fn run_with(mut table: FlowTable<Seen>, segments: &[Segment<'_>]) -> Run {
    let mut out = String::new();
    for s in segments {
        table.push(
            s,
            &mut |app: &mut Seen, _k: &FlowKey, piece: Piece<'_>| match piece {
                Piece::Data(d) => app.0.push_str(&String::from_utf8_lossy(d)),
                Piece::Gap(n) => app.0.push_str(&format!("<gap {n:?}>")),
                Piece::Confirmed => {}
            },
        );
        if let Some(f) = table.flows.get(&key())
            && !f.closed
        {
            out = f.app.0.clone();
        }
    }
    let live = table.flows.values().filter(|f| !f.closed).count();
    Run {
        out,
        stats: table.stats(),
        live,
    }
}

fn with_handshake(rest: Vec<Segment<'_>>) -> Vec<Segment<'_>> {
    let mut all = handshake();
    all.extend(rest);
    all
}

#[test]
fn in_order_with_handshake() {
    let r = run(&with_handshake(vec![
        seg(1, 100, ACK, b"abc"),
        seg(2, 103, ACK, b"def"),
    ]));
    assert_eq!(r.out, "abcdef");
    assert_eq!(r.stats.flows_opened, 1);
    assert_eq!(r.stats.server_segments, 1);
}

#[test]
fn retransmission_is_delivered_once_and_the_first_bytes_stay() {
    let r = run(&with_handshake(vec![
        seg(1, 100, ACK, b"abc"),
        seg(2, 100, ACK, b"XYZ"),
        seg(3, 101, ACK, b"QRdef"),
    ]));
    assert_eq!(r.out, "abcdef");
    assert_eq!(r.stats.retransmitted_segments, 1);
}

#[test]
fn out_of_order_waits_for_the_hole() {
    let r = run(&with_handshake(vec![
        seg(1, 103, ACK, b"def"),
        seg(2, 106, ACK, b"ghi"),
        seg(3, 100, ACK, b"abc"),
    ]));
    assert_eq!(r.out, "abcdefghi");
    assert_eq!(r.stats.out_of_order_segments, 2);
    assert_eq!(r.stats.gaps, 0);
}

#[test]
fn a_hole_is_kept_while_the_server_waits_for_it() {
    // The first segment held back for 10 s: the server still delivers it all.
    let late = 10_000 * MS;
    let r = run(&with_handshake(vec![
        seg(1, 103, ACK, b"def"),
        srv(2, 100, 65_535, ACK),
        seg(late, 100, ACK, b"abc"),
    ]));
    assert_eq!(r.out, "abcdef");
    assert_eq!(r.stats.gaps, 0);
}

#[test]
fn a_hole_the_server_acknowledged_is_capture_loss() {
    let r = run(&with_handshake(vec![
        seg(1, 100, ACK, b"abc"),
        seg(2, 106, ACK, b"ghi"),
        srv(3, 109, 65_535, ACK),
    ]));
    assert_eq!(r.out, "abc<gap Some(3)>ghi");
    assert_eq!((r.stats.gaps, r.stats.capture_loss_bytes), (1, 3));
}

#[test]
fn one_sided_holes_fall_back_to_the_timer() {
    let late = GAP_TIMEOUT + 10;
    let r = run(&[
        seg(0, ISN, SYN, b""),
        seg(1, 100, ACK, b"abc"),
        seg(2, 106, ACK, b"ghi"),
        seg(late, 109, ACK, b"jkl"),
    ]);
    assert_eq!(r.out, "abc<gap Some(3)>ghijkl");
    assert_eq!((r.stats.gaps, r.stats.gaps_timed_out), (1, 1));
}

#[test]
fn capture_loss_brings_the_timer_back() {
    let mut table: FlowTable<Seen> = FlowTable::default();
    let mut sink = |app: &mut Seen, _: &FlowKey, piece: Piece<'_>| {
        if let Piece::Data(d) = piece {
            app.0.push_str(&String::from_utf8_lossy(d));
        }
    };
    for s in with_handshake(vec![seg(1, 100, ACK, b"abc"), seg(2, 106, ACK, b"ghi")]) {
        table.push(&s, &mut sink);
    }
    table.sweep(GAP_TIMEOUT * 3, &mut sink);
    assert_eq!(table.stats().gaps, 0, "the server's ACK can still tell");
    table.set_capture_loss(1);
    table.sweep(GAP_TIMEOUT * 6, &mut sink);
    assert_eq!(table.stats().gaps_timed_out, 1);
    assert_eq!(table.flows[&key()].app.0, "abcghi");
}

#[test]
fn mid_stream_start_is_announced() {
    let r = run(&[seg(0, 5000, ACK, b"xyz")]);
    assert_eq!(r.out, "<gap None>xyz");
}

#[test]
fn snaplen_cut_is_a_known_gap() {
    let mut s = seg(1, 100, ACK, b"ab");
    s.wire_len = 10;
    let r = run(&with_handshake(vec![s, seg(2, 110, ACK, b"z")]));
    assert_eq!(r.out, "ab<gap Some(8)>z");
}

#[test]
fn fin_closes_and_late_retransmissions_do_not_reopen() {
    let r = run(&with_handshake(vec![
        seg(1, 100, FIN, b"abc"),
        seg(2, 100, ACK, b"abc"),
        seg(3, 100, ACK, b"abc"),
    ]));
    assert_eq!((r.stats.flows_closed, r.live), (1, 0));
    assert_eq!(r.stats.flows_opened, 1);
    assert_eq!(r.stats.after_close_segments, 2);
    // A new SYN on the same ports is a new connection.
    let mut segs = with_handshake(vec![seg(1, 100, FIN, b"abc")]);
    segs.push(seg(2, 7_000, SYN, b""));
    segs.push(seg(3, 7_001, ACK, b"new"));
    let r = run(&segs);
    assert_eq!((r.stats.flows_opened, r.out.as_str()), (2, "new"));
}

#[test]
fn only_a_reset_at_the_next_byte_resets() {
    let r = run(&with_handshake(vec![
        seg(1, 100, ACK, b"abc"),
        seg(2, 104, RST, b""),    // in window, not exact: challenge ACK
        seg(3, 90_000, RST, b""), // out of window
        seg(4, 103, ACK, b"def"),
    ]));
    assert_eq!(r.out, "abcdef");
    assert_eq!(r.stats.ignored_resets, 1);
    assert_eq!(r.stats.out_of_window_segments, 1);
    let r = run(&with_handshake(vec![
        seg(1, 100, ACK, b"abc"),
        seg(2, 103, RST, b""),
    ]));
    assert_eq!((r.stats.flows_closed, r.live), (1, 0));
}

#[test]
fn a_syn_on_an_open_connection_is_ignored_unless_the_server_answers_it() {
    let r = run(&with_handshake(vec![
        seg(1, 100, ACK, b"GET /a"),
        seg(2, 1_000_000, SYN, b""),
        seg(3, 106, ACK, b" HTTP"),
    ]));
    assert_eq!(r.out, "GET /a HTTP");
    assert_eq!(r.stats.ignored_syns, 1);
    // The server's SYN-ACK for it: a new connection on the same ports.
    let r = run(&with_handshake(vec![
        seg(1, 100, ACK, b"old"),
        seg(2, 1_000_000, SYN, b""),
        Segment {
            seq: 9_999,
            ..srv(3, 1_000_001, 65_535, SYN_ACK)
        },
        Segment {
            ack: 10_000,
            ..seg(4, 1_000_001, ACK, b"new")
        },
    ]));
    assert_eq!(r.out, "new");
    assert_eq!(r.stats.flows_opened, 2);
    // One-sided: the answer cannot be seen, the new ISN is a new connection.
    let r = run(&[
        seg(0, ISN, SYN, b""),
        seg(1, 100, ACK, b"old"),
        seg(2, 1_000_000, SYN, b""),
        seg(3, 1_000_001, ACK, b"new"),
    ]);
    assert_eq!(r.out, "new");
}

#[test]
fn segments_outside_the_window_are_not_data() {
    // Window 1000 from 100: a segment starting at 1100 is beyond it.
    let mut segs = vec![
        seg(0, ISN, SYN, b""),
        Segment {
            seq: SERVER_ISN,
            ..srv(0, ISN + 1, 1000, SYN_ACK)
        },
    ];
    segs.extend([
        seg(1, 1100, ACK, b"far"),
        seg(2, 1099, ACK, b"in"),
        seg(3, 100, ACK, b"abc"),
    ]);
    let r = run(&segs);
    assert_eq!(r.out, "abc");
    assert_eq!(r.stats.out_of_window_segments, 1);
    assert_eq!(r.stats.out_of_order_segments, 1, "the in-window one waits");
}

#[test]
fn a_far_ahead_segment_does_not_cost_the_connection() {
    let late = 10 * GAP_TIMEOUT;
    let r = run(&with_handshake(vec![
        seg(1, 100, ACK, b"abc"),
        seg(2, 100 + 10_000_000, ACK, b"junk"),
        seg(late, 103, ACK, b"def"),
    ]));
    assert_eq!(r.out, "abcdef");
    assert_eq!(r.stats.gaps, 0);
}

#[test]
fn segments_the_server_drops_are_not_data() {
    let mut bad = seg(1, 100, ACK, b"EVIL");
    bad.checksum = Checksum::Bad;
    let no_ack = seg(1, 100, TcpFlags { ack: false, ..ACK }, b"EVIL");
    let unsent = Segment {
        ack: SERVER_ISN + 100,
        ..seg(1, 100, ACK, b"EVIL")
    };
    let r = run(&with_handshake(vec![
        bad,
        no_ack,
        unsent,
        seg(2, 100, ACK, b"good"),
    ]));
    assert_eq!(r.out, "good");
    assert_eq!(r.stats.bad_checksum_segments, 1);
    assert_eq!(r.stats.discarded_segments, 2);
}

#[test]
fn paws_drops_a_segment_with_an_old_timestamp() {
    let ts = |s: Segment<'static>, tsval| Segment {
        tsval: Some(tsval),
        ..s
    };
    let segs = vec![
        ts(seg(0, ISN, SYN, b""), 1000),
        ts(
            Segment {
                seq: SERVER_ISN,
                ..srv(0, ISN + 1, 65_535, SYN_ACK)
            },
            7,
        ),
        ts(seg(1, 100, ACK, b"abc"), 1001),
        ts(srv(2, 103, 65_535, ACK), 8),
        // A decoy with an old timestamp (the server drops it), then the real bytes.
        ts(seg(3, 103, ACK, b"EVIL"), 900),
        ts(seg(4, 103, ACK, b"def"), 1002),
    ];
    let r = run(&segs);
    assert_eq!(r.out, "abcdef");
    assert_eq!(r.stats.paws_rejected_segments, 1);
    // Without timestamps on both SYNs there is no PAWS.
    let mut no_ts = segs.clone();
    no_ts[1].tsval = None;
    let r = run(&no_ts);
    assert_eq!(r.out, "abcEVIL");
}

#[test]
fn a_client_that_acknowledged_the_servers_isn_is_confirmed() {
    let confirmed = |segs: &[Segment<'_>]| {
        let mut table: FlowTable<bool> = FlowTable::default();
        for s in segs {
            table.push(s, &mut |app: &mut bool, _: &FlowKey, piece: Piece<'_>| {
                *app |= piece == Piece::Confirmed;
            });
        }
        table.flows.get(&key()).is_some_and(|f| f.app)
    };
    // The real client: its data acknowledges the SYN-ACK.
    assert!(confirmed(&with_handshake(vec![seg(1, 100, ACK, b"GET")])));
    // A blind spoofer guesses the acknowledgment: behind the server's ISN, not confirmed
    // (and one beyond what the server sent is dropped anyway).
    let blind = Segment {
        ack: SERVER_ISN - 5000,
        ..seg(1, 100, ACK, b"GET")
    };
    assert!(!confirmed(&with_handshake(vec![blind])));
    // Joined mid-stream with no server packet yet: not confirmed; after one, a client
    // acknowledging the server's bytes is.
    assert!(!confirmed(&[seg(0, 5000, ACK, b"GET")]));
    assert!(confirmed(&[
        seg(0, 5000, ACK, b"GET"),
        srv(1, 5003, 512, ACK),
        seg(2, 5003, ACK, b" /a"),
    ]));
}

#[test]
fn the_urgent_byte_is_taken_out() {
    let mut urg = seg(1, 100, TcpFlags { urg: true, ..ACK }, b"GETX /a");
    urg.urgent = 4; // Linux: the byte before the pointer, "X".
    let r = run(&with_handshake(vec![urg]));
    assert_eq!(r.out, "GET /a");
    assert_eq!(r.stats.urgent_bytes_removed, 1);
}

#[test]
fn overlaps_resolve_as_linux_queues_them() {
    // Queued [110,115) "AAAAA"; a longer one at the same start replaces it.
    let r = run(&with_handshake(vec![
        seg(1, 110, ACK, b"AAAAA"),
        seg(2, 110, ACK, b"BBBBBBB"),
        seg(3, 100, ACK, b"0123456789"),
    ]));
    assert_eq!(r.out, "0123456789BBBBBBB");
    // One wholly inside a queued one is dropped.
    let r = run(&with_handshake(vec![
        seg(1, 110, ACK, b"AAAAA"),
        seg(2, 111, ACK, b"BB"),
        seg(3, 100, ACK, b"0123456789"),
    ]));
    assert_eq!(r.out, "0123456789AAAAA");
    // Partial overlap: the one that starts first wins the overlapping bytes.
    let r = run(&with_handshake(vec![
        seg(1, 112, ACK, b"CCCC"),
        seg(2, 110, ACK, b"DDDD"),
        seg(3, 100, ACK, b"0123456789"),
    ]));
    assert_eq!(r.out, "0123456789DDDDCC");
    // One that starts earlier and covers a queued one removes it.
    let r = run(&with_handshake(vec![
        seg(1, 112, ACK, b"CC"),
        seg(2, 110, ACK, b"DDDDDD"),
        seg(3, 100, ACK, b"0123456789"),
    ]));
    assert_eq!(r.out, "0123456789DDDDDD");
    // In-order bytes win over queued ones they overlap.
    let r = run(&with_handshake(vec![
        seg(1, 108, ACK, b"QQQQ"),
        seg(2, 100, ACK, b"0123456789"),
    ]));
    assert_eq!(r.out, "0123456789QQ");
}

#[test]
fn a_request_in_seventy_reversed_one_byte_segments_arrives() {
    let text: Vec<u8> = (0..70u8).map(|i| b'a' + i % 26).collect();
    let mut segs = handshake();
    for i in (0..70u32).rev() {
        let at = i as usize;
        segs.push(seg(
            1 + u64::from(70 - i) * MS,
            100 + i,
            ACK,
            &text[at..=at],
        ));
    }
    let r = run(&segs);
    assert_eq!(r.out.as_bytes(), &text[..]);
    assert_eq!(r.stats.gaps, 0);
}

#[test]
fn sequence_numbers_wrap() {
    let r = run(&[
        seg(0, u32::MAX - 1, SYN, b""),
        seg(1, u32::MAX, ACK, b"ab"),
        seg(2, 1, ACK, b"cd"),
    ]);
    assert_eq!(r.out, "abcd");
}

/// A handshake with window scaling on both sides, and the server's window at 65535 << 14:
/// wide enough that out-of-order data is limited by memory bounds alone.
fn open_wide(table: &mut FlowTable<Seen>) {
    let mut sink = |_: &mut Seen, _: &FlowKey, _: Piece<'_>| {};
    let mut syn = seg(0, ISN, SYN, b"");
    syn.wscale = Some(14);
    table.push(&syn, &mut sink);
    let mut synack = srv(0, ISN + 1, 65_535, SYN_ACK);
    synack.seq = SERVER_ISN;
    synack.wscale = Some(14);
    table.push(&synack, &mut sink);
    table.push(&srv(0, ISN + 1, 65_535, ACK), &mut sink);
}

#[test]
fn pending_buffer_is_bounded() {
    let big = vec![b'x'; 1000];
    // A hole at 100..101, then far more waiting data than the cap.
    let far: Vec<Segment<'_>> = (0..1000u32)
        .map(|i| seg(1, 101 + i * 1000, ACK, &big))
        .collect();
    // Two-sided, with a window wide enough: the farthest segments are pruned.
    let mut table: FlowTable<Seen> = FlowTable::default();
    let mut sink = |_: &mut Seen, _: &FlowKey, _: Piece<'_>| {};
    open_wide(&mut table);
    for s in &far {
        table.push(s, &mut sink);
        assert!(table.flows[&key()].pending_bytes <= MAX_PENDING_BYTES);
    }
    assert_eq!(table.stats().gaps, 0);
    assert!(table.stats().pruned_segments > 0);
    // One-sided: the hole is given up instead, counted.
    let mut table: FlowTable<Seen> = FlowTable::default();
    table.push(&seg(0, ISN, SYN, b""), &mut sink);
    for s in &far {
        table.push(s, &mut sink);
        assert!(table.flows[&key()].pending_bytes <= MAX_PENDING_BYTES);
    }
    assert_eq!(table.stats().gaps_forced, 1);
}

#[test]
fn out_of_order_bytes_share_the_buffer_budget() {
    let budget = BufferBudget::new(100_000);
    // What the HTTP stage holds in unfinished heads counts against the same budget.
    let mut heads = crate::budget::Lease::default();
    assert!(heads.set(&budget, 60_000));
    let mut table: FlowTable<Seen> = FlowTable::new(FlowLimits::default(), budget.clone());
    let mut sink = |_: &mut Seen, _: &FlowKey, _: Piece<'_>| {};
    open_wide(&mut table);
    let big = vec![b'x'; 1000];
    for i in 0..100u32 {
        table.push(&seg(1, 101 + i * 1000, ACK, &big), &mut sink);
        assert!(budget.used() <= budget.limit());
    }
    assert!(table.stats().pruned_segments > 50);
    // Filling the hole hands the queue on and gives its bytes back.
    table.push(&seg(2, ISN + 1, ACK, &[b'y'; 100]), &mut sink);
    assert_eq!(budget.used(), 60_000);
}

#[test]
fn flow_table_is_bounded() {
    let mut table: FlowTable<Seen> = FlowTable::new(
        FlowLimits {
            max_flows: 4,
            ..FlowLimits::default()
        },
        BufferBudget::default(),
    );
    for port in 0..100u16 {
        let mut s = seg(u64::from(port), 1, ACK, b"x");
        s.flow.client.set_port(port);
        table.push(&s, &mut |_: &mut Seen, _: &FlowKey, _: Piece<'_>| {});
        assert!(table.len() <= 4);
    }
    assert_eq!(table.stats().flows_evicted, 96);
}

#[test]
fn an_active_connection_survives_a_flood_of_new_ones() {
    let mut table: FlowTable<Seen> = FlowTable::new(
        FlowLimits {
            max_flows: 100,
            ..FlowLimits::default()
        },
        BufferBudget::default(),
    );
    let mut sink = |app: &mut Seen, _: &FlowKey, piece: Piece<'_>| {
        if let Piece::Data(d) = piece {
            app.0.push_str(&String::from_utf8_lossy(d));
        }
    };
    for s in handshake() {
        table.push(&s, &mut sink);
    }
    for i in 0..10_000u32 {
        // One spoofed packet from a new port, then a byte of the real connection.
        let mut flood = seg(u64::from(i), 1, ACK, b"x");
        flood.flow.client.set_port(1 + (i % 60_000) as u16);
        table.push(&flood, &mut sink);
        table.push(&seg(u64::from(i), 100 + i, ACK, b"a"), &mut sink);
        assert!(table.len() <= 100);
        assert!(table.eviction.len() <= 2 * table.len() + 1024);
    }
    assert_eq!(
        table.flows[&key()].app.0.len(),
        10_000,
        "the real connection lost bytes"
    );
}

#[test]
fn a_long_keep_alive_silence_keeps_the_connection() {
    let later = 600 * NANOS_PER_SEC;
    let r = run(&with_handshake(vec![
        seg(1, 100, ACK, b"abc"),
        seg(later, 103, ACK, b"de"),
        seg(later + 1, 105, ACK, b"f"),
    ]));
    assert_eq!(r.out, "abcdef");
    let short = FlowTable::new(
        FlowLimits {
            idle_timeout: 300 * NANOS_PER_SEC,
            ..FlowLimits::default()
        },
        BufferBudget::default(),
    );
    let r = run_with(
        short,
        &with_handshake(vec![seg(1, 100, ACK, b"abc"), seg(later, 103, ACK, b"de")]),
    );
    assert_eq!(r.stats.flows_expired, 1);
    assert_eq!(r.out, "<gap None>de");
}

mod props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A small model of Linux's receive path for one established connection, written
    /// after the kernel's own structure (`tcp_data_queue`, `tcp_data_queue_ofo` over an
    /// ordered tree, `tcp_ofo_queue`), not after `flow.rs`: the property below checks the
    /// reassembler against it. Offsets are relative to the first data byte.
    #[derive(Default)]
    struct LinuxModel {
        rcv_nxt: u32,
        ofo: BTreeMap<u32, Vec<u8>>,
        read: Vec<u8>,
    }

    impl LinuxModel {
        fn data(&mut self, seq: u32, bytes: &[u8]) {
            let end = seq + bytes.len() as u32;
            if end <= self.rcv_nxt {
                return; // All old: a duplicate.
            }
            if seq <= self.rcv_nxt {
                self.read
                    .extend_from_slice(&bytes[(self.rcv_nxt - seq) as usize..]);
                self.rcv_nxt = end;
                self.ofo_queue();
                return;
            }
            // tcp_data_queue_ofo: compare with the node at or before `seq`.
            if let Some((&s1, b1)) = self.ofo.range(..=seq).next_back() {
                let e1 = s1 + b1.len() as u32;
                if seq < e1 {
                    if end <= e1 {
                        return; // All the bits are present.
                    }
                    if seq == s1 {
                        self.ofo.remove(&s1); // Replaced by the longer one.
                    }
                }
            }
            self.ofo.insert(seq, bytes.to_vec());
            // merge_right: drop what the new segment wholly covers.
            while let Some((&s2, b2)) = self.ofo.range(seq + 1..).next() {
                if end <= s2 || end < s2 + b2.len() as u32 {
                    break;
                }
                self.ofo.remove(&s2);
            }
        }

        /// tcp_ofo_queue: move what is now in order to the receive queue.
        fn ofo_queue(&mut self) {
            while let Some((&s, _)) = self.ofo.first_key_value() {
                if s > self.rcv_nxt {
                    break;
                }
                let b = self.ofo.remove(&s).expect("first");
                let end = s + b.len() as u32;
                if end <= self.rcv_nxt {
                    continue;
                }
                self.read
                    .extend_from_slice(&b[(self.rcv_nxt - s) as usize..]);
                self.rcv_nxt = end;
            }
        }
    }

    /// Segments over a 300-byte stream, each a copy of its own ("version" bytes), so
    /// that which copy wins every byte shows; then the whole stream once more so that
    /// every hole fills.
    fn copies() -> impl Strategy<Value = Vec<(u32, u32, u8)>> {
        proptest::collection::vec((0u32..300, 1u32..40, 0u8..20), 1..40)
    }

    /// A stream cut into segments, some sent twice, sent in a shuffled order where
    /// no segment moves far.
    fn mangled(len: usize) -> impl Strategy<Value = (Vec<u8>, Vec<(usize, usize)>)> {
        (
            proptest::collection::vec(1usize..40, 1..60),
            proptest::collection::vec(any::<(u8, bool)>(), 60),
        )
            .prop_map(move |(sizes, noise)| {
                let data: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                let mut cuts = Vec::new();
                let mut at = 0;
                for s in sizes {
                    if at >= len {
                        break;
                    }
                    let end = (at + s).min(len);
                    cuts.push((at, end));
                    at = end;
                }
                if at < len {
                    cuts.push((at, len));
                }
                let mut order: Vec<(usize, usize)> = Vec::new();
                for (i, c) in cuts.iter().enumerate() {
                    let (shift, dup) = noise[i % noise.len()];
                    order.push(*c);
                    if dup {
                        order.push(*c);
                    }
                    let back = usize::from(shift % 4).min(order.len() - 1);
                    let last = order.len() - 1;
                    order.swap(last, last - back);
                }
                (data, order)
            })
    }

    /// Segments the server's stack discards, whatever bytes they carry (Linux's model:
    /// none of them changes what the application reads).
    #[derive(Debug, Clone)]
    enum Hostile {
        BadChecksum(usize),
        BeyondWindow(u32),
        NoAck(usize),
        AckOfUnsentData(usize),
        NotExactReset(u32),
        Syn(u32),
        /// Other bytes for a range already accepted.
        StaleOverwrite(usize),
    }

    fn hostile() -> impl Strategy<Value = Hostile> {
        prop_oneof![
            (0usize..800).prop_map(Hostile::BadChecksum),
            (70_000u32..1_000_000).prop_map(Hostile::BeyondWindow),
            (0usize..800).prop_map(Hostile::NoAck),
            (0usize..800).prop_map(Hostile::AckOfUnsentData),
            (1u32..60_000).prop_map(Hostile::NotExactReset),
            any::<u32>().prop_map(Hostile::Syn),
            (0usize..800).prop_map(Hostile::StaleOverwrite),
        ]
    }

    proptest! {
        #[test]
        fn any_segmentation_duplication_and_reordering_delivers_the_stream_once((data, order) in mangled(800)) {
            let mut table: FlowTable<Vec<u8>> = FlowTable::default();
            let mut sink = |app: &mut Vec<u8>, _: &FlowKey, piece: Piece<'_>| match piece {
                Piece::Data(d) => app.extend_from_slice(d),
                Piece::Gap(_) => panic!("no gap expected"),
                Piece::Confirmed => {}
            };
            for s in handshake() {
                table.push(&s, &mut sink);
            }
            for (a, b) in order {
                table.push(&seg(1, 100 + a as u32, ACK, &data[a..b]), &mut sink);
            }
            let got = table.flows.get(&key()).map(|f| f.app.clone()).unwrap_or_default();
            prop_assert_eq!(got, data);
        }

        #[test]
        fn overlapping_copies_resolve_as_the_linux_model_does(segs in copies()) {
            let mut table: FlowTable<Vec<u8>> = FlowTable::default();
            let mut sink = |app: &mut Vec<u8>, _: &FlowKey, piece: Piece<'_>| match piece {
                Piece::Data(d) => app.extend_from_slice(d),
                Piece::Gap(_) => panic!("no gap expected"),
                Piece::Confirmed => {}
            };
            for s in handshake() {
                table.push(&s, &mut sink);
            }
            let mut model = LinuxModel::default();
            let last = (0u32, 300u32, 99u8);
            for &(at, len, version) in segs.iter().chain([&last]) {
                let len = len.min(300 - at.min(299)).max(1);
                let at = at.min(299);
                let bytes: Vec<u8> = (0..len).map(|i| b'A' + version + (i % 3) as u8).collect();
                table.push(&seg(1, 100 + at, ACK, &bytes), &mut sink);
                model.data(at, &bytes);
            }
            let got = table.flows.get(&key()).map(|f| f.app.clone()).unwrap_or_default();
            prop_assert_eq!(got.len(), 300);
            prop_assert_eq!(got, model.read);
        }

        #[test]
        fn segments_the_server_discards_never_change_the_stream(
            (data, order) in mangled(800),
            attacks in proptest::collection::vec((0usize..80, hostile()), 0..30),
        ) {
            let mut table: FlowTable<Vec<u8>> = FlowTable::default();
            let mut sink = |app: &mut Vec<u8>, _: &FlowKey, piece: Piece<'_>| match piece {
                Piece::Data(d) => app.extend_from_slice(d),
                Piece::Gap(_) => panic!("no gap expected"),
                Piece::Confirmed => {}
            };
            for s in handshake() {
                table.push(&s, &mut sink);
            }
            let junk = [b'#'; 64];
            for (step, (a, b)) in order.into_iter().enumerate() {
                table.push(&seg(1, 100 + a as u32, ACK, &data[a..b]), &mut sink);
                // Bytes delivered so far (the stream is in order).
                let accepted = table.flows[&key()].app.len();
                for (_, attack) in attacks.iter().filter(|(when, _)| *when == step) {
                    let s = match attack.clone() {
                        Hostile::BadChecksum(at) => Segment { checksum: Checksum::Bad, ..seg(1, 100 + at as u32, ACK, &junk) },
                        Hostile::BeyondWindow(d) => seg(1, 100 + d, ACK, &junk),
                        Hostile::NoAck(at) => seg(1, 100 + at as u32, TcpFlags { ack: false, ..ACK }, &junk),
                        Hostile::AckOfUnsentData(at) => Segment { ack: SERVER_ISN + 1_000, ..seg(1, 100 + at as u32, ACK, &junk) },
                        Hostile::NotExactReset(d) => seg(1, 100 + accepted as u32 + d, RST, b""),
                        Hostile::Syn(isn) => seg(1, isn, SYN, b""),
                        Hostile::StaleOverwrite(at) => {
                            let at = at.min(accepted);
                            let len = (accepted - at).min(junk.len());
                            seg(1, 100 + at as u32, ACK, &junk[..len])
                        }
                    };
                    table.push(&s, &mut sink);
                }
            }
            let got = table.flows.get(&key()).map(|f| f.app.clone()).unwrap_or_default();
            prop_assert_eq!(got, data);
        }
    }
}
