//! `direct_message`, and delivery to a user that waits while they are offline (direct
//! messages and mentions alike).
//!
//! A user is online while any of their sockets is in `notifications:{user}` on any
//! instance. An offline user's messages wait in the store (`OFFLINE_TTL_MS`, at most
//! 1,000, or `OFFLINE_CAP_UNSEEN` for a user never seen) and are handed to their first
//! socket that connects, in order, before that socket's first event is handled. A message
//! leaves the queue only once it was handed to a connected socket, so a disconnect during
//! delivery loses nothing.
//!
//! What one user can make the store keep is bounded: `OFFLINE_QUOTA_PER_SENDER` entries
//! waiting at once, and `OFFLINE_MAX_BYTES` for the whole store; past either a direct
//! message (or a comment with mentions) is `RATE_LIMITED`.
//!
//! Delivery waits on the database, so it holds nothing shared with unrelated work: a lock
//! per user ([`crate::app::Deliveries`]), and while the database does not answer,
//! deliveries stop trying for a few seconds and try again later instead of each
//! connecting socket waiting in turn.

use anyhow::Context;
use std::{future::Future, sync::Arc, time::Duration};

use serde::Deserialize;
use serde_json::{Value as Json, json};
use socketioxide::{adapter::Adapter, socket::Socket};
use socketioxide_core::Value;

use super::{Cx, ToRooms, clean_text, id_field};
use crate::{
    app::App,
    error::{AppError, Code},
    rooms::{Id, Room},
    session::Conn,
    store::{NewOffline, OFFLINE_CAP, epoch_ms, new_id},
    time::iso_now,
};

/// Offline messages read from the store at a time on connect.
const DELIVERY_BATCH: u32 = 100;
/// How long offline delivery waits for one database call before giving up for now.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long queueing a message waits for the database before answering `INTERNAL`.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether [`deliver`] checks the sender's quota itself (direct messages), or the caller
/// checked it before doing anything it could not take back (a comment, with
/// [`check_quota`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Check it here, refusing with `RATE_LIMITED` before anything is sent.
    Check,
    /// Already checked.
    Checked,
}

/// Sends `event` from `sender` to each user's `notifications` room when they are online
/// anywhere, or queues it for their next connect. Returns, per user, whether delivery was
/// live.
pub async fn deliver<A: Adapter>(
    app: &App<A>,
    sender: &Id,
    users: &[Id],
    event: &str,
    payload: &Json,
    quota: Quota,
) -> Result<Vec<bool>, AppError> {
    let state = &app.state;
    let live = online(app, users).await;
    let offline: Vec<&Id> = users
        .iter()
        .zip(&live)
        .filter(|(_, live)| !**live)
        .map(|(u, _)| u)
        .collect();
    let text = payload.to_string();
    if quota == Quota::Check && !offline.is_empty() {
        check_quota(app, sender, offline.len(), text.len()).await?;
    }
    let caps = if offline.is_empty() {
        Vec::new()
    } else {
        recipient_caps(app, &offline).await
    };
    let now = epoch_ms(time::OffsetDateTime::now_utc());
    let ttl = Duration::from_millis(state.config.offline_ttl_ms);
    for (user, cap) in offline.iter().zip(caps) {
        let message = NewOffline {
            user_id: user.as_str(),
            sender_id: Some(sender.as_str()),
            event,
            payload_json: &text,
            now,
            ttl,
            cap,
        };
        within(QUEUE_TIMEOUT, state.store.offline_queue(&message))
            .await
            .context("queueing a message for an offline user")?;
    }
    // One emit to every online user's room: one publish, however many users.
    let rooms: Vec<String> = users
        .iter()
        .zip(&live)
        .filter(|(_, live)| **live)
        .map(|(u, _)| Room::Notifications(u.clone()).to_string())
        .collect();
    if !rooms.is_empty()
        && let Err(e) = ToRooms::from_server(app, rooms).emit(event, payload).await
    {
        tracing::warn!(error = %e, event, "could not deliver to online users");
    }
    Ok(live)
}

/// For each user, whether a socket of theirs is connected to any instance: one presence
/// registry lookup for all of them (one Redis round trip), or this instance's
/// `notifications` rooms alone while the registry cannot answer (Redis down). A socket
/// here counts even when the registry does not know it yet (connected while Redis was
/// down, before the resync).
async fn online<A: Adapter>(app: &App<A>, users: &[Id]) -> Vec<bool> {
    let here = |u: &Id| {
        !app.io
            .within(Room::Notifications(u.clone()).to_string())
            .local()
            .sockets()
            .is_empty()
    };
    let ids: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    match app.state.presence.online(&ids).await {
        Ok(anywhere) => users
            .iter()
            .zip(anywhere)
            .map(|(u, anywhere)| anywhere || here(u))
            .collect(),
        Err(e) => {
            tracing::debug!(
                error = format!("{e:#}"),
                "presence lookup failed; checking this instance only"
            );
            users.iter().map(here).collect()
        }
    }
}

/// `RATE_LIMITED` when queueing `count` more messages of `bytes` each from `sender` would
/// go past `OFFLINE_QUOTA_PER_SENDER` or the store's `OFFLINE_MAX_BYTES` (0 turns either
/// off). A comment calls it before it is stored, for every mention, since which mentioned
/// users are offline is known only later.
pub async fn check_quota<A: Adapter>(
    app: &App<A>,
    sender: &Id,
    count: usize,
    bytes: usize,
) -> Result<(), AppError> {
    let cfg = &app.state.config;
    if count == 0 || (cfg.offline_quota_per_sender == 0 && cfg.offline_max_bytes == 0) {
        return Ok(());
    }
    let now = epoch_ms(time::OffsetDateTime::now_utc());
    let usage = within(
        QUEUE_TIMEOUT,
        app.state.store.offline_usage(sender.as_str(), now),
    )
    .await
    .context("reading the offline queue's usage")?;
    let count = count as u64;
    if cfg.offline_quota_per_sender > 0
        && usage.sender_queued.max(0) as u64 + count > cfg.offline_quota_per_sender
    {
        app.state.metrics.rate_limited();
        return Err(AppError::new(
            Code::RateLimited,
            "Too many messages waiting for offline users; wait until they are read",
        ));
    }
    if cfg.offline_max_bytes > 0
        && usage.total_bytes.max(0) as u64 + count * bytes as u64 > cfg.offline_max_bytes
    {
        app.state.metrics.rate_limited();
        tracing::warn!(
            bytes = usage.total_bytes,
            "the offline message store is full"
        );
        return Err(AppError::new(
            Code::RateLimited,
            "Too many messages waiting for offline users",
        ));
    }
    Ok(())
}

/// How many entries each offline recipient keeps: [`OFFLINE_CAP`], or `OFFLINE_CAP_UNSEEN`
/// for a user id the presence registry has never seen connect (a colleague who has not
/// logged in yet still finds the latest messages; a made-up id holds little). When the
/// registry cannot say, the full cap.
async fn recipient_caps<A: Adapter>(app: &App<A>, users: &[&Id]) -> Vec<i64> {
    let unseen_cap = i64::try_from(app.state.config.offline_cap_unseen)
        .unwrap_or(OFFLINE_CAP)
        .clamp(1, OFFLINE_CAP);
    let ids: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    match app.state.presence.get(&ids).await {
        Ok(seen) => seen
            .iter()
            .map(|s| {
                if s.last_seen.is_some() {
                    OFFLINE_CAP
                } else {
                    unseen_cap
                }
            })
            .collect(),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not tell whether offline recipients were ever seen"
            );
            vec![OFFLINE_CAP; users.len()]
        }
    }
}

/// `fut`, failing when it takes longer than `limit` (a database that does not answer).
async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("the database did not answer within {limit:?}"),
    }
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
    let id = new_id().context("making a message id")?;
    let payload = json!({
        "id": id,
        "from": { "id": user.id, "name": &*user.name },
        "message": message,
        "timestamp": iso_now(),
    });
    let live = deliver(
        cx.app,
        &user.id,
        std::slice::from_ref(&to),
        "direct_message",
        &payload,
        Quota::Check,
    )
    .await?;
    Ok(json!({ "id": id, "delivered": live.first().copied().unwrap_or(false) }))
}

/// How an offline delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Everything queued was handed over (or the socket went away: its next connect
    /// delivers the rest).
    Done,
    /// The database did not answer: try again later while the socket is connected.
    Retry,
}

/// Hands the user's queued messages to this socket, oldest first, each with
/// `offline: true`, and removes them once handed over.
pub async fn deliver_offline<A: Adapter>(
    app: &App<A>,
    socket: &Arc<Socket<A>>,
    conn: &Conn,
) -> Delivery {
    let user = &conn.user;
    if user.anonymous {
        return Delivery::Done;
    }
    let deliveries = &app.state.deliveries;
    if deliveries.resting() {
        return Delivery::Retry;
    }
    let store = &app.state.store;
    // One delivery per user at a time on this instance. (Across instances the same moment
    // can still deliver twice; see docs/events.md.)
    let _turn = deliveries.turn(user.id.as_str()).await;
    loop {
        let now = epoch_ms(time::OffsetDateTime::now_utc());
        let read = store.offline_pending(user.id.as_str(), now, DELIVERY_BATCH);
        let pending = match within(DELIVERY_TIMEOUT, read).await {
            Ok(p) => p,
            Err(e) => {
                deliveries.answered(false);
                tracing::error!(error = format!("{e:#}"), user = %user.id, "could not read offline messages; trying again later");
                return Delivery::Retry;
            }
        };
        deliveries.answered(true);
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
        if let Some(seq) = handed {
            let ack = store.offline_ack(user.id.as_str(), seq);
            if let Err(e) = within(DELIVERY_TIMEOUT, ack).await {
                // Handed over but still queued: the next connect gets them again, which
                // beats losing them.
                deliveries.answered(false);
                tracing::error!(error = format!("{e:#}"), user = %user.id, "could not remove delivered offline messages");
                return Delivery::Done;
            }
        }
        if handed.is_none_or(|seq| Some(seq) != pending.last().map(|m| m.seq))
            || pending.len() < DELIVERY_BATCH as usize
        {
            return Delivery::Done;
        }
    }
}
