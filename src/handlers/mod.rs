//! Client events: the list of names, the one place they are routed, and payload decoding.
//!
//! Each event family has its module of free `async fn`s named after their event. They
//! take the [`Cx`] of the socket and the payload, and return the ack body or an
//! [`AppError`]; `connection` turns that into the contract's answer.

pub mod metrics;
pub mod rooms;

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
}

impl ClientEvent {
    /// Every event, in declaration order (the discriminant is the index).
    pub const ALL: [ClientEvent; 5] = [
        ClientEvent::JoinRoom,
        ClientEvent::LeaveRoom,
        ClientEvent::BroadcastRoom,
        ClientEvent::SubscribeMetrics,
        ClientEvent::UnsubscribeMetrics,
    ];

    /// The event name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ClientEvent::JoinRoom => "join_room",
            ClientEvent::LeaveRoom => "leave_room",
            ClientEvent::BroadcastRoom => "broadcast_room",
            ClientEvent::SubscribeMetrics => "subscribe_metrics",
            ClientEvent::UnsubscribeMetrics => "unsubscribe_metrics",
        }
    }

    /// The event called `name`, if the server handles it.
    pub fn from_name(name: &str) -> Option<ClientEvent> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Whether the event counts against the per-socket rate limit (typing indicators and
    /// upload chunks do not, by contract).
    pub fn is_rate_limited(self) -> bool {
        true
    }
}

/// What a handler works with: the app, the socket and its connection state.
pub struct Cx<'a, A: Adapter> {
    /// Shared state and the Socket.IO handle.
    pub app: &'a App<A>,
    /// The socket that sent the event.
    pub socket: SocketRef<A>,
    /// Its connection state.
    pub conn: &'a Conn,
    raw: &'a Arc<Socket<A>>,
}

impl<A: Adapter> Cx<'_, A> {
    /// The first argument of the event, decoded as `T`.
    pub fn first<T: DeserializeOwned>(&self, value: &mut Value) -> Result<T, AppError> {
        match TryData::<T>::from_message_parts(self.raw, value, &None) {
            Ok(TryData(Ok(v))) => Ok(v),
            _ => Err(AppError::invalid(
                "The payload does not have the expected shape",
            )),
        }
    }

    /// Every argument of the event, as JSON.
    pub fn all(&self, value: &mut Value) -> Result<Vec<Json>, AppError> {
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

/// Routes one event to its handler.
pub async fn handle<A: Adapter>(
    app: &App<A>,
    socket: &Arc<Socket<A>>,
    conn: &Conn,
    event: ClientEvent,
    value: &mut Value,
) -> Result<Json, AppError> {
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
    match event {
        ClientEvent::JoinRoom => rooms::join_room(&cx, value).await,
        ClientEvent::LeaveRoom => rooms::leave_room(&cx, value).await,
        ClientEvent::BroadcastRoom => rooms::broadcast_room(&cx, value).await,
        ClientEvent::SubscribeMetrics => metrics::subscribe_metrics(&cx).await,
        ClientEvent::UnsubscribeMetrics => metrics::unsubscribe_metrics(&cx).await,
    }
}
