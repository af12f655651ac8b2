//! Writes the session-flood benchmark's capture (`seqshield_tests::flood`) and a config
//! to replay it with. Usage: flood_capture OUT.pcap CONFIG.toml STATE_DIR [SESSIONS]
//! (1 000 000 by default, next to 300 slow legit users).

use seqshield_tests::bank;
use seqshield_tests::capture::Link;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (pcap, config, state, sessions) = match args.as_slice() {
        [_, pcap, config, state] => (pcap, config, state, 1_000_000),
        [_, pcap, config, state, n] => (pcap, config, state, n.parse().expect("SESSIONS")),
        _ => {
            eprintln!("usage: flood_capture OUT.pcap CONFIG.toml STATE_DIR [SESSIONS]");
            std::process::exit(2);
        }
    };
    let capture = seqshield_tests::flood::session_flood(sessions, 300);
    std::fs::write(pcap, capture.to_pcap(Link::Ethernet)).expect("write the capture");
    let extra = format!("[state]\ndir = {state:?}\n");
    std::fs::write(config, bank::config(1, &extra)).expect("write the config");
}
