//! Volatile events (typing relays) through the vendored engine (vendor/README.md fix 20),
//! on a bare socketioxide server with Trestle's send bounds, over a real websocket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use socketioxide::{SocketIo, extract::SocketRef};
use tokio::net::TcpListener;
use tokio_tungstenite::{connect_async, tungstenite::Message};

/// A server whose every socket, once connected, is sent `burst` volatile events in one go
/// (nothing awaited between them, as several handlers relaying at the same moment), then
/// one ordinary `done`.
async fn server(burst: usize, payload: usize) -> std::net::SocketAddr {
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(4096)
        .max_buffer_bytes(Some(256 * 1024))
        .build_layer();
    io.ns("/", move |socket: SocketRef| async move {
        let filler = "x".repeat(payload);
        for i in 0..burst {
            socket.volatile().emit("v", &(i, &filler)).ok();
        }
        socket.emit("done", &()).ok();
    });
    let app = axum::Router::new().layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn open(
    addr: std::net::SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = connect_async(url).await.unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'));
    ws.send(Message::text("40")).await.unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_up_gets_every_volatile_event_in_order() {
    let addr = server(50, 10).await;
    let mut ws = open(addr).await;
    let mut got = Vec::new();
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            let Ok(t) = m.to_text() else { continue };
            if let Some(rest) = t.strip_prefix("42[\"v\",") {
                got.push(rest.split(',').next().unwrap().parse::<usize>().unwrap());
            } else if t.starts_with("42[\"done\"") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("done never came");
    // Upstream kept only the latest volatile packet: a burst arrived as one or a few.
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_is_behind_misses_volatile_events_and_stays_connected() {
    // 2,000 events of 1 KB: far past the 256 KB bound, which would close the socket as a
    // slow consumer had they been queued as ordinary events.
    let addr = server(2000, 1024).await;
    let mut ws = open(addr).await;
    let mut got = 0;
    let mut done = false;
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            let Ok(t) = m.to_text() else { continue };
            if t.starts_with("42[\"v\"") {
                got += 1;
            } else if t.starts_with("42[\"done\"") {
                done = true;
                break;
            } else if t.starts_with('1') {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the socket neither finished nor closed");
    assert!(done, "the socket was closed; {got} volatile events arrived");
    assert!(
        got < 2000,
        "past half the bound, volatile events are dropped"
    );
    assert!(got > 0, "events within half the bound are queued");
}
