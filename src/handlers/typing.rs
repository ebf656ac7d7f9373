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
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use socketioxide::{adapter::Adapter, socket::Socket};
use socketioxide_core::Value;
use tokio::{task::AbortHandle, time::Instant};

use super::Cx;
use crate::{
    cluster,
    connection::{Conn, conn_of},
    error::{AppError, Code},
    rooms::{Id, Room},
    server::App,
    time::iso_now,
};

/// Rooms one socket may be typing in at once; a `typing_comment` for one more is
/// `RATE_LIMITED` until one of them stops (a person types in one place at a time).
pub const MAX_TYPING_ROOMS: usize = 8;

/// When each user last had a `typing_comment` relayed, per room, on this instance.
///
/// Two generations, swapped every throttle window: an entry can only throttle within its
/// window, so what is older than two windows is dropped wholesale, in O(1) per event. The
/// map holds at most the relays of the last two windows.
#[derive(Debug, Default)]
pub struct Throttle(Mutex<Generations>);

#[derive(Debug, Default)]
struct Generations {
    /// When `current` was started.
    since: Option<Instant>,
    current: HashMap<(Id, Room), Instant>,
    previous: HashMap<(Id, Room), Instant>,
}

impl Throttle {
    /// Whether a relay for `user` in `room` may go out now; records it when it may.
    fn admit(&self, user: &Id, room: &Room, every: Duration, now: Instant) -> bool {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let age = g.since.map(|since| now.saturating_duration_since(since));
        match age {
            Some(age) if age < every => {}
            Some(age) if age < every * 2 => {
                g.previous = std::mem::take(&mut g.current);
                g.since = Some(now);
            }
            _ => {
                g.previous.clear();
                g.current.clear();
                g.since = Some(now);
            }
        }
        let key = (user.clone(), room.clone());
        let last = g.current.get(&key).or_else(|| g.previous.get(&key));
        if last.is_some_and(|at| now.saturating_duration_since(*at) < every) {
            return false;
        }
        g.current.insert(key, now);
        true
    }
}

/// One room a socket is typing in.
#[derive(Debug)]
struct Entry {
    /// Tells this entry from a later one of the same room (its deadline task checks it).
    generation: u64,
    /// `typing_stopped` is due then, unless a later `typing_comment` pushes it back.
    deadline: Instant,
    /// When this socket's last `typing_comment` here went past the socket's throttle.
    checked: Instant,
    /// Whether the room was told (a `typing_comment` relay went out for this entry):
    /// only then does it get a `typing_stopped`.
    announced: bool,
    /// The one task that sleeps until the deadline.
    task: AbortHandle,
}

/// The rooms a socket is typing in, each with its deadline.
#[derive(Debug, Default)]
pub struct Typing {
    rooms: Mutex<HashMap<Room, Entry>>,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// What a deadline task finds when it wakes.
enum Due {
    /// The entry is gone or replaced: nothing to do.
    Gone,
    /// Pushed back: sleep until then.
    Later(Instant),
    /// Expired and removed; `true` when the room is to be told.
    Expired(bool),
}

impl Typing {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Room, Entry>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends typing in `room`; true when the room had been told this socket was typing.
    fn end(&self, room: &Room) -> bool {
        match self.lock().remove(room) {
            Some(entry) => {
                entry.task.abort();
                entry.announced
            }
            None => false,
        }
    }

    fn due(&self, room: &Room, generation: u64, now: Instant) -> Due {
        let mut rooms = self.lock();
        match rooms.get(room) {
            Some(e) if e.generation != generation => Due::Gone,
            Some(e) if e.deadline > now => Due::Later(e.deadline),
            Some(_) => Due::Expired(rooms.remove(room).is_some_and(|e| e.announced)),
            None => Due::Gone,
        }
    }

    fn take_all(&self) -> Vec<Room> {
        self.lock()
            .drain()
            .filter_map(|(room, entry)| {
                entry.task.abort();
                entry.announced.then_some(room)
            })
            .collect()
    }
}

impl Drop for Typing {
    fn drop(&mut self) {
        for (_, entry) in self.lock().drain() {
            entry.task.abort();
        }
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
    let p: RoomPayload = cx.payload(value)?;
    let room = parse_room(&p.room)?;
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
    let p: RoomPayload = cx.payload(value)?;
    let room = parse_room(&p.room)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_admits_the_first_of_a_burst_and_forgets_old_entries() {
        let t = Throttle::default();
        let every = Duration::from_millis(300);
        let ms = |n| Duration::from_millis(n);
        let t0 = Instant::now();
        let (u, r): (Id, Room) = (
            Id::from_trusted("u1"),
            "project:p:comments".parse().unwrap(),
        );
        assert!(t.admit(&u, &r, every, t0));
        assert!(!t.admit(&u, &r, every, t0));
        assert!(!t.admit(&u, &r, every, t0 + ms(200)));
        assert!(
            t.admit(&u, &r, every, t0 + ms(350)),
            "350 ms after the first relay"
        );
        assert!(
            !t.admit(&u, &r, every, t0 + ms(400)),
            "found in the previous window"
        );
        for i in 0..1000 {
            let other = Id::from_trusted(&format!("x{i}"));
            assert!(t.admit(&other, &r, every, t0 + ms(400)));
        }
        assert!(t.admit(&u, &r, every, t0 + ms(1100)));
        let g = t.0.lock().unwrap();
        assert_eq!(
            g.current.len() + g.previous.len(),
            1,
            "older windows dropped"
        );
    }
}
