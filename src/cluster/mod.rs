//! Scale-out on Redis: the socketioxide-redis adapter on the fred driver, delivery that
//! survives a Redis outage, and the Redis readiness check.
//!
//! With `REDIS_URL`, every instance subscribes to the adapter's channels, so emits to
//! rooms, socket-id rooms and room counts reach every instance. The adapter speaks RESP3
//! and sharded pub/sub (Redis 7 or later); an older server is reported at start-up.
//!
//! Why fred and not the `redis` crate driver: after a Redis restart the `redis` driver's
//! connection stays broken (every publish fails with a broken pipe) and its subscriptions
//! are gone, so instances stop hearing each other until restarted. fred reconnects on its
//! own, and `resubscribe_on_reconnect` subscribes the adapter's channels again after
//! each reconnect. While Redis is away, [`emit`] delivers to this instance's sockets only and
//! [`count`] counts them, so local users keep working.

use std::time::Duration;

use anyhow::Context;
use fred::{
    clients::SubscriberClient,
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    prelude::{Builder, Config, ReconnectPolicy},
    types::{InfoKind, RespVersion},
};
use serde::Serialize;
use socketioxide::{BroadcastError, adapter::Adapter, operators::BroadcastOperators};
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr, drivers::fred::FredDriver};

use crate::server::AppState;

pub mod presence;

/// How long a cross-instance request (room counts, socket lookups) or a Redis command may
/// take before it fails, so that a missing instance or Redis cannot make a client wait long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A client builder for `url` with the settings every Trestle connection uses: RESP3,
/// reconnects forever every 500 ms, commands failing after [`REQUEST_TIMEOUT`].
fn builder(url: &str) -> anyhow::Result<Builder> {
    let mut config = Config::from_url(url).context("REDIS_URL is not a valid Redis URL")?;
    // fred does not read the protocol from the URL; the adapter's driver needs RESP3.
    config.version = RespVersion::RESP3;
    config.fail_fast = true;
    let mut builder = Builder::from_config(config);
    // Reconnect forever, every 500 ms: an outage of any length ends by itself.
    builder.set_policy(ReconnectPolicy::new_constant(0, RECONNECT_DELAY_MS));
    builder.with_performance_config(|p| p.default_command_timeout = REQUEST_TIMEOUT);
    builder.with_connection_config(|c| {
        c.connection_timeout = REQUEST_TIMEOUT;
        c.internal_command_timeout = REQUEST_TIMEOUT;
    });
    Ok(builder)
}

/// Delay between reconnect attempts while Redis is away.
const RECONNECT_DELAY_MS: u32 = 500;

/// The adapter's Redis connection, as seen by readiness checks and emits.
#[derive(Clone)]
pub struct RedisHealth {
    client: SubscriberClient,
}

impl RedisHealth {
    /// Whether the connection is up right now (no round trip).
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Whether Redis answers a PING within a second.
    pub async fn ping(&self) -> bool {
        if !self.is_connected() {
            return false;
        }
        let ping = self.client.ping::<String>(None);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }
}

/// Connects to Redis and builds the adapter constructor, its channels named from
/// `channel_prefix`. Fails when Redis cannot be reached at start-up (a configuration error
/// is better found at once).
pub async fn connect(
    url: &str,
    channel_prefix: String,
) -> anyhow::Result<(RedisAdapterCtr<FredDriver>, RedisHealth)> {
    let builder = builder(url)?;
    let client = builder
        .build_subscriber_client()
        .context("cannot build the Redis client")?;
    let adapter_config = RedisAdapterConfig::new()
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_prefix(channel_prefix);
    let adapter = RedisAdapterCtr::new_with_fred_config(client.clone(), adapter_config)
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
    // The adapter's channels are subscribed through this client: after a reconnect, the
    // same subscriptions are made again.
    resubscribe_on_reconnect(client.clone());
    let info: String = client
        .info(Some(InfoKind::Server))
        .await
        .unwrap_or_default();
    match redis_major_version(&info) {
        Some(v) if v < 7 => tracing::error!(
            version = v,
            "Redis is older than 7: the Socket.IO adapter needs RESP3 and sharded pub/sub and will not work"
        ),
        Some(v) => tracing::info!(version = v, "connected to Redis"),
        None => tracing::warn!("could not read the Redis version"),
    }
    Ok((adapter, RedisHealth { client }))
}

/// Subscribes the tracked shard channels again after every reconnect. fred's own
/// `manage_subscriptions` cannot be used: its `resubscribe_all` sends a `SUBSCRIBE` with no
/// channel when only shard channels are tracked (the adapter uses sharded pub/sub), Redis
/// refuses it, and the shard channels are never subscribed again.
fn resubscribe_on_reconnect(client: SubscriberClient) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reconnects = client.reconnect_rx();
        loop {
            match reconnects.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
            let channels = client.tracked_shard_channels();
            let mut failed = 0;
            for channel in &channels {
                if let Err(e) = client.ssubscribe(channel.to_string()).await {
                    failed += 1;
                    tracing::error!(error = %e, "could not subscribe again after a Redis reconnect");
                }
            }
            tracing::info!(
                channels = channels.len(),
                failed,
                "Redis reconnected; adapter channels subscribed again"
            );
        }
    })
}

fn redis_major_version(info: &str) -> Option<u32> {
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?;
    line.trim().split('.').next()?.parse().ok()
}

/// Whether cluster-wide operations are worth trying: no Redis configured (the local
/// adapter is the whole cluster) or its connection is up. While it is down, trying would
/// only wait for the command timeout.
fn reachable(state: &AppState) -> bool {
    state.redis.as_ref().is_none_or(RedisHealth::is_connected)
}

/// Emits through the adapter (every instance). When the cluster cannot be reached, the
/// event still goes to this instance's sockets; the error is returned only when even that
/// fails. `op` builds the operator, since a failed attempt consumes it.
pub async fn emit<A: Adapter, T: Serialize + ?Sized>(
    state: &AppState,
    op: impl Fn() -> BroadcastOperators<A>,
    event: &str,
    data: &T,
) -> Result<(), BroadcastError> {
    if !reachable(state) {
        return op().local().emit(event, data).await;
    }
    match op().emit(event, data).await {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, event, "cluster emit failed; delivering on this instance only");
            op().local().emit(event, data).await
        }
    }
}

/// Sockets matched by `op` on every instance, or on this instance when the cluster cannot
/// be reached (a room cap then holds per instance until Redis is back).
pub async fn count<A: Adapter>(state: &AppState, op: impl Fn() -> BroadcastOperators<A>) -> usize {
    if !reachable(state) {
        return op().local().sockets().len();
    }
    match op().fetch_sockets().await {
        Ok(sockets) => sockets.len(),
        Err(e) => {
            tracing::warn!(error = %e, "cluster count failed; counting this instance only");
            op().local().sockets().len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
