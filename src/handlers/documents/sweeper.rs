//! The sweeper of abandoned uploads.

use std::{sync::Arc, time::Duration};

use super::publish::discard;
use crate::{app::AppState, cluster::presence::now_ms};

/// Removes abandoned uploads (nothing received for `UPLOAD_TTL_MS`), checking every
/// quarter of that time (at most every minute), so an upload outlives its TTL by a quarter
/// at most.
pub async fn sweep_every(state: Arc<AppState>) {
    let period = Duration::from_millis(state.config.upload_ttl_ms / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms();
        let before = now - state.config.upload_ttl_ms as i64;
        match state.store.uploads_abandoned(before, now, 100).await {
            Ok(ids) => {
                for id in &ids {
                    discard(&state, id).await;
                }
                if !ids.is_empty() {
                    tracing::info!(removed = ids.len(), "abandoned uploads removed");
                }
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "could not look for abandoned uploads"
            ),
        }
    }
}
