//! The presence registry against a real Redis (a `redis-server` of each test's own, on a
//! free port, killed when the test ends), with two registries standing for two instances.
//! The client-tests cover the same behaviour end to end; these pin the registry's
//! decisions: who announces, when, and what a crash or a lost Redis leaves behind.

#[path = "common/redis.rs"]
mod redis;

use std::time::Duration;

use fred::{
    clients::Client,
    interfaces::ClientLike,
    prelude::{Builder, Config},
};
use trestle::cluster::{
    Link,
    presence::{Registry, Status, redis_client},
};

const GRACE: Duration = Duration::from_millis(1000);
const GRACE_MS: i64 = 1000;
const PREFIX: &str = "t:presence:";

async fn registry(redis: &redis::Redis) -> Registry {
    // The link (Redis marked down after a missed deadline) watches the adapter's
    // connection in the server; here a subscriber client of its own stands for it.
    let subscriber = Builder::from_config(Config::from_url(&redis.url).unwrap())
        .build_subscriber_client()
        .unwrap();
    subscriber.init().await.unwrap();
    let link = Link::new(subscriber, Duration::from_millis(500));
    let client = redis_client(&redis.url, &link).await.unwrap();
    Registry::redis(client, PREFIX, GRACE, link).await.unwrap()
}

/// Runs one Redis command.
async fn command<R: fred::types::FromValue>(
    c: &Client,
    name: &'static str,
    args: Vec<String>,
) -> R {
    c.custom(fred::cmd!(name), args).await.unwrap()
}

fn projects(p: &str) -> Vec<String> {
    vec![format!("project:{p}")]
}

async fn status(r: &Registry, user: &str) -> (Status, Option<i64>) {
    let seen = r.get(&[user.to_owned()]).await.unwrap();
    (seen[0].status, seen[0].last_seen)
}

#[tokio::test]
async fn first_socket_anywhere_is_online_and_the_last_goes_offline_after_grace() {
    let redis = redis::start().await;
    let (a, b) = (registry(&redis).await, registry(&redis).await);
    assert!(
        a.connect("u", "s1", &projects("p"), 1_000)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        b.connect("u", "s2", &projects("p"), 1_001)
            .await
            .unwrap()
            .is_none(),
        "already online"
    );
    a.disconnect("u", "s1", 2_000).await.unwrap();
    assert!(
        b.claim_due(10_000).await.unwrap().is_empty(),
        "a socket is left on b"
    );
    b.disconnect("u", "s2", 3_000).await.unwrap();
    assert!(
        a.claim_due(3_000 + GRACE_MS - 1).await.unwrap().is_empty(),
        "grace period not over"
    );
    assert_eq!(status(&a, "u").await.0, Status::Online);

    // Both instances tick at once: exactly one of them announces.
    let (x, y) = tokio::join!(a.claim_due(3_000 + GRACE_MS), b.claim_due(3_000 + GRACE_MS));
    let claimed: Vec<_> = x.unwrap().into_iter().chain(y.unwrap()).collect();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].user, "u");
    assert_eq!(
        claimed[0].last_seen, 3_000,
        "lastSeen is the last disconnect"
    );
    assert_eq!(claimed[0].targets, projects("p"));
    assert_eq!(status(&b, "u").await, (Status::Offline, Some(3_000)));
    assert_eq!(status(&b, "never").await, (Status::Offline, None));
}

#[tokio::test]
async fn a_reconnect_within_grace_changes_nothing() {
    let redis = redis::start().await;
    let (a, b) = (registry(&redis).await, registry(&redis).await);
    assert!(a.connect("u", "s1", &[], 1_000).await.unwrap().is_some());
    a.disconnect("u", "s1", 2_000).await.unwrap();
    assert!(
        b.connect("u", "s2", &[], 2_500).await.unwrap().is_none(),
        "no new online within grace"
    );
    assert!(a.claim_due(100_000).await.unwrap().is_empty());
    assert_eq!(status(&a, "u").await, (Status::Online, Some(1_000)));
    // Removing a socket twice, or one never registered, does nothing.
    a.disconnect("u", "s1", 3_000).await.unwrap();
    a.disconnect("u", "nope", 3_000).await.unwrap();
    assert!(a.claim_due(100_000).await.unwrap().is_empty());
}

#[tokio::test]
async fn away_and_back() {
    let redis = redis::start().await;
    let a = registry(&redis).await;
    a.connect("u", "s1", &[], 1_000).await.unwrap();
    assert!(a.set_status("u", Status::Away, 2_000).await.unwrap());
    assert!(
        !a.set_status("u", Status::Away, 2_500).await.unwrap(),
        "unchanged"
    );
    assert_eq!(status(&a, "u").await, (Status::Away, Some(2_000)));
    a.set_location("u", "task:t1").await.unwrap();
    assert_eq!(
        a.get(&["u".into()]).await.unwrap()[0].location.as_deref(),
        Some("task:t1")
    );
    assert!(a.set_status("u", Status::Online, 3_000).await.unwrap());
    // Away, gone, offline; a user who goes offline while away is announced too.
    a.set_status("u", Status::Away, 4_000).await.unwrap();
    a.disconnect("u", "s1", 5_000).await.unwrap();
    let gone = a.claim_due(5_000 + GRACE_MS).await.unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(status(&a, "u").await, (Status::Offline, Some(5_000)));
}

#[tokio::test]
async fn a_dead_instance_is_reaped_and_only_its_lone_users_go_offline() {
    let redis = redis::start().await;
    let (a, b) = (registry(&redis).await, registry(&redis).await);
    let now = trestle::cluster::presence::now_ms();
    a.connect("x", "ax", &projects("p"), now).await.unwrap();
    a.connect("y", "ay", &projects("p"), now).await.unwrap();
    b.connect("y", "by", &projects("p"), now).await.unwrap();
    // What a kill -9 leaves: a's heartbeat key expires and nobody removes a's sockets.
    let r = redis.client().await;
    let alive: Vec<String> = command(&r, "KEYS", vec![format!("{PREFIX}inst:*")]).await;
    assert_eq!(alive.iter().filter(|k| !k.ends_with(":socks")).count(), 2);
    b.heartbeat(now).await.unwrap();
    assert_eq!(b.reap(now).await.unwrap(), 0, "both alive");
    // Expire every heartbeat but b's by renewing b's after the purge.
    for k in alive.iter().filter(|k| !k.ends_with(":socks")) {
        let _: i64 = command(&r, "DEL", vec![k.clone()]).await;
    }
    b.heartbeat(now).await.unwrap();
    assert_eq!(b.reap(now + 1).await.unwrap(), 1);
    assert_eq!(b.reap(now + 2).await.unwrap(), 0, "reaped once");
    let gone = b.claim_due(now + 3).await.unwrap();
    let users: Vec<_> = gone.iter().map(|g| g.user.as_str()).collect();
    assert_eq!(users, ["x"], "y still has a socket on b");
    assert!(
        gone[0].last_seen >= now,
        "lastSeen is never before the user's last change"
    );
    assert_eq!(status(&b, "y").await.0, Status::Online);
}

#[tokio::test]
async fn after_redis_loses_everything_the_instance_registers_again() {
    let redis = redis::start().await;
    let a = registry(&redis).await;
    a.connect("u", "s1", &projects("p"), 1_000).await.unwrap();
    a.connect("v", "s2", &[], 1_000).await.unwrap();
    a.disconnect("v", "s2", 1_500).await.unwrap();
    let r = redis.client().await;
    let _: String = command(&r, "FLUSHALL", vec![]).await;
    assert_eq!(status(&a, "u").await.0, Status::Offline);
    assert!(
        !a.heartbeat(2_000).await.unwrap(),
        "the registry lost this instance"
    );
    let back = a.resync(2_000).await.unwrap();
    assert!(
        back.is_empty(),
        "u was online before the loss and is again: nothing to announce, got {back:?}"
    );
    assert_eq!(status(&a, "u").await.0, Status::Online);
    assert_eq!(
        status(&a, "v").await.0,
        Status::Offline,
        "left before the loss"
    );
    assert!(a.heartbeat(3_000).await.unwrap());
    assert!(
        a.resync(3_000).await.unwrap().is_empty(),
        "in agreement: nothing to do"
    );
}

#[tokio::test]
async fn a_released_instance_hands_its_users_to_the_grace_period() {
    let redis = redis::start().await;
    let (a, b) = (registry(&redis).await, registry(&redis).await);
    a.connect("u", "s1", &[], 1_000).await.unwrap();
    a.connect("w", "s2", &[], 1_000).await.unwrap();
    a.release(2_000).await.unwrap();
    assert!(b.claim_due(2_000 + GRACE_MS - 1).await.unwrap().is_empty());
    // u reconnects elsewhere within the grace period; w does not.
    assert!(b.connect("u", "s3", &[], 2_500).await.unwrap().is_none());
    let gone = b.claim_due(2_000 + GRACE_MS).await.unwrap();
    let users: Vec<_> = gone.iter().map(|g| g.user.as_str()).collect();
    assert_eq!(users, ["w"]);
    assert_eq!(
        b.reap(3_000).await.unwrap(),
        0,
        "a released instance is not reaped"
    );
}
