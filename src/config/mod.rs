//! Configuration: one clap struct, read from flags or the environment.
//!
//! Every field has an environment name so that container deployments need no
//! flags; `trestle --help` lists them all with their defaults.

mod derived;

pub use derived::Engine;

use std::{net::IpAddr, path::PathBuf};

use clap::{Parser, ValueEnum};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured when writing to a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What the admin dashboard is told (`ADMIN_UI_MODE`), as admin-ui's `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdminUiMode {
    /// Server statistics only.
    Production,
    /// Server statistics, every socket and its rooms, and their changes as they happen.
    Development,
}

/// Trestle: a Socket.IO v4 server for the construction-project collaboration product.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "trestle",
    version,
    about,
    long_about = None,
    after_help = "Log levels come from RUST_LOG (default: info), for example RUST_LOG=trestle=debug,info.\nTokens and query strings are never logged."
)]
pub struct Config {
    /// TCP port for Socket.IO and the HTTP endpoints.
    #[arg(long, env = "PORT", default_value_t = 3001)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// HMAC secret for HS256 tokens. Required when auth is required and no public key is set.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA or EC) for RS256/ES256 tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY", hide_env_values = true)]
    pub jwt_public_key: Option<String>,

    /// File holding the PEM public key, read when JWT_PUBLIC_KEY is not set.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Accepted token algorithms, comma-separated (HS256, HS384, HS512, RS256, RS384, RS512,
    /// ES256, ES384). Default: HS256, or RS256,ES256 when a public key is configured.
    #[arg(long, env = "JWT_ALGORITHMS", value_delimiter = ',')]
    pub jwt_algorithms: Vec<String>,

    /// Required `iss` claim, checked when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, checked when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Refuse clients without a token. With `false`, they connect as `anon:<socket id>`.
    #[arg(long, env = "AUTH_REQUIRED", default_value_t = true, action = clap::ArgAction::Set, value_parser = boolish())]
    pub auth_required: bool,

    /// Allowed browser origins, comma-separated (`https://app.example.com`), or `*` for
    /// any. Also checked on the Socket.IO handshake and websocket upgrade: a request whose
    /// `Origin` is not listed is refused with 403 (requests without `Origin` are not from
    /// browsers and are allowed).
    #[arg(long, env = "CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,

    /// Engine.IO ping interval in milliseconds.
    #[arg(long, env = "PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,

    /// Engine.IO ping timeout in milliseconds.
    #[arg(long, env = "PING_TIMEOUT_MS", default_value_t = 60_000)]
    pub ping_timeout_ms: u64,

    /// Largest message in bytes, for polling request bodies and websocket messages alike.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 1_000_000)]
    pub max_message_bytes: u64,

    /// Connections this instance accepts at once (`Server at capacity` beyond).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Connections one client address may hold at once (`Too many connections from this IP`).
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 100)]
    pub max_connections_per_ip: u32,

    /// Milliseconds an engine.io session may stay without sending its Socket.IO CONNECT
    /// (socket.io-client sends it as soon as the transport is open); then it is closed.
    /// A CONNECT refused by the caps or authentication leaves the session to this
    /// deadline too. Sessions count toward the connection caps from their handshake.
    #[arg(long, env = "CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub connect_timeout_ms: u64,

    /// Take the client address from the last `X-Forwarded-For` entry (set behind a proxy).
    #[arg(long, env = "TRUST_PROXY", default_value_t = false, action = clap::ArgAction::Set, value_parser = boolish())]
    pub trust_proxy: bool,

    /// Sockets a room may hold before `join_room` answers ROOM_FULL (0: no cap).
    #[arg(long, env = "MAX_ROOM_SIZE", default_value_t = 1000)]
    pub max_room_size: usize,

    /// Rooms one socket may join with `join_room` (auto-joined rooms not counted).
    #[arg(long, env = "MAX_ROOMS_PER_SOCKET", default_value_t = 200)]
    pub max_rooms_per_socket: usize,

    /// Sockets of one user a room may hold on this instance before that user's next
    /// `join_room` is FORBIDDEN (0: no cap), so that one user cannot fill a room (any
    /// `presence:{u}` included) and lock its other users out with ROOM_FULL.
    #[arg(long, env = "MAX_ROOM_SOCKETS_PER_USER", default_value_t = 10)]
    pub max_room_sockets_per_user: usize,

    /// Events a socket may send per minute (token bucket; typing and upload chunks not
    /// counted; 0 turns the limit off).
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 100)]
    pub rate_limit_per_minute: u32,

    /// Refused events in a row after which a flooding socket is disconnected.
    #[arg(long, env = "RATE_LIMIT_DISCONNECT_AFTER", default_value_t = 50)]
    pub rate_limit_disconnect_after: u32,

    /// Packets that may wait for one client that reads slowly; one more closes its
    /// connection (`slow_consumer`), as does going past `MAX_BUFFER_BYTES`.
    #[arg(long, env = "MAX_BUFFER_PACKETS", default_value_t = 4096)]
    pub max_buffer_packets: usize,

    /// Bytes of messages that may wait for one client that reads slowly; past them its
    /// connection is closed (`slow_consumer`) rather than messages being dropped, and the
    /// client reconnects. 0: no byte bound, and a full packet buffer drops emits instead.
    #[arg(long, env = "MAX_BUFFER_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_buffer_bytes: usize,

    /// Most header lines in one HTTP request; more is refused (431).
    #[arg(long, env = "HTTP_MAX_HEADERS", default_value_t = 100)]
    pub http_max_headers: usize,

    /// Most bytes of an HTTP request line and headers together; more is refused (431).
    #[arg(long, env = "HTTP_MAX_HEADER_BYTES", default_value_t = 65_536)]
    pub http_max_header_bytes: usize,

    /// A client that has not sent its whole request head after this many milliseconds
    /// is disconnected (slow-header attacks).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,

    /// Lets socket.io v2 clients (engine.io protocol 3) connect, as Node's `allowEIO3`.
    /// They send their token in the query (`io(url, { query: { token } })`).
    #[arg(long, env = "ALLOW_EIO3", default_value_t = false, action = clap::ArgAction::Set, value_parser = boolish())]
    pub allow_eio3: bool,

    /// HTTP responses of at least this many bytes (long-polling payloads above all) are
    /// compressed with gzip or deflate when the client's `Accept-Encoding` takes one, as
    /// engine.io's `httpCompression` does with its default `threshold`. 0: never compressed.
    #[arg(long, env = "HTTP_COMPRESSION_THRESHOLD", default_value_t = 1024)]
    pub http_compression_threshold: u64,

    /// Milliseconds a client has to send a whole request body (a long-polling POST, an
    /// `/api/emit` call) from when its head arrived; past it the request is answered 400
    /// and a polling session is closed. Bounds slow-body clients, which a per-read
    /// timeout would not (one byte every few seconds keeps resetting it). 0: no deadline.
    #[arg(long, env = "HTTP_BODY_TIMEOUT_MS", default_value_t = 20_000)]
    pub http_body_timeout_ms: u64,

    /// Most binary attachments in one Socket.IO packet; a packet declaring more closes
    /// the connection.
    #[arg(long, env = "MAX_BINARY_ATTACHMENTS", default_value_t = 10)]
    pub max_binary_attachments: usize,

    /// Redis URL (Redis 7 or later). Set: instances share rooms and emits through Redis.
    /// Unset: a single instance with the in-memory adapter. A Redis Cluster is named
    /// `redis-cluster://host:port?node=host2:port2&node=host3:port3` (`rediss-cluster://`
    /// with TLS): any one node is enough, more are tried in turn at start.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prepended to every Redis key and channel Trestle uses (the adapter's `socket.io…`
    /// channels, the `{trestle:presence}:…` keys), so that deployments sharing one Redis
    /// stay apart. Instances of one cluster need the same prefix.
    #[arg(long, env = "REDIS_PREFIX", default_value = "", value_parser = redis_prefix)]
    pub redis_prefix: String,

    /// Milliseconds one Redis command may take. A command that takes longer (a hung or
    /// overloaded Redis) marks Redis down: every instance then delivers locally, answers
    /// `/api/emit` with 503 `CLUSTER_UNAVAILABLE` and `/ready` with 503, without waiting
    /// on Redis again, until a background PING answers. Cross-instance requests (room
    /// counts) wait for the other instances at most twice this.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub redis_timeout_ms: u64,

    /// With `REDIS_URL`: also deliver what the main backend publishes with the Node
    /// `@socket.io/redis-emitter` (emits to rooms, socket ids, everyone) to this instance's
    /// clients. `false`: those channels are not subscribed.
    #[arg(long, env = "REDIS_EMITTER", default_value_t = true, action = clap::ArgAction::Set, value_parser = boolish())]
    pub redis_emitter: bool,

    /// The emitter's channel prefix (its `key` option, `socket.io` by default there). Unset:
    /// `REDIS_PREFIX` followed by `socket.io`, the Node adapter's channels of this
    /// deployment.
    #[arg(long, env = "REDIS_EMITTER_PREFIX", value_parser = redis_prefix)]
    pub redis_emitter_prefix: Option<String>,

    /// Database: `postgres://…` for several instances, or `sqlite://…`. Default: a SQLite
    /// file `trestle.db` under `DATA_DIR` (one instance only).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory for the default SQLite database (and, later, local documents).
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Bearer key for `POST /api/emit`. Unset: every request is refused.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// A user's `typing_comment` is relayed at most once per this many milliseconds per room;
    /// a socket's repeats within it only push its typing deadline back.
    #[arg(long, env = "TYPING_THROTTLE_MS", default_value_t = 300)]
    pub typing_throttle_ms: u64,

    /// `typing_stopped` is sent this many milliseconds after a user's last `typing_comment`.
    #[arg(long, env = "TYPING_TIMEOUT_MS", default_value_t = 5_000)]
    pub typing_timeout_ms: u64,

    /// A user whose last socket is gone becomes `offline` after this many milliseconds,
    /// unless a socket of theirs connects again first (a page reload shows nothing).
    #[arg(long, env = "PRESENCE_GRACE_MS", default_value_t = 5_000)]
    pub presence_grace_ms: u64,

    /// Connection state recovery: a client whose connection dropped (not one that
    /// disconnected on purpose) and that comes back within this many milliseconds gets its
    /// socket id, its rooms and the events it missed; meanwhile its user stays online and
    /// in its rooms. 0 turns recovery off (no `pid` in the CONNECT answer, no offset
    /// argument on events). With `REDIS_URL` the events and sessions are kept in Redis, so
    /// the client may come back through another instance.
    #[arg(long, env = "RECOVERY_MAX_DISCONNECT_MS", default_value_t = 120_000)]
    pub recovery_max_disconnect_ms: u64,

    /// The most events kept for recovery (in memory, or the Redis stream's approximate
    /// `MAXLEN`); older ones are dropped, and a client that missed one connects afresh.
    #[arg(long, env = "RECOVERY_MAX_EVENTS", default_value_t = 100_000)]
    pub recovery_max_events: usize,

    /// The most events one recovery replays; a client that missed more connects afresh.
    #[arg(long, env = "RECOVERY_MAX_REPLAY", default_value_t = 10_000)]
    pub recovery_max_replay: usize,

    /// The main backend's access hook, asked (`POST { userId, room }` → `{ allowed }`)
    /// about rooms the token's claims do not grant. Unset: the claims decide alone.
    #[arg(long, env = "ACCESS_HOOK_URL", hide_env_values = true)]
    pub access_hook_url: Option<String>,

    /// Bearer token sent to the access hook.
    #[arg(long, env = "ACCESS_HOOK_TOKEN", hide_env_values = true)]
    pub access_hook_token: Option<String>,

    /// How long an access hook answer is reused, in milliseconds.
    #[arg(long, env = "ACCESS_HOOK_CACHE_MS", default_value_t = 30_000)]
    pub access_hook_cache_ms: u64,

    /// An access hook that has not answered after this many milliseconds denies.
    #[arg(long, env = "ACCESS_HOOK_TIMEOUT_MS", default_value_t = 2_000)]
    pub access_hook_timeout_ms: u64,

    /// Folder for documents (default: `documents` under `DATA_DIR`). Several instances
    /// must share it, or use `DOCUMENTS_URL`.
    #[arg(long, env = "DOCUMENTS_DIR")]
    pub documents_dir: Option<PathBuf>,

    /// Object store URL for documents instead of a folder, such as `s3://bucket/prefix`
    /// (credentials from the usual `AWS_*` variables).
    #[arg(long, env = "DOCUMENTS_URL")]
    pub documents_url: Option<String>,

    /// Largest document, in bytes.
    #[arg(long, env = "MAX_DOCUMENT_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_document_bytes: u64,

    /// An upload that receives nothing for this many milliseconds is removed (24 h, as
    /// the Node backend: a site worker may resume an upload the next morning).
    #[arg(long, env = "UPLOAD_TTL_MS", default_value_t = 86_400_000)]
    pub upload_ttl_ms: u64,

    /// Bytes per upload chunk, told to the client as `chunkSize` (the contract's 65,536 by
    /// default). From 1 KiB; lowered at start-up, with a warning, when a chunk
    /// base64-encoded for long-polling would not fit in `MAX_MESSAGE_BYTES`.
    #[arg(long, env = "UPLOAD_CHUNK_SIZE", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub upload_chunk_size: u32,

    /// Uploads one user may have in progress at once.
    #[arg(long, env = "MAX_UPLOADS_PER_USER", default_value_t = 3)]
    pub max_uploads_per_user: u32,

    /// Document streams one socket may run at once.
    #[arg(long, env = "MAX_STREAMS_PER_SOCKET", default_value_t = 3)]
    pub max_streams_per_socket: u32,

    /// Streamed chunks that may wait for the client's ack at once.
    #[arg(long, env = "STREAM_WINDOW", default_value_t = 4)]
    pub stream_window: u32,

    /// A stream whose client acknowledges nothing for this many milliseconds ends.
    #[arg(long, env = "STREAM_ACK_TIMEOUT_MS", default_value_t = 30_000)]
    pub stream_ack_timeout_ms: u64,

    /// Bytes of document chunks all streams of this instance may have sent and not yet had
    /// acknowledged; a stream waits for room in it, and `document_stream` answers
    /// RATE_LIMITED while it is full (0: no budget).
    #[arg(long, env = "STREAM_BUDGET_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub stream_budget_bytes: u64,

    /// How long direct messages and mentions wait for an offline user, in milliseconds.
    #[arg(long, env = "OFFLINE_TTL_MS", default_value_t = 86_400_000)]
    pub offline_ttl_ms: u64,

    /// Direct messages and mentions one sender may have waiting for offline users at once
    /// (not yet delivered nor expired); past it their direct messages, and comments with
    /// mentions, are `RATE_LIMITED` until some are read. 0: no quota.
    #[arg(long, env = "OFFLINE_QUOTA_PER_SENDER", default_value_t = 1_000)]
    pub offline_quota_per_sender: u64,

    /// Payload bytes the store may hold for offline users in all (every sender together);
    /// past it every queueing is `RATE_LIMITED` until messages are read or expire. 0: no cap.
    #[arg(long, env = "OFFLINE_MAX_BYTES", default_value_t = 1 << 30)]
    pub offline_max_bytes: u64,

    /// Messages kept for a user id never seen connecting (a colleague who has not logged in
    /// yet, or a mistyped id) instead of 1,000: they get the latest ones on first connect.
    #[arg(long, env = "OFFLINE_CAP_UNSEEN", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub offline_cap_unseen: u64,

    /// Interval of `metrics_update` events to subscribers, in milliseconds.
    #[arg(long, env = "METRICS_INTERVAL_MS", default_value_t = 5_000)]
    pub metrics_interval_ms: u64,

    /// On SIGTERM/SIGINT: how long to keep serving with `/ready` at 503 (so load balancers
    /// stop routing here) before connections are closed, in milliseconds.
    #[arg(long, env = "SHUTDOWN_DRAIN_MS", default_value_t = 0)]
    pub shutdown_drain_ms: u64,

    /// Deadline for a graceful stop, in milliseconds; the process exits when it passes.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,

    /// `reconnectDelay` told to clients in `server_shutdown`, in milliseconds.
    #[arg(long, env = "SHUTDOWN_RECONNECT_DELAY_MS", default_value_t = 5_000)]
    pub shutdown_reconnect_delay_ms: u64,

    /// User name of the admin dashboard (`@socket.io/admin-ui`). With
    /// `ADMIN_UI_PASSWORD_HASH` it turns on the `/admin` namespace; unset, `/admin` does not
    /// exist (`Invalid namespace`).
    #[arg(long, env = "ADMIN_UI_USERNAME")]
    pub admin_ui_username: Option<String>,

    /// bcrypt hash of the admin dashboard's password (`$2a$`, `$2b$` or `$2y$`, as
    /// admin-ui's `auth.password`: `node -e "console.log(require('bcryptjs').hashSync('pw', 10))"`).
    #[arg(long, env = "ADMIN_UI_PASSWORD_HASH", hide_env_values = true)]
    pub admin_ui_password_hash: Option<String>,

    /// `production`: the dashboard gets server statistics (sockets per namespace,
    /// connections per second) only. `development`: also every socket with its rooms when
    /// it connects, and each connection, room change and disconnection, from every
    /// instance (an adapter broadcast each; admin-ui's `mode`).
    #[arg(long, env = "ADMIN_UI_MODE", value_enum, default_value_t = AdminUiMode::Production)]
    pub admin_ui_mode: AdminUiMode,

    /// The dashboard may only look: no emit, join, leave or disconnect commands
    /// (admin-ui's `readonly`).
    #[arg(long, env = "ADMIN_UI_READONLY", default_value_t = false, action = clap::ArgAction::Set, value_parser = boolish())]
    pub admin_ui_readonly: bool,

    /// Folder of the dashboard's files, to serve them at `ADMIN_UI_PATH` rather than use
    /// the hosted admin.socket.io: `node_modules/@socket.io/admin-ui/ui/dist` of the npm
    /// package. Unset: no files are served.
    #[arg(long, env = "ADMIN_UI_STATIC_DIR")]
    pub admin_ui_static_dir: Option<PathBuf>,

    /// URL path the dashboard's files are served at, when `ADMIN_UI_STATIC_DIR` is set.
    #[arg(long, env = "ADMIN_UI_PATH", default_value = "/admin-ui")]
    pub admin_ui_path: String,

    /// Log format: `pretty` or `json`. Levels come from `RUST_LOG` (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

/// Boolean settings as the Node backend's deployments write them: `true/false`, `1/0`,
/// `yes/no`, `on/off` in any case (clap's bool parser takes only `true` and `false`).
fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

/// A `REDIS_PREFIX`: printable ASCII without spaces, at most 64 bytes, since it becomes
/// part of every key and channel name (and of names built inside the Lua scripts).
fn redis_prefix(s: &str) -> Result<String, String> {
    if s.len() > 64 {
        return Err("at most 64 characters".into());
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("printable ASCII characters without spaces only".into());
    }
    Ok(s.to_owned())
}

impl Config {
    /// The settings from the command line and the environment, where a variable set to an
    /// empty string counts as unset (its default applies), as with the Node backend:
    /// deployment files often carry `AUTH_REQUIRED=` or `REDIS_URL=` lines left blank.
    pub fn from_env_and_args() -> Self {
        let command = <Config as clap::CommandFactory>::command().mut_args(|arg| {
            let blank = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|v| v.is_empty());
            if blank { arg.env(None) } else { arg }
        });
        let matches = command.get_matches();
        <Config as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// A configuration with every default and the given HS256 secret: what tests start from.
    /// Its data directory is a fresh one under the system temp directory.
    pub fn for_tests(secret: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let mut cfg = Config::parse_from(["trestle"]);
        cfg.jwt_secret = Some(secret.to_owned());
        cfg.host = IpAddr::from([127, 0, 0, 1]);
        cfg.port = 0;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        cfg.data_dir =
            std::env::temp_dir().join(format!("trestle-test-{}-{n}", std::process::id()));
        cfg.database_url = None;
        cfg.redis_url = None;
        cfg.documents_dir = None;
        cfg.access_hook_url = None;
        cfg.documents_url = None;
        cfg.admin_ui_username = None;
        cfg.admin_ui_password_hash = None;
        cfg.admin_ui_static_dir = None;
        // Tests pin what a lost connection does without connection state recovery (its
        // user leaves at once); client-tests/test/recovery.test.mjs covers it on.
        cfg.recovery_max_disconnect_ms = 0;
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_read_as_the_node_backend_writes_them() {
        for (v, want) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("On", true),
            ("false", false),
            ("FALSE", false),
            ("0", false),
            ("no", false),
            ("off", false),
            ("OFF", false),
        ] {
            let cfg = Config::try_parse_from(["trestle", "--auth-required", v, "--trust-proxy", v])
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!((cfg.auth_required, cfg.trust_proxy), (want, want), "{v}");
        }
        assert!(Config::try_parse_from(["trestle", "--auth-required", "maybe"]).is_err());
    }

    #[test]
    fn redis_prefix_goes_before_every_name() {
        let cfg = Config::parse_from(["trestle"]);
        assert_eq!(cfg.adapter_channel_prefix(), "socket.io");
        assert_eq!(cfg.presence_key_prefix(), "{trestle:presence}:");
        let cfg = Config::parse_from(["trestle", "--redis-prefix", "staging:"]);
        assert_eq!(cfg.adapter_channel_prefix(), "staging:socket.io");
        assert_eq!(cfg.presence_key_prefix(), "staging:{trestle:presence}:");
        assert_eq!(cfg.emitter_channel_prefix(), "staging:socket.io");
        let cfg = Config::parse_from(["trestle", "--redis-emitter-prefix", "backend"]);
        assert_eq!(cfg.emitter_channel_prefix(), "backend");
        assert!(Config::try_parse_from(["trestle", "--redis-prefix", "a b"]).is_err());
        assert!(Config::try_parse_from(["trestle", "--redis-prefix", &"x".repeat(65)]).is_err());
    }
}
