//! `seqshield run`: the live agent. Attaches the capture, serves the admin API, feeds
//! every captured segment to the same pipeline replay uses, and detaches on SIGTERM or
//! SIGINT (the kernel detaches it on any other exit: the link dies with the process).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, AgentState};
use crate::alerts::JsonLines;
use crate::config::{Config, ConfigError};
use crate::pipeline::Pipeline;
use crate::source::live::{KernelCounters, LiveCapture, LiveError};
use crate::source::ring::wall_clock_now;
use crate::state::{self, StateError};

/// How often kernel counters are read and idle state is swept.
const TICK: Duration = Duration::from_secs(1);

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
}

/// Runs until SIGTERM or SIGINT; everything attached is detached before it returns.
pub async fn run(config: &Config, interface: &str) -> Result<(), DaemonError> {
    LiveCapture::preflight(interface)?;
    let key = state::load_or_create_key(&config.state.dir)?;
    let shared = Arc::new(AgentState::new(Pipeline::new(config, &key)?));
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut capture =
        LiveCapture::attach(interface, &config.capture.ports, config.capture.snaplen)?;
    let mut kernel_log = capture.take_kernel_log();
    // The API answers only once the capture is attached: readiness (SPEC §9).
    let addr = config.admin.listen.clone();
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| DaemonError::Admin {
            addr: addr.clone(),
            source,
        })?;
    let server = tokio::spawn(axum::serve(listener, admin::router(shared.clone())).into_future());
    tracing::info!(interface, admin = %addr, "seqshield running");

    let mut alerts = JsonLines::new(std::io::stdout());
    let mut tick = tokio::time::interval(TICK);
    let mut last = KernelCounters::default();
    loop {
        tokio::select! {
            batch = capture.next_batch_with(|| shared.pipeline(), |pipeline, segment| pipeline.process(&segment, &mut alerts)) => {
                if let Err(e) = batch {
                    tracing::error!(error = %e, "reading the capture failed; stopping");
                    break;
                }
            }
            _ = tick.tick() => {
                let counters = capture.counters();
                report_losses(&last, &counters);
                last = counters;
                let mut pipeline = shared.pipeline();
                pipeline.set_lost_events(counters.lost);
                pipeline.tick(wall_clock_now(), &mut alerts);
                drop(pipeline);
                capture.resync_clock();
            }
            () = kernel_log.forward() => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    server.abort();
    drop(capture);
    tracing::info!(interface, "capture detached; exiting");
    Ok(())
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
