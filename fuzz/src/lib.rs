//! What the fuzz targets share: the bank API's pipeline (the fixture's endpoints and
//! "transfer needs a balance check" rule), in enforce mode so verdicts run too.

use std::path::Path;

use seqshield::config::Config;
use seqshield::pipeline::Pipeline;

/// The analysed server port.
pub const PORT: u16 = 80;

pub fn bank_config() -> Config {
    let text = format!(
        "[capture]\nports = [{PORT}]\n[sequence]\nmin_support = 1\n[enforce]\nmode = \"enforce\"\n{}",
        include_str!("../../tests/fixtures/bank-api.toml")
    );
    Config::parse(&text, Path::new("fuzz.toml")).expect("the bank config parses")
}

pub fn bank_pipeline(config: &Config) -> Pipeline {
    Pipeline::new(config, &[7; 32]).expect("the bank pipeline builds")
}
