//! What happens to this instance's sockets (connected, joined, left, disconnected), for
//! the admin dashboard (`admin`), which relays it to the dashboards of every instance.
//!
//! The hooks sit where sockets connect and join (`connection`, `handlers::rooms`), below
//! the dashboard, so they publish here and the dashboard subscribes: no upward import.
//! Off (the default, and whenever the dashboard does not follow sockets), a publish is one
//! branch: the change is built by a closure that never runs, so nothing is allocated.

use socketioxide::socket::Sid;
use socketioxide_core::adapter::Room;
use tokio::sync::mpsc;

/// Changes the dashboard has not taken yet; past this, changes are dropped (and logged):
/// a dashboard that falls behind shows a socket or room late, never holds the server up.
const CAPACITY: usize = 4096;

/// One change to a socket of this instance, in the main namespace.
#[derive(Debug, Clone, PartialEq)]
pub enum SocketChange {
    /// The socket is connected (its CONNECT acknowledged).
    Connected(Sid),
    /// The socket joined the room.
    Joined(Sid, String),
    /// The socket left the room.
    Left(Sid, String),
    /// The socket is gone, for the reason given (its label), from the rooms it was in.
    Disconnected {
        /// The socket.
        sid: Sid,
        /// The disconnect reason's label (`events::disconnect_label`).
        reason: &'static str,
        /// The rooms it was in.
        rooms: Vec<String>,
    },
}

/// Where socket changes are published: nowhere (off), or a bounded queue; with or without
/// the rooms (joins, leaves, the rooms of a disconnected socket).
#[derive(Debug, Clone, Default)]
pub struct SocketFeed {
    tx: Option<mpsc::Sender<SocketChange>>,
    rooms: bool,
}

impl SocketFeed {
    /// A feed that is on, and the receiving end of its queue. Without `rooms` (a dashboard
    /// that only counts connections), joins and leaves are not published at all: they cost
    /// `join_room` one branch, as with the feed off.
    pub fn channel(rooms: bool) -> (Self, mpsc::Receiver<SocketChange>) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        (
            SocketFeed {
                tx: Some(tx),
                rooms,
            },
            rx,
        )
    }

    /// `sid` is connected.
    pub fn connected(&self, sid: Sid) {
        self.publish(|| SocketChange::Connected(sid));
    }

    /// `sid` joined `room`.
    pub fn joined(&self, sid: Sid, room: &str) {
        if !self.rooms {
            return;
        }
        self.publish(|| SocketChange::Joined(sid, room.to_owned()));
    }

    /// `sid` left `room`.
    pub fn left(&self, sid: Sid, room: &str) {
        if !self.rooms {
            return;
        }
        self.publish(|| SocketChange::Left(sid, room.to_owned()));
    }

    /// `sid` is gone for `reason`, from the `rooms()` it was in (asked only when the feed is
    /// on with rooms).
    pub fn disconnected(&self, sid: Sid, reason: &'static str, rooms: impl FnOnce() -> Vec<Room>) {
        self.publish(|| SocketChange::Disconnected {
            sid,
            reason,
            rooms: match self.rooms {
                true => rooms().into_iter().map(Room::into_owned).collect(),
                false => Vec::new(),
            },
        });
    }

    /// Publishes the change `change` builds, which runs only when the feed is on.
    fn publish(&self, change: impl FnOnce() -> SocketChange) {
        let Some(tx) = &self.tx else { return };
        if let Err(mpsc::error::TrySendError::Full(c)) = tx.try_send(change()) {
            tracing::warn!(change = ?c, "admin dashboard behind: a socket change was dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_off_feed_never_builds_the_change() {
        SocketFeed::default().publish(|| unreachable!("built while off"));
        SocketFeed::default().disconnected(Sid::new(), "r", || unreachable!("asked while off"));
    }

    #[test]
    fn a_feed_without_rooms_publishes_connections_only() {
        let (feed, mut rx) = SocketFeed::channel(false);
        let sid = Sid::new();
        feed.connected(sid);
        feed.joined(sid, "project:1");
        feed.left(sid, "project:1");
        feed.disconnected(sid, "r", || unreachable!("rooms asked without rooms"));
        assert_eq!(rx.try_recv(), Ok(SocketChange::Connected(sid)));
        assert!(
            matches!(rx.try_recv(), Ok(SocketChange::Disconnected { rooms, .. }) if rooms.is_empty())
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_full_feed_drops_rather_than_waits() {
        let (feed, mut rx) = SocketFeed::channel(true);
        let sid = Sid::new();
        for _ in 0..CAPACITY + 10 {
            feed.connected(sid);
        }
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, CAPACITY);
    }
}
