//! Client events: the list of names, the one place they are routed, and payload decoding.
//!
//! Each event family has its module of free `async fn`s named after their event. They
//! take the [`Cx`] of the socket and the payload, and return the ack body or an
//! [`AppError`]; `connection` turns that into the contract's answer.

pub mod comments;
pub mod documents;
pub mod messages;
pub mod metrics;
pub mod presence;
pub mod rooms;
pub mod tasks;
pub mod typing;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use socketioxide::{
    adapter::Adapter,
    extract::{SocketRef, TryData},
    handler::FromMessageParts,
    socket::Socket,
};
use socketioxide_core::Value;

use crate::{connection::Conn, error::AppError, server::App};

/// Event names Socket.IO reserves for itself: neither clients nor the publish API may
/// send them.
pub const SOCKETIO_RESERVED: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Every event the server sends of its own accord (contract sections 4 to 7). Clients may
/// not broadcast these, so no client can forge one.
pub const SERVER_EVENTS: &[&str] = &[
    "user_joined",
    "user_left",
    "new_comment",
    "comment_updated",
    "comment_deleted",
    "mention",
    "typing_comment",
    "typing_stopped",
    "status_change",
    "user_active",
    "task_updated",
    "user_activity",
    "time_tracking_updated",
    "direct_message",
    "upload_progress",
    "document_uploaded",
    "document_chunk",
    "document_complete",
    "metrics_update",
    "server_shutdown",
    "resource_updated",
    "notification",
];

/// Every client event the server handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientEvent {
    /// `join_room`
    JoinRoom,
    /// `leave_room`
    LeaveRoom,
    /// `broadcast_room`
    BroadcastRoom,
    /// `subscribe_metrics`
    SubscribeMetrics,
    /// `unsubscribe_metrics`
    UnsubscribeMetrics,
    /// `new_comment`
    NewComment,
    /// `edit_comment`
    EditComment,
    /// `delete_comment`
    DeleteComment,
    /// `list_comments`
    ListComments,
    /// `typing_comment`
    TypingComment,
    /// `typing_stop`
    TypingStop,
    /// `task_update`
    TaskUpdate,
    /// `time_tracking`
    TimeTracking,
    /// `direct_message`
    DirectMessage,
    /// `set_status`
    SetStatus,
    /// `user_active`
    UserActive,
    /// `get_presence`
    GetPresence,
    /// `document_upload_start`
    DocumentUploadStart,
    /// `document_upload_chunk`
    DocumentUploadChunk,
    /// `document_upload_status`
    DocumentUploadStatus,
    /// `document_upload_complete`
    DocumentUploadComplete,
    /// `document_upload_abort`
    DocumentUploadAbort,
    /// `document_stream`
    DocumentStream,
    /// `document_stream_cancel`
    DocumentStreamCancel,
    /// `list_documents`
    ListDocuments,
}

impl ClientEvent {
    /// Every event, in declaration order (the discriminant is the index).
    pub const ALL: [ClientEvent; 25] = [
        ClientEvent::JoinRoom,
        ClientEvent::LeaveRoom,
        ClientEvent::BroadcastRoom,
        ClientEvent::SubscribeMetrics,
        ClientEvent::UnsubscribeMetrics,
        ClientEvent::NewComment,
        ClientEvent::EditComment,
        ClientEvent::DeleteComment,
        ClientEvent::ListComments,
        ClientEvent::TypingComment,
        ClientEvent::TypingStop,
        ClientEvent::TaskUpdate,
        ClientEvent::TimeTracking,
        ClientEvent::DirectMessage,
        ClientEvent::SetStatus,
        ClientEvent::UserActive,
        ClientEvent::GetPresence,
        ClientEvent::DocumentUploadStart,
        ClientEvent::DocumentUploadChunk,
        ClientEvent::DocumentUploadStatus,
        ClientEvent::DocumentUploadComplete,
        ClientEvent::DocumentUploadAbort,
        ClientEvent::DocumentStream,
        ClientEvent::DocumentStreamCancel,
        ClientEvent::ListDocuments,
    ];

    /// The event name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ClientEvent::JoinRoom => "join_room",
            ClientEvent::LeaveRoom => "leave_room",
            ClientEvent::BroadcastRoom => "broadcast_room",
            ClientEvent::SubscribeMetrics => "subscribe_metrics",
            ClientEvent::UnsubscribeMetrics => "unsubscribe_metrics",
            ClientEvent::NewComment => "new_comment",
            ClientEvent::EditComment => "edit_comment",
            ClientEvent::DeleteComment => "delete_comment",
            ClientEvent::ListComments => "list_comments",
            ClientEvent::TypingComment => "typing_comment",
            ClientEvent::TypingStop => "typing_stop",
            ClientEvent::TaskUpdate => "task_update",
            ClientEvent::TimeTracking => "time_tracking",
            ClientEvent::DirectMessage => "direct_message",
            ClientEvent::SetStatus => "set_status",
            ClientEvent::UserActive => "user_active",
            ClientEvent::GetPresence => "get_presence",
            ClientEvent::DocumentUploadStart => "document_upload_start",
            ClientEvent::DocumentUploadChunk => "document_upload_chunk",
            ClientEvent::DocumentUploadStatus => "document_upload_status",
            ClientEvent::DocumentUploadComplete => "document_upload_complete",
            ClientEvent::DocumentUploadAbort => "document_upload_abort",
            ClientEvent::DocumentStream => "document_stream",
            ClientEvent::DocumentStreamCancel => "document_stream_cancel",
            ClientEvent::ListDocuments => "list_documents",
        }
    }

    /// The event called `name`, if the server handles it.
    pub fn from_name(name: &str) -> Option<ClientEvent> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Whether the event counts against the per-socket rate limit (typing indicators and
    /// upload chunks do not, by contract).
    pub fn is_rate_limited(self) -> bool {
        !matches!(
            self,
            ClientEvent::TypingComment | ClientEvent::TypingStop | ClientEvent::DocumentUploadChunk
        )
    }
}

/// An id (user, project, task, comment) from a payload field: a string or an integer of
/// the id alphabet, else `INVALID_PAYLOAD` naming the field.
pub fn id_field(field: &str, v: &Json) -> Result<crate::rooms::Id, AppError> {
    crate::rooms::Id::from_json(v)
        .ok_or_else(|| AppError::invalid(format!("{field} is missing or invalid")))
}

/// Longest user text (comments, direct messages), in code points after trimming.
pub const MAX_TEXT: usize = 10_000;

/// Trims and checks user text: blank or not a string is `INVALID_PAYLOAD`, over
/// [`MAX_TEXT`] code points is `TOO_LARGE`; markup that could run script is removed.
pub fn clean_text(field: &str, text: &str) -> Result<String, AppError> {
    let trimmed = text.trim();
    let len = trimmed.chars().count();
    if len == 0 {
        return Err(AppError::invalid(format!("{field} is empty")));
    }
    if len > MAX_TEXT {
        return Err(AppError::new(
            crate::error::Code::TooLarge,
            format!("{field} is longer than {MAX_TEXT} characters"),
        ));
    }
    let clean = crate::sanitize::clean(trimmed);
    let clean = clean.trim();
    if crate::sanitize::is_blank(clean) {
        return Err(AppError::invalid(format!(
            "{field} is empty once markup is removed"
        )));
    }
    Ok(clean.to_owned())
}

/// Work a handler leaves to be started once its ack has been sent (a stream's chunks
/// must reach the client after the ack that announces them).
pub type AfterReply = Box<dyn FnOnce() + Send>;

/// Refuses arguments that carry binary attachments: only `document_upload_chunk` takes
/// binary data (see [`Cx::binary_payload`]), and decoding bytes as JSON numbers would
/// cost many times their size and hand them on as arrays, not bytes.
fn refuse_binary(value: &Value) -> Result<(), AppError> {
    let binary = match value {
        Value::Str(_, Some(bins)) => !bins.is_empty(),
        Value::Str(_, None) => false,
        Value::Bytes(_) => true,
    };
    if binary {
        Err(AppError::invalid("This event does not take binary data"))
    } else {
        Ok(())
    }
}

/// What a handler works with: the app, the socket and its connection state.
pub struct Cx<'a, A: Adapter> {
    /// Shared state and the Socket.IO handle.
    pub app: &'a App<A>,
    /// The socket that sent the event.
    pub socket: SocketRef<A>,
    /// Its connection state.
    pub conn: &'a Arc<Conn>,
    raw: &'a Arc<Socket<A>>,
}

impl<A: Adapter> Cx<'_, A> {
    /// The first argument of the event as a typed payload; a wrong shape is
    /// `INVALID_PAYLOAD` naming the field.
    pub fn payload<T: DeserializeOwned>(&self, value: &mut Value) -> Result<T, AppError> {
        let json: Json = self.first(value)?;
        if !json.is_object() {
            return Err(AppError::invalid("The payload must be an object"));
        }
        serde_path_to_error::deserialize(json).map_err(|e| {
            let path = e.path().to_string();
            AppError::invalid(format!("{path}: {}", e.into_inner()))
        })
    }

    /// The first argument as a payload that may hold binary attachments, decoded
    /// straight into `T` (binary fields stay bytes).
    pub fn binary_payload<T: DeserializeOwned>(&self, value: &mut Value) -> Result<T, AppError> {
        match TryData::<T>::from_message_parts(self.raw, value, &None) {
            Ok(TryData(Ok(v))) => Ok(v),
            _ => Err(AppError::invalid(
                "The payload must be an object with uploadId, index and binary data",
            )),
        }
    }

    /// Whether the user may use `room`: the claims, then the access hook.
    pub async fn may_use(&self, room: &crate::rooms::Room) -> bool {
        self.app.state.access.allows(&self.conn.user, room).await
    }

    /// `FORBIDDEN` unless the user may use `room`.
    pub async fn require_room(&self, room: &crate::rooms::Room) -> Result<(), AppError> {
        if self.may_use(room).await {
            Ok(())
        } else {
            Err(AppError::forbidden("Not allowed in this room"))
        }
    }

    /// The socket itself.
    pub fn raw_socket(&self) -> &Arc<Socket<A>> {
        self.raw
    }

    /// The connection state, shared (for work that outlives the event).
    pub fn conn_arc(&self) -> Arc<Conn> {
        self.conn.clone()
    }

    /// The socket as a weak reference, for timers that must not keep it alive.
    pub fn weak_socket(&self) -> std::sync::Weak<Socket<A>> {
        Arc::downgrade(self.raw)
    }

    /// The first argument of the event, decoded as `T` (binary attachments refused).
    pub fn first<T: DeserializeOwned>(&self, value: &mut Value) -> Result<T, AppError> {
        refuse_binary(value)?;
        match TryData::<T>::from_message_parts(self.raw, value, &None) {
            Ok(TryData(Ok(v))) => Ok(v),
            _ => Err(AppError::invalid(
                "The payload does not have the expected shape",
            )),
        }
    }

    /// Every argument of the event, as JSON (binary attachments refused).
    pub fn all(&self, value: &mut Value) -> Result<Vec<Json>, AppError> {
        refuse_binary(value)?;
        match TryData::<Args>::from_message_parts(self.raw, value, &None) {
            Ok(TryData(Ok(Args(v)))) => Ok(v),
            _ => Err(AppError::invalid(
                "The payload does not have the expected shape",
            )),
        }
    }
}

/// All the arguments of an event. Deserialising through `deserialize_tuple` makes the
/// Socket.IO parser hand over every argument rather than only the first.
struct Args(Vec<Json>);

impl<'de> serde::Deserialize<'de> for Args {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Args;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<Args, S::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Json>()? {
                    out.push(v);
                }
                Ok(Args(out))
            }
        }
        d.deserialize_tuple(usize::MAX, V)
    }
}

/// Routes one event to its handler; returns the answer and any work to start once it
/// has been sent.
pub async fn handle<A: Adapter>(
    app: &App<A>,
    socket: &Arc<Socket<A>>,
    conn: &Arc<Conn>,
    event: ClientEvent,
    value: &mut Value,
) -> (Result<Json, AppError>, Option<AfterReply>) {
    let socket_ref = match SocketRef::from_message_parts(socket, value, &None) {
        Ok(s) => s,
        Err(never) => match never {},
    };
    let cx = Cx {
        app,
        socket: socket_ref,
        conn,
        raw: socket,
    };
    if event == ClientEvent::DocumentStream {
        return match documents::document_stream(&cx, value).await {
            Ok((body, after)) => (Ok(body), after),
            Err(e) => (Err(e), None),
        };
    }
    let result = match event {
        ClientEvent::JoinRoom => rooms::join_room(&cx, value).await,
        ClientEvent::LeaveRoom => rooms::leave_room(&cx, value).await,
        ClientEvent::BroadcastRoom => rooms::broadcast_room(&cx, value).await,
        ClientEvent::SubscribeMetrics => metrics::subscribe_metrics(&cx).await,
        ClientEvent::UnsubscribeMetrics => metrics::unsubscribe_metrics(&cx).await,
        ClientEvent::NewComment => comments::new_comment(&cx, value).await,
        ClientEvent::EditComment => comments::edit_comment(&cx, value).await,
        ClientEvent::DeleteComment => comments::delete_comment(&cx, value).await,
        ClientEvent::ListComments => comments::list_comments(&cx, value).await,
        ClientEvent::TypingComment => typing::typing_comment(&cx, value).await,
        ClientEvent::TypingStop => typing::typing_stop(&cx, value).await,
        ClientEvent::TaskUpdate => tasks::task_update(&cx, value).await,
        ClientEvent::TimeTracking => tasks::time_tracking(&cx, value).await,
        ClientEvent::DirectMessage => messages::direct_message(&cx, value).await,
        ClientEvent::SetStatus => presence::set_status(&cx, value).await,
        ClientEvent::UserActive => presence::user_active(&cx, value).await,
        ClientEvent::GetPresence => presence::get_presence(&cx, value).await,
        ClientEvent::DocumentUploadStart => documents::document_upload_start(&cx, value).await,
        ClientEvent::DocumentUploadChunk => documents::document_upload_chunk(&cx, value).await,
        ClientEvent::DocumentUploadStatus => documents::document_upload_status(&cx, value).await,
        ClientEvent::DocumentUploadComplete => {
            documents::document_upload_complete(&cx, value).await
        }
        ClientEvent::DocumentUploadAbort => documents::document_upload_abort(&cx, value).await,
        ClientEvent::DocumentStream => unreachable!("handled above"),
        ClientEvent::DocumentStreamCancel => documents::document_stream_cancel(&cx, value).await,
        ClientEvent::ListDocuments => documents::list_documents(&cx, value).await,
    };
    (result, None)
}
