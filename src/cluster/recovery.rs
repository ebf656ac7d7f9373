//! Connection state recovery shared by every instance through Redis: a client whose
//! connection to one instance dropped recovers its socket id, rooms and missed events
//! through any other ([`RedisStore`], socketioxide's [`SessionStore`] with the semantics of
//! its single-process [`MemoryStore`](socketioxide::recovery::MemoryStore)).
//!
//! Two kinds of keys, each command and script touching one key, so that it works on a
//! Redis Cluster without hash tags:
//! - `<prefix>recovery:events`, one stream of the kept events of every namespace, each
//!   entry a field `m` holding `(namespace, Kept)` in MessagePack. The entry id, Redis's
//!   `ms-seq`, is the event's offset; the stream is trimmed (`MAXLEN ~`) to about
//!   `max_events` entries, whole nodes at a time, so a few more may stay.
//! - `<prefix>recovery:session:<pid>`, a hash per saved session: `state` (`waiting`, then
//!   `restored`), `ns`, `at` (its `disconnected_at`) and `body` (JSON: socket id, rooms,
//!   the application's data), living the window and a minute more. The window itself is
//!   enforced on `at`, as [`MemoryStore`](socketioxide::recovery::MemoryStore) does, with
//!   the restoring instance's clock.
//!
//! Every call goes through the [`Link`]: it has the Redis deadline and fails at once while
//! Redis is marked down, and any error only means that the client connects afresh, or that
//! the event goes out without an offset. What Redis holds is not trusted: an entry or a
//! session that does not decode is skipped, or taken as absent.

use std::{str::FromStr, sync::Arc, time::Duration};

use anyhow::Context;
use fred::{
    clients::Client,
    interfaces::StreamsInterface,
    types::{Value as RedisValue, scripts::Script},
};
use serde::{Deserialize, Serialize};
use socketioxide::recovery::{
    BoxFuture, Kept, Offset, Outcome, Session, SessionStore, StoreError, now_ms,
};
use socketioxide_core::{Sid, Str, adapter::BroadcastFlags};

use super::Link;

// KEYS: session:<pid>. ARGV: namespace, disconnected_at, body, time to live (ms).
const SAVE: &str = include_str!("recovery/save.lua");
// KEYS: session:<pid>. ARGV: namespace, oldest disconnected_at within the window. Returns
// {disconnected_at, body} of the session taken, or nil.
const RESTORE: &str = include_str!("recovery/restore.lua");
// KEYS: session:<pid>. ARGV: disconnected_at. Returns 1 (restored) or 0 (lost).
const DISCARD: &str = include_str!("recovery/discard.lua");

/// How much longer than the window a saved session lives in Redis: its expiry in Redis is
/// only the clean-up of sessions nobody discarded (an instance that stopped), while the
/// window is checked on `disconnected_at`; the margin covers clocks a little apart.
const SESSION_TTL_MARGIN: Duration = Duration::from_secs(60);

/// Stream entries read by one `XRANGE` while replaying: each round trip stays short, and a
/// reply holds at most this many events (of any namespace).
const PAGE: u64 = 256;

/// The stream entry field holding the event.
const FIELD: &str = "m";

/// A session's `body`: what [`Session`] holds besides its pid, namespace and time.
#[derive(Serialize, Deserialize)]
struct Body {
    sid: String,
    rooms: Vec<String>,
    data: Option<String>,
}

/// Connection state recovery's [`SessionStore`] in Redis, shared by every instance using
/// the same prefix.
pub struct RedisStore {
    client: Client,
    link: Arc<Link>,
    events: String,
    sessions: String,
    window: Duration,
    max_events: usize,
    max_replay: usize,
    save: Script,
    restore: Script,
    discard: Script,
}

impl RedisStore {
    /// A store whose keys start with `prefix` (`<prefix>recovery:…`). Sessions can be
    /// restored for `window` after their socket went away; the stream keeps about the last
    /// `max_events` events of all namespaces together (at least 1); a recovery replays at
    /// most `max_replay` events, past which the client connects afresh.
    pub fn new(
        client: Client,
        link: Arc<Link>,
        prefix: &str,
        window: Duration,
        max_events: usize,
        max_replay: usize,
    ) -> Self {
        RedisStore {
            client,
            link,
            events: format!("{prefix}recovery:events"),
            sessions: format!("{prefix}recovery:session:"),
            window,
            max_events: max_events.max(1),
            max_replay,
            save: Script::from_lua(SAVE),
            restore: Script::from_lua(RESTORE),
            discard: Script::from_lua(DISCARD),
        }
    }

    fn session_key(&self, pid: &str) -> String {
        format!("{}{pid}", self.sessions)
    }

    /// Runs one of the scripts (loading it first if Redis does not know it yet) on the
    /// session key of `pid`, through the link.
    async fn eval<R: fred::types::FromValue>(
        &self,
        script: &Script,
        pid: &str,
        args: Vec<String>,
        what: &'static str,
    ) -> anyhow::Result<R> {
        self.link
            .call(script.evalsha_with_reload(&self.client, vec![self.session_key(pid)], args))
            .await
            .context(what)
    }

    /// The stream entries from `start` (an `XRANGE` bound) on, at most `count`.
    async fn range(&self, start: String, end: String, count: u64) -> anyhow::Result<Vec<Entry>> {
        let reply: RedisValue = self
            .link
            .call(self.client.xrange(&self.events, start, end, Some(count)))
            .await
            .context("connection state recovery: reading kept events")?;
        Ok(entries(reply))
    }

    async fn record_event(&self, ns: &str, event: &Kept) -> anyhow::Result<Option<Offset>> {
        // Delivered by every instance (a redis-emitter message each receives): kept here,
        // it would be kept once per instance.
        if event.opts.has_flag(BroadcastFlags::Local) {
            return Ok(None);
        }
        let entry = rmp_serde::to_vec(&(ns, event)).context("encoding a kept event")?;
        let id: String = self
            .link
            .call(self.client.xadd(
                &self.events,
                false,
                ("MAXLEN", "~", self.max_events as i64),
                "*",
                (FIELD, entry),
            ))
            .await
            .context("connection state recovery: keeping an event")?;
        Offset::parse(&id)
            .map(Some)
            .with_context(|| format!("Redis gave the stream entry id {id:?}"))
    }

    async fn save_session(&self, session: Session) -> anyhow::Result<()> {
        let body = serde_json::to_string(&Body {
            sid: session.sid.to_string(),
            rooms: session.rooms.iter().map(|r| r.to_string()).collect(),
            data: session.data,
        })?;
        let ttl = self.window.saturating_add(SESSION_TTL_MARGIN).as_millis();
        let _: i64 = self
            .eval(
                &self.save,
                &session.pid,
                vec![
                    session.ns.to_string(),
                    session.disconnected_at.to_string(),
                    body,
                    ttl.to_string(),
                ],
                "connection state recovery: saving a session",
            )
            .await?;
        Ok(())
    }

    async fn restore_session(
        &self,
        ns: &str,
        pid: &str,
        offset: Offset,
    ) -> anyhow::Result<Option<Session>> {
        // The offset first: a session taken and then refused for its offset would stay
        // marked restored.
        let at_offset = self
            .range(offset.to_string(), offset.to_string(), 1)
            .await?;
        if at_offset.is_empty() {
            return Ok(None);
        }
        let oldest = now_ms().saturating_sub(self.window.as_millis() as u64);
        let reply: RedisValue = self
            .eval(
                &self.restore,
                pid,
                vec![ns.to_owned(), oldest.to_string()],
                "connection state recovery: restoring a session",
            )
            .await?;
        let RedisValue::Array(fields) = reply else {
            return Ok(None);
        };
        let [at, body] = fields.as_slice() else {
            return Ok(None);
        };
        let at = at.as_str().and_then(|a| a.parse::<u64>().ok());
        let body = body
            .as_bytes()
            .and_then(|b| serde_json::from_slice::<Body>(b).ok());
        let (Some(at), Some(body)) = (at, body) else {
            return Ok(None);
        };
        let Ok(sid) = Sid::from_str(&body.sid) else {
            return Ok(None);
        };
        Ok(Some(Session {
            ns: Str::from(ns.to_owned()),
            sid,
            pid: pid.to_owned(),
            rooms: body.rooms.into_iter().map(Into::into).collect(),
            data: body.data,
            disconnected_at: at,
        }))
    }

    async fn events_since(
        &self,
        ns: &str,
        offset: Offset,
        max: usize,
    ) -> anyhow::Result<Option<Vec<(Offset, Kept)>>> {
        let mut out = Vec::new();
        // The first page starts at the offset itself, which must still be there: else
        // events after it may have been trimmed too.
        let mut start = offset.to_string();
        let mut first = true;
        loop {
            let page = self.range(start, "+".to_owned(), PAGE).await?;
            let full = page.len() as u64 == PAGE;
            let mut page = page.into_iter();
            if first {
                match page.next() {
                    Some(e) if e.id == offset.to_string() => {}
                    _ => return Ok(None),
                }
                first = false;
            }
            let mut last = None;
            for entry in page {
                last = Some(entry.id);
                let Some(at) = last.as_deref().and_then(Offset::parse) else {
                    continue;
                };
                let Some((kept_ns, kept)) = entry.event else {
                    continue;
                };
                if kept_ns != ns {
                    continue;
                }
                if out.len() == max {
                    return Ok(None);
                }
                out.push((at, kept));
            }
            match last {
                Some(id) if full => start = format!("({id}"),
                _ => return Ok(Some(out)),
            }
        }
    }
}

/// A stream entry: its id, and its event when it decodes.
struct Entry {
    id: String,
    event: Option<(String, Kept)>,
}

/// Reads an `XRANGE` reply: `[[id, [field, value, …]], …]` (the fields a map in RESP3).
/// An entry without a readable id is left out; one whose event does not decode keeps its
/// id, for paging.
fn entries(reply: RedisValue) -> Vec<Entry> {
    let RedisValue::Array(items) = reply else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let RedisValue::Array(parts) = item else {
                return None;
            };
            let mut parts = parts.into_iter();
            let id = parts.next()?.as_str()?.into_owned();
            let fields = parts.next().map(RedisValue::into_array).unwrap_or_default();
            let event = fields
                .chunks(2)
                .find(|f| f.len() == 2 && f[0].as_str().as_deref() == Some(FIELD))
                .and_then(|f| f[1].as_bytes())
                .and_then(|b| rmp_serde::from_slice::<(String, Kept)>(b).ok());
            Some(Entry { id, event })
        })
        .collect()
}

impl SessionStore for RedisStore {
    fn record<'a>(
        &'a self,
        ns: &'a str,
        event: &'a Kept,
    ) -> BoxFuture<'a, Result<Option<Offset>, StoreError>> {
        Box::pin(async move { Ok(self.record_event(ns, event).await?) })
    }

    fn save(&self, session: Session) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { Ok(self.save_session(session).await?) })
    }

    fn restore<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
        offset: Offset,
    ) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        Box::pin(async move { Ok(self.restore_session(ns, pid, offset).await?) })
    }

    fn since<'a>(
        &'a self,
        ns: &'a str,
        offset: Offset,
        max: usize,
    ) -> BoxFuture<'a, Result<Option<Vec<(Offset, Kept)>>, StoreError>> {
        Box::pin(async move { Ok(self.events_since(ns, offset, max).await?) })
    }

    fn discard<'a>(&'a self, pid: &'a str, at: u64) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        Box::pin(async move {
            let restored: i64 = self
                .eval(
                    &self.discard,
                    pid,
                    vec![at.to_string()],
                    "connection state recovery: ending a session's wait",
                )
                .await?;
            Ok(if restored == 1 {
                Outcome::Restored
            } else {
                Outcome::Lost
            })
        })
    }

    fn window(&self) -> Duration {
        self.window
    }

    fn max_replay(&self) -> usize {
        self.max_replay
    }
}
