//! The offline queue: events kept for a user who had no socket connected (direct
//! messages, mentions), handed over on their next connect, in order, once.
//!
//! Delivery is two steps on purpose: [`Store::offline_pending`] reads entries without
//! removing them, and [`Store::offline_ack`] removes them only after they were handed to a
//! connected socket. A recipient who disconnects mid-delivery finds the rest next time.

use std::time::Duration;

use anyhow::Context;

use super::Store;

/// Entries kept per user; a push beyond drops the oldest.
pub const OFFLINE_CAP: i64 = 1000;

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

impl Store {
    /// Queues `event` with `payload_json` for `user_id`, to be delivered until `now + ttl`;
    /// returns its `seq`. Keeps at most [`OFFLINE_CAP`] entries for the user, dropping the
    /// oldest.
    pub async fn offline_push(
        &self,
        user_id: &str,
        event: &str,
        payload_json: &str,
        now: i64,
        ttl: Duration,
    ) -> anyhow::Result<i64> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
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
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .context("cannot lock an offline queue")?;
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO offline_messages (user_id, event, payload, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING seq",
        )
        .bind(user_id)
        .bind(event)
        .bind(payload_json)
        .bind(now)
        .bind(now.saturating_add(ttl_ms))
        .fetch_one(&mut *tx)
        .await
        .context("cannot queue an offline message")?;
        // Everything older than the newest OFFLINE_CAP entries (none while there are fewer:
        // the sub-query is then NULL and the comparison never true).
        sqlx::query(
            "DELETE FROM offline_messages WHERE user_id = $1 AND seq < \
             (SELECT seq FROM offline_messages WHERE user_id = $1 \
              ORDER BY seq DESC LIMIT 1 OFFSET $2)",
        )
        .bind(user_id)
        .bind(OFFLINE_CAP - 1)
        .execute(&mut *tx)
        .await
        .context("cannot trim an offline queue")?;
        tx.commit().await.context("cannot commit an offline push")?;
        Ok(seq)
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
        let done = sqlx::query("DELETE FROM offline_messages WHERE user_id = $1 AND seq <= $2")
            .bind(user_id)
            .bind(up_to_seq)
            .execute(&self.pool)
            .await
            .context("cannot acknowledge offline messages")?;
        Ok(done.rows_affected())
    }

    /// Removes every entry expired at `now`; returns how many were removed.
    pub async fn offline_purge_expired(&self, now: i64) -> anyhow::Result<u64> {
        let done = sqlx::query("DELETE FROM offline_messages WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .context("cannot purge expired offline messages")?;
        Ok(done.rows_affected())
    }
}
