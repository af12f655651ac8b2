//! Holding guarded requests until their verdict (SPEC §4, `[enforce] hold`). The kernel
//! holds a client segment that may start a request to a guarded operation (and the
//! connection's later segments while that hold is pending) and hands the agent the whole
//! frame. Here the agent keeps those frames per connection; once the pipeline has judged
//! what they carry, a block discards them (the application never reads the request) and
//! anything else puts them back into the stack. Pure bookkeeping and byte surgery: the
//! kernel side (maps, re-injection) is in `source/live.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use agent_common::{GUARD_METHOD_LEN, Guard, MAX_GUARDS};

use crate::Nanos;
use crate::packet::{Checksum, FlowKey, set_tcp_checksum, tcp_checksum};

/// Payload bytes per re-injected frame: live frames are limited to ~3.4 KB and carry no
/// GSO, so a larger held segment (a receive-offload aggregate) goes back as several
/// ordinary ones.
pub const REINJECT_CHUNK: usize = 1448;

/// Held frames kept per connection; more (a client sending while its request waits)
/// are left to its retransmissions.
const MAX_FRAMES_PER_FLOW: usize = 64;

/// Connections with held frames at once: beyond it a new hold is released at once.
const MAX_HELD_FLOWS: usize = 65_536;

/// The kernel's guards for the guarded operations (method, path template): the literal
/// start of each template (up to its first `{`), merged per method when there are more
/// than the kernel holds. A guard that cannot be expressed (a method longer than the
/// kernel compares) is left out and named in the returned list.
pub fn compile_guards(ops: &[(String, String)]) -> (Vec<Guard>, Vec<String>) {
    let mut skipped = Vec::new();
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    for (method, template) in ops {
        if method.is_empty() || method.len() > GUARD_METHOD_LEN {
            skipped.push(format!("{method} {template}"));
            continue;
        }
        let literal = template.split('{').next().unwrap_or_default();
        wanted.push((method, literal));
    }
    wanted.sort();
    wanted.dedup();
    // A guard whose prefix starts another one of the same method covers it.
    let mut guards: Vec<(&str, &str)> = Vec::new();
    for (method, prefix) in wanted {
        if !guards
            .iter()
            .any(|(m, p)| *m == method && prefix.starts_with(p))
        {
            guards.push((method, prefix));
        }
    }
    if guards.len() > MAX_GUARDS as usize {
        // One guard per method: the common start of its prefixes.
        let mut merged: Vec<(&str, &str)> = Vec::new();
        for (method, prefix) in guards {
            match merged.iter_mut().find(|(m, _)| *m == method) {
                Some((_, common)) => *common = common_prefix(common, prefix),
                None => merged.push((method, prefix)),
            }
        }
        guards = merged;
    }
    if guards.len() > MAX_GUARDS as usize {
        for (m, p) in guards.drain(MAX_GUARDS as usize..) {
            skipped.push(format!("{m} {p}"));
        }
    }
    // A prefix cut to the kernel's length only widens the guard.
    let guards = guards
        .into_iter()
        .filter_map(|(method, prefix)| Guard::new(method.as_bytes(), prefix.as_bytes()))
        .collect();
    (guards, skipped)
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    (0..=max.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

fn common_prefix<'a>(a: &'a str, b: &str) -> &'a str {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    &a[..floor_char_boundary(a, n)]
}

/// Counts of what happened to holds, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HoldStats {
    /// Connections whose segments were held (one per hold, however many segments).
    pub holds: u64,
    /// Holds released after the verdict allowed them.
    pub released: u64,
    /// Holds discarded: the verdict blocked the connection.
    pub discarded: u64,
    /// Holds released because no verdict came within the hold timeout (fail-open).
    pub timeouts: u64,
    /// Held frames not put back: a bad checksum (the stack would have dropped them too)
    /// or a frame the capture did not keep whole (its rest comes by retransmission).
    pub not_reinjected: u64,
    /// Re-injections the kernel refused.
    pub reinject_errors: u64,
}

/// What to do with a connection's held frames.
#[derive(Debug, PartialEq, Eq)]
pub struct Release {
    pub flow: FlowKey,
    /// Frames to put back, in sequence order, checksums recomputed.
    pub frames: Vec<Vec<u8>>,
    /// Sequence number after the last byte held: the kernel lets retransmissions of
    /// anything before it through.
    pub released_seq: u32,
    /// Capture time of the first held segment: the verdict latency runs from it.
    pub since: Nanos,
    pub timed_out: bool,
}

struct Held {
    since: Nanos,
    started: Instant,
    /// (sequence number, frame, bytes cut), one per sequence number.
    frames: Vec<(u32, Vec<u8>, u32)>,
    end_seq: u32,
}

/// Held frames per connection.
pub struct Holder {
    timeout: Duration,
    flows: HashMap<FlowKey, Held, foldhash::fast::RandomState>,
    stats: HoldStats,
}

impl Holder {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            flows: HashMap::default(),
            stats: HoldStats::default(),
        }
    }

    pub fn stats(&self) -> HoldStats {
        self.stats
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Keeps a held frame of `flow` (a retransmission of one already kept is dropped).
    /// `seq`/`end_seq`: the segment's sequence range. Returns false when it cannot be
    /// kept (too many holds; counted as not put back).
    pub fn hold(
        &mut self,
        flow: FlowKey,
        ts: Nanos,
        seq: u32,
        end_seq: u32,
        frame: &[u8],
        cut: u32,
    ) -> bool {
        if self.flows.len() >= MAX_HELD_FLOWS && !self.flows.contains_key(&flow) {
            self.stats.not_reinjected += 1;
            return false;
        }
        let held = self.flows.entry(flow).or_insert_with(|| {
            self.stats.holds += 1;
            Held {
                since: ts,
                started: Instant::now(),
                frames: Vec::new(),
                end_seq,
            }
        });
        if (end_seq.wrapping_sub(held.end_seq) as i32) > 0 {
            held.end_seq = end_seq;
        }
        if held.frames.len() < MAX_FRAMES_PER_FLOW && !held.frames.iter().any(|f| f.0 == seq) {
            held.frames.push((seq, frame.to_vec(), cut));
        }
        true
    }

    /// The verdict blocked `flow`: its held frames are dropped. Returns the capture
    /// time of its first held segment when it had any.
    pub fn discard(&mut self, flow: &FlowKey) -> Option<Nanos> {
        let held = self.flows.remove(flow)?;
        self.stats.discarded += 1;
        Some(held.since)
    }

    /// The verdict allowed what `flow` holds: the frames to put back.
    pub fn release(&mut self, flow: &FlowKey) -> Option<Release> {
        let held = self.flows.remove(flow)?;
        self.stats.released += 1;
        Some(self.prepare(*flow, held, false))
    }

    /// Holds older than the timeout (the verdict did not come: fail-open), released.
    pub fn expired(&mut self, now: Instant) -> Vec<Release> {
        let timeout = self.timeout;
        let old: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, h)| now.duration_since(h.started) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        old.into_iter()
            .filter_map(|flow| {
                let held = self.flows.remove(&flow)?;
                self.stats.timeouts += 1;
                Some(self.prepare(flow, held, true))
            })
            .collect()
    }

    /// Everything held, released (the agent is stopping).
    pub fn release_all(&mut self) -> Vec<Release> {
        let flows: Vec<FlowKey> = self.flows.keys().copied().collect();
        flows.iter().filter_map(|f| self.release(f)).collect()
    }

    /// A re-injection the kernel refused.
    pub fn count_reinject_error(&mut self) {
        self.stats.reinject_errors += 1;
    }

    fn prepare(&mut self, flow: FlowKey, mut held: Held, timed_out: bool) -> Release {
        let base = held.frames.first().map_or(0, |f| f.0);
        held.frames
            .sort_by_key(|(seq, _, _)| seq.wrapping_sub(base) as i32);
        let mut frames = Vec::new();
        for (_, frame, cut) in &held.frames {
            match reinjectable(frame, *cut) {
                Some(mut parts) => {
                    if *cut > 0 {
                        self.stats.not_reinjected += 1;
                    }
                    frames.append(&mut parts);
                }
                None => self.stats.not_reinjected += 1,
            }
        }
        Release {
            flow,
            frames,
            released_seq: held.end_seq,
            since: held.since,
            timed_out,
        }
    }
}

/// Where a frame's parts are.
struct FrameLayout {
    src: IpAddr,
    dst: IpAddr,
    /// Offset of the TCP header, and of its payload.
    l4: usize,
    payload: usize,
    /// End of the IP packet within the frame (Ethernet padding excluded), as far as
    /// the frame was kept.
    end: usize,
    v4: bool,
}

const ETH_HLEN: usize = 14;

fn layout(frame: &[u8]) -> Option<FrameLayout> {
    let sliced = etherparse::LaxSlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst, v4, ip_end) = match sliced.net? {
        etherparse::LaxNetSlice::Ipv4(ip) => {
            let h = ip.header();
            if h.is_fragmenting_payload() {
                return None;
            }
            (
                IpAddr::V4(Ipv4Addr::from(h.source())),
                IpAddr::V4(Ipv4Addr::from(h.destination())),
                true,
                ETH_HLEN + usize::from(h.total_len()),
            )
        }
        etherparse::LaxNetSlice::Ipv6(ip) => {
            let h = ip.header();
            (
                IpAddr::V6(Ipv6Addr::from(h.source())),
                IpAddr::V6(Ipv6Addr::from(h.destination())),
                false,
                ETH_HLEN + 40 + usize::from(h.payload_length()),
            )
        }
        _ => return None,
    };
    let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else {
        return None;
    };
    let l4 = tcp.slice().as_ptr() as usize - frame.as_ptr() as usize;
    let payload = l4 + tcp.header_len();
    Some(FrameLayout {
        src,
        dst,
        l4,
        payload,
        end: ip_end.min(frame.len()),
        v4,
    })
}

/// A held frame as it goes back into the stack: TCP checksum recomputed (a local sender
/// with checksum offload left it unfinished, and the injected copy is checked), split
/// into [`REINJECT_CHUNK`]-byte segments with their own sequence numbers and checksums.
/// `None` when it must not go back: a checksum that was wrong on arrival (the stack would
/// have dropped it), or a frame that is not IP/TCP. A frame the capture cut (`cut > 0`)
/// goes back as far as it was kept.
pub fn reinjectable(frame: &[u8], cut: u32) -> Option<Vec<Vec<u8>>> {
    let at = layout(frame)?;
    if at.payload > at.end {
        return None;
    }
    if at.v4 && !ipv4_header_valid(&frame[ETH_HLEN..at.l4]) {
        return None;
    }
    if cut == 0 {
        let header = &frame[at.l4..at.payload];
        let payload = &frame[at.payload..at.end];
        if tcp_checksum(at.src, at.dst, header, payload) == Checksum::Bad {
            return None;
        }
    }
    let payload = &frame[at.payload..at.end];
    let seq = u32::from_be_bytes(frame[at.l4 + 4..at.l4 + 8].try_into().ok()?);
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[][..]]
    } else {
        payload.chunks(REINJECT_CHUNK).collect()
    };
    let last = chunks.len() - 1;
    let mut out = Vec::with_capacity(chunks.len());
    let mut offset = 0u32;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut f = Vec::with_capacity(at.payload + chunk.len());
        f.extend_from_slice(&frame[..at.payload]);
        f.extend_from_slice(chunk);
        let ip_len = f.len() - ETH_HLEN;
        if at.v4 {
            f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            set_ipv4_header_checksum(&mut f[ETH_HLEN..at.l4]);
        } else {
            f[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes());
        }
        let tcp = &mut f[at.l4..];
        tcp[4..8].copy_from_slice(&seq.wrapping_add(offset).to_be_bytes());
        if i != last {
            tcp[13] &= !(0x01 | 0x08); // FIN and PSH belong to the last part.
        }
        set_tcp_checksum(at.src, at.dst, tcp);
        offset += chunk.len() as u32;
        out.push(f);
    }
    Some(out)
}

fn ipv4_header_valid(h: &[u8]) -> bool {
    fold_sum(h) == 0xffff
}

fn set_ipv4_header_checksum(h: &mut [u8]) {
    h[10..12].fill(0);
    let sum = !fold_sum(h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
}

fn fold_sum(data: &[u8]) -> u16 {
    let mut acc: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect()
    }

    fn as_text(g: &Guard) -> (String, String) {
        let bytes: Vec<u8> = g.pattern.iter().flat_map(|w| w.to_le_bytes()).collect();
        let method = usize::from(g.method_len);
        (
            String::from_utf8_lossy(&bytes[..method]).into(),
            String::from_utf8_lossy(&bytes[method + 1..usize::from(g.len)]).into(),
        )
    }

    #[test]
    fn guards_are_the_literal_start_of_templates() {
        let (guards, skipped) = compile_guards(&ops(&[
            ("POST", "/api/v1/transferFunds"),
            ("POST", "/api/v1/accounts/{id}/close"),
            ("POST", "/api/v1/accounts/{id}/freeze"),
            ("DELETE", "/{tenant}/users"),
        ]));
        let got: Vec<_> = guards.iter().map(as_text).collect();
        assert_eq!(
            got,
            vec![
                ("DELETE".into(), "/".into()),
                ("POST".into(), "/api/v1/accounts/".into()),
                ("POST".into(), "/api/v1/transferFunds".into()),
            ]
        );
        assert!(skipped.is_empty());
    }

    #[test]
    fn too_many_guards_merge_per_method() {
        let many: Vec<(String, String)> = (0..40)
            .map(|i| ("POST".to_string(), format!("/api/v1/op{i}")))
            .chain([("PUT".to_string(), "/x/y".to_string())])
            .collect();
        let (guards, skipped) = compile_guards(&many);
        let got: Vec<_> = guards.iter().map(as_text).collect();
        assert_eq!(
            got,
            vec![
                ("POST".into(), "/api/v1/op".into()),
                ("PUT".into(), "/x/y".into())
            ]
        );
        assert!(skipped.is_empty());
        let (_, skipped) = compile_guards(&ops(&[("A-VERY-LONG-METHOD-NAME", "/x")]));
        assert_eq!(skipped.len(), 1);
    }

    fn frame_v4(seq: u32, payload: &[u8], fin: bool) -> Vec<u8> {
        let mut out = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
        let b = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, seq, 512)
            .ack(77)
            .psh();
        let b = if fin { b.fin() } else { b };
        b.write(&mut out, payload).unwrap();
        out
    }

    fn check(frame: &[u8]) -> (u32, Vec<u8>, Checksum, bool, bool) {
        let at = layout(frame).unwrap();
        let tcp = &frame[at.l4..at.payload];
        let payload = &frame[at.payload..at.end];
        let seq = u32::from_be_bytes(tcp[4..8].try_into().unwrap());
        (
            seq,
            payload.to_vec(),
            tcp_checksum(at.src, at.dst, tcp, payload),
            ipv4_header_valid(&frame[ETH_HLEN..at.l4]),
            tcp[13] & 0x01 != 0,
        )
    }

    #[test]
    fn unfinished_checksums_are_completed_and_bad_ones_refused() {
        let mut f = frame_v4(1000, b"POST /x HTTP/1.1\r\n\r\n", false);
        let at = layout(&f).unwrap();
        // What a local sender with offload leaves: the pseudo-header sum only.
        f[at.l4 + 16..at.l4 + 18].copy_from_slice(&[0x12, 0x34]);
        let out = reinjectable(&f, 0);
        assert!(out.is_none(), "a wrong checksum is not repaired");
        let good = frame_v4(1000, b"POST /x HTTP/1.1\r\n\r\n", false);
        let out = reinjectable(&good, 0).unwrap();
        assert_eq!(
            out,
            vec![good.clone()],
            "a whole good frame goes back as it was"
        );
    }

    #[test]
    fn large_segments_are_split_in_order() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        let f = frame_v4(u32::MAX - 100, &payload, true);
        let out = reinjectable(&f, 0).unwrap();
        assert_eq!(out.len(), 3);
        let mut joined = Vec::new();
        let mut expect_seq = u32::MAX - 100;
        for (i, part) in out.iter().enumerate() {
            let (seq, bytes, csum, ip_ok, fin) = check(part);
            assert_eq!(seq, expect_seq);
            assert_eq!(csum, Checksum::Valid);
            assert!(ip_ok);
            assert_eq!(fin, i == 2, "FIN only on the last part");
            expect_seq = expect_seq.wrapping_add(bytes.len() as u32);
            joined.extend(bytes);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn a_cut_frame_goes_back_as_far_as_it_was_kept() {
        let payload = vec![b'a'; 3000];
        let f = frame_v4(5, &payload, false);
        let kept = &f[..2000];
        let out = reinjectable(kept, (f.len() - 2000) as u32).unwrap();
        let total: usize = out.iter().map(|p| check(p).1.len()).sum();
        assert_eq!(total, 2000 - 54);
        assert!(out.iter().all(|p| check(p).2 == Checksum::Valid));
    }

    fn flow() -> FlowKey {
        FlowKey {
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
        }
    }

    #[test]
    fn holds_release_in_sequence_order_and_expire() {
        let mut h = Holder::new(Duration::from_millis(50));
        let second = frame_v4(1010, b"rest", false);
        let first = frame_v4(1000, b"POST /x HT", false);
        assert!(h.hold(flow(), 7, 1010, 1014, &second, 0));
        assert!(h.hold(flow(), 8, 1000, 1010, &first, 0));
        assert!(h.hold(flow(), 9, 1000, 1010, &first, 0), "retransmission");
        let r = h.release(&flow()).unwrap();
        assert_eq!(r.frames, vec![first.clone(), second]);
        assert_eq!((r.released_seq, r.since, r.timed_out), (1014, 7, false));
        assert!(h.release(&flow()).is_none());

        assert!(h.hold(flow(), 10, 1000, 1010, &first, 0));
        assert!(h.expired(Instant::now()).is_empty());
        let later = Instant::now() + Duration::from_millis(60);
        let r = h.expired(later);
        assert_eq!(r.len(), 1);
        assert!(r[0].timed_out);
        assert!(h.hold(flow(), 11, 1000, 1010, &first, 0));
        assert_eq!(h.discard(&flow()), Some(11));
        let s = h.stats();
        assert_eq!((s.holds, s.released, s.timeouts, s.discarded), (3, 1, 1, 1));
    }
}
