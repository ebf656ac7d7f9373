//! The durable store: comments, the offline message queue, document metadata and uploads
//! in SQLite or PostgreSQL; document bytes in an object store ([`Objects`]).
//!
//! One [`Store`] per server, chosen by its URL: `sqlite:` for a single instance (the
//! default, a file under the data directory), `postgres://` when several instances share
//! the data. Both backends run the same query strings through sqlx's `Any` driver, which
//! is why the queries keep to what both dialects accept alike: `$N` placeholders (SQLite
//! reads `$N` as parameter N), `RETURNING`, `ON CONFLICT … DO UPDATE`, and only 64-bit
//! integer and text columns (the types `Any` can carry).
//!
//! Each backend has its own migrations (`migrations/sqlite`, `migrations/postgres`: the
//! same tables in each dialect's types), embedded in the binary and run by
//! [`Store::connect`]. Times are epoch milliseconds ([`epoch_ms`]), ids UUID strings
//! ([`new_id`]). Errors name the operation that failed, never the data it carried.

mod comments;
mod documents;
mod id;
mod objects;
mod offline;
mod sqlite;

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};
use sqlx::{AnyPool, any::AnyPoolOptions, migrate::Migrator};
use time::OffsetDateTime;

pub use comments::{Comment, NewComment};
pub use documents::{Document, Upload};
pub use id::new_id;
pub use objects::Objects;
pub use offline::{NewOffline, OFFLINE_CAP, OfflineMessage, OfflineUsage};

/// How long [`Store::ping`] waits for the database before calling it unavailable.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a query waits for a free pooled connection (or a new one) before it fails,
/// so that a stuck database makes requests fail rather than hang.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (or memory) database.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend a database URL names, or an error for any other scheme.
    pub fn of_url(database_url: &str) -> anyhow::Result<Backend> {
        let lower = database_url
            .get(..13)
            .unwrap_or(database_url)
            .to_ascii_lowercase();
        if lower.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            // The URL itself is not repeated: it may carry a password.
            bail!("the database URL must start with sqlite:, postgres:// or postgresql://")
        }
    }

    /// The backend's name, for logs and readiness answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A pool of connections to the database, migrated to the current schema. Cloning is
/// cheap and shares the pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects to `database_url` and runs the migrations of its backend.
    ///
    /// A `sqlite:` URL gets its file and the file's directory created when missing, WAL
    /// mode (readers do not block the writer) and a busy timeout (writers wait for each
    /// other instead of failing). A `postgres://` or `postgresql://` URL is used as given.
    pub async fn connect(database_url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(database_url)?;
        let (url, options) = match backend {
            Backend::Sqlite => {
                let db = sqlite::prepare(database_url)?;
                if !db.in_memory {
                    sqlite::enable_wal(&db.url).await?;
                }
                let options = sqlite::pool_options(db.in_memory);
                (db.url, options)
            }
            Backend::Postgres => (
                database_url.to_owned(),
                AnyPoolOptions::new().max_connections(10),
            ),
        };
        let pool = options
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(&url)
            .await
            .with_context(|| format!("cannot connect to the {} database", backend.as_str()))?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .with_context(|| format!("cannot migrate the {} database", backend.as_str()))?;
        tracing::info!(backend = backend.as_str(), "database ready");
        Ok(Store { pool, backend })
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs `SELECT 1`, failing when the database does not answer within [`PING_TIMEOUT`].
    pub async fn ping(&self) -> anyhow::Result<()> {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(PING_TIMEOUT, query).await {
            Ok(result) => result.map(drop).context("database ping failed"),
            Err(_) => bail!("database ping timed out after {PING_TIMEOUT:?}"),
        }
    }

    /// Closes every connection, waiting for queries under way. Later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The database URL of `config`: `DATABASE_URL`, or the SQLite file under `DATA_DIR`.
pub fn database_url(config: &crate::config::Config) -> String {
    match &config.database_url {
        Some(url) if !url.trim().is_empty() => url.clone(),
        _ => default_database_url(&config.data_dir),
    }
}

/// The URL of the default database: `trestle.db` in `data_dir`, created when missing.
pub fn default_database_url(data_dir: &Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        sqlite::encode_path(&data_dir.join("trestle.db").to_string_lossy())
    )
}

/// Epoch milliseconds of a time: the form of every time column.
pub fn epoch_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The time of an epoch-milliseconds value read from the store.
pub fn from_epoch_ms(ms: i64) -> OffsetDateTime {
    // Every i64 of milliseconds is within OffsetDateTime's range but the far ends; those
    // cannot come from epoch_ms, so the epoch is only a guard.
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_come_from_the_scheme() {
        assert_eq!(Backend::of_url("sqlite::memory:").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of_url("SQLite:///x.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::of_url("postgres://u@h/d").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::of_url("postgresql://u@h/d").unwrap(),
            Backend::Postgres
        );
        let err = Backend::of_url("mysql://user:secret@h/d")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(Backend::of_url("").is_err());
    }

    #[test]
    fn epoch_ms_round_trips() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_000_000).unwrap();
        assert_eq!(epoch_ms(t), 1_700_000_000_123);
        assert_eq!(from_epoch_ms(1_700_000_000_123), t);
    }

    #[test]
    fn default_url_names_trestle_db() {
        assert_eq!(
            default_database_url(Path::new("/var/lib/trestle")),
            "sqlite:///var/lib/trestle/trestle.db?mode=rwc"
        );
        assert_eq!(
            default_database_url(Path::new("/a b/50%?#")),
            "sqlite:///a b/50%25%3F%23/trestle.db?mode=rwc"
        );
    }
}
