//! SQLite specifics: the file and its directory, WAL mode, the busy timeout, the pool.
//!
//! The `Any` driver builds each SQLite connection from the URL alone, so everything that
//! is not a URL parameter (the pragmas) is set on each new connection instead.

use std::{str::FromStr, time::Duration};

use anyhow::{Context, bail};
use sqlx::{Connection, Executor, any::AnyPoolOptions, sqlite::SqliteConnectOptions};

/// How long a writer waits for another writer's lock before failing with "database is
/// locked". SQLite has a single writer; short transactions queue behind it well within this.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of a file database. WAL lets readers run beside the one writer; more
/// connections than this would only queue on the write lock.
const MAX_CONNECTIONS: u32 = 4;

/// A SQLite URL ready for the `Any` driver.
pub(super) struct Prepared {
    /// The URL to connect with: an absolute file path and a `mode`.
    pub url: String,
    /// An in-memory database, which exists only as long as its one connection.
    pub in_memory: bool,
}

/// Checks a `sqlite:` URL and, for a file database, creates the file's directory and
/// returns a URL with the canonical absolute path and `mode=rwc` unless a mode is given.
///
/// The absolute path matters: sqlx's `Any` driver parses the URL as a URL first, which
/// would read a relative `sqlite://data/x.db` as host `data` and resolve `..` lexically.
pub(super) fn prepare(database_url: &str) -> anyhow::Result<Prepared> {
    // The scheme is matched case-insensitively (as URLs are), the rest is kept as given.
    let rest = database_url
        .split_once(':')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    let mut has_mode = false;
    let mut memory_mode = false;
    for (key, value) in form_urlencoded::parse(params.as_bytes()) {
        if key == "mode" {
            has_mode = true;
            memory_mode = value == "memory";
        }
    }
    if database == ":memory:" || memory_mode {
        // Without the `//`: the URL parser refuses an empty host.
        let query = if params.is_empty() { "" } else { "?" };
        return Ok(Prepared {
            url: format!("sqlite:{database}{query}{params}"),
            in_memory: true,
        });
    }
    if database.is_empty() {
        bail!("the SQLite database URL names no file");
    }
    // sqlx's own parser decodes the path (percent escapes) exactly as it will open it.
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{rest}"))
        .context("the SQLite database URL is not valid")?;
    let file = std::path::absolute(options.get_filename())
        .context("cannot make the SQLite database path absolute")?;
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        bail!("the SQLite database URL names a directory, not a file");
    };
    std::fs::create_dir_all(dir).context("cannot create the SQLite database directory")?;
    let file = dir
        .canonicalize()
        .context("cannot resolve the SQLite database directory")?
        .join(name);
    let Some(file) = file.to_str() else {
        bail!("the SQLite database path is not valid UTF-8");
    };
    let mut params = params.to_owned();
    if !has_mode {
        if !params.is_empty() {
            params.push('&');
        }
        params.push_str("mode=rwc");
    }
    Ok(Prepared {
        url: format!("sqlite://{}?{params}", encode_path(file)),
        in_memory: false,
    })
}

/// Escapes the characters of a path that a SQLite URL would otherwise read as syntax
/// (sqlx percent-decodes the path; the URL parser escapes the rest itself).
pub(super) fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// Switches the database file to WAL mode, once, on a connection of its own: the switch
/// needs the database to itself, and the mode then stays with the file. A filesystem
/// without WAL support keeps the old mode, which is logged and tolerated.
pub(super) async fn enable_wal(url: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .context("cannot open the SQLite database")?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
        .fetch_one(&mut conn)
        .await
        .context("cannot switch the SQLite database to WAL mode")?;
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing the SQLite set-up connection failed");
    }
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%mode, "SQLite kept its journal mode: WAL is not available here");
    }
    Ok(())
}

/// Pool options for SQLite: the busy timeout on every connection, and a single
/// connection that never closes for an in-memory database (each new connection would
/// open a new, empty one).
pub(super) fn pool_options(in_memory: bool) -> AnyPoolOptions {
    let options = AnyPoolOptions::new().after_connect(|conn, _meta| {
        Box::pin(async move {
            let pragma = format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis());
            conn.execute(pragma.as_str()).await.map(drop)
        })
    });
    if in_memory {
        options
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        options.max_connections(MAX_CONNECTIONS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_urls_are_kept() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://?mode=memory",
        ] {
            let p = prepare(url).unwrap();
            assert!(p.in_memory, "{url}");
            // What the Any driver does with it: a URL first, then sqlx's SQLite parser.
            let any = sqlx::any::AnyConnectOptions::from_str(&p.url).unwrap();
            SqliteConnectOptions::from_str(any.database_url.as_str()).unwrap();
        }
    }

    #[test]
    fn file_urls_become_absolute_with_a_mode() {
        let dir = std::env::temp_dir().join(format!("trestle-sqlite-url-{}", std::process::id()));
        let nested = dir.join("a b").join("c");
        let url = format!("sqlite://{}/x.db", encode_path(&nested.to_string_lossy()));
        let p = prepare(&url).unwrap();
        assert!(!p.in_memory);
        assert!(nested.is_dir(), "the directory is created");
        let canonical = nested.canonicalize().unwrap().join("x.db");
        assert_eq!(
            p.url,
            format!("sqlite://{}?mode=rwc", canonical.to_str().unwrap())
        );
        // A given mode is kept; sqlx then finds the same file.
        let p = prepare(&format!("{url}?mode=rw")).unwrap();
        assert!(p.url.ends_with("x.db?mode=rw"), "{}", p.url);
        // The Any driver parses it as a URL first (escaping the space), then with sqlx's
        // SQLite parser (unescaping it).
        let any = sqlx::any::AnyConnectOptions::from_str(&p.url).unwrap();
        let parsed = SqliteConnectOptions::from_str(any.database_url.as_str()).unwrap();
        assert_eq!(parsed.get_filename(), canonical);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(prepare("sqlite://").is_err());
    }
}
