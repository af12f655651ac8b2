//! SPEC §7, one test per kind of traffic, each on a pcap the test writes.

use seqshield_tests::bank::{MS, T0};
use seqshield_tests::capture::{Capture, Link};
use seqshield_tests::{op_counts, replay, sequences};

/// Discovery only, sessions by cookie `sid`, every sequence reported.
fn config(extra: &str) -> String {
    format!(
        "[capture]\nports = [80]\n[session]\nidentifiers = [{{ cookie = \"sid\" }}]\n[sequence]\nmin_support = 1\n{extra}"
    )
}

fn get(path: &str, sid: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nCookie: sid={sid}\r\n\r\n").into_bytes()
}

fn post(path: &str, sid: &str, body: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: api.test\r\nCookie: sid={sid}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

fn run(cap: &Capture) -> (seqshield::report::Report, Vec<seqshield::alerts::Alert>) {
    replay(&config(""), &cap.to_pcap(Link::Ethernet))
}

fn seq(ops: &[&str], count: u64, last: u64) -> (Vec<String>, u64, u64) {
    (ops.iter().map(|s| s.to_string()).collect(), count, last)
}

const A: &str = "GET api.test/a";
const B: &str = "GET api.test/b/{var1}";
const C: &str = "GET api.test/c";

#[test]
fn keep_alive_connection_with_many_requests() {
    let mut cap = Capture::new();
    let mut conn = cap.open(T0, "10.0.0.1:40000", "10.0.0.2:80");
    for i in 0..300u64 {
        let r = if i % 2 == 0 {
            get("/a", "s1")
        } else {
            get(&format!("/b/{i}"), "s1")
        };
        cap.send(T0 + i * MS, &mut conn, &r);
    }
    cap.close(T0 + 301 * MS, &mut conn);
    let (report, _) = run(&cap);
    assert_eq!(report.stats.requests, 300);
    assert_eq!(op_counts(&report, A), (150, 150));
    assert_eq!(op_counts(&report, B), (150, 150));
    // Alternating a, b: every suffix of length k alternates too.
    let seqs = sequences(&report);
    assert_eq!(seqs.len(), 16, "k = 2..9, ending in a or in b");
    assert!(seqs.contains(&seq(&[A, B], 150, 150)));
    assert!(seqs.contains(&seq(&[B, A], 149, 150)));
}

#[test]
fn pipelined_requests_in_one_segment() {
    let mut cap = Capture::new();
    let mut conn = cap.open(T0, "10.0.0.1:40000", "10.0.0.2:80");
    let mut burst = Vec::new();
    for path in ["/a", "/b/1", "/c", "/a", "/b/2"] {
        burst.extend(get(path, "s1"));
    }
    cap.send(T0 + MS, &mut conn, &burst);
    let (report, _) = run(&cap);
    assert_eq!(report.stats.requests, 5);
    assert_eq!(op_counts(&report, A), (2, 2));
    assert!(sequences(&report).contains(&seq(&[A, B, C, A, B], 1, 2)));
}

#[test]
fn request_line_and_headers_split_across_segments() {
    // One connection per cut position: every possible split of a request in two.
    let request = post("/c", "s1", "{\"k\":1}");
    let mut cap = Capture::new();
    for cut in 1..request.len() {
        let client = format!("10.0.1.{}:{}", cut % 250 + 1, 40_000 + cut);
        let mut conn = cap.open(T0 + cut as u64 * MS, &client, "10.0.0.2:80");
        cap.send_split(T0 + cut as u64 * MS, &mut conn, &request, &[cut]);
    }
    // And one request cut into single bytes.
    let mut conn = cap.open(T0, "10.0.2.1:40000", "10.0.0.2:80");
    let bytes: Vec<usize> = (1..request.len()).collect();
    cap.send_split(T0 + 500 * MS, &mut conn, &request, &bytes);
    let (report, _) = run(&cap);
    assert_eq!(report.stats.requests, request.len() as u64);
    assert_eq!(report.stats.parse_errors, 0);
    assert_eq!(
        op_counts(&report, "POST api.test/c").0,
        request.len() as u64
    );
}

#[test]
fn retransmitted_and_out_of_order_segments_count_once() {
    let mut stream = Vec::new();
    for path in ["/a", "/b/1", "/c"] {
        stream.extend(get(path, "s1"));
    }
    let parts: Vec<(u32, &[u8])> = stream
        .chunks(25)
        .enumerate()
        .map(|(i, c)| ((i * 25) as u32, c))
        .collect();
    let mut cap = Capture::new();
    let mut conn = cap.open(T0, "10.0.0.1:40000", "10.0.0.2:80");
    let order = [0, 2, 1, 1, 3, 5, 4, 0, 6, 7, 2];
    let mut t = T0;
    for &i in order.iter().filter(|&&i| i < parts.len()) {
        t += MS;
        cap.segment(t, &conn, parts[i].0, parts[i].1);
    }
    for (off, part) in parts.iter().skip(8) {
        t += MS;
        cap.segment(t, &conn, *off, part);
    }
    // A retransmission that overlaps delivered bytes and brings nothing new.
    cap.segment(t + MS, &conn, 10, &stream[10..60]);
    cap.advance(&mut conn, stream.len());
    cap.close(t + 2 * MS, &mut conn);
    let (report, _) = run(&cap);
    assert_eq!(report.stats.requests, 3);
    assert_eq!(report.stats.parse_errors, 0);
    assert!(
        report.stats.flows.retransmitted_segments >= 3,
        "{:?}",
        report.stats.flows
    );
    assert!(
        report.stats.flows.out_of_order_segments >= 2,
        "{:?}",
        report.stats.flows
    );
    assert_eq!(sequences(&report)[..1], [seq(&[A, B], 1, 1)]);
}

#[test]
fn bodies_by_content_length_and_chunked_are_never_parsed() {
    let smuggled = "GET /evil HTTP/1.1\r\nHost: api.test\r\nCookie: sid=s1\r\n\r\n";
    let mut cap = Capture::new();
    let mut conn = cap.open(T0, "10.0.0.1:40000", "10.0.0.2:80");
    cap.send(T0 + MS, &mut conn, &post("/upload", "s1", smuggled));
    let chunked = format!(
        "POST /upload HTTP/1.1\r\nHost: api.test\r\nCookie: sid=s1\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{smuggled}\r\n5\r\nhello\r\n0\r\n\r\n",
        smuggled.len()
    );
    // The chunked body arrives split across segments, cut inside a chunk.
    cap.send_split(T0 + 2 * MS, &mut conn, chunked.as_bytes(), &[90, 130, 150]);
    cap.send(T0 + 3 * MS, &mut conn, &get("/a", "s1"));
    let (report, _) = run(&cap);
    assert_eq!(report.stats.requests, 3);
    assert_eq!(report.stats.parse_errors, 0);
    assert!(
        report.operations.iter().all(|o| !o.path.contains("evil")),
        "{:?}",
        report.operations
    );
    assert_eq!(op_counts(&report, "POST api.test/upload"), (2, 1));
}

#[test]
fn http_1_0_and_absolute_form_targets() {
    let mut cap = Capture::new();
    for (i, path) in ["/a", "/b/7", "/c"].iter().enumerate() {
        let mut conn = cap.open(
            T0 + i as u64 * MS,
            &format!("10.0.0.1:{}", 40_000 + i),
            "10.0.0.2:80",
        );
        let r = format!("GET {path} HTTP/1.0\r\nHost: API.test:80\r\nCookie: sid=old\r\n\r\n");
        cap.send(T0 + i as u64 * MS, &mut conn, r.as_bytes());
        cap.respond(T0 + i as u64 * MS, &mut conn, b"HTTP/1.0 200 OK\r\n\r\nbye");
        cap.close(T0 + i as u64 * MS, &mut conn);
    }
    let mut conn = cap.open(T0 + 10 * MS, "10.0.0.1:41000", "10.0.0.2:80");
    let absolute =
        "GET http://api.TEST:8080/a?x=1 HTTP/1.1\r\nHost: ignored.test\r\nCookie: sid=old\r\n\r\n";
    cap.send(T0 + 10 * MS, &mut conn, absolute.as_bytes());
    let (report, _) = run(&cap);
    assert_eq!(report.stats.requests, 4);
    assert!(sequences(&report).contains(&seq(&[A, B, C, A], 1, 2)));
}

fn four_step_script(cap: &mut Capture, client: &str, server: &str) {
    let mut conn = cap.open(T0, client, server);
    for (i, path) in ["/a", "/b/1", "/c", "/checkout"].iter().enumerate() {
        cap.send(T0 + i as u64 * MS, &mut conn, &get(path, "s1"));
    }
}

#[test]
fn ipv4_and_ipv6_give_the_same_report() {
    let rule = "[[rule]]\ntitle = \"checkout after c\"\nkind = \"allow\"\naction = \"log\"\n\
                sequence = [\"GET api.test/b/{var1}\", \"GET api.test/checkout\"]\n\
                [[rule]]\ntitle = \"no checkout right after c\"\nkind = \"block\"\naction = \"block\"\n\
                sequence = [\"GET api.test/c\", \"GET api.test/checkout\"]\npriority = 1\n";
    let mut v4 = Capture::new();
    four_step_script(&mut v4, "10.0.0.1:40000", "10.0.0.2:80");
    let mut v6 = Capture::new();
    four_step_script(&mut v6, "[2001:db8::10]:40000", "[2001:db8::2]:80");
    let (r4, a4) = replay(&config(rule), &v4.to_pcap(Link::Ethernet));
    let (r6, a6) = replay(&config(rule), &v6.to_pcap(Link::Ethernet));
    assert_eq!(r4.stats.requests, 4);
    assert_eq!(r4.operations, r6.operations);
    assert_eq!(r4.sequences, r6.sequences);
    assert_eq!((a4.len(), a6.len()), (1, 1));
    assert_eq!(
        a4[0].rule_title, "no checkout right after c",
        "priority 1 is evaluated first"
    );
    assert_eq!(a6[0].client, "[2001:db8::10]:40000");
    assert_eq!(a6[0].server, "[2001:db8::2]:80");
    assert_eq!(a4[0].client, "10.0.0.1:40000");
}

#[test]
fn many_concurrent_connections() {
    let mut cap = Capture::new();
    let n = 2_000u64;
    let mut conns: Vec<_> = (0..n)
        .map(|i| {
            cap.open(
                T0,
                &format!("10.1.{}.{}:{}", i / 250, i % 250 + 1, 30_000 + i),
                "10.0.0.2:80",
            )
        })
        .collect();
    let mut t = T0;
    for path in ["/a", "/b/9", "/c"] {
        for (i, conn) in conns.iter_mut().enumerate() {
            t += 1_000;
            cap.send(t, conn, &get(path, &format!("sess{i}")));
        }
    }
    let (report, _) = run(&cap);
    assert_eq!(report.stats.requests, 3 * n);
    assert_eq!(report.stats.flows.flows_opened, n);
    assert_eq!(sequences(&report)[..3].to_vec(), {
        let mut v = vec![
            seq(&[A, B], n, n),
            seq(&[A, B, C], n, n),
            seq(&[B, C], n, n),
        ];
        v.sort();
        v
    });
}

#[test]
fn malformed_and_hostile_input_is_counted_and_skipped() {
    let mut cap = Capture::new();
    let mut t = T0;
    let hostile: Vec<Vec<u8>> = vec![
        // Garbage (a TLS ClientHello on the HTTP port).
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage garbage\r\n".to_vec(),
        // A huge header line (over the 32 KiB head limit).
        format!("GET /x HTTP/1.1\r\nX-Big: {}\r\n\r\n", "A".repeat(40_000)).into_bytes(),
        // Endless header lines that never end the head.
        format!(
            "GET /y HTTP/1.1\r\n{}",
            "X-Filler: 1234567890\r\n".repeat(3_000)
        )
        .into_bytes(),
        // An invalid chunk size.
        b"POST /u HTTP/1.1\r\nCookie: sid=h\r\nTransfer-Encoding: chunked\r\n\r\nZZZZ\r\nxx\r\n"
            .to_vec(),
        // Binary junk with NULs and high bytes.
        (0..2_000u32).map(|i| (i * 7919 % 256) as u8).collect(),
    ];
    for (i, junk) in hostile.iter().enumerate() {
        let mut conn = cap.open(t, &format!("10.0.9.{}:40000", i + 1), "10.0.0.2:80");
        // Hostile bytes cut into MSS-sized segments, then a valid request.
        let cuts: Vec<usize> = (1..junk.len() / 1448 + 1).map(|k| k * 1448).collect();
        t += MS;
        cap.send_split(t, &mut conn, junk, &cuts);
        t += MS;
        cap.send(t, &mut conn, &get("/a", &format!("h{i}")));
    }
    let (report, alerts) = run(&cap);
    assert!(report.stats.parse_errors >= 4, "{:?}", report.stats);
    assert!(
        alerts.is_empty(),
        "malformed input never triggers rules by itself"
    );
    // The invalid-chunk request's head was valid (counted); every connection recovers.
    assert_eq!(op_counts(&report, A).0, hostile.len() as u64);
}

#[test]
fn flood_of_new_sessions_and_operations_stays_bounded() {
    let mut cap = Capture::new();
    let mut conn = cap.open(T0, "10.0.0.1:40000", "10.0.0.2:80");
    let n = 20_000u64;
    for i in 0..n {
        // Every request a new session and a new (non-identifier-like) path.
        cap.send(
            T0 + i * 1_000,
            &mut conn,
            &get(&format!("/p{i}x/q"), &format!("flood{i}")),
        );
    }
    let extra =
        "[operations]\nmax_operations = 100\n[sequence]\nmax_sessions = 500\nmin_support = 1\n";
    let cfg = config("").replace("[sequence]\nmin_support = 1\n", "") + extra;
    let (report, _) = replay(&cfg, &cap.to_pcap(Link::Ethernet));
    assert_eq!(report.stats.requests, n);
    assert_eq!(report.operations.len(), 100);
    assert_eq!(report.stats.other_requests, n - 100);
    assert_eq!(
        report.stats.sessions.sessions_evicted, 0,
        "only 100 requests had an operation, so 100 sessions"
    );

    let mut cap = Capture::new();
    let mut conn = cap.open(T0, "10.0.0.1:40000", "10.0.0.2:80");
    for i in 0..n {
        cap.send(T0 + i * 1_000, &mut conn, &get("/a", &format!("flood{i}")));
    }
    let (report, _) = replay(&cfg, &cap.to_pcap(Link::Ethernet));
    assert_eq!(report.stats.sessions.sessions_evicted, n - 500);
}

#[test]
fn snaplen_cut_packets_skip_bodies_and_count_cut_heads() {
    let mut cap = Capture::new();
    cap.snaplen = Some(200);
    let mut conn = cap.open(T0, "10.0.0.1:40000", "10.0.0.2:80");
    // Head fits in the kept bytes, the body is cut: skipped by its known length.
    cap.send(T0 + MS, &mut conn, &post("/u", "s1", &"b".repeat(1_200)));
    cap.send(T0 + 2 * MS, &mut conn, &get("/a", "s1"));
    // A head longer than the kept bytes: cut, counted, and the stream recovers.
    let long = format!(
        "GET /c HTTP/1.1\r\nHost: api.test\r\nCookie: sid=s1\r\nX-Long: {}\r\n\r\n",
        "L".repeat(600)
    );
    cap.send(T0 + 3 * MS, &mut conn, long.as_bytes());
    cap.send(T0 + 4 * MS, &mut conn, &get("/b/5", "s1"));
    let (report, _) = run(&cap);
    assert_eq!(report.stats.requests, 3, "{:?}", report.stats);
    assert_eq!(report.stats.truncated_requests, 1);
    assert_eq!(report.stats.parse_errors, 0);
    assert!(sequences(&report).contains(&seq(&["POST api.test/u", A, B], 1, 1)));
}

#[test]
fn capture_that_joins_connections_mid_stream() {
    let mut cap = Capture::new();
    let mut conn = cap.join("10.0.0.1:40000", "10.0.0.2:80", 123_456);
    // The tail of a body the capture never saw the head of, then normal requests.
    cap.send(
        T0,
        &mut conn,
        b"ody-bytes\"}GET /not-a-request-start HTTP/1.1 trailing",
    );
    cap.send(T0 + MS, &mut conn, b"\r\n\r\n");
    cap.send(T0 + 2 * MS, &mut conn, &get("/a", "s1"));
    cap.send(T0 + 3 * MS, &mut conn, &get("/c", "s1"));
    let (report, _) = run(&cap);
    assert_eq!(report.stats.parse_errors, 0);
    assert_eq!(sequences(&report), [seq(&[A, C], 1, 1)]);
}

#[test]
fn every_link_type_and_pcapng_give_the_same_report() {
    let mut cap = Capture::new();
    four_step_script(&mut cap, "10.0.0.1:40000", "10.0.0.2:80");
    four_step_script(&mut cap, "[2001:db8::10]:40000", "[2001:db8::2]:80");
    let (reference, _) = replay(&config(""), &cap.to_pcap(Link::Ethernet));
    assert_eq!(reference.stats.requests, 8);
    for link in [Link::LinuxSll, Link::LinuxSll2, Link::RawIp] {
        let (r, _) = replay(&config(""), &cap.to_pcap(link));
        assert_eq!(r, reference, "{link:?}");
    }
    let (r, _) = replay(&config(""), &cap.to_pcapng());
    assert_eq!(r, reference, "pcapng");
}

#[test]
fn other_ports_and_server_responses_are_ignored() {
    let mut cap = Capture::new();
    let mut conn = cap.open(T0, "10.0.0.1:40000", "10.0.0.2:9999");
    cap.send(T0 + MS, &mut conn, &get("/a", "s1"));
    let mut conn = cap.open(T0, "10.0.0.1:40001", "10.0.0.2:80");
    cap.send(T0 + MS, &mut conn, &get("/c", "s1"));
    // A response that looks like a request travels server → client: not analysed.
    cap.respond(T0 + 2 * MS, &mut conn, &get("/a", "s1"));
    let (report, _) = run(&cap);
    assert_eq!(report.stats.requests, 1);
    assert_eq!(report.operations.len(), 1);
}

#[test]
fn a_reused_four_tuple_is_a_new_connection() {
    let mut cap = Capture::new();
    let mut first = cap.open(T0, "10.0.0.1:40000", "10.0.0.2:80");
    // The first connection never finishes its body and its end is not in the capture.
    cap.send(
        T0 + MS,
        &mut first,
        b"POST /a HTTP/1.1\r\nCookie: sid=s1\r\nContent-Length: 100\r\n\r\nunfinished",
    );
    // Same ports again with a new initial sequence number: a new connection, whose
    // request is not taken for the rest of the old body.
    let mut second = cap.open_with_isn(T0 + 3 * MS, "10.0.0.1:40000", "10.0.0.2:80", 77_000_000);
    cap.send(T0 + 4 * MS, &mut second, &get("/c", "s1"));
    let (report, _) = run(&cap);
    assert_eq!(report.stats.requests, 2);
    assert_eq!(report.stats.parse_errors, 0);
    assert_eq!(report.stats.flows.flows_opened, 2);
    assert_eq!(op_counts(&report, C), (1, 1));
}
