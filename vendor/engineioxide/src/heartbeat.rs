//! Trestle patch: one heartbeat task per engine instead of one per socket.
//!
//! crates.io spawned a task per socket that slept on an `Interval` and waited for each pong
//! with a `timeout`: about 1.6 KB per idle connection (the task cell, the `Interval`'s boxed
//! `Sleep`, the `Timeout`'s inline one), more than a tenth of what an idle connection costs
//! in all. Here every socket is an entry in one engine-wide queue of deadlines (a min-heap),
//! served by one task: about 60 bytes a socket, and the same rules.
//!
//! - v4: the server pings every `ping_interval` (the first one interval after the handshake);
//!   a client whose pong has not come `ping_timeout` after a ping is closed
//!   (`HeartbeatTimeout`). No ping goes out while the socket is upgrading its transport.
//! - v3: the client pings, the server answers at once (in the transport's reader, see
//!   [`Socket::heard`]); a client not heard from for `ping_interval + ping_timeout` is closed.
//!
//! An entry holds a `Weak` socket, so the queue never keeps a closed socket alive: its
//! fields are dropped with the last `Arc`, and the entry (with the socket's now empty
//! allocation) leaves the queue when its next deadline comes, at most one interval later.

use std::{
    cmp::Ordering,
    collections::BinaryHeap,
    sync::{OnceLock, Weak},
    time::Duration,
};

use engineioxide_core::{Packet, ProtocolVersion};
use tokio::{
    sync::mpsc,
    time::{Instant, sleep_until},
};

use crate::socket::{DisconnectReason, Socket};

/// Deadlines handled before the task lets others run (a connect storm puts thousands of
/// sockets' first pings in the same second).
const BATCH: usize = 1024;

/// The engine's heartbeat queue; its task starts with the first socket.
pub(crate) struct Heartbeats<D: Default + Send + Sync + 'static> {
    interval: Duration,
    timeout: Duration,
    tx: OnceLock<mpsc::UnboundedSender<Weak<Socket<D>>>>,
}

impl<D: Default + Send + Sync + 'static> std::fmt::Debug for Heartbeats<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeats")
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<D: Default + Send + Sync + 'static> Heartbeats<D> {
    pub(crate) fn new(interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            tx: OnceLock::new(),
        }
    }

    /// Starts the heartbeat of a socket whose handshake has just been sent.
    pub(crate) fn watch(&self, socket: &std::sync::Arc<Socket<D>>) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(rx, self.interval, self.timeout));
            tx
        });
        // The task ends only with the engine (its sender is here), so this cannot fail.
        tx.send(std::sync::Arc::downgrade(socket)).ok();
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// v4: time to ping.
    Ping,
    /// v4: the pong to the ping sent then must have come.
    Pong(Instant),
    /// v3: the client must have pinged since `ping_interval + ping_timeout` ago.
    ClientPing,
}

struct Due<D: Default + Send + Sync + 'static> {
    at: Instant,
    /// Keeps entries with the same deadline in the order they were made.
    seq: u64,
    phase: Phase,
    socket: Weak<Socket<D>>,
}

// `BinaryHeap` is a max-heap: the earliest deadline is the greatest.
impl<D: Default + Send + Sync + 'static> Ord for Due<D> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}
impl<D: Default + Send + Sync + 'static> PartialOrd for Due<D> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<D: Default + Send + Sync + 'static> PartialEq for Due<D> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<D: Default + Send + Sync + 'static> Eq for Due<D> {}

async fn run<D: Default + Send + Sync + 'static>(
    mut rx: mpsc::UnboundedReceiver<Weak<Socket<D>>>,
    interval: Duration,
    timeout: Duration,
) {
    let mut queue = BinaryHeap::<Due<D>>::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<Due<D>>, at, phase, socket| {
        seq += 1;
        queue.push(Due {
            at,
            seq,
            phase,
            socket,
        });
    };
    let sleep = sleep_until(Instant::now() + interval);
    tokio::pin!(sleep);
    loop {
        if let Some(first) = queue.peek() {
            if sleep.deadline() != first.at {
                sleep.as_mut().reset(first.at);
            }
        }
        tokio::select! {
            biased;
            socket = rx.recv() => {
                let Some(socket) = socket else { return };
                let Some(s) = socket.upgrade() else { continue };
                let (at, phase) = match s.protocol {
                    ProtocolVersion::V3 => (Instant::now() + interval + timeout, Phase::ClientPing),
                    ProtocolVersion::V4 => (Instant::now() + interval, Phase::Ping),
                };
                drop(s);
                push(&mut queue, at, phase, socket);
            }
            () = &mut sleep, if !queue.is_empty() => {
                let now = Instant::now();
                let mut handled = 0;
                while queue.peek().is_some_and(|d| d.at <= now) {
                    let Some(due) = queue.pop() else { break };
                    if let Some((at, phase)) = beat(&due, now, interval, timeout) {
                        push(&mut queue, at, phase, due.socket);
                    }
                    handled += 1;
                    if handled % BATCH == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }
}

/// Handles a deadline that has come; returns the socket's next one, if it stays.
fn beat<D: Default + Send + Sync + 'static>(
    due: &Due<D>,
    now: Instant,
    interval: Duration,
    timeout: Duration,
) -> Option<(Instant, Phase)> {
    let socket = due.socket.upgrade()?;
    if socket.cancellation_token.is_cancelled() {
        return None;
    }
    let next = match due.phase {
        Phase::Ping if socket.is_upgrading() => Some((due.at + interval, Phase::Ping)),
        Phase::Ping => {
            #[cfg(feature = "tracing")]
            tracing::trace!(sid = ?socket.id, "emitting ping");
            socket
                .send_control(Packet::Ping)
                .ok()
                .map(|()| (now + timeout, Phase::Pong(now)))
        }
        Phase::Pong(sent) => socket
            .heard_since(sent)
            .then(|| ((sent + interval).max(now), Phase::Ping)),
        Phase::ClientPing => {
            let deadline = socket.last_heard() + interval + timeout;
            (deadline > now).then_some((deadline, Phase::ClientPing))
        }
    };
    if next.is_none() {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = ?socket.id, "heartbeat timeout");
        socket.close(DisconnectReason::HeartbeatTimeout);
    }
    next
}
