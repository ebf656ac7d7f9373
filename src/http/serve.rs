//! The HTTP server loop: hyper with limits that `axum::serve` does not set.
//!
//! `axum::serve` gives hyper no timer, so a client that opens a connection and sends its
//! headers one byte a minute (slowloris) holds it for ever. Here every connection gets a
//! header read timeout, a cap on the number of headers and on their total size (over it,
//! hyper answers 431), and the peer address as `ConnectInfo`, as
//! `into_make_service_with_connect_info` gave it. Websocket upgrades work as before.
//!
//! [`serve_with`] adds what bounds a client's hold on the server below HTTP requests
//! (docs/security.md, "Admission at the engine.io handshake"): a deadline for each whole
//! request body, a cap on open TCP connections in total and per address (past it a new
//! connection is closed at once, before it holds a descriptor for long), and a bound on
//! concurrent HTTP/2 streams per connection. HTTP/2 without TLS (h2c, prior knowledge)
//! stays on for proxies that speak it to their upstreams; no socket.io client needs it.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};
use tower::ServiceExt;

use crate::limits::{ConnSlot, ConnectionLimits};

/// Concurrent HTTP/2 streams one connection may have (RFC 9113 recommends no fewer than
/// 100). A socket.io client needs two (a waiting poll and a POST); a proxy multiplexing
/// its clients opens another connection when it reaches this.
pub const H2_MAX_STREAMS: u32 = 100;

/// Limits on each HTTP connection's request headers.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    /// Most header lines in one request.
    pub max_headers: usize,
    /// Most bytes of request line and headers (hyper's read buffer; at least 8 KiB).
    pub max_bytes: usize,
    /// Time a client has to send its whole request head.
    pub read_timeout: Duration,
}

/// Limits on each connection beyond its request heads.
#[derive(Debug, Clone, Default)]
pub struct ConnLimits {
    /// Time a client has to send a whole request body, from when its head arrived
    /// (`None`: no deadline).
    pub body_timeout: Option<Duration>,
    /// Open TCP connections, in total and per peer address (`None`: no cap).
    pub tcp: Option<Arc<ConnectionLimits>>,
}

/// Serves `router` on `listener` until `stop` completes, then stops accepting and waits
/// for the requests in progress (upgraded websockets are not waited for: the Socket.IO
/// layer closes them itself).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HeaderLimits,
    stop: impl Future<Output = ()>,
) {
    serve_with(listener, router, limits, ConnLimits::default(), stop).await
}

/// [`serve`] with the limits of [`ConnLimits`].
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: HeaderLimits,
    conns: ConnLimits,
    stop: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_bytes as u32)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Past the cap the connection is closed at once: it held a descriptor for no
        // longer than this, and those kept in reserve still answer /health.
        let slot = match conns.tcp.as_ref().map(|tcp| tcp.admit(peer.ip())) {
            Some(Err(refusal)) => {
                tracing::debug!(ip = %peer.ip(), reason = refusal.reason(), "connection refused");
                continue;
            }
            Some(Ok(slot)) => Some(slot),
            None => None,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let body_timeout = conns.body_timeout;
        let service = router
            .clone()
            .map_request(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(|body| match body_timeout {
                    Some(t) if !body.is_end_stream() => Body::new(DeadlineBody::new(body, t)),
                    _ => Body::new(body),
                });
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            });
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(Counted {
                    stream,
                    _slot: slot,
                }),
                TowerToHyperService::new(service),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A request body that must arrive whole within a deadline. tower-http's
/// `RequestBodyTimeoutLayer` restarts its timer at every frame, so a body sent one byte
/// every few seconds never trips it; this one counts from the request head.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// The error a [`DeadlineBody`] ends with; engineioxide answers it 400 and closes the
/// polling session, axum's extractors answer 400.
#[derive(Debug)]
struct BodyDeadline;

impl std::fmt::Display for BodyDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body not received in time")
    }
}

impl std::error::Error for BodyDeadline {}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyDeadline.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client's TCP stream with its place in the TCP cap, given back when the stream is
/// closed: when hyper is done with it, or for a websocket, when the upgraded connection
/// it was handed to is.
struct Counted {
    stream: TcpStream,
    _slot: Option<ConnSlot>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
