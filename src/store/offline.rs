//! The offline queue: events kept for a user who had no socket connected (direct
//! messages, mentions), handed over on their next connect, in order, once.
//!
//! Delivery is two steps on purpose: [`Store::offline_pending`] reads entries without
//! removing them, and [`Store::offline_ack`] removes them only after they were handed to a
//! connected socket. A recipient who disconnects mid-delivery finds the rest next time.
//!
//! The queue is bounded three ways: per recipient (the newest [`OFFLINE_CAP`], or fewer for
//! a recipient never seen, as the caller decides), per sender ([`Store::offline_usage`]
//! counts a sender's entries against `OFFLINE_QUOTA_PER_SENDER`), and in total: every entry
//! carries its size, and `offline_usage` keeps the sum of the sizes queued, updated in the
//! same transaction as each insert and delete, so the total is read from 64 small rows
//! rather than summed over the queue.

use std::time::Duration;

use anyhow::Context;
use sqlx::{Any, Transaction};

use super::Store;

/// Entries kept per user; a push beyond drops the oldest.
pub const OFFLINE_CAP: i64 = 1000;

/// Rows of `offline_usage`: pushes to different users rarely update the same one.
const USAGE_STRIPES: u64 = 64;

/// Expired entries removed per transaction by [`Store::offline_purge_expired`].
const PURGE_BATCH: i64 = 1000;

/// A queued event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OfflineMessage {
    /// Position in the queue; [`Store::offline_ack`] takes the last one handed over.
    pub seq: i64,
    /// The event name.
    pub event: String,
    /// The event's payload, JSON text.
    pub payload: String,
    /// When it was queued, epoch milliseconds.
    pub created_at: i64,
    /// When it stops being delivered, epoch milliseconds.
    pub expires_at: i64,
}

/// An event to queue for a user, see [`Store::offline_queue`].
#[derive(Debug, Clone, Copy)]
pub struct NewOffline<'a> {
    /// The recipient.
    pub user_id: &'a str,
    /// Who sent it (counted against their quota).
    pub sender_id: Option<&'a str>,
    /// The event name.
    pub event: &'a str,
    /// The event's payload, JSON text.
    pub payload_json: &'a str,
    /// Now, epoch milliseconds.
    pub now: i64,
    /// How long it is delivered.
    pub ttl: Duration,
    /// Entries kept for this recipient; the oldest beyond go.
    pub cap: i64,
}

/// What the quotas are measured against, see [`Store::offline_usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineUsage {
    /// Entries of the sender not expired.
    pub sender_queued: i64,
    /// Payload bytes queued in the whole store.
    pub total_bytes: i64,
}

/// The `offline_usage` row counting `user_id`'s entries: FNV-1a, stable across instances
/// and versions (the rows outlive the process).
fn stripe(user_id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % USAGE_STRIPES) as i64
}

/// Adds `delta` bytes to `user_id`'s stripe of the total.
async fn count_bytes(
    tx: &mut Transaction<'_, Any>,
    user_id: &str,
    delta: i64,
) -> anyhow::Result<()> {
    if delta == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO offline_usage (stripe, bytes) VALUES ($1, $2) \
         ON CONFLICT (stripe) DO UPDATE SET bytes = offline_usage.bytes + excluded.bytes",
    )
    .bind(stripe(user_id))
    .bind(delta)
    .execute(&mut **tx)
    .await
    .context("cannot count queued offline bytes")?;
    Ok(())
}

impl Store {
    /// Queues `event` with `payload_json` for `user_id`, to be delivered until `now + ttl`;
    /// returns its `seq`. Keeps at most [`OFFLINE_CAP`] entries for the user, dropping the
    /// oldest. No sender is recorded: see [`Store::offline_queue`].
    pub async fn offline_push(
        &self,
        user_id: &str,
        event: &str,
        payload_json: &str,
        now: i64,
        ttl: Duration,
    ) -> anyhow::Result<i64> {
        self.offline_queue(&NewOffline {
            user_id,
            sender_id: None,
            event,
            payload_json,
            now,
            ttl,
            cap: OFFLINE_CAP,
        })
        .await
    }

    /// Queues an event for a user, keeping at most `cap` (and at most [`OFFLINE_CAP`])
    /// entries for them, dropping the oldest; returns its `seq`. The quotas are the
    /// caller's to check first, with [`Store::offline_usage`].
    pub async fn offline_queue(&self, m: &NewOffline<'_>) -> anyhow::Result<i64> {
        let ttl_ms = i64::try_from(m.ttl.as_millis()).unwrap_or(i64::MAX);
        let bytes = i64::try_from(m.payload_json.len()).unwrap_or(i64::MAX);
        let cap = m.cap.clamp(1, OFFLINE_CAP);
        let mut tx = self
            .pool
            .begin()
            .await
            .context("cannot begin an offline push")?;
        // First, so that this transaction holds the user's queue row until it commits:
        // pushes to one user commit one after the other, in seq order (see the migration).
        sqlx::query(
            "INSERT INTO offline_queues (user_id, pushed) VALUES ($1, 1) \
             ON CONFLICT (user_id) DO UPDATE SET pushed = offline_queues.pushed + 1",
        )
        .bind(m.user_id)
        .execute(&mut *tx)
        .await
        .context("cannot lock an offline queue")?;
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO offline_messages \
             (user_id, sender_id, event, payload, bytes, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
        )
        .bind(m.user_id)
        .bind(m.sender_id)
        .bind(m.event)
        .bind(m.payload_json)
        .bind(bytes)
        .bind(m.now)
        .bind(m.now.saturating_add(ttl_ms))
        .fetch_one(&mut *tx)
        .await
        .context("cannot queue an offline message")?;
        // Everything older than the newest `cap` entries (none while there are fewer: the
        // sub-query is then NULL and the comparison never true).
        let dropped: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM offline_messages WHERE user_id = $1 AND seq < \
             (SELECT seq FROM offline_messages WHERE user_id = $1 \
              ORDER BY seq DESC LIMIT 1 OFFSET $2) RETURNING bytes",
        )
        .bind(m.user_id)
        .bind(cap - 1)
        .fetch_all(&mut *tx)
        .await
        .context("cannot trim an offline queue")?;
        count_bytes(&mut tx, m.user_id, bytes - dropped.iter().sum::<i64>()).await?;
        tx.commit().await.context("cannot commit an offline push")?;
        Ok(seq)
    }

    /// How many entries `sender_id` has queued that are not expired at `now`, and how many
    /// payload bytes the store holds in all: one round trip, for the quotas.
    pub async fn offline_usage(&self, sender_id: &str, now: i64) -> anyhow::Result<OfflineUsage> {
        let (sender_queued, total_bytes): (i64, i64) = sqlx::query_as(
            "SELECT \
             (SELECT COUNT(*) FROM offline_messages WHERE sender_id = $1 AND expires_at > $2), \
             (SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM offline_usage)",
        )
        .bind(sender_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .context("cannot read the offline queue's usage")?;
        Ok(OfflineUsage {
            sender_queued,
            total_bytes,
        })
    }

    /// Up to `limit` of `user_id`'s entries not expired at `now`, oldest first. Nothing is
    /// removed: call [`Store::offline_ack`] once they were handed over.
    pub async fn offline_pending(
        &self,
        user_id: &str,
        now: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<OfflineMessage>> {
        sqlx::query_as(
            "SELECT seq, event, payload, created_at, expires_at FROM offline_messages \
             WHERE user_id = $1 AND expires_at > $2 ORDER BY seq LIMIT $3",
        )
        .bind(user_id)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .context("cannot read pending offline messages")
    }

    /// Removes `user_id`'s entries up to and including `up_to_seq` (the last one handed
    /// over); returns how many were removed.
    pub async fn offline_ack(&self, user_id: &str, up_to_seq: i64) -> anyhow::Result<u64> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("cannot begin an offline acknowledgement")?;
        let removed: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM offline_messages WHERE user_id = $1 AND seq <= $2 RETURNING bytes",
        )
        .bind(user_id)
        .bind(up_to_seq)
        .fetch_all(&mut *tx)
        .await
        .context("cannot acknowledge offline messages")?;
        count_bytes(&mut tx, user_id, -removed.iter().sum::<i64>()).await?;
        tx.commit()
            .await
            .context("cannot commit an offline acknowledgement")?;
        Ok(removed.len() as u64)
    }

    /// Removes every entry expired at `now`, a batch per transaction, and the queue rows of
    /// users left with no entry (a flood of never-seen recipients leaves nothing behind);
    /// returns how many entries were removed.
    pub async fn offline_purge_expired(&self, now: i64) -> anyhow::Result<u64> {
        let mut total = 0;
        loop {
            let mut tx = self
                .pool
                .begin()
                .await
                .context("cannot begin an offline purge")?;
            let removed: Vec<(String, i64)> = sqlx::query_as(
                "DELETE FROM offline_messages WHERE seq IN \
                 (SELECT seq FROM offline_messages WHERE expires_at <= $1 LIMIT $2) \
                 RETURNING user_id, bytes",
            )
            .bind(now)
            .bind(PURGE_BATCH)
            .fetch_all(&mut *tx)
            .await
            .context("cannot purge expired offline messages")?;
            // One update per stripe, in stripe order (two purges never wait on each other
            // in opposite orders).
            let mut per_stripe = std::collections::BTreeMap::<i64, (i64, &str)>::new();
            for (user, bytes) in &removed {
                per_stripe.entry(stripe(user)).or_insert((0, user)).0 += bytes;
            }
            for (bytes, user) in per_stripe.values() {
                count_bytes(&mut tx, user, -bytes).await?;
            }
            tx.commit()
                .await
                .context("cannot commit an offline purge")?;
            total += removed.len() as u64;
            if (removed.len() as i64) < PURGE_BATCH {
                break;
            }
        }
        // A queue row only orders pushes; a user with no entry needs none (the next push
        // makes it again).
        sqlx::query(
            "DELETE FROM offline_queues WHERE NOT EXISTS \
             (SELECT 1 FROM offline_messages m WHERE m.user_id = offline_queues.user_id)",
        )
        .execute(&self.pool)
        .await
        .context("cannot remove empty offline queues")?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_are_stable_and_spread() {
        // Fixed values: the rows are shared by instances of different versions.
        assert_eq!(stripe(""), (0xcbf2_9ce4_8422_2325u64 % 64) as i64);
        let used: std::collections::HashSet<i64> =
            (0..1000).map(|n| stripe(&format!("user{n}"))).collect();
        assert_eq!(used.len(), 64);
    }
}
