//! Offline messages: pending and acknowledged, the cap per recipient, expiry and purge,
//! the quotas' counts, concurrent pushes.

use super::*;

pub async fn offline_pending_then_ack(store: &Store) {
    let now = 1_000_000;
    let mut seqs = Vec::new();
    for (i, event) in ["direct_message", "mention", "direct_message"]
        .iter()
        .enumerate()
    {
        let payload = format!(r#"{{"n":{i},"message":"hé \"x\""}}"#);
        seqs.push(
            store
                .offline_push("u1", event, &payload, now + i as i64, DAY)
                .await
                .unwrap(),
        );
    }
    store
        .offline_push("u2", "direct_message", "{}", now, DAY)
        .await
        .unwrap();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let pending = store.offline_pending("u1", now + 10, 100).await.unwrap();
    assert_eq!(pending.len(), 3);
    assert_eq!(pending.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs);
    assert_eq!(
        pending.iter().map(|m| m.event.as_str()).collect::<Vec<_>>(),
        ["direct_message", "mention", "direct_message"]
    );
    assert_eq!(pending[1].payload, r#"{"n":1,"message":"hé \"x\""}"#);
    assert_eq!(pending[2].created_at, now + 2);
    assert_eq!(pending[2].expires_at, now + 2 + DAY.as_millis() as i64);

    // Reading does not remove: a second read (say after a disconnect mid-delivery)
    // returns the same entries.
    assert_eq!(
        store.offline_pending("u1", now + 10, 100).await.unwrap(),
        pending
    );

    // Hand over two, acknowledge them: only the third remains.
    let first_two = store.offline_pending("u1", now + 10, 2).await.unwrap();
    assert_eq!(first_two, pending[..2]);
    assert_eq!(store.offline_ack("u1", first_two[1].seq).await.unwrap(), 2);
    assert_eq!(
        store.offline_pending("u1", now + 10, 100).await.unwrap(),
        pending[2..]
    );
    assert_eq!(store.offline_ack("u1", first_two[1].seq).await.unwrap(), 0);

    // A message queued during delivery comes after the ones handed over, and an ack of
    // those leaves it.
    let later = store
        .offline_push("u1", "direct_message", "{\"n\":3}", now + 20, DAY)
        .await
        .unwrap();
    assert!(later > pending[2].seq);
    assert_eq!(store.offline_ack("u1", pending[2].seq).await.unwrap(), 1);
    let rest = store.offline_pending("u1", now + 30, 100).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.seq).collect::<Vec<_>>(), [later]);
    assert_eq!(store.offline_ack("u1", later).await.unwrap(), 1);
    assert!(
        store
            .offline_pending("u1", now + 30, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // Other users' queues are their own.
    let u2 = store.offline_pending("u2", now + 30, 100).await.unwrap();
    assert_eq!(u2.len(), 1);
    assert_eq!(store.offline_ack("u1", i64::MAX).await.unwrap(), 0);
    assert_eq!(
        store.offline_pending("u2", now + 30, 100).await.unwrap(),
        u2
    );
}

pub async fn offline_cap(store: &Store) {
    let now = 5_000;
    let extra = 5;
    for n in 0..OFFLINE_CAP + extra {
        store
            .offline_push("u1", "direct_message", &format!("{{\"n\":{n}}}"), now, DAY)
            .await
            .unwrap();
    }
    for n in 0..3 {
        store
            .offline_push("u2", "mention", &format!("{{\"n\":{n}}}"), now, DAY)
            .await
            .unwrap();
    }
    let pending = store.offline_pending("u1", now, 5000).await.unwrap();
    assert_eq!(pending.len() as i64, OFFLINE_CAP);
    // The oldest went; the newest are all there, in order.
    assert_eq!(pending[0].payload, format!("{{\"n\":{extra}}}"));
    assert_eq!(
        pending.last().unwrap().payload,
        format!("{{\"n\":{}}}", OFFLINE_CAP + extra - 1)
    );
    assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        store.offline_pending("u2", now, 5000).await.unwrap().len(),
        3
    );
    // The limit applies.
    assert_eq!(
        store.offline_pending("u1", now, 10).await.unwrap()[..],
        pending[..10]
    );
}

pub async fn offline_ttl_and_purge(store: &Store) {
    let ttl = |s| Duration::from_secs(s);
    let a = store
        .offline_push("u1", "a", "{}", 1_000, ttl(10))
        .await
        .unwrap();
    let b = store
        .offline_push("u1", "b", "{}", 2_000, ttl(20))
        .await
        .unwrap();
    // A zero TTL is expired at once.
    store
        .offline_push("u1", "c", "{}", 1_000, ttl(0))
        .await
        .unwrap();
    let d = store
        .offline_push("u2", "d", "{}", 1_000, ttl(100))
        .await
        .unwrap();
    let seqs = |v: Vec<trestle::store::OfflineMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();

    assert_eq!(
        seqs(store.offline_pending("u1", 2_000, 10).await.unwrap()),
        [a, b]
    );
    assert_eq!(
        seqs(store.offline_pending("u1", 10_999, 10).await.unwrap()),
        [a, b]
    );
    // expires_at is exclusive: at 11,000 the first has expired.
    assert_eq!(
        seqs(store.offline_pending("u1", 11_000, 10).await.unwrap()),
        [b]
    );
    assert_eq!(
        seqs(store.offline_pending("u1", 22_000, 10).await.unwrap()),
        [0i64; 0]
    );

    // Purging at 11,000 removes a and c, of every user; the live ones stay.
    assert_eq!(store.offline_purge_expired(11_000).await.unwrap(), 2);
    assert_eq!(store.offline_purge_expired(11_000).await.unwrap(), 0);
    assert_eq!(
        seqs(store.offline_pending("u1", 11_000, 10).await.unwrap()),
        [b]
    );
    // Purged entries are gone even for a reader with an earlier clock.
    assert_eq!(seqs(store.offline_pending("u1", 0, 10).await.unwrap()), [b]);
    assert_eq!(store.offline_purge_expired(22_000).await.unwrap(), 1);
    assert_eq!(
        seqs(store.offline_pending("u2", 22_000, 10).await.unwrap()),
        [d]
    );
    assert_eq!(store.offline_purge_expired(101_000).await.unwrap(), 1);
    assert!(store.offline_pending("u2", 0, 10).await.unwrap().is_empty());
}

/// The quotas' counts: a sender's entries, and the total bytes through push, trim, ack and
/// purge.
pub async fn offline_usage_counts(store: &Store) {
    let push = |user: &'static str, sender: &'static str, payload: &'static str, cap, ttl| {
        let m = NewOffline {
            user_id: user,
            sender_id: Some(sender),
            event: "direct_message",
            payload_json: payload,
            now: 1_000,
            ttl: Duration::from_millis(ttl),
            cap,
        };
        async move { store.offline_queue(&m).await.unwrap() }
    };
    let usage =
        |sender: &'static str, now| async move { store.offline_usage(sender, now).await.unwrap() };
    assert_eq!(
        usage("s1", 1_000).await,
        OfflineUsage {
            sender_queued: 0,
            total_bytes: 0
        }
    );
    push("u1", "s1", "aaaa", 2, 10_000).await;
    push("u1", "s1", "bbbb", 2, 10_000).await;
    push("u2", "s2", "cc", 1000, 100).await;
    assert_eq!(
        usage("s1", 1_000).await,
        OfflineUsage {
            sender_queued: 2,
            total_bytes: 10
        }
    );
    // Over u1's cap of 2: the oldest goes, and its bytes with it.
    let last = push("u1", "s1", "dddddd", 2, 10_000).await;
    assert_eq!(
        usage("s1", 1_000).await,
        OfflineUsage {
            sender_queued: 2,
            total_bytes: 12
        }
    );
    assert_eq!(usage("s2", 1_000).await.sender_queued, 1);
    // Expired entries no longer count for the sender, and the purge removes their bytes.
    assert_eq!(usage("s2", 1_100).await.sender_queued, 0);
    assert_eq!(store.offline_purge_expired(1_100).await.unwrap(), 1);
    assert_eq!(usage("s2", 1_100).await.total_bytes, 10);
    assert_eq!(store.offline_ack("u1", last).await.unwrap(), 2);
    assert_eq!(
        usage("s1", 1_100).await,
        OfflineUsage {
            sender_queued: 0,
            total_bytes: 0
        }
    );
}

pub async fn offline_concurrent_pushes(store: &Store) {
    // Many writers at once on the pool's connections: none may fail (SQLite: the busy
    // timeout; PostgreSQL: the queue row lock), and none may be lost.
    let payloads: Vec<String> = (0..40).map(|n| n.to_string()).collect();
    let pushes = payloads.iter().enumerate().map(|(n, payload)| {
        let user = if n % 2 == 0 { "u1" } else { "u2" };
        store.offline_push(user, "direct_message", payload, 1, DAY)
    });
    let results = join_all(pushes).await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    for (user, parity) in [("u1", 0), ("u2", 1)] {
        let pending = store.offline_pending(user, 1, 100).await.unwrap();
        assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
        let mut got: Vec<i64> = pending.iter().map(|m| m.payload.parse().unwrap()).collect();
        got.sort();
        let want: Vec<i64> = (0..40).filter(|n| n % 2 == parity).collect();
        assert_eq!(got, want);
    }
}
