//! Writes the demo's synthetic bank capture and a config to replay it with.
//! Usage: bank_capture OUT.pcap CONFIG.toml STATE_DIR

use seqshield_tests::bank;
use seqshield_tests::capture::Link;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, pcap, config, state] = args.as_slice() else {
        eprintln!("usage: bank_capture OUT.pcap CONFIG.toml STATE_DIR");
        std::process::exit(2);
    };
    // 2000 sessions, 50 connections at a time, every 40th session an attacker.
    let (capture, _) = bank::synthetic(2_000, 50, 40);
    std::fs::write(pcap, capture.to_pcap(Link::Ethernet)).expect("write the capture");
    let extra = format!("[state]\ndir = {state:?}\n");
    std::fs::write(config, bank::config(5, &extra)).expect("write the config");
}
