//! Property tests over the whole pipeline (pcap → report): the requests a connection
//! carries are found exactly once however the bytes are cut, repeated and reordered, and
//! no input makes the pipeline panic.

use proptest::prelude::*;
use seqshield_tests::bank::{MS, T0};
use seqshield_tests::capture::{Capture, Link};
use seqshield_tests::replay;

const CONFIG: &str = "[capture]\nports = [80]\n[session]\nidentifiers = [{ cookie = \"sid\" }]\n[sequence]\nmin_support = 1\n";

/// Pipelined requests with bodies (Content-Length and chunked) and varied heads.
fn stream() -> Vec<u8> {
    let mut s = Vec::new();
    for i in 0..8 {
        s.extend(
            format!("GET /step/{i}/a HTTP/1.1\r\nHost: api.test\r\nCookie: sid=p\r\n\r\n").bytes(),
        );
        s.extend(
            format!("POST /step/{i}/b HTTP/1.1\r\nHost: api.test\r\nCookie: sid=p\r\nContent-Length: 22\r\n\r\nGET /body HTTP/1.1\r\n\r\n")
                .bytes(),
        );
        s.extend(
            "PUT /c HTTP/1.1\r\nHost: api.test\r\nCookie: sid=p\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nGET \r\n0\r\n\r\n".bytes(),
        );
    }
    s
}

fn capture(stream: &[u8], pieces: &[(usize, usize)]) -> Vec<u8> {
    let mut cap = Capture::new();
    let mut conn = cap.open(T0, "10.0.0.1:40000", "10.0.0.2:80");
    for (i, &(a, b)) in pieces.iter().enumerate() {
        cap.segment(T0 + i as u64 * MS / 10, &conn, a as u32, &stream[a..b]);
    }
    cap.advance(&mut conn, stream.len());
    cap.close(T0 + SECOND, &mut conn);
    cap.to_pcap(Link::Ethernet)
}

const SECOND: u64 = 1_000 * MS;

/// Cut points, then for each piece: sent twice or not, and how far back it moves.
fn mangling() -> impl Strategy<Value = (Vec<usize>, Vec<(bool, u8)>)> {
    (
        proptest::collection::vec(0usize..4000, 0..80),
        proptest::collection::vec(any::<(bool, u8)>(), 100),
    )
}

fn pieces(len: usize, cuts: Vec<usize>, noise: &[(bool, u8)]) -> Vec<(usize, usize)> {
    let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % len).collect();
    cuts.push(0);
    cuts.push(len);
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, w) in cuts.windows(2).enumerate() {
        let (dup, back) = noise[i % noise.len()];
        out.push((w[0], w[1]));
        if dup {
            out.push((w[0], w[1]));
        }
        let back = usize::from(back % 5).min(out.len() - 1);
        let last = out.len() - 1;
        out.swap(last, last - back);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_segmentation_duplication_and_reordering_gives_the_same_report((cuts, noise) in mangling()) {
        let s = stream();
        let (reference, _) = replay(CONFIG, &capture(&s, &[(0, s.len())]));
        prop_assert_eq!(reference.stats.requests, 24);
        prop_assert_eq!(reference.stats.parse_errors, 0);
        let (report, _) = replay(CONFIG, &capture(&s, &pieces(s.len(), cuts, &noise)));
        prop_assert_eq!(&report.operations, &reference.operations);
        prop_assert_eq!(&report.sequences, &reference.sequences);
        prop_assert_eq!(report.stats.requests, reference.stats.requests);
        prop_assert_eq!(report.stats.parse_errors, 0);
    }

    #[test]
    fn random_payloads_never_panic(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1500), 1..30)) {
        let mut cap = Capture::new();
        let mut conn = cap.open(T0, "10.0.0.1:40000", "10.0.0.2:80");
        for (i, p) in payloads.iter().enumerate() {
            cap.send(T0 + i as u64 * MS, &mut conn, p);
        }
        let (report, alerts) = replay(CONFIG, &cap.to_pcap(Link::Ethernet));
        prop_assert!(alerts.is_empty());
        // The SYN, then one segment per non-empty payload (bare ACKs are not counted).
        prop_assert_eq!(report.stats.packets as usize, payloads.iter().filter(|p| !p.is_empty()).count() + 1);
    }

    #[test]
    fn random_frames_never_panic(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..50)) {
        let mut cap = Capture::new();
        for (i, f) in frames.into_iter().enumerate() {
            cap.raw_frame(T0 + i as u64, f);
        }
        for link in [Link::Ethernet, Link::LinuxSll, Link::LinuxSll2] {
            // Reframing needs 14 bytes of Ethernet header; short frames only as Ethernet.
            if link != Link::Ethernet && cap.has_short_frames() {
                continue;
            }
            let _ = replay(CONFIG, &cap.to_pcap(link));
        }
    }
}
