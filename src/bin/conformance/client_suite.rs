//! The fixture of socket.io-client's own test suite: what its `test/support/server.ts` sets
//! up (github.com/socketio/socket.io, `packages/socket.io-client`), written against
//! socketioxide, with connection state recovery on (its `connectionStateRecovery: {}`:
//! socket.io's defaults, a 2 minute window).
//!
//! pingInterval 2000 ms; handshakes answered after 10 ms, so that a client `timeout` of 0
//! expires first. On `/`, a middleware refuses handshakes whose query has `fail`, and the
//! handlers answer `hi`, `echo`, `ack`, dates, UTF-8 strings, `false`, binary in both
//! directions (in order), `getHandshake` and `getId`. `/foo` answers `getId`; `/abc` emits
//! `handshake` on connect; `/no` refuses every socket; `/timeout_socket`, `/valid` and
//! `/asd` just exist.
//!
//! With recovery on, socket.io sends an event a handler emits to its own socket without an
//! ack through the adapter, as a broadcast to the socket's room, so that it is kept and
//! carries an offset (the suite's recovery test needs one before it drops the connection):
//! the handlers here do the same with [`emit_kept`].

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{ConnectInfo, Request},
    middleware::Next,
    response::Response,
};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use socketioxide::{
    SocketIo,
    extract::{AckSender, SocketRef, TryData},
    handler::ConnectHandler,
    layer::SocketIoLayer,
    recovery::MemoryStore,
};
use time::{OffsetDateTime, macros::format_description};

use trestle::{config::Engine, server::socketio_builder};

use crate::dynamic::{ArgList, Dyn};

/// What socket.io's `socket.handshake` holds, for this socket's namespace.
fn handshake(socket: &SocketRef, auth: &Value) -> Value {
    let parts = socket.req_parts();
    let headers: Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                json!(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    let address = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip().to_string());
    let issued = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "headers": headers,
        "time": iso_now(),
        "address": address,
        "xdomain": parts.headers.contains_key(axum::http::header::ORIGIN),
        "secure": false,
        "issued": issued,
        "url": parts.uri.to_string(),
        "query": query(parts.uri.query().unwrap_or("")),
        "auth": auth,
    })
}

/// The request's query as an object; a repeated key gives an array, as node's
/// `querystring` does.
fn query(q: &str) -> Value {
    let mut out = Map::new();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        let v = Value::String(v.into_owned());
        match out.get_mut(&*k) {
            None => {
                out.insert(k.into_owned(), v);
            }
            Some(Value::Array(items)) => items.push(v),
            Some(first) => *first = Value::Array(vec![first.take(), v]),
        }
    }
    Value::Object(out)
}

/// Now as JavaScript's `Date.prototype.toJSON` writes it, which is what a `Date` argument
/// becomes on the wire.
fn iso_now() -> String {
    OffsetDateTime::now_utc()
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default()
}

fn auth_of(auth: Result<Value, impl std::any::Any>) -> Value {
    auth.ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// Like `{ hello: "lol", message: <binary>, goodbye: "gotcha" }`.
fn is_mixed_binary(a: &Dyn) -> bool {
    a.get("hello").and_then(Dyn::as_str) == Some("lol")
        && a.get("message").is_some_and(Dyn::is_bytes)
        && a.get("goodbye").and_then(Dyn::as_str) == Some("gotcha")
}

const NO_ARGS: ArgList = ArgList(Vec::new());

/// socket.io's `socket.emit` without an ack when recovery is on: a broadcast to the
/// socket's own room, which the store keeps and gives an offset (`within`, unlike `to`,
/// does not leave the sender out). The socket must be in that room ([`join_own_room`]).
async fn emit_kept<T: serde::Serialize + ?Sized>(s: &SocketRef, event: &'static str, data: &T) {
    s.within(s.id).emit(event, data).await.ok();
}

/// A handler that sets `flag` when its first argument is binary, in the handler closure
/// itself: see the ordering note in `on_main`.
fn mark_when_binary(
    flag: Arc<AtomicBool>,
) -> impl Fn(TryData<ArgList>) -> std::future::Ready<()> + Clone + Send + Sync + 'static {
    move |TryData(args): TryData<ArgList>| {
        if args.is_ok_and(|a| a.arg(0).is_bytes()) {
            flag.store(true, Ordering::SeqCst);
        }
        std::future::ready(())
    }
}

/// socket.io puts every socket in the room named by its id; socketioxide does not.
fn join_own_room(socket: &SocketRef) {
    socket.join(socket.id.to_string());
}

async fn main_middleware(s: SocketRef) -> Result<(), &'static str> {
    let fail = query(s.req_parts().uri.query().unwrap_or(""))
        .get("fail")
        .is_some_and(|v| v.as_str() != Some(""));
    if fail {
        Err("Auth failed (main namespace)")
    } else {
        Ok(())
    }
}

async fn no_middleware(_: SocketRef) -> Result<(), &'static str> {
    Err("Auth failed (custom namespace)")
}

/// The main namespace's handlers, registered in a middleware: before the CONNECT answer,
/// so that an event the client sends as soon as it is connected finds them (a connect
/// handler runs after the answer, and may run after that first event too, as Trestle's
/// namespace does in `connection::admit`).
async fn on_main(socket: SocketRef, TryData(auth): TryData<Value>) -> Result<(), Infallible> {
    let hs = handshake(&socket, &auth_of(auth));
    join_own_room(&socket);
    socket.on("hi", async |s: SocketRef| {
        emit_kept(&s, "hi", &NO_ARGS).await;
    });
    socket.on(
        "echo",
        async |ack: AckSender, TryData(args): TryData<ArgList>| {
            let arg = args.map(|a| a.arg(0).clone()).unwrap_or(Dyn::Null);
            ack.send(&arg).ok();
        },
    );
    socket.on("ack", async |s: SocketRef| {
        let Ok(pending) = s.emit_with_ack::<_, ArgList>("ack", &NO_ARGS) else {
            return;
        };
        let Ok(answer) = pending.await else { return };
        if answer.arg(0).is_number(5) && answer.arg(1).get("test").is_some_and(Dyn::is_truthy) {
            emit_kept(&s, "got it", &NO_ARGS).await;
        }
    });
    socket.on("getAckDate", async |ack: AckSender| {
        ack.send(&iso_now()).ok();
    });
    socket.on("getDate", async |s: SocketRef| {
        emit_kept(&s, "takeDate", &iso_now()).await;
    });
    socket.on("getDateObj", async |s: SocketRef| {
        emit_kept(&s, "takeDateObj", &json!({ "date": iso_now() })).await;
    });
    socket.on("getUtf8", async |s: SocketRef| {
        for text in [
            "てすと",
            "Я Б Г Д Ж Й",
            "Ä ä Ü ü ß",
            "utf8 — string",
            "utf8 — string",
        ] {
            emit_kept(&s, "takeUtf8", text).await;
        }
    });
    socket.on("false", async |s: SocketRef| {
        emit_kept(&s, "false", &false).await;
    });
    socket.on("doge", async |s: SocketRef| {
        emit_kept(&s, "doge", &Bytes::from_static(b"asdfasdf")).await;
    });
    socket.on("getbin", async |s: SocketRef| {
        emit_kept(&s, "takebin", &Bytes::from_static(b"asdfasdf")).await;
    });
    // Each of these is answered with an event of its own when its argument has the shape
    // the suite sends.
    let shaped: [Shaped; 4] = [
        ("buffa", "buffack", Dyn::is_bytes),
        ("blob", "back", Dyn::is_bytes),
        ("jsonbuff", "jsonbuff-ack", is_mixed_binary),
        ("jsonblob", "jsonblob-ack", is_mixed_binary),
    ];
    for (event, reply, check) in shaped {
        socket.on(
            event,
            async move |s: SocketRef, TryData(args): TryData<ArgList>| {
                if args.is_ok_and(|a| check(a.arg(0))) {
                    emit_kept(&s, reply, &NO_ARGS).await;
                }
            },
        );
    }

    // The suite checks that binary events are handled in the order they were sent: each
    // answer depends on what this socket received before it. socketioxide spawns the future
    // a handler returns, and spawned futures may run in any order, so the state is read and
    // written in the handler closure itself, which it calls in the order of arrival.
    let abuff1 = Arc::new(AtomicBool::new(false));
    socket.on("abuff1", mark_when_binary(abuff1.clone()));
    socket.on("abuff2", move |s: SocketRef| {
        let after_abuff1 = abuff1.load(Ordering::SeqCst);
        async move {
            if after_abuff1 {
                emit_kept(&s, "abuff2-ack", &NO_ARGS).await;
            }
        }
    });
    let blob1 = Arc::new(AtomicBool::new(false));
    let blob2 = Arc::new(AtomicBool::new(false));
    socket.on("blob1", mark_when_binary(blob1.clone()));
    socket.on("blob2", {
        let (blob1, blob2) = (blob1.clone(), blob2.clone());
        move |TryData(args): TryData<ArgList>| {
            if blob1.load(Ordering::SeqCst)
                && args.is_ok_and(|a| a.arg(0).as_str() == Some("second"))
            {
                blob2.store(true, Ordering::SeqCst);
            }
            async {}
        }
    });
    socket.on(
        "blob3",
        move |s: SocketRef, TryData(args): TryData<ArgList>| {
            let in_order = args.is_ok_and(|a| a.arg(0).is_bytes())
                && blob1.load(Ordering::SeqCst)
                && blob2.load(Ordering::SeqCst);
            async move {
                if in_order {
                    emit_kept(&s, "blob3-ack", &NO_ARGS).await;
                }
            }
        },
    );

    socket.on("getHandshake", move |ack: AckSender| async move {
        ack.send(&hs).ok();
    });
    socket.on("getId", async |s: SocketRef, ack: AckSender| {
        ack.send(&s.id.to_string()).ok();
    });
    Ok(())
}

async fn on_foo(socket: SocketRef) -> Result<(), Infallible> {
    socket.on("getId", async |s: SocketRef, ack: AckSender| {
        ack.send(&s.id.to_string()).ok();
    });
    Ok(())
}

async fn on_abc(socket: SocketRef, TryData(auth): TryData<Value>) {
    join_own_room(&socket);
    emit_kept(&socket, "handshake", &handshake(&socket, &auth_of(auth))).await;
}

async fn on_empty(_: SocketRef) {}

/// socket.io's `allowRequest` in the suite's server: a new session is answered 10 ms late,
/// which the suite's `timeout: 0` cases rely on to see the connection time out.
pub async fn delay_handshakes(req: Request, next: Next) -> Response {
    let has_sid = req
        .uri()
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "sid"));
    if !has_sid {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    next.run(req).await
}

pub fn layer() -> SocketIoLayer {
    // socket.io's defaults otherwise: pingTimeout 20 s, maxHttpBufferSize 1e6.
    // socket.io-client's suite runs its server with a 2 s ping interval.
    let engine = Engine {
        ping_interval: Duration::from_millis(2000),
        ..Engine::socketio_defaults()
    };
    // socket.io's defaults for `connectionStateRecovery: {}`: a 2 minute window; its
    // in-memory adapter keeps events for as long, unbounded in number, which Trestle's
    // defaults bound.
    let store = MemoryStore::new(Duration::from_secs(120), 100_000, 10_000);
    let builder = SocketIo::builder().connection_state_recovery(Some(Arc::new(store)));
    let (layer, io) = socketio_builder(builder, &engine).build_layer();
    io.ns("/", on_empty.with(on_main).with(main_middleware));
    io.ns("/foo", on_empty.with(on_foo));
    io.ns("/timeout_socket", on_empty);
    io.ns("/valid", on_empty);
    io.ns("/asd", on_empty);
    io.ns("/abc", on_abc);
    io.ns("/no", on_empty.with(no_middleware));
    layer
}

/// An event of the suite, the event it is answered with, and the argument shape it needs.
type Shaped = (&'static str, &'static str, fn(&Dyn) -> bool);
