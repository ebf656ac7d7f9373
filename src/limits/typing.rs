//! The throttle of `typing_comment` relays, per user and room, on this instance.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use crate::rooms::{Id, Room};

/// When each user last had a `typing_comment` relayed, per room, on this instance.
///
/// Two generations, swapped every throttle window: an entry can only throttle within its
/// window, so what is older than two windows is dropped wholesale, in O(1) per event. The
/// map holds at most the relays of the last two windows.
#[derive(Debug, Default)]
pub struct TypingThrottle(Mutex<Generations>);

#[derive(Debug, Default)]
struct Generations {
    /// When `current` was started.
    since: Option<Instant>,
    current: HashMap<(Id, Room), Instant>,
    previous: HashMap<(Id, Room), Instant>,
}

impl TypingThrottle {
    /// Whether a relay for `user` in `room` may go out now; records it when it may.
    pub fn admit(&self, user: &Id, room: &Room, every: Duration, now: Instant) -> bool {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let age = g.since.map(|since| now.saturating_duration_since(since));
        match age {
            Some(age) if age < every => {}
            Some(age) if age < every * 2 => {
                g.previous = std::mem::take(&mut g.current);
                g.since = Some(now);
            }
            _ => {
                g.previous.clear();
                g.current.clear();
                g.since = Some(now);
            }
        }
        let key = (user.clone(), room.clone());
        let last = g.current.get(&key).or_else(|| g.previous.get(&key));
        if last.is_some_and(|at| now.saturating_duration_since(*at) < every) {
            return false;
        }
        g.current.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_admits_the_first_of_a_burst_and_forgets_old_entries() {
        let t = TypingThrottle::default();
        let every = Duration::from_millis(300);
        let ms = |n| Duration::from_millis(n);
        let t0 = Instant::now();
        let (u, r): (Id, Room) = (
            Id::from_trusted("u1"),
            "project:p:comments".parse().unwrap(),
        );
        assert!(t.admit(&u, &r, every, t0));
        assert!(!t.admit(&u, &r, every, t0));
        assert!(!t.admit(&u, &r, every, t0 + ms(200)));
        assert!(
            t.admit(&u, &r, every, t0 + ms(350)),
            "350 ms after the first relay"
        );
        assert!(
            !t.admit(&u, &r, every, t0 + ms(400)),
            "found in the previous window"
        );
        for i in 0..1000 {
            let other = Id::from_trusted(&format!("x{i}"));
            assert!(t.admit(&other, &r, every, t0 + ms(400)));
        }
        assert!(t.admit(&u, &r, every, t0 + ms(1100)));
        let g = t.0.lock().unwrap();
        assert_eq!(
            g.current.len() + g.previous.len(),
            1,
            "older windows dropped"
        );
    }
}
