//! The presence registry: who is online, away or offline, on every instance.
//!
//! One interface, two backings. Without `REDIS_URL` the registry is a map in this
//! process. With it, the registry lives in Redis and every change is one Lua script (one
//! round trip, atomic), so two instances never both announce the same transition:
//!
//! - `user:<u>` (hash): `status`, `lastSeen`, `leftAt` (last disconnect while the grace
//!   period runs), `targets` (the rooms a change goes to, as JSON), `location`.
//! - `socks:<u>` (set): the user's live socket ids, on every instance.
//! - `pending` (sorted set): users whose last socket is gone, scored by when they become
//!   offline. Whichever instance's tick removes a user from it announces the change.
//! - `inst:<id>` (string with a TTL): this instance is alive; refreshed by [`Registry::heartbeat`].
//! - `inst:<id>:socks` (hash): the sockets an instance registered, socket id → user, so
//!   that when an instance dies without a word ([`Registry::reap`]) the survivors remove
//!   them and its users go offline.
//! - `instances` (hash): instance id → time of its last heartbeat.
//!
//! Every process start has a new instance id, so a restarted instance never revives the
//! entries of its previous life; those are reaped once their heartbeat expires.
//!
//! Each instance also keeps, in memory, its own sockets and its users' last known status
//! (with the time of that change). When Redis lost them (restarted without persistence, or
//! the instance was reaped during a long outage) [`Registry::resync`] writes them back:
//! a user Redis forgot is restored with that status (`away` stays `away`) and nothing is
//! announced, since nothing changed; only a user Redis holds as `offline` (announced so)
//! or one whose coming online was never announced (connected while Redis was down) is
//! announced. Every Redis call goes through the [`Link`] (deadline, fail fast while down).
//!
//! Every key starts with the prefix `{trestle:presence}:` (after `REDIS_PREFIX`), whose hash
//! tag puts them all in one hash slot, so the scripts work on a Redis Cluster too: several
//! touch many users' keys at once (`pending` and the keys of each user it names, an
//! instance's sockets and their users), and build some key names inside the script from
//! the prefix, which a cluster allows only within the slot of the keys declared. Per-user
//! tags would spread the keys but split those scripts into one call per user, losing the
//! atomicity that keeps two instances from announcing the same change; presence is a few
//! small keys per online user, which one shard carries easily.

use std::{sync::Mutex, time::Duration};

use std::sync::Arc;

use anyhow::Context;
use fred::{
    clients::Client,
    interfaces::{ClientLike, EventInterface},
};

use super::Link;
use crate::metrics::LabelValues;

mod local;
mod memory;
mod redis;
mod scripts;

use memory::Memory;
use redis::RedisRegistry;

/// How often an instance says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// An instance that has not said so for this long is taken for dead and reaped. With the
/// heartbeat and the reaper's own period, a killed instance's users are offline about 12 s
/// after the kill (the contract allows 30 s).
const ALIVE_TTL: Duration = Duration::from_secs(10);
/// How long one instance has to reap a dead one before another may try.
const REAP_CLAIM: Duration = Duration::from_secs(30);
/// How long an offline user's `lastSeen` is kept.
const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Users claimed per tick; more wait for the next tick (a quarter of a second later).
const CLAIM_BATCH: usize = 500;

/// A user's status as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// At least one socket, status not set to away.
    Online,
    /// At least one socket, `set_status away`.
    Away,
    /// No socket for the grace period, or never seen.
    Offline,
}

impl Status {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Offline => "offline",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "online" => Status::Online,
            "away" => Status::Away,
            _ => Status::Offline,
        }
    }
}

impl LabelValues for Status {
    const COUNTER: &'static str = "trestle_presence_changes_total";
    const LABEL: &'static str = "status";
    const ALL: &'static [Self] = &[Status::Online, Status::Away, Status::Offline];
    fn label(self) -> &'static str {
        self.as_str()
    }
}

/// What the registry knows of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Current status.
    pub status: Status,
    /// Epoch milliseconds of the last change (for offline users, their last disconnect);
    /// `None` for a user never seen.
    pub last_seen: Option<i64>,
    /// The room named by the user's last `user_active`.
    pub location: Option<String>,
}

/// A change found by [`Registry::resync`], to be announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resynced {
    /// The user id.
    pub user: String,
    /// Their status now.
    pub status: Status,
    /// When it became so, epoch milliseconds.
    pub at: i64,
    /// The rooms the change goes to besides `presence:{user}`.
    pub targets: Vec<String>,
}

/// A user who has just become offline, to be announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WentOffline {
    /// The user id.
    pub user: String,
    /// Their last disconnect, epoch milliseconds.
    pub last_seen: i64,
    /// The rooms the change goes to besides `presence:{user}`.
    pub targets: Vec<String>,
}

/// The registry: in memory, or in Redis shared by every instance.
pub struct Registry {
    grace_ms: i64,
    backing: Backing,
}

enum Backing {
    Memory(Mutex<Memory>),
    Redis(Box<RedisRegistry>),
}

impl Registry {
    /// A registry in this process, for a single instance.
    pub fn memory(grace: Duration) -> Registry {
        Registry {
            grace_ms: grace.as_millis() as i64,
            backing: Backing::Memory(Mutex::new(Memory::default())),
        }
    }

    /// A registry in Redis, shared by every instance using `prefix`; registers this
    /// instance under a new id.
    pub async fn redis(
        client: Client,
        prefix: &str,
        grace: Duration,
        link: Arc<Link>,
    ) -> anyhow::Result<Registry> {
        let id = crate::store::new_id().context("cannot make an instance id")?;
        let redis = RedisRegistry::new(client, prefix, id, link);
        redis
            .heartbeat(now_ms())
            .await
            .context("cannot register the instance for presence")?;
        Ok(Registry {
            grace_ms: grace.as_millis() as i64,
            backing: Backing::Redis(Box::new(redis)),
        })
    }

    /// Whether the registry is shared through Redis.
    pub fn is_shared(&self) -> bool {
        matches!(self.backing, Backing::Redis(_))
    }

    /// The Redis client, when shared: its reconnects call for a [`Registry::resync`].
    pub fn redis_client(&self) -> Option<&Client> {
        match &self.backing {
            Backing::Memory(_) => None,
            Backing::Redis(r) => Some(&r.client),
        }
    }

    /// Changes each time Redis answers again after it was down, when shared: each calls
    /// for a [`Registry::resync`].
    pub fn recoveries(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.backing {
            Backing::Memory(_) => None,
            Backing::Redis(r) => Some(r.link.recoveries()),
        }
    }

    /// Registers a socket of `user`. `Some((status, at))` when this changed what the
    /// user's watchers were told (the user came online): the caller announces it.
    /// `targets` are the rooms the user's changes go to besides `presence:{user}`.
    pub async fn connect(
        &self,
        user: &str,
        sid: &str,
        targets: &[String],
        now: i64,
    ) -> anyhow::Result<Option<(Status, i64)>> {
        match &self.backing {
            Backing::Memory(m) => Ok(lock(m)
                .connect(user, sid, targets, now)
                .then_some((Status::Online, now))),
            Backing::Redis(r) => r.connect(user, sid, targets, now).await,
        }
    }

    /// For each user, whether they have a socket on any instance (one round trip to
    /// Redis however many users). The grace period does not count: a user whose last
    /// socket is gone is not online here even while their status still says so.
    pub async fn online(&self, users: &[String]) -> anyhow::Result<Vec<bool>> {
        match &self.backing {
            Backing::Memory(m) => {
                let m = lock(m);
                Ok(users
                    .iter()
                    .map(|u| m.users.get(u).is_some_and(|u| !u.sockets.is_empty()))
                    .collect())
            }
            Backing::Redis(r) => r.online(users).await,
        }
    }

    /// Removes a socket. When it was the user's last one, the user becomes offline after
    /// the grace period unless a socket comes back first. Removing an unknown socket
    /// does nothing.
    pub async fn disconnect(&self, user: &str, sid: &str, now: i64) -> anyhow::Result<()> {
        let due = now + self.grace_ms;
        match &self.backing {
            Backing::Memory(m) => {
                lock(m).disconnect(user, sid, now, due);
                Ok(())
            }
            Backing::Redis(r) => r.disconnect(user, sid, now, due).await,
        }
    }

    /// Forgets socket `sid` here without unregistering it: it went away from this instance
    /// and recovered its session on another, which registered it again. (With the memory
    /// backing there is no other instance, and the socket is registered once.)
    pub fn forget(&self, sid: &str) {
        if let Backing::Redis(r) = &self.backing {
            r.forget_socket(sid);
        }
    }

    /// `set_status`: true when the status changed (the caller announces it).
    pub async fn set_status(&self, user: &str, status: Status, now: i64) -> anyhow::Result<bool> {
        match &self.backing {
            Backing::Memory(m) => Ok(lock(m).set_status(user, status, now)),
            Backing::Redis(r) => r.set_status(user, status, now).await,
        }
    }

    /// Records the room of the user's last `user_active`.
    pub async fn set_location(&self, user: &str, location: &str) -> anyhow::Result<()> {
        match &self.backing {
            Backing::Memory(m) => {
                if let Some(u) = lock(m).users.get_mut(user) {
                    u.location = Some(location.into());
                }
                Ok(())
            }
            Backing::Redis(r) => r.set_location(user, location).await,
        }
    }

    /// The presence of each user, in the order given (never-seen users are offline with
    /// no `last_seen`).
    pub async fn get(&self, users: &[String]) -> anyhow::Result<Vec<Seen>> {
        match &self.backing {
            Backing::Memory(m) => {
                let m = lock(m);
                Ok(users.iter().map(|u| m.seen(u)).collect())
            }
            Backing::Redis(r) => r.get(users).await,
        }
    }

    /// Users whose grace period has ended by `now` and who have no socket anywhere: they
    /// are now offline, and this caller (alone among the instances) announces them.
    pub async fn claim_due(&self, now: i64) -> anyhow::Result<Vec<WentOffline>> {
        match &self.backing {
            Backing::Memory(m) => Ok(lock(m).claim_due(now)),
            Backing::Redis(r) => r.claim_due(now).await,
        }
    }

    /// Says this instance is alive. False when the registry had lost it (an outage long
    /// enough for the others to reap it, or a Redis restart without data): its sockets
    /// must then be registered again with [`Registry::resync`].
    pub async fn heartbeat(&self, now: i64) -> anyhow::Result<bool> {
        match &self.backing {
            Backing::Memory(_) => Ok(true),
            Backing::Redis(r) => r.heartbeat(now).await,
        }
    }

    /// Removes the sockets of instances that stopped saying they are alive; their users
    /// become offline unless they have sockets elsewhere. Returns how many were reaped.
    pub async fn reap(&self, now: i64) -> anyhow::Result<usize> {
        match &self.backing {
            Backing::Memory(_) => Ok(0),
            Backing::Redis(r) => r.reap(now).await,
        }
    }

    /// Makes the shared registry agree with this instance's live sockets, after Redis
    /// was away: sockets it lost are registered again with their user's last known status,
    /// sockets whose disconnect it missed are removed. Returns the changes the users'
    /// watchers were not told of, to be announced (none after Redis only lost its data).
    pub async fn resync(&self, now: i64) -> anyhow::Result<Vec<Resynced>> {
        match &self.backing {
            Backing::Memory(_) => Ok(Vec::new()),
            Backing::Redis(r) => r.resync(now, self.grace_ms).await,
        }
    }

    /// At a graceful stop: every socket of this instance is removed with the usual grace
    /// period (its clients are reconnecting elsewhere) and the instance is forgotten.
    pub async fn release(&self, now: i64) -> anyhow::Result<()> {
        match &self.backing {
            Backing::Memory(_) => Ok(()),
            Backing::Redis(r) => r.release(now, now + self.grace_ms).await,
        }
    }
}

fn lock(m: &Mutex<Memory>) -> std::sync::MutexGuard<'_, Memory> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    crate::store::epoch_ms(time::OffsetDateTime::now_utc())
}

/// Connects the Redis client presence uses (its own connection, so that presence commands
/// do not queue behind the adapter's traffic), with `link`'s deadline; `link` PINGs it too.
pub async fn redis_client(url: &str, link: &Link) -> anyhow::Result<Client> {
    let client = super::builder(url, link.timeout())?
        .build()
        .context("cannot build the Redis client for presence")?;
    client
        .init()
        .await
        .context("cannot connect to Redis for presence (REDIS_URL)")?;
    link.watch(client.clone());
    Ok(client)
}

/// Reconnects of the presence client, each calling for a resync.
pub fn reconnects(
    client: &Client,
) -> tokio::sync::broadcast::Receiver<fred::types::config::Server> {
    client.reconnect_rx()
}

/// Logs a presence registry failure: at debug while Redis is marked down (said once, by
/// the link, not once per socket during an outage), else at warn.
pub fn log_failure(user: &str, what: &str, e: &anyhow::Error) {
    if crate::cluster::link::refused(e) {
        tracing::debug!(user, what, "presence registry skipped: Redis is down");
    } else {
        tracing::warn!(
            user,
            what,
            error = format!("{e:#}"),
            "presence registry call failed"
        );
    }
}
