//! Developer and operator automation: `cargo xtask <command>`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "seqshield automation")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Installs what the build and the tests need (idempotent).
    Setup,
    /// Runs every test of the workspace (what CI runs).
    Test,
    /// Lints: rustfmt and clippy with warnings denied.
    Check,
    /// Replays a synthetic bank capture: prints alerts, the top sequences and the totals.
    Demo,
    /// Runs the criterion benchmarks and prints the pipeline / httparse ratio.
    Bench,
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().command {
        Task::Setup => setup(),
        Task::Test => {
            setup()?;
            cargo(&root, &["test", "--workspace", "--locked"])
        }
        Task::Check => {
            cargo(&root, &["fmt", "--all", "--", "--check"])?;
            cargo(
                &root,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--locked",
                    "--",
                    "-D",
                    "warnings",
                ],
            )
        }
        Task::Demo => demo(&root),
        Task::Bench => bench(&root),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Nothing beyond the Rust toolchain is needed for the replay pipeline and its tests;
/// check that the components the workflow uses are there.
fn setup() -> Result<()> {
    for component in ["rustfmt", "clippy"] {
        let present = Command::new("rustup")
            .args(["component", "list", "--installed"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with(component))
            })
            .unwrap_or(false);
        if !present {
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

fn demo(root: &Path) -> Result<()> {
    let dir = root.join("target/demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    cargo(root, &["build", "--release", "--locked", "-p", "seqshield"])?;
    let pcap = dir.join("bank.pcap");
    let config = dir.join("config.toml");
    let report = dir.join("report.json");
    let alerts = dir.join("alerts.jsonl");
    cargo(
        root,
        &[
            "run",
            "--release",
            "--locked",
            "-q",
            "-p",
            "seqshield-tests",
            "--example",
            "bank_capture",
            "--",
            path_str(&pcap)?,
            path_str(&config)?,
            path_str(&dir.join("state"))?,
        ],
    )?;
    let seqshield = root.join("target/release/seqshield");
    let out = Command::new(&seqshield)
        .args([
            "replay",
            "--config",
            path_str(&config)?,
            "--pcap",
            path_str(&pcap)?,
            "--report-out",
            path_str(&report)?,
        ])
        .output()
        .context("running seqshield replay")?;
    if !out.status.success() {
        bail!(
            "seqshield replay failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(&alerts, &out.stdout)?;
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout)?.lines().collect();
    println!(
        "== {} alerts (first 3; all in {}) ==",
        lines.len(),
        alerts.display()
    );
    for line in lines.iter().take(3) {
        println!("{line}");
    }
    println!();
    run(Command::new(&seqshield).args(["report", path_str(&report)?]))
}

/// Runs the pipeline benchmark, then prints what the README records: requests per
/// second for the whole pipeline and for httparse alone, and their ratio, from this run.
fn bench(root: &Path) -> Result<()> {
    cargo(
        root,
        &[
            "bench",
            "-p",
            "seqshield-tests",
            "--bench",
            "pipeline",
            "--locked",
        ],
    )?;
    let dir = root.join("target/criterion/requests");
    let read = |name: &str| -> Result<(f64, f64)> {
        let bench: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            dir.join(name).join("new/benchmark.json"),
        )?)?;
        let estimates: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            dir.join(name).join("new/estimates.json"),
        )?)?;
        let elements = bench["throughput"]["Elements"]
            .as_f64()
            .context("throughput in benchmark.json")?;
        let mean_ns = estimates["mean"]["point_estimate"]
            .as_f64()
            .context("mean in estimates.json")?;
        Ok((elements, mean_ns))
    };
    let (requests, pipeline_ns) = read("pipeline")?;
    let (_, httparse_ns) = read("httparse")?;
    println!("\n== {requests} requests per iteration, one core ==");
    println!(
        "whole pipeline (pcap -> report): {:.2} M requests/s ({:.0} ns/request)",
        requests / pipeline_ns * 1e3,
        pipeline_ns / requests
    );
    println!(
        "httparse alone, same requests:   {:.2} M requests/s ({:.0} ns/request)",
        requests / httparse_ns * 1e3,
        httparse_ns / requests
    );
    println!("pipeline / httparse: {:.2}x", pipeline_ns / httparse_ns);
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(root).args(args))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
