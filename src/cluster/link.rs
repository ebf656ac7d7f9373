//! Whether Redis is up, as every Redis caller sees it.
//!
//! A hung Redis (the process stopped, its TCP connections still open) keeps fred's
//! connections "connected", so `is_connected()` says nothing. Every Redis command
//! therefore has a deadline (`REDIS_TIMEOUT_MS`), and the first command that misses it
//! (or fails on the connection) marks Redis down for everyone: callers stop waiting on it
//! at once (emits go to local sockets, room counts count local sockets, presence calls
//! fail fast, `/api/emit` answers 503, `/ready` 503), instead of each waiting out its own
//! timeout in turn. A background probe PINGs Redis; when it answers again, Redis is up and
//! the presence registry is told to resync.

use std::{
    fmt::Display,
    future::Future,
    sync::{
        Arc, OnceLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fred::{
    clients::{Client, SubscriberClient},
    error::{Error as FredError, ErrorKind},
    interfaces::ClientLike,
    types::config::Options,
};
use futures_util::future::join_all;
use tokio::sync::{Notify, watch};

/// While Redis is up, how often the probe PINGs it even when no command failed, so a hung
/// Redis with no traffic shows in `/ready` within this plus the timeout.
const PROBE_WHILE_UP: Duration = Duration::from_secs(1);
/// While Redis is down, how often the probe tries again.
const PROBE_WHILE_DOWN: Duration = Duration::from_millis(250);

/// Why a Redis call was not made or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// Redis is marked down; the call was not tried.
    #[error("Redis is unavailable")]
    Down,
    /// The call missed its deadline; Redis is now marked down.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Redis's state shared by the adapter's connection, the presence connection and every
/// caller.
pub struct Link {
    timeout: Duration,
    down: AtomicBool,
    wake: Notify,
    recoveries: watch::Sender<u64>,
    subscriber: SubscriberClient,
    presence: OnceLock<Client>,
}

impl Link {
    /// A link over the adapter's connection, up, with its probe running until the link is
    /// dropped.
    pub fn new(subscriber: SubscriberClient, timeout: Duration) -> Arc<Link> {
        let link = Arc::new(Link {
            timeout,
            down: AtomicBool::new(false),
            wake: Notify::new(),
            recoveries: watch::channel(0).0,
            subscriber,
            presence: OnceLock::new(),
        });
        tokio::spawn(probe(Arc::downgrade(&link)));
        link
    }

    /// The deadline of one Redis command (`REDIS_TIMEOUT_MS`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether Redis is marked down (no round trip).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Whether the adapter's connection is open and Redis is not marked down: cluster-wide
    /// operations are worth trying.
    pub fn is_usable(&self) -> bool {
        !self.is_down() && self.subscriber.is_connected()
    }

    /// The presence registry's connection, PINGed by the probe too.
    pub fn watch(&self, client: Client) {
        let _ = self.presence.set(client);
    }

    /// Marks Redis down (a command missed its deadline or failed on the connection) and
    /// has the probe check it from now on.
    pub fn failed(&self, why: &dyn Display) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %why, "Redis is not answering; delivering on this instance only until it does");
        }
        self.wake.notify_one();
    }

    /// Changes each time Redis answers again after being down.
    pub fn recoveries(&self) -> watch::Receiver<u64> {
        self.recoveries.subscribe()
    }

    /// Runs one Redis call with the deadline: fails at once while Redis is down, and marks
    /// it down when the call times out or fails on the connection.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, FredError>>,
    ) -> anyhow::Result<T> {
        if self.is_down() {
            return Err(Unavailable::Down.into());
        }
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if is_outage(&e) {
                    self.failed(&e);
                }
                Err(e.into())
            }
            Err(_) => {
                let e = Unavailable::Timeout(self.timeout);
                self.failed(&e);
                Err(e.into())
            }
        }
    }

    /// Whether both connections answer a PING within the deadline.
    pub async fn answers(&self) -> bool {
        if !self.subscriber.is_connected() {
            return false;
        }
        let adapter = pong(&self.subscriber, self.timeout);
        match self.presence.get() {
            Some(p) => {
                let (a, b) = tokio::join!(adapter, pong(p, self.timeout));
                a && b
            }
            None => adapter.await,
        }
    }
}

/// Whether `client` answers a PING within `timeout`. On a Redis Cluster, every node it is
/// connected to must answer: a PING names no key, so fred sends it to any one node, and a
/// hung node would go unseen while the commands routed to it time out. (A node that is
/// gone shows without a PING: fred then reconnects the whole client, which is not
/// connected meanwhile.)
async fn pong<C: ClientLike>(client: &C, timeout: Duration) -> bool {
    if !client.is_clustered() {
        return ping(client, timeout).await;
    }
    let pings = client
        .active_connections()
        .into_iter()
        .map(|server| async move {
            let options = Options {
                cluster_node: Some(server),
                ..Options::default()
            };
            ping(&client.with_options(&options), timeout).await
        });
    let answers = join_all(pings).await;
    !answers.is_empty() && answers.into_iter().all(|ok| ok)
}

/// Whether the node `client` sends a PING to answers within `timeout`.
async fn ping(client: &impl ClientLike, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, client.ping::<String>(None)).await,
        Ok(Ok(_))
    )
}

/// Whether `e` is a call refused because Redis is marked down (the link has logged that
/// once; callers need not log each refusal).
pub fn refused(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<Unavailable>(), Some(Unavailable::Down))
}

/// Whether a fred error says Redis (or the way to it) is in trouble, rather than the
/// command being wrong.
pub fn is_outage(e: &FredError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Backpressure
    )
}

/// PINGs Redis: now and then while it is up (and at once when a caller saw a failure),
/// often while it is down; marks it down or up accordingly.
async fn probe(link: Weak<Link>) {
    loop {
        let Some(l) = link.upgrade() else { return };
        if l.is_down() {
            tokio::time::sleep(PROBE_WHILE_DOWN).await;
        } else {
            tokio::select! {
                _ = l.wake.notified() => {}
                _ = tokio::time::sleep(PROBE_WHILE_UP) => {}
            }
        }
        // Only a PING sent while Redis was marked down may mark it up again.
        let was_down = l.is_down();
        let answers = l.answers().await;
        if was_down && answers {
            l.down.store(false, Ordering::Release);
            l.recoveries.send_modify(|n| *n += 1);
            tracing::info!("Redis answers again; cluster-wide delivery resumes");
        } else if !was_down && !answers {
            l.failed(&"no answer to PING");
        }
    }
}
