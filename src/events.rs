//! What happens on a socket, named once: the client events the server handles, the event
//! names reserved for Socket.IO and for the server, and the reasons a socket goes away.
//!
//! [`client_events!`] is the one table of client events. Adding an event is one line
//! there plus its handler; this module turns the table into [`ClientEvent`] (its names,
//! lookup and rate-limit rule), and `handlers` turns the same table into the dispatch.
//! This module imports nothing of the crate, so that every layer (metrics included) may
//! use it; the handler paths in the table are only tokens here, resolved in `handlers`.

use socketioxide::socket::DisconnectReason;

/// Calls the macro `$then` with the table of client events, one line each:
///
/// `Variant = "wire_name" => handler, limit;`
///
/// - the handler is a path under `crate::handlers`, an `async fn(&Cx, &mut Value)`
///   returning `Result<Json, AppError>`, or `Result<(Json, Option<AfterReply>), AppError>`
///   when it leaves work to start after its ack (see `handlers::Reply`);
/// - `limit` is `limited` when the event counts against the per-socket rate limit, or
///   `exempt` (typing indicators and upload chunks, by contract section 10).
///
/// The order is the order of [`ClientEvent::ALL`] and of the metrics' series.
macro_rules! client_events {
    ($then:ident) => {
        $then! {
            JoinRoom = "join_room" => rooms::join_room, limited;
            LeaveRoom = "leave_room" => rooms::leave_room, limited;
            BroadcastRoom = "broadcast_room" => rooms::broadcast_room, limited;
            SubscribeMetrics = "subscribe_metrics" => metrics::subscribe_metrics, limited;
            UnsubscribeMetrics = "unsubscribe_metrics" => metrics::unsubscribe_metrics, limited;
            NewComment = "new_comment" => comments::new_comment, limited;
            EditComment = "edit_comment" => comments::edit_comment, limited;
            DeleteComment = "delete_comment" => comments::delete_comment, limited;
            ListComments = "list_comments" => comments::list_comments, limited;
            TypingComment = "typing_comment" => typing::typing_comment, exempt;
            TypingStop = "typing_stop" => typing::typing_stop, exempt;
            TaskUpdate = "task_update" => tasks::task_update, limited;
            TimeTracking = "time_tracking" => tasks::time_tracking, limited;
            DirectMessage = "direct_message" => messages::direct_message, limited;
            SetStatus = "set_status" => presence::set_status, limited;
            UserActive = "user_active" => presence::user_active, limited;
            GetPresence = "get_presence" => presence::get_presence, limited;
            DocumentUploadStart = "document_upload_start"
                => documents::document_upload_start, limited;
            DocumentUploadChunk = "document_upload_chunk"
                => documents::document_upload_chunk, exempt;
            DocumentUploadStatus = "document_upload_status"
                => documents::document_upload_status, limited;
            DocumentUploadComplete = "document_upload_complete"
                => documents::document_upload_complete, limited;
            DocumentUploadAbort = "document_upload_abort"
                => documents::document_upload_abort, limited;
            DocumentStream = "document_stream" => documents::document_stream, limited;
            DocumentStreamCancel = "document_stream_cancel"
                => documents::document_stream_cancel, limited;
            ListDocuments = "list_documents" => documents::list_documents, limited;
        }
    };
}
pub(crate) use client_events;

/// `limited` / `exempt` from the table, as a bool (any other word does not compile).
macro_rules! rate_limited {
    (limited) => {
        true
    };
    (exempt) => {
        false
    };
}

/// Builds [`ClientEvent`] from the table (the handler paths are not used here).
macro_rules! define_client_events {
    ($($variant:ident = $name:literal => $handler:path, $limit:ident;)*) => {
        /// Every client event the server handles.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ClientEvent {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl ClientEvent {
            /// Every event, in table order (the discriminant is the index).
            pub const ALL: [ClientEvent; [$($name),*].len()] = [$(ClientEvent::$variant),*];

            /// The event name on the wire.
            pub fn name(self) -> &'static str {
                match self {
                    $(ClientEvent::$variant => $name,)*
                }
            }

            /// The event called `name`, if the server handles it.
            pub fn from_name(name: &str) -> Option<ClientEvent> {
                match name {
                    $($name => Some(ClientEvent::$variant),)*
                    _ => None,
                }
            }

            /// Whether the event counts against the per-socket rate limit (typing
            /// indicators and upload chunks do not, by contract).
            pub fn is_rate_limited(self) -> bool {
                match self {
                    $(ClientEvent::$variant => rate_limited!($limit),)*
                }
            }
        }
    };
}

client_events!(define_client_events);

/// Event names Socket.IO reserves for itself: neither clients nor the publishers
/// (`POST /api/emit`, the Redis emitter) may send them.
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

/// Longest event name a publisher (`POST /api/emit`, the Redis emitter) may send.
pub const MAX_PUBLISHED_EVENT: usize = 128;

/// Whether the main backend may publish an event called `name` to clients, by either way
/// (`POST /api/emit`, the Redis emitter): 1 to [`MAX_PUBLISHED_EVENT`] bytes and not one of
/// [`SOCKETIO_RESERVED`]. Server events are allowed: publishing them is what the backend
/// is for.
pub fn publishable(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_PUBLISHED_EVENT && !SOCKETIO_RESERVED.contains(&name)
}

/// Builds the disconnect labels: a `match` (so that the compiler asks for a label when
/// socketioxide gains a reason) and the list of every label, from the same lines.
macro_rules! disconnect_reasons {
    ($($reason:ident => $label:literal,)*) => {
        /// The `reason` labels of `trestle_disconnects_total` (and of the disconnect log).
        pub const DISCONNECT_LABELS: [&str; [$($label),*].len()] = [$($label),*];

        /// The label of a disconnect `reason`.
        pub fn disconnect_label(reason: DisconnectReason) -> &'static str {
            match reason {
                $(DisconnectReason::$reason => $label,)*
            }
        }
    };
}

disconnect_reasons! {
    TransportClose => "transport_close",
    MultipleHttpPollingError => "multiple_polling",
    PacketParsingError => "parse_error",
    TransportError => "transport_error",
    HeartbeatTimeout => "heartbeat_timeout",
    ClientNSDisconnect => "client_disconnect",
    ServerNSDisconnect => "server_disconnect",
    ClosingServer => "server_shutdown",
    SlowConsumer => "slow_consumer",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found_again() {
        for (i, e) in ClientEvent::ALL.into_iter().enumerate() {
            assert_eq!(e as usize, i, "ALL is in declaration order");
            assert_eq!(ClientEvent::from_name(e.name()), Some(e));
        }
        let mut names: Vec<_> = ClientEvent::ALL.iter().map(|e| e.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ClientEvent::ALL.len());
        assert_eq!(ClientEvent::from_name("unknown"), None);
    }

    #[test]
    fn rate_limit_exemptions_are_those_of_the_contract() {
        let exempt: Vec<_> = ClientEvent::ALL
            .into_iter()
            .filter(|e| !e.is_rate_limited())
            .map(ClientEvent::name)
            .collect();
        assert_eq!(
            exempt,
            ["typing_comment", "typing_stop", "document_upload_chunk"]
        );
    }

    #[test]
    fn publishers_may_send_server_events_but_not_reserved_names() {
        assert!(publishable("resource_updated"));
        assert!(publishable("notification"));
        assert!(publishable(&"e".repeat(MAX_PUBLISHED_EVENT)));
        assert!(!publishable(&"e".repeat(MAX_PUBLISHED_EVENT + 1)));
        assert!(!publishable(""));
        for name in SOCKETIO_RESERVED {
            assert!(!publishable(name), "{name}");
        }
    }

    #[test]
    fn disconnect_labels_are_unique() {
        let mut labels = DISCONNECT_LABELS.to_vec();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DISCONNECT_LABELS.len());
        assert_eq!(
            disconnect_label(DisconnectReason::SlowConsumer),
            "slow_consumer"
        );
    }
}
