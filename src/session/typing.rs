//! The rooms one socket is typing in (`handlers::typing` keeps them).

use std::{collections::HashMap, sync::Mutex};

use tokio::{task::AbortHandle, time::Instant};

use crate::rooms::Room;

/// One room a socket is typing in.
#[derive(Debug)]
pub struct Entry {
    /// Tells this entry from a later one of the same room (its deadline task checks it).
    pub generation: u64,
    /// `typing_stopped` is due then, unless a later `typing_comment` pushes it back.
    pub deadline: Instant,
    /// When this socket's last `typing_comment` here went past the socket's throttle.
    pub checked: Instant,
    /// Whether the room was told (a `typing_comment` relay went out for this entry):
    /// only then does it get a `typing_stopped`.
    pub announced: bool,
    /// The one task that sleeps until the deadline.
    pub task: AbortHandle,
}

/// The rooms a socket is typing in, each with its deadline.
#[derive(Debug, Default)]
pub struct Typing {
    rooms: Mutex<HashMap<Room, Entry>>,
}

/// What a deadline task finds when it wakes.
pub enum Due {
    /// The entry is gone or replaced: nothing to do.
    Gone,
    /// Pushed back: sleep until then.
    Later(Instant),
    /// Expired and removed; `true` when the room is to be told.
    Expired(bool),
}

impl Typing {
    /// The rooms, locked.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Room, Entry>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends typing in `room`; true when the room had been told this socket was typing.
    pub fn end(&self, room: &Room) -> bool {
        match self.lock().remove(room) {
            Some(entry) => {
                entry.task.abort();
                entry.announced
            }
            None => false,
        }
    }

    /// Whether the entry of `room` made at `generation` is due at `now`; removes it if so.
    pub fn due(&self, room: &Room, generation: u64, now: Instant) -> Due {
        let mut rooms = self.lock();
        match rooms.get(room) {
            Some(e) if e.generation != generation => Due::Gone,
            Some(e) if e.deadline > now => Due::Later(e.deadline),
            Some(_) => Due::Expired(rooms.remove(room).is_some_and(|e| e.announced)),
            None => Due::Gone,
        }
    }

    /// Ends typing everywhere; the rooms that had been told.
    pub fn take_all(&self) -> Vec<Room> {
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
