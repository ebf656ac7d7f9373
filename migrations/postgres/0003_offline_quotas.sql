-- Quotas of the offline queue (PostgreSQL dialect; migrations/sqlite has the same schema):
-- who queued each message, its size, and the store's total queued bytes.

-- The user whose direct message or mention this is: OFFLINE_QUOTA_PER_SENDER counts a
-- sender's entries not yet expired. NULL for entries queued before this migration.
ALTER TABLE offline_messages ADD COLUMN sender_id TEXT;
-- Bytes of the payload, counted in offline_usage while the entry is queued (0 for entries
-- queued before this migration, which were never counted).
ALTER TABLE offline_messages ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0;

-- A sender's entries, for the quota.
CREATE INDEX offline_messages_sender ON offline_messages (sender_id, expires_at);

-- Bytes queued, in 64 stripes (a stripe per hash of the recipient) so that pushes to
-- different users rarely update the same row: their sum is the total OFFLINE_MAX_BYTES
-- bounds. Every insert and delete of offline_messages adjusts it in the same transaction.
CREATE TABLE offline_usage (
    stripe BIGINT PRIMARY KEY,
    bytes  BIGINT NOT NULL
);
