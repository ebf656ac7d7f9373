-- Comments and the offline message queue (PostgreSQL dialect; migrations/sqlite has the
-- same schema). Times are epoch milliseconds; ids are UUID strings made by the server,
-- kept as TEXT so that one set of queries serves both databases.

-- `seq` orders a room's comments: created_at can repeat (same millisecond, or clocks of
-- several instances), seq cannot. An identity is never reused after a delete, so a page
-- cursor never points at a newer comment.
CREATE TABLE comments (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT   NOT NULL UNIQUE,
    room        TEXT   NOT NULL,
    author_id   TEXT   NOT NULL,
    author_name TEXT   NOT NULL,
    content     TEXT   NOT NULL,
    -- No foreign key: a reply keeps its parent's id after the parent is deleted.
    parent_id   TEXT,
    -- JSON array of user id strings (TEXT, not JSONB: the queries are shared with SQLite).
    mentions    TEXT   NOT NULL DEFAULT '[]',
    created_at  BIGINT NOT NULL,
    edited_at   BIGINT
);

-- list_comments: one room, newest first, paged on seq.
CREATE INDEX comments_room_seq ON comments (room, seq);

-- One row per user who was ever sent an offline message. A push updates this row first,
-- and the row lock, held to commit, serialises pushes per user: a user's messages commit
-- in seq order, so acknowledging "up to seq N" never removes a message that was not yet
-- visible when the entries were handed over.
CREATE TABLE offline_queues (
    user_id TEXT   PRIMARY KEY,
    pushed  BIGINT NOT NULL
);

-- Messages waiting for a user who had no socket connected; removed once handed over,
-- when expired, or when more than 1,000 are queued for the user.
CREATE TABLE offline_messages (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    event      TEXT   NOT NULL,
    -- JSON text of the event's payload.
    payload    TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Pending entries of a user in order, and the cap on their number.
CREATE INDEX offline_messages_user_seq ON offline_messages (user_id, seq);
-- The purge of expired entries.
CREATE INDEX offline_messages_expires_at ON offline_messages (expires_at);
