//! The fixture of socket.io's public protocol test suite
//! (github.com/socketio/socket.io-protocol, `test-suite/`).
//!
//! pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1,000,000, connect timeout 1000 ms.
//! Namespaces `/` and `/custom` each emit `auth` with the CONNECT payload, [`AUTH_DELAY`]
//! after the CONNECT answer; on `/`, `message`
//! is answered with `message-back` and the same arguments (binary too), `message-with-ack`
//! is acknowledged with its arguments, and `emit-with-ack` is emitted back with an ack whose
//! arguments are then emitted as `emit-with-ack`.

use std::time::Duration;

use socketioxide::{
    SocketIo,
    extract::{AckSender, SocketRef, TryData},
    handler::ConnectHandler,
    layer::SocketIoLayer,
};

use trestle::{config::Engine, server::socketio_builder};

use crate::dynamic::ArgList;

/// How long `auth` waits after the CONNECT answer. The suite reads one frame per `await`,
/// adding its one-shot listener only once the previous frame has been handled, and `ws`
/// emits every frame of one TCP read at once: frames that arrive together are lost to it,
/// whichever server wrote them: socket.io's own Node server, which emits `auth` from its
/// connection handler too, passed 32, 31 and 29 of the 32 cases in three runs here.
/// Written this much apart, the two frames reach the client in reads of their own.
const AUTH_DELAY: Duration = Duration::from_millis(50);

/// The handlers, registered in a middleware: before the CONNECT answer, so that an event
/// the suite sends as soon as it is connected finds them (see `client_suite::on_main`).
async fn register(socket: SocketRef) -> Result<(), std::convert::Infallible> {
    socket.on(
        "message",
        async |s: SocketRef, TryData(args): TryData<ArgList>| {
            if let Ok(args) = args {
                s.emit("message-back", &args).ok();
            }
        },
    );
    socket.on(
        "message-with-ack",
        async |ack: AckSender, TryData(args): TryData<ArgList>| {
            if let Ok(args) = args {
                ack.send(&args).ok();
            }
        },
    );
    socket.on(
        "emit-with-ack",
        async |s: SocketRef, TryData(args): TryData<ArgList>| {
            let Ok(args) = args else { return };
            let Ok(pending) = s.emit_with_ack::<_, ArgList>("emit-with-ack", &args) else {
                return;
            };
            if let Ok(answer) = pending.await {
                s.emit("emit-with-ack", &answer).ok();
            }
        },
    );
    Ok(())
}

async fn on_connect(socket: SocketRef, TryData(auth): TryData<serde_json::Value>) {
    let auth = auth.unwrap_or_else(|_| serde_json::json!({}));
    tokio::time::sleep(AUTH_DELAY).await;
    socket.emit("auth", &auth).ok();
}

pub fn layer() -> SocketIoLayer {
    // The suite's own expectations (test-suite.js): pings every 300 ms, 200 ms to answer,
    // a CONNECT within 1 s.
    let engine = Engine {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(1000),
        ..Engine::socketio_defaults()
    };
    let (layer, io) = socketio_builder(SocketIo::builder(), &engine).build_layer();
    io.ns("/", on_connect.with(register));
    io.ns("/custom", on_connect.with(register));
    layer
}
