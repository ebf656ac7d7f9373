//! Connection state recovery's Redis store against a real Redis (a `redis-server` of each
//! test's own, killed when the test ends): what `MemoryStore` promises (vendor/socketioxide,
//! `recovery.rs`) holds for sessions and events shared by instances, and what a damaged
//! Redis holds is skipped rather than trusted.

#[path = "common/redis.rs"]
mod redis;

use std::{collections::VecDeque, sync::Arc, time::Duration};

use fred::{
    clients::Client,
    interfaces::ClientLike,
    prelude::{Builder, Config},
};
use socketioxide::recovery::{Kept, Offset, Outcome, Session, SessionStore, now_ms};
use socketioxide_core::{
    Sid, Str, Value,
    adapter::{BroadcastFlags, BroadcastOptions, Room},
};
use trestle::cluster::{Link, recovery::RedisStore};

const PREFIX: &str = "t:";
const EVENTS: &str = "t:recovery:events";
const WINDOW: Duration = Duration::from_secs(60);

/// The Redis connections of one instance: the link over a subscriber client of its own
/// (the adapter's, in the server), and the store's client.
async fn connections(redis: &redis::Redis) -> (Client, Arc<Link>) {
    let subscriber = Builder::from_config(Config::from_url(&redis.url).unwrap())
        .build_subscriber_client()
        .unwrap();
    subscriber.init().await.unwrap();
    let link = Link::new(subscriber, Duration::from_millis(500));
    (redis.client().await, link)
}

async fn store(redis: &redis::Redis, window: Duration, max_events: usize) -> RedisStore {
    let (client, link) = connections(redis).await;
    RedisStore::new(client, link, PREFIX, window, max_events, 100)
}

async fn command<R: fred::types::FromValue>(
    c: &Client,
    name: &'static str,
    args: Vec<fred::types::Value>,
) -> R {
    c.custom(fred::cmd!(name), args).await.unwrap()
}

fn args(a: &[&str]) -> Vec<fred::types::Value> {
    a.iter().map(|s| (*s).into()).collect()
}

fn kept(name: &str, rooms: &[&str]) -> Kept {
    let mut opts = BroadcastOptions::default();
    opts.rooms = rooms.iter().map(|r| Room::from(r.to_string())).collect();
    Kept {
        data: Value::Str(Str::from(format!("[\"{name}\"]")), None),
        opts,
    }
}

fn name(k: &Kept) -> String {
    match &k.data {
        Value::Str(s, _) => s.to_string(),
        Value::Bytes(_) => String::new(),
    }
}

fn session(pid: &str, ns: &str, at: u64) -> Session {
    Session {
        ns: Str::from(ns.to_owned()),
        sid: Sid::new(),
        pid: pid.into(),
        rooms: vec![
            Room::from("project:1".to_string()),
            Room::from("r".to_string()),
        ],
        data: Some("{\"user\":\"u\"}".into()),
        disconnected_at: at,
    }
}

fn session_key(pid: &str) -> String {
    format!("{PREFIX}recovery:session:{pid}")
}

#[tokio::test]
async fn events_get_increasing_offsets_and_are_replayed_by_namespace() {
    let redis = redis::start().await;
    let store = store(&redis, WINDOW, 100).await;
    let a = store
        .record("/", &kept("a", &["r"]))
        .await
        .unwrap()
        .unwrap();
    let mut binary = kept("b", &["r"]);
    binary.data = Value::Str(
        Str::from("[\"b\",{\"_placeholder\":true,\"num\":0}]".to_string()),
        Some(VecDeque::from([bytes::Bytes::from_static(&[0, 159, 255])])),
    );
    binary.opts.add_flag(BroadcastFlags::Broadcast);
    binary.opts.except = [Room::from("x".to_string())].into_iter().collect();
    let b = store.record("/", &binary).await.unwrap().unwrap();
    let c = store
        .record("/other", &kept("c", &[]))
        .await
        .unwrap()
        .unwrap();
    assert!(a < b && b < c, "{a} {b} {c}");

    // Delivered by every instance: none keeps it.
    let mut local = kept("local", &[]);
    local.opts.add_flag(BroadcastFlags::Local);
    assert_eq!(store.record("/", &local).await.unwrap(), None);
    let len: i64 = command(&redis.client().await, "XLEN", args(&[EVENTS])).await;
    assert_eq!(len, 3);

    let missed = store.since("/", a, 10).await.unwrap().unwrap();
    assert_eq!(
        missed.len(),
        1,
        "only b: after the offset, in its namespace"
    );
    assert_eq!(missed[0].0, b);
    assert_eq!(
        missed[0].1.data, binary.data,
        "binary attachments kept as bytes"
    );
    assert_eq!(missed[0].1.opts, binary.opts);
    let other = store.since("/other", a, 10).await.unwrap().unwrap();
    assert_eq!((other[0].0, name(&other[0].1)), (c, "[\"c\"]".to_owned()));
    assert_eq!(store.since("/", b, 10).await.unwrap().unwrap().len(), 0);
    assert!(store.since("/", a, 0).await.unwrap().is_none(), "past max");
    assert!(
        store
            .since("/", Offset(a.0, a.1 + 1000), 10)
            .await
            .unwrap()
            .is_none(),
        "an offset that was never kept"
    );
    assert!(
        store.since("/", Offset(1, 0), 10).await.unwrap().is_none(),
        "older than the stream"
    );
}

#[tokio::test]
async fn a_replay_reads_past_one_page_and_stops_past_max() {
    let redis = redis::start().await;
    let store = store(&redis, WINDOW, 10_000).await;
    let first = store
        .record("/", &kept("first", &[]))
        .await
        .unwrap()
        .unwrap();
    for i in 0..600 {
        let ns = if i % 2 == 0 { "/" } else { "/other" };
        store.record(ns, &kept(&i.to_string(), &[])).await.unwrap();
    }
    let missed = store.since("/", first, 300).await.unwrap().unwrap();
    assert_eq!(missed.len(), 300);
    let names: Vec<String> = missed.iter().map(|(_, k)| name(k)).collect();
    let expected: Vec<String> = (0..600).step_by(2).map(|i| format!("[\"{i}\"]")).collect();
    assert_eq!(names, expected, "in order, once each");
    assert!(missed.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(store.since("/", first, 299).await.unwrap().is_none());
}

#[tokio::test]
async fn a_session_is_restored_once_in_its_namespace_within_the_window() {
    let redis = redis::start().await;
    let store = store(&redis, WINDOW, 100).await;
    let offset = store.record("/", &kept("a", &[])).await.unwrap().unwrap();
    let saved = session("p", "/", now_ms());
    store.save(saved.clone()).await.unwrap();
    let ttl: i64 = command(&redis.client().await, "PTTL", args(&[&session_key("p")])).await;
    assert!(
        ttl > WINDOW.as_millis() as i64 && ttl <= WINDOW.as_millis() as i64 + 60_000,
        "lives the window and a minute: {ttl}"
    );

    assert!(
        store
            .restore("/other", "p", offset)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .restore("/", "p", Offset(1, 0))
            .await
            .unwrap()
            .is_none(),
        "an offset no longer kept"
    );
    // Neither refusal took it.
    let restored = store.restore("/", "p", offset).await.unwrap();
    assert_eq!(restored, Some(saved.clone()));
    assert!(
        store.restore("/", "p", offset).await.unwrap().is_none(),
        "once"
    );
    assert!(
        store
            .restore("/", "nobody", offset)
            .await
            .unwrap()
            .is_none()
    );

    // Saved again (its new socket went away too): it can be restored again.
    let again = Session {
        disconnected_at: saved.disconnected_at + 1,
        ..saved.clone()
    };
    store.save(again.clone()).await.unwrap();
    assert_eq!(store.restore("/", "p", offset).await.unwrap(), Some(again));
}

#[tokio::test]
async fn expired_sessions_and_trimmed_offsets_are_refused() {
    let redis = redis::start().await;
    let store = store(&redis, Duration::from_millis(1000), 2).await;
    let first = store.record("/", &kept("a", &[])).await.unwrap().unwrap();
    let old = session("old", "/", now_ms() - 5000);
    store.save(old.clone()).await.unwrap();
    assert!(store.restore("/", "old", first).await.unwrap().is_none());
    assert_eq!(
        store.discard("old", old.disconnected_at).await.unwrap(),
        Outcome::Lost
    );

    // `MAXLEN ~` trims whole nodes of the stream (100 entries each by default).
    for i in 0..300 {
        store.record("/", &kept(&i.to_string(), &[])).await.unwrap();
    }
    let len: i64 = command(&redis.client().await, "XLEN", args(&[EVENTS])).await;
    assert!(len < 200, "trimmed to about max_events: {len}");
    store.save(session("p", "/", now_ms())).await.unwrap();
    assert!(
        store.since("/", first, 1000).await.unwrap().is_none(),
        "the events after a trimmed offset may be trimmed too"
    );
    assert!(
        store.restore("/", "p", first).await.unwrap().is_none(),
        "the event at the offset was trimmed"
    );
}

#[tokio::test]
async fn discard_tells_whether_the_session_was_restored() {
    let redis = redis::start().await;
    let store = store(&redis, WINDOW, 100).await;
    let peek = redis.client().await;
    let exists = |pid: &str| {
        let key = session_key(pid);
        let peek = peek.clone();
        async move { command::<i64>(&peek, "EXISTS", args(&[&key])).await == 1 }
    };
    let offset = store.record("/", &kept("a", &[])).await.unwrap().unwrap();

    assert_eq!(store.discard("none", 10).await.unwrap(), Outcome::Lost);

    // Saved again later: restored (by the socket that saved it), which stays.
    let mut q = session("q", "/", 10);
    store.save(q.clone()).await.unwrap();
    q.disconnected_at = 20;
    store.save(q.clone()).await.unwrap();
    assert_eq!(store.discard("q", 10).await.unwrap(), Outcome::Restored);
    assert!(exists("q").await, "the later session is untouched");

    // Waiting: lost, and gone.
    assert_eq!(store.discard("q", 20).await.unwrap(), Outcome::Lost);
    assert!(!exists("q").await);

    // Restored: so, and gone.
    let r = session("r", "/", now_ms());
    store.save(r.clone()).await.unwrap();
    assert!(store.restore("/", "r", offset).await.unwrap().is_some());
    assert_eq!(
        store.discard("r", r.disconnected_at).await.unwrap(),
        Outcome::Restored
    );
    assert!(!exists("r").await);
    assert_eq!(
        store.discard("r", r.disconnected_at).await.unwrap(),
        Outcome::Lost
    );
}

#[tokio::test]
async fn damaged_entries_and_sessions_are_skipped() {
    let redis = redis::start().await;
    let store = store(&redis, WINDOW, 100).await;
    let damage = redis.client().await;
    let first = store.record("/", &kept("a", &[])).await.unwrap().unwrap();
    let _: String = command(&damage, "XADD", args(&[EVENTS, "*", "m", "not msgpack"])).await;
    let _: String = command(&damage, "XADD", args(&[EVENTS, "*", "other", "field"])).await;
    let last = store.record("/", &kept("b", &[])).await.unwrap().unwrap();
    let missed = store.since("/", first, 10).await.unwrap().unwrap();
    assert_eq!(missed.len(), 1, "the damaged entries are skipped");
    assert_eq!(
        (missed[0].0, name(&missed[0].1)),
        (last, "[\"b\"]".to_owned())
    );

    let now = now_ms().to_string();
    let sid = Sid::new().to_string();
    let body = format!("{{\"sid\":\"{sid}\",\"rooms\":[],\"data\":null}}");
    let hashes: [(&str, Vec<&str>); 6] = [
        (
            "garbage-body",
            vec!["state", "waiting", "ns", "/", "at", &now, "body", "{"],
        ),
        (
            "bad-sid",
            vec![
                "state",
                "waiting",
                "ns",
                "/",
                "at",
                &now,
                "body",
                "{\"sid\":\"x\",\"rooms\":[]}",
            ],
        ),
        ("no-body", vec!["state", "waiting", "ns", "/", "at", &now]),
        ("no-at", vec!["state", "waiting", "ns", "/", "body", &body]),
        (
            "text-at",
            vec!["state", "waiting", "ns", "/", "at", "soon", "body", &body],
        ),
        (
            "huge-at",
            vec![
                "state",
                "waiting",
                "ns",
                "/",
                "at",
                "99999999999999999999",
                "body",
                &body,
            ],
        ),
    ];
    for (pid, fields) in &hashes {
        let key = session_key(pid);
        let mut a = vec![key.as_str()];
        a.extend(fields.iter().copied());
        let _: i64 = command(&damage, "HSET", args(&a)).await;
        assert!(
            store.restore("/", pid, first).await.unwrap().is_none(),
            "{pid}"
        );
    }
    // Refused before it was taken: not marked restored.
    let at: u64 = now.parse().unwrap();
    assert_eq!(store.discard("no-body", at).await.unwrap(), Outcome::Lost);
    // The well-formed one beside them is restored.
    let _: i64 = command(
        &damage,
        "HSET",
        args(&[
            &session_key("fine"),
            "state",
            "waiting",
            "ns",
            "/",
            "at",
            &now,
            "body",
            &body,
        ]),
    )
    .await;
    let fine = store.restore("/", "fine", first).await.unwrap().unwrap();
    assert_eq!(fine.sid.to_string(), sid);

    // A key of another type is no session; a save replaces it.
    let _: String = command(&damage, "SET", args(&[&session_key("text"), "x"])).await;
    assert!(store.restore("/", "text", first).await.unwrap().is_none());
    assert_eq!(store.discard("text", 1).await.unwrap(), Outcome::Lost);
    let saved = session("text", "/", now_ms());
    store.save(saved.clone()).await.unwrap();
    assert_eq!(
        store.restore("/", "text", first).await.unwrap(),
        Some(saved)
    );
}

#[tokio::test]
async fn a_session_saved_on_one_instance_is_restored_on_another() {
    let redis = redis::start().await;
    let (a, b) = (
        store(&redis, WINDOW, 100).await,
        store(&redis, WINDOW, 100).await,
    );
    let seen = a.record("/", &kept("seen", &["r"])).await.unwrap().unwrap();
    let saved = session("p", "/", now_ms());
    a.save(saved.clone()).await.unwrap();
    let missed = b
        .record("/", &kept("missed", &["r"]))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(
        b.restore("/", "p", seen).await.unwrap(),
        Some(saved.clone())
    );
    assert!(
        a.restore("/", "p", seen).await.unwrap().is_none(),
        "once in the cluster"
    );
    let replay = b.since("/", seen, 10).await.unwrap().unwrap();
    assert_eq!(replay.len(), 1);
    assert_eq!(
        (replay[0].0, name(&replay[0].1)),
        (missed, "[\"missed\"]".to_owned())
    );
    // The instance where the socket went away learns that it was restored elsewhere.
    assert_eq!(
        a.discard("p", saved.disconnected_at).await.unwrap(),
        Outcome::Restored
    );
}

#[tokio::test]
async fn a_hung_redis_fails_the_calls_instead_of_holding_them() {
    let redis = redis::start().await;
    let store = store(&redis, WINDOW, 100).await;
    let offset = store.record("/", &kept("a", &[])).await.unwrap().unwrap();
    store.save(session("p", "/", now_ms())).await.unwrap();
    let info: String = command(&redis.client().await, "INFO", args(&["server"])).await;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .to_owned();
    // Stopped, its connections stay open: only the deadline ends a call.
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let restored = store.restore("/", "p", offset).await;
    let recorded = store.record("/", &kept("b", &[])).await;
    let replayed = store.since("/", offset, 10).await;
    signal("-CONT");
    assert!(restored.is_err(), "the client connects afresh");
    assert!(recorded.is_err(), "the event goes out without an offset");
    assert!(replayed.is_err());
}
