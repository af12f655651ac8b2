//! `cargo xtask fuzz [--seconds N] [TARGET ...]`: runs the cargo-fuzz targets in `fuzz/`
//! (libFuzzer, nightly, address sanitizer) for N seconds each, from the committed seed
//! corpus in `fuzz/corpus/TARGET`. What a run finds goes to `target/fuzz-corpus/TARGET`
//! (the committed seeds stay as they are); a crash stops the run with the input's path
//! under `fuzz/artifacts/`, to become a regression test.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Every target, in the order they run.
pub const TARGETS: [&str; 6] = [
    "pcap", "segments", "snapshot", "config", "report", "session",
];

pub fn run(root: &Path, seconds: u32, targets: &[String]) -> Result<()> {
    install_cargo_fuzz()?;
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t:?}: the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let fuzz_dir = root.join("fuzz");
    for target in chosen {
        let found = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&found)?;
        let seeds = fuzz_dir.join("corpus").join(target);
        println!("== fuzz {target}: {seconds} s ==");
        let status = Command::new("cargo")
            .current_dir(&fuzz_dir)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            // The agent's kernel object is not needed to fuzz what it reads.
            .env("AYA_BUILD_SKIP", "1")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&found)
            .arg(&seeds)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=4096",
                "-print_final_stats=1",
            ])
            .status()
            .with_context(|| format!("running fuzz target {target}"))?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed ({status}): the input is in fuzz/artifacts/{target}/; make it a regression test"
            );
        }
    }
    Ok(())
}

/// cargo-fuzz from crates.io, once.
fn install_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    println!("installing cargo-fuzz (once)");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}
