//! `server_stats`, every [`EVERY`] from each instance to every instance's dashboards, with
//! the instance's own `serverId`: admin-ui's dashboard lists the servers by it and adds up
//! their namespaces' socket counts.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use serde_json::{Value as Json, json};
use socketioxide::{TransportType, adapter::Adapter};

use super::{MAIN, NAMESPACE};
use crate::app::{App, SocketChange};

/// How often, as admin-ui's server.
pub const EVERY: Duration = Duration::from_secs(2);

/// Connections and disconnections (by reason) since the last `server_stats`: its
/// `aggregatedEvents`, which the dashboard draws as connections per interval.
#[derive(Default)]
pub struct Tally(Mutex<(u64, BTreeMap<&'static str, u64>)>);

impl Tally {
    /// Counts a change of the socket feed.
    pub fn record(&self, change: &SocketChange) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match change {
            SocketChange::Connected(_) => t.0 += 1,
            SocketChange::Disconnected { reason, .. } => *t.1.entry(reason).or_default() += 1,
            SocketChange::Joined(..) | SocketChange::Left(..) => {}
        }
    }

    /// What was counted, as admin-ui's `aggregatedEvents` at `timestamp` (ms), and zeros.
    fn take(&self, timestamp: i64) -> Vec<Json> {
        let (connections, disconnections) =
            std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        let event = |kind: &str, sub: Option<&str>, count: u64| json!({ "timestamp": timestamp, "type": kind, "subType": sub, "count": count });
        (connections > 0)
            .then(|| event("rawConnection", None, connections))
            .into_iter()
            .chain(
                disconnections
                    .into_iter()
                    .map(|(reason, n)| event("rawDisconnection", Some(reason), n)),
            )
            .collect()
    }
}

/// The name this instance is known by: the host name and the process id, so that two
/// instances on one host are two servers on the dashboard.
pub fn server_id() -> (String, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "trestle".to_owned());
    (format!("{host}#{}", std::process::id()), host)
}

/// Sends `server_stats` every [`EVERY`], for as long as the server runs.
pub async fn every<A: Adapter>(app: App<A>, tally: &Tally) {
    let (server_id, hostname) = server_id();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let mut namespaces = Vec::new();
        let (mut clients, mut polling) = (0, 0);
        for nsp in [MAIN, NAMESPACE] {
            let Some(op) = app.io.of(nsp) else { continue };
            let sockets = op.local().sockets();
            clients += sockets.len();
            polling += sockets
                .iter()
                .filter(|s| s.transport_type() == TransportType::Polling)
                .count();
            namespaces.push(json!({ "name": nsp, "socketsCount": sockets.len() }));
        }
        let stats = json!({
            "serverId": server_id,
            "hostname": hostname,
            "pid": std::process::id(),
            "uptime": app.state.metrics.uptime_seconds(),
            "clientsCount": clients,
            "pollingClientsCount": polling,
            "aggregatedEvents": tally.take(now_ms - now_ms % 1000),
            "namespaces": namespaces,
        });
        let Some(admin) = app.io.of(NAMESPACE) else {
            continue;
        };
        if let Err(e) = admin.emit("server_stats", &stats).await {
            tracing::debug!(error = %e, "admin dashboard: could not send server_stats");
        }
    }
}

#[cfg(test)]
mod tests {
    use socketioxide::socket::Sid;

    use super::*;

    #[test]
    fn the_tally_counts_connections_and_disconnections_once() {
        let t = Tally::default();
        let sid = Sid::new();
        t.record(&SocketChange::Connected(sid));
        t.record(&SocketChange::Connected(sid));
        t.record(&SocketChange::Joined(sid, "r".into()));
        t.record(&SocketChange::Disconnected {
            sid,
            reason: "transport_close",
            rooms: vec![],
        });
        let events = t.take(1000);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["type"], "rawConnection");
        assert_eq!(events[0]["count"], 2);
        assert_eq!(events[1]["subType"], "transport_close");
        assert!(t.take(2000).is_empty());
    }
}
