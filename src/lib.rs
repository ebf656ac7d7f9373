//! Trestle: a Socket.IO v4 server for the construction-project collaboration product.
//!
//! Existing socket.io clients connect unchanged; the client contract is
//! `shared/CONTRACT.md`, and `docs/events.md` documents every event as implemented.
//!
//! # Layout
//!
//! The modules form layers, bottom first: a module may use its own layer and those
//! below it, never one above, and no two modules use each other. `tests/layers.rs` checks
//! it (its `LAYERS` list is this one); `docs/architecture.md` says where each rule lives.
//!
//! 1. Foundation, no crate imports but each other's downwards:
//!    [`error`] (the ack codes and [`error::AppError`]), [`time`] (ISO times),
//!    [`sanitize`] (user text), [`events`] (the one table of client events, the reserved
//!    and server event names, and the disconnect reasons' labels), [`metrics`] (the
//!    Prometheus counters and the `metrics_update` subscribers), [`config`] (the one clap
//!    struct, every setting with its environment name; `derived.rs`: what settings mean
//!    together, start-up warnings).
//! 2. Who and where: [`rooms`] (the typed [`rooms::Room`] names and ids, and their
//!    decoding from payloads), [`auth`] (token lookup and JWT verification, the
//!    [`auth::User`] of a socket), [`access`] (who may use a room: the claims, then the
//!    main backend's access hook, in the one check [`access::Access::require`]; the
//!    auto-joins), [`limits`] (connection caps, per-socket event buckets kept per user,
//!    the typing throttle, the document streams' byte budget, the client address).
//! 3. Shared state outside the process: [`store`] (the SQLite or PostgreSQL store of
//!    comments, offline messages, document metadata and uploads, one `impl` per table;
//!    [`store::Objects`], the document bytes), [`cluster`] (the Redis adapter, emits that
//!    fall back to this instance while Redis is down, the readiness check, and the presence
//!    registry [`cluster::presence`]: interface in `mod.rs`, backings in `memory.rs` and
//!    `redis.rs`, the Redis Lua scripts in `lua/*.lua`; [`cluster::emitter`], the
//!    `@socket.io/redis-emitter` messages delivered to this instance's sockets; and
//!    [`cluster::recovery`], connection state recovery's sessions and kept events in Redis,
//!    its Lua scripts in `recovery/*.lua`).
//! 4. [`app`]: [`app::AppState`], what one server shares (built once, by `server`), and
//!    [`app::App`], that state with the Socket.IO handle; the offline deliveries under way;
//!    connection state recovery's store and [`app::Parking`], the waits of sockets that
//!    may recover (what they leave behind is `connection`'s).
//! 5. [`session`]: what one socket holds, [`session::Conn`]: its user, joined rooms, event
//!    queue and bucket, typing deadlines, document streams, presence lease.
//! 6. [`handlers`]: one module per event family (rooms, comments, typing, presence, tasks,
//!    messages, documents, metrics), routed from [`handlers::handle`] by a dispatch built
//!    from the [`events`] table. [`handlers::documents`] is split by concern: `fields`
//!    (validators, the binary field), `upload`, `publish` (and discard), `stream`, `sweeper`.
//! 7. [`connection`]: a socket's life: admission in the connect middleware (caps, token,
//!    auto-joins; for a recovered socket, the same user and its rooms checked again),
//!    ordered event dispatch with rate limiting, disconnect clean-up (held back for the
//!    recovery window when the connection was lost).
//!    [`http`]: `/health`, `/ready`, `/metrics`, `POST /api/emit`, the `Origin` check,
//!    admission of engine.io sessions at their handshake ([`http::admission`]: per-address
//!    and total caps, descriptor reserve), and the hyper server loop with its request-head
//!    and body limits ([`http::serve`]).
//!    [`admin`]: the `@socket.io/admin-ui` dashboard's `/admin` namespace (its login, the
//!    sockets and rooms of every instance, `server_stats`, the commands), which the lower
//!    layers feed through [`app::SocketFeed`], and the dashboard's files.
//! 8. [`server`]: wiring only: the router with its layers, [`server::serve`] with the
//!    background loops (one `JoinSet`) and the graceful stop.
//!
//! On top: `main.rs`, and `src/bin/conformance/`, the fixtures of socket.io's public test
//! suites (the protocol suite, and socket.io-client's own suite with `--suite client`) on
//! the same server loop (README, Protocol conformance). Beside the crate, `vendor/`:
//! socketioxide (and its core), engineioxide, the common parser and the Redis adapter with
//! Trestle's fixes (the send bound that disconnects slow consumers, parser and engine
//! strictness, room sizes counted, not fetched), patched in from the
//! root `Cargo.toml`; `vendor/README.md` lists each fix. `bench/loadgen`: the load
//! generator, a crate and workspace of its own (bench/README.md).

pub mod access;
pub mod admin;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod error;
pub mod events;
pub mod handlers;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod rooms;
pub mod sanitize;
pub mod server;
pub mod session;
pub mod store;
pub mod time;

pub use config::Config;
pub use server::{run, serve};
