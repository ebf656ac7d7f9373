//! Admission below the Socket.IO layer: engine.io sessions are counted from their
//! handshake, and the connection caps are fitted to the file descriptors the process has.
//!
//! The Socket.IO caps (`MAX_CONNECTIONS`, `MAX_CONNECTIONS_PER_IP`, checked at the
//! CONNECT in `connection::admit`) cannot see a client that opens engine.io
//! sessions and never sends a CONNECT: each such session holds memory, and a websocket or
//! a waiting poll a file descriptor. So [`check`] takes an engine slot at the handshake
//! (a request on the Socket.IO path without `sid`: a polling GET or a websocket upgrade,
//! over HTTP/1.1 or HTTP/2), per client address and in total, with the headroom of
//! [`with_headroom`] above the Socket.IO caps. Past it the handshake is refused as
//! engine.io's `allowRequest` refuses one: 403 `{"code":4,"message":…}`.
//!
//! The slot rides in the handshake request's extensions, which engineioxide keeps in the
//! session (`Socket::req_parts`): it is given back when the session is dropped, by
//! whatever path it ends (closed by the client, the heartbeat, `CONNECT_TIMEOUT_MS`, a
//! slow consumer, the server's stop). A refused or failed handshake drops the request,
//! and its slot, at once.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    app::AppState,
    config::Config,
    limits::{ConnSlot, ConnectionLimits, Refusal, client_ip, with_headroom},
};

/// The Socket.IO path (socketioxide's default, which Trestle does not change).
const SOCKET_IO_PATH: &str = "/socket.io";

/// Descriptors never used for client connections: the database and Redis connections,
/// document files, and the requests of `/health`, `/ready`, `/metrics` and `/api/emit`
/// when every session is taken.
pub const DESCRIPTOR_RESERVE: u64 = 64;

/// Of [`DESCRIPTOR_RESERVE`], what even the accept loop leaves alone (the database,
/// Redis and files); the rest is for HTTP requests beyond the sessions.
const DESCRIPTOR_FLOOR: u64 = 16;

/// An engine session's place in the engine counts, kept in its request extensions.
#[derive(Clone)]
pub struct EngineSlot(#[allow(dead_code)] Arc<ConnSlot>);

/// The engine session counts and what the handshake check needs.
pub struct Admission {
    sessions: Arc<ConnectionLimits>,
    state: Arc<AppState>,
}

impl Admission {
    /// Engine session limits for the configured Socket.IO caps, with their headroom.
    pub fn new(state: Arc<AppState>) -> Arc<Self> {
        let cfg = &state.config;
        let per_ip = with_headroom(cfg.max_connections_per_ip as usize);
        Arc::new(Admission {
            sessions: ConnectionLimits::new(
                with_headroom(cfg.max_connections),
                u32::try_from(per_ip).unwrap_or(u32::MAX),
            ),
            state,
        })
    }
}

/// Whether `req` opens an engine.io session: a GET on the Socket.IO path with no `sid`
/// (engineioxide's own test, `RequestInfo::parse`: only such a request creates one).
fn is_handshake(req: &Request) -> bool {
    req.method() == Method::GET && for_engine(req) && !query_has(req, |kv| kv.starts_with("sid="))
}

/// Whether `req` is on the Socket.IO path.
fn for_engine(req: &Request) -> bool {
    req.uri()
        .path()
        .strip_prefix(SOCKET_IO_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether a `key=value` pair of the query string matches.
fn query_has(req: &Request, pair: impl Fn(&str) -> bool) -> bool {
    req.uri().query().unwrap_or("").split('&').any(pair)
}

/// Whether `req` is for the Socket.IO path with engine.io protocol 3 (socket.io v2
/// clients), which the engine speaks (socketioxide's `v4` feature) but only
/// `ALLOW_EIO3` lets in, as Node's `allowEIO3`.
fn is_eio3(req: &Request) -> bool {
    for_engine(req) && query_has(req, |kv| kv == "EIO=3")
}

/// Middleware in front of the Socket.IO layer: a handshake takes an engine slot or is
/// refused with 403; other requests pass untouched. Protocol 3 is refused as the engine
/// refuses a version it does not speak, unless `ALLOW_EIO3`.
pub async fn check(State(adm): State<Arc<Admission>>, req: Request, next: Next) -> Response {
    if !adm.state.config.allow_eio3 && is_eio3(&req) {
        return engine_error(
            StatusCode::BAD_REQUEST,
            5,
            "Unsupported protocol version".into(),
        );
    }
    if !is_handshake(&req) {
        return next.run(req).await;
    }
    let state = &adm.state;
    if state.is_shutting_down() {
        state
            .metrics
            .count(crate::metrics::Refused::HandshakeShuttingDown);
        return refuse(Refusal::Capacity);
    }
    let (mut parts, body) = req.into_parts();
    let ip: IpAddr = client_ip(&parts, state.config.trust_proxy);
    match adm.sessions.admit(ip) {
        Ok(slot) => {
            parts.extensions.insert(EngineSlot(Arc::new(slot)));
            next.run(Request::from_parts(parts, body)).await
        }
        Err(refusal) => {
            state.metrics.count(refusal.at_handshake());
            tracing::debug!(%ip, reason = refusal.reason(), "engine.io handshake refused");
            refuse(refusal)
        }
    }
}

/// engine.io's refusal of a handshake (`allowRequest` said no): 403, code 4 (Forbidden),
/// with the same message a refused CONNECT carries.
fn refuse(refusal: Refusal) -> Response {
    engine_error(StatusCode::FORBIDDEN, 4, refusal.to_string())
}

/// An engine.io error answer: `{ code, message }` as JSON.
fn engine_error(status: StatusCode, code: u8, message: String) -> Response {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The process's file descriptor limit and use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// The soft `RLIMIT_NOFILE`, after raising it to the hard limit where allowed.
    pub limit: u64,
    /// Descriptors open now.
    pub open: u64,
}

impl Descriptors {
    /// Raises the soft limit to the hard one (the default soft limit, often 1,024, is far
    /// below what 10,000 connections need) and counts what is open. `None` where the
    /// platform does not say.
    pub fn raise_and_count() -> Option<Self> {
        let limit = raise_nofile()?;
        let open = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(32);
        Some(Descriptors { limit, open })
    }

    /// Descriptors client sessions may use: the rest after what is open and the reserve.
    pub fn for_sessions(self) -> u64 {
        self.limit.saturating_sub(self.open + DESCRIPTOR_RESERVE)
    }

    /// TCP connections the accept loop may hold: sessions' and plain HTTP requests', all
    /// but [`DESCRIPTOR_FLOOR`] of what is left.
    pub fn for_connections(self) -> u64 {
        self.limit.saturating_sub(self.open + DESCRIPTOR_FLOOR)
    }

    /// The largest `MAX_CONNECTIONS` whose engine sessions (with headroom) fit in the
    /// descriptors for sessions, when the configured one does not.
    pub fn max_connections(self, configured: usize) -> Option<usize> {
        let budget = usize::try_from(self.for_sessions()).unwrap_or(usize::MAX);
        if with_headroom(configured) <= budget {
            return None;
        }
        // with_headroom is monotonic: the largest cap that fits, by bisection.
        let (mut lo, mut hi) = (0usize, configured);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if with_headroom(mid) <= budget {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Some(lo)
    }
}

/// Fits `MAX_CONNECTIONS` to the file descriptors: a cap the process cannot hold would
/// let sessions take every descriptor, and then new clients, `/health` and `/api/emit`
/// would all wait for an `accept` that fails. Lowered with a warning when needed.
pub fn fit_to_descriptors(config: &mut Config) {
    let Some(fds) = Descriptors::raise_and_count() else {
        return;
    };
    if let Some(cap) = fds.max_connections(config.max_connections) {
        tracing::warn!(
            nofile = fds.limit,
            open = fds.open,
            reserve = DESCRIPTOR_RESERVE,
            configured = config.max_connections,
            lowered_to = cap,
            "MAX_CONNECTIONS lowered to what the file descriptor limit (ulimit -n) can hold \
             with a reserve for health checks and the database; raise the limit to allow more"
        );
        config.max_connections = cap;
    }
}

/// The accept loop's cap on open TCP connections: in total, what the descriptors allow;
/// per address, twice its engine sessions (a polling client holds a waiting GET and a
/// POST) plus a few, so one address cannot hold the descriptors with idle connections.
/// Behind a trusted proxy every connection comes from the proxy: no per-address cap.
pub fn tcp_limits(config: &Config) -> Arc<ConnectionLimits> {
    let total = Descriptors::raise_and_count().map_or(usize::MAX, |d| {
        usize::try_from(d.for_connections()).unwrap_or(usize::MAX)
    });
    let per_ip = if config.trust_proxy {
        u32::MAX
    } else {
        let sessions = with_headroom(config.max_connections_per_ip as usize);
        u32::try_from(sessions.saturating_mul(2).saturating_add(16)).unwrap_or(u32::MAX)
    };
    ConnectionLimits::new(total, per_ip)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit.
#[cfg(unix)]
fn raise_nofile() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    #[allow(clippy::unnecessary_cast)]
    Some(lim.rlim_cur as u64)
}

#[cfg(not(unix))]
fn raise_nofile() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str) -> Request {
        Request::get(uri).body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn handshakes_are_gets_on_the_path_without_sid() {
        assert!(is_handshake(&get("/socket.io/?EIO=4&transport=polling")));
        assert!(is_handshake(&get("/socket.io/?EIO=4&transport=websocket")));
        assert!(is_handshake(&get("/socket.io?EIO=4&transport=polling&t=x")));
        assert!(!is_handshake(&get(
            "/socket.io/?EIO=4&transport=polling&sid=abc"
        )));
        assert!(!is_handshake(&get(
            "/socket.io/?sid=&EIO=4&transport=websocket"
        )));
        assert!(!is_handshake(&get("/socket.io-admin/?EIO=4")));
        assert!(!is_handshake(&get("/health")));
        let post = Request::post("/socket.io/?EIO=4&transport=polling")
            .body(axum::body::Body::empty())
            .unwrap();
        assert!(!is_handshake(&post));
    }

    #[test]
    fn the_cap_is_lowered_to_what_the_descriptors_hold() {
        let fds = Descriptors {
            limit: 256,
            open: 20,
        };
        assert_eq!(fds.for_sessions(), 172);
        assert_eq!(fds.for_connections(), 220);
        let cap = fds.max_connections(10_000).unwrap();
        assert!(with_headroom(cap) <= 172 && with_headroom(cap + 1) > 172);
        assert_eq!(fds.max_connections(100), None);
        let tiny = Descriptors {
            limit: 64,
            open: 20,
        };
        assert_eq!(tiny.max_connections(10), Some(0));
    }
}
