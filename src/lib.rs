//! Trestle: a Socket.IO v4 server for the construction-project collaboration product.
//!
//! Existing socket.io clients connect unchanged; the client contract is
//! `shared/CONTRACT.md`, and `docs/events.md` documents every event as implemented.
//!
//! # Layout
//!
//! - [`config`]: the one clap struct, every setting with its environment name.
//! - [`server`]: the router with the Socket.IO layer, [`server::serve`] with its graceful
//!   stop, and the shared [`server::AppState`].
//! - [`cluster`]: the Redis adapter (`REDIS_URL`), the Redis readiness check, and the
//!   presence registry ([`cluster::presence`]: the interface and its types in `mod.rs`,
//!   the backings in `memory.rs` and `redis.rs`, an instance's own sockets in `local.rs`,
//!   the Redis Lua scripts in `lua/*.lua`, listed in `scripts.rs`).
//! - [`connection`]: a socket's life: admission in the connect middleware (caps, token,
//!   auto-joins), ordered event dispatch with rate limiting, disconnect clean-up.
//! - [`auth`]: token lookup and JWT verification, the [`auth::User`] of a socket.
//! - [`rooms`]: the typed [`rooms::Room`] names, their access rules and auto-joins;
//!   [`access`]: those rules plus the main backend's access hook.
//! - [`limits`]: connection caps and the per-socket event buckets, kept per user.
//! - [`events`]: the one table of client events (name, handler, rate-limited or not) and the
//!   disconnect reasons' labels; it imports nothing of the crate, so every layer may use it.
//! - [`handlers`]: one module per event family (rooms, comments, typing, presence, tasks,
//!   messages, documents, metrics), routed from [`handlers::handle`] by a dispatch built
//!   from the [`events`] table. [`handlers::documents`] is split by concern: `fields`
//!   (validators, the binary field), `upload`, `publish` (and discard), `stream` (registry,
//!   byte budget, runner), `sweeper`.
//! - [`http`]: `/health`, `/ready`, `/metrics`, `POST /api/emit`, the `Origin` check,
//!   admission of engine.io sessions at their handshake ([`http::admission`]: per-address
//!   and total caps, descriptor reserve), and the hyper server loop with its request-head
//!   and body limits ([`http::serve`]).
//! - `src/bin/conformance/`: the fixtures of socket.io's public test suites (the protocol
//!   suite, and socket.io-client's own suite with `--suite client`) on the same server
//!   loop (README, Protocol conformance).
//! - [`store`]: the SQLite or PostgreSQL store of comments, offline messages, document
//!   metadata and uploads; [`store::Objects`], the document bytes (object_store).
//! - [`metrics`]: the Prometheus counters; [`error`]: the ack codes; [`time`]: ISO times.
//! - `vendor/`: socketioxide, engineioxide and the common parser with Trestle's fixes
//!   (the send bound that disconnects slow consumers, parser and engine strictness),
//!   patched in from the root `Cargo.toml`; `vendor/README.md` lists each fix.

pub mod access;
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
pub mod store;
pub mod time;

pub use config::Config;
pub use server::{app, run, serve};
