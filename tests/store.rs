//! The store against real databases: every scenario runs on SQLite (a file in a temporary
//! directory) and on PostgreSQL (a fresh database per test, from `common/pg.rs`:
//! `TEST_DATABASE_URL` or a throwaway cluster started by `scripts/pg.sh`).

#[path = "common/pg.rs"]
mod pg;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::future::join_all;
use sqlx::Connection;
use trestle::store::{
    Backend, Comment, Document, NewComment, NewOffline, OFFLINE_CAP, OfflineUsage, Store, Upload,
    default_database_url, new_id,
};

const ROOM: &str = "task:t1:comments";
const OTHER_ROOM: &str = "task:t2:comments";
const DAY: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------------------------
// Scenarios, each run on both backends.

/// A comment in `room` by u1 with the given content.
async fn add(store: &Store, room: &str, content: &str, at: i64) -> Comment {
    store
        .insert_comment(&NewComment {
            room,
            author_id: "u1",
            author_name: "User One",
            content,
            parent_id: None,
            mentions: &[],
            created_at: at,
        })
        .await
        .unwrap()
}

fn contents(comments: &[Comment]) -> Vec<&str> {
    comments.iter().map(|c| c.content.as_str()).collect()
}

async fn comment_crud(store: &Store) {
    let mentions = vec!["u2".to_owned(), "u.3@x".to_owned()];
    let content = "héllo 'quotes' \"double\" 🚧 $1 ?1 -- ;";
    let c = store
        .insert_comment(&NewComment {
            room: ROOM,
            author_id: "u1",
            author_name: "User One",
            content,
            parent_id: None,
            mentions: &mentions,
            created_at: 1_700_000_000_123,
        })
        .await
        .unwrap();
    assert_eq!(c.id.len(), 36, "a UUID: {}", c.id);
    assert_eq!(c.room, ROOM);
    assert_eq!(c.content, content);
    assert_eq!(c.mentions, mentions);
    assert_eq!(c.edited_at, None);
    assert_eq!(store.get_comment(&c.id).await.unwrap().as_ref(), Some(&c));

    let reply = store
        .insert_comment(&NewComment {
            room: ROOM,
            author_id: "u2",
            author_name: "u2",
            content: "reply",
            parent_id: Some(&c.id),
            mentions: &[],
            created_at: 1_700_000_000_200,
        })
        .await
        .unwrap();
    assert_ne!(reply.id, c.id);
    let read = store.get_comment(&reply.id).await.unwrap().unwrap();
    assert_eq!(read, reply);
    assert_eq!(read.parent_id.as_deref(), Some(c.id.as_str()));
    assert!(read.mentions.is_empty());

    assert_eq!(store.get_comment("no-such-id").await.unwrap(), None);

    let edited = store
        .update_comment(&c.id, "edited", 1_700_000_001_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        edited,
        Comment {
            content: "edited".into(),
            edited_at: Some(1_700_000_001_000),
            ..c.clone()
        }
    );
    assert_eq!(store.get_comment(&c.id).await.unwrap(), Some(edited));
    assert_eq!(
        store.update_comment("no-such-id", "x", 1).await.unwrap(),
        None
    );

    assert!(store.delete_comment(&c.id).await.unwrap());
    assert_eq!(store.get_comment(&c.id).await.unwrap(), None);
    assert!(!store.delete_comment(&c.id).await.unwrap());
    // The reply stays, still naming its parent.
    assert_eq!(store.get_comment(&reply.id).await.unwrap(), Some(reply));
}

async fn comment_pages(store: &Store) {
    // Equal timestamps everywhere: the order must come from insertion alone.
    let mut room = Vec::new();
    let mut other = Vec::new();
    for i in 0..5 {
        room.push(add(store, ROOM, &format!("c{i}"), 1000).await);
        other.push(add(store, OTHER_ROOM, &format!("o{i}"), 1000).await);
    }

    let (page, more) = store.list_comments(ROOM, None, 2).await.unwrap().unwrap();
    assert_eq!(contents(&page), ["c4", "c3"]);
    assert!(more);
    assert_eq!(page[0], room[4], "whole comments are returned");

    let (page, more) = store
        .list_comments(ROOM, Some(&room[3].id), 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&page), ["c2", "c1"]);
    assert!(more);

    let (page, more) = store
        .list_comments(ROOM, Some(&room[1].id), 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&page), ["c0"]);
    assert!(!more);

    let (page, more) = store
        .list_comments(ROOM, Some(&room[0].id), 2)
        .await
        .unwrap()
        .unwrap();
    assert!(page.is_empty());
    assert!(!more);

    // Exactly the rest: no more.
    let (page, more) = store.list_comments(ROOM, None, 5).await.unwrap().unwrap();
    assert_eq!(contents(&page), ["c4", "c3", "c2", "c1", "c0"]);
    assert!(!more);
    let (page, more) = store.list_comments(ROOM, None, 100).await.unwrap().unwrap();
    assert_eq!(page.len(), 5);
    assert!(!more);
    let (page, more) = store.list_comments(ROOM, None, 0).await.unwrap().unwrap();
    assert!(page.is_empty());
    assert!(more);

    // An unknown `before`, or one of another room: NOT_FOUND for the caller.
    assert_eq!(
        store
            .list_comments(ROOM, Some("no-such-id"), 10)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .list_comments(ROOM, Some(&other[2].id), 10)
            .await
            .unwrap(),
        None
    );
    let (page, more) = store
        .list_comments("task:empty:comments", None, 10)
        .await
        .unwrap()
        .unwrap();
    assert!(page.is_empty());
    assert!(!more);

    // Deleted comments leave the pages; a deleted cursor is unknown.
    assert!(store.delete_comment(&room[3].id).await.unwrap());
    assert_eq!(
        store
            .list_comments(ROOM, Some(&room[3].id), 10)
            .await
            .unwrap(),
        None
    );
    let (page, more) = store
        .list_comments(ROOM, Some(&room[4].id), 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&page), ["c2", "c1", "c0"]);
    assert!(!more);

    // A comment added later with an older timestamp is still the newest.
    add(store, ROOM, "late", 1).await;
    let (page, _) = store.list_comments(ROOM, None, 1).await.unwrap().unwrap();
    assert_eq!(contents(&page), ["late"]);

    let (page, more) = store
        .list_comments(OTHER_ROOM, None, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&page), ["o4", "o3", "o2", "o1", "o0"]);
    assert!(!more);
}

async fn offline_pending_then_ack(store: &Store) {
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

async fn offline_cap(store: &Store) {
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

async fn offline_ttl_and_purge(store: &Store) {
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
async fn offline_usage_counts(store: &Store) {
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

async fn offline_concurrent_pushes(store: &Store) {
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

fn upload(id: &str, user: &str, size: i64) -> Upload {
    Upload {
        id: id.into(),
        user_id: user.into(),
        project_id: "p1".into(),
        filename: "plan.pdf".into(),
        document_type: "drawing".into(),
        size,
        sha256: None,
        chunk_size: 65_536,
        received_bytes: 0,
        next_index: 0,
        created_at: 1_000,
        updated_at: 1_000,
    }
}

async fn uploads_cap_advance_and_claims(store: &Store) {
    for id in ["a", "b", "c"] {
        assert!(
            store
                .upload_create(&upload(id, "u1", 100_000), 3)
                .await
                .unwrap()
        );
    }
    assert!(
        !store.upload_create(&upload("d", "u1", 1), 3).await.unwrap(),
        "the fourth is refused"
    );
    assert!(
        store.upload_create(&upload("e", "u2", 1), 3).await.unwrap(),
        "per user"
    );
    let mut with_sha = upload("f", "u2", 5);
    with_sha.sha256 = Some("ab".repeat(32));
    store.upload_create(&with_sha, 3).await.unwrap();
    assert_eq!(store.upload_get("f").await.unwrap().unwrap(), with_sha);
    assert_eq!(store.upload_get("e").await.unwrap().unwrap().sha256, None);

    // Chunk 0 moves the upload on once; a second writer of chunk 0 loses the race.
    assert!(store.upload_advance("a", 0, 65_536, 2_000).await.unwrap());
    assert!(!store.upload_advance("a", 0, 65_536, 2_001).await.unwrap());
    assert!(
        !store.upload_advance("a", 5, 1, 2_001).await.unwrap(),
        "out of order"
    );
    let a = store.upload_get("a").await.unwrap().unwrap();
    assert_eq!(
        (a.next_index, a.received_bytes, a.updated_at),
        (1, 65_536, 2_000)
    );

    // One completion at a time; an expired hold can be taken again.
    assert!(
        store
            .upload_claim_completion("a", 3_000, 9_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .upload_claim_completion("a", 4_000, 10_000)
            .await
            .unwrap()
    );
    assert!(
        store
            .upload_claim_completion("a", 9_500, 20_000)
            .await
            .unwrap()
    );
    store.upload_release_completion("a").await.unwrap();
    assert!(
        store
            .upload_claim_completion("a", 9_600, 20_000)
            .await
            .unwrap()
    );

    // Abandoned: nothing since `before`, and not being completed.
    let mut old = store.uploads_abandoned(2_500, 9_700, 10).await.unwrap();
    old.sort();
    assert_eq!(old, ["b", "c", "e", "f"], "a is held by its completion");
    assert!(store.upload_delete("b").await.unwrap());
    assert!(!store.upload_delete("b").await.unwrap());
    assert!(store.upload_get("b").await.unwrap().is_none());
}

async fn documents_publish_and_list(store: &Store) {
    store
        .upload_create(&upload("up", "u1", 10), 3)
        .await
        .unwrap();
    let doc = |id: &str, project: &str, at: i64| Document {
        id: id.into(),
        project_id: project.into(),
        filename: "plan.pdf".into(),
        document_type: "drawing".into(),
        size: 10,
        sha256: "00".repeat(32),
        uploaded_by: "u1".into(),
        created_at: at,
    };
    store
        .document_publish(&doc("d1", "p1", 5), "up")
        .await
        .unwrap();
    assert!(
        store.upload_get("up").await.unwrap().is_none(),
        "the upload ends with it"
    );
    store
        .document_publish(&doc("d2", "p1", 5), "none")
        .await
        .unwrap();
    store
        .document_publish(&doc("d3", "p2", 6), "none")
        .await
        .unwrap();
    assert_eq!(
        store.document_get("d1").await.unwrap().unwrap(),
        doc("d1", "p1", 5)
    );
    assert!(store.document_get("zz").await.unwrap().is_none());
    let ids = |v: Vec<Document>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.documents_list("p1", 10).await.unwrap()),
        ["d2", "d1"],
        "newest first"
    );
    assert_eq!(ids(store.documents_list("p1", 1).await.unwrap()), ["d2"]);
    assert!(
        store
            .document_publish(&doc("d1", "p1", 7), "none")
            .await
            .is_err(),
        "ids are unique"
    );
}

async fn ping_and_close(store: &Store) {
    store.ping().await.unwrap();
    store.close().await;
    assert!(store.ping().await.is_err());
    assert!(store.get_comment("x").await.is_err());
}

/// One test per scenario and backend: `sqlite::<scenario>` and `postgres::<scenario>`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let db = super::SqliteDb::new().await;
                    assert_eq!(db.store.backend(), trestle::store::Backend::Sqlite);
                    super::$scenario(&db.store).await;
                    db.store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let db = super::PgDb::new().await;
                    assert_eq!(db.store.backend(), trestle::store::Backend::Postgres);
                    super::$scenario(&db.store).await;
                    db.store.close().await;
                }
            )*
        }
    };
}

on_both_backends!(
    comment_crud,
    comment_pages,
    offline_pending_then_ack,
    offline_cap,
    offline_ttl_and_purge,
    offline_concurrent_pushes,
    offline_usage_counts,
    uploads_cap_advance_and_claims,
    documents_publish_and_list,
    ping_and_close,
);

// ---------------------------------------------------------------------------------------
// Backend-specific checks.

#[tokio::test]
async fn sqlite_creates_the_file_in_wal_mode_and_keeps_data() {
    let dir = TempDir::new("sqlite-file");
    let data_dir = dir.path().join("not yet").join("there");
    let url = default_database_url(&data_dir);
    let store = Store::connect(&url).await.unwrap();
    let file = data_dir.join("trestle.db");
    assert!(file.is_file(), "the file and its directories are created");
    let c = add(&store, ROOM, "kept", 1).await;
    store.close().await;

    // WAL is a property of the file, seen by any connection.
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&file);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    conn.close().await.unwrap();

    // Connecting again runs the migrations again (nothing to do) and finds the data, also
    // through a URL without a mode.
    let url = format!("sqlite://{}", file.display());
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.get_comment(&c.id).await.unwrap(), Some(c));
    store.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_keeps_data_across_calls() {
    for url in [
        "sqlite::memory:",
        "sqlite://:memory:",
        "sqlite://?mode=memory",
    ] {
        let store = Store::connect(url).await.unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        let c = add(&store, ROOM, "in memory", 1).await;
        for _ in 0..3 {
            assert_eq!(store.get_comment(&c.id).await.unwrap().as_ref(), Some(&c));
        }
        store.close().await;
    }
}

#[tokio::test]
async fn bad_urls_are_refused_without_echoing_them() {
    for url in ["mysql://root:hunter2@localhost/db", "hunter2", "sqlite://"] {
        let err = Store::connect(url).await.unwrap_err();
        assert!(!format!("{err:#}").contains("hunter2"), "{err:#}");
    }
    // An unreachable server: the error names the backend, not the URL.
    let port = free_port();
    let err = Store::connect(&format!("postgres://u:hunter2@127.0.0.1:{port}/db"))
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("postgres"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn postgres_migrations_run_once_and_both_schemes_work() {
    let db = PgDb::new().await;
    let c = add(&db.store, ROOM, "kept", 1).await;
    db.store.ping().await.unwrap();
    let mut again = reqwest::Url::parse(&db.url).unwrap();
    again.set_scheme("postgresql").unwrap();
    let second = Store::connect(again.as_str()).await.unwrap();
    assert_eq!(second.backend(), Backend::Postgres);
    assert_eq!(second.get_comment(&c.id).await.unwrap(), Some(c));
    second.close().await;
    db.store.close().await;
}

// ---------------------------------------------------------------------------------------
// Fixtures.

/// A directory under the system temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let name = format!("trestle-store-{label}-{}", new_id().unwrap());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store on a new SQLite file.
struct SqliteDb {
    // Dropped before the directory.
    store: Store,
    _dir: TempDir,
}

impl SqliteDb {
    async fn new() -> SqliteDb {
        let dir = TempDir::new("sqlite");
        let store = Store::connect(&default_database_url(dir.path()))
            .await
            .unwrap();
        SqliteDb { store, _dir: dir }
    }
}

/// A store on a new PostgreSQL database, dropped with it.
struct PgDb {
    store: Store,
    url: String,
    _db: pg::TempDatabase,
}

impl PgDb {
    async fn new() -> PgDb {
        let db = pg::TempDatabase::create().await;
        let url = db.url.clone();
        let store = Store::connect(&url).await.unwrap();
        PgDb {
            store,
            url,
            _db: db,
        }
    }
}

/// A TCP port free on 127.0.0.1 at the time of asking.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
