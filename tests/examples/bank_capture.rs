//! Writes the demo's synthetic bank capture and a config to replay it with.
//! Usage: bank_capture OUT.pcap CONFIG.toml STATE_DIR [SESSIONS]

use seqshield_tests::bank;
use seqshield_tests::capture::Link;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (pcap, config, state, sessions) = match args.as_slice() {
        [_, pcap, config, state] => (pcap, config, state, 2_000),
        [_, pcap, config, state, n] => (pcap, config, state, n.parse().expect("SESSIONS")),
        _ => {
            eprintln!("usage: bank_capture OUT.pcap CONFIG.toml STATE_DIR [SESSIONS]");
            std::process::exit(2);
        }
    };
    // 2000 sessions by default, 50 connections at a time, every 40th an attacker.
    let (capture, _) = bank::synthetic(sessions, 50, 40);
    std::fs::write(pcap, capture.to_pcap(Link::Ethernet)).expect("write the capture");
    let extra = format!("[state]\ndir = {state:?}\n");
    std::fs::write(config, bank::config(5, &extra)).expect("write the config");
}
