-- Comments and the offline message queue (SQLite dialect; migrations/postgres has the
-- same schema). Times are epoch milliseconds; ids are UUID strings made by the server.

-- `seq` orders a room's comments: created_at can repeat (same millisecond, or clocks of
-- several instances), seq cannot. AUTOINCREMENT keeps seq from being reused after a
-- delete, so a page cursor never points at a newer comment.
CREATE TABLE comments (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    room        TEXT    NOT NULL,
    author_id   TEXT    NOT NULL,
    author_name TEXT    NOT NULL,
    content     TEXT    NOT NULL,
    -- No foreign key: a reply keeps its parent's id after the parent is deleted.
    parent_id   TEXT,
    -- JSON array of user id strings.
    mentions    TEXT    NOT NULL DEFAULT '[]',
    created_at  INTEGER NOT NULL,
    edited_at   INTEGER
);

-- list_comments: one room, newest first, paged on seq.
CREATE INDEX comments_room_seq ON comments (room, seq);

-- One row per user who was ever sent an offline message. A push updates this row first,
-- which serialises pushes per user (on PostgreSQL the row lock is held to commit), so a
-- user's messages commit in seq order and acknowledging "up to seq N" never removes a
-- message that had not yet been visible when the entries were handed over.
CREATE TABLE offline_queues (
    user_id TEXT    PRIMARY KEY,
    pushed  INTEGER NOT NULL
);

-- Messages waiting for a user who had no socket connected; removed once handed over,
-- when expired, or when more than 1,000 are queued for the user.
CREATE TABLE offline_messages (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    -- JSON text of the event's payload.
    payload    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

-- Pending entries of a user in order, and the cap on their number.
CREATE INDEX offline_messages_user_seq ON offline_messages (user_id, seq);
-- The purge of expired entries.
CREATE INDEX offline_messages_expires_at ON offline_messages (expires_at);
