//! Documents: chunked uploads (resumable on any instance), streams paced by the client's
//! acks, and `list_documents`.
//!
//! An upload's state is a row in the SQL store and its chunks are objects in the object
//! store, each written as it arrives; completion assembles them into the document, checks
//! size and sha256, and only then writes the document's row, so a partial document is
//! never listed or streamed. A stream keeps at most `STREAM_WINDOW` chunks waiting for
//! the client's ack: a client that stops reading stops the stream, not the server's memory.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use socketioxide::{SendError, SocketError, adapter::Adapter, socket::Socket};
use socketioxide_core::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{AfterReply, Cx, id_field};
use crate::{
    auth::User,
    cluster::{self, presence::now_ms},
    error::{AppError, Code},
    rooms::{Id, Room},
    server::{App, AppState},
    store::{Document, Upload, from_epoch_ms, new_id},
    time::iso,
};

/// Stream chunk sizes are clamped to this range.
const STREAM_CHUNK_MIN: u64 = 1024;
const STREAM_CHUNK_MAX: u64 = 1024 * 1024;
/// Stream chunk size when the client names none.
const STREAM_CHUNK_DEFAULT: u64 = 65_536;
/// How long a completion holds its upload; a crashed instance's hold runs out after it.
const COMPLETION_HOLD: Duration = Duration::from_secs(600);
/// Most documents `list_documents` returns.
const LIST_LIMIT: i64 = 1000;

/// The streams of one socket (in its `Conn`): aborted on cancel, replacement,
/// disconnect, and when the socket is dropped.
#[derive(Default)]
pub struct Streams(Mutex<Vec<StreamEntry>>);

struct StreamEntry {
    document: String,
    token: u64,
    task: tokio::task::AbortHandle,
}

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StreamEntry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the stream of `document`, if any; returns whether there was one.
    fn cancel(&self, document: &str) -> bool {
        let mut streams = self.lock();
        let before = streams.len();
        streams.retain(|s| {
            let keep = s.document != document;
            if !keep {
                s.task.abort();
            }
            keep
        });
        streams.len() != before
    }

    /// Stops every stream.
    pub fn cancel_all(&self) {
        for s in self.lock().drain(..) {
            s.task.abort();
        }
    }

    fn running(&self) -> usize {
        self.lock().len()
    }

    fn finished(&self, token: u64) {
        self.lock().retain(|s| s.token != token);
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.cancel_all();
    }
}

/// The instance's budget of streamed bytes sent and not yet acknowledged
/// (`STREAM_BUDGET_BYTES`), shared by every stream: what clients that do not ack can make
/// the server hold is this, whatever the number of sockets and streams.
#[derive(Debug)]
pub struct StreamBudget(Option<(Arc<Semaphore>, u64)>);

impl StreamBudget {
    /// A budget of `bytes` (0: none).
    pub fn new(bytes: u64) -> Self {
        let total = bytes.min(Semaphore::MAX_PERMITS as u64);
        StreamBudget((total > 0).then(|| (Arc::new(Semaphore::new(total as usize)), total)))
    }

    /// The permits a chunk of `bytes` takes: a chunk larger than the whole budget takes
    /// all of it, so that it can still go out alone.
    fn cost(total: u64, bytes: u64) -> u32 {
        u32::try_from(bytes.min(total)).unwrap_or(u32::MAX)
    }

    /// Whether a chunk of `bytes` would have to wait for room now.
    fn is_full(&self, bytes: u64) -> bool {
        self.0.as_ref().is_some_and(|(sem, total)| {
            (sem.available_permits() as u64) < u64::from(Self::cost(*total, bytes))
        })
    }

    /// Room for a chunk of `bytes` now: `Err` when there is none, `Ok(None)` without a
    /// budget.
    fn try_take(&self, bytes: u64) -> Result<Option<OwnedSemaphorePermit>, ()> {
        match &self.0 {
            None => Ok(None),
            Some((sem, total)) => sem
                .clone()
                .try_acquire_many_owned(Self::cost(*total, bytes))
                .map(Some)
                .map_err(|_| ()),
        }
    }

    /// Room for a chunk of `bytes`, waiting for it (`None` without a budget).
    async fn take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let (sem, total) = self.0.as_ref()?;
        sem.clone()
            .acquire_many_owned(Self::cost(*total, bytes))
            .await
            .ok()
    }
}

async fn require_project(state: &AppState, user: &User, project: &Id) -> Result<(), AppError> {
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

/// A non-negative integer field, else `INVALID_PAYLOAD` naming it.
fn count_field(field: &str, v: &Json) -> Result<u64, AppError> {
    v.as_u64()
        .filter(|n| *n <= (1u64 << 53))
        .ok_or_else(|| AppError::invalid(format!("{field} must be a non-negative integer")))
}

fn document_json(d: &Document) -> Json {
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

/// The file name without directories, control, bidi or other invisible characters
/// ([`crate::sanitize::is_invisible`]), 1 to 255 characters. A name that is blank once
/// they are gone is `INVALID_PAYLOAD`, as a blank one is (and as in the Node backend).
fn clean_filename(v: &Json) -> Result<String, AppError> {
    let Some(raw) = v.as_str() else {
        return Err(AppError::invalid("filename is required"));
    };
    let unix = raw.replace('\\', "/");
    let base = unix.rsplit('/').next().unwrap_or("");
    let name: String = base
        .chars()
        .filter(|c| !crate::sanitize::is_invisible(*c))
        .collect();
    let name = name.trim();
    if name.is_empty() || name == "." || name == ".." || name.chars().count() > 255 {
        return Err(AppError::invalid("filename must be 1 to 255 characters"));
    }
    Ok(name.to_owned())
}

fn document_type(v: Option<&Json>) -> Result<String, AppError> {
    match v.filter(|v| !v.is_null()) {
        None => Ok("document".to_owned()),
        Some(Json::String(s))
            if (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_./-".contains(&b)) =>
        {
            Ok(s.clone())
        }
        Some(_) => Err(AppError::invalid(
            "documentType must be 1 to 64 characters of [A-Za-z0-9_./-]",
        )),
    }
}

fn sha256_field(v: Option<&Json>) -> Result<Option<String>, AppError> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(Json::String(s)) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Some(s.to_ascii_lowercase()))
        }
        Some(_) => Err(AppError::invalid("sha256 must be 64 hex digits")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartPayload {
    project_id: Json,
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
    let project = id_field("projectId", &p.project_id)?;
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
        id: new_id().map_err(|e| AppError::internal("making an upload id", e))?,
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
        .map_err(|e| AppError::internal("starting an upload", format!("{e:#}")))?;
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
        .map_err(|e| AppError::internal("reading an upload", format!("{e:#}")))?
        .ok_or_else(|| AppError::new(Code::NotFound, "Upload not found"))?;
    if upload.user_id != user.id.as_str() {
        return Err(AppError::forbidden("Not your upload"));
    }
    Ok(upload)
}

/// A field that is binary data (a Socket.IO attachment) or something else (or missing).
#[derive(Default)]
enum MaybeBinary {
    Binary(Bytes),
    #[default]
    Other,
}

impl<'de> Deserialize<'de> for MaybeBinary {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MaybeBinary;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("binary data")
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Binary(Bytes::from(v)))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Binary(Bytes::copy_from_slice(v)))
            }
            fn visit_str<E>(self, _: &str) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_unit<E>(self) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_none<E>(self) -> Result<MaybeBinary, E> {
                Ok(MaybeBinary::Other)
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut s: S,
            ) -> Result<MaybeBinary, S::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeBinary::Other)
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<MaybeBinary, M::Error> {
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MaybeBinary::Other)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChunkPayload {
    #[serde(default)]
    upload_id: Json,
    #[serde(default)]
    index: Json,
    // Not an Option: the parser resolves attachments only for fields it is asked to
    // decode directly, and an Option's content is decoded past that.
    #[serde(default)]
    data: MaybeBinary,
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
        .map_err(|e| AppError::internal("storing an upload chunk", format!("{e:#}")))?;
    let received = offset + expected;
    let advanced = state
        .store
        .upload_advance(&upload.id, index, received, now_ms())
        .await
        .map_err(|e| AppError::internal("advancing an upload", format!("{e:#}")))?;
    if !advanced {
        // Another writer moved the upload on meanwhile (the same chunk sent twice at once
        // is fine; anything else is out of order).
        let now = state
            .store
            .upload_get(&upload.id)
            .await
            .map_err(|e| AppError::internal("reading an upload", format!("{e:#}")))?
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
    let now = now_ms();
    let hold = now + COMPLETION_HOLD.as_millis() as i64;
    let claimed = state
        .store
        .upload_claim_completion(&u.id, now, hold)
        .await
        .map_err(|e| AppError::internal("claiming an upload", format!("{e:#}")))?;
    if !claimed {
        return Err(AppError::new(
            Code::Conflict,
            "This upload is being completed already",
        ));
    }
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

/// Assembles, checks and publishes a complete upload.
async fn publish<A: Adapter>(app: &App<A>, u: &Upload) -> Result<Document, AppError> {
    let state = &app.state;
    let id = new_id().map_err(|e| AppError::internal("making a document id", e))?;
    let chunks = (u.size + u.chunk_size - 1) / u.chunk_size;
    let (sha256, size) = state
        .objects
        .assemble(&u.id, chunks, &id)
        .await
        .map_err(|e| AppError::internal("assembling a document", format!("{e:#}")))?;
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
        .map_err(|e| AppError::internal("publishing a document", format!("{e:#}")))?;
    if let Err(e) = state.objects.delete_upload(&u.id).await {
        // The document is complete; leftover chunks only take space.
        tracing::warn!(
            error = format!("{e:#}"),
            "could not remove an upload's chunks"
        );
    }
    let room = Room::Project(Id::from_trusted(&doc.project_id)).to_string();
    let event = json!({
        "projectId": doc.project_id,
        "documentId": doc.id,
        "documentType": doc.document_type,
        "filename": doc.filename,
        "uploadedBy": doc.uploaded_by,
        "size": doc.size,
        "timestamp": iso(from_epoch_ms(doc.created_at)),
    });
    if let Err(e) = cluster::emit(
        state,
        || app.io.to(room.clone()),
        "document_uploaded",
        &event,
    )
    .await
    {
        tracing::warn!(error = %e, "could not announce a document");
    }
    Ok(doc)
}

/// Removes an upload: its row, then its chunks.
async fn discard(state: &AppState, id: &str) {
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

/// `document_upload_abort { uploadId }` → `{}`: the upload is discarded.
pub async fn document_upload_abort<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: UploadIdPayload = cx.payload(value)?;
    let state = &cx.app.state;
    let u = owned_upload(state, &cx.conn.user, &p.upload_id).await?;
    let now = now_ms();
    let claimed = state
        .store
        .upload_claim_completion(&u.id, now, now + COMPLETION_HOLD.as_millis() as i64)
        .await
        .map_err(|e| AppError::internal("claiming an upload", format!("{e:#}")))?;
    if !claimed {
        return Err(AppError::new(
            Code::Conflict,
            "This upload is being completed",
        ));
    }
    discard(state, &u.id).await;
    Ok(json!({}))
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamPayload {
    #[serde(default)]
    document_id: Json,
    #[serde(default)]
    chunk_size: Option<Json>,
    #[serde(default)]
    offset: Option<Json>,
}

/// `document_stream { documentId, chunkSize?, offset? }` → `{ size, totalChunks, sha256 }`,
/// then `document_chunk` events paced by the client's acks, then `document_complete`.
pub async fn document_stream<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<(Json, Option<AfterReply>), AppError> {
    let p: StreamPayload = cx.payload(value)?;
    let id = id_field("documentId", &p.document_id)?;
    let chunk = match p.chunk_size.as_ref().filter(|v| !v.is_null()) {
        None => STREAM_CHUNK_DEFAULT,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n.clamp(STREAM_CHUNK_MIN, STREAM_CHUNK_MAX),
            _ => return Err(AppError::invalid("chunkSize must be a positive integer")),
        },
    };
    let state = &cx.app.state;
    let doc = state
        .store
        .document_get(id.as_str())
        .await
        .map_err(|e| AppError::internal("reading a document", format!("{e:#}")))?
        .ok_or_else(|| AppError::new(Code::NotFound, "Document not found"))?;
    require_project(state, &cx.conn.user, &Id::from_trusted(&doc.project_id)).await?;
    let size = doc.size as u64;
    let offset = match p.offset.as_ref().filter(|v| !v.is_null()) {
        None => 0,
        Some(v) => match v.as_u64() {
            Some(o) if o <= size && o % chunk == 0 => o,
            _ => {
                return Err(AppError::invalid(
                    "offset must be a multiple of chunkSize within the document",
                ));
            }
        },
    };
    let streams = &cx.conn.streams;
    // A new stream of a document replaces the one running; only others count.
    streams.cancel(&doc.id);
    let max = state.config.max_streams_per_socket as usize;
    if streams.running() >= max {
        return Err(AppError::new(
            Code::RateLimited,
            format!("At most {max} streams at once on one connection"),
        ));
    }
    // Past the instance's budget of unacknowledged stream bytes, a new stream is refused
    // rather than queued behind clients that may never ack.
    if state
        .stream_budget
        .is_full(chunk.min(size.saturating_sub(offset)).max(1))
    {
        return Err(AppError::new(
            Code::RateLimited,
            "The server is streaming all it can; try again shortly",
        ));
    }
    let total = size.div_ceil(chunk);
    let ack = json!({ "size": doc.size, "totalChunks": total, "sha256": doc.sha256 });
    let plan = Stream {
        doc,
        chunk,
        total,
        first: offset / chunk,
        window: state.config.stream_window.max(1) as usize,
        ack_timeout: Duration::from_millis(state.config.stream_ack_timeout_ms),
    };
    // Started once the ack has gone out, so that the client has it before any chunk.
    let (app, socket, conn) = (cx.app.clone(), cx.raw_socket().clone(), cx.conn_arc());
    let start: AfterReply = Box::new(move || {
        let token = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
        let document = plan.doc.id.clone();
        let task = {
            let conn = conn.clone();
            tokio::spawn(async move {
                plan.run(&app, &socket).await;
                conn.streams.finished(token);
            })
        };
        conn.streams.lock().push(StreamEntry {
            document,
            token,
            task: task.abort_handle(),
        });
    });
    Ok((ack, Some(start)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DocumentIdPayload {
    #[serde(default)]
    document_id: Json,
}

/// `document_stream_cancel { documentId }` → `{}` (also when nothing was streaming).
pub async fn document_stream_cancel<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: DocumentIdPayload = cx.payload(value)?;
    let id = id_field("documentId", &p.document_id)?;
    cx.conn.streams.cancel(id.as_str());
    Ok(json!({}))
}

/// One document stream.
struct Stream {
    doc: Document,
    chunk: u64,
    total: u64,
    first: u64,
    window: usize,
    ack_timeout: Duration,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChunkOut<'a> {
    document_id: &'a str,
    chunk_index: u64,
    total_chunks: u64,
    offset: u64,
    data: Bytes,
}

impl Stream {
    /// Sends the chunks, never more than `window` waiting for their ack, then
    /// `document_complete`. Ends early when the socket goes, or when the client leaves a
    /// chunk unacknowledged for `ack_timeout`.
    async fn run<A: Adapter>(self, app: &App<A>, socket: &Arc<Socket<A>>) {
        let size = self.doc.size as u64;
        let mut next = self.first;
        let mut waiting = FuturesUnordered::new();
        loop {
            while waiting.len() < self.window && next < self.total {
                let offset = next * self.chunk;
                let end = (offset + self.chunk).min(size);
                // Room in the instance's budget: while chunks of this stream wait for their
                // acks, wait for those (they give room back) rather than for the budget.
                let budget = &app.state.stream_budget;
                let permit = match budget.try_take(end - offset) {
                    Ok(permit) => permit,
                    Err(()) if !waiting.is_empty() => break,
                    Err(()) => {
                        match tokio::time::timeout(self.ack_timeout, budget.take(end - offset))
                            .await
                        {
                            Ok(permit) => permit,
                            Err(_) => {
                                tracing::debug!(document = %self.doc.id, "stream ended: no room in the stream budget");
                                return;
                            }
                        }
                    }
                };
                let data = match app.state.objects.read(&self.doc.id, offset..end).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(document = %self.doc.id, error = format!("{e:#}"), "cannot read a document for a stream");
                        return;
                    }
                };
                let out = ChunkOut {
                    document_id: &self.doc.id,
                    chunk_index: next,
                    total_chunks: self.total,
                    offset,
                    data,
                };
                match socket
                    .timeout(self.ack_timeout)
                    .emit_with_ack::<_, serde::de::IgnoredAny>("document_chunk", &out)
                {
                    // The chunk's share of the budget is given back with its ack (or
                    // when the stream ends).
                    Ok(ack) => waiting.push(FutureExt::map(ack, move |answer| {
                        drop(permit);
                        answer
                    })),
                    // The client's buffer is full: wait for an ack before sending more.
                    Err(SendError::Socket(SocketError::InternalChannelFull))
                        if !waiting.is_empty() =>
                    {
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(document = %self.doc.id, error = %e, "stream ended: cannot send");
                        return;
                    }
                }
                next += 1;
            }
            match waiting.next().await {
                None => break,
                Some(Ok(_)) | Some(Err(socketioxide::AckError::Decode(_))) => {}
                Some(Err(e)) => {
                    tracing::debug!(document = %self.doc.id, error = %e, "stream ended: no ack from the client");
                    return;
                }
            }
        }
        let done =
            json!({ "documentId": self.doc.id, "size": self.doc.size, "sha256": self.doc.sha256 });
        if let Err(e) = socket.emit("document_complete", &done) {
            tracing::debug!(error = %e, "could not send document_complete");
        }
    }
}

/// Removes abandoned uploads (nothing received for `UPLOAD_TTL_MS`), checking every
/// quarter of that time (at most every minute), so an upload outlives its TTL by a quarter
/// at most.
pub async fn sweep_every(state: Arc<AppState>) {
    let period = Duration::from_millis(state.config.upload_ttl_ms / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms();
        let before = now - state.config.upload_ttl_ms as i64;
        match state.store.uploads_abandoned(before, now, 100).await {
            Ok(ids) => {
                for id in &ids {
                    discard(&state, id).await;
                }
                if !ids.is_empty() {
                    tracing::info!(removed = ids.len(), "abandoned uploads removed");
                }
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "could not look for abandoned uploads"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_directories_and_control_characters() {
        let name = |s: &str| clean_filename(&json!(s));
        assert_eq!(name("plans/A-101.pdf").unwrap(), "A-101.pdf");
        assert_eq!(name("C:\\site\\report.docx").unwrap(), "report.docx");
        assert_eq!(name("  a\u{0}b\n.txt ").unwrap(), "ab.txt");
        assert_eq!(name("invoice\u{202E}fdp.exe").unwrap(), "invoicefdp.exe");
        assert_eq!(name("\u{2066}a\u{200F}\u{2028}b\u{FEFF}").unwrap(), "ab");
        assert!(name("\u{202E}\u{200E} ").is_err());
        assert!(name("dir/").is_err());
        assert!(name("..").is_err());
        assert!(name(&"x".repeat(256)).is_err());
        assert!(clean_filename(&json!(5)).is_err());
    }
}

/// Property tests: the upload and stream payload decoders never panic.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn prop_field_decoders_never_panic(s in ".{0,300}", n in any::<i64>(), f in any::<f64>()) {
            for v in [json!(s), json!(n), json!(f), json!(null), json!([s]), json!({ "k": n })] {
                let _ = clean_filename(&v);
                let _ = document_type(Some(&v));
                let _ = sha256_field(Some(&v));
                let _ = count_field("f", &v);
            }
        }

        #[test]
        fn prop_clean_filenames_are_plain(s in ".{0,300}") {
            if let Ok(name) = clean_filename(&json!(s)) {
                prop_assert!(!name.contains('/') && !name.contains('\\'));
                prop_assert!(!name.chars().any(crate::sanitize::is_invisible));
                prop_assert!((1..=255).contains(&name.chars().count()));
            }
        }

        #[test]
        fn prop_chunk_payloads_decode_or_are_refused(v in prop::collection::vec(any::<u8>(), 0..64), s in ".{0,64}") {
            // The shapes a client can send for `data`, through the same serde path.
            for data in [json!(s), json!(v), json!({ "a": s }), json!(null)] {
                let p: Result<ChunkPayload, _> =
                    serde_json::from_value(json!({ "uploadId": s, "index": 0, "data": data }));
                if let Ok(p) = p {
                    prop_assert!(matches!(p.data, MaybeBinary::Other));
                }
            }
        }
    }
}
