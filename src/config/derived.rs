//! What the settings mean together: values derived from several settings, the prefixes
//! of Redis names, and the start-up warnings about settings that refuse every request of
//! a kind.

use std::time::Duration;

use super::Config;

/// Highest bcrypt cost accepted for the dashboard's password: each step doubles a login's
/// CPU time, and 14 is already about a second on one core.
const MAX_ADMIN_UI_COST: u32 = 14;

impl Config {
    /// The upload `chunkSize` in force: `UPLOAD_CHUNK_SIZE`, lowered when it would not fit
    /// in `MAX_MESSAGE_BYTES`. Over long-polling a binary chunk travels base64-encoded
    /// (4/3 of its size) with its event's JSON; a chunk that cannot fit would make every
    /// upload fail, so a server with small messages gets small chunks instead.
    pub fn upload_chunk_bytes(&self) -> u32 {
        let fits = self.max_message_bytes.saturating_sub(1024) * 3 / 4;
        u32::try_from(fits)
            .unwrap_or(u32::MAX)
            .clamp(1, self.upload_chunk_size)
    }

    /// The `CORS_ORIGINS` entries as browsers write an `Origin` (lower case, no trailing
    /// slash), for the CORS layer and the origin check alike; `None`: any origin.
    pub fn cors_origin_list(&self) -> Option<Vec<String>> {
        let origins: Vec<String> = self
            .cors_origins
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        (!origins.is_empty() && !origins.iter().any(|o| o == "*")).then_some(origins)
    }

    /// What start-up should warn about: settings under which every request of a kind is
    /// refused, and settings lowered to what can work.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.api_key.as_deref().is_none_or(str::is_empty) {
            warnings.push("API_KEY is not set: every POST /api/emit is refused with 401".into());
        }
        // A browser's `Origin` is always `scheme://host[:port]` with the default port left
        // out; an entry of another shape (no scheme, a path, `:443` on https) never matches.
        let is_origin = |o: &String| {
            o == "null" || url::Url::parse(o).is_ok_and(|u| u.origin().ascii_serialization() == *o)
        };
        if self
            .cors_origin_list()
            .is_some_and(|list| !list.iter().any(is_origin))
        {
            warnings.push(
                "no CORS_ORIGINS entry is an origin (scheme://host[:port]): every browser \
                 request from another origin is refused with 403"
                    .into(),
            );
        }
        let zeros: [(u64, &str); 8] = [
            (
                self.connect_timeout_ms,
                "CONNECT_TIMEOUT_MS is 0: every session is closed before its CONNECT",
            ),
            (
                self.max_connections as u64,
                "MAX_CONNECTIONS is 0: every connection is refused",
            ),
            (
                u64::from(self.max_connections_per_ip),
                "MAX_CONNECTIONS_PER_IP is 0: every connection is refused",
            ),
            (
                self.max_message_bytes,
                "MAX_MESSAGE_BYTES is 0: every client message is over the limit",
            ),
            (
                self.max_rooms_per_socket as u64,
                "MAX_ROOMS_PER_SOCKET is 0: every join_room is refused",
            ),
            (
                u64::from(self.max_uploads_per_user),
                "MAX_UPLOADS_PER_USER is 0: every document upload is refused",
            ),
            (
                self.max_document_bytes,
                "MAX_DOCUMENT_BYTES is 0: every non-empty document upload is refused",
            ),
            (
                u64::from(self.max_streams_per_socket),
                "MAX_STREAMS_PER_SOCKET is 0: every document stream is refused",
            ),
        ];
        warnings.extend(
            zeros
                .iter()
                .filter(|(v, _)| *v == 0)
                .map(|(_, m)| (*m).to_owned()),
        );
        // The presence keys' hash tag is the first `{…}` of their names: one in the prefix
        // would be hashed instead, and `{}` would leave the keys spread over the slots.
        if self.redis_prefix.contains(['{', '}']) {
            warnings.push(
                "REDIS_PREFIX contains a brace: on a Redis Cluster, the presence keys may not \
                 share one hash slot, and presence then fails with CROSSSLOT"
                    .into(),
            );
        }
        if self.upload_chunk_bytes() < self.upload_chunk_size {
            warnings.push(format!(
                "UPLOAD_CHUNK_SIZE lowered from {} to {} bytes: a larger chunk, base64-encoded \
                 for long-polling, would not fit in MAX_MESSAGE_BYTES ({})",
                self.upload_chunk_size,
                self.upload_chunk_bytes(),
                self.max_message_bytes
            ));
        }
        warnings
    }

    /// The admin dashboard's user name and bcrypt hash, when both are set; `Err` when only
    /// one is, or the hash is not one bcrypt (bcryptjs included) writes, or is so costly that
    /// every login would take seconds: a dashboard half configured would be off silently.
    pub fn admin_ui_login(&self) -> Result<Option<(&str, &str)>, String> {
        let (user, hash) = match (&self.admin_ui_username, &self.admin_ui_password_hash) {
            (None, None) => return Ok(None),
            (Some(u), Some(h)) => (u.as_str(), h.as_str()),
            _ => {
                return Err(
                    "ADMIN_UI_USERNAME and ADMIN_UI_PASSWORD_HASH must be set together \
                            (or neither, for no admin dashboard)"
                        .into(),
                );
            }
        };
        let parts: bcrypt::HashParts = hash
            .parse()
            .map_err(|_| "ADMIN_UI_PASSWORD_HASH is not a bcrypt hash ($2a$, $2b$ or $2y$)")?;
        if !(4..=MAX_ADMIN_UI_COST).contains(&parts.get_cost()) {
            return Err(format!(
                "ADMIN_UI_PASSWORD_HASH has cost {}: from 4 to {MAX_ADMIN_UI_COST} (10 is usual)",
                parts.get_cost()
            ));
        }
        Ok(Some((user, hash)))
    }

    /// The socketioxide-redis adapter's channel prefix (its default, `socket.io`, behind
    /// `REDIS_PREFIX`).
    pub fn adapter_channel_prefix(&self) -> String {
        format!("{}socket.io", self.redis_prefix)
    }

    /// The channel prefix of `@socket.io/redis-emitter` messages: `REDIS_EMITTER_PREFIX`,
    /// else the Node adapter's of this deployment, `socket.io` behind `REDIS_PREFIX` (the
    /// emitter's default `key` when there is no `REDIS_PREFIX`).
    pub fn emitter_channel_prefix(&self) -> String {
        self.redis_emitter_prefix
            .clone()
            .unwrap_or_else(|| self.adapter_channel_prefix())
    }

    /// Where the presence registry keeps its keys in Redis. The hash tag `{trestle:presence}`
    /// puts every presence key in one hash slot of a Redis Cluster: several scripts touch
    /// keys of many users and instances at once, which a cluster allows only within a slot.
    pub fn presence_key_prefix(&self) -> String {
        format!("{}{{trestle:presence}}:", self.redis_prefix)
    }

    /// The prefix of connection state recovery's Redis keys (`…recovery:events`, the
    /// stream of kept events, and `…recovery:session:<pid>`): each command uses one key,
    /// so they need no common hash tag on a Redis Cluster.
    pub fn recovery_key_prefix(&self) -> String {
        format!("{}trestle:", self.redis_prefix)
    }

    /// The connection state recovery window; `None` when recovery is off.
    pub fn recovery_window(&self) -> Option<Duration> {
        (self.recovery_max_disconnect_ms > 0)
            .then(|| Duration::from_millis(self.recovery_max_disconnect_ms))
    }

    /// The ping interval as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// The ping timeout as a duration.
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }

    /// The engine.io and parser settings these settings give.
    pub fn engine(&self) -> Engine {
        Engine {
            ping_interval: self.ping_interval(),
            ping_timeout: self.ping_timeout(),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_message_bytes: self.max_message_bytes,
            max_buffer_packets: self.max_buffer_packets,
            max_buffer_bytes: (self.max_buffer_bytes > 0).then_some(self.max_buffer_bytes),
            max_binary_attachments: self.max_binary_attachments,
        }
    }
}

/// What the engine.io layer and the Socket.IO parser are built with. Trestle builds it from
/// its settings ([`Config::engine`]); the conformance fixtures start from
/// [`Engine::socketio_defaults`] and change what their suite expects. Both hand it to the
/// one function that applies it (`server::socketio_builder`), so the fixtures test the
/// engine Trestle runs, with its bounds, and not one configured apart.
#[derive(Debug, Clone)]
pub struct Engine {
    /// `PING_INTERVAL_MS`.
    pub ping_interval: Duration,
    /// `PING_TIMEOUT_MS`.
    pub ping_timeout: Duration,
    /// `CONNECT_TIMEOUT_MS`.
    pub connect_timeout: Duration,
    /// `MAX_MESSAGE_BYTES`: a polling payload, a websocket message or frame, and the
    /// binary attachments of one packet together.
    pub max_message_bytes: u64,
    /// `MAX_BUFFER_PACKETS`.
    pub max_buffer_packets: usize,
    /// `MAX_BUFFER_BYTES`; `None`: no byte bound.
    pub max_buffer_bytes: Option<usize>,
    /// `MAX_BINARY_ATTACHMENTS`.
    pub max_binary_attachments: usize,
}

impl Engine {
    /// socket.io 4's defaults (`pingInterval` 25 s, `pingTimeout` 20 s, `connectTimeout`
    /// 45 s, `maxHttpBufferSize` 1 MB), with Trestle's slow-consumer bounds.
    pub fn socketio_defaults() -> Engine {
        Engine {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(45),
            max_message_bytes: 1_000_000,
            max_buffer_packets: 4096,
            max_buffer_bytes: Some(8 * 1024 * 1024),
            max_binary_attachments: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_defaults_are_socketio_defaults_except_the_connect_timeout_and_pings() {
        let ours = Config::parse_from(["trestle"]).engine();
        let theirs = Engine::socketio_defaults();
        assert_eq!(ours.max_message_bytes, theirs.max_message_bytes);
        assert_eq!(ours.max_buffer_packets, theirs.max_buffer_packets);
        assert_eq!(ours.max_buffer_bytes, theirs.max_buffer_bytes);
        assert_eq!(ours.max_binary_attachments, theirs.max_binary_attachments);
        // Trestle closes a session without a CONNECT sooner (issue 13, admission).
        assert!(ours.connect_timeout < theirs.connect_timeout);
    }

    #[test]
    fn the_admin_login_is_both_settings_or_neither_with_a_bcrypt_hash() {
        // bcryptjs's `hashSync('s3cret-pass', 4)`.
        let hash = "$2a$04$WojnGeBkfEf.8/KQxusTS.auEzGMj7OMaLu5pcBgcv2AdG7MOenRy";
        let login = |args: &[&str]| {
            let cfg = Config::parse_from([&["trestle"], args].concat());
            cfg.admin_ui_login()
                .map(|l| l.map(|(u, h)| (u.to_owned(), h.to_owned())))
        };
        assert_eq!(login(&[]), Ok(None));
        let both = login(&[
            "--admin-ui-username",
            "ops",
            "--admin-ui-password-hash",
            hash,
        ]);
        assert_eq!(both, Ok(Some(("ops".into(), hash.into()))));
        assert!(login(&["--admin-ui-username", "ops"]).is_err());
        assert!(login(&["--admin-ui-password-hash", hash]).is_err());
        for bad in [
            "s3cret-pass",
            "$2a$04$short",
            "$2a$15$WojnGeBkfEf.8/KQxusTS.auEzGMj7OMaLu5pcBgcv2AdG7MOenRy",
        ] {
            let r = login(&[
                "--admin-ui-username",
                "ops",
                "--admin-ui-password-hash",
                bad,
            ]);
            assert!(r.is_err(), "{bad}");
        }
    }

    #[test]
    fn a_brace_in_the_redis_prefix_is_warned_about() {
        let brace = |cfg: &Config| cfg.warnings().iter().any(|w| w.contains("REDIS_PREFIX"));
        assert!(!brace(&Config::parse_from([
            "trestle",
            "--redis-prefix",
            "staging:"
        ])));
        assert!(brace(&Config::parse_from([
            "trestle",
            "--redis-prefix",
            "a{}:"
        ])));
        assert!(brace(&Config::parse_from([
            "trestle",
            "--redis-prefix",
            "{staging}:"
        ])));
    }

    #[test]
    fn upload_chunks_fit_a_polling_message() {
        let cfg = Config::parse_from(["trestle"]);
        assert_eq!(cfg.upload_chunk_bytes(), 65_536);
        let big = Config::parse_from(["trestle", "--upload-chunk-size", "800000"]);
        assert_eq!(big.upload_chunk_bytes(), 749_232);
        let small = Config::parse_from(["trestle", "--max-message-bytes", "10000"]);
        assert_eq!(small.upload_chunk_bytes(), 6_732);
        assert!(Config::try_parse_from(["trestle", "--upload-chunk-size", "1000"]).is_err());
    }
}
