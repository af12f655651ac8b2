//! The admin HTTP API of a running agent (loopback by default): the report, and a
//! liveness probe. Handlers read the shared pipeline under its lock, briefly.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use std::path::PathBuf;

use crate::Nanos;
use prometheus_client::metrics::histogram::Histogram;

use crate::alerts::Alert;
use crate::config::{Config, ConfigError};
use crate::metrics;
use crate::metrics::KernelView;
use crate::pipeline::Pipeline;
use crate::report::{OperationReport, Report, ReportFilter};
use crate::rules::RuleView;
use crate::session::SessionId;
use crate::source::ring::wall_clock_now;

/// What the capture loop and the API share.
pub struct AgentState {
    pipeline: Mutex<Pipeline>,
    /// Reloads read the rules from here.
    config_path: PathBuf,
    /// The report time: the wall clock live; a capture's time when serving a replay.
    clock: Box<dyn Fn() -> Nanos + Send + Sync>,
    /// Kernel counters and live kernel block entries, as of the capture loop's last tick.
    kernel: Mutex<KernelView>,
    request_seconds: Histogram,
    /// The alert writer's counts (live agent).
    alerts: std::sync::OnceLock<Arc<crate::alerts::AlertCounters>>,
    /// The latest alerts, for the console.
    recent_alerts: Arc<RecentAlerts>,
    /// The last scored report and when: the console asks for the report and the graph
    /// at once, and scoring a large window is most of both.
    scored: Mutex<Option<(std::time::Instant, Arc<Report>)>>,
}

/// How long a scored report is served again: well inside SPEC §9's "a request shows in
/// the report within 1 s".
const REPORT_REUSE: Duration = Duration::from_millis(250);

/// Alerts the console lists: the latest [`RECENT_ALERTS`] (the alert log has them all).
#[derive(Debug, Default)]
pub struct RecentAlerts(Mutex<std::collections::VecDeque<Alert>>);

pub const RECENT_ALERTS: usize = 100;

impl RecentAlerts {
    pub fn push(&self, alert: &Alert) {
        let mut recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT_ALERTS {
            recent.pop_front();
        }
        recent.push_back(alert.clone());
    }

    /// At most `n`, the newest first.
    pub fn latest(&self, n: usize) -> Vec<Alert> {
        let recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        recent.iter().rev().take(n).cloned().collect()
    }
}

impl AgentState {
    pub fn new(pipeline: Pipeline, config_path: PathBuf) -> Self {
        Self::with_clock(pipeline, config_path, Box::new(wall_clock_now))
    }

    pub fn with_clock(
        pipeline: Pipeline,
        config_path: PathBuf,
        clock: Box<dyn Fn() -> Nanos + Send + Sync>,
    ) -> Self {
        Self {
            pipeline: Mutex::new(pipeline),
            config_path,
            clock,
            kernel: Mutex::new(KernelView::default()),
            request_seconds: metrics::request_seconds_histogram(),
            alerts: std::sync::OnceLock::new(),
            recent_alerts: Arc::default(),
            scored: Mutex::new(None),
        }
    }

    /// The report of the window ending now, scored at most once per [`REPORT_REUSE`];
    /// its inputs are copied under the pipeline's lock and scored off it. Blocking: call
    /// it off the runtime's workers.
    pub fn scored_report(&self) -> Arc<Report> {
        let mut scored = self.scored.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, report)) = &*scored
            && at.elapsed() < REPORT_REUSE
        {
            return report.clone();
        }
        let inputs = self.pipeline().report_inputs(self.now());
        let report = Arc::new(inputs.finish());
        *scored = Some((std::time::Instant::now(), report.clone()));
        report
    }

    /// Where alerts go for the console (the live agent's outcome sink writes them).
    pub fn recent_alerts(&self) -> Arc<RecentAlerts> {
        self.recent_alerts.clone()
    }

    /// The capture loop's latest kernel readings.
    pub fn set_kernel(&self, view: KernelView) {
        *self.kernel.lock().unwrap_or_else(PoisonError::into_inner) = view;
    }

    /// The alert writer's counts, for `/metrics`.
    pub fn set_alert_counters(&self, counters: Arc<crate::alerts::AlertCounters>) {
        let _ = self.alerts.set(counters);
    }

    /// Per-request pipeline time, for the histogram.
    pub fn request_seconds(&self) -> &Histogram {
        &self.request_seconds
    }

    fn now(&self) -> Nanos {
        (self.clock)()
    }

    /// Re-reads the config file and swaps in its rules; on any error the old rules stay.
    pub fn reload_rules(&self) -> Result<usize, ConfigError> {
        let config = Config::load(&self.config_path)?;
        let n = self.pipeline().reload_rules(&config)?;
        *self.scored.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(n)
    }

    /// The pipeline, also after a panic elsewhere held the lock: a report of what was
    /// counted beats no report.
    pub fn pipeline(&self) -> MutexGuard<'_, Pipeline> {
        self.pipeline.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `[admin] listen = "unix:/path"` serves the API on a unix socket instead of TCP.
pub const UNIX_PREFIX: &str = "unix:";

/// Binds the admin API's unix socket, readable and writable by its owner only (0600);
/// a stale socket of an earlier run is replaced.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by an earlier run is replaced; anything else at that path is not
    // ours to delete.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket: choose another [admin] listen path",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// What clients of the admin API can hold: connections at once, the time to send a
/// request head, and a connection's whole life. A slow or greedy client (slow-loris)
/// cannot pin the server's tasks and file descriptors; the capture never waits on it.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub connection_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(60),
        }
    }
}

/// Where the admin API listens.
pub enum AdminListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Serves `router` until the task is dropped: HTTP/1.1 with `limits`; a connection over
/// the cap is closed at once (counted in the log at debug level).
pub async fn serve(listener: AdminListener, router: Router, limits: ServeLimits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let accepted =
            match &listener {
                AdminListener::Tcp(l) => l.accept().await.map(|(s, _)| {
                    tokio::spawn(serve_one(s, router.clone(), limits, slots.clone()))
                }),
                AdminListener::Unix(l) => l.accept().await.map(|(s, _)| {
                    tokio::spawn(serve_one(s, router.clone(), limits, slots.clone()))
                }),
            };
        if let Err(e) = accepted {
            // Out of file descriptors and the like: wait instead of spinning.
            tracing::warn!(error = %e, "admin API: accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One admin connection, within `limits`; closed at once when every slot is taken.
async fn serve_one<S>(
    stream: S,
    router: Router,
    limits: ServeLimits,
    slots: Arc<tokio::sync::Semaphore>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(_slot) = slots.try_acquire_owned() else {
        tracing::debug!("admin API: connection limit reached, connection closed");
        return;
    };
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let _ = tokio::time::timeout(limits.connection_timeout, connection).await;
}

/// Who may call what (SPEC §8 `[admin]`): changes always need the bearer token, reads
/// only when `reads_need_token`; /healthz never.
#[derive(Clone)]
pub struct Access {
    token: Arc<str>,
    reads_need_token: bool,
    /// `/metrics` open even when reads need the token (`[admin] metrics_public`).
    metrics_public: bool,
}

impl Access {
    pub fn new(token: String, reads_need_token: bool) -> Self {
        Self {
            token: token.into(),
            reads_need_token,
            metrics_public: false,
        }
    }

    /// Leaves `/metrics` open to reads without the token.
    pub fn with_public_metrics(mut self, public: bool) -> Self {
        self.metrics_public = public;
        self
    }

    /// Whether the request carries `Authorization: Bearer <token>` (compared in
    /// constant time: the comparison does not say how much of a guess was right).
    fn allows(&self, headers: &axum::http::HeaderMap) -> bool {
        let Some(given) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        let want = self.token.as_bytes();
        given.len() == want.len()
            && given
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

async fn authorize(
    State(access): State<Access>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let reads =
        request.method() == axum::http::Method::GET || request.method() == axum::http::Method::HEAD;
    let open_read = path == "/healthz" || (path == "/metrics" && access.metrics_public);
    let needs_token = if reads {
        access.reads_need_token && !open_read
    } else {
        true
    };
    if needs_token && !access.allows(request.headers()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "a bearer token is needed: send `Authorization: Bearer <token>` with the token \
             in [admin] token_file (default: admin.token in [state] dir)"
                .into(),
        );
    }
    next.run(request).await
}

pub fn router(state: Arc<AgentState>, access: Access) -> Router {
    Router::new()
        .route("/", get(console))
        .route("/api/v1/graph", get(graph))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/rules/draft", get(draft_rule))
        .route("/api/v1/report", get(report))
        .route("/api/v1/operations", get(operations))
        .route("/api/v1/operations/hourly", get(hourly))
        .route("/api/v1/sessions/{hash}", get(session))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/rules/reload", post(reload))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint: see / (the console), /api/v1/report, /graph, /alerts, /operations, /sessions/{hash}, /rules, /metrics".into()) })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(access, authorize))
}

async fn rules(State(state): State<Arc<AgentState>>) -> Json<Vec<RuleView>> {
    let pipeline = state.pipeline();
    Json(pipeline.rules().views(pipeline.catalog()))
}

/// Reloads the rules; a bad file answers 400 with the reason and keeps the old rules.
async fn reload(State(state): State<Arc<AgentState>>) -> (StatusCode, Json<serde_json::Value>) {
    match state.reload_rules() {
        Ok(n) => {
            tracing::info!(event = "rules_reloaded", rules = n, "rules reloaded");
            (
                StatusCode::OK,
                Json(serde_json::json!({ "ok": true, "rules": n })),
            )
        }
        Err(e) => {
            tracing::error!(event = "rules_reload_failed", error = %e, "reload refused; the old rules stay");
            (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "ok": false, "error": e.to_string() })),
            )
        }
    }
}

/// SPEC §6: the report for the window ending now (wall clock), optionally narrowed:
/// `?operation=ID&min_score=0.5&min_support=10&limit=20`.
async fn report(
    State(state): State<Arc<AgentState>>,
    query: Result<Query<ReportFilter>, QueryRejection>,
) -> Response {
    let filter = match query {
        Ok(Query(filter)) => filter,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    // Scored off the runtime's workers (and off the pipeline's lock).
    match tokio::task::spawn_blocking(move || state.scored_report()).await {
        Ok(report) => Json(report.filtered_copy(&filter)).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building the report failed: {e}"),
        ),
    }
}

/// The web console: one page, embedded, no third-party assets; it reads the APIs below
/// with the access they need.
const CONSOLE: &str = include_str!("../console/index.html");

async fn console() -> axum::response::Html<&'static str> {
    axum::response::Html(CONSOLE)
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GraphQuery {
    /// Top sequences drawn as paths.
    top: Option<usize>,
    /// At most this many transitions, the most taken (default 100).
    limit: Option<usize>,
}

/// The journey graph of the report (`graph.rs`): what the console draws.
async fn graph(
    State(state): State<Arc<AgentState>>,
    query: Result<Query<GraphQuery>, QueryRejection>,
) -> Response {
    let (top, limit) = match query {
        Ok(Query(q)) => (
            q.top.unwrap_or(3).min(20),
            q.limit.unwrap_or(100).min(2_000),
        ),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    match tokio::task::spawn_blocking(move || state.scored_report()).await {
        Ok(report) => Json(crate::graph::JourneyGraph::from_report(&report, top).limited(limit))
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building the graph failed: {e}"),
        ),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DraftQuery {
    /// The sequence's operation ids, first to final, comma-separated.
    operations: String,
}

/// The allow rule `seqshield rules suggest` would draft from one reported sequence, as
/// TOML to copy (the console shows it for a selected sequence).
async fn draft_rule(
    State(state): State<Arc<AgentState>>,
    query: Result<Query<DraftQuery>, QueryRejection>,
) -> Response {
    let wanted: Vec<String> = match query {
        Ok(Query(q)) => q.operations.split(',').map(str::to_string).collect(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    let Ok(shared) = tokio::task::spawn_blocking(move || state.scored_report()).await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "building the report failed".into(),
        );
    };
    let mut report = shared.filtered_copy(&ReportFilter {
        operation: wanted.last().cloned(),
        ..ReportFilter::default()
    });
    report.sequences.retain(|s| s.operations == wanted);
    if report.sequences.is_empty() || wanted.len() < 2 {
        return error(
            StatusCode::NOT_FOUND,
            "no such sequence in the report (two or more operation ids, first to final)".into(),
        );
    }
    crate::rules::suggest_allow_rules(&report, 0.0, 0).into_response()
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AlertsQuery {
    limit: Option<usize>,
}

/// The latest alerts, newest first (`?limit=N`, at most 100).
async fn alerts(
    State(state): State<Arc<AgentState>>,
    query: Result<Query<AlertsQuery>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(q)) => {
            Json(state.recent_alerts.latest(q.limit.unwrap_or(RECENT_ALERTS))).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    }
}

/// Requests per hour of the window, oldest first, by operation id (the console's
/// sparklines).
async fn hourly(
    State(state): State<Arc<AgentState>>,
) -> Json<serde_json::Map<String, serde_json::Value>> {
    let rows = state.pipeline().hourly_requests(state.now());
    Json(
        rows.into_iter()
            .map(|(id, counts)| (id, counts.into()))
            .collect(),
    )
}

/// The operations of the report, with their counts (no scoring).
async fn operations(State(state): State<Arc<AgentState>>) -> Json<Vec<OperationReport>> {
    let inputs = state.pipeline().report_inputs(state.now());
    Json(inputs.operations())
}

/// A session's current history with ages; the hash is what alerts and `session-hash` show.
async fn session(State(state): State<Arc<AgentState>>, Path(hash): Path<String>) -> Response {
    let Some(id) = u64::from_str_radix(&hash, 16)
        .ok()
        .filter(|_| hash.len() == 16)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{hash:?} is not a session hash (16 hex characters)"),
        );
    };
    match state.pipeline().session_history(SessionId(id), state.now()) {
        Some(history) => {
            Json(serde_json::json!({ "session": hash, "history": history })).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no live session {hash}")),
    }
}

/// Prometheus text format.
async fn metrics_text(State(state): State<Arc<AgentState>>) -> Response {
    let kernel = *state.kernel.lock().unwrap_or_else(PoisonError::into_inner);
    let pipeline = state.pipeline();
    let stats = pipeline.stats();
    let (live_sessions, tracked_sequences) = pipeline.table_sizes();
    let buffered_bytes = pipeline.buffered_bytes();
    let violations = pipeline.violations();
    let session_rates = pipeline.session_rates(state.now());
    let signals_untracked = pipeline.signals_untracked();
    drop(pipeline);
    let text = metrics::render(&metrics::Snapshot {
        stats: &stats,
        live_sessions,
        tracked_sequences,
        buffered_bytes,
        violations: &violations,
        kernel,
        request_seconds: &state.request_seconds,
        alerts: state.alerts.get().map(|c| c.as_ref()),
        session_rates: &session_rates,
        signals_untracked,
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Errors are JSON with a message.
fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_unix_socket_path_holding_a_file_is_refused_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        std::fs::write(&path, "not a socket").unwrap();
        let err = bind_unix(&path).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
        // A socket left by an earlier run is replaced.
        std::fs::remove_file(&path).unwrap();
        drop(bind_unix(&path).unwrap());
        assert!(bind_unix(&path).is_ok());
    }
}
