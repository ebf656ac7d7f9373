//! Document metadata and uploads in progress. The bytes are in the object store
//! ([`super::objects`]); these rows are what makes them visible.

use anyhow::Context;

use super::Store;

/// A stored document.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Document {
    /// Document id (UUID).
    pub id: String,
    /// The project it belongs to.
    pub project_id: String,
    /// The file name given at upload, without any directory.
    pub filename: String,
    /// `documentType` (default `document`).
    pub document_type: String,
    /// Size in bytes.
    pub size: i64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    /// Uploader's user id.
    pub uploaded_by: String,
    /// When the upload completed, epoch milliseconds.
    pub created_at: i64,
}

/// An upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Upload {
    /// Upload id (UUID).
    pub id: String,
    /// The uploader: only they may continue, complete or abort it.
    pub user_id: String,
    /// The project the document goes to.
    pub project_id: String,
    /// The file name.
    pub filename: String,
    /// The document type.
    pub document_type: String,
    /// Declared size in bytes.
    pub size: i64,
    /// Declared SHA-256 (lower-case hex), checked at completion.
    pub sha256: Option<String>,
    /// Bytes per chunk (the last may be shorter).
    pub chunk_size: i64,
    /// Bytes stored so far.
    pub received_bytes: i64,
    /// The chunk expected next.
    pub next_index: i64,
    /// When it started, epoch milliseconds.
    pub created_at: i64,
    /// When a chunk last arrived, epoch milliseconds; abandoned uploads are found by it.
    pub updated_at: i64,
}

const UPLOAD_COLUMNS: &str = "id, user_id, project_id, filename, document_type, size, sha256, \
     chunk_size, received_bytes, next_index, created_at, updated_at";

const DOCUMENT_COLUMNS: &str =
    "id, project_id, filename, document_type, size, sha256, uploaded_by, created_at";

impl Store {
    /// Records a new upload unless its user already has `max_per_user` in progress;
    /// returns whether it was recorded.
    pub async fn upload_create(&self, u: &Upload, max_per_user: i64) -> anyhow::Result<bool> {
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE user_id = $1")
            .bind(&u.user_id)
            .fetch_one(&self.pool)
            .await
            .context("cannot count uploads in progress")?;
        if open >= max_per_user {
            return Ok(false);
        }
        sqlx::query(&format!(
            "INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&u.id)
        .bind(&u.user_id)
        .bind(&u.project_id)
        .bind(&u.filename)
        .bind(&u.document_type)
        .bind(u.size)
        .bind(&u.sha256)
        .bind(u.chunk_size)
        .bind(u.received_bytes)
        .bind(u.next_index)
        .bind(u.created_at)
        .bind(u.updated_at)
        .execute(&self.pool)
        .await
        .context("cannot record an upload")?;
        Ok(true)
    }

    /// The upload `id`, if it is in progress.
    pub async fn upload_get(&self, id: &str) -> anyhow::Result<Option<Upload>> {
        sqlx::query_as(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("cannot read an upload")
    }

    /// Moves an upload past chunk `index` (now `received` bytes), if chunk `index` was the
    /// one expected; returns whether it did (false: another writer got there first).
    pub async fn upload_advance(
        &self,
        id: &str,
        index: i64,
        received: i64,
        now: i64,
    ) -> anyhow::Result<bool> {
        let done = sqlx::query(
            "UPDATE uploads SET next_index = $2 + 1, received_bytes = $3, updated_at = $4 \
             WHERE id = $1 AND next_index = $2",
        )
        .bind(id)
        .bind(index)
        .bind(received)
        .bind(now)
        .execute(&self.pool)
        .await
        .context("cannot advance an upload")?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes the upload for a completion until `until`, unless another completion holds
    /// it; returns whether this caller has it.
    pub async fn upload_claim_completion(
        &self,
        id: &str,
        now: i64,
        until: i64,
    ) -> anyhow::Result<bool> {
        let done = sqlx::query(
            "UPDATE uploads SET completing_until = $3 WHERE id = $1 AND completing_until < $2",
        )
        .bind(id)
        .bind(now)
        .bind(until)
        .execute(&self.pool)
        .await
        .context("cannot claim an upload")?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives up a completion's hold (it failed and may be tried again).
    pub async fn upload_release_completion(&self, id: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE uploads SET completing_until = 0 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .context("cannot release an upload")?;
        Ok(())
    }

    /// Forgets an upload; returns whether it existed.
    pub async fn upload_delete(&self, id: &str) -> anyhow::Result<bool> {
        let done = sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .context("cannot delete an upload")?;
        Ok(done.rows_affected() == 1)
    }

    /// Ids of uploads that received nothing since `before` and are not being completed
    /// at `now`, at most `limit`.
    pub async fn uploads_abandoned(
        &self,
        before: i64,
        now: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT id FROM uploads WHERE updated_at < $1 AND completing_until < $2 LIMIT $3",
        )
        .bind(before)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("cannot find abandoned uploads")
    }

    /// Makes a document visible and ends its upload, in one transaction.
    pub async fn document_publish(&self, d: &Document, upload_id: &str) -> anyhow::Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("cannot begin publishing a document")?;
        sqlx::query(&format!(
            "INSERT INTO documents ({DOCUMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&d.id)
        .bind(&d.project_id)
        .bind(&d.filename)
        .bind(&d.document_type)
        .bind(d.size)
        .bind(&d.sha256)
        .bind(&d.uploaded_by)
        .bind(d.created_at)
        .execute(&mut *tx)
        .await
        .context("cannot record a document")?;
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(upload_id)
            .execute(&mut *tx)
            .await
            .context("cannot end an upload")?;
        tx.commit()
            .await
            .context("cannot commit a published document")?;
        Ok(())
    }

    /// The document `id`.
    pub async fn document_get(&self, id: &str) -> anyhow::Result<Option<Document>> {
        sqlx::query_as(&format!(
            "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("cannot read a document")
    }

    /// A project's documents, newest first, at most `limit`.
    pub async fn documents_list(
        &self,
        project_id: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<Document>> {
        sqlx::query_as(&format!(
            "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE project_id = $1 ORDER BY seq DESC LIMIT $2"
        ))
        .bind(project_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("cannot list documents")
    }
}
