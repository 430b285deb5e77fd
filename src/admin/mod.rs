//! The admin HTTP server: liveness, readiness, Prometheus metrics and the admin API.
//!
//! `GET /healthz` answers 200 while the process serves requests. `GET /readyz` answers 200
//! only if the queue answers and acknowledges writes, every location answers and every stage
//! runs, else 503; its JSON
//! body says which check failed. `GET /metrics` is the Prometheus text format. `/api/v1`
//! ([`api`]) shows and changes replication state; `/api/v1/stages` shows the stage board.

mod api;
pub(crate) mod dead_letters;
mod views;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use views::Views;

use crate::bus::{Bus, Publisher, Topics};
use crate::config::{AdminConfig, Config};
use crate::control::gate::Gates;
use crate::control::Pauses;
use crate::stages::board::Board;
use crate::storage::Stores;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the routes look at.
pub struct Admin {
    pub bus: Bus,
    pub topics: Topics,
    pub stores: Stores,
    /// The stages this process runs, and their counters.
    pub stages: Arc<Board>,
    pub publisher: Publisher,
    pub config: Arc<Config>,
    /// Locations paused by errors (known where the replication stage runs).
    pub gates: Arc<Gates>,
    /// Targets paused by operators (shared by every instance).
    pub pauses: Pauses,
    /// The status and failed records the answers are read from.
    pub views: Views,
}

/// Binds the admin address (at start, so a taken port stops ferry with a clear error).
pub async fn bind(config: &AdminConfig) -> Result<TcpListener, String> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("admin server cannot listen on {}: {e}", config.listen))
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Admin, shutdown: CancellationToken) {
    let admin = Arc::new(admin);
    let address = listener.local_addr().ok();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/objects/{bucket}/{*key}", get(api::object))
        .route("/api/v1/failed", get(api::failed_list))
        .route("/api/v1/failed/retry", post(api::failed_retry))
        .route("/api/v1/dead-letters", get(api::dead_letters))
        .route(
            "/api/v1/dead-letters/replay",
            post(api::dead_letters_replay),
        )
        .route("/api/v1/stages", get(stages))
        .route("/api/v1/targets", get(api::targets))
        .route("/api/v1/targets/{name}/pause", post(api::pause))
        .route("/api/v1/targets/{name}/resume", post(api::resume))
        .with_state(admin);
    tracing::info!(listen = ?address, "admin server ready");
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin server stopped with an error");
    }
}

/// `GET /api/v1/stages`: each stage this process runs, its state and counters (messages
/// received, in flight, processed, dead-lettered; errors and the last one).
async fn stages(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    Json(serde_json::json!({ "stages": admin.stages.reports() }))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::metrics().render(),
    )
}

async fn readyz(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    match tokio::time::timeout(
        CHECK_TIMEOUT,
        admin.bus.partition_count(&admin.topics.replication),
    )
    .await
    {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Ok(_)) => {
            failed.insert(
                "queue".into(),
                "the replication topic does not exist".into(),
            );
        }
        Ok(Err(e)) => {
            failed.insert("queue".into(), e.to_string());
        }
        Err(_) => {
            failed.insert("queue".into(), "no answer within 5 s".into());
        }
    }
    if let Some(stall) = admin.bus.write_stall() {
        failed.entry("queue".into()).or_insert(stall);
    }
    for store in admin.stores.iter() {
        let outcome = tokio::time::timeout(CHECK_TIMEOUT, store.probe()).await;
        let problem = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 5 s".into(),
        };
        failed.insert(format!("location {}", store.name()), problem);
    }
    for stage in admin.stages.stopped() {
        failed.insert(format!("stage {stage}"), "not running".into());
    }
    let status = if failed.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": failed.is_empty(),
        "failed": failed,
        "stages": admin.stages.running(),
    });
    (status, Json(body))
}
