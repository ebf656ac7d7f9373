//! Client events: their dispatch (built from the table in [`crate::events`]), the
//! handler context [`Cx`], and payload decoding.
//!
//! Each event family has its module of free `async fn`s named after their event. They
//! take the [`Cx`] of the socket and the payload, and return the ack body or an
//! [`AppError`]; `connection` turns that into the contract's answer.

pub mod comments;
pub mod documents;
mod emit;
pub mod messages;
pub mod metrics;
pub mod presence;
pub mod rooms;
pub mod tasks;
pub mod typing;

pub use emit::ToRooms;

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

use crate::{app::App, error::AppError, events::ClientEvent, session::Conn};

/// An id (user, project, task, comment) from a payload field: a string or an integer of
/// the id alphabet, else `INVALID_PAYLOAD` naming the field. Typed payloads take
/// [`crate::rooms::Id`] fields instead, with the same answer (see [`Cx::payload`]).
pub fn id_field(field: &str, v: &Json) -> Result<crate::rooms::Id, AppError> {
    crate::rooms::Id::from_json(v).ok_or_else(|| invalid_id(field))
}

/// The answer to a payload field that is not an id.
pub fn invalid_id(field: &str) -> AppError {
    AppError::invalid(format!("{field} is missing or invalid"))
}

/// The answer to a payload that does not decode: `INVALID_PAYLOAD` naming the field, but
/// the contract's answers for [`crate::rooms::Room`] and [`crate::rooms::Id`] fields,
/// whose errors come back as serde's custom messages.
fn payload_error(e: serde_path_to_error::Error<serde_json::Error>) -> AppError {
    let path = e.path().to_string();
    let why = e.into_inner().to_string();
    if why == crate::rooms::InvalidRoom.to_string() {
        crate::rooms::InvalidRoom.into()
    } else if why == crate::rooms::InvalidId.to_string() {
        invalid_id(&path)
    } else {
        AppError::invalid(format!("{path}: {why}"))
    }
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
    /// `INVALID_PAYLOAD` naming the field. A [`crate::rooms::Room`] field that is not a
    /// room name is `INVALID_ROOM`, an [`crate::rooms::Id`] field that is not an id is
    /// [`invalid_id`]: the answers of the names and ids parsed by hand.
    pub fn payload<T: DeserializeOwned>(&self, value: &mut Value) -> Result<T, AppError> {
        let json: Json = self.first(value)?;
        if !json.is_object() {
            return Err(AppError::invalid("The payload must be an object"));
        }
        serde_path_to_error::deserialize(json).map_err(payload_error)
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

    /// `FORBIDDEN` unless the user may use `room`: [`crate::access::Access::require`].
    pub async fn require_room(&self, room: &crate::rooms::Room) -> Result<(), AppError> {
        self.app.state.access.require(&self.conn.user, room).await
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

/// What a handler returns, split into the answer and any work to start once it has been
/// sent (only `document_stream` leaves such work: its chunks follow its ack).
pub trait Reply {
    /// The answer, and the work to start after it.
    fn split(self) -> (Result<Json, AppError>, Option<AfterReply>);
}

impl Reply for Result<Json, AppError> {
    fn split(self) -> (Result<Json, AppError>, Option<AfterReply>) {
        (self, None)
    }
}

impl Reply for Result<(Json, Option<AfterReply>), AppError> {
    fn split(self) -> (Result<Json, AppError>, Option<AfterReply>) {
        match self {
            Ok((body, after)) => (Ok(body), after),
            Err(e) => (Err(e), None),
        }
    }
}

/// Builds [`dispatch`] from the table of [`crate::events::client_events!`]: one arm per
/// event, each calling its handler (the compiler checks that every event has one).
///
/// Each handler's future is boxed: inline, the dispatch future (and the socket's queue
/// task holding it) would be as large as the largest handler's, kilobytes that tokio
/// copies several times for every task it spawns, about a tenth of the CPU of an ack.
macro_rules! define_dispatch {
    ($($variant:ident = $name:literal => $handler:path, $limit:ident;)*) => {
        async fn dispatch<A: Adapter>(
            cx: &Cx<'_, A>,
            event: ClientEvent,
            value: &mut Value,
        ) -> (Result<Json, AppError>, Option<AfterReply>) {
            match event {
                $(ClientEvent::$variant => Box::pin($handler(cx, value)).await.split(),)*
            }
        }
    };
}

crate::events::client_events!(define_dispatch);

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
    dispatch(&cx, event, value).await
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::{
        error::Code,
        rooms::{Id, Room},
    };

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Sample {
        room: Room,
        task_id: Id,
        #[serde(default)]
        project_id: Option<Id>,
    }

    fn answer(v: Json) -> AppError {
        serde_path_to_error::deserialize::<_, Sample>(v)
            .map_err(payload_error)
            .unwrap_err()
    }

    /// The dispatch future stays small whatever the handlers hold across their awaits
    /// (they are boxed): tokio copies a spawned future several times, and the socket's
    /// queue task holds this one.
    #[test]
    fn dispatch_future_is_small() {
        use socketioxide::adapter::LocalAdapter as L;
        fn size_of_output<F, R>(_: &F) -> usize
        where
            F: FnOnce(
                &'static App<L>,
                &'static Arc<Socket<L>>,
                &'static Arc<Conn>,
                ClientEvent,
                &'static mut Value,
            ) -> R,
        {
            std::mem::size_of::<R>()
        }
        let size = size_of_output(&handle::<L>);
        assert!(size <= 512, "handle's future is {size} bytes");
    }

    /// What the handlers answered when they parsed these fields by hand.
    #[test]
    fn typed_fields_answer_as_before() {
        let bad_room = answer(json!({ "room": "project:1:nope", "taskId": 1 }));
        assert_eq!(
            (bad_room.code, bad_room.message.as_str()),
            (Code::InvalidRoom, "Invalid room name")
        );
        let not_text = answer(json!({ "room": 5, "taskId": 1 }));
        assert_eq!(not_text.code, Code::InvalidPayload);
        assert!(
            not_text.message.starts_with("room: invalid type"),
            "{}",
            not_text.message
        );
        let bad_id = answer(json!({ "room": "task:1", "taskId": "a b" }));
        assert_eq!(
            (bad_id.code, bad_id.message.as_str()),
            (Code::InvalidPayload, "taskId is missing or invalid")
        );
        let bad_option = answer(json!({ "room": "task:1", "taskId": 1, "projectId": 1.5 }));
        assert_eq!(bad_option.message, "projectId is missing or invalid");
        let missing = answer(json!({ "room": "task:1" }));
        assert_eq!(missing.code, Code::InvalidPayload);
        assert!(
            missing.message.contains("missing field `taskId`"),
            "{}",
            missing.message
        );
        let ok: Sample =
            serde_json::from_value(json!({ "room": "task:1", "taskId": 7, "projectId": null }))
                .unwrap();
        assert_eq!(ok.room, Room::Task(Id::parse("1").unwrap()));
        assert_eq!(ok.task_id.as_str(), "7");
        assert!(ok.project_id.is_none());
    }
}
