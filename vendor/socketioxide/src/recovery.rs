//! Trestle patch: connection state recovery, as socket.io 4.6+ does it.
//!
//! With a [`SessionStore`] set ([`SocketIoBuilder::connection_state_recovery`]), every
//! event broadcast without an ack and not volatile is kept by the store, which gives it an
//! offset; the offset goes to the clients as the event's last argument. The CONNECT answer
//! carries a private session id (`pid`) besides the socket id. When a socket goes away for
//! a reason the client may recover from ([`DisconnectReason::is_recoverable`]), its session
//! (socket id, pid, rooms, the application's data) is saved. A client that connects again
//! with `{ pid, offset }` in its CONNECT payload, within the store's window, gets its socket
//! id and rooms back and the kept events after `offset` that reached those rooms, in order
//! and once, before any newer one; [`Socket::recovered`] is then true.
//!
//! [`SocketIoBuilder::connection_state_recovery`]: crate::SocketIoBuilder::connection_state_recovery
//! [`DisconnectReason::is_recoverable`]: crate::socket::DisconnectReason::is_recoverable
//! [`Socket::recovered`]: crate::socket::Socket::recovered

use std::{
    cmp::Ordering,
    collections::{HashMap, VecDeque},
    fmt,
    future::Future,
    pin::Pin,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use socketioxide_core::{
    Sid, Str, Value,
    adapter::{BroadcastFlags, BroadcastOptions, Room},
};

/// A boxed future, as the store's methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The position of a kept event: two numbers, ordered as a pair, written `a-b` (the form
/// of Redis stream entry ids, so that a store on a Redis stream can use them as they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64, pub u64);

impl Offset {
    /// Reads `a-b`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Offset> {
        let (a, b) = s.split_once('-')?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return None;
        }
        Some(Offset(a.parse().ok()?, b.parse().ok()?))
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// What is kept of a socket that went away, to be given back to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The namespace.
    pub ns: Str,
    /// The socket id, which the recovered socket gets again.
    pub sid: Sid,
    /// The private session id the client presents to recover.
    pub pid: String,
    /// The rooms the socket was in.
    pub rooms: Vec<Room>,
    /// What the application attached to the socket ([`Socket::set_recovery_data`](crate::socket::Socket::set_recovery_data)).
    pub data: Option<String>,
    /// When the socket went away, in milliseconds since the Unix epoch.
    pub disconnected_at: u64,
}

/// An event as kept by a store: its payload without the offset, and whom it was for.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    /// The event's payload (`["event", ...args]` and its binary attachments).
    pub data: Value,
    /// The broadcast's rooms, excluded rooms, sender and flags.
    pub opts: BroadcastOptions,
}

/// How a session ended, as the application learns when it gives up waiting for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A client got it back.
    Restored,
    /// Nobody did (or it was never saved): it is gone now.
    Lost,
}

/// Errors of a store are its own; the protocol only logs them and connects afresh.
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// Where kept events and saved sessions live: in this process ([`MemoryStore`]) or shared
/// by every server of a cluster.
pub trait SessionStore: Send + Sync + 'static {
    /// Keeps a broadcast event of namespace `ns` and returns its offset, or `None` when this
    /// store does not keep it (the event then goes out without an offset).
    fn record<'a>(
        &'a self,
        ns: &'a str,
        event: &'a Kept,
    ) -> BoxFuture<'a, Result<Option<Offset>, StoreError>>;

    /// Saves the session of a socket that went away.
    fn save(&self, session: Session) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Takes the session `pid` of namespace `ns` when it is still within the window and
    /// the event at `offset` is still kept; `None` otherwise. A taken session is marked
    /// restored ([`SessionStore::discard`] tells it).
    fn restore<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
        offset: Offset,
    ) -> BoxFuture<'a, Result<Option<Session>, StoreError>>;

    /// The kept events of `ns` after `offset`, in order, with their offsets, at most `max`
    /// of them (`None` when there are more, or when `offset` is no longer kept).
    fn since<'a>(
        &'a self,
        ns: &'a str,
        offset: Offset,
        max: usize,
    ) -> BoxFuture<'a, Result<Option<Vec<(Offset, Kept)>>, StoreError>>;

    /// Ends the wait for the session `pid` saved at `at` (its `disconnected_at`): whether a
    /// client restored it, or it is gone now and can no longer be restored. A session of
    /// the same `pid` saved later means it was restored (by the socket that saved it).
    fn discard<'a>(&'a self, pid: &'a str, at: u64) -> BoxFuture<'a, Result<Outcome, StoreError>>;

    /// How long a session may be restored after its socket went away.
    fn window(&self) -> Duration;

    /// The most events one recovery may replay; past it the client connects afresh.
    fn max_replay(&self) -> usize {
        10_000
    }
}

impl fmt::Debug for dyn SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore")
            .field("window", &self.window())
            .finish()
    }
}

/// Whether a kept broadcast reached a socket `sid` in `rooms` (socket.io's
/// `shouldIncludePacket`, with socketioxide's broadcast rules).
pub fn reaches(opts: &BroadcastOptions, sid: Sid, rooms: &[Room]) -> bool {
    let broadcast = opts.has_flag(BroadcastFlags::Broadcast);
    let sid_room = |r: &Room| r.as_ref() == sid.as_str();
    let in_rooms = |list: &[Room]| list.iter().any(|r| sid_room(r) || rooms.contains(r));
    if in_rooms(&opts.except) || (broadcast && opts.sid == Some(sid)) {
        return false;
    }
    if !opts.rooms.is_empty() {
        in_rooms(&opts.rooms)
    } else {
        broadcast || opts.sid == Some(sid)
    }
}

/// `payload` (`["event", ...args]`) with `offset` as one more argument; `None` for a
/// payload that is not a JSON array (a binary parser's).
pub fn with_offset(payload: &Value, offset: Offset) -> Option<Value> {
    let Value::Str(text, bins) = payload else {
        return None;
    };
    let body = text.as_str().trim_end();
    let body = body.strip_suffix(']')?;
    let sep = if body.trim_end().ends_with('[') {
        ""
    } else {
        ","
    };
    let out = format!("{body}{sep}\"{offset}\"]");
    Some(Value::Str(Str::from(out), bins.clone()))
}

/// The offset at the end of an encoded event packet (`2["ev",...,"a-b"]`), if it has one.
pub(crate) fn offset_of_encoded(packet: &Value) -> Option<Offset> {
    let Value::Str(text, _) = packet else {
        return None;
    };
    let body = text.as_str().strip_suffix("\"]")?;
    let start = body.rfind('"')?;
    Offset::parse(&body[start + 1..])
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The store of a single server: kept events in a ring bounded in number and age, saved
/// sessions in a map swept of expired ones as events are kept.
pub struct MemoryStore {
    window: Duration,
    max_events: usize,
    max_replay: usize,
    /// The first half of every offset: the start time, so that offsets from a previous run
    /// of the process are not mistaken for this run's.
    epoch: u64,
    inner: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    next: u64,
    events: VecDeque<(u64, u64, String, Kept)>,
    sessions: HashMap<String, (Session, Saved)>,
    /// Sessions are swept when the map has grown past this.
    sweep_at: usize,
}

enum Saved {
    Waiting,
    Restored,
}

impl MemoryStore {
    /// Keeps at most `max_events` events, none older than `window`; replays at most
    /// `max_replay` events to one client.
    pub fn new(window: Duration, max_events: usize, max_replay: usize) -> Self {
        Self {
            window,
            max_events: max_events.max(1),
            max_replay,
            epoch: now_ms(),
            inner: Mutex::new(Memory {
                sweep_at: 1024,
                ..Default::default()
            }),
        }
    }

    /// The events and sessions held now.
    pub fn len(&self) -> (usize, usize) {
        let m = self.inner.lock().unwrap();
        (m.events.len(), m.sessions.len())
    }

    fn expired(&self, at_ms: u64, now: u64) -> bool {
        at_ms.saturating_add(self.window.as_millis() as u64) < now
    }

    fn index_of(&self, m: &Memory, offset: Offset) -> Option<usize> {
        if offset.0 != self.epoch {
            return None;
        }
        let first = m.events.front()?.0;
        let i = offset.1.checked_sub(first)? as usize;
        (i < m.events.len()).then_some(i)
    }
}

impl SessionStore for MemoryStore {
    fn record<'a>(
        &'a self,
        ns: &'a str,
        event: &'a Kept,
    ) -> BoxFuture<'a, Result<Option<Offset>, StoreError>> {
        let now = now_ms();
        let mut m = self.inner.lock().unwrap();
        let n = m.next;
        m.next += 1;
        m.events.push_back((n, now, ns.to_owned(), event.clone()));
        while m.events.len() > self.max_events
            || m.events.front().is_some_and(|e| self.expired(e.1, now))
        {
            m.events.pop_front();
        }
        if m.sessions.len() >= m.sweep_at {
            m.sessions
                .retain(|_, (s, _)| !self.expired(s.disconnected_at, now));
            m.sweep_at = (m.sessions.len() * 2).max(1024);
        }
        drop(m);
        Box::pin(std::future::ready(Ok(Some(Offset(self.epoch, n)))))
    }

    fn save(&self, session: Session) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut m = self.inner.lock().unwrap();
        m.sessions
            .insert(session.pid.clone(), (session, Saved::Waiting));
        Box::pin(std::future::ready(Ok(())))
    }

    fn restore<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
        offset: Offset,
    ) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        let now = now_ms();
        let mut m = self.inner.lock().unwrap();
        // An offset that is not kept leaves the session waiting: whoever presented it
        // (perhaps not its owner) must not take the owner's recovery away.
        let kept = self.index_of(&m, offset).is_some();
        let found = match m.sessions.get_mut(pid) {
            Some((s, state @ Saved::Waiting))
                if kept && s.ns == ns && !self.expired(s.disconnected_at, now) =>
            {
                *state = Saved::Restored;
                Some(s.clone())
            }
            _ => None,
        };
        Box::pin(std::future::ready(Ok(found)))
    }

    fn since<'a>(
        &'a self,
        ns: &'a str,
        offset: Offset,
        max: usize,
    ) -> BoxFuture<'a, Result<Option<Vec<(Offset, Kept)>>, StoreError>> {
        let m = self.inner.lock().unwrap();
        let out = self.index_of(&m, offset).and_then(|i| {
            let after = m.events.iter().skip(i + 1).filter(|e| e.2 == ns);
            let mut out = Vec::new();
            for (n, _, _, kept) in after {
                if out.len() == max {
                    return None;
                }
                out.push((Offset(self.epoch, *n), kept.clone()));
            }
            Some(out)
        });
        Box::pin(std::future::ready(Ok(out)))
    }

    fn discard<'a>(&'a self, pid: &'a str, at: u64) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        let mut m = self.inner.lock().unwrap();
        let outcome = match m.sessions.get(pid) {
            Some((s, _)) if s.disconnected_at != at => Outcome::Restored,
            Some((_, Saved::Restored)) => Outcome::Restored,
            _ => Outcome::Lost,
        };
        if m.sessions
            .get(pid)
            .is_some_and(|(s, _)| s.disconnected_at == at)
        {
            m.sessions.remove(pid);
        }
        Box::pin(std::future::ready(Ok(outcome)))
    }

    fn window(&self) -> Duration {
        self.window
    }

    fn max_replay(&self) -> usize {
        self.max_replay
    }
}

/// The replay state of a recovered socket: live events wait while the missed ones are
/// read and sent, and an event the replay already sent is not sent again.
pub(crate) struct Replay {
    state: Mutex<ReplayState>,
}

struct ReplayState {
    /// Live events that came during the replay, `None` once it is over.
    held: Option<Vec<Value>>,
    /// The last offset replayed: a live event at or before it was replayed.
    floor: Option<Offset>,
}

/// What to do with a live event for a recovered socket.
pub(crate) enum Live {
    Send(Value),
    Skip,
}

/// Live events held past this close the connection: its client reconnects afresh.
pub(crate) const MAX_HELD: usize = 4096;

impl Replay {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(ReplayState {
                held: Some(Vec::new()),
                floor: None,
            }),
        }
    }

    /// Holds a live event during the replay, drops one the replay sent, passes the rest.
    /// `Err` when too many are held.
    pub(crate) fn live(&self, packet: Value) -> Result<Live, ()> {
        let mut st = self.state.lock().unwrap();
        if let Some(held) = &mut st.held {
            if held.len() >= MAX_HELD {
                return Err(());
            }
            held.push(packet);
            return Ok(Live::Skip);
        }
        Ok(match (st.floor, offset_of_encoded(&packet)) {
            (Some(floor), Some(at)) if at.cmp(&floor) != Ordering::Greater => Live::Skip,
            _ => Live::Send(packet),
        })
    }

    /// Ends the replay, whose last event had `floor`: the held events still to send.
    pub(crate) fn finish(&self, floor: Option<Offset>) -> Vec<Value> {
        let mut st = self.state.lock().unwrap();
        st.floor = floor;
        let held = st.held.take().unwrap_or_default();
        held.into_iter()
            .filter(|p| match (floor, offset_of_encoded(p)) {
                (Some(floor), Some(at)) => at > floor,
                _ => true,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(rooms: &[&str], except: &[&str]) -> BoxedOpts {
        let mut o = BroadcastOptions::default();
        o.rooms = rooms.iter().map(|r| Room::from(r.to_string())).collect();
        o.except = except.iter().map(|r| Room::from(r.to_string())).collect();
        o
    }
    type BoxedOpts = BroadcastOptions;

    #[test]
    fn offsets_parse_and_order() {
        assert_eq!(Offset::parse("12-3"), Some(Offset(12, 3)));
        assert!(Offset::parse("12").is_none());
        assert!(Offset::parse("-3").is_none());
        assert!(Offset::parse("1-2-3").is_none());
        assert!(Offset::parse("a-1").is_none());
        assert!(Offset(1, 9) < Offset(2, 0));
        assert_eq!(Offset(5, 7).to_string(), "5-7");
    }

    #[test]
    fn offset_is_appended_and_read_back() {
        let v = Value::Str(Str::from("[\"ev\",{\"a\":1}]".to_string()), None);
        let Some(Value::Str(s, _)) = with_offset(&v, Offset(3, 4)) else {
            panic!()
        };
        assert_eq!(s.as_str(), "[\"ev\",{\"a\":1},\"3-4\"]");
        let wire = Value::Str(Str::from(format!("2{}", s.as_str())), None);
        assert_eq!(offset_of_encoded(&wire), Some(Offset(3, 4)));
        let bare = Value::Str(Str::from("[\"ev\"]".to_string()), None);
        let Some(Value::Str(s, _)) = with_offset(&bare, Offset(1, 1)) else {
            panic!()
        };
        assert_eq!(s.as_str(), "[\"ev\",\"1-1\"]");
        let no = Value::Str(Str::from("2[\"ev\",\"text\"]".to_string()), None);
        assert_eq!(offset_of_encoded(&no), None);
    }

    #[test]
    fn reaches_follows_rooms_and_exceptions() {
        let sid = Sid::new();
        let rooms = vec![Room::from("a".to_string())];
        assert!(reaches(&opts(&["a"], &[]), sid, &rooms));
        assert!(!reaches(&opts(&["b"], &[]), sid, &rooms));
        assert!(reaches(&opts(&[sid.as_str()], &[]), sid, &rooms));
        assert!(!reaches(&opts(&["a"], &["a"]), sid, &rooms));
        let mut everyone = opts(&[], &[]);
        everyone.add_flag(BroadcastFlags::Broadcast);
        assert!(reaches(&everyone, sid, &rooms));
        everyone.sid = Some(sid);
        assert!(!reaches(&everyone, sid, &rooms), "the sender is excluded");
    }

    fn kept(name: &str, rooms: &[&str]) -> Kept {
        Kept {
            data: Value::Str(Str::from(format!("[\"{name}\"]")), None),
            opts: opts(rooms, &[]),
        }
    }

    fn session(pid: &str, at: u64) -> Session {
        Session {
            ns: Str::from("/"),
            sid: Sid::new(),
            pid: pid.into(),
            rooms: vec![],
            data: None,
            disconnected_at: at,
        }
    }

    #[tokio::test]
    async fn memory_store_restores_once_within_the_window() {
        let store = MemoryStore::new(Duration::from_secs(60), 100, 100);
        let first = store
            .record("/", &kept("a", &["r"]))
            .await
            .unwrap()
            .unwrap();
        store.record("/", &kept("b", &["r"])).await.unwrap();
        store.record("/other", &kept("c", &["r"])).await.unwrap();
        store.save(session("p", now_ms())).await.unwrap();
        let s = store.restore("/", "p", first).await.unwrap();
        assert!(s.is_some());
        assert!(
            store.restore("/", "p", first).await.unwrap().is_none(),
            "once"
        );
        let missed = store.since("/", first, 10).await.unwrap().unwrap();
        assert_eq!(
            missed.len(),
            1,
            "only b: after the offset, in its namespace"
        );
        assert!(
            store.since("/", first, 0).await.unwrap().is_none(),
            "past max"
        );
        let at = s.unwrap().disconnected_at;
        assert_eq!(store.discard("p", at).await.unwrap(), Outcome::Restored);
        assert_eq!(store.discard("p", at).await.unwrap(), Outcome::Lost);
        let mut again = session("q", 10);
        store.save(again.clone()).await.unwrap();
        again.disconnected_at = 20;
        store.save(again).await.unwrap();
        assert_eq!(
            store.discard("q", 10).await.unwrap(),
            Outcome::Restored,
            "saved again later"
        );
        assert_eq!(store.discard("q", 20).await.unwrap(), Outcome::Lost);
    }

    #[tokio::test]
    async fn memory_store_refuses_expired_sessions_and_lost_offsets() {
        let store = MemoryStore::new(Duration::from_millis(1000), 2, 100);
        let first = store.record("/", &kept("a", &[])).await.unwrap().unwrap();
        let old = session("old", now_ms() - 5000);
        store.save(old.clone()).await.unwrap();
        assert!(store.restore("/", "old", first).await.unwrap().is_none());
        assert_eq!(
            store.discard("old", old.disconnected_at).await.unwrap(),
            Outcome::Lost
        );
        store.record("/", &kept("b", &[])).await.unwrap();
        let kept_c = store.record("/", &kept("c", &[])).await.unwrap().unwrap();
        store.save(session("p", now_ms())).await.unwrap();
        assert!(
            store.restore("/", "p", first).await.unwrap().is_none(),
            "the event at the offset was dropped from the ring"
        );
        assert!(
            store
                .restore("/", "p", Offset(1, 0))
                .await
                .unwrap()
                .is_none(),
            "another run's offset"
        );
        assert!(
            store.restore("/", "p", kept_c).await.unwrap().is_some(),
            "a wrong offset (perhaps not from the owner) leaves the session to its owner"
        );
    }

    #[test]
    fn replay_holds_then_skips_what_it_sent() {
        let r = Replay::new();
        let wire = |o: &str| Value::Str(Str::from(format!("2[\"e\",\"{o}\"]")), None);
        assert!(matches!(r.live(wire("1-5")), Ok(Live::Skip)));
        assert!(matches!(r.live(wire("1-7")), Ok(Live::Skip)));
        let rest = r.finish(Some(Offset(1, 5)));
        assert_eq!(rest.len(), 1, "1-5 was replayed, 1-7 was not");
        assert!(matches!(r.live(wire("1-4")), Ok(Live::Skip)));
        assert!(matches!(r.live(wire("1-8")), Ok(Live::Send(_))));
    }
}
