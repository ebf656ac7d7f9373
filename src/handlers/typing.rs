//! `typing_comment` and `typing_stop`.
//!
//! Relays are volatile: a client that is not reading misses one rather than holding up
//! anyone. A user's relays are throttled per room on this instance (the first of a burst
//! goes out, the rest are dropped); `typing_stopped` follows `TYPING_TIMEOUT_MS` after the
//! last `typing_comment` of a socket, on `typing_stop`, on that user's `new_comment` in
//! the room, and on disconnect.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use socketioxide::{adapter::Adapter, socket::Socket};
use socketioxide_core::Value;

use super::Cx;
use crate::{
    cluster,
    connection::{Conn, conn_of},
    error::{AppError, Code},
    rooms::{Id, Room},
    server::App,
    time::iso_now,
};

/// When each user last had a `typing_comment` relayed, per room, on this instance.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Mutex<HashMap<(Id, Room), Instant>>,
}

impl Throttle {
    /// Whether a relay for `user` in `room` may go out now; records it when it may.
    fn admit(&self, user: &Id, room: &Room, every: Duration) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() > 10_000 {
            // Entries older than a minute can no longer throttle anything.
            last.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
        }
        match last.get(&(user.clone(), room.clone())) {
            Some(at) if now.duration_since(*at) < every => false,
            _ => {
                last.insert((user.clone(), room.clone()), now);
                true
            }
        }
    }
}

/// The rooms a socket is typing in, each with the generation of its latest auto-stop
/// timer (a newer `typing_comment` makes older timers do nothing).
#[derive(Debug, Default)]
pub struct Typing {
    rooms: Mutex<HashMap<Room, u64>>,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl Typing {
    fn start(&self, room: &Room) -> u64 {
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.clone(), generation);
        generation
    }

    /// Ends typing in `room`; true when the socket was typing there (and, with
    /// `generation`, only if that timer is still the latest).
    fn end(&self, room: &Room, generation: Option<u64>) -> bool {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        match (rooms.get(room), generation) {
            (Some(current), Some(g)) if *current != g => false,
            (Some(_), _) => rooms.remove(room).is_some(),
            (None, _) => false,
        }
    }

    fn take_all(&self) -> Vec<Room> {
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(r, _)| r)
            .collect()
    }
}

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
    let to_room = || socket.to(notice.room.clone()).volatile();
    if let Err(e) = cluster::emit(&app.state, to_room, "typing_stopped", &notice).await {
        tracing::debug!(error = %e, "could not relay typing_stopped");
    }
}

#[derive(Deserialize)]
struct RoomPayload {
    room: String,
}

fn parse_room(name: &str) -> Result<Room, AppError> {
    name.parse()
        .map_err(|_| AppError::new(Code::InvalidRoom, "Invalid room name"))
}

/// `typing_comment { room }`: the room, the typing socket excluded, gets `typing_comment`.
pub async fn typing_comment<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: RoomPayload = cx.payload(value)?;
    let room = parse_room(&p.room)?;
    let user = &cx.conn.user;
    cx.require_room(&room).await?;
    let generation = cx.conn.typing.start(&room);
    schedule_stop(cx, room.clone(), generation);
    let every = Duration::from_millis(cx.app.state.config.typing_throttle_ms);
    if cx.app.state.typing.admit(&user.id, &room, every) {
        let notice = json!({
            "userId": user.id,
            "userName": &*user.name,
            "room": p.room,
            "timestamp": iso_now(),
        });
        let to_room = || cx.socket.to(p.room.clone()).volatile();
        if let Err(e) = cluster::emit(&cx.app.state, to_room, "typing_comment", &notice).await {
            tracing::debug!(error = %e, "could not relay typing_comment");
        }
    }
    Ok(json!({}))
}

/// Sends `typing_stopped` after `TYPING_TIMEOUT_MS` unless a newer `typing_comment` came.
/// The timer holds the socket weakly: a socket that is gone is not kept alive by it.
fn schedule_stop<A: Adapter>(cx: &Cx<'_, A>, room: Room, generation: u64) {
    let app = cx.app.clone();
    let socket = cx.weak_socket();
    let timeout = Duration::from_millis(app.state.config.typing_timeout_ms);
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let Some(socket) = socket.upgrade() else {
            return;
        };
        let Some(conn) = conn_of(&socket) else { return };
        if socket.connected() && conn.typing.end(&room, Some(generation)) {
            relay_stopped(&app, &socket, &conn.user.id, &room).await;
        }
    });
}

/// `typing_stop { room }`: relayed only if this socket was typing there.
pub async fn typing_stop<A: Adapter>(cx: &Cx<'_, A>, value: &mut Value) -> Result<Json, AppError> {
    let p: RoomPayload = cx.payload(value)?;
    let room = parse_room(&p.room)?;
    stop(cx, &room).await;
    Ok(json!({}))
}

/// Ends this socket's typing in `room`, telling the room if it was typing.
pub async fn stop<A: Adapter>(cx: &Cx<'_, A>, room: &Room) {
    if cx.conn.typing.end(room, None) {
        relay_stopped(cx.app, cx.raw_socket(), &cx.conn.user.id, room).await;
    }
}

/// On disconnect: `typing_stopped` for every room the socket was typing in.
pub async fn stop_all<A: Adapter>(app: &App<A>, socket: &Arc<Socket<A>>, conn: &Conn) {
    for room in conn.typing.take_all() {
        relay_stopped(app, socket, &conn.user.id, &room).await;
    }
}
