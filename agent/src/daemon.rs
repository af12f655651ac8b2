//! `seqshield run`: the live agent. Attaches the capture, serves the admin API, feeds
//! every captured segment to the same pipeline replay uses, and detaches on SIGTERM or
//! SIGINT (the kernel detaches it on any other exit: the link dies with the process).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, AgentState, UNIX_PREFIX};
use crate::alerts::{Alert, JsonLines, OutcomeSink, RotatingFile};
use crate::config::{Config, ConfigError, EnforceMode};
use crate::enforce::Verdict;
use crate::enforce::kernel::KernelEnforcer;
use crate::persist;
use crate::pipeline::Pipeline;
use crate::source::live::{KernelCounters, LiveCapture, LiveError};
use crate::source::ring::wall_clock_now;
use crate::state::{self, StateError};

/// How often kernel counters are read and idle state is swept.
const TICK: Duration = Duration::from_secs(1);
/// How often learned state is saved (and on every clean exit).
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Capture(#[from] LiveError),
    #[error("admin API on {addr}: {source}; set [admin] listen to a free address")]
    Admin {
        addr: String,
        source: std::io::Error,
    },
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
    #[error("alert file {path}: {source}")]
    AlertFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("starting the capture thread: {0}")]
    Thread(std::io::Error),
    #[error("the capture thread panicked; the kernel programs are detached")]
    CapturePanicked,
}

/// Runs until SIGTERM or SIGINT; everything attached is detached before it returns.
pub async fn run(config: &Config, interface: &str) -> Result<(), DaemonError> {
    LiveCapture::preflight(interface)?;
    let key = state::load_or_create_key(&config.state.dir)?;
    let mut pipeline = Pipeline::new(config, &key)?;
    persist::resume(&mut pipeline, &config.state.dir);
    let shared = Arc::new(AgentState::new(pipeline, config.source.clone()));
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let enforce = config.enforce.mode == EnforceMode::Enforce;
    let mut capture = LiveCapture::attach(
        interface,
        &config.capture.ports,
        config.capture.snaplen,
        enforce,
        config.enforce.xdp,
    )?;
    let enforcer = if enforce {
        Some(capture.take_enforcer()?)
    } else {
        None
    };
    // The API answers only once the capture is attached: readiness (SPEC §9).
    let addr = config.admin.listen.clone();
    let admin_err = |source| DaemonError::Admin {
        addr: addr.clone(),
        source,
    };
    let token_path = config.admin.token_path(&config.state.dir);
    let token = crate::state::load_or_create_token(&token_path)?;
    let access = admin::Access::new(token, config.admin.reads_need_token());
    let router = admin::router(shared.clone(), access);
    let (server, socket_file) = match addr.strip_prefix(UNIX_PREFIX) {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            let listener = admin::bind_unix(&path).map_err(admin_err)?;
            (
                tokio::spawn(axum::serve(listener, router).into_future()),
                Some(path),
            )
        }
        None => {
            let listener = TcpListener::bind(&addr).await.map_err(admin_err)?;
            (
                tokio::spawn(axum::serve(listener, router).into_future()),
                None,
            )
        }
    };
    tracing::info!(interface, admin = %addr, "seqshield running");

    // The capture loop has a thread of its own: blocking poll(2) on the ring, no runtime
    // scheduling between a kernel wakeup and the verdict.
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let alert_out: Box<dyn std::io::Write + Send> = match &config.alerts.file {
        Some(path) => Box::new(
            RotatingFile::open(path, config.alerts.max_bytes, config.alerts.keep).map_err(
                |source| DaemonError::AlertFile {
                    path: path.clone(),
                    source,
                },
            )?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let outcomes = LiveOutcomes {
        alerts: JsonLines::new(alert_out),
        enforcer,
    };
    let state_dir = config.state.dir.clone();
    let thread = {
        let (shared, stop, state_dir) = (shared.clone(), stop.clone(), state_dir.clone());
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                if enforce {
                    realtime_priority();
                }
                let result = capture_loop(capture, &shared, outcomes, &stop, &state_dir);
                let _ = done_tx.send(());
                result
            })
            .map_err(DaemonError::Thread)?
    };
    loop {
        tokio::select! {
            _ = sighup.recv() => match shared.reload_rules() {
                Ok(n) => tracing::info!(event = "rules_reloaded", rules = n, "SIGHUP: rules reloaded"),
                Err(e) => tracing::error!(event = "rules_reload_failed", error = %e, "SIGHUP: reload refused; the old rules stay"),
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = &mut done_rx => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let result = thread.join();
    server.abort();
    if let Some(path) = socket_file {
        let _ = std::fs::remove_file(path);
    }
    save_snapshot(&shared, &state_dir);
    tracing::info!(interface, "capture detached; exiting");
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(DaemonError::CapturePanicked),
    }
}

/// Enforcing, verdicts race the server's answer: the capture thread asks for the lowest
/// real-time priority (SCHED_FIFO 1), so a wakeup does not wait behind busy normal
/// threads. It blocks in poll(2) between batches, so it cannot starve the host. Without
/// CAP_SYS_NICE it stays a normal thread.
fn realtime_priority() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sets this thread's own scheduling policy with a valid parameter.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        tracing::debug!(errno = rc, "capture thread stays at normal priority");
    }
}

/// Reads the ring until `stop`; every `TICK`, kernel counters (losses), idle sweeps and
/// the clock. Dropping `capture` at the end detaches the programs.
fn capture_loop(
    mut capture: LiveCapture,
    shared: &AgentState,
    mut outcomes: LiveOutcomes,
    stop: &AtomicBool,
    state_dir: &Path,
) -> Result<(), LiveError> {
    let mut last_tick = Instant::now();
    let mut last_snapshot = Instant::now();
    let mut last = KernelCounters::default();
    while !stop.load(Ordering::Relaxed) {
        capture.wait()?;
        // Pipeline time per request, timed per batch: two clock reads per wakeup, not
        // per packet, on the hot path.
        let started = Instant::now();
        let mut requests = 0;
        capture.drain_with(
            || shared.pipeline(),
            |pipeline, packet| {
                let before = pipeline.stats_requests();
                pipeline.process_captured(&packet, &mut outcomes);
                requests += pipeline.stats_requests() - before;
            },
        );
        if requests > 0 {
            let each = started.elapsed().as_secs_f64() / requests as f64;
            (0..requests).for_each(|_| shared.request_seconds().observe(each));
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            let counters = capture.counters();
            let block_entries = outcomes
                .enforcer
                .as_mut()
                .map_or(0, |e| e.active_entries() as u64);
            shared.set_kernel(counters, block_entries);
            report_losses(&last, &counters);
            last = counters;
            let mut pipeline = shared.pipeline();
            pipeline.set_lost_events(counters.lost);
            pipeline.tick(wall_clock_now(), &mut outcomes);
            drop(pipeline);
            capture.resync_clock();
        }
        if last_snapshot.elapsed() >= SNAPSHOT_INTERVAL {
            last_snapshot = Instant::now();
            save_snapshot(shared, state_dir);
        }
    }
    Ok(())
}

/// Copies the learned state under the lock, writes it outside it.
fn save_snapshot(shared: &AgentState, dir: &Path) {
    let snapshot = shared.pipeline().snapshot();
    match persist::save(dir, &snapshot) {
        Ok(bytes) => tracing::info!(event = "snapshot_saved", bytes, "learned state saved"),
        Err(e) => tracing::error!(event = "snapshot_failed", error = %e, "learned state not saved"),
    }
}

/// Alerts to stdout; verdicts to the kernel (enforce mode).
struct LiveOutcomes {
    alerts: JsonLines<Box<dyn std::io::Write + Send>>,
    enforcer: Option<KernelEnforcer>,
}

impl OutcomeSink for LiveOutcomes {
    fn alert(&mut self, alert: Alert) {
        self.alerts.alert(alert);
    }

    fn enforce(&mut self, verdict: &Verdict) {
        let Some(enforcer) = &mut self.enforcer else {
            return;
        };
        let (client, server) = (
            verdict.flow.client.to_string(),
            verdict.flow.server.to_string(),
        );
        match enforcer.apply(verdict) {
            Ok(latency_ns) => tracing::info!(
                event = "enforced",
                client,
                server,
                action = ?verdict.action,
                latency_us = latency_ns / 1_000,
                "connection enforced (latency: violating packet to kernel map update)"
            ),
            Err(e) => {
                tracing::error!(event = "enforce_failed", client, server, error = %e, "enforcement failed")
            }
        }
    }
}

/// Lost events are data: a log line with the loss rate whenever the kernel dropped some.
fn report_losses(before: &KernelCounters, now: &KernelCounters) {
    let lost = now.lost.saturating_sub(before.lost);
    if lost == 0 {
        return;
    }
    let captured = now.captured.saturating_sub(before.captured);
    let rate = lost as f64 / (lost + captured) as f64;
    tracing::warn!(
        event = "capture_loss",
        lost,
        captured,
        loss_rate = format!("{:.4}", rate),
        total_lost = now.lost,
        "the kernel ring buffer was full: events lost (the agent is not keeping up)"
    );
}
