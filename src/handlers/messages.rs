//! `direct_message`, and delivery to a user that waits while they are offline (direct
//! messages and mentions alike).
//!
//! A user is online while any of their sockets is in `notifications:{user}` on any
//! instance. An offline user's messages wait in the store (`OFFLINE_TTL_MS`, at most
//! 1,000) and are handed to their first socket that connects, in order, before that
//! socket's first event is handled. A message leaves the queue only once it was handed to
//! a connected socket, so a disconnect during delivery loses nothing.

use std::{sync::Arc, time::Duration};

use serde::Deserialize;
use serde_json::{Value as Json, json};
use socketioxide::{adapter::Adapter, socket::Socket};
use socketioxide_core::Value;

use super::{Cx, clean_text, id_field};
use crate::{
    cluster,
    connection::Conn,
    error::AppError,
    rooms::{Id, Room},
    server::App,
    store::{epoch_ms, new_id},
    time::iso_now,
};

/// Offline messages read from the store at a time on connect.
const DELIVERY_BATCH: u32 = 100;

/// Sends `event` to each user's `notifications` room when they are online anywhere, or
/// queues it for their next connect. Returns, per user, whether delivery was live.
pub async fn deliver<A: Adapter>(
    app: &App<A>,
    users: &[Id],
    event: &str,
    payload: &Json,
) -> Result<Vec<bool>, AppError> {
    let state = &app.state;
    let now = epoch_ms(time::OffsetDateTime::now_utc());
    let ttl = Duration::from_millis(state.config.offline_ttl_ms);
    let mut live = Vec::with_capacity(users.len());
    for user in users {
        let room = Room::Notifications(user.clone()).to_string();
        let online = cluster::count(state, || app.io.within(room.clone())).await > 0;
        if online {
            if let Err(e) = cluster::emit(state, || app.io.to(room.clone()), event, payload).await {
                tracing::warn!(error = %e, event, "could not deliver to an online user");
            }
        } else {
            state
                .store
                .offline_push(user.as_str(), event, &payload.to_string(), now, ttl)
                .await
                .map_err(|e| AppError::internal("queueing a message for an offline user", e))?;
        }
        live.push(online);
    }
    Ok(live)
}

#[derive(Deserialize)]
struct DirectMessagePayload {
    to: Json,
    message: String,
}

/// `direct_message`: `{ to, message }` → `{ id, delivered }`; the recipient's
/// `notifications` room gets `direct_message { id, from, message, timestamp }`.
pub async fn direct_message<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: DirectMessagePayload = cx.payload(value)?;
    let user = &cx.conn.user;
    if user.anonymous {
        return Err(AppError::forbidden(
            "Anonymous users cannot send direct messages",
        ));
    }
    let to = id_field("to", &p.to)?;
    let message = clean_text("message", &p.message)?;
    let id = new_id().map_err(|e| AppError::internal("making a message id", e))?;
    let payload = json!({
        "id": id,
        "from": { "id": user.id, "name": &*user.name },
        "message": message,
        "timestamp": iso_now(),
    });
    let live = deliver(
        cx.app,
        std::slice::from_ref(&to),
        "direct_message",
        &payload,
    )
    .await?;
    Ok(json!({ "id": id, "delivered": live.first().copied().unwrap_or(false) }))
}

/// Hands the user's queued messages to this socket, oldest first, each with
/// `offline: true`, and removes them once handed over.
pub async fn deliver_offline<A: Adapter>(app: &App<A>, socket: &Arc<Socket<A>>, conn: &Conn) {
    let user = &conn.user;
    if user.anonymous {
        return;
    }
    let store = &app.state.store;
    // One delivery per user at a time on this instance: a second socket connecting at the
    // same moment waits, then finds the queue already handed over. (Across instances the
    // same moment can still deliver twice; see docs/events.md.)
    let key = format!("user:{}", user.id);
    let _one_at_a_time = app.state.lock_for(&key).lock().await;
    loop {
        let now = epoch_ms(time::OffsetDateTime::now_utc());
        let pending = match store
            .offline_pending(user.id.as_str(), now, DELIVERY_BATCH)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, user = %user.id, "could not read offline messages");
                return;
            }
        };
        let mut handed = None;
        for message in &pending {
            let mut payload: Json = match serde_json::from_str(&message.payload) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, seq = message.seq, "an offline message is not JSON; dropping it");
                    handed = Some(message.seq);
                    continue;
                }
            };
            if let Json::Object(fields) = &mut payload {
                fields.insert("offline".into(), Json::Bool(true));
            }
            if let Err(e) = socket.emit(message.event.as_str(), &payload) {
                // Not handed over: it stays queued for the next connect.
                tracing::debug!(error = %e, user = %user.id, "offline delivery stopped");
                break;
            }
            handed = Some(message.seq);
        }
        if let Some(seq) = handed
            && let Err(e) = store.offline_ack(user.id.as_str(), seq).await
        {
            tracing::error!(error = %e, user = %user.id, "could not remove delivered offline messages");
            return;
        }
        if handed.is_none_or(|seq| Some(seq) != pending.last().map(|m| m.seq))
            || pending.len() < DELIVERY_BATCH as usize
        {
            return;
        }
    }
}
