//! Any bytes as a capture file (pcap or pcapng): frame decoding, defragmentation,
//! reassembly, HTTP, sessions and rules must take them without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqshield_fuzz::{PORT, bank_config, bank_pipeline};

fuzz_target!(|data: &[u8]| {
    let config = bank_config();
    let mut pipeline = bank_pipeline(&config);
    let mut alerts = Vec::new();
    let _ = pipeline.replay_pcap(data, &[PORT], &mut alerts);
    let _ = pipeline.report(pipeline.newest());
});
