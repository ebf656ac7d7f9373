//! Documents: chunked uploads (resumable on any instance), streams paced by the client's
//! acks, and `list_documents`.
//!
//! An upload's state is a row in the SQL store and its chunks are objects in the object
//! store, each written as it arrives; completion assembles them into the document, checks
//! size and sha256, and only then writes the document's row, so a partial document is
//! never listed or streamed. A stream keeps at most `STREAM_WINDOW` chunks waiting for
//! the client's ack: a client that stops reading stops the stream, not the server's memory.
//!
//! `fields` validates the payloads' fields, `upload` and `publish` take an upload from its
//! start to its document, `stream` sends documents, `sweeper` removes abandoned uploads.

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use socketioxide::adapter::Adapter;
use socketioxide_core::Value;

use super::{Cx, invalid_id};
use crate::{
    app::AppState,
    auth::User,
    error::AppError,
    rooms::{Id, Room},
    store::{Document, from_epoch_ms},
    time::iso,
};

mod fields;
mod publish;
mod stream;
mod sweeper;
mod upload;

pub use stream::{document_stream, document_stream_cancel};
pub use sweeper::sweep_every;
pub use upload::{
    document_upload_abort, document_upload_chunk, document_upload_complete, document_upload_start,
    document_upload_status,
};

/// Most documents `list_documents` returns.
const LIST_LIMIT: i64 = 1000;

/// `FORBIDDEN` unless `user` may use the project's room, with the documents' message.
pub(super) async fn require_project(
    state: &AppState,
    user: &User,
    project: &Id,
) -> Result<(), AppError> {
    state
        .access
        .require(user, &Room::Project(project.clone()))
        .await
        .map_err(|_| AppError::forbidden("No access to this project"))
}

pub(super) fn document_json(d: &Document) -> Json {
    json!({
        "id": d.id,
        "projectId": d.project_id,
        "filename": d.filename,
        "documentType": d.document_type,
        "size": d.size,
        "sha256": d.sha256,
        "uploadedBy": d.uploaded_by,
        "timestamp": iso(from_epoch_ms(d.created_at)),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProjectPayload {
    // Optional so that a missing one is answered as an invalid one, as it always was.
    #[serde(default)]
    project_id: Option<Id>,
}

/// `list_documents { projectId }` → `{ documents }`, newest first.
pub async fn list_documents<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: ProjectPayload = cx.payload(value)?;
    let project = p.project_id.ok_or_else(|| invalid_id("projectId"))?;
    require_project(&cx.app.state, &cx.conn.user, &project).await?;
    let docs = cx
        .app
        .state
        .store
        .documents_list(project.as_str(), LIST_LIMIT)
        .await
        .context("listing documents")?;
    Ok(json!({ "documents": docs.iter().map(document_json).collect::<Vec<_>>() }))
}
