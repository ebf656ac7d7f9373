//! The store against real databases: every scenario runs on SQLite (a file in a temporary
//! directory) and on PostgreSQL (a fresh database per test, from `common/pg.rs`:
//! `TEST_DATABASE_URL` or a throwaway cluster started by `scripts/pg.sh`).

#[path = "../common/pg.rs"]
mod pg;

mod comments;
mod offline;
mod uploads;

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

use comments::*;
use offline::*;
use uploads::*;

// ---------------------------------------------------------------------------------------
// Scenarios, each run on both backends (in `comments.rs`, `offline.rs`, `uploads.rs`).

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
