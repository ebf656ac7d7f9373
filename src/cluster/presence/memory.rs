//! The in-memory backing of the presence registry, for a single instance.

use std::collections::HashMap;

use super::{RETENTION, Seen, Status, WentOffline};

#[derive(Default)]
pub(super) struct Memory {
    pub(super) users: HashMap<String, MemUser>,
    /// Users whose last socket is gone → when they become offline.
    pub(super) pending: HashMap<String, i64>,
    pub(super) claims: u32,
}

pub(super) struct MemUser {
    pub(super) sockets: Vec<Box<str>>,
    pub(super) status: Status,
    pub(super) last_seen: i64,
    pub(super) left_at: i64,
    pub(super) targets: Vec<String>,
    pub(super) location: Option<String>,
}

impl Memory {
    pub(super) fn connect(&mut self, user: &str, sid: &str, targets: &[String], now: i64) -> bool {
        self.pending.remove(user);
        let u = self
            .users
            .entry(user.to_owned())
            .or_insert_with(|| MemUser {
                sockets: Vec::new(),
                status: Status::Offline,
                last_seen: now,
                left_at: now,
                targets: Vec::new(),
                location: None,
            });
        if !u.sockets.iter().any(|s| &**s == sid) {
            u.sockets.push(sid.into());
        }
        u.targets = targets.to_vec();
        if u.status != Status::Offline {
            return false;
        }
        u.status = Status::Online;
        u.last_seen = now;
        true
    }

    pub(super) fn disconnect(&mut self, user: &str, sid: &str, now: i64, due: i64) {
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        let before = u.sockets.len();
        u.sockets.retain(|s| &**s != sid);
        if u.sockets.len() < before && u.sockets.is_empty() {
            u.left_at = now;
            self.pending.insert(user.to_owned(), due);
        }
    }

    pub(super) fn set_status(&mut self, user: &str, status: Status, now: i64) -> bool {
        let Some(u) = self.users.get_mut(user) else {
            return false;
        };
        if u.status == status {
            return false;
        }
        u.status = status;
        u.last_seen = now;
        true
    }

    pub(super) fn seen(&self, user: &str) -> Seen {
        match self.users.get(user) {
            Some(u) => Seen {
                status: u.status,
                last_seen: Some(u.last_seen),
                location: u.location.clone(),
            },
            None => Seen {
                status: Status::Offline,
                last_seen: None,
                location: None,
            },
        }
    }

    pub(super) fn claim_due(&mut self, now: i64) -> Vec<WentOffline> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(u, _)| u.clone())
            .collect();
        let mut out = Vec::new();
        for user in due {
            self.pending.remove(&user);
            let Some(u) = self.users.get_mut(&user) else {
                continue;
            };
            if !u.sockets.is_empty() || u.status == Status::Offline {
                continue;
            }
            u.status = Status::Offline;
            u.last_seen = u.left_at;
            out.push(WentOffline {
                user,
                last_seen: u.left_at,
                targets: u.targets.clone(),
            });
        }
        // Now and then, forget users offline for longer than the retention.
        self.claims = self.claims.wrapping_add(1);
        if self.claims.is_multiple_of(4096) {
            let oldest = now - RETENTION.as_millis() as i64;
            self.users
                .retain(|_, u| u.status != Status::Offline || u.last_seen >= oldest);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn memory_transitions() {
        let mut m = Memory::default();
        assert!(m.connect("u", "s1", &t(&["project:p"]), 1));
        assert!(!m.connect("u", "s2", &t(&["project:p"]), 2));
        m.disconnect("u", "s1", 3, 10);
        assert!(m.pending.is_empty(), "another socket is still there");
        m.disconnect("u", "s2", 4, 10);
        assert!(m.claim_due(9).is_empty(), "grace period not over");
        // Back within the grace period: nothing to announce, nothing pending.
        assert!(!m.connect("u", "s3", &t(&["project:p"]), 5));
        assert!(m.claim_due(20).is_empty());
        m.disconnect("u", "s3", 6, 11);
        m.disconnect("u", "s3", 7, 12); // twice: no effect
        let gone = m.claim_due(11);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].last_seen, 6);
        assert_eq!(gone[0].targets, t(&["project:p"]));
        assert_eq!(m.seen("u").status, Status::Offline);
        assert_eq!(m.seen("u").last_seen, Some(6));
        assert_eq!(m.seen("never").last_seen, None);
    }

    #[test]
    fn memory_status() {
        let mut m = Memory::default();
        assert!(!m.set_status("u", Status::Away, 1), "unknown user");
        m.connect("u", "s", &[], 1);
        assert!(m.set_status("u", Status::Away, 2));
        assert!(!m.set_status("u", Status::Away, 3));
        assert_eq!(m.seen("u").status, Status::Away);
        // Away users reconnecting stay away.
        m.disconnect("u", "s", 4, 5);
        assert!(!m.connect("u", "s2", &[], 4));
        assert_eq!(m.seen("u").status, Status::Away);
    }
}
