//! The state one server shares between its sockets, its HTTP routes and its background
//! loops ([`AppState`]), and the handle handlers work with ([`App`]: that state and the
//! Socket.IO handle). Both are built once, by `server`; everything above this layer
//! receives them and none builds its own.
//!
//! Shared parts that handlers keep live here or below, never in a handler module: the
//! offline deliveries under way ([`Deliveries`]), the typing throttle and stream budget
//! (`limits`), the `metrics_update` subscribers (`metrics`).

mod deliveries;
mod feed;
mod parking;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use socketioxide::{
    SocketIo,
    adapter::Adapter,
    recovery::{MemoryStore, SessionStore},
};

pub use self::deliveries::{Deliveries, UserTurn};
pub use self::feed::{SocketChange, SocketFeed};
pub use self::parking::{Parking, Stopping};
use crate::{
    access::Access,
    auth::{AuthError, Verifier},
    cluster::{
        RedisHealth,
        presence::{Registry, Status},
    },
    config::Config,
    limits::{ConnectionLimits, EventBudgets, StreamBudget, TypingThrottle},
    metrics::{Metrics, MetricsFeed},
    store::{Objects, Store},
};

/// State shared by every connection and HTTP request of one server.
pub struct AppState {
    /// The configuration the server started with.
    pub config: Config,
    /// Token verification with the pinned algorithms.
    pub verifier: Verifier,
    /// Room access: claims, then the access hook.
    pub access: Access,
    /// Connection counts per instance and per address.
    pub limits: Arc<ConnectionLimits>,
    /// Prometheus counters.
    pub metrics: Metrics,
    /// Set once a graceful stop has begun: `/ready` answers 503, connects are refused.
    pub shutting_down: AtomicBool,
    /// The Redis connection `/ready` pings, when `REDIS_URL` is set.
    pub redis: Option<RedisHealth>,
    /// Durable data: SQLite or PostgreSQL.
    pub store: Store,
    /// Document bytes: a folder or an object store.
    pub objects: Objects,
    /// Who is online: in memory, or shared through Redis with `REDIS_URL`.
    pub presence: Arc<Registry>,
    /// Throttle of `typing_comment` relays per user and room.
    pub typing: TypingThrottle,
    /// Bytes all document streams may have sent unacknowledged (`STREAM_BUDGET_BYTES`).
    pub stream_budget: StreamBudget,
    /// Event buckets per user, kept across reconnects (`RATE_LIMIT_PER_MINUTE`).
    pub budgets: EventBudgets,
    /// Offline deliveries under way, one per user, and whether the database is answering.
    pub deliveries: Deliveries,
    /// Sockets' connections, rooms and disconnections, for the admin dashboard (off
    /// unless it follows sockets: `ADMIN_UI_MODE=development`).
    pub socket_feed: SocketFeed,
    /// Connection state recovery's events and sessions (`None`: recovery is off): in this
    /// process, or in Redis once `server` has connected to it.
    pub recovery: Option<Arc<dyn SessionStore>>,
    /// Sockets that went away and may recover: their user stays in their rooms and online
    /// until the recovery window is over.
    pub parking: Parking,
    /// Striped locks by name: `join_room` holds the room's so two concurrent joins cannot
    /// both take the last place. (Offline delivery has a lock per user of its own,
    /// [`AppState::deliveries`], since it waits on the database.)
    locks: Box<[tokio::sync::Mutex<()>]>,
}

impl AppState {
    /// Builds the state around an open store and the token verifier (built from `config`
    /// before the store was opened, so a bad key fails before anything is connected),
    /// refusing a configuration that cannot work.
    pub fn new(config: Config, verifier: Verifier, store: Store) -> anyhow::Result<Self> {
        let objects = Objects::from_config(&config)?;
        let access = Access::from_config(&config)?;
        let metrics = Metrics::new();
        // The labels of the layers above `metrics`, which it cannot name.
        metrics.register::<AuthError>();
        metrics.register::<Status>();
        Ok(AppState {
            limits: ConnectionLimits::new(config.max_connections, config.max_connections_per_ip),
            verifier,
            access,
            metrics,
            shutting_down: AtomicBool::new(false),
            redis: None,
            store,
            objects,
            presence: Arc::new(Registry::memory(Duration::from_millis(
                config.presence_grace_ms,
            ))),
            typing: Default::default(),
            stream_budget: StreamBudget::new(config.stream_budget_bytes),
            budgets: EventBudgets::new(
                config.rate_limit_per_minute,
                config.rate_limit_disconnect_after,
            ),
            deliveries: Default::default(),
            socket_feed: SocketFeed::default(),
            recovery: config.recovery_window().map(|window| {
                Arc::new(MemoryStore::new(
                    window,
                    config.recovery_max_events,
                    config.recovery_max_replay,
                )) as Arc<dyn SessionStore>
            }),
            parking: Parking::default(),
            locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            config,
        })
    }

    /// The lock for `key` (a room name, for joins). Keys share 64 locks, so unrelated keys
    /// may wait on each other briefly.
    pub fn lock_for(&self, key: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.locks[(h as usize) % self.locks.len()]
    }

    /// Whether a graceful stop has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// What handlers and HTTP routes work with: the shared state and the Socket.IO handle.
pub struct App<A: Adapter> {
    /// The shared state.
    pub state: Arc<AppState>,
    /// Emits, room operations and socket lookups.
    pub io: SocketIo<A>,
    /// `metrics_update` subscribers.
    pub metrics_feed: Arc<MetricsFeed>,
}

impl<A: Adapter> App<A> {
    /// The handle of a server: its state and its Socket.IO handle, with no
    /// `metrics_update` subscriber yet.
    pub fn new(state: Arc<AppState>, io: SocketIo<A>) -> Self {
        App {
            state,
            io,
            metrics_feed: Arc::new(MetricsFeed::default()),
        }
    }
}

impl<A: Adapter> Clone for App<A> {
    fn clone(&self) -> Self {
        App {
            state: self.state.clone(),
            io: self.io.clone(),
            metrics_feed: self.metrics_feed.clone(),
        }
    }
}
