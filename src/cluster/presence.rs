//! The presence registry: who is online, away or offline, on every instance.
//!
//! One interface, two backings. Without `REDIS_URL` the registry is a map in this
//! process. With it, the registry lives in Redis and every change is one Lua script (one
//! round trip, atomic), so two instances never both announce the same transition:
//!
//! - `user:{u}` (hash): `status`, `lastSeen`, `leftAt` (last disconnect while the grace
//!   period runs), `targets` (the rooms a change goes to, as JSON), `location`.
//! - `socks:{u}` (set): the user's live socket ids, on every instance.
//! - `pending` (sorted set): users whose last socket is gone, scored by when they become
//!   offline. Whichever instance's tick removes a user from it announces the change.
//! - `inst:{id}` (string with a TTL): this instance is alive; refreshed by [`Registry::heartbeat`].
//! - `inst:{id}:socks` (hash): the sockets an instance registered, socket id → user, so
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
//! The scripts build some key names from the prefix, so presence needs one Redis server
//! (not Redis Cluster), like the adapter's request/response channels in practice.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use std::sync::Arc;

use anyhow::Context;
use fred::{
    clients::Client,
    interfaces::{ClientLike, EventInterface},
    types::{Value as RedisValue, scripts::Script},
};

use super::Link;

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

// ------------------------------------------------------------------ in memory

#[derive(Default)]
struct Memory {
    users: HashMap<String, MemUser>,
    /// Users whose last socket is gone → when they become offline.
    pending: HashMap<String, i64>,
    claims: u32,
}

struct MemUser {
    sockets: Vec<Box<str>>,
    status: Status,
    last_seen: i64,
    left_at: i64,
    targets: Vec<String>,
    location: Option<String>,
}

impl Memory {
    fn connect(&mut self, user: &str, sid: &str, targets: &[String], now: i64) -> bool {
        self.pending.remove(user);
        let u = self
            .users
            .entry(user.to_owned())
            .or_insert_with(|| MemUser {
                sockets: Vec::new(),
                status: Status::Offline,
                last_seen: now,
                left_at: now,
                targets: Vec::new(),
                location: None,
            });
        if !u.sockets.iter().any(|s| &**s == sid) {
            u.sockets.push(sid.into());
        }
        u.targets = targets.to_vec();
        if u.status != Status::Offline {
            return false;
        }
        u.status = Status::Online;
        u.last_seen = now;
        true
    }

    fn disconnect(&mut self, user: &str, sid: &str, now: i64, due: i64) {
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        let before = u.sockets.len();
        u.sockets.retain(|s| &**s != sid);
        if u.sockets.len() < before && u.sockets.is_empty() {
            u.left_at = now;
            self.pending.insert(user.to_owned(), due);
        }
    }

    fn set_status(&mut self, user: &str, status: Status, now: i64) -> bool {
        let Some(u) = self.users.get_mut(user) else {
            return false;
        };
        if u.status == status {
            return false;
        }
        u.status = status;
        u.last_seen = now;
        true
    }

    fn seen(&self, user: &str) -> Seen {
        match self.users.get(user) {
            Some(u) => Seen {
                status: u.status,
                last_seen: Some(u.last_seen),
                location: u.location.clone(),
            },
            None => Seen {
                status: Status::Offline,
                last_seen: None,
                location: None,
            },
        }
    }

    fn claim_due(&mut self, now: i64) -> Vec<WentOffline> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(u, _)| u.clone())
            .collect();
        let mut out = Vec::new();
        for user in due {
            self.pending.remove(&user);
            let Some(u) = self.users.get_mut(&user) else {
                continue;
            };
            if !u.sockets.is_empty() || u.status == Status::Offline {
                continue;
            }
            u.status = Status::Offline;
            u.last_seen = u.left_at;
            out.push(WentOffline {
                user,
                last_seen: u.left_at,
                targets: u.targets.clone(),
            });
        }
        // Now and then, forget users offline for longer than the retention.
        self.claims = self.claims.wrapping_add(1);
        if self.claims.is_multiple_of(4096) {
            let oldest = now - RETENTION.as_millis() as i64;
            self.users
                .retain(|_, u| u.status != Status::Offline || u.last_seen >= oldest);
        }
        out
    }
}

// ------------------------------------------------------------------ in Redis

// Registers sockets of one user (a new one, or those Redis lost), with the status this
// instance knows for the user. KEYS: user:{u}, socks:{u}, inst:{id}:socks, pending. ARGV:
// user, known status, known since, targets, overwrite ('1': a known status newer than the
// stored one wins), now, socket ids... Returns {code, status, since}: code 0 when the
// stored status stands (online or away), 1 when the user was offline and now has the known
// status (a change to announce), 2 when Redis had no entry for the user (restored; a change
// only if the known status was never announced).
const RESTORE: &str = r#"
for i = 7, #ARGV do
  redis.call('SADD', KEYS[2], ARGV[i])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[1])
end
redis.call('ZREM', KEYS[4], ARGV[1])
local existed = redis.call('EXISTS', KEYS[1])
redis.call('PERSIST', KEYS[1])
redis.call('HSET', KEYS[1], 'targets', ARGV[4])
if existed == 0 then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'lastSeen', ARGV[3])
  return {2, ARGV[2], ARGV[3]}
end
local st = redis.call('HGET', KEYS[1], 'status')
local at = redis.call('HGET', KEYS[1], 'lastSeen') or ARGV[6]
if st == 'online' or st == 'away' then
  if ARGV[5] == '1' and st ~= ARGV[2] and tonumber(at) < tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], 'lastSeen', ARGV[3])
    return {0, ARGV[2], ARGV[3]}
  end
  return {0, st, at}
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'lastSeen', ARGV[6])
return {1, ARGV[2], ARGV[6]}
"#;

// KEYS: socks:{u} of each user. Returns 1 for each user with a socket anywhere, else 0.
const ONLINE: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  out[i] = redis.call('SCARD', k) > 0 and 1 or 0
end
return out
"#;

const DISCONNECT: &str = r#"
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[1], 'leftAt', ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
end
return 1
"#;

const SET_STATUS: &str = r#"
if redis.call('HGET', KEYS[1], 'status') == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'lastSeen', ARGV[2])
return 1
"#;

const SET_LOCATION: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'location', ARGV[1]) end
return 0
"#;

const GET: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('HMGET', k, 'status', 'lastSeen', 'location')
  out[3 * i - 2] = v[1] or ''
  out[3 * i - 1] = v[2] or ''
  out[3 * i] = v[3] or ''
end
return out
"#;

// KEYS: pending. ARGV: prefix, now, batch, retention ms.
const CLAIM_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, u in ipairs(due) do
  redis.call('ZREM', KEYS[1], u)
  local uk = ARGV[1] .. 'user:' .. u
  if redis.call('SCARD', ARGV[1] .. 'socks:' .. u) == 0 then
    local st = redis.call('HGET', uk, 'status')
    if st == 'online' or st == 'away' then
      local last = redis.call('HGET', uk, 'leftAt') or ARGV[2]
      redis.call('HSET', uk, 'status', 'offline', 'lastSeen', last)
      redis.call('HDEL', uk, 'leftAt')
      redis.call('PEXPIRE', uk, ARGV[4])
      table.insert(out, u)
      table.insert(out, last)
      table.insert(out, redis.call('HGET', uk, 'targets') or '[]')
    end
  end
end
return out
"#;

// KEYS: inst:{id}, instances. ARGV: id, now, ttl ms. Returns whether the instance was
// still registered.
const HEARTBEAT_SCRIPT: &str = r#"
local alive = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return alive
"#;

// KEYS: instances. ARGV: prefix, own id, claim ms. Returns id, last heartbeat pairs of the
// dead instances this caller now reaps.
const FIND_DEAD: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local id = all[i]
  if id ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'inst:' .. id) == 0 then
    if redis.call('SET', ARGV[1] .. 'inst:' .. id .. ':reaper', ARGV[2], 'NX', 'PX', ARGV[3]) then
      table.insert(out, id)
      table.insert(out, all[i + 1])
    end
  end
end
return out
"#;

// Removes one batch of an instance's sockets. KEYS: inst:{id}:socks, pending, instances.
// ARGV: prefix, cursor, left at, due, id. Returns the next cursor; at "0" the instance is
// forgotten.
const FORGET_BATCH: &str = r#"
local r = redis.call('HSCAN', KEYS[1], ARGV[2], 'COUNT', 500)
local kv = r[2]
for i = 1, #kv, 2 do
  local sid, u = kv[i], kv[i + 1]
  local sk = ARGV[1] .. 'socks:' .. u
  if redis.call('SREM', sk, sid) == 1 and redis.call('SCARD', sk) == 0 then
    local uk = ARGV[1] .. 'user:' .. u
    -- Gone at the instance's last heartbeat, but not before the user's last change.
    local left = ARGV[3]
    local changed = redis.call('HGET', uk, 'lastSeen')
    if changed and tonumber(changed) > tonumber(left) then left = changed end
    redis.call('HSET', uk, 'leftAt', left)
    redis.call('ZADD', KEYS[2], ARGV[4], u)
  end
end
if r[1] == '0' then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[3], ARGV[5])
end
return r[1]
"#;

const LIST_SOCKETS: &str = "return redis.call('HGETALL', KEYS[1])";

const DELETE: &str = "return redis.call('DEL', KEYS[1])";

struct Scripts {
    restore: Script,
    online: Script,
    disconnect: Script,
    set_status: Script,
    set_location: Script,
    get: Script,
    claim_due: Script,
    heartbeat: Script,
    find_dead: Script,
    forget_batch: Script,
    list_sockets: Script,
    delete: Script,
}

struct RedisRegistry {
    client: Client,
    prefix: String,
    id: String,
    scripts: Scripts,
    link: Arc<Link>,
    /// This instance's sockets and their users: the truth that [`RedisRegistry::resync`]
    /// restores after an outage.
    local: Mutex<Local>,
}

/// What an instance knows of its own sockets.
#[derive(Default)]
struct Local {
    /// Socket id → user and targets (as JSON).
    sockets: HashMap<String, (String, String)>,
    /// Each user with a socket here.
    users: HashMap<String, LocalUser>,
}

struct LocalUser {
    sockets: usize,
    /// The status last read from or written to Redis, and the time of that change.
    status: Status,
    since: i64,
    /// Whether the user's watchers were told of `status` (false for a user who connected
    /// while Redis was down: their coming online is announced when Redis is back).
    announced: bool,
}

impl Local {
    fn add(&mut self, user: &str, sid: &str, targets: &str, now: i64) -> (Status, i64, bool) {
        let u = self.users.entry(user.to_owned()).or_insert(LocalUser {
            sockets: 0,
            status: Status::Online,
            since: now,
            announced: false,
        });
        if self
            .sockets
            .insert(sid.to_owned(), (user.to_owned(), targets.to_owned()))
            .is_none()
        {
            u.sockets += 1;
        }
        (u.status, u.since, u.announced)
    }

    fn remove(&mut self, sid: &str) {
        let Some((user, _)) = self.sockets.remove(sid) else {
            return;
        };
        if let Some(u) = self.users.get_mut(&user) {
            u.sockets = u.sockets.saturating_sub(1);
            if u.sockets == 0 {
                self.users.remove(&user);
            }
        }
    }

    /// Records what Redis now holds for a user with sockets here.
    fn learned(&mut self, user: &str, status: Status, since: i64) {
        if let Some(u) = self.users.get_mut(user) {
            u.status = status;
            u.since = since;
            u.announced = true;
        }
    }
}

/// A [`RESTORE`] reply.
struct Restored {
    code: i64,
    status: Status,
    since: i64,
}

/// Reads a script's reply as strings (nil and numbers become strings too).
fn strings(v: RedisValue) -> Vec<String> {
    match v {
        RedisValue::Array(items) => items
            .into_iter()
            .map(|i| i.as_string().unwrap_or_default())
            .collect(),
        _ => Vec::new(),
    }
}

impl RedisRegistry {
    fn new(client: Client, prefix: &str, id: String, link: Arc<Link>) -> Self {
        RedisRegistry {
            client,
            prefix: prefix.to_owned(),
            id,
            link,
            scripts: Scripts {
                restore: Script::from_lua(RESTORE),
                online: Script::from_lua(ONLINE),
                disconnect: Script::from_lua(DISCONNECT),
                set_status: Script::from_lua(SET_STATUS),
                set_location: Script::from_lua(SET_LOCATION),
                get: Script::from_lua(GET),
                claim_due: Script::from_lua(CLAIM_DUE),
                heartbeat: Script::from_lua(HEARTBEAT_SCRIPT),
                find_dead: Script::from_lua(FIND_DEAD),
                forget_batch: Script::from_lua(FORGET_BATCH),
                list_sockets: Script::from_lua(LIST_SOCKETS),
                delete: Script::from_lua(DELETE),
            },
            local: Mutex::new(Local::default()),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one of the scripts (loading it first if Redis does not know it yet), within
    /// the Redis deadline, failing at once while Redis is down.
    async fn eval<R: fred::types::FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
        what: &'static str,
    ) -> anyhow::Result<R> {
        self.link
            .call(script.evalsha_with_reload(&self.client, keys, args))
            .await
            .context(what)
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        k.push_str(&parts.join(":"));
        k
    }

    fn user_keys(&self, user: &str, instance: &str) -> Vec<String> {
        vec![
            self.key(&["user", user]),
            self.key(&["socks", user]),
            self.key(&["inst", instance, "socks"]),
            self.key(&["pending"]),
        ]
    }

    async fn connect(
        &self,
        user: &str,
        sid: &str,
        targets: &[String],
        now: i64,
    ) -> anyhow::Result<Option<(Status, i64)>> {
        let targets = serde_json::to_string(targets)?;
        let (status, since, announced) = self.local().add(user, sid, &targets, now);
        let r = self
            .restore(user, &[sid], status, since, &targets, false, now)
            .await?;
        self.local().learned(user, r.status, r.since);
        Ok(changed(&r, announced, since).then_some((r.status, r.since)))
    }

    /// Runs [`RESTORE`] for `sids` of `user`.
    #[allow(clippy::too_many_arguments)]
    async fn restore(
        &self,
        user: &str,
        sids: &[&str],
        status: Status,
        since: i64,
        targets: &str,
        overwrite: bool,
        now: i64,
    ) -> anyhow::Result<Restored> {
        let mut args = vec![
            user.to_owned(),
            status.as_str().to_owned(),
            since.to_string(),
            targets.to_owned(),
            if overwrite { "1" } else { "0" }.to_owned(),
            now.to_string(),
        ];
        args.extend(sids.iter().map(|s| s.to_string()));
        let reply: RedisValue = self
            .eval(
                &self.scripts.restore,
                self.user_keys(user, &self.id),
                args,
                "presence connect",
            )
            .await?;
        let f = strings(reply);
        anyhow::ensure!(f.len() == 3, "presence connect: unexpected reply");
        Ok(Restored {
            code: f[0].parse().unwrap_or(0),
            status: Status::parse(&f[1]),
            since: f[2].parse().unwrap_or(now),
        })
    }

    async fn online(&self, users: &[String]) -> anyhow::Result<Vec<bool>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = users.iter().map(|u| self.key(&["socks", u])).collect();
        let reply: RedisValue = self
            .eval(
                &self.scripts.online,
                keys,
                Vec::<String>::new(),
                "presence online",
            )
            .await?;
        let flags = strings(reply);
        anyhow::ensure!(
            flags.len() == users.len(),
            "presence online: unexpected reply"
        );
        Ok(flags.iter().map(|f| f == "1").collect())
    }

    async fn disconnect(&self, user: &str, sid: &str, now: i64, due: i64) -> anyhow::Result<()> {
        self.local().remove(sid);
        self.unregister(user, sid, now, due).await
    }

    async fn unregister(&self, user: &str, sid: &str, now: i64, due: i64) -> anyhow::Result<()> {
        let _: i64 = self
            .eval(
                &self.scripts.disconnect,
                self.user_keys(user, &self.id),
                vec![
                    sid.to_owned(),
                    user.to_owned(),
                    now.to_string(),
                    due.to_string(),
                ],
                "presence disconnect",
            )
            .await?;
        Ok(())
    }

    async fn set_status(&self, user: &str, status: Status, now: i64) -> anyhow::Result<bool> {
        let changed: i64 = self
            .eval(
                &self.scripts.set_status,
                vec![self.key(&["user", user])],
                vec![status.as_str().to_owned(), now.to_string()],
                "presence set_status",
            )
            .await?;
        if changed == 1 {
            self.local().learned(user, status, now);
        }
        Ok(changed == 1)
    }

    async fn set_location(&self, user: &str, location: &str) -> anyhow::Result<()> {
        let _: i64 = self
            .eval(
                &self.scripts.set_location,
                vec![self.key(&["user", user])],
                vec![location.to_owned()],
                "presence set_location",
            )
            .await?;
        Ok(())
    }

    async fn get(&self, users: &[String]) -> anyhow::Result<Vec<Seen>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = users.iter().map(|u| self.key(&["user", u])).collect();
        let reply: RedisValue = self
            .eval(
                &self.scripts.get,
                keys,
                Vec::<String>::new(),
                "presence get",
            )
            .await?;
        let fields = strings(reply);
        Ok(fields
            .chunks(3)
            .map(|f| Seen {
                status: Status::parse(&f[0]),
                last_seen: f[1].parse().ok(),
                location: Some(f[2].clone()).filter(|l| !l.is_empty()),
            })
            .collect())
    }

    async fn claim_due(&self, now: i64) -> anyhow::Result<Vec<WentOffline>> {
        let reply: RedisValue = self
            .eval(
                &self.scripts.claim_due,
                vec![self.key(&["pending"])],
                vec![
                    self.prefix.clone(),
                    now.to_string(),
                    CLAIM_BATCH.to_string(),
                    RETENTION.as_millis().to_string(),
                ],
                "presence claim",
            )
            .await?;
        Ok(strings(reply)
            .chunks(3)
            .filter(|c| c.len() == 3)
            .map(|c| WentOffline {
                user: c[0].clone(),
                last_seen: c[1].parse().unwrap_or(now),
                targets: serde_json::from_str(&c[2]).unwrap_or_default(),
            })
            .collect())
    }

    async fn heartbeat(&self, now: i64) -> anyhow::Result<bool> {
        let alive: i64 = self
            .eval(
                &self.scripts.heartbeat,
                vec![self.key(&["inst", &self.id]), self.key(&["instances"])],
                vec![
                    self.id.clone(),
                    now.to_string(),
                    ALIVE_TTL.as_millis().to_string(),
                ],
                "presence heartbeat",
            )
            .await?;
        Ok(alive == 1)
    }

    async fn reap(&self, now: i64) -> anyhow::Result<usize> {
        let reply: RedisValue = self
            .eval(
                &self.scripts.find_dead,
                vec![self.key(&["instances"])],
                vec![
                    self.prefix.clone(),
                    self.id.clone(),
                    REAP_CLAIM.as_millis().to_string(),
                ],
                "presence reap",
            )
            .await?;
        let dead = strings(reply);
        for pair in dead.chunks(2).filter(|p| p.len() == 2) {
            let (id, beat) = (&pair[0], pair[1].parse().unwrap_or(now));
            tracing::warn!(instance = %id, "an instance stopped without a word; its users go offline");
            // Gone since its last heartbeat: its users' grace period is over already.
            self.forget(id, beat, now).await?;
        }
        Ok(dead.len() / 2)
    }

    /// Removes every socket an instance registered, then the instance.
    async fn forget(&self, id: &str, left_at: i64, due: i64) -> anyhow::Result<()> {
        let keys = vec![
            self.key(&["inst", id, "socks"]),
            self.key(&["pending"]),
            self.key(&["instances"]),
        ];
        let mut cursor = "0".to_owned();
        loop {
            cursor = self
                .eval(
                    &self.scripts.forget_batch,
                    keys.clone(),
                    vec![
                        self.prefix.clone(),
                        cursor,
                        left_at.to_string(),
                        due.to_string(),
                        id.to_owned(),
                    ],
                    "presence forget",
                )
                .await?;
            if cursor == "0" {
                return Ok(());
            }
        }
    }

    async fn resync(&self, now: i64, grace_ms: i64) -> anyhow::Result<Vec<Resynced>> {
        let reply: RedisValue = self
            .eval(
                &self.scripts.list_sockets,
                vec![self.key(&["inst", &self.id, "socks"])],
                Vec::<String>::new(),
                "presence resync",
            )
            .await?;
        let registered: HashMap<String, String> = strings(reply)
            .chunks(2)
            .filter(|p| p.len() == 2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        // Per user with sockets here: the sockets Redis lost, and the targets.
        let mut lost: HashMap<String, (Vec<String>, String)> = HashMap::new();
        let mut complete = Vec::new();
        {
            let local = self.local();
            for (sid, (user, targets)) in &local.sockets {
                let entry = lost
                    .entry(user.clone())
                    .or_insert_with(|| (Vec::new(), targets.clone()));
                if !registered.contains_key(sid) {
                    entry.0.push(sid.clone());
                }
            }
            // Users whose coming online was never announced are looked at too: a
            // registration that timed out may still have reached Redis later.
            lost.retain(|user, (sids, _)| {
                let unannounced = local.users.get(user).is_some_and(|u| !u.announced);
                if sids.is_empty() && !unannounced {
                    complete.push(user.clone());
                }
                !sids.is_empty() || unannounced
            });
        }
        let mut changes = Vec::new();
        for (user, (sids, targets)) in &lost {
            let known = self
                .local()
                .users
                .get(user)
                .map(|u| (u.status, u.since, u.announced));
            // Gone since the snapshot: its disconnect has unregistered it.
            let Some((status, since, announced)) = known else {
                continue;
            };
            let sids: Vec<&str> = sids.iter().map(String::as_str).collect();
            let r = self
                .restore(user, &sids, status, since, targets, true, now)
                .await?;
            self.local().learned(user, r.status, r.since);
            if changed(&r, announced, since) {
                changes.push(Resynced {
                    user: user.clone(),
                    status: r.status,
                    at: r.since,
                    targets: serde_json::from_str(targets).unwrap_or_default(),
                });
            }
        }
        for (sid, user) in &registered {
            if !self.local().sockets.contains_key(sid) {
                self.unregister(user, sid, now, now + grace_ms).await?;
            }
        }
        // The others' last known status, read again (a change made through another
        // instance), so that a later restore writes back what watchers were last told.
        for users in complete.chunks(CLAIM_BATCH) {
            let seen = self.get(users).await?;
            let mut local = self.local();
            for (user, s) in users.iter().zip(seen) {
                if let (Status::Online | Status::Away, Some(at)) = (s.status, s.last_seen) {
                    local.learned(user, s.status, at);
                }
            }
        }
        Ok(changes)
    }

    async fn release(&self, now: i64, due: i64) -> anyhow::Result<()> {
        *self.local() = Local::default();
        self.forget(&self.id, now, due).await?;
        let _: i64 = self
            .eval(
                &self.scripts.delete,
                vec![self.key(&["inst", &self.id])],
                Vec::<String>::new(),
                "presence release",
            )
            .await?;
        Ok(())
    }
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

/// Whether a [`RESTORE`] changed what the user's watchers were told: the user was
/// offline, or their status was never announced and Redis either had no entry for them or
/// holds one written at or after `since`, when this instance first knew them (by this
/// instance's own registration that timed out but reached Redis later). A status set
/// before then was another instance's, announced by it.
fn changed(r: &Restored, announced: bool, since: i64) -> bool {
    r.code == 1 || (!announced && (r.code == 2 || r.since >= since))
}

/// Reconnects of the presence client, each calling for a resync.
pub fn reconnects(
    client: &Client,
) -> tokio::sync::broadcast::Receiver<fred::types::config::Server> {
    client.reconnect_rx()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn memory_transitions() {
        let mut m = Memory::default();
        assert!(m.connect("u", "s1", &t(&["project:p"]), 1));
        assert!(!m.connect("u", "s2", &t(&["project:p"]), 2));
        m.disconnect("u", "s1", 3, 10);
        assert!(m.pending.is_empty(), "another socket is still there");
        m.disconnect("u", "s2", 4, 10);
        assert!(m.claim_due(9).is_empty(), "grace period not over");
        // Back within the grace period: nothing to announce, nothing pending.
        assert!(!m.connect("u", "s3", &t(&["project:p"]), 5));
        assert!(m.claim_due(20).is_empty());
        m.disconnect("u", "s3", 6, 11);
        m.disconnect("u", "s3", 7, 12); // twice: no effect
        let gone = m.claim_due(11);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].last_seen, 6);
        assert_eq!(gone[0].targets, t(&["project:p"]));
        assert_eq!(m.seen("u").status, Status::Offline);
        assert_eq!(m.seen("u").last_seen, Some(6));
        assert_eq!(m.seen("never").last_seen, None);
    }

    #[test]
    fn local_bookkeeping() {
        let mut l = Local::default();
        assert_eq!(l.add("u", "s1", "[]", 5), (Status::Online, 5, false));
        l.learned("u", Status::Away, 7);
        assert_eq!(l.add("u", "s2", "[]", 9), (Status::Away, 7, true));
        assert_eq!(
            l.add("u", "s2", "[]", 9),
            (Status::Away, 7, true),
            "same socket twice"
        );
        l.remove("s1");
        assert_eq!(l.users["u"].sockets, 1);
        l.remove("s2");
        assert!(l.users.is_empty() && l.sockets.is_empty());
        l.remove("s2"); // twice: nothing
        l.learned("gone", Status::Online, 1); // no socket here: not kept
        assert!(l.users.is_empty());
    }

    #[test]
    fn restore_announces_only_real_changes() {
        let r = |code| Restored {
            code,
            status: Status::Away,
            since: 1,
        };
        assert!(!changed(&r(0), true, 1), "Redis's status stands");
        assert!(!changed(&r(0), false, 2), "another instance's, set before");
        assert!(
            changed(&r(0), false, 1),
            "ours, registered after its timeout"
        );
        assert!(changed(&r(1), true, 1), "was offline: a change");
        assert!(!changed(&r(2), true, 1), "forgotten, restored as announced");
        assert!(changed(&r(2), false, 1), "connected while Redis was down");
    }

    #[test]
    fn memory_status() {
        let mut m = Memory::default();
        assert!(!m.set_status("u", Status::Away, 1), "unknown user");
        m.connect("u", "s", &[], 1);
        assert!(m.set_status("u", Status::Away, 2));
        assert!(!m.set_status("u", Status::Away, 3));
        assert_eq!(m.seen("u").status, Status::Away);
        // Away users reconnecting stay away.
        m.disconnect("u", "s", 4, 5);
        assert!(!m.connect("u", "s2", &[], 4));
        assert_eq!(m.seen("u").status, Status::Away);
    }
}
