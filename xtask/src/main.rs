//! Developer and operator automation: `cargo xtask <command>`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench_enforce;
mod bench_live;
mod bench_replay;
mod demo;
mod demo_fleet;
mod fuzz;
mod lab;
mod paced;

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
    /// The live demo (root): a bank API server and curl clients in network namespaces,
    /// the agent capturing in the kernel; prints the top sequences and the alerts.
    /// Without root it falls back to `demo-replay`.
    Demo,
    /// Replays a synthetic bank capture: prints alerts, the top sequences and the totals.
    DemoReplay,
    /// Fleet mode live (root): two API hosts behind a round-robin client, one Redis, an
    /// agent per host, alone and then sharing sessions; prints both modes' alerts and the
    /// fleet's merged report.
    DemoFleet,
    /// Live overhead (root): wrk against nginx in a namespace, with and without the agent.
    BenchLive,
    /// Enforcement (root): responses leaked and verdict latency for 0, 1, 10 ms servers.
    BenchEnforce,
    /// Installs the agent: /usr/local/bin/seqshield, /etc/seqshield/config.toml (kept if
    /// present) and the systemd unit.
    Install,
    /// Removes what `install` put in place (the learned state in /var/lib/seqshield stays).
    Uninstall,
    /// Builds the kernel object alone (it is also built, and embedded, by every build of
    /// the agent).
    BuildEbpf,
    /// Builds the agent (release) and runs `seqshield run` with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Runs the criterion benchmarks and prints the pipeline / httparse ratio.
    Bench,
    /// `seqshield replay` as a process on a realistic capture, one core, against the
    /// read floor (tcpdump) and tshark in the same run.
    BenchReplay {
        /// Rounds of read floor and replay (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Requests in the capture (sessions and connections scale with it).
        #[arg(long, default_value_t = 300_000)]
        requests: usize,
        /// Leave tshark out (it takes about a minute).
        #[arg(long)]
        skip_tshark: bool,
    },
    /// Fleet mode's cost: replay embedded vs sharing sessions with a local redis-server
    /// (TCP loopback, unix socket); round trips per request, Redis memory per session,
    /// the round trip's p50/p99.
    BenchFleet {
        /// Requests in the realistic capture replayed.
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
    },
    /// The console at scale: API response times and page load in headless Chromium with
    /// 10 000 operations and ~180 000 tracked sequences.
    BenchConsole,
    /// Each kernel program's cost per packet on crafted frames (BPF_PROG_TEST_RUN, root):
    /// steady enough to compare kernel changes, unlike timings under load.
    BenchKernel,
    /// bench-live's fixed-rate client (run inside the client namespace).
    #[command(hide = true)]
    PacedClient {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        seconds: u32,
        #[arg(long)]
        connections: u32,
    },
    /// Peak anonymous memory of `seqshield replay` on a session flood (one-request
    /// sessions next to slow legit users, whose histories must survive).
    BenchFlood {
        #[arg(long, default_value_t = 1_000_000)]
        sessions: usize,
    },
    /// Runs the fuzz targets (cargo-fuzz, libFuzzer) for a while each; installs
    /// cargo-fuzz when missing.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
}

/// Seconds each fuzz target runs in `cargo xtask test` (CI).
const FUZZ_SMOKE_SECONDS: u32 = 20;

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().command {
        Task::Setup => setup(),
        Task::Test => {
            setup()?;
            cargo(
                &root,
                &["test", "--workspace", "--exclude", "agent-ebpf", "--locked"],
            )?;
            // The fuzz smoke: every target, briefly, from the committed corpus.
            fuzz::run(&root, FUZZ_SMOKE_SECONDS, &[])
        }
        Task::Fuzz { seconds, targets } => {
            setup()?;
            fuzz::run(&root, seconds, &targets)
        }
        Task::Check => {
            setup()?;
            cargo(&root, &["fmt", "--all", "--", "--check"])?;
            // The kernel crate is linted for its own target: on the host its shared types
            // would pull in aya (and std) through feature unification.
            cargo(
                &root,
                &[
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "agent-ebpf",
                    "--all-targets",
                    "--locked",
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
            cargo(
                &root,
                &ebpf_args("clippy", &["--locked", "--", "-D", "warnings"]),
            )
        }
        Task::Demo => {
            setup()?;
            cargo(
                &root,
                &["build", "--release", "--locked", "-p", "seqshield"],
            )?;
            if is_root() {
                demo::run(&root, &root.join("target/release/seqshield"))
            } else {
                println!(
                    "the live demo needs root (it creates network namespaces); replaying a capture instead"
                );
                demo_replay(&root)
            }
        }
        Task::DemoReplay => {
            setup()?;
            demo_replay(&root)
        }
        Task::DemoFleet => live_bench(&root, "demo-fleet", demo_fleet::run),
        Task::BenchLive => live_bench(&root, "bench-live", bench_live::run),
        Task::BenchEnforce => live_bench(&root, "bench-enforce", bench_enforce::run),
        Task::Install => {
            setup()?;
            cargo(
                &root,
                &["build", "--release", "--locked", "-p", "seqshield"],
            )?;
            install(&root)
        }
        Task::Uninstall => uninstall(),
        Task::BuildEbpf => {
            setup()?;
            cargo(&root, &ebpf_args("build", &[]))
        }
        Task::Run { args } => {
            setup()?;
            cargo(
                &root,
                &["build", "--release", "--locked", "-p", "seqshield"],
            )?;
            run(Command::new(root.join("target/release/seqshield"))
                .arg("run")
                .args(args))
        }
        Task::Bench => {
            setup()?;
            bench(&root)
        }
        Task::BenchFlood { sessions } => {
            setup()?;
            bench_replay::flood(&root, sessions)
        }
        Task::BenchConsole => {
            setup()?;
            example(&root, "run", "seqshield-tests", "console_load")
        }
        Task::BenchFleet { requests } => {
            setup()?;
            bench_replay::fleet(&root, requests)
        }
        Task::BenchKernel => {
            if !is_root() {
                bail!("bench-kernel loads kernel programs: run it as root");
            }
            setup()?;
            example(&root, "run", "seqshield", "kernel_cost")
        }
        Task::PacedClient {
            addr,
            rate,
            seconds,
            connections,
        } => paced::run(&paced::Load {
            addr,
            rate,
            seconds,
            connections,
        }),
        Task::BenchReplay {
            runs,
            requests,
            skip_tshark,
        } => {
            setup()?;
            bench_replay::run(
                &root,
                &bench_replay::Options {
                    runs: runs.max(1),
                    requests,
                    tshark: !skip_tshark,
                },
            )
        }
    }
}

/// A nightly cargo command on the kernel crate, for its own target (as agent/build.rs
/// builds it).
fn ebpf_args<'a>(command: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "+nightly",
        command,
        "-p",
        "agent-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
    ];
    args.extend_from_slice(extra);
    args
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Installs, idempotently, what building and testing need: rustfmt and clippy, a
/// nightly toolchain with rust-src (the eBPF crate builds core for bpfel-unknown-none),
/// bpf-linker linked against that nightly's own LLVM, and the Debian packages the e2e
/// tests and demos use.
fn setup() -> Result<()> {
    for component in ["rustfmt", "clippy"] {
        rustup_component(None, component)?;
    }
    let nightly_ok = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly_ok {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    rustup_component(Some("nightly"), "rust-src")?;
    bpf_linker()?;
    apt_packages()
}

fn rustup_component(toolchain: Option<&str>, component: &str) -> Result<()> {
    let mut list = Command::new("rustup");
    if let Some(t) = toolchain {
        list.args(["+".to_string() + t]);
    }
    let installed = list
        .args(["component", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with(component))
        })
        .unwrap_or(false);
    if !installed {
        let mut add = Command::new("rustup");
        add.args(["component", "add", component]);
        if let Some(t) = toolchain {
            add.args(["--toolchain", t]);
        }
        run(&mut add)?;
    }
    Ok(())
}

/// bpf-linker 0.13 linked against the nightly toolchain's libLLVM (see TOOLCHAIN notes in
/// ARCHITECTURE.md): the default build wants an LLVM this machine does not have. A marker
/// file named after the libLLVM it was built against tells when a new nightly needs a
/// rebuild.
fn bpf_linker() -> Result<()> {
    let sysroot = capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let syslib = PathBuf::from(sysroot.trim()).join("lib");
    let so = std::fs::read_dir(&syslib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: is the nightly toolchain complete?",
                syslib.display()
            )
        })?;
    let version = capture(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV shows no LLVM version")?
        .to_string();
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    let marker = cargo_home.join("bin").join(format!(".bpf-linker-{so}"));
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && marker.exists() {
        return Ok(());
    }
    println!("xtask setup: building bpf-linker 0.13.0 against {so} (about 2 minutes)");
    let llvm = cargo_home.join("bpf-linker-llvm/lib");
    std::fs::create_dir_all(&llvm)?;
    for name in ["libLLVM.so", so.as_str()] {
        let link = llvm.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(syslib.join(&so), &link)?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .env("LLVM_PREFIX", cargo_home.join("bpf-linker-llvm"))
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", syslib.display()),
        )
        .args([
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--locked",
            "--force",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")]))?;
    std::fs::write(&marker, b"")?;
    Ok(())
}

/// Debian packages for the e2e tests, the demo and the live benchmarks.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "tcpdump",
    "curl",
    "bpftool",
    "nftables",
    "wrk",
    "nginx-light",
    // bench-replay: what users run today to pull HTTP requests out of a capture.
    "tshark",
    // fleet mode's tests and demo: the shared store, and certificates for rediss://.
    "redis-server",
    "openssl",
    // the web console's browser test (headless).
    "chromium",
];

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        println!(
            "xtask setup: not root, so not installing {missing:?}; the root e2e tests will be skipped"
        );
        return Ok(());
    }
    let install = || {
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        run(Command::new("apt-get").args(["update"]))?;
        if !install() {
            bail!("apt-get install {missing:?} failed");
        }
    }
    Ok(())
}

fn is_root() -> bool {
    capture(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0")
}

fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A benchmark in network namespaces against the release agent (root only).
fn live_bench(root: &Path, name: &str, bench: fn(&Path, &Path) -> Result<()>) -> Result<()> {
    setup()?;
    if !is_root() {
        bail!("{name} needs root: it creates network namespaces and attaches the agent");
    }
    cargo(root, &["build", "--release", "--locked", "-p", "seqshield"])?;
    bench(root, &root.join("target/release/seqshield"))
}

fn demo_replay(root: &Path) -> Result<()> {
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
            "--bench",
            "rules",
            "--locked",
        ],
    )?;
    let criterion = root.join("target/criterion");
    let read = |name: &str| -> Result<(f64, f64)> {
        let dir = criterion.join(if name.contains('/') { "" } else { "requests" });
        let bench: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            dir.join(name).join("new/benchmark.json"),
        )?)?;
        let estimates: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            dir.join(name).join("new/estimates.json"),
        )?)?;
        let elements = bench["throughput"]["Elements"]
            .as_f64()
            .or_else(|| bench["throughput"]["Bytes"].as_f64())
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
    let (_, rules_ns) = read("pipeline_with_expression_rules")?;
    println!(
        "with 3 expression rules, a rate rule, enumeration: {:.0} ns/request ({:+.1}%)",
        rules_ns / requests,
        (rules_ns / pipeline_ns - 1.0) * 100.0
    );
    println!("\n== one expression rule, nine earlier operations (target <= 300 ns) ==");
    for rule in ["msec_since", "never_called", "count_reads", "http_fields"] {
        let ns = |engine: &str| -> Result<f64> {
            let estimates: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
                // (criterion writes "compiled/x" as "compiled_x")
                criterion
                    .join("expression_rule")
                    .join(format!("{engine}_{rule}"))
                    .join("new/estimates.json"),
            )?)?;
            estimates["mean"]["point_estimate"]
                .as_f64()
                .context("mean in estimates.json")
        };
        let (compiled, interpreted) = (ns("compiled")?, ns("cel_interpreter")?);
        println!(
            "{rule:<13} compiled {compiled:>6.0} ns   cel interpreter {interpreted:>6.0} ns   ({:.0}x)",
            interpreted / compiled
        );
    }
    let (bytes, trickled_ns) = read("slow_head/one_byte_segments")?;
    let (_, whole_ns) = read("slow_head/one_segment")?;
    println!(
        "\n== a {bytes} B head one byte per segment ==\n{:.0} ns per segment; {:.2} ms in all, \
         {:.0}x the same head in one segment ({:.1} µs)",
        trickled_ns / bytes,
        trickled_ns / 1e6,
        trickled_ns / whole_ns,
        whole_ns / 1e3
    );
    Ok(())
}

const BIN: &str = "/usr/local/bin/seqshield";
const CONFIG_DIR: &str = "/etc/seqshield";
const UNIT: &str = "/etc/systemd/system/seqshield.service";

fn install(root: &Path) -> Result<()> {
    if !is_root() {
        bail!("install writes to /usr/local/bin, /etc and systemd: run it as root");
    }
    run(Command::new("install")
        .args(["-s", "-m", "0755"])
        .arg(root.join("target/release/seqshield"))
        .arg(BIN))?;
    std::fs::create_dir_all(CONFIG_DIR)?;
    let config = Path::new(CONFIG_DIR).join("config.toml");
    if config.exists() {
        println!("{} exists: kept", config.display());
    } else {
        run(Command::new("install")
            .args(["-m", "0644"])
            .arg(root.join("packaging/config.toml"))
            .arg(&config))?;
    }
    run(Command::new("install")
        .args(["-m", "0644"])
        .arg(root.join("packaging/seqshield.service"))
        .arg(UNIT))?;
    if systemd_running() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
        println!(
            "installed; set [capture] interface in {}, then: systemctl enable --now seqshield",
            config.display()
        );
    } else {
        println!(
            "installed (systemd is not running here: the unit takes effect on a systemd host)"
        );
    }
    Ok(())
}

fn uninstall() -> Result<()> {
    if !is_root() {
        bail!("uninstall removes files from /usr/local/bin, /etc and systemd: run it as root");
    }
    if systemd_running() {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "seqshield"])
            .status();
    }
    for path in [BIN, UNIT] {
        match std::fs::remove_file(path) {
            Ok(()) => println!("removed {path}"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {path}")),
        }
    }
    if Path::new(CONFIG_DIR).exists() {
        std::fs::remove_dir_all(CONFIG_DIR)?;
        println!("removed {CONFIG_DIR}");
    }
    if systemd_running() {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
    println!("learned state in /var/lib/seqshield is kept (remove it by hand to forget it)");
    Ok(())
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").exists()
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// `cargo build|run --release --locked -p PACKAGE --example EXAMPLE`.
fn example(root: &Path, verb: &str, package: &str, example: &str) -> Result<()> {
    cargo(
        root,
        &[
            verb,
            "--release",
            "--locked",
            "-p",
            package,
            "--example",
            example,
        ],
    )
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    if args.first().is_some_and(|a| a.starts_with('+')) {
        // A toolchain override goes through rustup's proxy, not this toolchain's cargo.
        return run(Command::new("cargo")
            .current_dir(root)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .args(args));
    }
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
