use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock, Weak},
    time::Duration,
};

use crate::{
    ProtocolVersion, SocketError, SocketIoConfig,
    ack::AckInnerStream,
    adapter::Adapter,
    client::SocketData,
    errors::{ConnectFail, Error},
    handler::{BoxedConnectHandler, ConnectHandler, MakeErasedHandler},
    parser::Parser,
    recovery::{Kept, Offset, Session, SessionStore, reaches, with_offset},
    socket::{DisconnectReason, Socket, SocketRecovery},
};
use socketioxide_core::{
    Sid, Str, Uid, Value,
    adapter::{
        BroadcastFlags, BroadcastIter, BroadcastOptions, CoreLocalAdapter, RemoteSocketData,
        SocketEmitter,
    },
    packet::{ConnectPacket, Packet, PacketData},
    parser::Parse,
};

/// Trestle patch: the CONNECT answer with connection state recovery on.
#[derive(serde::Serialize)]
struct ConnectAnswer<'a> {
    sid: Sid,
    pid: &'a str,
}

/// Trestle patch: what a CONNECT payload may claim to recover (other fields ignored).
#[derive(serde::Deserialize)]
struct RecoveryClaim {
    pid: Option<Claimed>,
    offset: Option<Claimed>,
}

/// A claimed field: only a string counts, as with socket.io.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Claimed {
    Str(String),
    Other(serde::de::IgnoredAny),
}

/// A [`Namespace`] constructor used for dynamic namespaces
/// A namespace constructor only hold a common handler that will be cloned
/// to the instantiated namespaces.
pub struct NamespaceCtr<A: Adapter> {
    handler: BoxedConnectHandler<A>,
}
pub struct Namespace<A: Adapter> {
    pub path: Str,
    pub(crate) adapter: Arc<A>,
    parser: Parser,
    handler: BoxedConnectHandler<A>,
    sockets: RwLock<HashMap<Sid, Arc<Socket<A>>>>,
    /// Trestle patch: the socket of each engine.io session connected to this namespace,
    /// by engine.io session id (every packet a session sends is routed through it).
    /// A socket gets its own random id, as with socket.io v3+: the socket id is public
    /// (the CONNECT answer, rooms, logs) while the engine session id is a credential:
    /// whoever knows it can post and poll packets as that session over long-polling.
    esids: RwLock<HashMap<Sid, Arc<Socket<A>>>>,
    /// The engine.io session ids of the sockets that are connecting to this namespace, but which
    /// are not yet in [`Self::sockets`] because their middlewares are still running.
    connecting: Mutex<HashSet<Sid>>,
    /// Trestle patch: connection state recovery's store, when it is on.
    pub(crate) recovery: Option<Arc<dyn SessionStore>>,
    /// Trestle patch: held from keeping a broadcast to handing it to the adapter, so that
    /// this server's sockets get kept events in offset order (a client's last offset is
    /// then the highest it has, and a replay after it repeats nothing).
    order: tokio::sync::Mutex<()>,
}

/// Marks a socket as connecting to a namespace until dropped.
struct ConnectingGuard<'a, A: Adapter> {
    ns: &'a Namespace<A>,
    sid: Sid,
}
impl<'a, A: Adapter> ConnectingGuard<'a, A> {
    /// Returns `None` if the socket is already connected or connecting to this namespace.
    fn new(ns: &'a Namespace<A>, sid: Sid) -> Option<Self> {
        let mut connecting = ns.connecting.lock().unwrap();
        // A socket is inserted in `sockets` before its guard is dropped, so it is
        // always found in at least one of them when the connection is in progress or done.
        // Trestle patch: looked up by engine.io session id (`sockets` is keyed by socket id).
        if ns.esids.read().unwrap().contains_key(&sid) || !connecting.insert(sid) {
            return None;
        }
        Some(Self { ns, sid })
    }
}
impl<A: Adapter> Drop for ConnectingGuard<'_, A> {
    fn drop(&mut self) {
        self.ns.connecting.lock().unwrap().remove(&self.sid);
    }
}

/// ===== impl NamespaceCtr =====
impl<A: Adapter> NamespaceCtr<A> {
    pub fn new<C, T>(handler: C) -> Self
    where
        C: ConnectHandler<A, T> + Send + Sync + 'static,
        T: Send + Sync + 'static,
    {
        Self {
            handler: MakeErasedHandler::new_ns_boxed(handler),
        }
    }
    pub fn get_new_ns(
        &self,
        path: Str,
        adapter_state: &A::State,
        config: &SocketIoConfig,
    ) -> Arc<Namespace<A>> {
        let handler = self.handler.boxed_clone();
        Namespace::new_boxed(path, handler, adapter_state, config)
    }
}

impl<A: Adapter> Namespace<A> {
    pub(crate) fn new<C, T>(
        path: Str,
        handler: C,
        adapter_state: &A::State,
        config: &SocketIoConfig,
    ) -> Arc<Self>
    where
        C: ConnectHandler<A, T> + Send + Sync + 'static,
        T: Send + Sync + 'static,
    {
        let handler = MakeErasedHandler::new_ns_boxed(handler);
        Self::new_boxed(path, handler, adapter_state, config)
    }

    fn new_boxed(
        path: Str,
        handler: BoxedConnectHandler<A>,
        adapter_state: &A::State,
        config: &SocketIoConfig,
    ) -> Arc<Self> {
        let parser = config.parser;
        let ack_timeout = config.ack_timeout;
        let uid = config.server_id;
        Arc::new_cyclic(|ns| Self {
            path: path.clone(),
            handler,
            parser,
            sockets: HashMap::new().into(),
            esids: HashMap::new().into(), // Trestle patch
            connecting: HashSet::new().into(),
            recovery: config.recovery.clone(), // Trestle patch
            order: tokio::sync::Mutex::new(()),  // Trestle patch
            adapter: Arc::new(A::new(
                adapter_state,
                CoreLocalAdapter::new(Emitter::new(ns.clone(), parser, path, ack_timeout, uid)),
            )),
        })
    }

    /// Connects a socket to a namespace.
    ///
    /// Middlewares are first called to check if the connection is allowed.
    /// * If the handler returns an error, a connect_error packet is sent to the client.
    /// * If the handler returns Ok, a connect packet is sent to the client and the handler `is` called.
    ///
    /// A connect packet for a socket already connected or connecting to this namespace is ignored.
    /// Otherwise it would run the handlers twice and replace (or remove, if the middlewares reject
    /// it) the socket with the same id, without calling its disconnect handler.
    ///
    /// Trestle patch: `esid` is the engine.io session id; the socket gets a new random id.
    pub(crate) async fn connect(
        self: Arc<Self>,
        esid: Sid,
        esocket: Arc<engineioxide::Socket<SocketData<A>>>,
        auth: Option<Value>,
    ) -> Result<(), ConnectFail> {
        let Some(_guard) = ConnectingGuard::new(&self, esid) else {
            #[cfg(feature = "tracing")]
            tracing::debug!(%esid, ?self.path, "ignoring duplicate connect packet");
            return Err(ConnectFail);
        };
        // Trestle patch: a recovering client gets its previous session's socket id and
        // rooms, else the socket gets a new random id (never the engine.io session id).
        let previous = self.restore_session(&auth).await;
        let sid = previous.as_ref().map_or_else(Sid::new, |(s, _)| s.sid);
        let recovery = self.recovery.as_ref().map(|_| match &previous {
            Some((s, _)) => SocketRecovery::new(s.pid.clone(), Some(s.data.clone())),
            None => SocketRecovery::new(Sid::new().to_string() + &Sid::new().to_string(), None),
        });

        let socket: Arc<Socket<A>> =
            Socket::new(sid, self.clone(), esocket.clone(), self.parser, recovery).into();
        if let Some((session, _)) = &previous {
            self.adapter.get_local().add_all(sid, session.rooms.clone());
        }

        if let Err(e) = self.handler.call_middleware(socket.clone(), &auth).await {
            #[cfg(feature = "tracing")]
            tracing::trace!(ns = self.path.as_str(), ?socket.id, "emitting connect_error packet");

            // user middleware code might have made the socket join some
            // room in the local/remote adapter. The socket never enters `self.sockets`,
            // so nothing else will ever clean it up.
            self.remove_socket(sid);
            // Trestle patch: a refused client (another user's token, an expired one) did
            // not take the session: it stays for its owner.
            if let Some((session, _)) = previous {
                self.save_session(session);
            }

            let data = e.to_string();
            if let Err(_e) = socket.send(Packet::connect_error(self.path.clone(), data)) {
                #[cfg(feature = "tracing")]
                tracing::debug!(%sid, "error sending connect_error packet: {_e}, closing conn");

                esocket.close(engineioxide::DisconnectReason::PacketParsingError);
            }
            return Err(ConnectFail);
        }

        {
            // Trestle patch: and the engine.io session's entry, under the same lock.
            let mut sockets = self.sockets.write().unwrap();
            sockets.insert(sid, socket.clone());
            self.esids.write().unwrap().insert(esid, socket.clone());
        }
        #[cfg(feature = "tracing")]
        tracing::trace!(?socket.id, ?self.path, "socket added to namespace");

        // Trestle patch: the events the recovered socket missed, read now that live ones
        // reach it (and wait for the replay): none is lost between the two.
        let missed = match &previous {
            Some((session, offset)) => match self.missed(session, *offset).await {
                Some(missed) => Some(missed),
                None => {
                    // The client connects afresh next time; the session is gone.
                    self.remove_socket(sid);
                    if let Some(store) = self.recovery.clone() {
                        let (pid, at) = (session.pid.clone(), session.disconnected_at);
                        tokio::spawn(async move { store.discard(&pid, at).await });
                    }
                    esocket.close(engineioxide::DisconnectReason::TransportError);
                    return Err(ConnectFail);
                }
            },
            None => None,
        };

        let protocol = esocket.protocol.into();
        let payload = match protocol {
            ProtocolVersion::V5 => Some(match socket.recovery_pid() {
                // Trestle patch: the CONNECT answer carries the private session id.
                Some(pid) => self
                    .parser
                    .encode_default(&ConnectAnswer {
                        sid: socket.id,
                        pid,
                    })
                    .unwrap(),
                None => self
                    .parser
                    .encode_default(&ConnectPacket { sid: socket.id })
                    .unwrap(),
            }),
            ProtocolVersion::V4 => None,
        };
        if let Err(_e) = socket.send(Packet::connect(self.path.clone(), payload)) {
            #[cfg(feature = "tracing")]
            tracing::debug!(%sid, "error sending connect packet: {_e}, closing conn");

            self.remove_socket(sid);
            esocket.close(engineioxide::DisconnectReason::TransportError);
            return Err(ConnectFail);
        }

        // Trestle patch: the missed events, then those that came during the replay.
        if let Some(missed) = missed {
            let floor = missed.last().map(|(offset, _)| *offset);
            for (_, data) in missed {
                let _ = socket.send(Packet::event(self.path.clone(), data));
            }
            let replay = socket.recovery.as_ref().and_then(|r| r.replay.as_ref());
            for packet in replay.map(|r| r.finish(floor)).unwrap_or_default() {
                let _ = socket.send_raw(packet);
            }
        }

        socket.set_connected(true);
        self.handler.call(socket, auth);

        Ok(())
    }

    /// Trestle patch: the session a CONNECT payload's `pid` and `offset` name, with the
    /// offset, when recovery is on and the store still has both.
    async fn restore_session(&self, auth: &Option<Value>) -> Option<(Session, Offset)> {
        let store = self.recovery.as_ref()?;
        let claim: RecoveryClaim = self.parser.decode_default(auth.as_ref()).ok()?;
        let (Some(Claimed::Str(pid)), Some(Claimed::Str(offset))) = (claim.pid, claim.offset)
        else {
            return None;
        };
        let offset = Offset::parse(&offset)?;
        if pid.len() > 64 {
            return None;
        }
        match store.restore(&self.path, &pid, offset).await {
            Ok(session) => session.map(|s| (s, offset)),
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::warn!(error = %_e, "connection state recovery: could not restore a session");
                None
            }
        }
    }

    /// Trestle patch: the events after `offset` that reached `session`'s socket, with
    /// their offsets as last argument; `None` when they cannot all be had.
    async fn missed(&self, session: &Session, offset: Offset) -> Option<Vec<(Offset, Value)>> {
        let store = self.recovery.as_ref()?;
        let kept = match store.since(&self.path, offset, store.max_replay()).await {
            Ok(kept) => kept?,
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::warn!(error = %_e, "connection state recovery: could not read missed events");
                return None;
            }
        };
        let out = kept
            .into_iter()
            .filter(|(_, k)| reaches(&k.opts, session.sid, &session.rooms))
            .filter_map(|(at, k)| Some((at, with_offset(&k.data, at)?)))
            .collect();
        Some(out)
    }

    /// Trestle patch: saves the session of a socket that closed for a recoverable reason,
    /// with the rooms it was in (read before they are left).
    fn persist_session(
        &self,
        socket: &Socket<A>,
        rooms: Vec<socketioxide_core::adapter::Room>,
        at: u64,
    ) {
        let Some(r) = socket.recovery.as_ref() else {
            return;
        };
        self.save_session(Session {
            ns: self.path.clone(),
            sid: socket.id,
            pid: r.pid.clone(),
            rooms,
            data: r.data.lock().unwrap().clone(),
            disconnected_at: at,
        });
    }

    /// Trestle patch: saves `session` in the background.
    fn save_session(&self, session: Session) {
        let Some(store) = self.recovery.clone() else {
            return;
        };
        tokio::spawn(async move {
            if let Err(_e) = store.save(session).await {
                #[cfg(feature = "tracing")]
                tracing::warn!(error = %_e, "connection state recovery: could not save a session");
            }
        });
    }

    /// Trestle patch: keeps a broadcast event for recovery and gives it its offset, when
    /// recovery is on and the event may be kept (no ack, not volatile).
    /// The returned guard is to be held until the adapter has the packet.
    pub(crate) async fn keep(
        &self,
        packet: &mut Packet,
        opts: &BroadcastOptions,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let store = self.recovery.as_ref()?;
        if opts.has_flag(BroadcastFlags::Volatile) {
            return None;
        }
        let data = match &mut packet.inner {
            PacketData::Event(data, None) | PacketData::BinaryEvent(data, None) => data,
            _ => return None,
        };
        let order = self.order.lock().await;
        let kept = Kept {
            data: data.clone(),
            opts: opts.clone(),
        };
        match store.record(&self.path, &kept).await {
            Ok(Some(offset)) => {
                if let Some(with) = with_offset(data, offset) {
                    *data = with;
                }
            }
            Ok(None) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::warn!(error = %_e, "connection state recovery: could not keep an event");
            }
        }
        Some(order)
    }

    /// Removes a socket from a namespace
    pub fn remove_socket(&self, sid: Sid) {
        #[cfg(feature = "tracing")]
        tracing::trace!(?sid, ?self.path, "removing socket from namespace");

        // Trestle patch: remove its engine.io session's entry too.
        let _socket = {
            let mut sockets = self.sockets.write().unwrap();
            let socket = sockets.remove(&sid);
            if let Some(socket) = &socket {
                let mut esids = self.esids.write().unwrap();
                if esids
                    .get(&socket.esocket.id)
                    .is_some_and(|s| Arc::ptr_eq(s, socket))
                {
                    esids.remove(&socket.esocket.id);
                }
            }
            socket
        };
        // Trestle patch: a socket closed for a recoverable reason leaves its session.
        if let Some(socket) = &_socket
            && let Some(at) = socket.recovery_saved_at()
        {
            self.persist_session(socket, socket.rooms(), at);
        }
        self.adapter.get_local().del_all(sid);
    }

    pub fn has(&self, sid: Sid) -> bool {
        self.sockets.read().unwrap().values().any(|s| s.id == sid)
    }

    /// Trestle patch: `esid` is the engine.io session id of the sender.
    pub fn recv(&self, esid: Sid, packet: PacketData) -> Result<(), Error> {
        match packet {
            PacketData::Connect(_) => unreachable!("connect packets should be handled before"),
            PacketData::ConnectError(_) => Err(Error::InvalidPacketType),
            packet => self.get_esocket_socket(esid)?.recv(packet),
        }
    }

    /// Trestle patch: the socket of the engine.io session `esid` in this namespace.
    pub(crate) fn get_esocket_socket(&self, esid: Sid) -> Result<Arc<Socket<A>>, Error> {
        self.esids
            .read()
            .unwrap()
            .get(&esid)
            .cloned()
            .ok_or(Error::SocketGone(esid))
    }

    pub fn get_socket(&self, sid: Sid) -> Result<Arc<Socket<A>>, Error> {
        self.sockets
            .read()
            .unwrap()
            .get(&sid)
            .cloned()
            .ok_or(Error::SocketGone(sid))
    }

    pub fn get_sockets(&self) -> Vec<Arc<Socket<A>>> {
        self.sockets.read().unwrap().values().cloned().collect()
    }

    /// Closes the entire namespace :
    /// * Closes the adapter
    /// * Closes all the sockets and
    ///   their underlying connections in case of [`DisconnectReason::ClosingServer`]
    /// * Removes all the sockets from the namespace
    ///
    /// This function is using .await points only when called with [`DisconnectReason::ClosingServer`]
    pub async fn close(&self, reason: DisconnectReason) {
        use futures_util::future;
        let sockets = self.sockets.read().unwrap().clone();

        #[cfg(feature = "tracing")]
        tracing::debug!(?self.path, "closing {} sockets in namespace", sockets.len());

        if reason == DisconnectReason::ClosingServer {
            // When closing the underlying transport, this will indirectly close the socket
            // Therefore there is no need to manually call `s.close()`.
            future::join_all(sockets.values().map(|s| s.close_underlying_transport())).await;
        } else {
            for s in sockets.into_values() {
                let _sid = s.id;
                s.close(reason);
            }
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(?self.path, "all sockets in namespace closed");

        let _err = self.adapter.close().await;
        #[cfg(feature = "tracing")]
        if let Err(err) = _err {
            tracing::debug!(?err, ?self.path, "could not close adapter");
        }
    }
}

/// A type erased emitter to discard the adapter type parameter `A`.
/// Otherwise it creates a cyclic dependency between the namespace, the emitter and the adapter.
trait InnerEmitter: Send + Sync + 'static {
    /// Get the remote socket data from the socket ids.
    fn get_remote_sockets(&self, sids: BroadcastIter<'_>, uid: Uid) -> Vec<RemoteSocketData>;
    /// Get all the socket ids in the namespace.
    fn get_all_sids(&self, filter: &dyn Fn(&Sid) -> bool) -> Vec<Sid>;
    /// Send data to the list of socket ids.
    fn send_many(&self, sids: BroadcastIter<'_>, data: Value) -> Result<(), Vec<SocketError>>;
    /// Send data to the list of socket ids with volatile semantics.
    /// Errors are silently discarded.
    fn send_many_volatile(&self, sids: BroadcastIter<'_>, data: Value);
    /// Send data to the list of socket ids and get a stream of acks.
    fn send_many_with_ack(
        &self,
        sids: BroadcastIter<'_>,
        packet: Packet,
        timeout: Duration,
    ) -> (AckInnerStream, u32);
    /// Disconnect all the sockets in the list.
    fn disconnect_many(&self, sids: Vec<Sid>) -> Result<(), Vec<SocketError>>;
}

impl<A: Adapter> InnerEmitter for Namespace<A> {
    fn get_remote_sockets(&self, sids: BroadcastIter<'_>, uid: Uid) -> Vec<RemoteSocketData> {
        let sockets = self.sockets.read().unwrap();
        sids.filter_map(|sid| sockets.get(&sid))
            .map(|socket| RemoteSocketData {
                id: socket.id,
                ns: self.path.clone(),
                server_id: uid,
            })
            .collect()
    }
    fn get_all_sids(&self, filter: &dyn Fn(&Sid) -> bool) -> Vec<Sid> {
        self.sockets
            .read()
            .unwrap()
            .keys()
            .filter(|id| filter(id))
            .copied()
            .collect()
    }

    fn send_many(&self, sids: BroadcastIter<'_>, data: Value) -> Result<(), Vec<SocketError>> {
        let sockets = self.sockets.read().unwrap();
        let errs: Vec<SocketError> = sids
            .filter_map(|sid| sockets.get(&sid))
            .filter_map(|socket| socket.send_raw(data.clone()).err())
            .collect();
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    fn send_many_volatile(&self, sids: BroadcastIter<'_>, data: Value) {
        let sockets = self.sockets.read().unwrap();
        sids.filter_map(|sid| sockets.get(&sid))
            .for_each(|socket| socket.send_raw_volatile(data.clone()));
    }

    fn send_many_with_ack(
        &self,
        sids: BroadcastIter<'_>,
        packet: Packet,
        timeout: Duration,
    ) -> (AckInnerStream, u32) {
        let sockets_map = self.sockets.read().unwrap();
        let sockets = sids.filter_map(|sid| sockets_map.get(&sid));
        AckInnerStream::broadcast(packet, sockets, timeout)
    }

    fn disconnect_many(&self, sids: Vec<Sid>) -> Result<(), Vec<SocketError>> {
        if sids.is_empty() {
            return Ok(());
        }
        // Here we can't take a ref because this would cause a deadlock.
        // Ideally the disconnect / closing process should be refactored to avoid this.
        let sockets = {
            let sock_map = self.sockets.read().unwrap();
            sids.into_iter()
                .filter_map(|sid| sock_map.get(&sid))
                .cloned()
                .collect::<Vec<_>>()
        };

        let errs = sockets
            .into_iter()
            .filter_map(|socket| socket.disconnect().err())
            .collect::<Vec<_>>();
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

/// Internal interface implementor to apply global operations on a namespace.
#[doc(hidden)]
pub struct Emitter {
    /// This `Weak<dyn>` allows to break the cyclic dependency between the namespace and the emitter.
    ns: Weak<dyn InnerEmitter>,
    parser: Parser,
    path: Str,
    ack_timeout: Duration,
    uid: Uid,
}

impl Emitter {
    fn new<A: Adapter>(
        ns: Weak<Namespace<A>>,
        parser: Parser,
        path: Str,
        ack_timeout: Duration,
        uid: Uid,
    ) -> Self {
        Self {
            ns,
            parser,
            path,
            ack_timeout,
            uid,
        }
    }
}

impl SocketEmitter for Emitter {
    type AckError = crate::AckError;
    type AckStream = AckInnerStream;

    fn get_all_sids(&self, filter: impl Fn(&Sid) -> bool) -> Vec<Sid> {
        self.ns
            .upgrade()
            .map(|ns| ns.get_all_sids(&filter))
            .unwrap_or_default()
    }
    fn get_remote_sockets(&self, sids: BroadcastIter<'_>) -> Vec<RemoteSocketData> {
        self.ns
            .upgrade()
            .map(|ns| ns.get_remote_sockets(sids, self.uid))
            .unwrap_or_default()
    }

    fn send_many(&self, sids: BroadcastIter<'_>, data: Value) -> Result<(), Vec<SocketError>> {
        match self.ns.upgrade() {
            Some(ns) => ns.send_many(sids, data),
            None => Ok(()),
        }
    }

    fn send_many_volatile(&self, sids: BroadcastIter<'_>, data: Value) {
        if let Some(ns) = self.ns.upgrade() {
            ns.send_many_volatile(sids, data);
        }
    }

    fn send_many_with_ack(
        &self,
        sids: BroadcastIter<'_>,
        packet: Packet,
        timeout: Option<Duration>,
    ) -> (Self::AckStream, u32) {
        self.ns
            .upgrade()
            .map(|ns| ns.send_many_with_ack(sids, packet, timeout.unwrap_or(self.ack_timeout)))
            .unwrap_or((AckInnerStream::empty(), 0))
    }

    fn disconnect_many(&self, sids: Vec<Sid>) -> Result<(), Vec<SocketError>> {
        match self.ns.upgrade() {
            Some(ns) => ns.disconnect_many(sids),
            None => Ok(()),
        }
    }
    fn parser(&self) -> impl Parse {
        self.parser
    }
    fn server_id(&self) -> Uid {
        self.uid
    }
    fn path(&self) -> &Str {
        &self.path
    }
    fn ack_timeout(&self) -> Duration {
        self.ack_timeout
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl Namespace<crate::adapter::LocalAdapter> {
    pub fn new_dummy<const S: usize>(sockets: [Sid; S]) -> Arc<Self> {
        let ns = Namespace::new("/".into(), async || (), &(), &SocketIoConfig::default());
        for sid in sockets {
            let socket: Arc<Socket<_>> = Socket::new_dummy(sid, ns.clone()).into();
            ns.sockets.write().unwrap().insert(sid, socket.clone());
            ns.esids.write().unwrap().insert(sid, socket); // Trestle patch
        }
        ns
    }

    pub fn clean_dummy_sockets(&self) {
        self.sockets.write().unwrap().clear();
        self.esids.write().unwrap().clear(); // Trestle patch
    }
}

impl<A: Adapter> std::fmt::Debug for Namespace<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("path", &self.path)
            .field("sockets", &self.sockets)
            .finish()
    }
}

#[cfg(feature = "tracing")]
impl<A: Adapter> Drop for Namespace<A> {
    fn drop(&mut self) {
        #[cfg(feature = "tracing")]
        tracing::debug!("dropping namespace {}", self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{adapter::LocalAdapter, extract::SocketRef, handler::ConnectHandler};
    use engineioxide::Socket as EIoSocket;
    use socketioxide_core::adapter::CoreAdapter;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    #[tokio::test]
    async fn rejected_middleware_cleans_up_joined_rooms() {
        let sid = Sid::new();
        let joined = Arc::new(Mutex::new(None));
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with({
                let joined = joined.clone();
                async move |s: SocketRef| {
                    s.join("room1");
                    *joined.lock().unwrap() = Some(s.id);
                    Err::<(), _>(std::io::Error::other("rejected"))
                }
            }),
            &(),
            &SocketIoConfig::default(),
        );
        let esocket = EIoSocket::new_dummy(sid, Box::new(|_, _| ()));

        assert!(ns.clone().connect(sid, esocket, None).await.is_err());
        let joined = joined.lock().unwrap().expect("the middleware ran");
        assert!(ns.adapter.get_local().socket_rooms(joined).is_empty());
    }

    /// Trestle patch: the socket id is random, not the engine.io session id, and the
    /// socket is found by either until it is removed.
    #[tokio::test]
    async fn socket_id_is_not_the_engine_session_id() {
        let esid = Sid::new();
        let ns = counting_ns(Arc::new(AtomicUsize::new(0)));
        let esocket = EIoSocket::new_dummy(esid, Box::new(|_, _| ()));

        assert!(ns.clone().connect(esid, esocket, None).await.is_ok());
        let socket = ns.get_esocket_socket(esid).unwrap();
        assert_ne!(socket.id, esid);
        assert!(ns.get_socket(esid).is_err());
        assert!(Arc::ptr_eq(&socket, &ns.get_socket(socket.id).unwrap()));

        ns.remove_socket(socket.id);
        assert!(ns.get_esocket_socket(esid).is_err());
        assert!(ns.esids.read().unwrap().is_empty());
    }

    /// Create a namespace counting the calls of its middleware.
    /// The middleware joins `room1` on its first call, then rejects the following ones.
    fn counting_ns(calls: Arc<AtomicUsize>) -> Arc<Namespace<LocalAdapter>> {
        Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with(async move |s: SocketRef| {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    s.join("room1");
                    Ok(())
                } else {
                    Err(std::io::Error::other("rejected"))
                }
            }),
            &(),
            &SocketIoConfig::default(),
        )
    }

    #[tokio::test]
    async fn duplicate_connect_keeps_the_first_socket() {
        let sid = Sid::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let ns = counting_ns(calls.clone());
        let esocket = EIoSocket::new_dummy(sid, Box::new(|_, _| ()));

        assert!(ns.clone().connect(sid, esocket.clone(), None).await.is_ok());
        let socket = ns.get_esocket_socket(sid).unwrap();

        assert!(ns.clone().connect(sid, esocket, None).await.is_err());

        // The middleware would have rejected the second connection and removed the socket rooms.
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(Arc::ptr_eq(&socket, &ns.get_esocket_socket(sid).unwrap()));
        assert_eq!(ns.adapter.get_local().socket_rooms(socket.id).len(), 1);
    }

    /// The socket only enters the namespace after its middleware:
    /// a duplicate can be received while the first connection is still pending.
    #[tokio::test]
    async fn duplicate_connect_during_pending_middleware_is_ignored() {
        let sid = Sid::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with({
                let (calls, started, release) = (calls.clone(), started.clone(), release.clone());
                async move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    started.notify_one();
                    release.notified().await;
                    Ok::<_, std::io::Error>(())
                }
            }),
            &(),
            &SocketIoConfig::default(),
        );
        let esocket = EIoSocket::new_dummy(sid, Box::new(|_, _| ()));

        let first = tokio::spawn(ns.clone().connect(sid, esocket.clone(), None));
        started.notified().await;

        // Without a timeout, a duplicate waiting on the pending middleware would block this test.
        let duplicate = ns.clone().connect(sid, esocket, None);
        let duplicate = tokio::time::timeout(Duration::from_millis(100), duplicate);
        assert!(duplicate.await.expect("should not wait").is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(ns.get_esocket_socket(sid).is_err());

        release.notify_one();
        assert!(first.await.unwrap().is_ok());
        assert!(ns.get_esocket_socket(sid).is_ok());
    }

    #[tokio::test]
    async fn connect_again_after_socket_removal() {
        let sid = Sid::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with({
                let calls = calls.clone();
                async move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(())
                }
            }),
            &(),
            &SocketIoConfig::default(),
        );
        let esocket = EIoSocket::new_dummy(sid, Box::new(|_, _| ()));

        assert!(ns.clone().connect(sid, esocket.clone(), None).await.is_ok());
        let first = ns.get_esocket_socket(sid).unwrap();
        ns.remove_socket(first.id);

        assert!(ns.clone().connect(sid, esocket, None).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(!Arc::ptr_eq(&first, &ns.get_esocket_socket(sid).unwrap()));
    }

    #[tokio::test]
    async fn connect_again_after_rejected_middleware() {
        let sid = Sid::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with({
                let calls = calls.clone();
                async move || {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(std::io::Error::other("rejected"))
                    } else {
                        Ok(())
                    }
                }
            }),
            &(),
            &SocketIoConfig::default(),
        );
        let esocket = EIoSocket::new_dummy(sid, Box::new(|_, _| ()));

        assert!(
            ns.clone()
                .connect(sid, esocket.clone(), None)
                .await
                .is_err()
        );
        assert!(ns.clone().connect(sid, esocket, None).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
