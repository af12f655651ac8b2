//! The `seqshield` command: wires the CLI to the library.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use seqshield::alerts::JsonLines;
use seqshield::config::Config;
use seqshield::pipeline::Pipeline;
use seqshield::report::Report;
use seqshield::session::SessionIdentifier;
use seqshield::state;

#[derive(Parser)]
#[command(
    version,
    about = "Sequence analytics and sequence mitigation for API hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the whole pipeline over a pcap / pcapng file: alerts to stdout, a report to a file.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        pcap: PathBuf,
        /// Where to write the report (JSON); without it the table goes to stderr.
        #[arg(long)]
        report_out: Option<PathBuf>,
    },
    /// Prints a report file as a readable table.
    Report {
        /// A report written by `replay --report-out`.
        file: PathBuf,
        /// Print the JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Prints the keyed hash of a session value under each configured identifier, to
    /// search alerts and logs for it.
    SessionHash {
        #[arg(long, default_value = "/etc/seqshield/config.toml")]
        config: PathBuf,
        value: String,
    },
    /// Checks a config file (and its rules and OpenAPI import) without running anything.
    CheckConfig { config: PathBuf },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Replay {
            config,
            pcap,
            report_out,
        } => replay(&config, &pcap, report_out.as_deref()),
        Command::Report { file, json } => print_report(&file, json),
        Command::SessionHash { config, value } => session_hash(&config, &value),
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            Pipeline::new(&config, &[0; 32])?;
            println!("{}: ok", config.source.display());
            Ok(())
        }
    }
}

fn replay(config_path: &Path, pcap: &Path, report_out: Option<&Path>) -> Result<()> {
    let config = Config::load(config_path)?;
    let key = state::load_or_create_key(&config.state.dir)?;
    let mut pipeline = Pipeline::new(&config, &key)?;
    let capture = map_capture(pcap)?;
    let stdout = std::io::stdout().lock();
    let mut alerts = JsonLines::new(stdout);
    let counters = pipeline
        .replay_pcap(&capture, &config.capture.ports, &mut alerts)
        .with_context(|| format!("replaying {}", pcap.display()))?;
    if counters.truncated_file {
        tracing::warn!(capture = %pcap.display(), "the capture ends inside a packet (cut off); replayed what was whole");
    }
    let report = pipeline.report(pipeline.newest());
    tracing::info!(
        frames = counters.frames,
        segments = counters.segments,
        undecodable = counters.undecodable,
        requests = report.stats.requests,
        alerts = report.stats.alerts,
        "replay done"
    );
    match report_out {
        Some(path) => write_report(&report, path)?,
        None => eprint!("{}", report.to_table()),
    }
    Ok(())
}

/// The capture's bytes: mapped when it is a regular file (no copy, memory stays
/// bounded by the page cache), read otherwise (a pipe).
fn map_capture(path: &Path) -> Result<CaptureBytes> {
    let file =
        File::open(path).with_context(|| format!("cannot open capture {}", path.display()))?;
    // SAFETY: the map is read-only and private to this process. If another process
    // truncates the file while we replay it, reads past the new end fault (SIGBUS): replay
    // finished captures, not ones still being written.
    match unsafe { memmap2::Mmap::map(&file) } {
        Ok(map) => Ok(CaptureBytes::Mapped(map)),
        Err(_) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read capture {}", path.display()))?;
            Ok(CaptureBytes::Read(bytes))
        }
    }
}

enum CaptureBytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for CaptureBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            CaptureBytes::Mapped(m) => m,
            CaptureBytes::Read(v) => v,
        }
    }
}

fn write_report(report: &Report, path: &Path) -> Result<()> {
    let file =
        File::create(path).with_context(|| format!("cannot create report {}", path.display()))?;
    let mut out = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut out, report)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn print_report(path: &Path, json: bool) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read report {}", path.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a seqshield report", path.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

fn session_hash(config_path: &Path, value: &str) -> Result<()> {
    let config = Config::load(config_path)?;
    let key = state::load_or_create_key(&config.state.dir)?;
    let identifier = SessionIdentifier::new(&config.session.identifiers, &key);
    if config.session.identifiers.is_empty() {
        bail!(
            "{}: [session] identifiers is empty: no session can be named",
            config_path.display()
        );
    }
    for (ident, hash) in identifier.hashes_of(value) {
        println!("{hash}  {ident}");
    }
    Ok(())
}
