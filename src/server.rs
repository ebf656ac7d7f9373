//! Wiring only: the router with the Socket.IO layer and the HTTP layers, the serve loop
//! with the background loops (one `JoinSet`, stopped together), and the graceful stop.
//! What is wired is defined below: the state in `app`, a socket's life in `connection`,
//! the routes in `http`.
//!
//! [`serve`] runs a server on a listener until a shutdown future completes: tests call it
//! with a port-0 listener and a channel; `main` with the real port and the signals.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use axum::Router;
use serde::Serialize;
use socketioxide::{
    ParserConfig, SocketIo, SocketIoBuilder,
    adapter::{Adapter, LocalAdapter},
    handler::ConnectHandler,
};
use socketioxide_redis::FredAdapter;
use tokio::net::TcpListener;
use tower_http::{
    compression::{CompressionLayer, predicate::SizeAbove},
    cors::{AllowHeaders, AllowOrigin, Any, CorsLayer},
    trace::{DefaultOnFailure, TraceLayer},
};

use crate::{
    admin,
    app::{App, AppState},
    auth::Verifier,
    cluster::{
        self,
        presence::{self, Registry},
    },
    config::{Config, Engine},
    connection, handlers, http,
    store::{Backend, Store},
};

/// Applies the engine and parser settings to a Socket.IO builder: the one place they are
/// set, for Trestle and for the conformance fixtures alike.
pub fn socketio_builder<A: Adapter>(builder: SocketIoBuilder<A>, e: &Engine) -> SocketIoBuilder<A> {
    builder
        .ping_interval(e.ping_interval)
        .ping_timeout(e.ping_timeout)
        // A session that has not sent its CONNECT by then is closed (socket.io's default
        // is 45 s): it counts toward the engine session caps from its handshake
        // (http::admission), and a refused CONNECT leaves it to this deadline too.
        .connect_timeout(e.connect_timeout)
        .max_payload(e.max_message_bytes)
        .ws_max_message_size(e.max_message_bytes as usize)
        .ws_max_frame_size(e.max_message_bytes as usize)
        // Every idle connection keeps this buffer; 1 KiB saves about 3 KB per socket and
        // larger messages still arrive whole (the buffer grows as needed).
        .ws_read_buffer_size(1024)
        // What may wait for a client that reads slowly, in packets and in bytes. Past
        // either, the engine closes the connection (`slow_consumer`; the patched engine,
        // vendor/README.md): a client that lost messages silently would show stale state,
        // one that is dropped reconnects and reloads. Typing relays are volatile and never
        // count. A reconnect storm is a burst (500 users coming online in one project send
        // each socket 500 `status_change`s at once), and the queue grows only when used,
        // so an idle socket costs nothing for a generous packet bound; the byte bound is
        // what caps the memory one stuck client can hold.
        .max_buffer_size(e.max_buffer_packets)
        .max_buffer_bytes(e.max_buffer_bytes)
        // Binary packets: how many attachments one may declare, how many bytes they hold
        // in all, and how long the server waits for the rest of them.
        .with_parser(
            ParserConfig::common()
                .max_incoming_binaries(e.max_binary_attachments)
                .max_incoming_binary_buf_size(e.max_message_bytes as usize)
                .packet_completion_timeout(Duration::from_secs(10)),
        )
}

/// The router with the Socket.IO layer built from `builder` (which carries the adapter),
/// and the [`App`] handlers work with. The `/` namespace is registered by the caller,
/// since registering it with a cluster adapter is an async step that can fail.
pub fn app<A: Adapter>(state: Arc<AppState>, builder: SocketIoBuilder<A>) -> (Router, App<A>) {
    let builder = builder.connection_state_recovery(state.recovery.clone());
    let (layer, io) = socketio_builder(builder, &state.config.engine()).build_layer();
    let app = App::new(state, io);
    let origins = Arc::new(http::origin::Origins::from_config(&app.state.config));
    let router = http::routes(app.clone())
        .merge(admin::files(&app.state.config))
        .layer(layer)
        .layer(compression(app.state.config.http_compression_threshold))
        // Engine sessions are counted from their handshake, before the Socket.IO layer.
        .layer(axum::middleware::from_fn_with_state(
            http::admission::Admission::new(app.state.clone()),
            http::admission::check,
        ))
        .layer(axum::middleware::from_fn_with_state(
            (origins, app.state.clone()),
            http::origin::check,
        ))
        .layer(cors(&app.state.config))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    // The path only: query strings may carry tokens and must never be logged.
                    tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
                })
                // A 503 from /ready is a state, not a failure; real failures are logged
                // where they happen, with their context.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        );
    (router, app)
}

/// The `/` namespace's connect handler with its admission middleware.
pub fn namespace<A: Adapter>(app: &App<A>) -> impl ConnectHandler<A, (connection::RawSocket<A>,)> {
    connection::on_connect(app.clone()).with(connection::admit(app.clone()))
}

/// gzip or deflate, as the client accepts, for responses of at least `threshold` bytes:
/// engine.io compresses polling responses so, and a websocket upgrade has no body to
/// compress. 0 turns both encodings off, so every response goes out as it is.
fn compression(threshold: u64) -> CompressionLayer<SizeAbove> {
    let on = threshold > 0;
    CompressionLayer::new()
        .gzip(on)
        .deflate(on)
        .compress_when(SizeAbove::new(threshold))
}

fn cors(cfg: &Config) -> CorsLayer {
    match cfg.cors_origin_list() {
        None => CorsLayer::new()
            .allow_origin(Any)
            .allow_methods(Any)
            .allow_headers(Any),
        Some(origins) => CorsLayer::new()
            .allow_origin(AllowOrigin::list(
                origins.iter().filter_map(|o| o.parse().ok()),
            ))
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers(AllowHeaders::mirror_request())
            .allow_credentials(true),
    }
}

/// Binds the configured address and serves until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let addr = SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    serve(listener, config, shutdown_signal()).await
}

/// Serves on `listener` until `shutdown` completes, then stops gracefully: `/ready` turns
/// 503, every client gets `server_shutdown`, and after `SHUTDOWN_DRAIN_MS` the engine
/// connections are closed (not a Socket.IO disconnect, so clients reconnect elsewhere).
/// Returns once everything is closed or `SHUTDOWN_TIMEOUT_MS` has passed.
pub fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
    serve_boxed(listener, config, Box::pin(shutdown))
}

/// [`serve`]'s body. Not generic, and boxed here, so that the whole server is compiled
/// once, in this crate: an `async fn` whose future is first polled in another crate (the
/// binary, each test crate) is compiled again there, which cost the binary and three test
/// crates two to three minutes each of a CI build.
#[inline(never)]
fn serve_boxed(
    listener: TcpListener,
    config: Config,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
    Box::pin(serve_inner(listener, config, shutdown))
}

async fn serve_inner(
    listener: TcpListener,
    mut config: Config,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> anyhow::Result<()> {
    let database_url = crate::store::database_url(&config);
    let backend = Backend::of_url(&database_url)?;
    if config.redis_url.is_some() && backend == Backend::Sqlite {
        anyhow::bail!(
            "REDIS_URL is set (several instances) but the database is a SQLite file, which \
             instances would not share: set DATABASE_URL=postgres://…"
        );
    }
    // Built before connecting, so a bad configuration fails fast and leaves nothing behind.
    let verifier = Verifier::from_config(&config)?;
    let store = Store::connect(&database_url).await?;
    tracing::info!(database = backend.as_str(), "store ready");
    // Before the caps are built from it.
    http::admission::fit_to_descriptors(&mut config);
    let mut state = AppState::new(config, verifier, store)?;
    tracing::info!(documents = state.objects.name(), "document storage ready");
    let dashboard = admin::Dashboard::from_config(&mut state)?;
    match state.config.redis_url.clone() {
        None => {
            let (router, app) = app::<LocalAdapter>(Arc::new(state), SocketIo::builder());
            app.io.ns("/", namespace(&app));
            if let Some(d) = &dashboard {
                app.io
                    .ns(admin::NAMESPACE, admin::namespace(&app, d.clone()));
            }
            serve_app(listener, router, app, dashboard, shutdown).await
        }
        Some(url) => {
            let timeout = Duration::from_millis(state.config.redis_timeout_ms);
            let (adapter, health) =
                cluster::connect(&url, state.config.adapter_channel_prefix(), timeout).await?;
            let link = health.link().clone();
            state.redis = Some(health);
            let grace = Duration::from_millis(state.config.presence_grace_ms);
            let client = presence::redis_client(&url, &link).await?;
            let prefix = state.config.presence_key_prefix();
            // Kept events and sessions in Redis, so a client may recover through any
            // instance.
            if let Some(window) = state.config.recovery_window() {
                let cfg = &state.config;
                state.recovery = Some(Arc::new(cluster::recovery::RedisStore::new(
                    client.clone(),
                    link.clone(),
                    &cfg.recovery_key_prefix(),
                    window,
                    cfg.recovery_max_events,
                    cfg.recovery_max_replay,
                )));
            }
            state.presence = Arc::new(Registry::redis(client, &prefix, grace, link).await?);
            let builder = SocketIo::builder().with_adapter::<FredAdapter<_>>(adapter);
            let (router, app) = app(Arc::new(state), builder);
            app.io
                .ns("/", namespace(&app))
                .await
                .context("cannot subscribe to the Redis adapter channels")?;
            if let Some(d) = &dashboard {
                app.io
                    .ns(admin::NAMESPACE, admin::namespace(&app, d.clone()))
                    .await
                    .context("cannot subscribe to the Redis adapter channels of /admin")?;
            }
            // Stops (unsubscribes) when dropped, once the server has stopped.
            let _emitter = if app.state.config.redis_emitter {
                Some(start_emitter(&url, timeout, &app).await?)
            } else {
                None
            };
            serve_app(listener, router, app, dashboard, shutdown).await
        }
    }
}

/// Delivers `@socket.io/redis-emitter` messages to this instance's clients, counting each.
async fn start_emitter<A: Adapter>(
    url: &str,
    timeout: Duration,
    app: &App<A>,
) -> anyhow::Result<cluster::emitter::Emitter> {
    let state = app.state.clone();
    state.metrics.register::<cluster::emitter::Outcome>();
    let prefix = state.config.emitter_channel_prefix();
    cluster::emitter::Emitter::start(url, timeout, &prefix, app.io.clone(), move |o, n| {
        state.metrics.add(o, n)
    })
    .await
}

async fn serve_app<A: Adapter>(
    listener: TcpListener,
    router: Router,
    app: App<A>,
    dashboard: Option<Arc<admin::Dashboard>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    log_startup(&app.state, listener.local_addr()?);
    // The background loops, stopped together once the server has stopped.
    let mut loops = tokio::task::JoinSet::new();
    loops.spawn(handlers::metrics::publish_every(app.clone()));
    loops.spawn(purge_expired_every(app.state.clone()));
    loops.spawn(handlers::documents::sweep_every(app.state.clone()));
    loops.spawn(handlers::presence::run(app.clone()));
    if let Some(d) = dashboard {
        loops.spawn(admin::run(app.clone(), d));
    }
    let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel::<Duration>();
    let stopping = {
        let app = app.clone();
        async move {
            shutdown.await;
            let deadline = Duration::from_millis(app.state.config.shutdown_timeout_ms);
            let _ = deadline_tx.send(deadline);
            graceful_stop(&app).await;
        }
    };
    let limits = http::serve::HeaderLimits {
        max_headers: app.state.config.http_max_headers,
        max_bytes: app.state.config.http_max_header_bytes,
        read_timeout: Duration::from_millis(app.state.config.http_header_timeout_ms),
    };
    let conns = http::serve::ConnLimits {
        body_timeout: Some(Duration::from_millis(app.state.config.http_body_timeout_ms))
            .filter(|t| !t.is_zero()),
        tcp: Some(http::admission::tcp_limits(&app.state.config)),
    };
    let server = async move {
        http::serve::serve_with(listener, router, limits, conns, stopping).await;
        anyhow::Ok(())
    };
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        Ok(deadline) = deadline_rx => {
            match tokio::time::timeout(deadline, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(?deadline, "shutdown deadline passed; exiting with connections still open");
                    Ok(())
                }
            }
        }
    };
    loops.shutdown().await;
    // Users of this instance get the usual grace period to reconnect elsewhere.
    if let Err(e) = app.state.presence.release(presence::now_ms()).await {
        tracing::warn!(
            error = format!("{e:#}"),
            "could not hand this instance's users over to the grace period"
        );
    }
    app.state.store.close().await;
    tracing::info!("stopped");
    result
}

/// The start-up line: the mode this instance runs in, after a warning for each setting
/// that refuses every request of a kind (`Config::warnings`), so that a misconfiguration
/// shows in the first lines of the log rather than as a stream of refusals. Secrets and
/// URLs (which may carry passwords) are never logged: only what kind of store and whether
/// Redis is used.
fn log_startup(state: &AppState, addr: SocketAddr) {
    let cfg = &state.config;
    for warning in cfg.warnings() {
        tracing::warn!("{warning}");
    }
    // Last, so that a reader of the log who sees this line has seen every warning.
    tracing::info!(
        addr = %addr,
        auth_required = cfg.auth_required,
        jwt_algorithms = %state.verifier.algorithm_names(),
        cors_origins = %cfg.cors_origin_list().map_or_else(|| "*".to_owned(), |o| o.join(",")),
        store = state.store.backend().as_str(),
        redis = state.redis.is_some(),
        documents = state.objects.name(),
        "listening"
    );
}

/// Removes expired offline messages once a minute, so the queue of a user who never comes
/// back does not grow forever.
async fn purge_expired_every(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = crate::store::epoch_ms(time::OffsetDateTime::now_utc());
        match state.store.offline_purge_expired(now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired offline messages removed"),
            Err(e) => tracing::warn!(error = %e, "could not remove expired offline messages"),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerShutdown {
    message: &'static str,
    reconnect_delay: u64,
}

async fn graceful_stop<A: Adapter>(app: &App<A>) {
    let state = &app.state;
    state.shutting_down.store(true, Ordering::Release);
    tracing::info!(connections = state.limits.current(), "shutting down");
    let notice = ServerShutdown {
        message: "Server is shutting down",
        reconnect_delay: state.config.shutdown_reconnect_delay_ms,
    };
    // Local only: with a cluster adapter a plain emit would reach every instance's clients.
    if let Err(e) = app.io.local().emit("server_shutdown", &notice).await {
        tracing::warn!(error = %e, "could not notify every client of the shutdown");
    }
    tokio::time::sleep(Duration::from_millis(state.config.shutdown_drain_ms)).await;
    // Closes the engine connections after what is queued (server_shutdown included) has
    // been written, and runs every disconnect handler. A long-polling client may have no
    // poll waiting at this moment, or be switching to websocket: the patched engine
    // (vendor/README.md) keeps its session until the client has taken its last packets,
    // for at most 5 s; SHUTDOWN_TIMEOUT_MS still bounds the whole stop.
    app.io.close().await;
    // Sockets that went away before the stop and were waiting to recover: their rooms are
    // told they left, their presence is handed over with everyone else's below.
    state.parking.stop().await;
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        // An error here means SIGINT cannot be watched; it must not be taken for a signal.
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
