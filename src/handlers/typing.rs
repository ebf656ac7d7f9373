//! `typing_comment` and `typing_stop`.
//!
//! Relays are volatile: a client that is not reading misses one rather than holding up
//! anyone. A user's relays are throttled per room on this instance (the first of a burst
//! goes out, the rest are dropped); `typing_stopped` follows `TYPING_TIMEOUT_MS` after the
//! last `typing_comment` of a socket, on `typing_stop`, on that user's `new_comment` in
//! the room, and on disconnect.
//!
//! What a flood costs is bounded: a socket types in at most [`MAX_TYPING_ROOMS`] rooms,
//! each with one deadline that later events push back and one task that sleeps until it
//! (never a timer per event), and a socket's repeats within `TYPING_THROTTLE_MS` are
//! dropped before any access check or relay.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use socketioxide::{adapter::Adapter, socket::Socket};
use socketioxide_core::Value;
use tokio::{task::AbortHandle, time::Instant};

use super::{Cx, ToRooms};
use crate::{
    app::App,
    error::{AppError, Code},
    rooms::{Id, Room},
    session::{Conn, Due, Entry, conn_of},
    time::iso_now,
};

/// Rooms one socket may be typing in at once; a `typing_comment` for one more is
/// `RATE_LIMITED` until one of them stops (a person types in one place at a time).
pub const MAX_TYPING_ROOMS: usize = 8;

/// Tells a socket's typing entry from a later one of the same room.
static GENERATION: AtomicU64 = AtomicU64::new(1);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Stopped<'a> {
    user_id: &'a str,
    room: String,
}

async fn relay_stopped<A: Adapter>(app: &App<A>, socket: &Socket<A>, user: &Id, room: &Room) {
    let notice = Stopped {
        user_id: user.as_str(),
        room: room.to_string(),
    };
    let to_room = ToRooms::from_socket(&app.state, socket, room).volatile();
    if let Err(e) = to_room.emit("typing_stopped", &notice).await {
        tracing::debug!(error = %e, "could not relay typing_stopped");
    }
}

#[derive(Deserialize)]
struct RoomPayload {
    room: Room,
}

/// What the socket's own state says about one `typing_comment`.
enum Step {
    /// Already typing there, and its last event was within the throttle: the deadline
    /// was pushed back and nothing else is to be done.
    Repeat,
    /// Already typing there, past the throttle: check access and maybe relay.
    Again,
    /// Not typing there yet.
    New,
}

/// `typing_comment { room }`: the room, the typing socket excluded, gets `typing_comment`.
pub async fn typing_comment<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let RoomPayload { room } = cx.payload(value)?;
    let cfg = &cx.app.state.config;
    let every = Duration::from_millis(cfg.typing_throttle_ms);
    let timeout = Duration::from_millis(cfg.typing_timeout_ms);
    let now = Instant::now();
    let step = {
        let mut rooms = cx.conn.typing.lock();
        let full = rooms.len() >= MAX_TYPING_ROOMS;
        match rooms.get_mut(&room) {
            Some(e) => {
                e.deadline = now + timeout;
                if now.saturating_duration_since(e.checked) < every {
                    Step::Repeat
                } else {
                    e.checked = now;
                    Step::Again
                }
            }
            None if full => {
                return Err(AppError::new(
                    Code::RateLimited,
                    format!("Typing in more than {MAX_TYPING_ROOMS} rooms at once"),
                ));
            }
            None => Step::New,
        }
    };
    if matches!(step, Step::Repeat) {
        return Ok(json!({}));
    }
    cx.require_room(&room).await?;
    if matches!(step, Step::New) {
        // This socket's events are handled one at a time, so nothing added the room
        // while the access check ran.
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let deadline = now + timeout;
        let task = spawn_deadline(cx, room.clone(), generation, deadline);
        let entry = Entry {
            generation,
            deadline,
            checked: now,
            announced: false,
            task,
        };
        if let Some(old) = cx.conn.typing.lock().insert(room.clone(), entry) {
            old.task.abort();
        }
    }
    let user = &cx.conn.user;
    if cx.app.state.typing.admit(&user.id, &room, every, now) {
        if let Some(e) = cx.conn.typing.lock().get_mut(&room) {
            e.announced = true;
        }
        let notice = json!({
            "userId": user.id,
            "userName": &*user.name,
            "room": room.to_string(),
            "timestamp": iso_now(),
        });
        if let Err(e) = cx
            .to(&room)
            .volatile()
            .emit("typing_comment", &notice)
            .await
        {
            tracing::debug!(error = %e, "could not relay typing_comment");
        }
    }
    Ok(json!({}))
}

/// The one task of a socket's typing in `room`: sleeps until the deadline, again when it
/// was pushed back, then sends `typing_stopped`. It holds the socket weakly (a socket that
/// is gone is not kept alive by it) and is aborted when the typing ends otherwise.
fn spawn_deadline<A: Adapter>(
    cx: &Cx<'_, A>,
    room: Room,
    generation: u64,
    deadline: Instant,
) -> AbortHandle {
    let app = cx.app.clone();
    let socket: Weak<Socket<A>> = cx.weak_socket();
    tokio::spawn(async move {
        let mut deadline = deadline;
        loop {
            tokio::time::sleep_until(deadline).await;
            let Some(socket) = socket.upgrade() else {
                return;
            };
            let Some(conn) = conn_of(&socket) else { return };
            match conn.typing.due(&room, generation, Instant::now()) {
                Due::Gone => return,
                Due::Later(at) => deadline = at,
                Due::Expired(announced) => {
                    if announced && socket.connected() {
                        relay_stopped(&app, &socket, &conn.user.id, &room).await;
                    }
                    return;
                }
            }
        }
    })
    .abort_handle()
}

/// `typing_stop { room }`: relayed only if this socket was typing there (and the room had
/// been told so).
pub async fn typing_stop<A: Adapter>(cx: &Cx<'_, A>, value: &mut Value) -> Result<Json, AppError> {
    let RoomPayload { room } = cx.payload(value)?;
    stop(cx, &room).await;
    Ok(json!({}))
}

/// Ends this socket's typing in `room`, telling the room if it was typing.
pub async fn stop<A: Adapter>(cx: &Cx<'_, A>, room: &Room) {
    if cx.conn.typing.end(room) {
        relay_stopped(cx.app, cx.raw_socket(), &cx.conn.user.id, room).await;
    }
}

/// On disconnect: `typing_stopped` for every room the socket was typing in.
pub async fn stop_all<A: Adapter>(app: &App<A>, socket: &Arc<Socket<A>>, conn: &Conn) {
    for room in conn.typing.take_all() {
        relay_stopped(app, socket, &conn.user.id, &room).await;
    }
}
