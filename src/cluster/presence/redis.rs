//! The Redis backing of the presence registry: the calls that run the [`scripts`](super::scripts),
//! what they return, and the presence Redis client.

use std::{collections::HashMap, sync::Mutex};

use std::sync::Arc;

use anyhow::Context;
use fred::{
    clients::Client,
    types::{Value as RedisValue, scripts::Script},
};

use super::{
    ALIVE_TTL, CLAIM_BATCH, Link, REAP_CLAIM, RETENTION, Resynced, Seen, Status, WentOffline,
    local::Local,
    scripts::{
        CLAIM_DUE, DELETE, DISCONNECT, FIND_DEAD, FORGET_BATCH, GET, HEARTBEAT_SCRIPT,
        LIST_SOCKETS, ONLINE, RESTORE, SET_LOCATION, SET_STATUS, Scripts,
    },
};

pub(super) struct RedisRegistry {
    pub(super) client: Client,
    prefix: String,
    id: String,
    scripts: Scripts,
    pub(super) link: Arc<Link>,
    /// This instance's sockets and their users: the truth that [`RedisRegistry::resync`]
    /// restores after an outage.
    local: Mutex<Local>,
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
    pub(super) fn new(client: Client, prefix: &str, id: String, link: Arc<Link>) -> Self {
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

    pub(super) async fn connect(
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

    pub(super) async fn online(&self, users: &[String]) -> anyhow::Result<Vec<bool>> {
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

    pub(super) async fn disconnect(
        &self,
        user: &str,
        sid: &str,
        now: i64,
        due: i64,
    ) -> anyhow::Result<()> {
        self.local().remove(sid);
        self.unregister(user, sid, now, due).await
    }

    /// Drops this instance's record of a socket that another instance now holds (it
    /// recovered its session there), leaving Redis as that instance wrote it.
    pub(super) fn forget_socket(&self, sid: &str) {
        self.local().remove(sid);
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

    pub(super) async fn set_status(
        &self,
        user: &str,
        status: Status,
        now: i64,
    ) -> anyhow::Result<bool> {
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

    pub(super) async fn set_location(&self, user: &str, location: &str) -> anyhow::Result<()> {
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

    pub(super) async fn get(&self, users: &[String]) -> anyhow::Result<Vec<Seen>> {
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

    pub(super) async fn claim_due(&self, now: i64) -> anyhow::Result<Vec<WentOffline>> {
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

    pub(super) async fn heartbeat(&self, now: i64) -> anyhow::Result<bool> {
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

    pub(super) async fn reap(&self, now: i64) -> anyhow::Result<usize> {
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

    pub(super) async fn resync(&self, now: i64, grace_ms: i64) -> anyhow::Result<Vec<Resynced>> {
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

    pub(super) async fn release(&self, now: i64, due: i64) -> anyhow::Result<()> {
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

/// Whether a [`RESTORE`] changed what the user's watchers were told: the user was
/// offline, or their status was never announced and Redis either had no entry for them or
/// holds one written at or after `since`, when this instance first knew them (by this
/// instance's own registration that timed out but reached Redis later). A status set
/// before then was another instance's, announced by it.
fn changed(r: &Restored, announced: bool, since: i64) -> bool {
    r.code == 1 || (!announced && (r.code == 2 || r.since >= since))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
