//! Document streams: the `document_stream` and `document_stream_cancel` handlers and the
//! stream runner (a socket's running streams are `session::Streams`, the instance's byte
//! budget `limits::StreamBudget`).

use anyhow::Context;
use std::{
    sync::{
        Arc,
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

use super::require_project;
use crate::{
    app::App,
    error::{AppError, Code},
    handlers::{AfterReply, Cx, id_field},
    rooms::Id,
    session::StreamEntry,
    store::Document,
};

/// Stream chunk sizes are clamped to this range.
const STREAM_CHUNK_MIN: u64 = 1024;
const STREAM_CHUNK_MAX: u64 = 1024 * 1024;
/// Stream chunk size when the client names none.
const STREAM_CHUNK_DEFAULT: u64 = 65_536;

/// Tells a socket's streams apart.
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

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
        .context("reading a document")?
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
