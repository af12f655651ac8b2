//! Snapshot files (checked and unchecked payloads): decoding and restoring into a
//! pipeline must refuse what does not fit, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqshield::persist;
use seqshield_fuzz::{bank_config, bank_pipeline};

fuzz_target!(|data: &[u8]| {
    let _ = persist::decode(data);
    if let Ok(snapshot) = persist::decode_payload(data) {
        let config = bank_config();
        let mut pipeline = bank_pipeline(&config);
        let _ = pipeline.restore(snapshot);
        let _ = pipeline.report(pipeline.newest());
    }
});
