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
//! each reconnect. While Redis is away or hung ([`link`]: every command has a deadline,
//! and one missed deadline marks Redis down for every caller), [`emit`] delivers to this
//! instance's sockets only and [`count`] counts them, so local users keep working, while
//! [`emit_everywhere`] (`/api/emit`) refuses, so the publisher knows to retry.
//!
//! On a Redis Cluster (`REDIS_URL` `redis-cluster://host:port?node=host:port…`, fred's
//! form) nothing changes above: fred sends each shard channel's `SSUBSCRIBE` and
//! `SPUBLISH` to the node serving its slot, so a `SPUBLISH`'s receiver count is every
//! instance subscribed to that channel, as the adapter's broadcast check needs; the
//! presence keys share one slot ([`presence`]); the probe PINGs every node ([`link`]). A
//! node that is gone makes fred reconnect the whole client, so Redis is down for Trestle
//! until the node, or a replica promoted in its place, serves its slots again.

use std::{sync::Arc, time::Duration};

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

pub mod emitter;
pub mod link;
pub mod presence;
pub mod recovery;

pub use link::Link;

/// How long a cross-instance request (room counts, socket lookups) waits for the other
/// instances' answers, for a Redis command deadline of `timeout` (`REDIS_TIMEOUT_MS`): twice
/// it, since the answers take two trips through Redis and the other instance's scheduling.
/// A hung Redis fails such a request sooner, at its first command.
pub fn request_timeout(timeout: Duration) -> Duration {
    timeout * 2
}

/// A client builder for `url` with the settings every Trestle connection uses: RESP3,
/// reconnects forever every 500 ms, commands failing after `timeout` (`REDIS_TIMEOUT_MS`).
fn builder(url: &str, timeout: Duration) -> anyhow::Result<Builder> {
    let mut config = Config::from_url(url).context("REDIS_URL is not a valid Redis URL")?;
    // fred does not read the protocol from the URL; the adapter's driver needs RESP3.
    config.version = RespVersion::RESP3;
    config.fail_fast = true;
    let mut builder = Builder::from_config(config);
    // Reconnect forever, every 500 ms: an outage of any length ends by itself.
    builder.set_policy(ReconnectPolicy::new_constant(0, RECONNECT_DELAY_MS));
    builder.with_performance_config(|p| p.default_command_timeout = timeout);
    builder.with_connection_config(|c| {
        c.connection_timeout = timeout;
        c.internal_command_timeout = timeout;
    });
    Ok(builder)
}

/// Delay between reconnect attempts while Redis is away.
const RECONNECT_DELAY_MS: u32 = 500;

/// The adapter's Redis connection, as seen by readiness checks and emits.
#[derive(Clone)]
pub struct RedisHealth {
    client: SubscriberClient,
    link: Arc<Link>,
    driver: FredDriver,
}

impl RedisHealth {
    /// Whether the connection is up right now (no round trip).
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Messages from the other instances that this one received from Redis and dropped
    /// before delivering them (`trestle_redis_messages_lost_total`), since start.
    pub fn lost_messages(&self) -> u64 {
        self.driver.lost_messages()
    }

    /// Whether Redis answers: not marked down, and both connections answer a PING within
    /// `REDIS_TIMEOUT_MS` (a PING that does not marks it down).
    pub async fn ping(&self) -> bool {
        if self.link.is_down() {
            return false;
        }
        let answers = self.link.answers().await;
        if !answers {
            self.link.failed(&"no answer to PING");
        }
        answers
    }

    /// Redis's up or down state, shared by every Redis caller.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }
}

/// Messages from Redis that may wait for the adapter's dispatch task (fred's pub/sub channel;
/// fred's default is 32): fred never waits for that task, and messages past this are lost.
/// At 1,400 broadcasts a second this covers seconds of a busy runtime not scheduling the
/// task (measured loss at 32: `cluster-load.test.mjs`); the slots cost about 200 bytes each.
const PUBSUB_CHANNEL_CAPACITY: usize = 8192;

/// Broadcasts received from Redis that may wait for this instance to deliver them to its
/// sockets (the adapter's default is 1,024); past it they are lost (counted and logged).
const ADAPTER_STREAM_BUFFER: usize = 16_384;

/// How long a broadcast to every instance may reach fewer instances than before and be
/// reported as not having reached the whole cluster (`/api/emit` 503), before the missing
/// instances are taken as gone: longer than an instance takes to subscribe again after a
/// Redis restart (a reconnect every [`RECONNECT_DELAY_MS`]).
const SERVER_LOSS_GRACE: Duration = Duration::from_secs(5);

/// Connects to Redis and builds the adapter constructor, its channels named from
/// `channel_prefix`. Fails when Redis cannot be reached at start-up (a configuration error
/// is better found at once).
pub async fn connect(
    url: &str,
    channel_prefix: String,
    timeout: Duration,
) -> anyhow::Result<(RedisAdapterCtr<FredDriver>, RedisHealth)> {
    let mut builder = builder(url, timeout)?;
    builder.with_performance_config(|p| p.broadcast_channel_capacity = PUBSUB_CHANNEL_CAPACITY);
    let client = builder
        .build_subscriber_client()
        .context("cannot build the Redis client")?;
    let adapter_config = RedisAdapterConfig::new()
        .with_request_timeout(request_timeout(timeout))
        .with_prefix(channel_prefix)
        .with_stream_buffer(ADAPTER_STREAM_BUFFER)
        .with_server_loss_grace(SERVER_LOSS_GRACE);
    let driver = FredDriver::new(client.clone())
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
    let adapter = RedisAdapterCtr::new_with_driver(driver.clone(), adapter_config);
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
    let link = Link::new(client.clone(), timeout);
    Ok((
        adapter,
        RedisHealth {
            client,
            link,
            driver,
        },
    ))
}

/// Subscribes the tracked shard channels again after every reconnect (on a Redis Cluster,
/// every node's: a channel already subscribed on a node that stayed up is subscribed again
/// harmlessly). fred's own
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
/// adapter is the whole cluster), or its connection is up and Redis is not marked down
/// ([`Link`]). While it is down, trying would only wait for the command deadline.
fn reachable(redis: Option<&RedisHealth>) -> bool {
    redis.is_none_or(|r| r.link.is_usable())
}

/// After an adapter call failed: when a Redis command failed under it (timed out, or the
/// connection failed), Redis is marked down so that the next callers do not wait on it too
/// (should Redis be fine after all, the probe finds it up again within 250 ms). Other
/// failures (a broadcast that reached only some instances) say nothing about Redis.
fn note_failure(redis: Option<&RedisHealth>, e: &socketioxide_core::adapter::errors::AdapterError) {
    let Some(redis) = redis else { return };
    if let Some(socketioxide_redis::Error::Driver(fe)) =
        e.0.downcast_ref::<socketioxide_redis::Error<FredDriver>>()
    {
        redis.link.failed(fe);
    }
}

/// Why [`emit_everywhere`] could not say the event reached every instance.
#[derive(Debug, thiserror::Error)]
pub enum NotEverywhere {
    /// Redis is down or the publish failed: no instance got the event (not even this one),
    /// unless the adapter reached only some instances ([`reached_only_some`]), whose
    /// clients got it.
    #[error("the event could not be published to every instance")]
    Cluster,
    /// The event could not be built (serialising the data).
    #[error(transparent)]
    Local(BroadcastError),
}

/// Emits through the adapter to every instance, or says it could not (`/api/emit`): while
/// Redis is marked down nothing is delivered and [`NotEverywhere::Cluster`] is returned at
/// once, so that the publisher's retry delivers the event once everywhere. Any adapter
/// error is [`NotEverywhere::Cluster`]. Sockets of this instance that could not take the
/// event (slow consumers being disconnected) do not make it fail: a retry would not reach
/// them either, and would repeat it for everyone else.
pub async fn emit_everywhere<A: Adapter, T: Serialize + ?Sized>(
    redis: Option<&RedisHealth>,
    op: impl Fn() -> BroadcastOperators<A>,
    event: &str,
    data: &T,
) -> Result<(), NotEverywhere> {
    if !reachable(redis) {
        return Err(NotEverywhere::Cluster);
    }
    match op().emit(event, data).await {
        Ok(()) | Err(BroadcastError::Socket(_)) => Ok(()),
        Err(BroadcastError::Adapter(e)) => {
            note_failure(redis, &e);
            tracing::warn!(error = %e, event, "cluster emit failed; the publisher is told to retry");
            Err(NotEverywhere::Cluster)
        }
        Err(e) => Err(NotEverywhere::Local(e)),
    }
}

/// Emits through the adapter (every instance). When the cluster cannot be reached, the
/// event still goes to this instance's sockets; the error is returned only when even that
/// fails. `op` builds the operator, since a failed attempt consumes it.
pub async fn emit<A: Adapter, T: Serialize + ?Sized>(
    redis: Option<&RedisHealth>,
    op: impl Fn() -> BroadcastOperators<A>,
    event: &str,
    data: &T,
) -> Result<(), BroadcastError> {
    if !reachable(redis) {
        return op().local().emit(event, data).await;
    }
    match op().emit(event, data).await {
        Ok(()) => Ok(()),
        // Delivered here and on the instances reached: delivering here again would repeat
        // it. Client events have no retry to offer (`/api/emit` does: [`emit_everywhere`]).
        Err(e) if reached_only_some(&e) => {
            tracing::warn!(error = %e, event, "cluster emit missed instances not subscribed yet");
            Ok(())
        }
        // Published, but some sockets here could not take it (slow consumers): again here
        // would repeat it to the others.
        Err(e @ BroadcastError::Socket(_)) => Err(e),
        Err(e) => {
            if let BroadcastError::Adapter(a) = &e {
                note_failure(redis, a);
            }
            tracing::warn!(error = %e, event, "cluster emit failed; delivering on this instance only");
            op().local().emit(event, data).await
        }
    }
}

/// Whether a broadcast reached this instance and some others but not every instance seen
/// recently (the adapter's `server_loss_grace` check), e.g. one still subscribing again
/// after a Redis restart.
pub fn reached_only_some(e: &BroadcastError) -> bool {
    let BroadcastError::Adapter(e) = e else {
        return false;
    };
    matches!(
        e.0.downcast_ref::<socketioxide_redis::Error<FredDriver>>(),
        Some(socketioxide_redis::Error::Incomplete { .. })
    )
}

/// Sockets matched by `op` on every instance, or on this instance when the cluster cannot
/// be reached (a room cap then holds per instance until Redis is back). Counted, not
/// fetched: this instance reads its room sets' sizes, and with Redis every other instance
/// answers with its number (an instance gone or too slow to answer within the request
/// deadline is not counted, so a crashed instance's sockets stop counting at once).
pub async fn count<A: Adapter>(
    redis: Option<&RedisHealth>,
    op: impl Fn() -> BroadcastOperators<A>,
) -> usize {
    // This instance's count never fails: it reads the local room map only.
    if !reachable(redis) {
        return op().local().count().await.unwrap_or_default();
    }
    match op().count().await {
        Ok(n) => n,
        Err(e) => {
            let e: socketioxide_core::adapter::errors::AdapterError = e.into();
            note_failure(redis, &e);
            tracing::warn!(error = %e, "cluster count failed; counting this instance only");
            op().local().count().await.unwrap_or_default()
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
