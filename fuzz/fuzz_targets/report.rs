//! Report files as `seqshield report FILE` and `rules suggest FILE` read them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqshield::report::Report;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = serde_json::from_slice::<Report>(data) {
        let _ = seqshield::rules::suggest_allow_rules(&report, 0.0, 0);
        let _ = report.to_table();
    }
});
