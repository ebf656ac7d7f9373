//! Publishing a complete upload as a document, and discarding an upload.

use anyhow::Context;
use serde_json::json;
use socketioxide::adapter::Adapter;

use crate::{
    app::{App, AppState},
    cluster::presence::now_ms,
    error::{AppError, Code},
    handlers::ToRooms,
    rooms::{Id, Room},
    store::{Document, Upload, from_epoch_ms, new_id},
    time::iso,
};

/// Assembles, checks and publishes a complete upload.
pub(super) async fn publish<A: Adapter>(app: &App<A>, u: &Upload) -> Result<Document, AppError> {
    let state = &app.state;
    let id = new_id().context("making a document id")?;
    let chunks = (u.size + u.chunk_size - 1) / u.chunk_size;
    let (sha256, size) = state
        .objects
        .assemble(&u.id, chunks, &id)
        .await
        .context("assembling a document")?;
    let mismatch = if size as i64 != u.size {
        Some(AppError::new(
            Code::Conflict,
            "The stored chunks do not add up to the declared size; the upload was discarded",
        ))
    } else if u.sha256.as_ref().is_some_and(|s| *s != sha256) {
        Some(AppError::invalid(
            "sha256 does not match the uploaded bytes; the upload was discarded",
        ))
    } else {
        None
    };
    if let Some(e) = mismatch {
        discard(state, &u.id).await;
        if let Err(e) = state.objects.delete_document(&id).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not remove a rejected document"
            );
        }
        return Err(e);
    }
    let doc = Document {
        id,
        project_id: u.project_id.clone(),
        filename: u.filename.clone(),
        document_type: u.document_type.clone(),
        size: u.size,
        sha256,
        uploaded_by: u.user_id.clone(),
        created_at: now_ms(),
    };
    state
        .store
        .document_publish(&doc, &u.id)
        .await
        .context("publishing a document")?;
    if let Err(e) = state.objects.delete_upload(&u.id).await {
        // The document is complete; leftover chunks only take space.
        tracing::warn!(
            error = format!("{e:#}"),
            "could not remove an upload's chunks"
        );
    }
    let room = Room::Project(Id::from_trusted(&doc.project_id)).to_string();
    let to_room = ToRooms::from_server(app, vec![room]);
    let event = json!({
        "projectId": doc.project_id,
        "documentId": doc.id,
        "documentType": doc.document_type,
        "filename": doc.filename,
        "uploadedBy": doc.uploaded_by,
        "size": doc.size,
        "timestamp": iso(from_epoch_ms(doc.created_at)),
    });
    if let Err(e) = to_room.emit("document_uploaded", &event).await {
        tracing::warn!(error = %e, "could not announce a document");
    }
    Ok(doc)
}

/// Removes an upload: its row, then its chunks.
pub(super) async fn discard(state: &AppState, id: &str) {
    if let Err(e) = state.store.upload_delete(id).await {
        tracing::warn!(error = format!("{e:#}"), "could not remove an upload");
    }
    if let Err(e) = state.objects.delete_upload(id).await {
        tracing::warn!(
            error = format!("{e:#}"),
            "could not remove an upload's chunks"
        );
    }
}
