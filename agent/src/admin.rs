//! The admin HTTP API of a running agent (loopback by default): the report, and a
//! liveness probe. Handlers read the shared pipeline under its lock, briefly.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use std::path::PathBuf;

use crate::config::{Config, ConfigError};
use crate::pipeline::Pipeline;
use crate::report::Report;
use crate::rules::RuleView;
use crate::source::ring::wall_clock_now;

/// What the capture loop and the API share.
pub struct AgentState {
    pipeline: Mutex<Pipeline>,
    /// Reloads read the rules from here.
    config_path: PathBuf,
}

impl AgentState {
    pub fn new(pipeline: Pipeline, config_path: PathBuf) -> Self {
        Self {
            pipeline: Mutex::new(pipeline),
            config_path,
        }
    }

    /// Re-reads the config file and swaps in its rules; on any error the old rules stay.
    pub fn reload_rules(&self) -> Result<usize, ConfigError> {
        let config = Config::load(&self.config_path)?;
        self.pipeline().reload_rules(&config)
    }

    /// The pipeline, also after a panic elsewhere held the lock: a report of what was
    /// counted beats no report.
    pub fn pipeline(&self) -> MutexGuard<'_, Pipeline> {
        self.pipeline.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/api/v1/report", get(report))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/rules/reload", post(reload))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
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

/// SPEC §6: the report for the window ending now (wall clock).
async fn report(State(state): State<Arc<AgentState>>) -> Json<Report> {
    Json(state.pipeline().report(wall_clock_now()))
}
