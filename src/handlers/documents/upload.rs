//! The upload handlers: start, chunk, status, complete, abort.

use anyhow::Context;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value as Json, json};
use socketioxide::adapter::Adapter;
use socketioxide_core::Value;

use super::{
    document_json,
    fields::{MaybeBinary, clean_filename, count_field, document_type, sha256_field},
    publish::{discard, publish},
    require_project,
};
use crate::{
    app::AppState,
    auth::User,
    cluster::presence::now_ms,
    error::{AppError, Code},
    handlers::{Cx, id_field},
    rooms::Id,
    store::{Upload, new_id},
};

/// How long a completion holds its upload; a crashed instance's hold runs out after it.
const COMPLETION_HOLD: Duration = Duration::from_secs(600);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartPayload {
    project_id: Id,
    filename: Json,
    size: Json,
    #[serde(default)]
    document_type: Option<Json>,
    #[serde(default)]
    sha256: Option<Json>,
}

/// `document_upload_start { projectId, filename, size, documentType?, sha256? }` →
/// `{ uploadId, chunkSize }`.
pub async fn document_upload_start<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: StartPayload = cx.payload(value)?;
    let project = p.project_id;
    let filename = clean_filename(&p.filename)?;
    let size = count_field("size", &p.size)?;
    let document_type = document_type(p.document_type.as_ref())?;
    let sha256 = sha256_field(p.sha256.as_ref())?;
    let state = &cx.app.state;
    if size > state.config.max_document_bytes {
        return Err(AppError::new(
            Code::TooLarge,
            format!(
                "Documents are limited to {} bytes",
                state.config.max_document_bytes
            ),
        ));
    }
    let user = &cx.conn.user;
    require_project(state, user, &project).await?;
    let now = now_ms();
    let upload = Upload {
        id: new_id().context("making an upload id")?,
        user_id: user.id.to_string(),
        project_id: project.to_string(),
        filename,
        document_type,
        size: size as i64,
        sha256,
        // Kept with the upload, so that a resume after a restart with another
        // UPLOAD_CHUNK_SIZE still cuts the file as it began.
        chunk_size: i64::from(state.config.upload_chunk_bytes()),
        received_bytes: 0,
        next_index: 0,
        created_at: now,
        updated_at: now,
    };
    let created = state
        .store
        .upload_create(&upload, i64::from(state.config.max_uploads_per_user))
        .await
        .context("starting an upload")?;
    if !created {
        return Err(AppError::new(
            Code::RateLimited,
            format!(
                "At most {} uploads in progress at once: complete or abort one",
                state.config.max_uploads_per_user
            ),
        ));
    }
    Ok(json!({ "uploadId": upload.id, "chunkSize": upload.chunk_size }))
}

/// An upload that exists and belongs to `user`.
async fn owned_upload(state: &AppState, user: &User, id: &Json) -> Result<Upload, AppError> {
    let id = id_field("uploadId", id)?;
    let upload = state
        .store
        .upload_get(id.as_str())
        .await
        .context("reading an upload")?
        .ok_or_else(|| AppError::new(Code::NotFound, "Upload not found"))?;
    if upload.user_id != user.id.as_str() {
        return Err(AppError::forbidden("Not your upload"));
    }
    Ok(upload)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ChunkPayload {
    #[serde(default)]
    upload_id: Json,
    #[serde(default)]
    index: Json,
    // Not an Option: the parser resolves attachments only for fields it is asked to
    // decode directly, and an Option's content is decoded past that.
    #[serde(default)]
    pub(super) data: MaybeBinary,
}

/// `document_upload_chunk { uploadId, index, data: <binary> }` → `{ receivedBytes }`;
/// the uploader gets `upload_progress`.
pub async fn document_upload_chunk<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: ChunkPayload = cx.binary_payload(value)?;
    let MaybeBinary::Binary(data) = p.data else {
        return Err(AppError::invalid("data must be binary"));
    };
    let index = count_field("index", &p.index)? as i64;
    let state = &cx.app.state;
    let upload = owned_upload(state, &cx.conn.user, &p.upload_id).await?;
    if index < upload.next_index {
        // Stored already: a resend after a lost ack.
        return Ok(json!({ "receivedBytes": upload.received_bytes }));
    }
    if index > upload.next_index {
        return Err(AppError::new(
            Code::Conflict,
            format!("Expected chunk {}", upload.next_index),
        ));
    }
    let offset = index * upload.chunk_size;
    if offset >= upload.size {
        return Err(AppError::new(
            Code::TooLarge,
            "More data than the declared size",
        ));
    }
    let expected = upload.chunk_size.min(upload.size - offset);
    if data.len() as i64 != expected {
        return Err(AppError::invalid(format!(
            "Chunk {index} must be {expected} bytes"
        )));
    }
    state
        .objects
        .put_chunk(&upload.id, index, data)
        .await
        .context("storing an upload chunk")?;
    let received = offset + expected;
    let advanced = state
        .store
        .upload_advance(&upload.id, index, received, now_ms())
        .await
        .context("advancing an upload")?;
    if !advanced {
        // Another writer moved the upload on meanwhile (the same chunk sent twice at once
        // is fine; anything else is out of order).
        let now = state
            .store
            .upload_get(&upload.id)
            .await
            .context("reading an upload")?
            .ok_or_else(|| AppError::new(Code::NotFound, "Upload not found"))?;
        if now.next_index > index {
            return Ok(json!({ "receivedBytes": now.received_bytes }));
        }
        return Err(AppError::new(
            Code::Conflict,
            format!("Expected chunk {}", now.next_index),
        ));
    }
    let percent = if upload.size == 0 {
        100
    } else {
        received * 100 / upload.size
    };
    // One `upload_progress` per accepted chunk, as the Node backend sends: clients pace
    // on it or count it, so none is merged or dropped (contract section 10, Uploads).
    let progress = json!({
        "uploadId": upload.id,
        "receivedBytes": received,
        "totalBytes": upload.size,
        "progress": percent,
    });
    if let Err(e) = cx.socket.emit("upload_progress", &progress) {
        tracing::debug!(error = %e, "could not send upload_progress");
    }
    Ok(json!({ "receivedBytes": received }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadIdPayload {
    #[serde(default)]
    upload_id: Json,
}

/// `document_upload_status { uploadId }` → `{ receivedBytes, nextIndex, totalBytes,
/// chunkSize }`: where to continue, on any instance.
pub async fn document_upload_status<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: UploadIdPayload = cx.payload(value)?;
    let u = owned_upload(&cx.app.state, &cx.conn.user, &p.upload_id).await?;
    Ok(json!({
        "receivedBytes": u.received_bytes,
        "nextIndex": u.next_index,
        "totalBytes": u.size,
        "chunkSize": u.chunk_size,
    }))
}

/// `document_upload_complete { uploadId }` → `{ document }`; `project:{p}` gets
/// `document_uploaded`.
pub async fn document_upload_complete<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: UploadIdPayload = cx.payload(value)?;
    let state = &cx.app.state;
    let u = owned_upload(state, &cx.conn.user, &p.upload_id).await?;
    if u.received_bytes != u.size {
        return Err(AppError::new(
            Code::Conflict,
            format!(
                "Upload incomplete: {} of {} bytes",
                u.received_bytes, u.size
            ),
        ));
    }
    claim_completion(state, &u, "This upload is being completed already").await?;
    match publish(cx.app, &u).await {
        Ok(doc) => Ok(json!({ "document": document_json(&doc) })),
        Err(e) => {
            if let Err(e) = state.store.upload_release_completion(&u.id).await {
                tracing::warn!(error = format!("{e:#}"), "could not release an upload");
            }
            Err(e)
        }
    }
}

/// `document_upload_abort { uploadId }` → `{}`: the upload is discarded.
pub async fn document_upload_abort<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: UploadIdPayload = cx.payload(value)?;
    let state = &cx.app.state;
    let u = owned_upload(state, &cx.conn.user, &p.upload_id).await?;
    claim_completion(state, &u, "This upload is being completed").await?;
    discard(state, &u.id).await;
    Ok(json!({}))
}

/// Takes the upload for completing or discarding, for `COMPLETION_HOLD`: a second
/// `complete` or `abort` meanwhile is `CONFLICT` with `busy`.
async fn claim_completion(state: &AppState, u: &Upload, busy: &str) -> Result<(), AppError> {
    let now = now_ms();
    let hold = now + COMPLETION_HOLD.as_millis() as i64;
    let claimed = state
        .store
        .upload_claim_completion(&u.id, now, hold)
        .await
        .context("claiming an upload")?;
    if claimed {
        Ok(())
    } else {
        Err(AppError::new(Code::Conflict, busy))
    }
}
