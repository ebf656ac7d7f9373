//! `join_room`, `leave_room`, `broadcast_room`.

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value as Json, json};
use socketioxide::{adapter::Adapter, extract::SocketRef};
use socketioxide_core::Value;

use super::{Cx, ToRooms};
use crate::{
    app::{App, AppState},
    auth::User,
    cluster,
    error::{AppError, Code},
    events::{SERVER_EVENTS, SOCKETIO_RESERVED},
    rooms::Room,
    session::conn_of,
};

/// Names that are not Socket.IO's reserved ones nor server events, but that clients
/// give a meaning of their own (`error` answers failed events) and that a client must
/// therefore not be able to forge.
const CLIENT_FORBIDDEN: &[&str] = &["error", "message", "ping", "pong"];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Membership<'a> {
    user_id: &'a str,
    room_id: &'a str,
}

/// The room named by a payload that is a string or `{ room }`.
fn room_arg(payload: &Json) -> Result<Room, AppError> {
    let name = match payload {
        Json::String(s) => s.as_str(),
        Json::Object(o) => match o.get("room") {
            Some(Json::String(s)) => s.as_str(),
            _ => return Err(AppError::invalid("room must be a string")),
        },
        _ => return Err(AppError::invalid("A room name or { room } is required")),
    };
    Ok(name.parse()?)
}

fn is_in<A: Adapter>(socket: &SocketRef<A>, name: &str) -> bool {
    socket.is_in(name)
}

/// Sockets in `room` on every instance, counted (never fetched): [`cluster::count`].
async fn room_size<A: Adapter>(cx: &Cx<'_, A>, name: &str) -> usize {
    cluster::count(cx.app.state.redis.as_ref(), || {
        cx.app.io.within(name.to_owned())
    })
    .await
}

/// Sockets in `room` on this instance: the size of its set in the adapter.
async fn local_size<A: Adapter>(cx: &Cx<'_, A>, name: &str) -> usize {
    let count = cx.app.io.within(name.to_owned()).local().count().await;
    count.unwrap_or_default()
}

/// Sockets of `user` in `room` on this instance: a scan of the room, made only when the
/// room holds at least `cap` sockets (else the user cannot have that many there).
fn user_places<A: Adapter>(
    cx: &Cx<'_, A>,
    name: &str,
    user: &User,
    here: usize,
    cap: usize,
) -> usize {
    if here < cap {
        return 0;
    }
    let sockets = cx.app.io.within(name.to_owned()).local().sockets();
    sockets
        .iter()
        .filter(|s| conn_of(s).is_some_and(|c| c.user.id == user.id))
        .count()
}

/// `join_room`: `roomId` or `{ room }` → `{ room, size }`; others get `user_joined`.
pub async fn join_room<A: Adapter>(cx: &Cx<'_, A>, value: &mut Value) -> Result<Json, AppError> {
    let room = room_arg(&cx.first::<Json>(value)?)?;
    let user = &cx.conn.user;
    cx.require_room(&room).await?;
    let name = room.to_string();
    let cfg = &cx.app.state.config;
    if is_in(&cx.socket, &name) {
        let size = room_size(cx, &name).await;
        return Ok(json!({ "room": name, "size": size }));
    }
    if cx
        .conn
        .joined
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len()
        >= cfg.max_rooms_per_socket
    {
        return Err(AppError::forbidden("Too many rooms for this connection"));
    }
    // Sockets on the other instances, counted before taking the room's lock: that count
    // may be a Redis round trip, and no lock is held across one. Cross-instance joins
    // were never atomic; joins on this instance are, below.
    let everywhere = room_size(cx, &name).await;
    let elsewhere = everywhere.saturating_sub(local_size(cx, &name).await);
    let size = {
        let _guard = cx.app.state.lock_for(&name).lock().await;
        let here = local_size(cx, &name).await;
        // One user's sockets cannot fill a room and lock its other users out (any user
        // may join `presence:{u}` of anyone): each user holds at most this many places.
        let per_user = cfg.max_room_sockets_per_user;
        if per_user > 0 && user_places(cx, &name, user, here, per_user) >= per_user {
            return Err(AppError::forbidden(format!(
                "At most {per_user} connections of one user in a room"
            )));
        }
        let size = here + elsewhere;
        if cfg.max_room_size > 0 && size >= cfg.max_room_size {
            return Err(AppError::new(Code::RoomFull, "Room is full"));
        }
        cx.socket.join(name.clone());
        cx.app.state.socket_feed.joined(cx.socket.id, &name);
        size + 1
    };
    cx.conn
        .joined
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(room.clone());
    let notice = Membership {
        user_id: user.id.as_str(),
        room_id: &name,
    };
    if let Err(e) = cx.to(&room).emit("user_joined", &notice).await {
        tracing::warn!(room = %name, error = %e, "could not announce a join");
    }
    Ok(json!({ "room": name, "size": size }))
}

/// `leave_room`: `roomId` or `{ room }` → `{ room }`; others get `user_left`.
pub async fn leave_room<A: Adapter>(cx: &Cx<'_, A>, value: &mut Value) -> Result<Json, AppError> {
    let room = room_arg(&cx.first::<Json>(value)?)?;
    let name = room.to_string();
    if !is_in(&cx.socket, &name) {
        return Ok(json!({ "room": name }));
    }
    cx.socket.leave(name.clone());
    cx.app.state.socket_feed.left(cx.socket.id, &name);
    cx.conn
        .joined
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|r| *r != room);
    announce_left(&cx.app.state, &cx.socket, &cx.conn.user, &room).await;
    Ok(json!({ "room": name }))
}

/// Tells the others in `room` that `user` left (on `leave_room` and on disconnect).
pub async fn announce_left<A: Adapter>(
    state: &AppState,
    socket: &SocketRef<A>,
    user: &User,
    room: &Room,
) {
    announce_leave(ToRooms::from_socket(state, socket, room), user, room).await;
}

/// Tells `room` that `user` left, for a socket that is gone already (one that did not
/// recover its session in time).
pub async fn announce_gone<A: Adapter>(app: &App<A>, user: &User, room: &Room) {
    announce_leave(
        ToRooms::from_server(app, vec![room.to_string()]),
        user,
        room,
    )
    .await;
}

async fn announce_leave<A: Adapter>(to_room: ToRooms<'_, A>, user: &User, room: &Room) {
    let name = room.to_string();
    let notice = Membership {
        user_id: user.id.as_str(),
        room_id: &name,
    };
    if let Err(e) = to_room.emit("user_left", &notice).await {
        tracing::warn!(room = %name, error = %e, "could not announce a leave");
    }
}

fn valid_event_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
        && !SOCKETIO_RESERVED.contains(&name)
        && !SERVER_EVENTS.contains(&name)
        && !CLIENT_FORBIDDEN.contains(&name)
}

/// `broadcast_room`: `(roomId, event, data)` or `{ room, event, data }`; the room, sender
/// excluded, gets `event` with `data`.
pub async fn broadcast_room<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let args = cx.all(value)?;
    let (room, event, data) = match args.as_slice() {
        [Json::Object(o), ..] => (o.get("room"), o.get("event"), o.get("data")),
        [room, event, rest @ ..] => (Some(room), Some(event), rest.first()),
        _ => (None, None, None),
    };
    let (Some(Json::String(room)), Some(Json::String(event))) = (room, event) else {
        return Err(AppError::invalid(
            "Expected (roomId, event, data) or { room, event, data }",
        ));
    };
    let room: Room = room.parse()?;
    if !valid_event_name(event) {
        return Err(AppError::invalid("This event name cannot be broadcast"));
    }
    if !cx.conn.user.can("room_broadcast") {
        return Err(AppError::forbidden("Missing permission room_broadcast"));
    }
    let name = room.to_string();
    if !is_in(&cx.socket, &name) {
        return Err(AppError::forbidden("Join the room first"));
    }
    let data = data.unwrap_or(&Json::Null);
    cx.to(&room)
        .emit(event, data)
        .await
        .context("broadcasting to a room")?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        assert!(valid_event_name("drawing:updated"));
        assert!(!valid_event_name(""));
        assert!(!valid_event_name("1abc"));
        assert!(!valid_event_name("user_joined"));
        assert!(!valid_event_name("disconnect"));
        assert!(!valid_event_name(&"a".repeat(65)));
    }

    #[test]
    fn room_payloads() {
        assert_eq!(
            room_arg(&json!("project:1")).unwrap(),
            "project:1".parse().unwrap()
        );
        assert_eq!(
            room_arg(&json!({"room": "team:2"})).unwrap(),
            "team:2".parse().unwrap()
        );
        assert_eq!(room_arg(&json!(5)).unwrap_err().code, Code::InvalidPayload);
        assert_eq!(room_arg(&json!({})).unwrap_err().code, Code::InvalidPayload);
        assert_eq!(
            room_arg(&json!("nope")).unwrap_err().code,
            Code::InvalidRoom
        );
    }
}
