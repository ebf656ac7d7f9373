//! Presence: `set_status`, `user_active`, `get_presence`, the `status_change`
//! announcements, and the background work that keeps the registry right (offline after
//! the grace period, heartbeats, reaping crashed instances, resync after an outage).
//!
//! The registry ([`crate::cluster::presence::Registry`]) decides every transition
//! atomically; whoever it tells "this changed" (the connecting instance, the `set_status`
//! handler, the one tick that claimed a user) sends the one `status_change`.

use anyhow::Context;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use socketioxide::adapter::Adapter;
use socketioxide_core::Value;

use super::{Cx, ToRooms, id_field};
use crate::{
    access,
    app::App,
    auth::User,
    cluster::{
        self,
        presence::{Status, now_ms},
    },
    error::AppError,
    rooms::{Id, Room},
    session::Lease,
    store::from_epoch_ms,
    time::{iso, iso_now},
};

/// Most users one `get_presence` may ask about.
pub const MAX_PRESENCE_QUERY: usize = 200;
/// Longest `user_active` activity, in characters.
pub const MAX_ACTIVITY: usize = 200;
/// How often grace periods are checked: an offline change goes out at most this late.
const TICK: Duration = Duration::from_millis(250);
/// A full resync even without a sign of trouble, in case a change was lost.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// The rooms a user's status changes go to besides `presence:{user}`: their projects and
/// teams.
fn targets(user: &User) -> Vec<String> {
    user.projects
        .iter()
        .cloned()
        .map(Room::Project)
        .chain(user.teams.iter().cloned().map(Room::Team))
        .map(|r| r.to_string())
        .collect()
}

/// Sends `status_change` to `presence:{user}` and `targets`, once per socket.
async fn announce<A: Adapter>(
    app: &App<A>,
    user: &str,
    status: Status,
    last_seen: i64,
    targets: &[String],
) {
    let mut rooms = Vec::with_capacity(targets.len() + 1);
    rooms.push(Room::Presence(Id::from_trusted(user)).to_string());
    rooms.extend(targets.iter().cloned());
    let body = json!({
        "userId": user,
        "status": status.as_str(),
        "lastSeen": iso(from_epoch_ms(last_seen)),
    });
    app.state.metrics.count(status);
    if let Err(e) = ToRooms::from_server(app, rooms)
        .emit("status_change", &body)
        .await
    {
        tracing::warn!(user, error = %e, "could not announce a status change");
    }
}

/// Registers a new socket (in the connect middleware, before the CONNECT ack) and
/// announces `online` when it is the user's first anywhere. A registry failure is logged
/// and the connection goes ahead at once (while Redis is down the registry does not wait
/// on it): local users keep working, and the resync after its return registers the socket
/// and announces the user then if their coming online was never announced.
pub async fn connected<A: Adapter>(app: &App<A>, user: &User, lease: &Lease) {
    let targets = targets(user);
    lease.hold();
    let now = now_ms();
    match app
        .state
        .presence
        .connect(user.id.as_str(), &lease.sid().to_string(), &targets, now)
        .await
    {
        Ok(Some((status, at))) => announce(app, user.id.as_str(), status, at, &targets).await,
        Ok(None) => {}
        Err(e) => cluster::presence::log_failure(user.id.as_str(), "register a socket", &e),
    }
}

/// Unregisters a socket that disconnected; the user goes offline after the grace period
/// unless another socket of theirs is connected by then.
pub async fn disconnected(lease: &Lease) {
    lease.release().await;
}

#[derive(Deserialize)]
struct SetStatusPayload {
    status: Json,
}

/// `set_status { status }`: `online` or `away` → ack `{ status }`; a change is announced.
pub async fn set_status<A: Adapter>(cx: &Cx<'_, A>, value: &mut Value) -> Result<Json, AppError> {
    let p: SetStatusPayload = cx.payload(value)?;
    let status = match p.status.as_str() {
        Some("online") => Status::Online,
        Some("away") => Status::Away,
        _ => return Err(AppError::invalid("status must be \"online\" or \"away\"")),
    };
    let user = &cx.conn.user;
    if user.anonymous {
        return Err(AppError::forbidden("Anonymous users have no presence"));
    }
    let now = now_ms();
    let changed = cx
        .app
        .state
        .presence
        .set_status(user.id.as_str(), status, now)
        .await
        .context("setting a status")?;
    if changed {
        announce(cx.app, user.id.as_str(), status, now, &targets(user)).await;
    }
    Ok(json!({ "status": status.as_str() }))
}

#[derive(Deserialize)]
struct UserActivePayload {
    location: Json,
    activity: Json,
}

/// `user_active { location, activity }`: the location room (a room the user may join)
/// gets `user_active`; the registry keeps it as the user's last location.
pub async fn user_active<A: Adapter>(cx: &Cx<'_, A>, value: &mut Value) -> Result<Json, AppError> {
    let p: UserActivePayload = cx.payload(value)?;
    let Some(location) = p.location.as_str() else {
        return Err(AppError::invalid("location must be a room name"));
    };
    let Some(activity) = p.activity.as_str() else {
        return Err(AppError::invalid("activity must be a string"));
    };
    if activity.chars().count() > MAX_ACTIVITY {
        return Err(AppError::invalid(format!(
            "activity is longer than {MAX_ACTIVITY} characters"
        )));
    }
    let room: Room = location.parse()?;
    let user = &cx.conn.user;
    cx.require_room(&room).await?;
    let location = room.to_string();
    let state = &cx.app.state;
    if !user.anonymous
        && let Err(e) = state
            .presence
            .set_location(user.id.as_str(), &location)
            .await
    {
        tracing::warn!(user = %user.id, error = format!("{e:#}"), "could not record a location");
    }
    let body = json!({
        "userId": user.id,
        "location": location,
        "activity": activity,
        "timestamp": iso_now(),
    });
    cx.within(&room)
        .emit("user_active", &body)
        .await
        .context("relaying user_active")?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetPresencePayload {
    user_ids: Json,
}

/// `get_presence { userIds }` (at most 200) → `{ presence: { [id]: { status, lastSeen } } }`
/// from the registry. An entry also has `location` (the user's last `user_active` room)
/// when the asker may join that room.
pub async fn get_presence<A: Adapter>(cx: &Cx<'_, A>, value: &mut Value) -> Result<Json, AppError> {
    let p: GetPresencePayload = cx.payload(value)?;
    let Some(ids) = p.user_ids.as_array() else {
        return Err(AppError::invalid("userIds must be an array"));
    };
    if ids.len() > MAX_PRESENCE_QUERY {
        return Err(AppError::invalid(format!(
            "userIds has more than {MAX_PRESENCE_QUERY} ids"
        )));
    }
    let mut users: Vec<String> = Vec::with_capacity(ids.len());
    for v in ids {
        let id = id_field("userIds", v)?.to_string();
        if !users.contains(&id) {
            users.push(id);
        }
    }
    let seen = cx
        .app
        .state
        .presence
        .get(&users)
        .await
        .context("reading presence")?;
    let asker = &cx.conn.user;
    let mut out = Map::with_capacity(users.len());
    for (id, s) in users.into_iter().zip(seen) {
        let mut entry = Map::new();
        entry.insert("status".into(), s.status.as_str().into());
        entry.insert(
            "lastSeen".into(),
            s.last_seen
                .map_or(Json::Null, |ms| iso(from_epoch_ms(ms)).into()),
        );
        if let Some(loc) = s.location
            && loc
                .parse::<Room>()
                .is_ok_and(|r| access::granted_by_claims(asker, &r))
        {
            entry.insert("location".into(), loc.into());
        }
        out.insert(id, Json::Object(entry));
    }
    Ok(json!({ "presence": out }))
}

/// The presence housekeeping of one instance, until the server stops: offline changes
/// after the grace period, and with Redis the heartbeat, reaping of crashed instances and
/// the resync after an outage.
pub async fn run<A: Adapter>(app: App<A>) {
    let registry = app.state.presence.clone();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let needs_resync = Arc::new(AtomicBool::new(false));
    // Watchers of Redis's return; aborted with this task when the server stops.
    let mut watchers = tokio::task::JoinSet::new();
    // Redis answering again after it was down (hung, or unreachable): it may have lost
    // this instance's sockets, or missed their disconnects.
    if let Some(mut recoveries) = registry.recoveries() {
        let flag = needs_resync.clone();
        watchers.spawn(async move {
            while recoveries.changed().await.is_ok() {
                flag.store(true, Ordering::Release);
            }
        });
    }
    if let Some(client) = registry.redis_client() {
        let mut reconnects = cluster::presence::reconnects(client);
        let flag = needs_resync.clone();
        watchers.spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            while !matches!(reconnects.recv().await, Err(RecvError::Closed)) {
                flag.store(true, Ordering::Release);
            }
        });
    }
    let beats_per_resync =
        (RESYNC_EVERY.as_millis() / cluster::presence::HEARTBEAT.as_millis()) as u32;
    let ticks_per_beat = (cluster::presence::HEARTBEAT.as_millis() / TICK.as_millis()) as u32;
    let mut ticks = 0u32;
    let mut failing = false;
    loop {
        tick.tick().await;
        ticks = ticks.wrapping_add(1);
        let now = now_ms();
        let result = async {
            if registry.is_shared() && ticks.is_multiple_of(ticks_per_beat) {
                if !registry.heartbeat(now).await? {
                    tracing::warn!(
                        "presence registry had lost this instance; registering its sockets again"
                    );
                    needs_resync.store(true, Ordering::Release);
                }
                registry.reap(now).await?;
                if (ticks / ticks_per_beat).is_multiple_of(beats_per_resync) {
                    needs_resync.store(true, Ordering::Release);
                }
            }
            if needs_resync.swap(false, Ordering::AcqRel) {
                let resynced = registry.resync(now).await;
                if resynced.is_err() {
                    needs_resync.store(true, Ordering::Release);
                }
                // Only changes the watchers were not told of: a user Redis merely forgot
                // keeps the status they had, unannounced.
                for change in resynced? {
                    announce(
                        &app,
                        &change.user,
                        change.status,
                        change.at,
                        &change.targets,
                    )
                    .await;
                }
            }
            for gone in registry.claim_due(now).await? {
                announce(
                    &app,
                    &gone.user,
                    Status::Offline,
                    gone.last_seen,
                    &gone.targets,
                )
                .await;
            }
            anyhow::Ok(())
        }
        .await;
        // One line when presence housekeeping starts and stops failing, not one per tick.
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("presence housekeeping works again");
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    error = format!("{e:#}"),
                    "presence housekeeping failed; retrying"
                );
            }
            _ => {}
        }
    }
}
