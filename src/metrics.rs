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
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_process::Collector;

use crate::{
    error::Code,
    events::{ClientEvent, DISCONNECT_LABELS},
};

const METADATA: Metadata<'static> = Metadata::new("trestle", Level::INFO, None);

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
        // Labelled counters are registered with every label value up front, so that
        // dashboards and alerts see zeros rather than missing series.
        let labelled: [(&'static str, &'static str, &[&'static str]); 5] = [
            ("trestle_disconnects_total", "reason", &DISCONNECT_LABELS),
            (
                "trestle_connections_refused_total",
                "reason",
                &[
                    "capacity",
                    "per_ip",
                    "shutting_down",
                    "origin",
                    // engine.io handshakes refused below the Socket.IO layer (http::admission)
                    "handshake_capacity",
                    "handshake_per_ip",
                    "handshake_shutting_down",
                ],
            ),
            (
                "trestle_auth_failures_total",
                "reason",
                &["missing", "invalid", "expired"],
            ),
            ("trestle_event_errors_total", "code", Code::ALL_STR),
            (
                "trestle_presence_changes_total",
                "status",
                &["online", "away", "offline"],
            ),
        ];
        for (name, label, values) in labelled {
            for value in values {
                let _ = counter(name, vec![Label::new(label, *value)]);
            }
        }
        let _ = recorder.register_counter(
            &Key::from_static_name("trestle_rate_limit_disconnects_total"),
            &METADATA,
        );
        Metrics {
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
        }
    }

    fn count(&self, name: &'static str, label: &'static str, value: &'static str) {
        self.recorder
            .register_counter(
                &Key::from_parts(name, vec![Label::new(label, value)]),
                &METADATA,
            )
            .increment(1);
    }

    /// A socket finished connecting.
    pub fn connected(&self) {
        self.connections_total.increment(1);
    }

    /// A connected socket went away, for `reason`.
    pub fn disconnected(&self, reason: &'static str) {
        self.count("trestle_disconnects_total", "reason", reason);
    }

    /// A connection was refused before authentication (capacity, per-IP cap, shutdown).
    pub fn refused(&self, reason: &'static str) {
        self.count("trestle_connections_refused_total", "reason", reason);
    }

    /// A connection was refused by authentication.
    pub fn auth_failure(&self, reason: &'static str) {
        self.count("trestle_auth_failures_total", "reason", reason);
    }

    /// A client event arrived (`None`: an event name the server does not handle).
    pub fn event(&self, event: Option<ClientEvent>) {
        self.events_seen.fetch_add(1, Ordering::Relaxed);
        match event {
            Some(e) => self.events[e as usize].increment(1),
            None => self.events_unknown.increment(1),
        }
    }

    /// A client event was answered with an error code.
    pub fn event_error(&self, code: &'static str) {
        self.count("trestle_event_errors_total", "code", code);
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

    /// This instance announced a user's new `status`.
    pub fn presence_change(&self, status: &'static str) {
        self.count("trestle_presence_changes_total", "status", status);
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
