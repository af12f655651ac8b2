//! Writes the replay benchmark's capture (`seqshield_tests::realistic`) and a config to
//! replay it with, and next to it `config-rules.toml`: the same with issue 15's rules.
//! Usage: realistic_capture OUT.pcap CONFIG.toml STATE_DIR [REQUESTS] (sessions and
//! connections scale with REQUESTS; 300 000 by default).

use seqshield_tests::bank;
use seqshield_tests::capture::Link;
use seqshield_tests::realistic::{self, Shape};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (pcap, config, state, requests) = match args.as_slice() {
        [_, pcap, config, state] => (pcap, config, state, 300_000),
        [_, pcap, config, state, n] => (pcap, config, state, n.parse().expect("REQUESTS")),
        _ => {
            eprintln!("usage: realistic_capture OUT.pcap CONFIG.toml STATE_DIR [REQUESTS]");
            std::process::exit(2);
        }
    };
    let full = Shape::default();
    let scale = |n: usize| (n * requests / full.requests).max(1);
    let shape = Shape {
        requests,
        sessions: scale(full.sessions),
        connections: scale(full.connections),
        ..full
    };
    let capture = realistic::capture(&shape);
    std::fs::write(pcap, capture.to_pcap(Link::Ethernet)).expect("write the capture");
    let extra = format!("[state]\ndir = {state:?}\n");
    std::fs::write(config, bank::config(5, &extra)).expect("write the config");
    let with_rules = std::path::Path::new(config).with_file_name("config-rules.toml");
    std::fs::write(
        with_rules,
        bank::config(5, &(extra + bank::EXPRESSION_RULES)),
    )
    .expect("write the config with rules");
}
