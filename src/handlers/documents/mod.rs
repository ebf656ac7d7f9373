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

use serde::Deserialize;
use serde_json::{Value as Json, json};
use socketioxide::adapter::Adapter;
use socketioxide_core::Value;

use super::{Cx, id_field};
use crate::{
    auth::User,
    error::AppError,
    rooms::{Id, Room},
    server::AppState,
    store::{Document, from_epoch_ms},
    time::iso,
};

mod fields;
mod publish;
mod stream;
mod sweeper;
mod upload;

pub use stream::{StreamBudget, Streams, document_stream, document_stream_cancel};
pub use sweeper::sweep_every;
pub use upload::{
    document_upload_abort, document_upload_chunk, document_upload_complete, document_upload_start,
    document_upload_status,
};

/// Most documents `list_documents` returns.
const LIST_LIMIT: i64 = 1000;

pub(super) async fn require_project(
    state: &AppState,
    user: &User,
    project: &Id,
) -> Result<(), AppError> {
    if state
        .access
        .allows(user, &Room::Project(project.clone()))
        .await
    {
        Ok(())
    } else {
        Err(AppError::forbidden("No access to this project"))
    }
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
    #[serde(default)]
    project_id: Json,
}

/// `list_documents { projectId }` → `{ documents }`, newest first.
pub async fn list_documents<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: ProjectPayload = cx.payload(value)?;
    let project = id_field("projectId", &p.project_id)?;
    require_project(&cx.app.state, &cx.conn.user, &project).await?;
    let docs = cx
        .app
        .state
        .store
        .documents_list(project.as_str(), LIST_LIMIT)
        .await
        .map_err(|e| AppError::internal("listing documents", format!("{e:#}")))?;
    Ok(json!({ "documents": docs.iter().map(document_json).collect::<Vec<_>>() }))
}
