//! The one way handlers send an event to rooms: [`ToRooms`], made by [`Cx::to`] (the
//! sender's rooms, the sender excluded), [`Cx::within`] (the sender included) or
//! [`ToRooms::from_server`] and [`ToRooms::from_socket`] for work outside an event.
//!
//! It always goes through [`cluster::emit`], so that while Redis is down or hung the event
//! still reaches this instance's sockets at once (a handler that called socketioxide
//! directly would lose them, as `user_joined` once did).

use serde::Serialize;
use socketioxide::{adapter::Adapter, operators::BroadcastOperators, socket::Socket};

use super::Cx;
use crate::{
    app::{App, AppState},
    cluster,
    rooms::Room,
};

/// Who sends: the server (every socket in the rooms) or a socket (every other socket).
enum Sender<'a, A: Adapter> {
    Server(&'a App<A>),
    Socket(&'a Socket<A>),
}

/// An emit to one or more rooms, on every instance.
pub struct ToRooms<'a, A: Adapter> {
    state: &'a AppState,
    from: Sender<'a, A>,
    rooms: Vec<String>,
    volatile: bool,
}

impl<'a, A: Adapter> ToRooms<'a, A> {
    /// Every socket in `rooms`, which are names formatted from [`Room`]s (some come back
    /// from the presence registry as names).
    pub fn from_server(app: &'a App<A>, rooms: Vec<String>) -> Self {
        ToRooms {
            state: &app.state,
            from: Sender::Server(app),
            rooms,
            volatile: false,
        }
    }

    /// Every socket in `room` but `socket`.
    pub fn from_socket(state: &'a AppState, socket: &'a Socket<A>, room: &Room) -> Self {
        ToRooms {
            state,
            from: Sender::Socket(socket),
            rooms: vec![room.to_string()],
            volatile: false,
        }
    }

    /// A client that cannot take it now misses it (typing relays).
    pub fn volatile(mut self) -> Self {
        self.volatile = true;
        self
    }

    fn operator(&self) -> BroadcastOperators<A> {
        let op = match &self.from {
            Sender::Server(app) => app.io.to(self.rooms.clone()),
            Sender::Socket(socket) => socket.to(self.rooms.clone()),
        };
        if self.volatile { op.volatile() } else { op }
    }

    /// Sends `event` with `data`; see [`cluster::emit`] for what an error means. The
    /// error is an `anyhow::Error` so that a handler can pass it on with `?` and a context,
    /// to be logged where the answer is sent ([`crate::error`]).
    pub async fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> anyhow::Result<()> {
        cluster::emit(self.state.redis.as_ref(), || self.operator(), event, data)
            .await
            // socketioxide's error holds the sockets it failed for, and is not `Sync`.
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl<A: Adapter> Cx<'_, A> {
    /// The others in `room`: the sending socket excluded.
    pub fn to(&self, room: &Room) -> ToRooms<'_, A> {
        ToRooms::from_socket(&self.app.state, &self.socket, room)
    }

    /// Everyone in `room`, the sending socket included.
    pub fn within(&self, room: &Room) -> ToRooms<'_, A> {
        ToRooms::from_server(self.app, vec![room.to_string()])
    }
}
