//! ## A [`Socket`] represents a client connection to the server
//!
//! It can be used to :
//! * Emit binary or string data
//! * Get a reference to the request made to connect to the socket.io server
//! * Close the connection
//!
//! #### Example :
//! ```rust
//! # use bytes::Bytes;
//! # use engineioxide::service::EngineIoService;
//! # use engineioxide::handler::EngineIoHandler;
//! # use engineioxide::{Socket, DisconnectReason, Str};
//! # use std::sync::{Mutex, Arc};
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! // Global state
//! #[derive(Debug, Default)]
//! struct MyHandler {
//!     user_cnt: AtomicUsize,
//! }
//!
//! // Socket state
//! #[derive(Debug, Default)]
//! struct SocketState {
//!     id: Mutex<String>,
//! }
//!
//! impl EngineIoHandler for MyHandler {
//!     type Data = SocketState;
//!
//!     fn on_connect(self: Arc<Self>, socket: Arc<Socket<SocketState>>) {
//!         // Get the request made to initialize the connection
//!         // and check that the authorization header is correct
//!         let connected = socket.req_parts.headers.get("Authorization")
//!             .map(|a| a == "mysuperpassword!").unwrap_or_default();
//!         // Close the socket if the authentication is invalid
//!         if !connected {
//!             socket.close(DisconnectReason::TransportError);
//!             return;
//!         }
//!
//!         let cnt = self.user_cnt.fetch_add(1, Ordering::Relaxed) + 1;
//!         // Emit string data to the client
//!         socket.emit(cnt.to_string()).ok();
//!     }
//!     fn on_disconnect(&self, socket: Arc<Socket<SocketState>>, reason: DisconnectReason) {
//!         let cnt = self.user_cnt.fetch_sub(1, Ordering::Relaxed) - 1;
//!     }
//!     fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<SocketState>>) {
//!         *socket.data.id.lock().unwrap() = msg.into(); // bind a provided user id to a socket
//!     }
//!     fn on_binary(self: &Arc<Self>, data: Bytes, socket: Arc<Socket<SocketState>>) { }
//! }
//!
//! let svc = EngineIoService::new(Arc::new(MyHandler::default()));
//! ```
use std::{
    collections::VecDeque,
    fmt::Debug,
    sync::{
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{config::EngineIoConfig, errors::Error};
use bytes::Bytes;
use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Str, TransportType};
use http::request::Parts;
use smallvec::{SmallVec, smallvec};
use tokio::sync::{
    Mutex,
    mpsc::{self, Receiver, error::TrySendError},
};

pub use engineioxide_core::Sid;
use tokio_util::sync::CancellationToken;

/// A [`DisconnectReason`] represents the reason why a [`Socket`] was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client gracefully closed the connection
    TransportClose,
    /// The client sent multiple polling requests at the same time (it is forbidden according to the engine.io protocol)
    MultipleHttpPollingError,
    /// The client sent a bad request / the packet could not be parsed correctly
    PacketParsingError,
    /// An error occured in the transport layer
    /// (e.g. the client closed the connection without sending a close packet)
    TransportError,
    /// The client did not respond to the heartbeat
    HeartbeatTimeout,
    /// The server is being closed
    ClosingServer,
    /// Trestle patch: the client did not read what was sent to it: its queue was over
    /// [`EngineIoConfig::max_buffer_bytes`] or its packet buffer was full
    /// (only with `max_buffer_bytes` set).
    SlowConsumer,
}

/// Trestle patch: how long a polling session closed by the server waits for the client
/// to take its last packets (see [`Socket::close`]). A polling client asks again as soon as
/// a poll is answered and an upgrade takes a round trip or two; one that has not come back
/// by then is taken to be gone.
pub(crate) const CLOSE_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
// Trestle patch: the values of `Socket::close_state`.
const OPEN: u8 = 0;
const CLOSE_WAITING: u8 = 1;
const CLOSE_DELIVERED: u8 = 2;

/// Trestle patch: the bytes of packets waiting for one socket's transport, and the bound
/// past which the socket is closed as a slow consumer (`None`: no bound, and a full packet
/// buffer refuses the packet, as on crates.io).
#[derive(Debug)]
pub(crate) struct SendBudget {
    queued: AtomicUsize,
    max: Option<usize>,
}

impl SendBudget {
    fn new(max: Option<usize>) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            max,
        }
    }

    /// The size a packet buffer is counted for (at least 1 byte a packet).
    pub(crate) fn len_of(packets: &PacketBuf) -> usize {
        packets
            .iter()
            .map(|p| match p {
                Packet::Message(m) => m.len().max(1),
                Packet::Binary(b) | Packet::BinaryV3(b) => b.len().max(1),
                _ => 1,
            })
            .sum()
    }

    /// Counts `n` bytes as queued if they fit: a socket with nothing queued always takes
    /// one more buffer, so a single large packet is never refused by itself.
    fn try_take(&self, n: usize) -> bool {
        let Some(max) = self.max else { return true };
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before > 0 && before + n > max {
            self.release(n);
            return false;
        }
        true
    }

    /// Counts `n` bytes as queued if the queue stays within half the bound (a volatile
    /// packet: dropped rather than let a client that is behind fall further behind).
    fn try_take_within_half(&self, n: usize) -> bool {
        let Some(max) = self.max else { return true };
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before > 0 && before + n > max / 2 {
            self.release(n);
            return false;
        }
        true
    }

    /// Counts `n` bytes as queued, whatever the bound (control packets, a packet put back).
    pub(crate) fn add(&self, n: usize) {
        if self.max.is_some() {
            self.queued.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// `n` bytes left the queue: sent to the transport, or not queued after all.
    pub(crate) fn release(&self, n: usize) {
        if self.max.is_some() {
            // Saturating: a miscount must never wrap into a huge queue.
            self.queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    Some(q.saturating_sub(n))
                })
                .ok();
        }
    }

    /// `packets` left the queue for the transport.
    pub(crate) fn sent(&self, packets: &PacketBuf) {
        self.release(Self::len_of(packets));
    }

    /// Whether a full buffer or an exceeded bound closes the socket.
    fn closes_slow_consumers(&self) -> bool {
        self.max.is_some()
    }
}

/// Trestle patch: what `internal_tx` carries. Boxed because tokio's bounded channel
/// allocates its first block of 32 slots with the channel: 32 inline `PacketBuf`s were
/// 5.3 KB for every socket, idle or not; 32 boxes are 256 bytes.
pub(crate) type Queued = Box<PacketBuf>;

/// Trestle patch: the request parts a socket keeps for its whole life, in allocations of
/// their own. hyper parses the URI and header values as slices of its connection read
/// buffer (16 KB), so keeping them kept that whole buffer alive for every socket.
fn compact_parts(mut parts: Parts) -> Parts {
    let mut headers = http::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in parts.headers.iter() {
        let mut copy = http::HeaderValue::from_bytes(value.as_bytes())
            .unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        headers.append(name.clone(), copy);
    }
    parts.headers = headers;
    if let Ok(uri) = parts.uri.to_string().parse() {
        parts.uri = uri;
    }
    parts
}

/// Convert an [`Error`] to a [`DisconnectReason`] if possible
/// This is used to notify the [`Handler`](crate::handler::EngineIoHandler) of the reason why a [`Socket`] was closed
/// If the error cannot be converted to a [`DisconnectReason`] it means that the error was not fatal and the [`Socket`] can be kept alive
impl From<&Error> for Option<DisconnectReason> {
    fn from(err: &Error) -> Self {
        use Error::*;
        match err {
            WsTransport(_) => Some(DisconnectReason::TransportError),
            BadPacket(_) | PacketParse(_) => Some(DisconnectReason::PacketParsingError),
            HeartbeatTimeout => Some(DisconnectReason::HeartbeatTimeout),
            _ => None,
        }
    }
}

/// A permit to emit a message to the client.
/// A permit holds a place in the internal channel to send one packet to the client.
pub struct Permit<'a> {
    inner: mpsc::Permit<'a, Queued>,
    budget: &'a SendBudget,
    sid: Sid,
    close_fn: &'a (dyn Fn(Sid, DisconnectReason) + Send + Sync),
}
impl Permit<'_> {
    /// Trestle patch: sends within the socket's byte budget, else closes it as a slow
    /// consumer (the packets are dropped with the connection).
    fn send(self, packets: PacketBuf) {
        if self.budget.try_take(SendBudget::len_of(&packets)) {
            self.inner.send(Box::new(packets));
        } else {
            drop(self.inner);
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?self.sid, "send budget exceeded, closing slow consumer");
            (self.close_fn)(self.sid, DisconnectReason::SlowConsumer);
        }
    }

    /// Consume the permit and emit a message to the client.
    #[inline]
    pub fn emit(self, msg: Str) {
        self.send(smallvec![Packet::Message(msg)]);
    }
    /// Consume the permit and emit a binary message to the client.
    #[inline]
    pub fn emit_binary(self, data: Bytes) {
        self.send(smallvec![Packet::Binary(data)]);
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many(self, msg: Str, data: VecDeque<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Message(msg));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        self.send(packets);
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many_binary(self, bin: Bytes, data: Vec<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Binary(bin));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        self.send(packets);
    }
}

#[derive(Debug)]
pub(crate) struct InternalRx {
    pub buffered_rx: Receiver<Queued>,
    pub peeked_packet: Option<PacketBuf>,
}

impl InternalRx {
    fn new(buffered_rx: Receiver<Queued>) -> Self {
        Self {
            buffered_rx,
            peeked_packet: None,
        }
    }
}

/// A [`Socket`] represents a client connection to the server.
/// It is agnostic to the [`TransportType`].
///
/// It handles :
/// * the packet communication between with the `Engine`
///   and the user defined [`Handler`](crate::handler::EngineIoHandler).
/// * the user defined [`Data`](crate::handler::EngineIoHandler::Data) bound to the socket.
/// * the heartbeat job that verify that the connection is still up by sending packets periodically.
pub struct Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// The socket id
    pub id: Sid,

    /// The protocol version used by the socket
    pub protocol: ProtocolVersion,

    /// The transport type represented as a bitfield
    /// It is represented as a bitfield to allow the use of an [`AtomicU8`] so it can be shared between threads
    /// without any mutex
    transport: AtomicU8,

    /// Whether the socket is currently upgrading to a new transport.
    upgrading: AtomicBool,

    /// Trestle patch: whether a close by the server waits for the client to take the
    /// close packet (see [`Socket::close`]): `OPEN`, `CLOSE_WAITING` or `CLOSE_DELIVERED`.
    close_state: AtomicU8,

    /// Channel to send [`PacketBuf`] to the connection
    ///
    /// It is used and managed by the [`EngineIo`](crate::engine) struct depending on the transport type
    ///
    /// It is locked if [`EngineIo`](crate::engine) is currently reading from it :
    /// * In case of polling transport it will be locked and released for each request
    /// * In case of websocket transport it will always be locked until the connection is closed
    ///
    /// Closing behavior is driven by the [`Socket::cancellation_token`].
    ///
    /// The channel is made of a [`SmallVec`] of [`Packet`]s so that adjacent packets can be sent atomically.
    pub(crate) internal_rx: Mutex<InternalRx>,

    /// Channel to send [PacketBuf] to the internal connection
    pub(crate) internal_tx: mpsc::Sender<Queued>,

    /// Trestle patch: bytes waiting in `internal_tx`, and their bound.
    pub(crate) budget: SendBudget,


    /// Trestle patch: when the last Pong [`Packet`] (v4 protocol) or Ping (v3 protocol) came
    /// from the connection; the engine's heartbeat task reads it (`crate::heartbeat`).
    last_heard: std::sync::Mutex<tokio::time::Instant>,

    /// A cancellation token that will be triggered when the socket is being closed.
    pub(crate) cancellation_token: CancellationToken,

    /// Function to call when the socket is closed
    close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    /// User data bound to the socket
    pub data: D,

    /// Http Request data used to create a socket
    pub req_parts: Parts,

    /// If the client supports binary packets (via polling XHR2)
    pub(crate) supports_binary: bool,
}

impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    pub(crate) fn new(
        protocol: ProtocolVersion,
        transport: TransportType,
        config: &EngineIoConfig,
        req_parts: Parts,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        supports_binary: bool,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::channel(config.max_buffer_size);

        Self {
            id: Sid::new(),
            protocol,
            transport: AtomicU8::new(transport as u8),
            upgrading: AtomicBool::new(false),
            close_state: AtomicU8::new(OPEN),

            internal_rx: Mutex::new(InternalRx::new(internal_rx)),
            internal_tx,
            budget: SendBudget::new(config.max_buffer_bytes),


            last_heard: std::sync::Mutex::new(tokio::time::Instant::now()),
            cancellation_token: CancellationToken::new(),

            close_fn,

            data: D::default(),
            req_parts: compact_parts(req_parts),

            supports_binary,
        }
    }

    /// Sends a packet to the connection.
    pub(crate) fn send(&self, packet: Packet) -> Result<(), TrySendError<Packet>> {
        #[cfg(feature = "tracing")]
        tracing::debug!(?packet, "sending packet");

        let mut packets: PacketBuf = smallvec![packet];
        let len = SendBudget::len_of(&packets);
        if !self.budget.try_take(len) {
            self.close_slow_consumer();
            return Err(TrySendError::Full(packets.pop().unwrap()));
        }
        self.internal_tx.try_send(Box::new(packets)).map_err(|p| {
            self.budget.release(len);
            match p {
                TrySendError::Full(mut p) => {
                    self.close_slow_consumer();
                    TrySendError::Full(p.pop().unwrap())
                }
                TrySendError::Closed(mut p) => TrySendError::Closed(p.pop().unwrap()),
            }
        })?;
        Ok(())
    }

    /// Trestle patch: queues a control packet (ping, pong, close), counted in the budget
    /// but never refused by it.
    pub(crate) fn send_control(&self, packet: Packet) -> Result<(), TrySendError<Queued>> {
        let packets: PacketBuf = smallvec![packet];
        let len = SendBudget::len_of(&packets);
        self.budget.add(len);
        self.internal_tx
            .try_send(Box::new(packets))
            .inspect_err(|_| self.budget.release(len))
    }

    /// Trestle patch: closes a socket that does not read what is sent to it, when the
    /// budget has a bound (without one, a full buffer only refuses packets, as upstream).
    fn close_slow_consumer(&self) {
        if self.budget.closes_slow_consumers() {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?self.id, "send buffer full, closing slow consumer");
            (self.close_fn)(self.id, DisconnectReason::SlowConsumer);
        }
    }
    pub(crate) fn is_upgrading(&self) -> bool {
        self.upgrading.load(Ordering::Relaxed)
    }
    pub(crate) fn start_upgrade(&self) {
        self.upgrading.store(true, Ordering::Relaxed);
    }

    /// Trestle patch: a Pong (v4) or Ping (v3) came from the client. A v3 ping is answered
    /// here, at once (crates.io answered from the socket's heartbeat task, which is gone:
    /// see `crate::heartbeat`).
    pub(crate) fn heard(&self) {
        *self.last_heard.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        if self.protocol == ProtocolVersion::V3 {
            // A full queue closes the socket as a slow consumer.
            self.send_control(Packet::Pong).ok();
        }
    }

    /// Trestle patch: when the client was last heard from (see [`Socket::heard`]).
    pub(crate) fn last_heard(&self) -> tokio::time::Instant {
        *self.last_heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Trestle patch: whether the client was heard from at or after `at`.
    pub(crate) fn heard_since(&self, at: tokio::time::Instant) -> bool {
        self.last_heard() >= at
    }

    /// Returns true if the [`Socket`] has a websocket [`TransportType`]
    pub(crate) fn is_ws(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Websocket as u8
    }
    /// returns true if the [`Socket`] has an HTTP [`TransportType`]
    pub(crate) fn is_http(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Polling as u8
    }

    /// Sets the [`TransportType`] to WebSocket
    /// Used when the client upgrade the connection from HTTP to WebSocket
    pub(crate) fn upgrade_to_websocket(&self) {
        self.upgrading.store(false, Ordering::Relaxed);
        self.transport
            .store(TransportType::Websocket as u8, Ordering::Relaxed);
    }

    /// Returns the current [`TransportType`] of the [`Socket`]
    pub fn transport_type(&self) -> TransportType {
        TransportType::from(self.transport.load(Ordering::Relaxed))
    }

    /// Reserve `n` permits to emit multiple messages and ensure that there is enough
    /// space in the internal chan.
    ///
    /// If the internal chan is full, the function will return a [`TrySendError::Full`] error.
    /// If the socket is closed, the function will return a [`TrySendError::Closed`] error.
    #[inline]
    pub fn reserve(&self) -> Result<Permit<'_>, TrySendError<()>> {
        let permit = self.internal_tx.try_reserve().inspect_err(|e| {
            if matches!(e, TrySendError::Full(_)) {
                self.close_slow_consumer();
            }
        })?;
        Ok(Permit {
            inner: permit,
            budget: &self.budget,
            sid: self.id,
            close_fn: &*self.close_fn,
        })
    }

    /// Emits a message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a text frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit(&self, msg: impl Into<Str>) -> Result<(), TrySendError<Str>> {
        self.send(Packet::Message(msg.into())).map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_message()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_message()),
        })
    }

    /// Immediately closes the socket and the underlying connection.
    /// The socket will be removed from the `Engine` and the [`Handler`](crate::handler::EngineIoHandler) will be notified.
    ///
    /// Trestle patch: with [`DisconnectReason::ClosingServer`], a polling session (one
    /// being upgraded included) is closed only once the client has taken what was queued,
    /// the close packet last: in its next poll, or over the websocket if the upgrade
    /// finishes first; at the latest after [`CLOSE_DELIVERY_TIMEOUT`]. Closing it at once
    /// dropped those packets whenever no poll was waiting at the server or an upgrade was
    /// in progress (socket.io's engine waits for the next poll the same way).
    #[cfg_attr(feature = "tracing", tracing::instrument(skip(self)))]
    pub fn close(&self, reason: DisconnectReason) {
        // Trestle patch: set before the close packet is queued, so a transport that takes
        // the packet sees the close waiting for it.
        if reason == DisconnectReason::ClosingServer && self.is_http() {
            self.close_state
                .compare_exchange(OPEN, CLOSE_WAITING, Ordering::AcqRel, Ordering::Acquire)
                .ok();
        }
        // Try to send a close packet is the connection is still operational.
        // (Trestle patch: not through `send`, whose slow-consumer close would come first
        // and replace `reason`.)
        self.send_control(Packet::Close).ok();

        (self.close_fn)(self.id, reason);
    }

    /// Trestle patch: whether a close by the server waits for the client to take the
    /// close packet (see [`Socket::close`]).
    pub(crate) fn close_waits_for_delivery(&self) -> bool {
        self.close_state.load(Ordering::Acquire) == CLOSE_WAITING
    }

    /// Trestle patch: a transport has handed the close packet to the client (or the wait
    /// is over): a close that waited for it now completes.
    pub(crate) fn close_delivered(&self) {
        if self
            .close_state
            .compare_exchange(CLOSE_WAITING, CLOSE_DELIVERED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            (self.close_fn)(self.id, DisconnectReason::ClosingServer);
        }
    }

    /// Returns true if the socket is closed
    /// It means that no more packets can be sent to the client
    pub fn is_closed(&self) -> bool {
        self.internal_tx.is_closed()
    }

    /// Wait for the socket to be fully closed
    pub async fn closed(&self) {
        self.internal_tx.closed().await
    }

    /// Emits a binary message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a binary frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame **encoded in base64** to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit_binary<B: Into<Bytes>>(&self, data: B) -> Result<(), TrySendError<Bytes>> {
        if self.protocol == ProtocolVersion::V3 {
            self.send(Packet::BinaryV3(data.into()))
        } else {
            self.send(Packet::Binary(data.into()))
        }
        .map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_binary()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_binary()),
        })
    }

    /// Try to send a volatile message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Because volatile messages bypass the main mpsc buffer queue, they may
    /// arrive out of order relative to regular messages.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped (channel full or transport shutting down).
    #[inline]
    pub fn emit_volatile(&self, msg: impl Into<Str>) -> bool {
        self.send_volatile(smallvec![Packet::Message(msg.into())])
    }

    /// Try to send a volatile binary message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_binary_volatile<B: Into<Bytes>>(&self, data: B) -> bool {
        if self.protocol == ProtocolVersion::V3 {
            self.send_volatile(smallvec![Packet::BinaryV3(data.into())])
        } else {
            self.send_volatile(smallvec![Packet::Binary(data.into())])
        }
    }

    /// Try to send a volatile message with multiple adjacent binary payloads.
    /// The message and all binary payloads are sent atomically as a single
    /// volatile write.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_many_volatile(&self, msg: Str, data: VecDeque<Bytes>) -> bool {
        let mut packets = SmallVec::with_capacity(1 + data.len());
        packets.push(Packet::Message(msg));
        for bin in data {
            packets.push(Packet::Binary(bin));
        }
        self.send_volatile(packets)
    }

    /// Trestle patch: a volatile packet waits in the send queue with the others, in order,
    /// when the client keeps up (its queue at most half full, in packets and in bytes), and
    /// is dropped when it does not; it never closes the socket as a slow consumer. Upstream
    /// kept only the latest volatile packet in a `watch` channel beside the queue, so a
    /// client that read everything still lost all but the last of a burst (typing relays
    /// from several people at once), and every socket paid for the channel (~500 bytes).
    pub(crate) fn send_volatile(&self, packets: PacketBuf) -> bool {
        if self.internal_tx.capacity() * 2 < self.internal_tx.max_capacity() {
            return false;
        }
        let len = SendBudget::len_of(&packets);
        if !self.budget.try_take_within_half(len) {
            return false;
        }
        match self.internal_tx.try_send(Box::new(packets)) {
            Ok(()) => true,
            Err(_) => {
                self.budget.release(len);
                false
            }
        }
    }
}

impl<D: Default + Send + Sync + 'static> std::fmt::Debug for Socket<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("sid", &self.id)
            .field("protocol", &self.protocol)
            .field("conn", &self.transport)
            .field("internal_rx", &self.internal_rx)
            .field("internal_tx", &self.internal_tx)
            .field("last_heard", &self.last_heard)
            .field("cancellation_token", &self.cancellation_token)
            .field("req_data", &self.req_parts)
            .finish()
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Drop for Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    fn drop(&mut self) {
        #[cfg(feature = "tracing")]
        tracing::debug!("[sid={}] dropping socket", self.id);
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// Create a dummy socket for testing purpose
    pub fn new_dummy(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    ) -> Arc<Socket<D>> {
        let (s, mut rx) = Socket::new_dummy_piped(sid, close_fn, 1024);
        tokio::spawn(async move {
            while let Some(_el) = rx.recv().await {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, ?_el, "emitting eio msg");
            }
        });
        s
    }

    /// Create a dummy socket for testing purpose with a
    /// receiver to get the packets sent to the client
    pub fn new_dummy_piped(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        buffer_size: usize,
    ) -> (Arc<Socket<D>>, tokio::sync::mpsc::Receiver<Packet>) {
        let (internal_tx, internal_rx) = mpsc::channel(buffer_size);

        let sock = Self {
            id: sid,
            protocol: ProtocolVersion::V4,
            transport: AtomicU8::new(TransportType::Websocket as u8),
            upgrading: AtomicBool::new(false),
            close_state: AtomicU8::new(OPEN),

            internal_rx: Mutex::new(InternalRx::new(internal_rx)),
            internal_tx,
            budget: SendBudget::new(None),


            last_heard: std::sync::Mutex::new(tokio::time::Instant::now()),
            cancellation_token: CancellationToken::new(),
            close_fn,

            data: D::default(),
            req_parts: http::Request::<()>::default().into_parts().0,

            supports_binary: true,
        };
        let sock = Arc::new(sock);

        let (tx, rx) = mpsc::channel(buffer_size);
        let sock_clone = sock.clone();
        tokio::spawn(async move {
            let mut internal_rx = sock_clone.internal_rx.try_lock().unwrap();
            while let Some(packets) = internal_rx.buffered_rx.recv().await {
                for packet in *packets {
                    tx.send(packet).await.unwrap();
                }
            }
        });

        (sock, rx)
    }
}
