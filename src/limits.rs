//! Limits of contract section 9 that are counted here: connections per instance and per
//! client address, and the per-socket event rate.
//!
//! A connection holds a [`ConnSlot`] from the moment it is admitted; dropping the slot
//! (the socket went away by any path, or its connect was refused later on) gives the
//! place back, so the counts cannot leak.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
};

use governor::{DefaultDirectRateLimiter, Quota};

/// Why a connection was refused before authentication; `Display` is the `connect_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `MAX_CONNECTIONS` reached, or the server is shutting down.
    Capacity,
    /// `MAX_CONNECTIONS_PER_IP` reached for this address.
    PerIp,
}

impl Refusal {
    /// A short label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Capacity => "capacity",
            Refusal::PerIp => "per_ip",
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

/// Counts connections on this instance, in total and per client address.
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

/// A socket's event budget: a token bucket of `per_minute` events, refilled evenly.
pub struct EventLimiter {
    bucket: Option<DefaultDirectRateLimiter>,
    refused_in_a_row: AtomicU32,
    disconnect_after: u32,
}

impl EventLimiter {
    /// A bucket of `per_minute` events (0: unlimited); after `disconnect_after` refusals in
    /// a row the socket is to be disconnected.
    pub fn new(per_minute: u32, disconnect_after: u32) -> Self {
        EventLimiter {
            bucket: NonZeroU32::new(per_minute)
                .map(|n| DefaultDirectRateLimiter::direct(Quota::per_minute(n))),
            refused_in_a_row: AtomicU32::new(0),
            disconnect_after,
        }
    }

    /// Takes one token for an event.
    pub fn check(&self) -> Verdict {
        let Some(bucket) = &self.bucket else {
            return Verdict::Allow;
        };
        if bucket.check().is_ok() {
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
}
