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
//! The scripts build some key names from the prefix, so presence needs one Redis server
//! (not Redis Cluster), like the adapter's request/response channels in practice.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use anyhow::Context;
use fred::{
    clients::Client,
    interfaces::{ClientLike, EventInterface},
    types::{Value as RedisValue, scripts::Script},
};

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
    pub async fn redis(client: Client, prefix: &str, grace: Duration) -> anyhow::Result<Registry> {
        let id = crate::store::new_id().context("cannot make an instance id")?;
        let redis = RedisRegistry::new(client, prefix, id);
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

    /// Registers a socket of `user`. True when this made the user online (from offline
    /// or never seen): the caller announces it. `targets` are the rooms the user's
    /// changes go to besides `presence:{user}`.
    pub async fn connect(
        &self,
        user: &str,
        sid: &str,
        targets: &[String],
        now: i64,
    ) -> anyhow::Result<bool> {
        match &self.backing {
            Backing::Memory(m) => Ok(lock(m).connect(user, sid, targets, now)),
            Backing::Redis(r) => r.connect(user, sid, targets, now).await,
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
    /// was away: sockets it lost are registered again, sockets whose disconnect it missed
    /// are removed. Returns the users who became online again, to be announced.
    pub async fn resync(&self, now: i64) -> anyhow::Result<Vec<(String, Vec<String>)>> {
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

const CONNECT: &str = r#"
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('PERSIST', KEYS[1])
redis.call('HSET', KEYS[1], 'targets', ARGV[4])
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'online' or st == 'away' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'online', 'lastSeen', ARGV[3])
return 1
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
    connect: Script,
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
    /// The sockets this instance registered: socket id → user and targets. The truth
    /// that [`RedisRegistry::resync`] restores after an outage.
    local: Mutex<HashMap<String, (String, String)>>,
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
    fn new(client: Client, prefix: &str, id: String) -> Self {
        RedisRegistry {
            client,
            prefix: prefix.to_owned(),
            id,
            scripts: Scripts {
                connect: Script::from_lua(CONNECT),
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
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Runs one of the scripts (loading it first if Redis does not know it yet).
    async fn eval<R: fred::types::FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
        what: &'static str,
    ) -> anyhow::Result<R> {
        script
            .evalsha_with_reload(&self.client, keys, args)
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
    ) -> anyhow::Result<bool> {
        let targets = serde_json::to_string(targets)?;
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sid.to_owned(), (user.to_owned(), targets.clone()));
        self.register(user, sid, &targets, now).await
    }

    async fn register(
        &self,
        user: &str,
        sid: &str,
        targets: &str,
        now: i64,
    ) -> anyhow::Result<bool> {
        let became: i64 = self
            .eval(
                &self.scripts.connect,
                self.user_keys(user, &self.id),
                vec![
                    sid.to_owned(),
                    user.to_owned(),
                    now.to_string(),
                    targets.to_owned(),
                ],
                "presence connect",
            )
            .await?;
        Ok(became == 1)
    }

    async fn disconnect(&self, user: &str, sid: &str, now: i64, due: i64) -> anyhow::Result<()> {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sid);
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

    async fn resync(&self, now: i64, grace_ms: i64) -> anyhow::Result<Vec<(String, Vec<String>)>> {
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
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut back_online = Vec::new();
        let mut announced = HashSet::new();
        for (sid, (user, targets)) in &local {
            if registered.contains_key(sid) {
                continue;
            }
            if self.register(user, sid, targets, now).await? && announced.insert(user.clone()) {
                back_online.push((
                    user.clone(),
                    serde_json::from_str(targets).unwrap_or_default(),
                ));
            }
        }
        for (sid, user) in &registered {
            let still_local = self
                .local
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(sid);
            if !still_local {
                self.unregister(user, sid, now, now + grace_ms).await?;
            }
        }
        Ok(back_online)
    }

    async fn release(&self, now: i64, due: i64) -> anyhow::Result<()> {
        self.local.lock().unwrap_or_else(|e| e.into_inner()).clear();
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
/// do not queue behind the adapter's traffic).
pub async fn redis_client(url: &str) -> anyhow::Result<Client> {
    let client = super::builder(url)?
        .build()
        .context("cannot build the Redis client for presence")?;
    client
        .init()
        .await
        .context("cannot connect to Redis for presence (REDIS_URL)")?;
    Ok(client)
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
