//! A socket's life: admission (caps, token, auto-joins) before the CONNECT ack, then
//! events in arrival order, then the disconnect clean-up.
//!
//! Everything a connection needs is done in the connect middleware, before the client
//! gets its CONNECT acknowledgement: its rooms are joined and its event dispatcher is
//! registered, so the first event it sends already finds them (socketioxide runs the
//! connect handler itself only after the ack, on another task).

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{FutureExt, future::BoxFuture};
use serde_json::Value as Json;
use socketioxide::{
    adapter::Adapter,
    extract::{AckSender, Event, SocketRef, TryData},
    handler::{FromConnectParts, FromDisconnectParts, FromMessageParts, MessageHandler},
    recovery::{Outcome, SessionStore},
    socket::{DisconnectReason, Sid, Socket},
};
use socketioxide_core::Value;

use crate::{
    app::App,
    auth::{AuthError, User, find_token},
    error::{AppError, Code, Failure},
    events::{ClientEvent, disconnect_label},
    handlers,
    limits::{Verdict, client_ip},
    rooms::Room,
    session::{Conn, Inbox, Job, Lease, Work, conn_of},
};

/// Events a socket may have waiting to be handled; past this they are refused.
const MAX_PENDING_EVENTS: usize = 256;
/// Bytes of event payloads a socket may have waiting (upload chunks are not rate-limited,
/// so without this one client could park 256 messages of 1 MB each).
const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;

/// The size of an event's payload: its text and binary attachments.
fn payload_bytes(value: &Value) -> usize {
    match value {
        Value::Str(s, bins) => s.len() + bins.iter().flatten().map(|b| b.len()).sum::<usize>(),
        Value::Bytes(b) => b.len(),
    }
}

/// A refused connection; `Display` is the `connect_error` message the client sees.
#[derive(Debug)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The connect middleware: capacity, per-address cap, token, then the connection's
/// rooms, handlers and presence, all before the CONNECT ack.
pub fn admit<A: Adapter>(
    app: App<A>,
) -> impl Fn(SocketRef<A>, TryData<Json>) -> BoxFuture<'static, Result<(), Refused>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |socket: SocketRef<A>, TryData(auth): TryData<Json>| {
        let app = app.clone();
        async move {
            let conn = admit_socket(&app, &socket, auth.ok().as_ref())?;
            if socket.recovered() {
                keep_recovered_rooms(&app, &socket, &conn).await;
            }
            if let Some(lease) = &conn.presence {
                handlers::presence::connected(&app, &conn.user, lease).await;
            }
            Ok(())
        }
        .boxed()
    }
}

fn admit_socket<A: Adapter>(
    app: &App<A>,
    socket: &SocketRef<A>,
    auth: Option<&Json>,
) -> Result<Arc<Conn>, Refused> {
    let state = &app.state;
    let cfg = &state.config;
    if state.is_shutting_down() {
        state.metrics.count(crate::metrics::Refused::ShuttingDown);
        return Err(Refused("Server at capacity".into()));
    }
    let parts = socket.req_parts();
    let slot = state
        .limits
        .admit(client_ip(parts, cfg.trust_proxy))
        .map_err(|r| {
            state.metrics.count(r.at_connect());
            Refused(r.to_string())
        })?;
    let user = match find_token(auth, parts) {
        Some(token) => state.verifier.verify(&token),
        None if !cfg.auth_required => Ok(User::anonymous(&socket.id.to_string())),
        None => Err(AuthError::Required),
    }
    .map_err(|e| {
        state.metrics.count(e);
        tracing::debug!(sid = %socket.id, reason = e.reason(), "authentication refused");
        Refused(e.to_string())
    })?;
    // A recovered session goes back to its user only: its socket id, rooms (the user's own
    // among them) and missed events are not for whoever learned its private session id.
    // Refused, the session stays for its owner (socketioxide saves it again).
    if socket.recovered() && socket.recovery_data().as_deref() != Some(user.id.as_str()) {
        state.metrics.count(AuthError::Failed);
        tracing::warn!(sid = %socket.id, user = %user.id, "refused to recover another user's session");
        return Err(Refused(AuthError::Failed.to_string()));
    }
    socket.set_recovery_data(user.id.to_string());

    // A recovered socket is back in its rooms already; the automatic ones are joined
    // again all the same, as the token (perhaps a newer one) grants them now.
    let mut rooms: Vec<String> = crate::access::automatic(&user)
        .iter()
        .map(Room::to_string)
        .collect();
    // socketioxide does not put a socket in the room named by its id; the contract needs
    // it so that one socket can be reached from any instance.
    rooms.push(socket.id.to_string());
    tracing::debug!(sid = %socket.id, user = %user.id, ip = %slot.ip(), "connecting");
    // Offline messages go out before the socket's first event is handled: their delivery
    // is the first job of the queue, which the connect handler starts after the ack.
    let inbox = Inbox {
        queue: VecDeque::from([Job {
            work: Work::DeliverOffline,
            ack: None,
            bytes: 0,
        }]),
        bytes: 0,
        running: true,
    };
    let presence =
        (!user.anonymous).then(|| Lease::new(state.presence.clone(), user.id.clone(), socket.id));
    let limiter = state.budgets.lease(&budget_key(&user, slot.ip()));
    let conn = Arc::new(Conn {
        user,
        joined: Mutex::new(Vec::new()),
        typing: Default::default(),
        streams: Default::default(),
        presence,
        limiter,
        inbox: Mutex::new(inbox),
        _slot: slot,
    });
    socket.extensions.insert(conn.clone());
    socket.join(rooms);
    socket.on_fallback(Dispatcher { app: app.clone() });
    let on_gone = app.clone();
    socket.on_disconnect(move |socket: RawSocket<A>, reason: DisconnectReason| {
        let app = on_gone.clone();
        async move { on_disconnect(app, socket, reason).await }
    });
    Ok(conn)
}

/// The rooms a recovered socket got back, other than its automatic ones and its own:
/// those it may still use are its joined rooms again (no `user_joined`: for the others it
/// never left); those it may no longer use (access revoked, a claim gone from the token)
/// it leaves, and the others there are told.
async fn keep_recovered_rooms<A: Adapter>(app: &App<A>, socket: &SocketRef<A>, conn: &Conn) {
    let autos: Vec<String> = crate::access::automatic(&conn.user)
        .iter()
        .map(Room::to_string)
        .collect();
    let own = socket.id.to_string();
    for name in socket.rooms() {
        if name == own || autos.iter().any(|a| *a == *name) {
            continue;
        }
        let Ok(room) = name.parse::<Room>() else {
            socket.leave(name.to_string());
            continue;
        };
        if app.state.access.require(&conn.user, &room).await.is_ok() {
            conn.joined
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(room);
        } else {
            socket.leave(name.to_string());
            handlers::rooms::announce_left(&app.state, socket, &conn.user, &room).await;
        }
    }
}

/// Whose event budget a socket draws from: its user's, or for an anonymous socket (whose
/// user id is new with every connection) its address's, so that reconnecting does not
/// refill it either.
fn budget_key(user: &User, ip: IpAddr) -> String {
    if user.anonymous {
        format!("anonymous@{ip}")
    } else {
        format!("user:{}", user.id)
    }
}

/// The socket itself, for the connect and disconnect handlers (socketioxide's
/// `SocketRef` does not give it out, and the event queue works on it).
pub struct RawSocket<A: Adapter>(pub Arc<Socket<A>>);

impl<A: Adapter> FromConnectParts<A> for RawSocket<A> {
    type Error = std::convert::Infallible;
    fn from_connect_parts(s: &Arc<Socket<A>>, _: &Option<Value>) -> Result<Self, Self::Error> {
        Ok(RawSocket(s.clone()))
    }
}

impl<A: Adapter> FromDisconnectParts<A> for RawSocket<A> {
    type Error = std::convert::Infallible;
    fn from_disconnect_parts(s: &Arc<Socket<A>>, _: DisconnectReason) -> Result<Self, Self::Error> {
        Ok(RawSocket(s.clone()))
    }
}

/// The connect handler, run after the CONNECT ack: counts and logs the connection, and
/// starts the socket's queue (offline delivery first).
pub fn on_connect<A: Adapter>(
    app: App<A>,
) -> impl FnOnce(RawSocket<A>) -> futures_util::future::Ready<()> + Clone + Send + Sync + 'static {
    move |RawSocket(socket): RawSocket<A>| {
        app.state.metrics.connected();
        if socket.recovered() {
            app.state.metrics.recovered();
        }
        if let Some(conn) = conn_of(&socket) {
            tracing::info!(sid = %socket.id, user = %conn.user.id, transport = ?socket.transport_type(), recovered = socket.recovered(), "connected");
            app.state.socket_feed.connected(socket.id);
            tokio::spawn(drain(app.clone(), socket.clone(), conn));
        }
        futures_util::future::ready(())
    }
}

async fn on_disconnect<A: Adapter>(
    app: App<A>,
    RawSocket(socket): RawSocket<A>,
    reason: DisconnectReason,
) {
    // The event bucket goes back to the user at once (before the disconnect is counted),
    // for their next socket: reconnecting finds it as spent as it was.
    if let Some(conn) = conn_of(&socket) {
        conn.limiter.release();
    }
    let label = disconnect_label(reason);
    app.state.metrics.disconnected(label);
    app.metrics_feed.unsubscribe(socket.id);
    let Some(conn) = conn_of(&socket) else { return };
    tracing::info!(sid = %socket.id, user = %conn.user.id, reason = label, "disconnected");
    app.state
        .socket_feed
        .disconnected(socket.id, label, || socket.rooms());
    // A stream or a typing indicator does not outlive its connection, recovered or not:
    // the client asks for the rest of a stream again (`offset`), and starts typing again.
    conn.streams.cancel_all();
    handlers::typing::stop_all(&app, &socket, &conn).await;
    if let (Some(at), Some(pid), Some(store)) = (
        socket.recovery_saved_at(),
        socket.recovery_pid(),
        &app.state.recovery,
    ) && !app.state.is_shutting_down()
    {
        park(&app, socket.id, &conn, pid.to_owned(), at, store.clone());
        return;
    }
    let socket_ref = SocketRef::from(socket.clone());
    for room in conn.joined_rooms() {
        handlers::rooms::announce_left(&app.state, &socket_ref, &conn.user, &room).await;
    }
    if let Some(lease) = &conn.presence {
        handlers::presence::disconnected(lease).await;
    }
}

/// How long past the recovery window a parked socket waits before asking whether it was
/// recovered: a restore that began just inside the window is done by then.
const PARK_MARGIN: Duration = Duration::from_secs(1);
/// How often, and how long apart, a parked socket asks again when the store does not answer.
const DISCARD_ATTEMPTS: u32 = 5;
const DISCARD_RETRY: Duration = Duration::from_secs(2);

/// A socket that went away and may recover its session: for the others it stays in its
/// rooms and its user online until the window is over. Then, if no client restored the
/// session, the rooms are told it left and its presence is released, as on any disconnect;
/// if one did, the recovered socket holds both now. When the server stops first, it is as
/// if no client restored it (the client may still recover through another instance, and
/// is announced again there).
fn park<A: Adapter>(
    app: &App<A>,
    sid: Sid,
    conn: &Conn,
    pid: String,
    at: u64,
    store: Arc<dyn SessionStore>,
) {
    let wait = store.window() + PARK_MARGIN;
    let parked = Box::new(Parked {
        app: app.clone(),
        sid,
        user: conn.user.clone(),
        joined: conn.joined_rooms(),
        lease: conn.presence.as_ref().and_then(Lease::park),
        pid,
        at,
        store,
    });
    app.state.parking.spawn(move |stopping| async move {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = stopping.wait() => true,
        };
        // Boxed: the many waiting sockets hold only a timer and this pointer, not the
        // state of the Redis calls and emits that end the wait.
        Box::pin(parked.settle(stopped)).await;
    });
}

/// What a socket that may recover leaves behind meanwhile.
struct Parked<A: Adapter> {
    app: App<A>,
    sid: Sid,
    user: User,
    joined: Vec<Room>,
    lease: Option<Lease>,
    pid: String,
    at: u64,
    store: Arc<dyn SessionStore>,
}

impl<A: Adapter> Parked<A> {
    async fn settle(self: Box<Self>, stopped: bool) {
        let outcome = if stopped {
            Outcome::Lost
        } else {
            discard(&*self.store, &self.pid, self.at).await
        };
        match outcome {
            Outcome::Restored => {
                if let Some(lease) = &self.lease {
                    lease.forget(self.app.io.get_socket(self.sid).is_some());
                }
            }
            Outcome::Lost => {
                for room in &self.joined {
                    handlers::rooms::announce_gone(&self.app, &self.user, room).await;
                }
                if let Some(lease) = &self.lease {
                    handlers::presence::disconnected(lease).await;
                }
            }
        }
    }
}

/// Ends the wait for a session; a store that does not answer is asked again a few times,
/// then the session is taken as lost (its socket's rooms and presence are released).
async fn discard(store: &dyn SessionStore, pid: &str, at: u64) -> Outcome {
    for attempt in 1..=DISCARD_ATTEMPTS {
        match store.discard(pid, at).await {
            Ok(outcome) => return outcome,
            Err(e) if attempt < DISCARD_ATTEMPTS => {
                tracing::debug!(error = %e, "recovery store did not answer; asking again");
                tokio::time::sleep(DISCARD_RETRY).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "recovery store did not answer; the session is taken as lost")
            }
        }
    }
    Outcome::Lost
}

/// Receives every event of a socket, in arrival order (socketioxide calls it from the
/// connection's read loop), counts and rate-limits it there, and queues it so that one
/// socket's events are handled one after the other, as the Node backend's clients expect.
struct Dispatcher<A: Adapter> {
    app: App<A>,
}

impl<A: Adapter> MessageHandler<A, Dispatcher<A>> for Dispatcher<A> {
    fn call(&self, s: Arc<Socket<A>>, mut value: Value, ack: Option<i64>) {
        let state = &self.app.state;
        let Ok(Event(name)) = Event::from_message_parts(&s, &mut value, &ack) else {
            return;
        };
        let Some(conn) = conn_of(&s) else { return };
        let event = ClientEvent::from_name(&name);
        state.metrics.event(event);
        // Unknown names count like any other event (contract section 10): answering them
        // costs the server as much, and a flood of them is refused, then disconnected.
        let counted = event.is_none_or(|e| e.is_rate_limited());
        let verdict = if counted {
            conn.limiter.check()
        } else {
            Verdict::Allow
        };
        let work = match (verdict, event) {
            (Verdict::Refuse, _) => {
                state.metrics.rate_limited();
                Work::Refuse(AppError::new(Code::RateLimited, "Too many events"))
            }
            (Verdict::Disconnect, _) => {
                state.metrics.rate_limited();
                Work::RefuseAndDisconnect(AppError::new(Code::RateLimited, "Too many events"))
            }
            (Verdict::Allow, None) => {
                // Echo at most 64 characters of a name the client chose.
                let shown: String = name.chars().take(64).collect();
                Work::Refuse(AppError::invalid(format!("Unknown event {shown:?}")))
            }
            (Verdict::Allow, Some(event)) => Work::Handle(event, value),
        };
        let bytes = match &work {
            Work::Handle(_, value) => payload_bytes(value),
            _ => 0,
        };
        let start = {
            let mut inbox = conn.inbox.lock().unwrap_or_else(|e| e.into_inner());
            if inbox.queue.len() >= MAX_PENDING_EVENTS
                || (!inbox.queue.is_empty() && inbox.bytes + bytes > MAX_PENDING_BYTES)
            {
                drop(inbox);
                state.metrics.rate_limited();
                let e = AppError::new(Code::RateLimited, "Too many events waiting");
                reply(&self.app, &s, ack, Err(e));
                return;
            }
            inbox.bytes += bytes;
            inbox.queue.push_back(Job { work, ack, bytes });
            !std::mem::replace(&mut inbox.running, true)
        };
        if start {
            tokio::spawn(drain(self.app.clone(), s, conn));
        }
    }
}

/// Handles the socket's queued events one by one until the queue is empty.
async fn drain<A: Adapter>(app: App<A>, socket: Arc<Socket<A>>, conn: Arc<Conn>) {
    loop {
        let job = {
            let mut inbox = conn.inbox.lock().unwrap_or_else(|e| e.into_inner());
            match inbox.queue.pop_front() {
                Some(job) => {
                    inbox.bytes -= job.bytes;
                    job
                }
                None => {
                    inbox.running = false;
                    return;
                }
            }
        };
        if !socket.connected() {
            continue;
        }
        match job.work {
            Work::DeliverOffline => {
                // Boxed, as each handler is (`handlers::dispatch`): the queue task stays small.
                let delivery =
                    Box::pin(handlers::messages::deliver_offline(&app, &socket, &conn)).await;
                if delivery == handlers::messages::Delivery::Retry {
                    retry_offline_later(&app, &socket);
                }
            }
            Work::Handle(event, mut value) => {
                let handled = std::panic::AssertUnwindSafe(handlers::handle(
                    &app, &socket, &conn, event, &mut value,
                ))
                .catch_unwind()
                .await;
                let (result, after) = handled.unwrap_or_else(|_| {
                    tracing::error!(sid = %socket.id, event = event.name(), "handler panicked");
                    (Err(AppError::new(Code::Internal, "Internal error")), None)
                });
                if let Some(cause) = result.as_ref().err().and_then(AppError::cause) {
                    // The one place a failure of the server is logged: with its whole chain
                    // of contexts, which the client never sees.
                    tracing::error!(
                        sid = %socket.id, user = %conn.user.id, event = event.name(),
                        error = format!("{cause:#}"), "event failed"
                    );
                }
                reply(&app, &socket, job.ack, result);
                if let Some(start) = after {
                    start();
                }
            }
            Work::Refuse(e) => reply(&app, &socket, job.ack, Err(e)),
            Work::RefuseAndDisconnect(e) => {
                reply(&app, &socket, job.ack, Err(e));
                app.state.metrics.rate_limit_disconnect();
                tracing::warn!(sid = %socket.id, user = %conn.user.id, "disconnecting a socket that keeps flooding");
                if let Err(e) = socket.clone().disconnect() {
                    tracing::warn!(sid = %socket.id, error = %e, "could not disconnect a flooding socket");
                }
            }
        }
    }
}

/// The database did not answer while this socket's offline messages were read: they stay
/// queued, and the delivery is queued again after 5 to 10 s (spread, so that the sockets
/// of a reconnect storm do not all come back at once), for as long as the socket stays.
fn retry_offline_later<A: Adapter>(app: &App<A>, socket: &Arc<Socket<A>>) {
    use std::hash::BuildHasher;
    let spread = std::hash::RandomState::new().hash_one(socket.id) % 5_000;
    let delay = std::time::Duration::from_millis(5_000 + spread);
    let (app, socket) = (app.clone(), Arc::downgrade(socket));
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let Some(socket) = socket.upgrade().filter(|s| s.connected()) else {
            return;
        };
        let Some(conn) = conn_of(&socket) else { return };
        let start = {
            let mut inbox = conn.inbox.lock().unwrap_or_else(|e| e.into_inner());
            inbox.queue.push_back(Job {
                work: Work::DeliverOffline,
                ack: None,
                bytes: 0,
            });
            !std::mem::replace(&mut inbox.running, true)
        };
        if start {
            tokio::spawn(drain(app, socket, conn));
        }
    });
}

/// Answers an event: its ack when the client asked for one, else an `error` event on
/// failure and nothing on success.
fn reply<A: Adapter>(
    app: &App<A>,
    socket: &Arc<Socket<A>>,
    ack: Option<i64>,
    result: Result<Json, AppError>,
) {
    if let Err(e) = &result {
        app.state.metrics.count(e.code);
    }
    let sent = match (result, ack) {
        (Ok(body), Some(_)) => ack_sender(socket, ack).send(&Success(body)),
        (Err(e), Some(_)) => ack_sender(socket, ack).send(&Failure::from(&e)),
        (Err(e), None) => socket.emit("error", &Failure::from(&e)),
        (Ok(_), None) => Ok(()),
    };
    if let Err(e) = sent {
        tracing::debug!(sid = %socket.id, error = %e, "could not answer an event");
    }
}

fn ack_sender<A: Adapter>(socket: &Arc<Socket<A>>, ack: Option<i64>) -> AckSender<A> {
    let mut empty = Value::Str(Default::default(), None);
    match AckSender::from_message_parts(socket, &mut empty, &ack) {
        Ok(sender) => sender,
        Err(never) => match never {},
    }
}

/// `{ success: true, ...body }`, written out as it is serialised: inserting `success` into
/// the body's map first was about 2% of the instructions of a `join_room` ack.
struct Success(Json);

impl serde::Serialize for Success {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let fields = match &self.0 {
            Json::Object(fields) => Some(fields),
            _ => None,
        };
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("success", &true)?;
        for (k, v) in fields.into_iter().flatten() {
            if k != "success" {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn success_goes_first_and_wins() {
        let body = json!({"room": "task:1", "size": 2, "success": false});
        assert_eq!(
            serde_json::to_value(Success(body)).unwrap(),
            json!({"success": true, "room": "task:1", "size": 2})
        );
        assert_eq!(
            serde_json::to_string(&Success(json!({"a": 1}))).unwrap(),
            r#"{"success":true,"a":1}"#
        );
        assert_eq!(
            serde_json::to_value(Success(Json::Null)).unwrap(),
            json!({"success": true})
        );
    }
}
