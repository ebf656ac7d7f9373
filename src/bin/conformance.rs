//! The standard Socket.IO protocol test fixture, served by Trestle's engine settings and
//! HTTP loop, so that socket.io's public protocol test suite
//! (github.com/socketio/socket.io-protocol, `test-suite/`) can be run against them.
//!
//! Port 3000 (or `--port`), path `/socket.io/`, pingInterval 300 ms, pingTimeout 200 ms,
//! maxPayload 1,000,000, connect timeout 1000 ms, any origin. Namespaces `/` and `/custom`
//! each emit `auth` with the CONNECT payload; on `/`, `message` is answered with
//! `message-back` and the same arguments (binary too), `message-with-ack` is acknowledged
//! with its arguments, and `emit-with-ack` is emitted back with an ack whose arguments are
//! then emitted as `emit-with-ack`.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use clap::Parser;
use serde::{
    Deserialize, Serialize,
    de::{MapAccess, SeqAccess, Visitor},
    ser::{SerializeMap, SerializeSeq, SerializeTuple},
};
use socketioxide::{
    ParserConfig, SocketIo,
    extract::{AckSender, SocketRef, TryData},
};
use tower_http::cors::CorsLayer;
use trestle::http::serve::{HeaderLimits, serve};

/// The Socket.IO protocol test fixture.
#[derive(Parser)]
struct Args {
    /// Port to listen on (127.0.0.1).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    port: u16,
}

/// Any argument, binary attachments kept as bytes wherever they are nested.
#[derive(Debug, Clone)]
enum Dyn {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    Bytes(Bytes),
    Seq(Vec<Dyn>),
    Map(Vec<(String, Dyn)>),
}

impl Serialize for Dyn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Dyn::Null => s.serialize_unit(),
            Dyn::Bool(b) => s.serialize_bool(*b),
            Dyn::I64(n) => s.serialize_i64(*n),
            Dyn::U64(n) => s.serialize_u64(*n),
            Dyn::F64(n) => s.serialize_f64(*n),
            Dyn::Str(v) => s.serialize_str(v),
            Dyn::Bytes(b) => s.serialize_bytes(b),
            Dyn::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Dyn::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Dyn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dyn, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dyn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E>(self) -> Result<Dyn, E> {
                Ok(Dyn::Null)
            }
            fn visit_none<E>(self) -> Result<Dyn, E> {
                Ok(Dyn::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Dyn, D::Error> {
                Dyn::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Dyn, E> {
                Ok(Dyn::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Dyn, E> {
                Ok(Dyn::I64(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Dyn, E> {
                Ok(Dyn::U64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Dyn, E> {
                Ok(Dyn::F64(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Dyn, E> {
                Ok(Dyn::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Dyn, E> {
                Ok(Dyn::Str(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Dyn, E> {
                Ok(Dyn::Bytes(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Dyn, E> {
                Ok(Dyn::Bytes(Bytes::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Dyn, A::Error> {
                let mut items = Vec::new();
                while let Some(i) = a.next_element()? {
                    items.push(i);
                }
                Ok(Dyn::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Dyn, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = a.next_entry()? {
                    entries.push((k, v));
                }
                Ok(Dyn::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// All the arguments of an event or ack. Serialised as a tuple, so that each element
/// is an argument of its own; deserialised through `deserialize_tuple` for the same reason.
#[derive(Debug, Clone)]
struct ArgList(Vec<Dyn>);

impl Serialize for ArgList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for a in &self.0 {
            t.serialize_element(a)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for ArgList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ArgList, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ArgList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("arguments")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<ArgList, A::Error> {
                let mut items = Vec::new();
                while let Some(i) = a.next_element()? {
                    items.push(i);
                }
                Ok(ArgList(items))
            }
        }
        d.deserialize_tuple(usize::MAX, V)
    }
}

async fn on_connect(socket: SocketRef, TryData(auth): TryData<serde_json::Value>) {
    let auth = auth.unwrap_or_else(|_| serde_json::json!({}));
    socket.emit("auth", &auth).ok();
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(300))
        .ping_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(1000))
        .max_payload(1_000_000)
        .ws_max_message_size(1_000_000)
        .with_parser(ParserConfig::common().max_incoming_binary_buf_size(1_000_000))
        .build_layer();
    io.ns("/", on_connect);
    io.ns("/custom", on_connect);
    let router = axum::Router::new()
        .layer(layer)
        .layer(CorsLayer::very_permissive());
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("conformance fixture listening on {addr}");
    let limits = HeaderLimits {
        max_headers: 100,
        max_bytes: 65_536,
        read_timeout: Duration::from_secs(10),
    };
    serve(listener, router, limits, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
