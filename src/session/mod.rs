//! What one socket holds ([`Conn`], in its extensions): its user, the rooms it joined,
//! its event queue and bucket, and the per-socket state of handlers (typing, streams,
//! presence lease). Dropping a `Conn` gives everything back: its connection slot, its
//! bucket, its streams and typing deadlines, its presence registration.

mod lease;
mod streams;
mod typing;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use socketioxide::{adapter::Adapter, socket::Socket};
use socketioxide_core::Value;

pub use self::{
    lease::Lease,
    streams::{StreamEntry, Streams},
    typing::{Due, Entry, Typing},
};
use crate::{
    auth::User,
    error::AppError,
    events::ClientEvent,
    limits::{ConnSlot, EventLimiter},
    rooms::Room,
};

/// What the server keeps for one connected socket (in its extensions).
pub struct Conn {
    /// Who is connected.
    pub user: User,
    /// Rooms joined with `join_room` (auto-joined rooms are not listed).
    pub joined: Mutex<Vec<Room>>,
    /// Rooms this socket is typing in.
    pub typing: Typing,
    /// Document streams running on this socket.
    pub streams: Streams,
    /// The socket's presence registration (none for anonymous users).
    pub presence: Option<Lease>,
    /// The socket's event bucket, drawn from its user's.
    pub(crate) limiter: EventLimiter,
    /// Events waiting to be handled, in arrival order.
    pub(crate) inbox: Mutex<Inbox>,
    /// Its place in the connection counts, given back when the socket is dropped.
    pub(crate) _slot: ConnSlot,
}

/// A socket's queue of events.
#[derive(Default)]
pub(crate) struct Inbox {
    pub(crate) queue: VecDeque<Job>,
    /// Payload bytes held by `queue`.
    pub(crate) bytes: usize,
    /// Whether a task is draining the queue.
    pub(crate) running: bool,
}

/// One event waiting in a socket's inbox, with the ack id the client gave it.
pub(crate) struct Job {
    pub(crate) work: Work,
    pub(crate) ack: Option<i64>,
    pub(crate) bytes: usize,
}

/// What to do for an event. Refusals decided on arrival (unknown name, rate limit) wait
/// in the same queue, so every answer leaves in the order the events came.
pub(crate) enum Work {
    /// The user's queued offline messages, first of all, right after the CONNECT ack
    /// (and again later when the database did not answer then).
    DeliverOffline,
    Handle(ClientEvent, Value),
    Refuse(AppError),
    RefuseAndDisconnect(AppError),
}

impl Conn {
    /// The rooms this socket joined with `join_room`, as a copy.
    pub fn joined_rooms(&self) -> Vec<Room> {
        self.joined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The connection's [`Conn`].
pub fn conn_of<A: Adapter>(socket: &Socket<A>) -> Option<Arc<Conn>> {
    socket.extensions.get::<Arc<Conn>>()
}
