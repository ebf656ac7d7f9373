//! Offline deliveries under way on this instance (`handlers::messages` delivers).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// After a delivery found the database not answering, deliveries do not try it for this
/// long (each would wait for its timeout for nothing).
const DATABASE_REST: Duration = Duration::from_secs(5);

/// Offline deliveries of this instance: one at a time per user, and whether the database
/// is worth trying.
#[derive(Default)]
pub struct Deliveries {
    /// A lock per user with a delivery under way or waiting; removed with the last holder.
    users: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Until when deliveries leave the database alone.
    resting_until: Mutex<Option<Instant>>,
}

/// A user's delivery lock, held; dropping it removes the lock once no one waits for it.
pub struct UserTurn<'a> {
    deliveries: &'a Deliveries,
    user: &'a str,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Deliveries {
    /// Waits for `user`'s turn: a second socket of the user connecting at the same moment
    /// waits for the first's delivery, then finds the queue handed over. Other users never
    /// wait.
    pub async fn turn<'a>(&'a self, user: &'a str) -> UserTurn<'a> {
        let lock = {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            users.entry(user.to_owned()).or_default().clone()
        };
        UserTurn {
            deliveries: self,
            user,
            guard: Some(lock.lock_owned().await),
        }
    }

    /// Whether the database did not answer a delivery a moment ago: leave it alone.
    pub fn resting(&self) -> bool {
        let until = self.resting_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    /// Records whether the database answered a delivery.
    pub fn answered(&self, ok: bool) {
        *self.resting_until.lock().unwrap_or_else(|e| e.into_inner()) =
            (!ok).then(|| Instant::now() + DATABASE_REST);
    }
}

impl Drop for UserTurn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut users = self
            .deliveries
            .users
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Only the map holds it: no one waits, and no one can clone it but under this lock.
        if users
            .get(self.user)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            users.remove(self.user);
        }
    }
}
