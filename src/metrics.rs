//! Counters and gauges for `GET /metrics` (Prometheus text) and `metrics_update`.
//!
//! Each server owns its own recorder instead of installing a process-wide one, so that
//! several servers in one test process keep separate figures. Hot-path counters (one per
//! client event) are registered once at start; rare ones are registered when first used.
//!
//! The standard `process_*` metrics (memory, CPU, file descriptors, threads, start time)
//! come from `metrics-process`, so that the names and meanings are those of the
//! Prometheus client libraries and the dashboards made for the Node backend keep working.

use std::{
    collections::HashSet,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_process::Collector;
use socketioxide::socket::Sid;

use crate::{
    error::Code,
    events::{ClientEvent, DISCONNECT_LABELS},
};

const METADATA: Metadata<'static> = Metadata::new("trestle", Level::INFO, None);

/// A counter whose label takes the values of an enum. Every value is registered when the
/// server starts, so dashboards and alerts see zeros rather than missing series, and a
/// value the enum does not have cannot be counted: the enum is the one list.
pub trait LabelValues: Copy + 'static {
    /// The counter's name.
    const COUNTER: &'static str;
    /// The name of its label.
    const LABEL: &'static str;
    /// Every value.
    const ALL: &'static [Self];
    /// This value as exported.
    fn label(self) -> &'static str;
}

/// Why a connection was refused before authentication: at the Socket.IO CONNECT
/// (`connection`), or at the engine.io handshake below it (`http::admission`,
/// `http::origin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `MAX_CONNECTIONS` reached.
    Capacity,
    /// `MAX_CONNECTIONS_PER_IP` reached.
    PerIp,
    /// A graceful stop has begun.
    ShuttingDown,
    /// The `Origin` is not in `CORS_ORIGINS`.
    Origin,
    /// Engine sessions: `MAX_CONNECTIONS` and its headroom reached.
    HandshakeCapacity,
    /// Engine sessions: `MAX_CONNECTIONS_PER_IP` and its headroom reached.
    HandshakePerIp,
    /// A handshake during a graceful stop.
    HandshakeShuttingDown,
}

impl LabelValues for Refused {
    const COUNTER: &'static str = "trestle_connections_refused_total";
    const LABEL: &'static str = "reason";
    const ALL: &'static [Self] = &[
        Refused::Capacity,
        Refused::PerIp,
        Refused::ShuttingDown,
        Refused::Origin,
        Refused::HandshakeCapacity,
        Refused::HandshakePerIp,
        Refused::HandshakeShuttingDown,
    ];
    fn label(self) -> &'static str {
        match self {
            Refused::Capacity => "capacity",
            Refused::PerIp => "per_ip",
            Refused::ShuttingDown => "shutting_down",
            Refused::Origin => "origin",
            Refused::HandshakeCapacity => "handshake_capacity",
            Refused::HandshakePerIp => "handshake_per_ip",
            Refused::HandshakeShuttingDown => "handshake_shutting_down",
        }
    }
}

impl LabelValues for Code {
    const COUNTER: &'static str = "trestle_event_errors_total";
    const LABEL: &'static str = "code";
    const ALL: &'static [Self] = Code::ALL;
    fn label(self) -> &'static str {
        self.as_str()
    }
}

/// The server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    connected: Gauge,
    connections_total: Counter,
    events: Vec<Counter>,
    events_unknown: Counter,
    events_seen: AtomicU64,
    rate_limited: Counter,
    api_emit: Counter,
    redis_lost: Counter,
    started: Instant,
    process: Collector,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A recorder with every metric described and the per-event counters registered.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let describe = |name: &'static str, help: &'static str| {
            recorder.describe_counter(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
        };
        describe(
            "trestle_connected_sockets",
            "Socket.IO clients connected to this instance",
        );
        describe(
            "trestle_connections_total",
            "Socket.IO connections accepted since start",
        );
        describe("trestle_disconnects_total", "Disconnections by reason");
        describe(
            "trestle_connections_refused_total",
            "Connections refused before auth, by reason",
        );
        describe(
            "trestle_auth_failures_total",
            "Connections refused by authentication, by reason",
        );
        describe(
            "trestle_events_received_total",
            "Client events received, by event name",
        );
        describe(
            "trestle_event_errors_total",
            "Client events answered with success: false, by code",
        );
        describe(
            "trestle_rate_limited_total",
            "Client events refused with RATE_LIMITED",
        );
        describe(
            "trestle_rate_limit_disconnects_total",
            "Sockets disconnected for flooding",
        );
        describe("trestle_api_emit_total", "Accepted POST /api/emit requests");
        describe(
            "trestle_recoveries_total",
            "Connections that recovered a lost connection's session (connection state recovery)",
        );
        describe(
            "trestle_presence_changes_total",
            "status_change announcements sent by this instance, by status",
        );
        describe(
            "trestle_redis_messages_lost_total",
            "Broadcasts from other instances received from Redis and dropped before delivery",
        );
        describe("trestle_uptime_seconds", "Seconds since the server started");
        // The collector records through the `metrics` macros, which reach the global
        // recorder unless a local one is set for the call: this server's recorder is.
        let process = Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let events = ClientEvent::ALL
            .iter()
            .map(|e| {
                counter(
                    "trestle_events_received_total",
                    vec![Label::new("event", e.name())],
                )
            })
            .collect();
        // Registered with every value up front, as [`LabelValues`] are (the disconnect
        // reasons are the events table's); the labels of layers above this one (auth
        // failures, presence) are registered by the state that holds these metrics.
        for reason in DISCONNECT_LABELS {
            let _ = counter(
                "trestle_disconnects_total",
                vec![Label::new("reason", reason)],
            );
        }
        for name in [
            "trestle_rate_limit_disconnects_total",
            "trestle_recoveries_total",
        ] {
            let _ = recorder.register_counter(&Key::from_static_name(name), &METADATA);
        }
        let metrics = Metrics {
            handle: recorder.handle(),
            connected: recorder.register_gauge(
                &Key::from_static_name("trestle_connected_sockets"),
                &METADATA,
            ),
            connections_total: counter("trestle_connections_total", vec![]),
            events,
            events_unknown: counter(
                "trestle_events_received_total",
                vec![Label::new("event", "unknown")],
            ),
            events_seen: AtomicU64::new(0),
            rate_limited: counter("trestle_rate_limited_total", vec![]),
            api_emit: counter("trestle_api_emit_total", vec![]),
            redis_lost: counter("trestle_redis_messages_lost_total", vec![]),
            started: Instant::now(),
            process,
            recorder,
        };
        metrics.register::<Refused>();
        metrics.register::<Code>();
        metrics
    }

    /// Registers every value of `L`, so each is exported from the start (at zero).
    pub fn register<L: LabelValues>(&self) {
        for value in L::ALL {
            let _ = self.recorder.register_counter(
                &Key::from_parts(L::COUNTER, vec![Label::new(L::LABEL, value.label())]),
                &METADATA,
            );
        }
    }

    /// Counts one `value` in its counter.
    pub fn count<L: LabelValues>(&self, value: L) {
        self.add(value, 1);
    }

    /// Counts `n` of `value` in its counter.
    pub fn add<L: LabelValues>(&self, value: L, n: u64) {
        self.count_label(L::COUNTER, L::LABEL, value.label(), n);
    }

    fn count_label(&self, name: &'static str, label: &'static str, value: &'static str, n: u64) {
        self.recorder
            .register_counter(
                &Key::from_parts(name, vec![Label::new(label, value)]),
                &METADATA,
            )
            .increment(n);
    }

    /// A socket finished connecting.
    pub fn connected(&self) {
        self.connections_total.increment(1);
    }

    /// A connected socket went away, for `reason`.
    pub fn disconnected(&self, reason: &'static str) {
        self.count_label("trestle_disconnects_total", "reason", reason, 1);
    }

    /// A client event arrived (`None`: an event name the server does not handle).
    pub fn event(&self, event: Option<ClientEvent>) {
        self.events_seen.fetch_add(1, Ordering::Relaxed);
        match event {
            Some(e) => self.events[e as usize].increment(1),
            None => self.events_unknown.increment(1),
        }
    }

    /// A client event was refused by the rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.increment(1);
    }

    /// A flooding socket was disconnected.
    pub fn rate_limit_disconnect(&self) {
        self.recorder
            .register_counter(
                &Key::from_static_name("trestle_rate_limit_disconnects_total"),
                &METADATA,
            )
            .increment(1);
    }

    /// A socket got a lost connection's session back.
    pub fn recovered(&self) {
        self.recorder
            .register_counter(
                &Key::from_static_name("trestle_recoveries_total"),
                &METADATA,
            )
            .increment(1);
    }

    /// `POST /api/emit` accepted a request.
    pub fn api_emit(&self) {
        self.api_emit.increment(1);
    }

    /// The Redis adapter has dropped `total` messages since start (it counts them itself).
    pub fn redis_messages_lost(&self, total: u64) {
        self.redis_lost.absolute(total);
    }

    /// Client events received since start, every name counted.
    pub fn events_seen(&self) -> u64 {
        self.events_seen.load(Ordering::Relaxed)
    }

    /// Seconds since the server started.
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The Prometheus text exposition, with `connected` sockets on this instance.
    pub fn render(&self, connected: usize) -> String {
        self.connected.set(connected as f64);
        self.recorder
            .register_gauge(&Key::from_static_name("trestle_uptime_seconds"), &METADATA)
            .set(self.started.elapsed().as_secs_f64());
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// The sockets of this instance that receive `metrics_update` (the handlers in
/// `handlers::metrics` send it), and the event rate they are sent.
#[derive(Debug, Default)]
pub struct MetricsFeed {
    subscribers: Mutex<HashSet<Sid>>,
    /// Events per second over the last interval, as `f64` bits.
    rate_bits: AtomicU64,
}

impl MetricsFeed {
    /// The subscribed sockets.
    pub fn subscribers(&self) -> Vec<Sid> {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Events per second over the last interval.
    pub fn last_rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// Records the rate of the interval that just ended.
    pub fn set_rate(&self, rate: f64) {
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Starts sending to `sid`.
    pub fn subscribe(&self, sid: Sid) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sid);
    }

    /// Stops sending to `sid` (unsubscribe or disconnect).
    pub fn unsubscribe(&self, sid: Sid) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sid);
    }
}
