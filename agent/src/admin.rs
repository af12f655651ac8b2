//! The admin HTTP API of a running agent (loopback by default): the report, and a
//! liveness probe. Handlers read the shared pipeline under its lock, briefly.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::pipeline::Pipeline;
use crate::report::Report;
use crate::source::ring::wall_clock_now;

/// What the capture loop and the API share.
pub struct AgentState {
    pipeline: Mutex<Pipeline>,
}

impl AgentState {
    pub fn new(pipeline: Pipeline) -> Self {
        Self {
            pipeline: Mutex::new(pipeline),
        }
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
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

/// SPEC §6: the report for the window ending now (wall clock).
async fn report(State(state): State<Arc<AgentState>>) -> Json<Report> {
    Json(state.pipeline().report(wall_clock_now()))
}
