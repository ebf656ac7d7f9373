//! The admin dashboard: the `/admin` namespace that `@socket.io/admin-ui` (0.5) connects
//! to, speaking its server's protocol, and the dashboard's own files when
//! `ADMIN_UI_STATIC_DIR` is set (README, Admin dashboard).
//!
//! On only with `ADMIN_UI_USERNAME` and `ADMIN_UI_PASSWORD_HASH`; without them `/admin`
//! is not registered and a CONNECT to it gets `Invalid namespace`, as before. The namespace
//! has its own middleware ([`login`]): the main namespace's token, caps and handlers never
//! see it (engine sessions are still admitted and capped in `http::admission`).
//!
//! A dashboard gets `config` (the features: the [`commands`] unless
//! `ADMIN_UI_READONLY`), then with `ADMIN_UI_MODE=development` `all_sockets` and from then
//! on `socket_connected`, `room_joined`, `room_left` and `socket_disconnected` as they happen
//! on any instance ([`sockets`], fed by `app::SocketFeed`), and `server_stats` every two
//! seconds from every instance ([`stats`]). Everything for dashboards is an adapter
//! broadcast on `/admin`, so it reaches the dashboards of every instance.

pub mod commands;
pub mod login;
pub mod sockets;
pub mod stats;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context, bail};
use axum::{Router, response::Redirect, routing::get};
use futures_util::{FutureExt, future::BoxFuture};
use serde_json::{Value as Json, json};
use socketioxide::{
    adapter::Adapter,
    extract::{SocketRef, TryData},
    handler::ConnectHandler,
};
use tokio::sync::mpsc::Receiver;

use self::{
    login::{InvalidCredentials, Login},
    stats::Tally,
};
use crate::{
    app::{App, AppState, SocketChange, SocketFeed},
    config::{AdminUiMode, Config},
};

/// The dashboard's namespace (admin-ui's default `namespaceName`).
pub const NAMESPACE: &str = "/admin";
/// The namespace of Trestle's clients, the one the dashboard shows.
const MAIN: &str = "/";

/// The dashboard of one server: its login, what it tells, and the socket changes it
/// relays (taken once by [`run`]).
pub struct Dashboard {
    login: Login,
    follow: bool,
    readonly: bool,
    changes: Mutex<Option<Receiver<SocketChange>>>,
    tally: Tally,
}

impl Dashboard {
    /// The dashboard the settings ask for, if any, with `state`'s socket feed turned on;
    /// a setting that cannot work (half a login, a bad hash, files that are not there) is
    /// an error, so that a misconfigured dashboard fails at start-up, not at first use.
    pub fn from_config(state: &mut AppState) -> anyhow::Result<Option<Arc<Self>>> {
        let cfg = &state.config;
        let Some((user, hash)) = cfg.admin_ui_login().map_err(anyhow::Error::msg)? else {
            if cfg.admin_ui_static_dir.is_some() {
                bail!(
                    "ADMIN_UI_STATIC_DIR is set but the admin dashboard is off: set \
                     ADMIN_UI_USERNAME and ADMIN_UI_PASSWORD_HASH too"
                );
            }
            return Ok(None);
        };
        if let Some(dir) = &cfg.admin_ui_static_dir {
            check_files(dir, &cfg.admin_ui_path)?;
        }
        let follow = cfg.admin_ui_mode == AdminUiMode::Development;
        // Rooms are shown only to a dashboard that follows sockets.
        let (feed, changes) = SocketFeed::channel(follow);
        let dashboard = Dashboard {
            login: Login::new(user, hash, login::CHECKS_AT_ONCE, login::WAIT),
            follow,
            readonly: cfg.admin_ui_readonly,
            changes: Mutex::new(Some(changes)),
            tally: Tally::default(),
        };
        state.socket_feed = feed;
        Ok(Some(Arc::new(dashboard)))
    }

    /// admin-ui's `supportedFeatures`: `AGGREGATED_EVENTS` (the connection counts of
    /// `server_stats`) always, `ALL_EVENTS` when following sockets, the commands unless
    /// read-only (the `M…` ones being the same commands with a room as filter).
    fn features(&self) -> Vec<&'static str> {
        let commands = [
            "EMIT",
            "JOIN",
            "LEAVE",
            "DISCONNECT",
            "MJOIN",
            "MLEAVE",
            "MDISCONNECT",
        ];
        let mut features: Vec<&str> = if self.readonly {
            vec![]
        } else {
            commands.to_vec()
        };
        features.push("AGGREGATED_EVENTS");
        if self.follow {
            features.push("ALL_EVENTS");
        }
        features
    }
}

/// The `/admin` namespace's connect handler, behind its login.
pub fn namespace<A: Adapter>(
    app: &App<A>,
    dashboard: Arc<Dashboard>,
) -> impl ConnectHandler<A, (SocketRef<A>,)> {
    let login = dashboard.clone();
    let io = app.io.clone();
    let app = app.clone();
    let welcome = move |socket: SocketRef<A>| {
        tokio::spawn(welcome(app.clone(), dashboard.clone(), socket));
        futures_util::future::ready(())
    };
    welcome.with(
        move |socket: SocketRef<A>,
              TryData(auth): TryData<Json>|
              -> BoxFuture<'static, Result<(), InvalidCredentials>> {
            let login = login.clone();
            let io = io.clone();
            async move {
                login.login.check(auth.ok().as_ref()).await?;
                // Here, before the CONNECT answer, not in the connect handler that runs after
                // it: a command the dashboard sends at once must find its handler.
                if !login.readonly {
                    commands::register(&socket, &io, login.follow);
                }
                Ok(())
            }
            .boxed()
        },
    )
}

/// What a dashboard gets once logged in, in admin-ui's order.
async fn welcome<A: Adapter>(app: App<A>, dashboard: Arc<Dashboard>, socket: SocketRef<A>) {
    tracing::info!(sid = %socket.id, "admin dashboard connected");
    let config = json!({ "supportedFeatures": dashboard.features() });
    if let Err(e) = socket.emit("config", &config) {
        tracing::warn!(error = %e, "admin dashboard: could not send its config");
    }
    if dashboard.follow
        && let Err(e) = socket.emit("all_sockets", &sockets::all(&app).await)
    {
        tracing::warn!(error = %e, "admin dashboard: could not send all_sockets");
    }
}

/// The dashboard's loops, for as long as the server runs: `server_stats`, and the relay of
/// this instance's socket changes.
pub async fn run<A: Adapter>(app: App<A>, dashboard: Arc<Dashboard>) {
    let changes = dashboard
        .changes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let relay = async {
        if let Some(changes) = changes {
            sockets::relay(app.clone(), changes, &dashboard.tally, dashboard.follow).await;
        }
    };
    tokio::join!(stats::every(app.clone(), &dashboard.tally), relay);
}

/// The dashboard's files at `ADMIN_UI_PATH`, when `ADMIN_UI_STATIC_DIR` is set (checked by
/// [`Dashboard::from_config`]); otherwise no route.
pub fn files(cfg: &Config) -> Router {
    let Some(dir) = &cfg.admin_ui_static_dir else {
        return Router::new();
    };
    let path = cfg.admin_ui_path.trim_end_matches('/').to_owned();
    // The page loads its scripts by relative URLs, which need the trailing slash.
    let slash = format!("{path}/");
    Router::new()
        .route(
            &path,
            get(move || async move { Redirect::permanent(&slash) }),
        )
        .nest_service(
            &format!("{path}/"),
            tower_http::services::ServeDir::new(dir),
        )
}

/// The files are admin-ui's (an `index.html` there) and the path is free.
fn check_files(dir: &Path, path: &str) -> anyhow::Result<()> {
    let index: PathBuf = dir.join("index.html");
    std::fs::metadata(&index).with_context(|| {
        format!(
            "ADMIN_UI_STATIC_DIR: no {} (use node_modules/@socket.io/admin-ui/ui/dist)",
            index.display()
        )
    })?;
    let trimmed = path.trim_end_matches('/');
    let first = trimmed.split('/').nth(1).unwrap_or_default();
    let taken = ["", "socket.io", "health", "ready", "metrics", "api"];
    if !path.starts_with('/') || taken.contains(&first) || trimmed.contains("//") {
        bail!("ADMIN_UI_PATH must be a path such as /admin-ui, outside Trestle's own routes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_path_stays_out_of_trestles_routes() {
        let dir = std::env::temp_dir().join(format!("trestle-admin-ui-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(check_files(&dir, "/admin-ui").is_err(), "no index.html");
        std::fs::write(dir.join("index.html"), "<html>").unwrap();
        for ok in ["/admin-ui", "/admin-ui/", "/tools/dashboard"] {
            assert!(check_files(&dir, ok).is_ok(), "{ok}");
        }
        for bad in [
            "/",
            "admin-ui",
            "/socket.io",
            "/api/admin",
            "/metrics",
            "//x",
        ] {
            assert!(check_files(&dir, bad).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
