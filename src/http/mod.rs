//! HTTP on the Socket.IO port: `/health`, `/ready`, `/metrics`, `POST /api/emit`, and the
//! `Origin` check in front of Socket.IO.

pub mod admission;
mod emit;
pub mod origin;
pub mod serve;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use serde_json::json;
use socketioxide::adapter::Adapter;

use crate::app::App;

/// The HTTP routes; unknown paths are 404.
pub fn routes<A: Adapter>(app: App<A>) -> axum::Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready::<A>))
        .route("/metrics", get(metrics::<A>))
        .route("/api/emit", post(emit::api_emit::<A>))
        .fallback(not_found)
        .with_state(app)
}

/// 200 while the process serves.
async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// 200 when every dependency answers (Redis when configured, the database, the document
/// storage); 503 naming what failed (or `shutting_down`). Redis fails at once while it is
/// marked down (a command missed `REDIS_TIMEOUT_MS`), else when a PING misses it.
async fn ready<A: Adapter>(State(app): State<App<A>>) -> impl IntoResponse {
    let mut failed = Vec::new();
    if app.state.is_shutting_down() {
        failed.push("shutting_down");
    }
    if let Some(redis) = &app.state.redis
        && !redis.ping().await
    {
        failed.push("redis");
    }
    if let Err(e) = app.state.store.ping().await {
        tracing::warn!(error = %e, "database check failed");
        failed.push("database");
    }
    if let Err(e) = app.state.objects.ping().await {
        tracing::warn!(error = format!("{e:#}"), "document storage check failed");
        failed.push("documents");
    }
    if failed.is_empty() {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "failed": failed })),
        )
    }
}

/// Prometheus text.
async fn metrics<A: Adapter>(State(app): State<App<A>>) -> impl IntoResponse {
    if let Some(redis) = &app.state.redis {
        app.state.metrics.redis_messages_lost(redis.lost_messages());
    }
    let body = app.state.metrics.render(app.state.limits.current());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "Not found" })))
}
