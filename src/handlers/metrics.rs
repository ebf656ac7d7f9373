//! `subscribe_metrics` / `unsubscribe_metrics`, and the `metrics_update` feed.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value as Json, json};
use socketioxide::adapter::Adapter;
use socketioxide_core::Value;

use super::Cx;
use crate::{app::App, error::AppError, rooms::Room, time::iso_now};

/// The `metrics_update` payload.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    connections: usize,
    rooms: usize,
    events_per_second: f64,
    events_total: u64,
    uptime_seconds: u64,
    timestamp: String,
}

async fn snapshot<A: Adapter>(app: &App<A>, events_per_second: f64) -> Snapshot {
    // Rooms of this instance that clients can name (socket-id rooms are not counted).
    let rooms = match app.io.local().rooms().await {
        Ok(rooms) => rooms.iter().filter(|r| r.parse::<Room>().is_ok()).count(),
        Err(e) => {
            tracing::warn!(error = %e, "could not list rooms for metrics");
            0
        }
    };
    let metrics = &app.state.metrics;
    Snapshot {
        connections: app.state.limits.current(),
        rooms,
        events_per_second,
        events_total: metrics.events_seen(),
        uptime_seconds: metrics.uptime_seconds(),
        timestamp: iso_now(),
    }
}

/// `subscribe_metrics`: needs `admin` or `metrics`; the first update is sent at once.
pub async fn subscribe_metrics<A: Adapter>(
    cx: &Cx<'_, A>,
    _payload: &mut Value,
) -> Result<Json, AppError> {
    if !cx.conn.user.can("metrics") {
        return Err(AppError::forbidden("Missing permission metrics"));
    }
    let rate = cx.app.metrics_feed.last_rate();
    let snap = snapshot(cx.app, rate).await;
    cx.app.metrics_feed.subscribe(cx.socket.id);
    if let Err(e) = cx.socket.emit("metrics_update", &snap) {
        tracing::debug!(sid = %cx.socket.id, error = %e, "could not send metrics_update");
    }
    Ok(json!({}))
}

/// `unsubscribe_metrics` (like `subscribe_metrics`, it takes no payload: any is ignored).
pub async fn unsubscribe_metrics<A: Adapter>(
    cx: &Cx<'_, A>,
    _payload: &mut Value,
) -> Result<Json, AppError> {
    cx.app.metrics_feed.unsubscribe(cx.socket.id);
    Ok(json!({}))
}

/// Sends `metrics_update` to every subscriber every `METRICS_INTERVAL_MS`.
pub async fn publish_every<A: Adapter>(app: App<A>) {
    let period = Duration::from_millis(app.state.config.metrics_interval_ms.max(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (tokio::time::Instant::now(), app.state.metrics.events_seen());
    loop {
        tick.tick().await;
        let now = (tokio::time::Instant::now(), app.state.metrics.events_seen());
        let secs = now.0.duration_since(last.0).as_secs_f64();
        let rate = if secs > 0.0 {
            (now.1 - last.1) as f64 / secs
        } else {
            0.0
        };
        let rate = (rate * 100.0).round() / 100.0;
        last = now;
        app.metrics_feed.set_rate(rate);
        let subscribers = app.metrics_feed.subscribers();
        if subscribers.is_empty() {
            continue;
        }
        let snap = snapshot(&app, rate).await;
        for sid in subscribers {
            match app.io.get_socket(sid) {
                Some(socket) => {
                    let _ = socket.emit("metrics_update", &snap);
                }
                None => app.metrics_feed.unsubscribe(sid),
            }
        }
    }
}
