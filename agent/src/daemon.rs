//! `seqshield run`: the live agent. Attaches the capture, serves the admin API, feeds
//! every captured segment to the same pipeline replay uses, and detaches on SIGTERM or
//! SIGINT (the kernel detaches it on any other exit: the link dies with the process).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, AdminListener, AgentState, ServeLimits, UNIX_PREFIX};
use crate::alerts::{Alert, OutcomeSink, QueuedAlerts, RotatingFile};
use crate::config::{Config, ConfigError, EnforceMode};
use crate::enforce::hold::{Holder, Release, compile_guards};
use crate::enforce::kernel::KernelEnforcer;
use crate::enforce::{Verdict, VerdictAction};
use crate::metrics::KernelView;
use crate::packet::{Captured, FlowKey, Segment};
use crate::persist;
use crate::pipeline::Pipeline;
use crate::source::live::{AttachOptions, KernelCounters, KernelHolds, LiveCapture, LiveError};
use crate::source::pcap::decode_frame;
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
    #[error("fleet: {0}")]
    Fleet(#[from] crate::fleet::FleetError),
}

/// Runs until SIGTERM or SIGINT; everything attached is detached before it returns.
pub async fn run(config: &Config, interface: &str) -> Result<(), DaemonError> {
    LiveCapture::preflight(interface)?;
    let local_key = state::load_or_create_key(&config.state.dir)?;
    let (key, fleet) = crate::fleet::start(config, local_key)?;
    let mut pipeline = Pipeline::new(config, &key)?;
    if let Some(fleet) = fleet {
        pipeline.set_fleet(fleet);
    }
    persist::resume(&mut pipeline, &config.state.dir);
    let shared = Arc::new(AgentState::new(pipeline, config.source.clone()));
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let enforce = config.enforce.mode == EnforceMode::Enforce;
    let hold = enforce && config.enforce.hold;
    if config.enforce.hold && !enforce {
        tracing::warn!("[enforce] hold applies in enforce mode only: nothing is held");
    }
    let mut capture = LiveCapture::attach(
        interface,
        &config.capture.ports,
        AttachOptions {
            snaplen: config.capture.snaplen,
            enforce,
            xdp: config.enforce.xdp,
            hold: hold.then_some(config.enforce.hold_timeout),
        },
    )?;
    let enforcer = if enforce {
        Some(capture.take_enforcer()?)
    } else {
        None
    };
    let holds = if hold {
        let mut holds = Holds {
            holder: Holder::new(config.enforce.hold_timeout),
            kernel: capture.take_holds()?,
            ports: config.capture.ports.clone(),
            judged: Vec::new(),
        };
        holds.install_guards(&shared.pipeline());
        Some(holds)
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
    let access = admin::Access::new(token, config.admin.reads_need_token())
        .with_public_metrics(config.admin.metrics_public);
    let router = admin::router(shared.clone(), access);
    let (listener, socket_file) = match addr.strip_prefix(UNIX_PREFIX) {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            let listener = admin::bind_unix(&path).map_err(admin_err)?;
            (AdminListener::Unix(listener), Some(path))
        }
        None => {
            let listener = TcpListener::bind(&addr).await.map_err(admin_err)?;
            (AdminListener::Tcp(listener), None)
        }
    };
    let server = tokio::spawn(admin::serve(listener, router, ServeLimits::default()));
    tracing::info!(interface, admin = %addr, "seqshield running");
    // Under systemd (Type=notify): ready now that the capture is attached and the API
    // answers. Outside systemd this does nothing.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

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
    let (alerts, alert_counters, alert_writer) =
        QueuedAlerts::start(alert_out).map_err(DaemonError::Thread)?;
    shared.set_alert_counters(alert_counters);
    let outcomes = LiveOutcomes {
        alerts,
        recent: shared.recent_alerts(),
        enforcer,
        holds,
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
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    stop.store(true, Ordering::Relaxed);
    let result = thread.join();
    // The capture thread dropped its alert queue: the writer ends once it is written.
    let _ = alert_writer.join();
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
    let (mut ticks, mut block_entries) = (0u64, 0u64);
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
                match outcomes.holds.as_mut().and_then(|h| h.keep(&packet)) {
                    // A held frame, decoded once: kept, read, then settled.
                    Some(segment) => {
                        let flow = segment.flow;
                        pipeline.process_captured(&Captured::Segment(segment), &mut outcomes);
                        if let Some(holds) = outcomes.holds.as_mut() {
                            holds.judged.push((flow, pipeline.awaiting_request(&flow)));
                        }
                    }
                    None => pipeline.process_captured(&packet, &mut outcomes),
                }
                requests += pipeline.stats_requests() - before;
            },
        );
        // Fleet mode: the batch's shared histories in one round trip, and their
        // verdicts, before held requests are settled.
        shared.pipeline().settle_fleet(&mut outcomes);
        if let Some(holds) = &mut outcomes.holds {
            holds.settle(&capture);
        }
        if requests > 0 {
            let each = started.elapsed().as_secs_f64() / requests as f64;
            (0..requests).for_each(|_| shared.request_seconds().observe(each));
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            // The watchdog is fed by the capture loop itself: a stuck capture thread
            // (not just a live process) gets the agent restarted (WatchdogSec).
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            let counters = capture.counters();
            ticks += 1;
            let map_refusals = match outcomes.enforcer.as_mut() {
                Some(enforcer) => {
                    enforcer.sweep();
                    // Walking the maps costs a syscall per entry: every 10 ticks once
                    // they hold many.
                    if block_entries < 1024 || ticks % 10 == 1 {
                        block_entries = enforcer.kernel_entries();
                    }
                    enforcer.refusals()
                }
                None => 0,
            };
            shared.set_kernel(KernelView {
                counters,
                block_entries,
                map_refusals,
                hold: outcomes
                    .holds
                    .as_ref()
                    .map(|h| h.holder.stats())
                    .unwrap_or_default(),
            });
            report_losses(&last, &counters);
            last = counters;
            let mut pipeline = shared.pipeline();
            pipeline.set_lost_events(counters.lost);
            pipeline.tick(wall_clock_now(), &mut outcomes);
            if let Some(holds) = &mut outcomes.holds {
                // Rules may have been reloaded.
                holds.install_guards(&pipeline);
            }
            drop(pipeline);
            capture.resync_clock();
        }
        if last_snapshot.elapsed() >= SNAPSHOT_INTERVAL {
            last_snapshot = Instant::now();
            save_snapshot(shared, state_dir);
        }
    }
    // Stopping: this agent's last counts go to the fleet's.
    shared.pipeline().flush_fleet();
    // What is held goes back now rather than by the clients' retransmissions.
    if let Some(holds) = &mut outcomes.holds {
        for release in holds.holder.release_all() {
            holds.put_back(&capture, release);
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

/// Held requests (`[enforce] hold`): their frames until the verdict, and the kernel's
/// hold state.
struct Holds {
    holder: Holder,
    kernel: KernelHolds,
    ports: Vec<u16>,
    /// Connections whose held frames the pipeline just read, and whether a request
    /// there still waits for the rest of its head.
    judged: Vec<(FlowKey, bool)>,
}

impl Holds {
    /// The guards of the pipeline's rules, into the kernel (when they changed).
    fn install_guards(&mut self, pipeline: &Pipeline) {
        let (guards, skipped) = compile_guards(&pipeline.guarded_operations());
        if !skipped.is_empty() {
            tracing::warn!(
                ?skipped,
                "operations the kernel cannot hold (still cut after the fact)"
            );
        }
        if let Err(e) = self.kernel.set_guards(&guards) {
            tracing::error!(error = %e, "guards not installed: guarded requests are not held");
        }
    }

    /// Keeps a held frame; the segment it carries, for the pipeline to read (then its
    /// connection is settled).
    fn keep<'a>(&mut self, packet: &Captured<'a>) -> Option<Segment<'a>> {
        let &Captured::HeldFrame { ts, frame, cut } = packet else {
            return None;
        };
        let Some(Captured::Segment(seg)) = decode_frame(ts, frame, cut, &self.ports) else {
            return None; // Not a segment of ours: the kernel's hold times out (fail-open).
        };
        let end = seg.seq.wrapping_add(seg.wire_len);
        // Refused only when 65 536 connections are held at once: that frame is left to
        // the kernel's hold timeout and the client's retransmission (counted).
        self.holder.hold(seg.flow, ts, seg.seq, end, frame, cut);
        Some(seg)
    }

    /// The verdict cut `flow`: its held frames are dropped (the application never reads
    /// them). Returns the µs since the first of them was captured.
    fn discard(&mut self, flow: &FlowKey) -> Option<u64> {
        let since = self.holder.discard(flow)?;
        self.kernel.forget(flow);
        Some(wall_clock_now().saturating_sub(since) / 1_000)
    }

    /// After a batch: judged connections' held frames go back into the stack; holds past
    /// the timeout too (fail-open).
    fn settle(&mut self, capture: &LiveCapture) {
        for (flow, awaiting) in std::mem::take(&mut self.judged) {
            if !awaiting && let Some(release) = self.holder.release(&flow) {
                self.put_back(capture, release);
            }
        }
        if !self.holder.is_empty() {
            for release in self.holder.expired(Instant::now()) {
                tracing::warn!(event = "hold_timeout", client = %release.flow.client, "no verdict within the hold timeout: released");
                self.put_back(capture, release);
            }
        }
    }

    fn put_back(&mut self, capture: &LiveCapture, release: Release) {
        if let Err(e) = self.kernel.release(&release.flow, release.released_seq) {
            tracing::warn!(error = %e, "hold state not updated: the client's retransmission will pass after the timeout");
        }
        for frame in &release.frames {
            if let Err(e) = capture.reinject(frame) {
                self.holder.count_reinject_error();
                tracing::warn!(error = %e, client = %release.flow.client, "released frame not put back: the client's retransmission delivers it");
            }
        }
        tracing::debug!(
            event = "hold_released",
            client = %release.flow.client,
            frames = release.frames.len(),
            latency_us = wall_clock_now().saturating_sub(release.since) / 1_000,
            "held request released"
        );
    }
}

/// Alerts to stdout; verdicts to the kernel (enforce mode), and to held requests.
struct LiveOutcomes {
    alerts: QueuedAlerts,
    /// The console's list of the latest alerts.
    recent: Arc<crate::admin::RecentAlerts>,
    enforcer: Option<KernelEnforcer>,
    holds: Option<Holds>,
}

impl OutcomeSink for LiveOutcomes {
    fn alert(&mut self, alert: Alert) {
        self.recent.push(&alert);
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
        let applied = enforcer.apply(verdict);
        let reset_us = wall_clock_now().saturating_sub(verdict.at) / 1_000;
        // Held frames of a cut connection are dropped: the request never reaches the
        // application.
        let held_us = match (&mut self.holds, verdict.action) {
            (Some(holds), VerdictAction::Cut { .. }) => holds.discard(&verdict.flow),
            _ => None,
        };
        match applied {
            Ok(latency_ns) => tracing::info!(
                event = "enforced",
                client,
                server,
                action = ?verdict.action,
                latency_us = latency_ns / 1_000,
                reset_latency_us = reset_us,
                "connection enforced (latency: violating packet to kernel map update; reset: to the connection reset)"
            ),
            Err(e) => {
                tracing::error!(event = "enforce_failed", client, server, error = %e, "enforcement failed")
            }
        }
        if let Some(latency_us) = held_us {
            tracing::debug!(
                event = "hold_discarded",
                client = %verdict.flow.client,
                latency_us,
                "held request blocked (latency: held packet to reset): it never reaches the application"
            );
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
