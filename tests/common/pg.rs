//! PostgreSQL for integration tests, as `client-tests/test/services.mjs` has it: the admin
//! URL is `TEST_DATABASE_URL` when set (scripts/test.sh sets it), or else a throwaway
//! cluster that `scripts/pg.sh start` runs on a free port of 127.0.0.1, once per test
//! process. Each test gets a database `t_<random>` of its own ([`TempDatabase`]), dropped
//! after it. The machine's own PostgreSQL is never touched.
//!
//! The throwaway cluster runs until the test process ends, however it ends: a watchdog
//! process waits for the end of a pipe that only this process holds open, then runs
//! `scripts/pg.sh stop` and removes the directory. Clusters whose process and watchdog
//! were both killed (a SIGKILL to the process group, say) are removed by the next run:
//! their directory names carry the process id.
//!
//! Included with `#[path = "common/pg.rs"] mod pg;` by the test crates that need it.

use std::{
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
};

use sqlx::Connection;

/// A database `t_<random>` on the test server, dropped (with any connection left) on drop.
pub struct TempDatabase {
    /// Its URL.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TempDatabase {
    pub async fn create() -> TempDatabase {
        let admin_url = admin_url().to_owned();
        let name = format!("t_{}", trestle::store::new_id().unwrap().replace('-', ""));
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to the test PostgreSQL admin URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let mut url = reqwest::Url::parse(&admin_url).unwrap();
        url.set_path(&name);
        TempDatabase {
            url: url.into(),
            name,
            admin_url,
        }
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread with a
        // runtime of its own does the async clean-up.
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                sqlx::query(&sql).execute(&mut admin).await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {done:?}", self.name);
        }
    }
}

/// The admin URL of the tests' PostgreSQL, the throwaway cluster started on first use
/// (once: a failed start fails every test that asks, rather than being tried again).
fn admin_url() -> &'static str {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    let url = URL.get_or_init(|| match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => start_cluster(),
    });
    url.as_deref().unwrap_or_else(|e| panic!("{e}"))
}

/// The throwaway cluster's watchdog, kept (never dropped) for the life of the process, so
/// that its stdin closes only when the process ends.
struct Watchdog {
    _process: Child,
    _pipe: ChildStdin,
}

static WATCHDOG: Mutex<Option<Watchdog>> = Mutex::new(None);

const CLUSTER_PREFIX: &str = "trestle-tests-pg-";

/// `scripts/pg.sh`, the one PostgreSQL starter of the project.
fn pg_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh")
}

/// Starts the throwaway cluster and returns its admin URL.
fn start_cluster() -> Result<String, String> {
    remove_stale_clusters();
    let dir = std::env::temp_dir().join(format!("{CLUSTER_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The watchdog first, so that a failed start is cleaned up too. It ignores SIGINT,
    // which a Ctrl-C sends to the whole process group, to outlive this process.
    let mut watchdog = Command::new("sh")
        .args([
            "-c",
            r#"trap '' INT; cat >/dev/null; "$1" stop "$2"; rm -rf "$2""#,
            "watchdog",
        ])
        .arg(pg_sh())
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the PostgreSQL watchdog: {e}"))?;
    // Nothing is ever written to its stdin; the write end only has to stay open.
    let pipe = watchdog.stdin.take().ok_or("the watchdog has no stdin")?;
    *WATCHDOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(Watchdog {
        _process: watchdog,
        _pipe: pipe,
    });
    let out = Command::new(pg_sh())
        .arg("start")
        .arg(&dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run scripts/pg.sh: {e}"))?;
    if !out.status.success() {
        return Err(
            "scripts/pg.sh start failed (install PostgreSQL or set TEST_DATABASE_URL)".into(),
        );
    }
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!("started PostgreSQL in {} at {url}", dir.display());
    Ok(url)
}

/// Stops and removes clusters left by test processes that died with their watchdog.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(CLUSTER_PREFIX)) else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = Command::new(pg_sh()).arg("stop").arg(entry.path()).output();
        let _ = std::fs::remove_dir_all(entry.path());
    }
}
