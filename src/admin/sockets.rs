//! Sockets as the dashboard shows them (admin-ui's serialized socket), the `all_sockets`
//! it gets on connecting, and the relay of [`SocketChange`]s to every instance's dashboards.
//!
//! A socket of this instance is shown whole: its transport, user, rooms and handshake
//! (with the credentials in it left out). A socket of another instance is known here only
//! by what the adapter's `fetch_sockets` gives (its id) and by the rooms found by asking the
//! cluster which sockets each room holds (for at most [`MAX_ROOM_LOOKUPS`] rooms); its own
//! instance reports its connection and room changes in full as they happen.

use std::collections::{HashMap, HashSet};

use futures_util::{StreamExt, stream};
use serde_json::{Map, Value as Json, json};
use socketioxide::{
    adapter::Adapter,
    socket::{Sid, Socket},
};

use super::{MAIN, NAMESPACE, Tally};
use crate::{
    app::{App, SocketChange},
    limits::client_ip,
    session::conn_of,
};

/// Headers and query parameters that carry credentials (the token, cookies, the
/// engine.io session id that lets its holder post as the connection): never shown.
const SECRET_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];
const SECRET_PARAMS: &[&str] = &["token", "sid"];
/// Rooms whose members are looked up across the cluster for `all_sockets`, each one
/// request to every instance; past this, other instances' sockets show fewer rooms.
const MAX_ROOM_LOOKUPS: usize = 256;
/// Sockets in one `all_sockets`, and bytes of headers shown per socket (a request head may
/// hold 64 KiB): what a dashboard is sent stays within a few megabytes, under the send
/// bound (`MAX_BUFFER_BYTES`) that would otherwise close its connection.
const MAX_SHOWN: usize = 5_000;
const MAX_HEADER_BYTES: usize = 4_096;

/// A socket of this instance, as admin-ui serializes one.
pub fn local<A: Adapter>(socket: &Socket<A>, trust_proxy: bool) -> Json {
    let parts = socket.req_parts();
    let (mut headers, mut bytes) = (Map::new(), 0);
    for (name, value) in &parts.headers {
        bytes += name.as_str().len() + value.len();
        if bytes > MAX_HEADER_BYTES {
            break;
        }
        if SECRET_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        match headers.get_mut(name.as_str()) {
            Some(Json::String(seen)) => *seen = format!("{seen}, {value}"),
            _ => {
                headers.insert(name.to_string(), value.into());
            }
        }
    }
    let query: Map<String, Json> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .filter(|(k, _)| !SECRET_PARAMS.contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned().into()))
            .collect();
    let secure = trust_proxy
        && parts
            .headers
            .get("x-forwarded-proto")
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let data = conn_of(socket).map_or(
        json!({}),
        |c| json!({ "userId": c.user.id, "name": &*c.user.name, "anonymous": c.user.anonymous }),
    );
    let transport: &'static str = socket.transport_type().into();
    json!({
        "id": socket.id.to_string(),
        // One socket per engine connection in Trestle, and the engine's own id must stay
        // secret (vendor fix 11): the socket id stands for the client.
        "clientId": socket.id.to_string(),
        "transport": transport,
        "nsp": socket.ns(),
        "data": data,
        "handshake": {
            "address": client_ip(parts, trust_proxy).to_string(),
            "headers": headers,
            "query": query,
            "secure": secure,
            "url": parts.uri.path(),
        },
        "rooms": socket.rooms(),
    })
}

/// A socket of another instance: its id, and the rooms found for it.
fn remote(id: Sid, server: &str, rooms: Vec<String>) -> Json {
    json!({
        "id": id.to_string(),
        "clientId": id.to_string(),
        "transport": null,
        "nsp": MAIN,
        "data": { "serverId": server },
        "handshake": {},
        "rooms": rooms,
    })
}

/// Every socket of the main namespace across the cluster: `all_sockets`.
pub async fn all<A: Adapter>(app: &App<A>) -> Vec<Json> {
    let trust_proxy = app.state.config.trust_proxy;
    let Some(main) = app.io.of(MAIN) else {
        return Vec::new();
    };
    let here = main.local().sockets();
    let mut shown: Vec<Json> = (here.iter().take(MAX_SHOWN))
        .map(|s| local(s, trust_proxy))
        .collect();
    let here: HashSet<Sid> = here.iter().map(|s| s.id).collect();
    // An operator is spent by its call: a second one for the cluster-wide listing.
    let everywhere = match app.io.of(MAIN).map(|m| m.fetch_sockets()) {
        Some(f) => f.await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "admin dashboard: could not list other instances' sockets");
            Vec::new()
        }),
        None => Vec::new(),
    };
    // Each starts in the room of its own id, as every socket of Trestle is.
    let mut elsewhere: HashMap<Sid, (String, Vec<String>)> = everywhere
        .into_iter()
        .map(|s| s.into_data())
        .filter(|d| !here.contains(&d.id))
        .map(|d| (d.id, (d.server_id.to_string(), vec![d.id.to_string()])))
        .collect();
    let others = elsewhere.len();
    if !elsewhere.is_empty() {
        add_rooms(app, &mut elsewhere).await;
    }
    let room = MAX_SHOWN.saturating_sub(shown.len());
    shown.extend(
        (elsewhere.into_iter().take(room)).map(|(id, (server, rooms))| remote(id, &server, rooms)),
    );
    if here.len() + others > shown.len() {
        tracing::info!(
            shown = shown.len(),
            "admin dashboard: all_sockets shows the first sockets only"
        );
    }
    shown
}

/// Fills in the rooms of other instances' sockets by asking the cluster who is in each
/// room (the adapter has no request for a socket's rooms).
async fn add_rooms<A: Adapter>(app: &App<A>, sockets: &mut HashMap<Sid, (String, Vec<String>)>) {
    let Some(main) = app.io.of(MAIN) else { return };
    let rooms = match main.rooms().await {
        Ok(rooms) => rooms,
        Err(e) => {
            tracing::warn!(error = %e, "admin dashboard: could not list the cluster's rooms");
            return;
        }
    };
    let ids: HashSet<String> = sockets.keys().map(Sid::to_string).collect();
    let wanted: Vec<String> = rooms
        .into_iter()
        .map(|r| r.into_owned())
        .filter(|r| !ids.contains(r) && r.parse::<Sid>().is_err())
        .collect();
    if wanted.len() > MAX_ROOM_LOOKUPS {
        tracing::info!(
            rooms = wanted.len(),
            "admin dashboard: too many rooms to look up for other instances' sockets"
        );
    }
    let io = &app.io;
    let mut members = stream::iter(wanted.into_iter().take(MAX_ROOM_LOOKUPS))
        .map(|room| async move {
            let found = match io.of(MAIN) {
                Some(op) => op.within(room.clone()).fetch_sockets().await.ok(),
                None => None,
            };
            (room, found.unwrap_or_default())
        })
        .buffer_unordered(4);
    while let Some((room, found)) = members.next().await {
        for s in found {
            if let Some((_, rooms)) = sockets.get_mut(&s.data().id) {
                rooms.push(room.clone());
            }
        }
    }
}

/// Counts every change, and when the dashboard follows sockets, tells every instance's
/// dashboards (an adapter broadcast on `/admin`), as admin-ui's server does.
pub async fn relay<A: Adapter>(
    app: App<A>,
    mut changes: tokio::sync::mpsc::Receiver<SocketChange>,
    tally: &Tally,
    follow: bool,
) {
    while let Some(change) = changes.recv().await {
        tally.record(&change);
        if follow {
            tell(&app, change).await;
        }
    }
}

async fn tell<A: Adapter>(app: &App<A>, change: SocketChange) {
    let now = crate::time::iso_now();
    let emit = |event: &'static str, data: Json| async move {
        let Some(admin) = app.io.of(NAMESPACE) else {
            return;
        };
        // Sent as several arguments, as admin-ui's events are.
        let args = super::commands::Spread(data.as_array().map_or(&[][..], Vec::as_slice));
        if let Err(e) = admin.emit(event, &args).await {
            tracing::warn!(event, error = %e, "admin dashboard: could not relay a socket change");
        }
    };
    match change {
        SocketChange::Connected(sid) => {
            // Gone already: its disconnection follows.
            let Some(socket) = app.io.get_socket(sid) else {
                return;
            };
            let shown = local(&socket, app.state.config.trust_proxy);
            emit("socket_connected", json!([shown, now])).await;
        }
        SocketChange::Joined(sid, room) => {
            emit("room_joined", json!([MAIN, room, sid.to_string(), now])).await;
        }
        SocketChange::Left(sid, room) => {
            emit("room_left", json!([MAIN, room, sid.to_string(), now])).await;
        }
        SocketChange::Disconnected { sid, reason, rooms } => {
            let id = sid.to_string();
            emit("socket_disconnected", json!([MAIN, id, reason, now])).await;
            for room in rooms {
                emit("room_left", json!([MAIN, room, id, now])).await;
            }
        }
    }
}
