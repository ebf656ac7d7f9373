//! Limits of contract section 9 that are counted here: connections per instance and per
//! client address, and the per-socket event rate, whose buckets are kept per user so that
//! reconnecting does not refill them ([`EventBudgets`]).
//!
//! A connection holds a [`ConnSlot`] from the moment it is admitted; dropping the slot
//! (the socket went away by any path, or its connect was refused later on) gives the
//! place back, so the counts cannot leak.
//!
//! Also here, as shared limits the handlers draw on: the typing relay throttle
//! ([`TypingThrottle`]) and the document streams' byte budget ([`StreamBudget`]); and
//! [`client_ip`], the address every per-address count is kept under.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use governor::{DefaultDirectRateLimiter, Quota};

use crate::metrics::{LabelValues, Refused};

mod stream;
mod typing;

pub use self::{stream::StreamBudget, typing::TypingThrottle};

/// The client address: the peer address, or with `TRUST_PROXY` the last
/// `X-Forwarded-For` entry (the one the trusted proxy added; earlier ones are the client's
/// own claims and could be forged).
pub fn client_ip(parts: &axum::http::request::Parts, trust_proxy: bool) -> IpAddr {
    if trust_proxy
        && let Some(ip) = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(|h| h.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .next_back()
    {
        return ip;
    }
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// Why a connection was refused before authentication; `Display` is the `connect_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `MAX_CONNECTIONS` reached, or the server is shutting down.
    Capacity,
    /// `MAX_CONNECTIONS_PER_IP` reached for this address.
    PerIp,
}

impl Refusal {
    /// A short label for logs.
    pub fn reason(self) -> &'static str {
        self.at_connect().label()
    }

    /// Its metric label when refused at the Socket.IO CONNECT.
    pub fn at_connect(self) -> Refused {
        match self {
            Refusal::Capacity => Refused::Capacity,
            Refusal::PerIp => Refused::PerIp,
        }
    }

    /// Its metric label when refused at the engine.io handshake.
    pub fn at_handshake(self) -> Refused {
        match self {
            Refusal::Capacity => Refused::HandshakeCapacity,
            Refusal::PerIp => Refused::HandshakePerIp,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Capacity => "Server at capacity",
            Refusal::PerIp => "Too many connections from this IP",
        })
    }
}

/// The engine.io sessions allowed beyond a socket.io cap: `cap` plus a tenth of it, at
/// least 4. A session exists from the handshake, before its CONNECT; those that never
/// send one are counted too, so an address cannot hold more than this many sessions,
/// while ordinary clients past the socket.io cap still reach the CONNECT and get its
/// `connect_error` message rather than a refused handshake.
pub fn with_headroom(cap: usize) -> usize {
    cap.saturating_add((cap / 10).max(4))
}

/// Counts connections on this instance, in total and per client address (socket.io
/// connections, engine.io sessions, or TCP connections: one instance for each).
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: u32,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

impl ConnectionLimits {
    /// Limits of `max_total` connections, `max_per_ip` of them from one address.
    pub fn new(max_total: usize, max_per_ip: u32) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for a connection from `ip`, or says why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refusal> {
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        if total >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Capacity);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerIp);
        }
        *n += 1;
        Ok(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections holding a place now.
    pub fn current(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    fn release(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
        drop(per_ip);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection's place in [`ConnectionLimits`], given back on drop.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnSlot {
    /// The client address the slot was taken for.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.limits.release(self.ip);
    }
}

/// What the rate limiter says about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle the event.
    Allow,
    /// Refuse it with `RATE_LIMITED`.
    Refuse,
    /// Refuse it and disconnect the socket: it kept flooding after being told.
    Disconnect,
}

/// How long a bucket no socket holds is kept: the time it takes to refill completely, after
/// which a fresh bucket is the same thing.
const BUCKET_KEPT: Duration = Duration::from_secs(60);
/// Least time between two sweeps of the buckets no socket holds.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// One token bucket of `RATE_LIMIT_PER_MINUTE` events, held by at most one socket at a time.
struct Bucket {
    tokens: DefaultDirectRateLimiter,
    /// Whether a socket holds it now.
    held: AtomicBool,
    /// When the last socket that held it let it go.
    released: Mutex<Instant>,
}

/// The event budgets of this instance, kept per user (per client address for anonymous
/// sockets, whose user id changes with every connection).
///
/// Each socket takes one bucket (contract section 10: a token bucket per socket), but
/// buckets belong to the user and outlive the socket for [`BUCKET_KEPT`]: a socket that
/// connects takes over a bucket one of the user's earlier sockets let go, as empty as it
/// was left, so reconnecting never refills the budget. A user with several sockets at once
/// has a bucket for each (three tabs do not share one), so what a user can send is bounded
/// by the sockets they hold at once, which the connection caps bound.
pub struct EventBudgets {
    per_minute: Option<NonZeroU32>,
    disconnect_after: u32,
    users: Mutex<Budgets>,
}

struct Budgets {
    by_key: HashMap<String, Vec<Arc<Bucket>>>,
    swept: Instant,
}

impl EventBudgets {
    /// Budgets of `per_minute` events per socket (0: unlimited); after `disconnect_after`
    /// refusals in a row a socket is to be disconnected.
    pub fn new(per_minute: u32, disconnect_after: u32) -> Self {
        EventBudgets {
            per_minute: NonZeroU32::new(per_minute),
            disconnect_after,
            users: Mutex::new(Budgets {
                by_key: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// A limiter for a new socket of `key` (a user id, or an anonymous socket's address):
    /// the most recently let-go bucket of that key when there is one, else a full one.
    pub fn lease(&self, key: &str) -> EventLimiter {
        let Some(per_minute) = self.per_minute else {
            return EventLimiter {
                bucket: None,
                let_go: AtomicBool::new(false),
                refused_in_a_row: AtomicU32::new(0),
                disconnect_after: self.disconnect_after,
            };
        };
        let now = Instant::now();
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(users.swept) >= SWEEP_EVERY {
            users.sweep(now);
        }
        let buckets = users.by_key.entry(key.to_owned()).or_default();
        let free = buckets
            .iter()
            .filter(|b| !b.held.load(Ordering::Acquire))
            .max_by_key(|b| *b.released.lock().unwrap_or_else(|e| e.into_inner()))
            .cloned();
        let bucket = free.unwrap_or_else(|| {
            let b = Arc::new(Bucket {
                tokens: DefaultDirectRateLimiter::direct(Quota::per_minute(per_minute)),
                held: AtomicBool::new(false),
                released: Mutex::new(now),
            });
            buckets.push(b.clone());
            b
        });
        bucket.held.store(true, Ordering::Release);
        EventLimiter {
            bucket: Some(bucket),
            let_go: AtomicBool::new(false),
            refused_in_a_row: AtomicU32::new(0),
            disconnect_after: self.disconnect_after,
        }
    }

    /// Buckets kept now, held or not (for tests and metrics).
    pub fn buckets(&self) -> usize {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.by_key.values().map(Vec::len).sum()
    }
}

impl Budgets {
    /// Forgets buckets no socket has held for [`BUCKET_KEPT`] (they are full again), and
    /// keys left without buckets, so the map holds the live sockets and the last minute's.
    fn sweep(&mut self, now: Instant) {
        self.by_key.retain(|_, buckets| {
            buckets.retain(|b| {
                b.held.load(Ordering::Acquire)
                    || now.duration_since(*b.released.lock().unwrap_or_else(|e| e.into_inner()))
                        < BUCKET_KEPT
            });
            !buckets.is_empty()
        });
        self.swept = now;
    }
}

/// A socket's hold on one of its user's buckets; dropping it (the socket went away) leaves
/// the bucket, as empty as it is, to the user's next socket.
pub struct EventLimiter {
    bucket: Option<Arc<Bucket>>,
    let_go: AtomicBool,
    refused_in_a_row: AtomicU32,
    disconnect_after: u32,
}

impl EventLimiter {
    /// A limiter of its own, not kept for the user: `per_minute` events (0: unlimited),
    /// disconnect after `disconnect_after` refusals in a row.
    pub fn new(per_minute: u32, disconnect_after: u32) -> Self {
        EventBudgets::new(per_minute, disconnect_after).lease("")
    }

    /// Takes one token for an event.
    pub fn check(&self) -> Verdict {
        let Some(bucket) = &self.bucket else {
            return Verdict::Allow;
        };
        if bucket.tokens.check().is_ok() {
            self.refused_in_a_row.store(0, Ordering::Relaxed);
            return Verdict::Allow;
        }
        let refused = self.refused_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if self.disconnect_after > 0 && refused >= self.disconnect_after {
            Verdict::Disconnect
        } else {
            Verdict::Refuse
        }
    }
}

impl EventLimiter {
    /// Leaves the bucket to the user's next socket, as empty as it is now: when the socket
    /// disconnects (it may be dropped a little later). Once is enough; dropping does it too.
    pub fn release(&self) {
        if let Some(bucket) = &self.bucket
            && !self.let_go.swap(true, Ordering::AcqRel)
        {
            *bucket.released.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            bucket.held.store(false, Ordering::Release);
        }
    }
}

impl Drop for EventLimiter {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_given_back() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = limits.admit(a).unwrap();
        let _s2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::PerIp);
        let _s3 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refusal::Capacity);
        assert_eq!(limits.current(), 3);
        drop(s1);
        assert_eq!(limits.current(), 2);
        let _s4 = limits.admit(a).unwrap();
    }

    #[test]
    fn headroom_is_a_tenth_and_at_least_four() {
        assert_eq!(with_headroom(0), 4);
        assert_eq!(with_headroom(2), 6);
        assert_eq!(with_headroom(100), 110);
        assert_eq!(with_headroom(10_000), 11_000);
        assert_eq!(with_headroom(usize::MAX), usize::MAX);
    }

    #[test]
    fn the_bucket_refuses_then_disconnects() {
        let limiter = EventLimiter::new(3, 2);
        assert_eq!(
            [limiter.check(), limiter.check(), limiter.check()],
            [Verdict::Allow; 3]
        );
        assert_eq!(limiter.check(), Verdict::Refuse);
        assert_eq!(limiter.check(), Verdict::Disconnect);
        let off = EventLimiter::new(0, 2);
        assert!((0..1000).all(|_| off.check() == Verdict::Allow));
    }

    #[test]
    fn a_new_socket_takes_over_the_bucket_its_user_left() {
        let budgets = EventBudgets::new(3, 0);
        let first = budgets.lease("u1");
        assert!((0..3).all(|_| first.check() == Verdict::Allow));
        // A second socket at the same time has a bucket of its own.
        let second = budgets.lease("u1");
        assert_eq!(second.check(), Verdict::Allow);
        drop(first);
        // Reconnecting gets the emptied bucket back, not a full one.
        let again = budgets.lease("u1");
        assert_eq!(again.check(), Verdict::Refuse);
        // Another user is not affected.
        assert_eq!(budgets.lease("u2").check(), Verdict::Allow);
        assert_eq!(budgets.buckets(), 3);
    }

    #[test]
    fn buckets_let_go_long_ago_are_swept() {
        let budgets = EventBudgets::new(3, 0);
        drop(budgets.lease("gone"));
        let held = budgets.lease("here");
        let later = Instant::now() + BUCKET_KEPT + Duration::from_secs(1);
        budgets.users.lock().unwrap().sweep(later);
        assert_eq!(budgets.buckets(), 1);
        drop(held);
    }
}
