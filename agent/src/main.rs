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
    /// Log lines on stderr: `pretty` for people, `json` (one object per line) for
    /// journald and collectors. Default: pretty on a terminal, json otherwise.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
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
        /// Resume from the state dir's snapshot and save one at the end, like the agent.
        #[arg(long)]
        persist: bool,
    },
    /// Runs the live agent: captures on an interface (needs root), serves the admin API,
    /// writes alerts to stdout. Stops cleanly on SIGTERM / SIGINT.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Interface to capture on (overrides `[capture] interface`).
        #[arg(long)]
        iface: Option<String>,
    },
    /// Prints a report as a readable table: from a file written by `replay --report-out`,
    /// or, without a file, from the running agent's admin API.
    Report {
        file: Option<PathBuf>,
        /// Print the JSON instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        agent: AgentAddress,
    },
    /// The running agent's operations, with their counts.
    Operations {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        agent: AgentAddress,
    },
    /// A session's current history in the running agent (the hash alerts show).
    Session {
        hash: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        agent: AgentAddress,
    },
    /// Prints the keyed hash of a session value under each configured identifier, to
    /// search alerts and logs for it.
    SessionHash {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        value: String,
    },
    /// Checks a config file (and its rules and OpenAPI import) without running anything.
    CheckConfig { config: PathBuf },
    /// Sequence rules: check a file, or draft allow rules from what was learned.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// The journey graph of a report (operations, transitions weighted by count and
    /// precedence, the top sequences as paths) as DOT, mermaid or JSON.
    Graph {
        /// A report file; without it, the running agent's report.
        report: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        /// Top sequences (three operations or more) drawn as highlighted paths.
        #[arg(long, default_value_t = 3)]
        top: usize,
        #[command(flatten)]
        agent: AgentAddress,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
    Json,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Checks a config file's rules (operations resolve, titles, sequences).
    Check { file: PathBuf },
    /// Drafts allow rules (TOML) from a report: per final operation, the best-supported
    /// preceding sequence, ranked by its lower confidence bound, with its evidence. With
    /// --rate: per-session rate limits per operation from the report's request rates.
    Suggest {
        /// A report file; without it, the running agent's report.
        report: Option<PathBuf>,
        #[command(flatten)]
        agent: AgentAddress,
        /// Lowest 95% lower bound of the score to suggest.
        #[arg(long, default_value_t = 0.5)]
        min_lower: f64,
        /// Fewest occurrences of the sequence to suggest.
        #[arg(long, default_value_t = 5)]
        min_count: u64,
        /// Draft rate rules instead: limit = p99 of requests per session per 10 minutes
        /// times --headroom.
        #[arg(long)]
        rate: bool,
        #[arg(long, default_value_t = 2.0, requires = "rate")]
        headroom: f64,
        /// Fewest (session, 10-minute window) observations of an operation to draft a
        /// rate rule for it.
        #[arg(long, default_value_t = 20, requires = "rate")]
        min_windows: u64,
    },
}

/// Where the running agent's admin API is: `--admin`, else its config's `[admin] listen`.
#[derive(clap::Args)]
struct AgentAddress {
    /// Config of the running agent (for its admin address).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Admin address of the running agent (overrides the config's).
    #[arg(long)]
    admin: Option<String>,
}

const DEFAULT_CONFIG: &str = "/etc/seqshield/config.toml";

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // What went wrong and what to do, with its causes: no backtrace, even with
            // RUST_BACKTRACE set (these are the user's errors, not the program's).
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> Result<()> {
    let cli = Cli::parse();
    let terminal = std::io::stderr().is_terminal();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format.unwrap_or(if terminal {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    }) {
        LogFormat::Pretty => builder.with_ansi(terminal).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    match cli.command {
        Command::Replay {
            config,
            pcap,
            report_out,
            persist,
        } => replay(&config, &pcap, report_out.as_deref(), persist),
        Command::Run { config, iface } => run(&config, iface),
        Command::Operations { json, agent } => {
            let ops: Vec<seqshield::report::OperationReport> = agent.get("/api/v1/operations")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ops)?);
            } else {
                println!(
                    "{:<12}  {:>9}  {:>11}  operation",
                    "id", "requests", "occurrences"
                );
                for o in ops {
                    println!(
                        "{:<12}  {:>9}  {:>11}  {}",
                        o.id,
                        o.requests,
                        o.occurrences,
                        o.human()
                    );
                }
            }
            Ok(())
        }
        Command::Session { hash, json, agent } => {
            let session: serde_json::Value = agent.get(&format!("/api/v1/sessions/{hash}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&session)?);
            } else {
                println!("session {hash} (oldest first)\n{:>10}  operation", "age");
                for e in session["history"].as_array().into_iter().flatten() {
                    println!(
                        "{:>9.1}s  {}",
                        e["age_secs"].as_f64().unwrap_or(0.0),
                        e["operation"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        Command::Report {
            file: Some(file),
            json,
            ..
        } => print_report(&read_report(&file)?, json),
        Command::Report {
            file: None,
            json,
            agent,
        } => print_report(&agent.get("/api/v1/report")?, json),
        Command::SessionHash { config, value } => session_hash(&config, &value),
        Command::Graph {
            report,
            format,
            top,
            agent,
        } => {
            let report = match report {
                Some(file) => read_report(&file)?,
                None => agent.get("/api/v1/report")?,
            };
            let graph = seqshield::graph::JourneyGraph::from_report(&report, top);
            match format {
                GraphFormat::Dot => print!("{}", graph.to_dot()),
                GraphFormat::Mermaid => print!("{}", graph.to_mermaid()),
                GraphFormat::Json => println!("{}", serde_json::to_string_pretty(&graph)?),
            }
            Ok(())
        }
        Command::Rules {
            command: RulesCommand::Check { file },
        } => {
            let config = Config::load(&file)?;
            let pipeline = Pipeline::new(&config, &[0; 32])?;
            println!(
                "{}: ok, {} rules",
                file.display(),
                pipeline.rules().rules().len()
            );
            Ok(())
        }
        Command::Rules {
            command:
                RulesCommand::Suggest {
                    report,
                    agent,
                    min_lower,
                    min_count,
                    rate,
                    headroom,
                    min_windows,
                },
        } => {
            let report = match report {
                Some(file) => read_report(&file)?,
                None => agent.get("/api/v1/report")?,
            };
            if !(headroom.is_finite() && headroom >= 1.0) {
                bail!("--headroom must be a number of at least 1, got {headroom}");
            }
            let drafted = if rate {
                seqshield::rules::suggest_rate_rules(&report, headroom, min_windows)
            } else {
                seqshield::rules::suggest_allow_rules(&report, min_lower, min_count)
            };
            print!("{drafted}");
            Ok(())
        }
        Command::CheckConfig { config } => check_config(&config),
    }
}

fn replay(config_path: &Path, pcap: &Path, report_out: Option<&Path>, persist: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    let local_key = state::load_or_create_key(&config.state.dir)?;
    let (key, fleet) = seqshield::fleet::start(&config, local_key)?;
    let mut pipeline = Pipeline::new(&config, &key)?;
    if let Some(fleet) = fleet {
        pipeline.set_fleet(fleet);
    }
    if persist {
        seqshield::persist::resume(&mut pipeline, &config.state.dir);
    }
    let capture = map_capture(pcap)?;
    let stdout = std::io::stdout().lock();
    let mut alerts = JsonLines::new(stdout);
    let counters = pipeline
        .replay_pcap(&capture, &config.capture.ports, &mut alerts)
        .with_context(|| format!("replaying {}", pcap.display()))?;
    if counters.truncated_file {
        tracing::warn!(capture = %pcap.display(), "the capture ends inside a packet (cut off); replayed what was whole");
    }
    // In a fleet the report shows the fleet's counts: this replay's own go first.
    pipeline.flush_fleet();
    let report = pipeline.report(pipeline.newest());
    tracing::info!(
        frames = counters.frames,
        segments = counters.segments,
        undecodable = counters.undecodable,
        requests = report.stats.requests,
        alerts = report.stats.alerts,
        "replay done"
    );
    if persist {
        let bytes = seqshield::persist::save(&config.state.dir, &pipeline.snapshot())?;
        tracing::info!(event = "snapshot_saved", bytes, dir = %config.state.dir.display(), "learned state saved");
    }
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
    // Populated up front: the kernel maps the whole file in one go rather than one
    // page fault per 4 KiB as the replay walks it (3.6% of a replay's time).
    match unsafe { memmap2::MmapOptions::new().populate().map(&file) } {
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

fn run(config_path: &Path, iface: Option<String>) -> Result<()> {
    let config = Config::load(config_path)?;
    let Some(interface) = iface.or_else(|| config.capture.interface.clone()) else {
        bail!(
            "{}: capture.interface: no interface to capture on; set it or pass --iface",
            config_path.display()
        );
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(seqshield::daemon::run(&config, &interface))?;
    Ok(())
}

/// Every error in a config at once: sections, endpoints, rules, the OpenAPI import and
/// the rules' operations; one line each.
fn check_config(path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (config, mut errors) = Config::check(&text, path);
    match seqshield::ops::Catalog::from_config(&config) {
        Err(e) => errors.push(e),
        Ok(mut catalog) => match seqshield::rules::RuleSet::compile_all(
            &config.rules,
            &mut catalog,
            &config.source,
        ) {
            Ok(rules) if errors.is_empty() => {
                println!(
                    "{}: ok ({} operations, {} rules)",
                    path.display(),
                    catalog.len(),
                    rules.rules().len()
                );
                return Ok(());
            }
            Ok(_) => {}
            Err(more) => errors.extend(more),
        },
    }
    for e in &errors {
        eprintln!("{e}");
    }
    bail!("{}: {} error(s)", path.display(), errors.len())
}

fn read_report(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read report {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a seqshield report", path.display()))
}

impl AgentAddress {
    /// GETs `path` from the running agent's admin API.
    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let config = if self.config.exists() {
            Some(Config::load(&self.config)?)
        } else {
            None
        };
        let addr = match (&self.admin, &config) {
            (Some(addr), _) => addr.clone(),
            (None, Some(config)) => config.admin.listen.clone(),
            (None, None) => seqshield::config::AdminConfig::default().listen,
        };
        // The admin token, when this user may read it (reads on loopback need none).
        let token = config
            .as_ref()
            .map(|c| c.admin.token_path(&c.state.dir))
            .and_then(|file| std::fs::read_to_string(file).ok())
            .map(|t| t.trim().to_string());
        if let Some(socket) = addr.strip_prefix(seqshield::admin::UNIX_PREFIX) {
            let (status, body) = unix_get(Path::new(socket), path, token.as_deref())?;
            if !(200..300).contains(&status) {
                let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                bail!(
                    "{addr}{path}: {status} {}",
                    error["error"].as_str().unwrap_or("")
                );
            }
            return serde_json::from_slice(&body)
                .with_context(|| format!("{addr}{path} did not answer as expected"));
        }
        let url = format!("http://{addr}{path}");
        let mut request = ureq::get(&url);
        if let Some(token) = &token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .with_context(|| format!("no agent answering at {url}: is `seqshield run` up, and is [admin] listen this address?"))?;
        if !response.status().is_success() {
            let body: serde_json::Value = response.body_mut().read_json().unwrap_or_default();
            bail!(
                "{url}: {} {}",
                response.status(),
                body["error"].as_str().unwrap_or("")
            );
        }
        response
            .body_mut()
            .read_json::<T>()
            .with_context(|| format!("{url} did not answer as expected"))
    }
}

/// One HTTP/1.1 GET over the agent's unix socket: status and body.
fn unix_get(socket: &Path, path: &str, token: Option<&str>) -> Result<(u16, Vec<u8>)> {
    use std::io::Read;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "no agent answering on {}: is `seqshield run` up?",
            socket.display()
        )
    })?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(&bytes)? else {
        bail!("{}: incomplete HTTP response", socket.display());
    };
    Ok((response.code.unwrap_or(0), bytes[head..].to_vec()))
}

fn print_report(report: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

fn session_hash(config_path: &Path, value: &str) -> Result<()> {
    let config = Config::load(config_path)?;
    // In a fleet, sessions are hashed with the fleet's secret.
    let (key, _) = seqshield::fleet::start(&config, state::load_or_create_key(&config.state.dir)?)?;
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
