//! The HTTP server loop: hyper with limits that `axum::serve` does not set.
//!
//! `axum::serve` gives hyper no timer, so a client that opens a connection and sends its
//! headers one byte a minute (slowloris) holds it for ever. Here every connection gets a
//! header read timeout, a cap on the number of headers and on their total size (over it,
//! hyper answers 431), and the peer address as `ConnectInfo`, as
//! `into_make_service_with_connect_info` gave it. Websocket upgrades work as before.

use std::{future::Future, net::SocketAddr, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::ServiceExt;

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

/// Serves `router` on `listener` until `stop` completes, then stops accepting and waits
/// for the requests in progress (upgraded websockets are not waited for: the Socket.IO
/// layer closes them itself).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HeaderLimits,
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
        .max_header_list_size(limits.max_bytes as u32);
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
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = router
            .clone()
            .map_request(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
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
