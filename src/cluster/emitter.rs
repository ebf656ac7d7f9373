//! The second way for the main backend to publish, besides `POST /api/emit`: the Node
//! `@socket.io/redis-emitter`, which PUBLISHes on the channels of the Node Redis adapter.
//!
//! The emitter publishes (classic pub/sub, not sharded) on `<prefix>#/#`, or on
//! `<prefix>#/#<room>#` when it names exactly one room, a msgpack (notepack) array
//! `[uid, packet, { rooms, except, flags }]`, `packet` being `{ type, data: [event, ...args],
//! nsp }`. Like the Node adapter, every instance PSUBSCRIBEs `<prefix>#/#*` and delivers each
//! message to its own sockets only, so that each client gets it once: Trestle's own adapter
//! channels are sharded (SSUBSCRIBE), which never see a classic PUBLISH, and they never
//! carry these messages either.
//!
//! Anyone who can PUBLISH on Redis can send here, so every message is checked: at most
//! [`MAX_BYTES`] and [`MAX_DEPTH`] deep, the `/` namespace only (others are ignored,
//! as the Node adapter does), event packets only, the event name by the rule of
//! `/api/emit` ([`crate::events::publishable`]), rooms and excepted rooms strings, at most
//! [`MAX_ROOMS`] of each. Anything else is dropped with a log line and counted
//! (`trestle_emitter_messages_total`); nothing here panics on what Redis sends.
//!
//! The emitter's other operations (`socketsJoin`, `socketsLeave`, `disconnectSockets`,
//! `serverSideEmit`) go as JSON on `<prefix>-request#/#`; they are not supported. That
//! channel is subscribed only to say so in the log (once) and to count them.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use fred::{
    clients::SubscriberClient,
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    types::{Message, MessageKind},
};
use rmpv::Value;
use serde::{
    Serialize, Serializer,
    ser::{Error as _, SerializeMap, SerializeSeq, SerializeTuple},
};
use socketioxide::{BroadcastError, SocketIo, adapter::Adapter};
use tokio::sync::broadcast::error::RecvError;

use crate::metrics::LabelValues;

/// Largest emitter message accepted, in bytes (as `POST /api/emit`'s body). Redis has
/// already delivered a larger one (its `client-output-buffer-limit pubsub` bounds that);
/// it is dropped before decoding.
pub const MAX_BYTES: usize = 1_000_000;

/// Nesting depth the msgpack decoder follows (rmpv counts about two per array or map
/// level): deeper messages are dropped instead of recursing on.
pub const MAX_DEPTH: usize = 128;

/// Most rooms, and most excepted rooms, in one message (as `POST /api/emit`).
pub const MAX_ROOMS: usize = 1000;

/// Socket.IO packet types the emitter sends: `EVENT`, and `BINARY_EVENT` from older ones.
const EVENT: u64 = 2;
const BINARY_EVENT: u64 = 5;

/// What became of an emitter message (`trestle_emitter_messages_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered to this instance's sockets in its rooms (maybe none).
    Delivered,
    /// The event name may not be published (Socket.IO's reserved names, empty, too long).
    Refused,
    /// Not a message of the emitter's shape (not msgpack, wrong fields, too deep).
    Malformed,
    /// Over [`MAX_BYTES`].
    TooLarge,
    /// For another namespace, or an emitter operation Trestle does not support.
    Ignored,
    /// Received by the Redis client but dropped before it was read (this task too slow).
    Lost,
}

impl LabelValues for Outcome {
    const COUNTER: &'static str = "trestle_emitter_messages_total";
    const LABEL: &'static str = "outcome";
    const ALL: &'static [Self] = &[
        Outcome::Delivered,
        Outcome::Refused,
        Outcome::Malformed,
        Outcome::TooLarge,
        Outcome::Ignored,
        Outcome::Lost,
    ];
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Refused => "refused",
            Outcome::Malformed => "malformed",
            Outcome::TooLarge => "too_large",
            Outcome::Ignored => "ignored",
            Outcome::Lost => "lost",
        }
    }
}

/// An emit read from a message, to deliver to this instance's sockets.
#[derive(Debug, PartialEq)]
pub struct Broadcast {
    pub event: String,
    pub args: Vec<Value>,
    pub rooms: Vec<String>,
    pub except: Vec<String>,
    pub volatile: bool,
}

/// What a message on the broadcast channels says.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Broadcast(Broadcast),
    /// For a namespace other than `/` (the Node adapter ignores those too).
    OtherNamespace,
    /// An event name that may not be published.
    Refused(String),
}

/// Why a message was dropped.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Malformed {
    #[error("message of {0} bytes is over the limit of {MAX_BYTES}")]
    TooLarge(usize),
    #[error("not msgpack: {0}")]
    NotMsgpack(String),
    #[error("unexpected shape: {0}")]
    Shape(&'static str),
}

/// Reads one message of the broadcast channels.
pub fn decode(bytes: &[u8]) -> Result<Decoded, Malformed> {
    if bytes.len() > MAX_BYTES {
        return Err(Malformed::TooLarge(bytes.len()));
    }
    let mut reader = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
        .map_err(|e| Malformed::NotMsgpack(e.to_string()))?;
    if !reader.is_empty() {
        return Err(Malformed::NotMsgpack("bytes after the message".into()));
    }
    let Value::Array(parts) = value else {
        return Err(Malformed::Shape("not an array"));
    };
    let mut parts = parts.into_iter();
    let (Some(_uid), Some(Value::Map(packet)), Some(Value::Map(opts))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed::Shape("not [uid, packet, opts]"));
    };
    let mut packet = Fields(packet);
    match packet.take("nsp") {
        None | Some(Value::Nil) => {}
        Some(Value::String(s)) if s.as_str() == Some("/") => {}
        Some(Value::String(_)) => return Ok(Decoded::OtherNamespace),
        Some(_) => return Err(Malformed::Shape("nsp is not a string")),
    }
    match packet.take("type").and_then(|t| t.as_u64()) {
        Some(EVENT | BINARY_EVENT) => {}
        _ => return Err(Malformed::Shape("not an event packet")),
    }
    let Some(Value::Array(data)) = packet.take("data") else {
        return Err(Malformed::Shape("packet data is not an array"));
    };
    let mut data = data.into_iter();
    let event = match data.next() {
        Some(Value::String(s)) => s
            .into_str()
            .ok_or(Malformed::Shape("event name is not UTF-8"))?,
        _ => return Err(Malformed::Shape("event name is not a string")),
    };
    if !crate::events::publishable(&event) {
        return Ok(Decoded::Refused(event));
    }
    let mut opts = Fields(opts);
    let flags = match opts.take("flags") {
        None | Some(Value::Nil) => Fields::default(),
        Some(Value::Map(f)) => Fields(f),
        Some(_) => return Err(Malformed::Shape("flags is not a map")),
    };
    Ok(Decoded::Broadcast(Broadcast {
        event,
        args: data.collect(),
        rooms: rooms(opts.take("rooms"))?,
        except: rooms(opts.take("except"))?,
        volatile: flags.get("volatile").and_then(Value::as_bool) == Some(true),
    }))
}

/// A msgpack map's entries with string keys, taken out by name.
#[derive(Default)]
struct Fields(Vec<(Value, Value)>);

impl Fields {
    fn position(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k.as_str() == Some(name))
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        self.position(name).map(|i| self.0.swap_remove(i).1)
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).map(|i| &self.0[i].1)
    }
}

/// `rooms` or `except`: absent is none (the Node adapter's `new Set(undefined)`); any
/// entry that is not a string drops the message, since leaving it out could widen the
/// audience (no rooms is everyone).
fn rooms(value: Option<Value>) -> Result<Vec<String>, Malformed> {
    let list = match value {
        None | Some(Value::Nil) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(Malformed::Shape("rooms or except is not an array")),
    };
    if list.len() > MAX_ROOMS {
        return Err(Malformed::Shape("more than 1000 rooms or excepted rooms"));
    }
    list.into_iter()
        .map(|room| match room {
            Value::String(s) => s.into_str().ok_or(Malformed::Shape("room is not UTF-8")),
            _ => Err(Malformed::Shape("room is not a string")),
        })
        .collect()
}

/// The event's arguments as socketioxide sends them: a tuple is one argument per element,
/// and bytes become binary attachments (`Buffer`s / `ArrayBuffer`s in the client), as
/// Node's parser does with the `Buffer`s notepack decodes.
struct Args<'a>(&'a [Value]);

impl Serialize for Args<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for arg in self.0 {
            t.serialize_element(&Arg(arg))?;
        }
        t.end()
    }
}

/// One msgpack value, as Node's socket.io sends what notepack decoded: JSON, except bytes.
struct Arg<'a>(&'a Value);

impl Serialize for Arg<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Nil => s.serialize_unit(),
            Value::Boolean(b) => s.serialize_bool(*b),
            Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
                (Some(v), _) => s.serialize_i64(v),
                (None, Some(v)) => s.serialize_u64(v),
                _ => s.serialize_unit(),
            },
            Value::F32(f) => s.serialize_f64(f64::from(*f)),
            // Not finite: serde_json writes null, as JSON.stringify does.
            Value::F64(f) => s.serialize_f64(*f),
            Value::String(v) => s.serialize_str(&String::from_utf8_lossy(v.as_bytes())),
            Value::Binary(b) => s.serialize_bytes(b),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Arg(item))?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(&key(k).map_err(S::Error::custom)?, &Arg(v))?;
                }
                map.end()
            }
            Value::Ext(ty, data) => ext(*ty, data, s),
        }
    }
}

/// A map key as a JavaScript object key (notepack writes strings; numbers are coerced).
fn key(k: &Value) -> Result<String, &'static str> {
    match k {
        Value::String(v) => Ok(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        Value::Integer(i) => Ok(i.to_string()),
        _ => Err("map key is not a string"),
    }
}

/// notepack's extension types: -1 a `Date` (sent as its ISO string, as `JSON.stringify`
/// does), 0 with one byte `undefined` (null), 0 otherwise an `ArrayBuffer`; any other
/// type is `[type, bytes]`, as notepack decodes it.
fn ext<S: Serializer>(ty: i8, data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    match ty {
        -1 => match timestamp(data) {
            Some(t) => s.serialize_str(&crate::time::iso(t)),
            None => Err(S::Error::custom("bad msgpack timestamp")),
        },
        0 if data.len() == 1 => s.serialize_unit(),
        0 => s.serialize_bytes(data),
        _ => {
            let mut seq = s.serialize_seq(Some(2))?;
            seq.serialize_element(&ty)?;
            seq.serialize_element(&Arg(&Value::Binary(data.to_vec())))?;
            seq.end()
        }
    }
}

/// The msgpack timestamp extension (32, 64 or 96 bits).
fn timestamp(data: &[u8]) -> Option<time::OffsetDateTime> {
    let (secs, nanos): (i64, u32) = match data.len() {
        4 => (u32::from_be_bytes(data.try_into().ok()?).into(), 0),
        8 => {
            let v = u64::from_be_bytes(data.try_into().ok()?);
            ((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32)
        }
        12 => (
            i64::from_be_bytes(data[4..].try_into().ok()?),
            u32::from_be_bytes(data[..4].try_into().ok()?),
        ),
        _ => return None,
    };
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    Some(t + time::Duration::nanoseconds(nanos.into()))
}

/// Delivers `b` to this instance's sockets in its rooms, not in its excepted rooms.
async fn deliver<A: Adapter>(io: &SocketIo<A>, b: Broadcast) -> Result<(), BroadcastError> {
    let Some(op) = io.of("/") else {
        return Ok(());
    };
    let mut op = op.local().to(b.rooms).except(b.except);
    if b.volatile {
        op = op.volatile();
    }
    op.emit(&b.event, &Args(&b.args)).await
}

/// `prefix` as a literal in a PSUBSCRIBE pattern: glob characters escaped.
fn glob_literal(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The subscription to the emitter's channels, and the task delivering what arrives. Both
/// stop when it is dropped.
pub struct Emitter {
    client: SubscriberClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Emitter {
    fn drop(&mut self) {
        self.task.abort();
        let client = self.client.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

impl Emitter {
    /// Subscribes to the emitter's channels named from `prefix` (its `key` option) on its
    /// own Redis connection, and delivers what arrives through `io`; `count` records
    /// messages' [`Outcome`]s (that many of it). Fails when Redis cannot be reached at start-up.
    pub async fn start<A: Adapter>(
        url: &str,
        timeout: Duration,
        prefix: &str,
        io: SocketIo<A>,
        count: impl Fn(Outcome, u64) + Send + Sync + 'static,
    ) -> anyhow::Result<Emitter> {
        let mut builder = super::builder(url, timeout)?;
        builder.with_performance_config(|p| {
            p.broadcast_channel_capacity = super::PUBSUB_CHANNEL_CAPACITY
        });
        let client = builder
            .build_subscriber_client()
            .context("cannot build the Redis client for the emitter")?;
        client
            .init()
            .await
            .context("cannot connect to Redis for the emitter (REDIS_URL)")?;
        let channels = Channels {
            pattern: format!("{}#/#*", glob_literal(prefix)),
            requests: format!("{prefix}-request#/#"),
        };
        let messages = client.message_rx();
        channels
            .subscribe(&client)
            .await
            .context("cannot subscribe to the emitter's channels")?;
        tracing::info!(pattern = %channels.pattern, "listening for @socket.io/redis-emitter messages");
        let task = tokio::spawn(run(client.clone(), channels, messages, io, Arc::new(count)));
        Ok(Emitter { client, task })
    }
}

struct Channels {
    pattern: String,
    requests: String,
}

impl Channels {
    async fn subscribe(&self, client: &SubscriberClient) -> Result<(), fred::error::Error> {
        client.psubscribe(self.pattern.as_str()).await?;
        client.subscribe(self.requests.as_str()).await
    }
}

/// Reads the messages in order, one at a time, and subscribes again after each reconnect
/// (fred's `manage_subscriptions` is not used: see `resubscribe_on_reconnect`).
async fn run<A: Adapter>(
    client: SubscriberClient,
    channels: Channels,
    mut messages: tokio::sync::broadcast::Receiver<Message>,
    io: SocketIo<A>,
    count: Arc<dyn Fn(Outcome, u64) + Send + Sync>,
) {
    let mut reconnects = client.reconnect_rx();
    let mut log = Throttled::default();
    let mut unsupported_logged = false;
    loop {
        tokio::select! {
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if let Err(e) = channels.subscribe(&client).await {
                        tracing::error!(error = %e, "could not subscribe to the emitter's channels again after a Redis reconnect");
                    }
                }
                Err(RecvError::Closed) => return,
            },
            m = messages.recv() => match m {
                Ok(m) if m.kind == MessageKind::PMessage => {
                    count(handle(&io, &m, &mut log).await, 1);
                }
                Ok(m) if m.channel == channels.requests.as_str() => {
                    if !std::mem::replace(&mut unsupported_logged, true) {
                        tracing::warn!(
                            "an @socket.io/redis-emitter operation other than emit (socketsJoin, socketsLeave, disconnectSockets, serverSideEmit) was ignored: Trestle supports emits only"
                        );
                    }
                    count(Outcome::Ignored, 1);
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    tracing::error!(lost = n, "emitter messages dropped: this instance did not read them in time");
                    count(Outcome::Lost, n);
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Decodes and delivers one message of the broadcast channels.
async fn handle<A: Adapter>(io: &SocketIo<A>, m: &Message, log: &mut Throttled) -> Outcome {
    let bytes = m.value.as_bytes().unwrap_or_default();
    match decode(bytes) {
        Ok(Decoded::Broadcast(b)) => match deliver(io, b).await {
            // Some sockets could not take it (slow consumers, being disconnected).
            Ok(()) | Err(BroadcastError::Socket(_)) => Outcome::Delivered,
            Err(e) => {
                log.warn(&m.channel, &e);
                Outcome::Malformed
            }
        },
        Ok(Decoded::OtherNamespace) => Outcome::Ignored,
        Ok(Decoded::Refused(event)) => {
            log.warn(
                &m.channel,
                &format!("event name {event:?} may not be published"),
            );
            Outcome::Refused
        }
        Err(e @ Malformed::TooLarge(_)) => {
            log.warn(&m.channel, &e);
            Outcome::TooLarge
        }
        Err(e) => {
            log.warn(&m.channel, &e);
            Outcome::Malformed
        }
    }
}

/// Warnings about dropped messages, at most one every [`Throttled::EVERY`] (the rest at
/// debug), so that a flood of bad messages cannot flood the log.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
}

impl Throttled {
    const EVERY: Duration = Duration::from_secs(10);

    fn warn(&mut self, channel: &str, why: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Self::EVERY)
        {
            self.last = Some(now);
            tracing::warn!(channel, error = %why, "emitter message dropped");
        } else {
            tracing::debug!(channel, error = %why, "emitter message dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: &Value) -> Vec<u8> {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, v).unwrap();
        buf
    }

    fn s(v: &str) -> Value {
        Value::from(v)
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
    }

    /// A message as the emitter builds it.
    fn message(data: Vec<Value>, rooms: &[&str], except: &[&str], flags: Value) -> Vec<u8> {
        let list = |r: &[&str]| Value::Array(r.iter().map(|r| s(r)).collect());
        encode(&Value::Array(vec![
            s("emitter"),
            map(vec![
                ("type", Value::from(2)),
                ("data", Value::Array(data)),
                ("nsp", s("/")),
            ]),
            map(vec![
                ("rooms", list(rooms)),
                ("flags", flags),
                ("except", list(except)),
            ]),
        ]))
    }

    #[test]
    fn reads_the_emitters_message() {
        let bytes = message(
            vec![
                s("resource_updated"),
                Value::from(1),
                Value::Binary(vec![1, 2]),
            ],
            &["project:1", "project:2"],
            &["user:3"],
            map(vec![("volatile", Value::Boolean(true))]),
        );
        assert_eq!(
            decode(&bytes),
            Ok(Decoded::Broadcast(Broadcast {
                event: "resource_updated".into(),
                args: vec![Value::from(1), Value::Binary(vec![1, 2])],
                rooms: vec!["project:1".into(), "project:2".into()],
                except: vec!["user:3".into()],
                volatile: true,
            }))
        );
    }

    #[test]
    fn refuses_reserved_names_and_ignores_other_namespaces() {
        let bytes = message(vec![s("connect")], &[], &[], map(vec![]));
        assert_eq!(decode(&bytes), Ok(Decoded::Refused("connect".into())));
        let other = encode(&Value::Array(vec![
            s("emitter"),
            map(vec![
                ("type", Value::from(2)),
                ("data", Value::Array(vec![s("x")])),
                ("nsp", s("/admin")),
            ]),
            map(vec![]),
        ]));
        assert_eq!(decode(&other), Ok(Decoded::OtherNamespace));
    }

    #[test]
    fn drops_hostile_messages() {
        let too_large = vec![0u8; MAX_BYTES + 1];
        assert_eq!(decode(&too_large), Err(Malformed::TooLarge(MAX_BYTES + 1)));
        // An array32 claiming 4 billion entries: no allocation of that size, an error.
        assert!(matches!(
            decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(Malformed::NotMsgpack(_))
        ));
        // Nested far deeper than the limit.
        let deep = vec![0x91u8; 100_000];
        assert!(matches!(decode(&deep), Err(Malformed::NotMsgpack(_))));
        assert!(matches!(decode(b"hello"), Err(Malformed::NotMsgpack(_))));
        assert!(matches!(decode(b""), Err(Malformed::NotMsgpack(_))));
        assert!(matches!(
            decode(&encode(&Value::from(1))),
            Err(Malformed::Shape(_))
        ));
        // A non-string room would widen the audience if left out.
        let bytes = encode(&Value::Array(vec![
            s("emitter"),
            map(vec![
                ("type", Value::from(2)),
                ("data", Value::Array(vec![s("x")])),
            ]),
            map(vec![("rooms", Value::Array(vec![Value::from(5)]))]),
        ]));
        assert!(matches!(decode(&bytes), Err(Malformed::Shape(_))));
        // Not an event (a DISCONNECT packet would disconnect the clients).
        let bytes = encode(&Value::Array(vec![
            s("emitter"),
            map(vec![
                ("type", Value::from(1)),
                ("data", Value::Array(vec![s("x")])),
            ]),
            map(vec![]),
        ]));
        assert!(matches!(decode(&bytes), Err(Malformed::Shape(_))));
        let rooms: Vec<&str> = vec!["r"; MAX_ROOMS + 1];
        let bytes = message(vec![s("x")], &rooms, &[], map(vec![]));
        assert!(matches!(decode(&bytes), Err(Malformed::Shape(_))));
    }

    #[test]
    fn arguments_serialise_as_node_sends_them() {
        let args = vec![
            map(vec![("a", Value::from(1)), ("b", Value::Nil)]),
            Value::Ext(-1, vec![0x65, 0x53, 0xf1, 0x00]),
            Value::Ext(0, vec![0]),
        ];
        let v = serde_json::to_value(Args(&args)).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"a": 1, "b": null}, "2023-11-14T22:13:20.000Z", null])
        );
        let bad_key = vec![Value::Map(vec![(Value::Nil, Value::from(1))])];
        assert!(serde_json::to_value(Args(&bad_key)).is_err());
    }

    #[test]
    fn timestamps() {
        // 64-bit: 123 ms in nanoseconds, 1_700_000_000 s.
        let v: u64 = (123_000_000u64 << 34) | 1_700_000_000;
        let t = timestamp(&v.to_be_bytes()).unwrap();
        assert_eq!(crate::time::iso(t), "2023-11-14T22:13:20.123Z");
        assert!(timestamp(&[1, 2, 3]).is_none());
    }

    #[test]
    fn prefixes_are_literal_in_the_pattern() {
        assert_eq!(glob_literal("socket.io"), "socket.io");
        assert_eq!(glob_literal("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }

    #[test]
    fn outcome_labels_are_unique() {
        let mut labels: Vec<_> = Outcome::ALL.iter().map(|o| o.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }
}
