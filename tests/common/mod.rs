//! Test support: a server on port 0 with a shutdown handle, tokens, and a minimal
//! Socket.IO v5 client over a real websocket (raw frames, so tests see exactly what a
//! client receives).
//!
//! `pg.rs` (PostgreSQL through `scripts/pg.sh`) and `redis.rs` (a `redis-server` of the
//! test's own) beside it are not declared here: the crates that need them include them
//! with `#[path = "common/pg.rs"] mod pg;`, so that the others do not compile them.
#![allow(dead_code)]

use std::{collections::VecDeque, net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};
use trestle::Config;

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Starts a server with the test defaults, changed by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = Config::for_tests(SECRET);
        cfg.api_key = Some(API_KEY.into());
        tweak(&mut cfg);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(trestle::serve(listener, cfg, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            stop: Some(tx),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Begins the graceful stop (as SIGTERM would).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server and waits for `serve` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("server stops")?
    }
}

/// An HS256 token for `claims`, valid for an hour unless `exp` is given.
pub fn token(claims: Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A Socket.IO client on the `/` namespace over a websocket.
pub struct Client {
    ws: Ws,
    pub sid: String,
    next_ack: u64,
    events: VecDeque<(String, Vec<Value>)>,
}

/// What ended a connection attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectError {
    /// `connect_error` with this message.
    Refused(String),
    /// The transport closed.
    Closed,
}

impl Client {
    /// Connects with `auth` as the CONNECT payload.
    pub async fn connect(addr: SocketAddr, auth: Value) -> Result<Client, ConnectError> {
        Self::connect_with(addr, "", auth).await
    }

    /// Connects with extra query parameters (`&k=v…`) and `auth`.
    pub async fn connect_with(
        addr: SocketAddr,
        query: &str,
        auth: Value,
    ) -> Result<Client, ConnectError> {
        Self::connect_full(addr, query, &[], auth).await
    }

    /// Connects with extra query parameters, extra request headers and `auth`.
    pub async fn connect_full(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
        auth: Value,
    ) -> Result<Client, ConnectError> {
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderName};
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket{query}");
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket opens");
        let open = next_text(&mut ws).await.ok_or(ConnectError::Closed)?;
        assert!(open.starts_with('0'), "engine open packet: {open}");
        ws.send(Message::text(format!("40{auth}"))).await.unwrap();
        loop {
            let msg = next_text(&mut ws).await.ok_or(ConnectError::Closed)?;
            if let Some(body) = msg.strip_prefix("40") {
                let v: Value = serde_json::from_str(body).unwrap();
                let sid = v["sid"].as_str().unwrap().to_owned();
                return Ok(Client {
                    ws,
                    sid,
                    next_ack: 0,
                    events: VecDeque::new(),
                });
            }
            if let Some(body) = msg.strip_prefix("44") {
                let v: Value = serde_json::from_str(body).unwrap();
                return Err(ConnectError::Refused(
                    v["message"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }

    /// Connects a user with these claims, panicking on refusal.
    pub async fn user(addr: SocketAddr, claims: Value) -> Client {
        Self::connect(addr, json!({ "token": token(claims) }))
            .await
            .expect("connects")
    }

    /// Sends an event without an ack.
    pub async fn emit(&mut self, event: &str, args: Vec<Value>) {
        let mut arr = vec![json!(event)];
        arr.extend(args);
        self.ws
            .send(Message::text(format!("42{}", Value::Array(arr))))
            .await
            .unwrap();
    }

    /// Sends raw text as one websocket message.
    pub async fn send_raw(&mut self, text: String) -> bool {
        self.ws.send(Message::text(text)).await.is_ok()
    }

    /// Sends an event and waits for its ack (the first ack argument).
    pub async fn call(&mut self, event: &str, args: Vec<Value>) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        let mut arr = vec![json!(event)];
        arr.extend(args);
        self.ws
            .send(Message::text(format!("42{id}{}", Value::Array(arr))))
            .await
            .unwrap();
        let prefix = format!("43{id}");
        loop {
            let msg = self.recv().await.expect("ack before close");
            if let Some(body) = msg.strip_prefix(&prefix) {
                let v: Value = serde_json::from_str(body).unwrap();
                return v[0].clone();
            }
            self.stash(&msg);
        }
    }

    fn stash(&mut self, msg: &str) {
        if let Some(body) = msg.strip_prefix("42") {
            let v: Vec<Value> = serde_json::from_str(body).unwrap();
            let name = v[0].as_str().unwrap().to_owned();
            self.events.push_back((name, v[1..].to_vec()));
        }
    }

    /// Waits up to `wait` for `event`, returning its first argument.
    pub async fn event(&mut self, event: &str, wait: Duration) -> Option<Value> {
        if let Some(i) = self.events.iter().position(|(n, _)| n == event) {
            let (_, args) = self.events.remove(i).unwrap();
            return Some(args.first().cloned().unwrap_or(Value::Null));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.recv())
                .await
                .ok()??;
            self.stash(&msg);
            if let Some(i) = self.events.iter().position(|(n, _)| n == event) {
                let (_, args) = self.events.remove(i).unwrap();
                return Some(args.first().cloned().unwrap_or(Value::Null));
            }
        }
    }

    /// Reads until the connection closes; returns the Socket.IO or engine packets seen.
    pub async fn until_closed(&mut self, wait: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, self.recv()).await {
            seen.push(msg);
        }
        seen
    }

    /// Reads until a raw packet equal to `packet` arrives; false if the connection
    /// closed or `wait` passed first.
    pub async fn packet(&mut self, packet: &str, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, self.recv()).await {
            if msg == packet {
                return true;
            }
            self.stash(&msg);
        }
        false
    }

    /// The next text message, answering pings; `None` once closed.
    async fn recv(&mut self) -> Option<String> {
        loop {
            let msg = next_text(&mut self.ws).await?;
            if msg == "2" {
                let _ = self.ws.send(Message::text("3")).await;
                continue;
            }
            return Some(msg);
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// `POST /api/emit` with the test key.
pub async fn api_emit(server: &TestServer, body: Value) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(server.url("/api/emit"))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

pub const SHORT: Duration = Duration::from_millis(300);
pub const LONG: Duration = Duration::from_secs(5);
