//! `POST /api/emit`: lets the main backend reach clients on every instance.

use axum::{
    Json,
    body::{Body, to_bytes},
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::{adapter::Adapter, socket::Sid};

use crate::{app::App, cluster, events, rooms::Room};

/// Largest request body accepted.
const MAX_BODY: usize = 1_000_000;
/// Most rooms (or excepted rooms) in one request.
const MAX_ROOMS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmitRequest {
    rooms: Vec<String>,
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    except: Option<Vec<String>>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// 503: the event did not reach every instance; retry after a second.
fn cluster_unavailable() -> Response {
    let body = json!({
        "success": false,
        "error": "The event could not be published to every instance; retry",
        "code": "CLUSTER_UNAVAILABLE",
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(body),
    )
        .into_response()
}

/// Compares secrets in time independent of where they differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ e);
    }
    diff == 0
}

fn authorized(req: &Request, api_key: Option<&str>) -> bool {
    let Some(expected) = api_key.filter(|k| !k.is_empty()) else {
        return false;
    };
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    match value.trim().split_once(char::is_whitespace) {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => {
            same_secret(key.trim().as_bytes(), expected.as_bytes())
        }
        _ => false,
    }
}

/// A room name a client could be in: a [`Room`] or a socket id.
fn valid_target(name: &str) -> bool {
    name.parse::<Room>().is_ok() || name.parse::<Sid>().is_ok()
}

fn valid_targets(names: &[String]) -> bool {
    names.len() <= MAX_ROOMS && names.iter().all(|n| valid_target(n))
}

/// 401 without the key, 413 over 1 MB, 400 on a bad body, 202 once published to every
/// instance; 503 `CLUSTER_UNAVAILABLE` when it could not be, so the publisher retries:
/// Redis down or hung (nothing delivered, answered at once), the publish failed, or it
/// reached only some instances (see docs/events.md, `/api/emit`).
pub async fn api_emit<A: Adapter>(State(app): State<App<A>>, req: Request) -> Response {
    if !authorized(&req, app.state.config.api_key.as_deref()) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let body: Body = req.into_body();
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "Body too large"),
    };
    let request: EmitRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("Invalid body: {e}")),
    };
    if request.rooms.is_empty() || !valid_targets(&request.rooms) {
        return error(
            StatusCode::BAD_REQUEST,
            "rooms must be a non-empty array of room names or socket ids",
        );
    }
    let except = request.except.unwrap_or_default();
    if !valid_targets(&except) {
        return error(
            StatusCode::BAD_REQUEST,
            "except must be an array of room names or socket ids",
        );
    }
    if !events::publishable(&request.event) {
        return error(
            StatusCode::BAD_REQUEST,
            "event must be a non-reserved name of 1 to 128 characters",
        );
    }
    let op = || app.io.to(request.rooms.clone()).except(except.clone());
    match cluster::emit_everywhere(app.state.redis.as_ref(), op, &request.event, &request.data)
        .await
    {
        Ok(()) => {}
        Err(cluster::NotEverywhere::Cluster) => return cluster_unavailable(),
        Err(e) => {
            tracing::error!(error = %e, event = %request.event, "api emit failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error");
        }
    }
    app.state.metrics.api_emit();
    (StatusCode::ACCEPTED, Json(json!({ "success": true }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"key", b"key"));
        assert!(!same_secret(b"ke", b"key"));
        assert!(!same_secret(b"keyy", b"key"));
        assert!(!same_secret(b"kex", b"key"));
    }

    #[test]
    fn targets() {
        assert!(valid_target("project:1"));
        assert!(valid_target("AbCdEfGhIjKlMnOp"));
        assert!(!valid_target("nope"));
    }
}
