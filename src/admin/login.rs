//! The dashboard's login: the `auth` of its CONNECT (`{ username, password }`) against
//! `ADMIN_UI_USERNAME` and the bcrypt `ADMIN_UI_PASSWORD_HASH`, as admin-ui's basic auth.
//!
//! bcrypt is slow on purpose (tens of milliseconds of CPU at cost 10), so a flood of logins
//! must not take the runtime's threads: each check runs on the blocking pool, and only
//! [`CHECKS_AT_ONCE`] run at once; a login that finds no place within [`WAIT`] is refused
//! like a wrong password. A wrong user name and a wrong password cost the same bcrypt and
//! get the same answer, so neither can be told from the other.

use std::{sync::Arc, time::Duration};

use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// bcrypt checks that may run at once (the rest wait for a place).
pub const CHECKS_AT_ONCE: usize = 1;
/// How long a login may wait for a place before it is refused.
pub const WAIT: Duration = Duration::from_secs(5);
/// A password longer than this is refused without hashing (bcrypt reads 72 bytes).
const MAX_PASSWORD_BYTES: usize = 1024;

/// The refusal every failed login gets: admin-ui's `connect_error` message, which its UI
/// answers by showing the login form again.
#[derive(Debug)]
pub struct InvalidCredentials;

impl std::fmt::Display for InvalidCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid credentials")
    }
}

/// The configured login and the places for bcrypt checks.
pub struct Login {
    user: [u8; 32],
    hash: Arc<str>,
    places: Semaphore,
    wait: Duration,
}

impl Login {
    /// A login for `user` with the bcrypt `hash` (checked at start-up by
    /// `Config::admin_ui_login`), `places` checks at once, each waiting at most `wait`.
    pub fn new(user: &str, hash: &str, places: usize, wait: Duration) -> Self {
        Login {
            user: Sha256::digest(user.as_bytes()).into(),
            hash: hash.into(),
            places: Semaphore::new(places),
            wait,
        }
    }

    /// Checks a CONNECT's `auth`. Whatever is missing or wrong, the answer is the same.
    pub async fn check(&self, auth: Option<&Json>) -> Result<(), InvalidCredentials> {
        let field = |k: &str| auth.and_then(|a| a.get(k)).and_then(Json::as_str);
        let user = field("username").unwrap_or_default();
        let password = field("password").unwrap_or_default();
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(InvalidCredentials);
        }
        let Ok(Ok(_place)) = tokio::time::timeout(self.wait, self.places.acquire()).await else {
            tracing::warn!("admin dashboard login refused: too many logins at once");
            return Err(InvalidCredentials);
        };
        let (password, hash) = (password.to_owned(), self.hash.clone());
        let password_ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        // Digests compared, so the time taken tells nothing about the user name.
        let user_ok = <[u8; 32]>::from(Sha256::digest(user.as_bytes())) == self.user;
        if password_ok && user_ok {
            Ok(())
        } else {
            tracing::warn!("admin dashboard login refused: invalid credentials");
            Err(InvalidCredentials)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// `require('bcryptjs').hashSync('s3cret-pass', 4)` (bcryptjs 2.4, as admin-ui uses).
    const BCRYPTJS: &str = "$2a$04$WojnGeBkfEf.8/KQxusTS.auEzGMj7OMaLu5pcBgcv2AdG7MOenRy";

    fn auth(user: &str, password: &str) -> Json {
        json!({ "username": user, "password": password })
    }

    #[tokio::test]
    async fn hashes_of_bcryptjs_and_every_prefix_are_accepted() {
        // $2a$, $2b$ and $2y$ differ only for passwords of 255 bytes and more.
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            let hash = format!("{prefix}{}", &BCRYPTJS[4..]);
            let login = Login::new("admin", &hash, 1, WAIT);
            assert!(
                login
                    .check(Some(&auth("admin", "s3cret-pass")))
                    .await
                    .is_ok(),
                "{prefix}"
            );
        }
        let native = bcrypt::hash("other", 4).unwrap();
        let login = Login::new("admin", &native, 1, WAIT);
        assert!(login.check(Some(&auth("admin", "other"))).await.is_ok());
    }

    #[tokio::test]
    async fn anything_wrong_or_missing_is_refused() {
        let login = Login::new("admin", BCRYPTJS, 1, WAIT);
        for a in [
            Some(auth("admin", "wrong")),
            Some(auth("someone", "s3cret-pass")),
            Some(json!({ "username": "admin" })),
            Some(json!({ "password": "s3cret-pass" })),
            Some(json!({ "username": "admin", "password": 42 })),
            Some(json!("admin:s3cret-pass")),
            Some(auth("admin", &"x".repeat(MAX_PASSWORD_BYTES + 1))),
            None,
        ] {
            assert!(login.check(a.as_ref()).await.is_err(), "{a:?}");
        }
    }

    #[tokio::test]
    async fn a_login_that_finds_no_place_in_time_is_refused() {
        let login = Login::new("admin", BCRYPTJS, 1, Duration::from_millis(50));
        let right = auth("admin", "s3cret-pass");
        let held = login.places.acquire().await.unwrap();
        assert!(login.check(Some(&right)).await.is_err());
        drop(held);
        assert!(login.check(Some(&right)).await.is_ok());
    }
}
