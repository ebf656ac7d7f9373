-- Documents and uploads in progress (SQLite dialect; migrations/postgres has the same
-- schema). The bytes live in the object store; these rows say what is there. A document
-- row is written only once its object is complete, so a partial document is never listed.

CREATE TABLE documents (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT   NOT NULL UNIQUE,
    project_id    TEXT   NOT NULL,
    filename      TEXT   NOT NULL,
    document_type TEXT   NOT NULL,
    size          INTEGER NOT NULL,
    -- Lower-case hex of the SHA-256 of the stored bytes, computed by the server.
    sha256        TEXT   NOT NULL,
    uploaded_by   TEXT   NOT NULL,
    created_at    INTEGER NOT NULL
);

-- list_documents: one project, newest first.
CREATE INDEX documents_project_seq ON documents (project_id, seq);

-- An upload in progress. Its chunks are objects of their own in the object store, so any
-- instance can continue it; next_index advances only by a compare-and-set, so two writers
-- of one upload cannot both append.
CREATE TABLE uploads (
    id               TEXT   PRIMARY KEY,
    user_id          TEXT   NOT NULL,
    project_id       TEXT   NOT NULL,
    filename         TEXT   NOT NULL,
    document_type    TEXT   NOT NULL,
    size             INTEGER NOT NULL,
    -- The sha256 the client declared, if any.
    sha256           TEXT,
    chunk_size       INTEGER NOT NULL,
    received_bytes   INTEGER NOT NULL,
    next_index       INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    -- While a completion runs: until when it holds the upload (a crashed instance's hold
    -- runs out, and the upload can be completed again).
    completing_until INTEGER NOT NULL DEFAULT 0
);

-- The per-user cap on uploads in progress.
CREATE INDEX uploads_user ON uploads (user_id);
-- The removal of abandoned uploads.
CREATE INDEX uploads_updated_at ON uploads (updated_at);
