//! Who may use a room: the token's claims first, then the optional access hook of the
//! main backend (contract sections 2 and 10). Every room-access decision goes through
//! [`Access::require`]; [`granted_by_claims`] alone (no hook) is for what must not ask
//! the hook (`get_presence`'s locations), and [`automatic`] lists the rooms joined on
//! connect.
//!
//! The hook (`ACCESS_HOOK_URL`) is asked with `POST { userId, room }` and answers
//! `{ "allowed": true | false }`. Answers are cached for `ACCESS_HOOK_CACHE_MS` (30 s).
//! A hook that is down, slow (more than `ACCESS_HOOK_TIMEOUT_MS`, 2 s), answers with an
//! error status or with something else denies, is not cached (the next request asks
//! again), and is logged. The hook is never asked about another user's `notifications:` or
//! `contacts:` room, nor for anonymous users.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{auth::User, config::Config, error::AppError, rooms::Room};

/// Most cached answers; past this the cache starts afresh (a burst of distinct rooms
/// cannot grow memory without bound).
const CACHE_CAP: usize = 100_000;
/// At most one log line per this interval while the hook fails.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The access rules of one server.
pub struct Access {
    hook: Option<Hook>,
}

struct Hook {
    url: String,
    token: Option<String>,
    client: reqwest::Client,
    ttl: Duration,
    cache: Mutex<HashMap<(String, String), (bool, Instant)>>,
    last_logged: Mutex<Option<Instant>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Question<'a> {
    user_id: &'a str,
    room: &'a str,
}

#[derive(Deserialize)]
struct Answer {
    allowed: serde_json::Value,
}

impl Access {
    /// The rules for `config`: claims only, or claims and the hook.
    pub fn from_config(config: &Config) -> anyhow::Result<Access> {
        let hook = match config.access_hook_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) => {
                reqwest::Url::parse(url)
                    .map_err(|e| anyhow::anyhow!("ACCESS_HOOK_URL is not a URL: {e}"))?;
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_millis(config.access_hook_timeout_ms))
                    .build()?;
                Some(Hook {
                    url: url.to_owned(),
                    token: config.access_hook_token.clone().filter(|t| !t.is_empty()),
                    client,
                    ttl: Duration::from_millis(config.access_hook_cache_ms),
                    cache: Mutex::new(HashMap::new()),
                    last_logged: Mutex::new(None),
                })
            }
        };
        Ok(Access { hook })
    }

    /// `FORBIDDEN` unless `user` may join or use `room`: granted by the claims (or
    /// `admin`), else by the hook when one is configured.
    pub async fn require(&self, user: &User, room: &Room) -> Result<(), AppError> {
        if self.allows(user, room).await {
            Ok(())
        } else {
            Err(AppError::forbidden("Not allowed in this room"))
        }
    }

    async fn allows(&self, user: &User, room: &Room) -> bool {
        if granted_by_claims(user, room) {
            return true;
        }
        let Some(hook) = &self.hook else {
            return false;
        };
        if user.anonymous || matches!(room, Room::Notifications(_) | Room::Contacts(_)) {
            return false;
        }
        hook.ask(user.id.as_str(), &room.to_string()).await
    }
}

/// Whether the claims of `user` grant `room` (the hook, in [`Access::require`], may
/// grant more).
pub fn granted_by_claims(user: &User, room: &Room) -> bool {
    if user.admin {
        return true;
    }
    match room {
        Room::Notifications(id) | Room::Contacts(id) => !user.anonymous && *id == user.id,
        Room::Presence(_) => !user.anonymous,
        Room::Project(p) | Room::ProjectComments(p) | Room::ProjectActivity(p) => {
            user.projects.contains(p)
        }
        Room::Task(t) | Room::TaskComments(t) | Room::TaskTime(t) => user.tasks.contains(t),
        Room::Team(m) | Room::TeamChat(m) => user.teams.contains(m),
    }
}

/// The rooms a user joins on connect: own notifications, contacts and presence, and the
/// project and team rooms of the claims. Anonymous users join none.
pub fn automatic(user: &User) -> Vec<Room> {
    if user.anonymous {
        return Vec::new();
    }
    let mut rooms = vec![
        Room::Notifications(user.id.clone()),
        Room::Contacts(user.id.clone()),
        Room::Presence(user.id.clone()),
    ];
    rooms.extend(user.projects.iter().cloned().map(Room::Project));
    rooms.extend(user.teams.iter().cloned().map(Room::Team));
    rooms
}

impl Hook {
    async fn ask(&self, user: &str, room: &str) -> bool {
        let key = (user.to_owned(), room.to_owned());
        if let Some((allowed, until)) = self.lock_cache().get(&key)
            && *until > Instant::now()
        {
            return *allowed;
        }
        let mut request = self.client.post(&self.url).json(&Question {
            user_id: user,
            room,
        });
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let answer = async {
            let response = request.send().await?.error_for_status()?;
            response.json::<Answer>().await
        }
        .await;
        match answer {
            Ok(Answer { allowed }) => {
                let allowed = allowed == serde_json::Value::Bool(true);
                let mut cache = self.lock_cache();
                if cache.len() >= CACHE_CAP {
                    cache.clear();
                }
                cache.insert(key, (allowed, Instant::now() + self.ttl));
                allowed
            }
            Err(e) => {
                self.log_failure(&e);
                false
            }
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (bool, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log_failure(&self, e: &reqwest::Error) {
        let mut last = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_status() {
                "answered with an error status"
            } else if e.is_decode() {
                "answered something other than { allowed }"
            } else {
                "could not be reached"
            };
            // The URL may hold credentials: it is not logged.
            tracing::warn!(status = ?e.status(), "access hook {what}; access denied");
        }
    }
}
