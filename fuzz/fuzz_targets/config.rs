//! Config files: parsed with every mistake reported, never a panic; a config that
//! parses builds a pipeline or says why not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqshield::config::Config;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let _ = Config::parse_all(text, path);
    if let Ok(config) = Config::parse(text, path) {
        let _ = seqshield::pipeline::Pipeline::new(&config, &[7; 32]);
    }
});
