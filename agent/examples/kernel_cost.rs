//! What each kernel program costs per packet, measured without a network or a noisy
//! neighbour in the way: the programs embedded in the agent are loaded (not attached)
//! and run by the kernel on crafted frames through `BPF_PROG_TEST_RUN`, `REPEAT` times a
//! round; the kernel reports the mean time per run, and the median of `ROUNDS` rounds is
//! printed. Root only. `cargo xtask bench-kernel` runs it.
//!
//! Use it to compare kernel changes (build, run, change, build, run): under wrk load the
//! same code's per-packet cost moves by ±100 ns from run to run on a shared VM, this by a
//! few ns.

use agent_common::{BASELINE_PROGRAM, CAPTURE_PROGRAM, CaptureConfig, EGRESS_PROGRAM, maps};
use aya::maps::{Array, RingBuf};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};

static KERNEL_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/seqshield"));

/// Runs a round: their events stay under the ring's wakeup threshold (4 MiB), as a
/// draining agent keeps them.
const REPEAT: u32 = 5_000;
const ROUNDS: usize = 9;
const SERVER_PORT: u16 = 80;

fn frame(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
        .tcp(src_port, dst_port, 1_000, 64_000)
        .ack(2_000)
        .psh()
        .options(&[
            etherparse::TcpOptionElement::Noop,
            etherparse::TcpOptionElement::Noop,
            etherparse::TcpOptionElement::Timestamp(7, 8),
        ])
        .expect("tcp options");
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("frame");
    out
}

/// Median over rounds of the kernel's mean time per run, in ns.
fn cost(ebpf: &mut Ebpf, program: &str, frame: &[u8]) -> u128 {
    let mut rounds: Vec<u128> = (0..ROUNDS)
        .map(|_| {
            let prog: &SchedClassifier = ebpf
                .program(program)
                .expect("program in the object")
                .try_into()
                .expect("a classifier");
            let result = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    repeat: REPEAT,
                    ..TestRunOptions::new()
                })
                .expect("BPF_PROG_TEST_RUN");
            // Empty the ring, so every round captures rather than finds it full.
            let mut ring = RingBuf::try_from(ebpf.map_mut(maps::EVENTS).expect("EVENTS"))
                .expect("a ring buffer");
            while ring.next().is_some() {}
            result.duration.as_nanos()
        })
        .collect();
    rounds.sort_unstable();
    rounds[ROUNDS / 2]
}

fn main() {
    assert!(
        !KERNEL_OBJECT.is_empty(),
        "the agent was built without its kernel object (AYA_BUILD_SKIP)"
    );
    let mut ebpf = EbpfLoader::new()
        .load(KERNEL_OBJECT)
        .expect("loading the kernel object (root?)");
    {
        let mut ports: Array<_, u8> =
            Array::try_from(ebpf.map_mut(maps::PORTS).expect("PORTS")).expect("an array");
        ports.set(u32::from(SERVER_PORT), 1, 0).expect("port");
        let mut config: Array<_, CaptureConfig> =
            Array::try_from(ebpf.map_mut(maps::CONFIG).expect("CONFIG")).expect("an array");
        let monitor = CaptureConfig {
            snaplen: 4096,
            ..CaptureConfig::default()
        };
        config.set(0, monitor, 0).expect("config");
    }
    for name in [CAPTURE_PROGRAM, EGRESS_PROGRAM, BASELINE_PROGRAM] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .expect("program in the object")
            .try_into()
            .expect("a classifier");
        prog.load().expect("the verifier accepts the program");
    }
    let request = b"GET /api/v1/accounts/1007/balance HTTP/1.1\r\nHost: bank.test\r\n\
                    Cookie: sid=0123456789abcdef\r\nAccept: application/json\r\n\r\n";
    let response = vec![b'x'; 1_000];
    let cases: [(&str, &str, Vec<u8>); 5] = [
        (
            "an empty program (the test run's own cost)",
            BASELINE_PROGRAM,
            frame(40_000, SERVER_PORT, request),
        ),
        (
            "ingress, a request (captured)",
            CAPTURE_PROGRAM,
            frame(40_000, SERVER_PORT, request),
        ),
        (
            "ingress, another port (not ours)",
            CAPTURE_PROGRAM,
            frame(40_000, 81, request),
        ),
        (
            "egress, a 1000-byte response (header event)",
            EGRESS_PROGRAM,
            frame(SERVER_PORT, 40_000, &response),
        ),
        (
            "egress, another port (not ours)",
            EGRESS_PROGRAM,
            frame(81, 40_000, &response),
        ),
    ];
    println!(
        "kernel programs, monitor mode, BPF_PROG_TEST_RUN: median of {ROUNDS} rounds of {REPEAT} runs"
    );
    for (label, program, frame) in &cases {
        println!("{:>6} ns  {label}", cost(&mut ebpf, program, frame));
    }
}
