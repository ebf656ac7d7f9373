//! Scale-out on Redis: the socketioxide-redis adapter and a connection for health checks.
//!
//! With `REDIS_URL`, every instance subscribes to the adapter's channels, so emits to
//! rooms, socket-id rooms and room counts reach every instance. The adapter speaks RESP3
//! (Redis 7 or later); an older server is reported at start-up.

use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr, drivers::redis::RedisDriver};

/// How long a cross-instance request (room counts, socket lookups) may take before it
/// fails, so that a missing instance or Redis cannot make a client wait long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis connection for readiness checks; it reconnects by itself after an outage.
#[derive(Clone)]
pub struct RedisHealth {
    conn: ConnectionManager,
}

impl RedisHealth {
    /// Whether Redis answers a PING within a second.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }
}

/// `url` with `protocol=resp3`, which the adapter's driver needs.
fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// Connects to Redis: the adapter constructor and a health-check connection.
pub async fn connect(url: &str) -> anyhow::Result<(RedisAdapterCtr<RedisDriver>, RedisHealth)> {
    let client = redis::Client::open(resp3(url)).context("REDIS_URL is not a valid Redis URL")?;
    let config = RedisAdapterConfig::new().with_request_timeout(REQUEST_TIMEOUT);
    let adapter = RedisAdapterCtr::new_with_redis_config(&client, config)
        .await
        .context(
            "cannot connect to Redis (REDIS_URL); the adapter needs Redis 7 or later (RESP3)",
        )?;
    let mut conn = ConnectionManager::new(client)
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    match redis_major_version(&info) {
        Some(v) if v < 7 => tracing::error!(
            version = v,
            "Redis is older than 7: the Socket.IO adapter needs RESP3 and will not work"
        ),
        Some(v) => tracing::info!(version = v, "connected to Redis"),
        None => tracing::warn!("could not read the Redis version"),
    }
    Ok((adapter, RedisHealth { conn }))
}

fn redis_major_version(info: &str) -> Option<u32> {
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?;
    line.trim().split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_resp3() {
        assert_eq!(resp3("redis://h:1"), "redis://h:1?protocol=resp3");
        assert_eq!(
            resp3("redis://h:1/?db=2"),
            "redis://h:1/?db=2&protocol=resp3"
        );
        assert_eq!(
            resp3("redis://h:1?protocol=resp3"),
            "redis://h:1?protocol=resp3"
        );
    }

    #[test]
    fn versions() {
        assert_eq!(
            redis_major_version("# Server\r\nredis_version:7.0.15\r\n"),
            Some(7)
        );
        assert_eq!(redis_major_version("redis_version:6.2.1"), Some(6));
        assert_eq!(redis_major_version(""), None);
    }
}
