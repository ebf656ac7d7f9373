//! What an instance knows of its own sockets, kept beside the Redis registry so that a
//! resync can write back what Redis lost.

use std::collections::HashMap;

use super::Status;

/// What an instance knows of its own sockets.
#[derive(Default)]
pub(super) struct Local {
    /// Socket id → user and targets (as JSON).
    pub(super) sockets: HashMap<String, (String, String)>,
    /// Each user with a socket here.
    pub(super) users: HashMap<String, LocalUser>,
}

pub(super) struct LocalUser {
    pub(super) sockets: usize,
    /// The status last read from or written to Redis, and the time of that change.
    pub(super) status: Status,
    pub(super) since: i64,
    /// Whether the user's watchers were told of `status` (false for a user who connected
    /// while Redis was down: their coming online is announced when Redis is back).
    pub(super) announced: bool,
}

impl Local {
    pub(super) fn add(
        &mut self,
        user: &str,
        sid: &str,
        targets: &str,
        now: i64,
    ) -> (Status, i64, bool) {
        let u = self.users.entry(user.to_owned()).or_insert(LocalUser {
            sockets: 0,
            status: Status::Online,
            since: now,
            announced: false,
        });
        if self
            .sockets
            .insert(sid.to_owned(), (user.to_owned(), targets.to_owned()))
            .is_none()
        {
            u.sockets += 1;
        }
        (u.status, u.since, u.announced)
    }

    pub(super) fn remove(&mut self, sid: &str) {
        let Some((user, _)) = self.sockets.remove(sid) else {
            return;
        };
        if let Some(u) = self.users.get_mut(&user) {
            u.sockets = u.sockets.saturating_sub(1);
            if u.sockets == 0 {
                self.users.remove(&user);
            }
        }
    }

    /// Records what Redis now holds for a user with sockets here.
    pub(super) fn learned(&mut self, user: &str, status: Status, since: i64) {
        if let Some(u) = self.users.get_mut(user) {
            u.status = status;
            u.since = since;
            u.announced = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_bookkeeping() {
        let mut l = Local::default();
        assert_eq!(l.add("u", "s1", "[]", 5), (Status::Online, 5, false));
        l.learned("u", Status::Away, 7);
        assert_eq!(l.add("u", "s2", "[]", 9), (Status::Away, 7, true));
        assert_eq!(
            l.add("u", "s2", "[]", 9),
            (Status::Away, 7, true),
            "same socket twice"
        );
        l.remove("s1");
        assert_eq!(l.users["u"].sockets, 1);
        l.remove("s2");
        assert!(l.users.is_empty() && l.sockets.is_empty());
        l.remove("s2"); // twice: nothing
        l.learned("gone", Status::Online, 1); // no socket here: not kept
        assert!(l.users.is_empty());
    }
}
