//! Engine.IO v4 / Socket.IO v4 clients spoken by hand: over a websocket, and over HTTP
//! long-polling. Each client is a plain struct driven by the one task that owns it, with small
//! buffers, so one core holds tens of thousands of them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes, protocol::WebSocketConfig};

static START: OnceLock<Instant> = OnceLock::new();
static SOURCES: AtomicU32 = AtomicU32::new(1);
static NEXT_SOURCE: AtomicU32 = AtomicU32::new(0);

/// Microseconds since the generator started: the clock of every timestamp in a payload,
/// so sender and receiver (both in this process) read the same clock.
pub fn now_us() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Source addresses 127.0.0.1..127.0.0.n, used in turn: each gives its own ~28k ephemeral
/// ports, so 50,000 connections to one server port do not run out of them.
pub fn set_sources(n: u32) {
    SOURCES.store(n.clamp(1, 250), Relaxed);
}

pub async fn tcp_connect(port: u16) -> std::io::Result<TcpStream> {
    let n = SOURCES.load(Relaxed);
    let i = NEXT_SOURCE.fetch_add(1, Relaxed) % n;
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1 + i as u8), 0)))?;
    let s = sock
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Small buffers: tungstenite's defaults (128 KiB each way) would cost more per connection
/// than the servers under test spend.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(usize::MAX)
}

pub enum In {
    Text(Utf8Bytes),
    Binary(Bytes),
}

pub struct Client {
    ws: WebSocketStream<TcpStream>,
}

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

impl Client {
    /// Opens the websocket, waits for the engine's open packet, sends CONNECT with the
    /// token and waits for the CONNECT answer.
    pub async fn connect(port: u16, token: &str) -> Result<Client, String> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(port, token)).await {
            Ok(r) => r,
            Err(_) => Err("connect timeout (15 s)".into()),
        }
    }

    async fn connect_inner(port: u16, token: &str) -> Result<Client, String> {
        let tcp = tcp_connect(port).await.map_err(|e| format!("tcp: {e}"))?;
        let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
            .await
            .map_err(|e| format!("websocket: {e}"))?;
        let mut c = Client { ws };
        match c.recv().await {
            Some(In::Text(t)) if t.starts_with('0') => {}
            _ => return Err("no engine.io open packet".into()),
        }
        c.send(format!("40{{\"token\":\"{token}\"}}")).await?;
        loop {
            match c.recv().await {
                Some(In::Text(t)) if t.starts_with("40") => return Ok(c),
                Some(In::Text(t)) if t.starts_with("44") => {
                    return Err(format!("connect_error {}", &t[2..]));
                }
                Some(_) => {}
                None => return Err("closed before CONNECT answer".into()),
            }
        }
    }

    pub async fn send(&mut self, text: String) -> Result<(), String> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    /// Queues without flushing: a publisher sends a burst, then flushes once.
    pub async fn feed(&mut self, text: String) -> Result<(), String> {
        self.ws
            .feed(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn flush(&mut self) -> Result<(), String> {
        self.ws.flush().await.map_err(|e| e.to_string())
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) -> Result<(), String> {
        self.ws
            .send(Message::binary(data))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next text or binary message; engine.io pings are answered here. None once the
    /// connection is closed (or the server closed the engine with `1`, or the socket with `41`).
    pub async fn recv(&mut self) -> Option<In> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => match t.as_str() {
                    "2" => {
                        let _ = self.ws.send(Message::text("3")).await;
                    }
                    "1" | "41" => return None,
                    _ => return Some(In::Text(t)),
                },
                Ok(Message::Binary(b)) => return Some(In::Binary(b)),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// The number after `"key":` in a JSON text, read without parsing the whole packet (the
/// receivers of a fan-out read millions of them).
pub fn num_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    text[at..at + digits].parse().ok()
}

/// The ack id of `43<id>[...]`, and the JSON array after it.
pub fn ack_of(text: &str) -> Option<(u64, &str)> {
    let rest = text.strip_prefix("43")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    Some((rest[..digits].parse().ok()?, &rest[digits..]))
}

// ------------------------------------------------------------------ HTTP/1.1

/// A keep-alive HTTP/1.1 connection: enough of the protocol for engine.io polling,
/// `/health` and `/metrics` (Content-Length and chunked bodies).
pub struct Http {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    pub async fn open(port: u16, bind_source: bool) -> Result<Http, String> {
        let s = if bind_source {
            tcp_connect(port).await
        } else {
            TcpStream::connect(("127.0.0.1", port)).await
        }
        .map_err(|e| format!("tcp: {e}"))?;
        Ok(Http { s, buf: Vec::new() })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        self.s.write_all(&out).await.map_err(|e| e.to_string())?;
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        self.buf.drain(..end + 4);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("bad status line")?;
        let header = |name: &str| {
            head.lines().find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim_start_matches(':').trim().to_string())
            })
        };
        let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| "bad chunk size")?;
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    self.fill().await?;
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while self.buf.len() < len {
                self.fill().await?;
            }
            self.buf.drain(..len).collect()
        };
        Ok((status, body))
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        let n = self.s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut h = Http::open(port, false).await?;
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), h.request("GET", path, b""))
        .await
        .map_err(|_| "timeout".to_string())??;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An engine.io long-polling client: one keep-alive connection for the GET loop and one for
/// POSTs (CONNECT and pongs), both driven by the task that owns it.
pub struct Poller {
    get: Http,
    post: Http,
    path: String,
    port: u16,
}

impl Poller {
    pub async fn connect(port: u16, token: &str) -> Result<Poller, String> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(port, token)).await {
            Ok(r) => r,
            Err(_) => Err("polling connect timeout (15 s)".into()),
        }
    }

    async fn connect_inner(port: u16, token: &str) -> Result<Poller, String> {
        let mut get = Http::open(port, true).await?;
        let (status, body) = get
            .request("GET", "/socket.io/?EIO=4&transport=polling", b"")
            .await?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if status != 200 || !body.starts_with('0') {
            return Err(format!("polling handshake {status}: {body}"));
        }
        let sid_at = body.find("\"sid\":\"").ok_or("no sid")? + 7;
        let sid = &body[sid_at..sid_at + body[sid_at..].find('"').ok_or("no sid")?];
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        let post = Http::open(port, true).await?;
        let mut p = Poller {
            get,
            post,
            path,
            port,
        };
        p.post(format!("40{{\"token\":\"{token}\"}}")).await?;
        loop {
            for packet in p.poll().await? {
                if packet.starts_with("40") {
                    return Ok(p);
                }
                if let Some(why) = packet.strip_prefix("44") {
                    return Err(format!("connect_error {why}"));
                }
            }
        }
    }

    pub async fn post(&mut self, body: String) -> Result<(), String> {
        // The POST connection idles between pings (25 s), longer than servers keep an idle
        // keep-alive connection (Node: 5 s): open a new one when it was closed.
        let (status, _) = match self.post.request("POST", &self.path, body.as_bytes()).await {
            Ok(r) => r,
            Err(_) => {
                self.post = Http::open(self.port, true).await?;
                self.post
                    .request("POST", &self.path, body.as_bytes())
                    .await?
            }
        };
        if status != 200 {
            return Err(format!("polling POST {status}"));
        }
        Ok(())
    }

    /// One GET: the packets it carried, pings answered.
    pub async fn poll(&mut self) -> Result<Vec<String>, String> {
        let (status, body) = self.get.request("GET", &self.path, b"").await?;
        if status != 200 {
            return Err(format!("polling GET {status}"));
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let mut out = Vec::new();
        for packet in body.split('\u{1e}') {
            match packet {
                "2" => self.post("3".into()).await?,
                "1" | "41" => return Err("closed by the server".into()),
                "6" | "" => {}
                _ => out.push(packet.to_string()),
            }
        }
        Ok(out)
    }
}

// ------------------------------------------------------------------ latency histogram

/// Log-linear histogram of microseconds, about 1.6% wide buckets: millions of samples in a
/// few kilobytes.
pub struct Hist {
    b: Vec<u64>,
    n: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            b: vec![0; 128 + 57 * 64],
            n: 0,
        }
    }
}

impl Hist {
    fn idx(v: u64) -> usize {
        if v < 128 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize;
        128 + (e - 7) * 64 + ((v >> (e - 6)) as usize - 64)
    }

    fn val(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let e = (i - 128) / 64 + 7;
        let sub = ((i - 128) % 64) as u64;
        ((64 + sub) << (e - 6)) + (1u64 << (e - 6)) / 2
    }

    pub fn record(&mut self, us: u64) {
        self.b[Self::idx(us)] += 1;
        self.n += 1;
    }

    /// Percentile p (0..100) in milliseconds; NaN when empty.
    pub fn pct_ms(&self, p: f64) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.b.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::val(i) as f64 / 1000.0;
            }
        }
        f64::NAN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_within_two_percent() {
        let mut h = Hist::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        let p50 = h.pct_ms(50.0) * 1000.0;
        let p99 = h.pct_ms(99.0) * 1000.0;
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.02, "{p50}");
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.02, "{p99}");
    }

    #[test]
    fn reads_numbers_and_acks() {
        let t = r#"42["tick",{"k":3,"s":17,"t":123456},"1764768000000-42"]"#;
        assert_eq!(num_after(t, "\"s\":"), Some(17));
        assert_eq!(num_after(t, "\"t\":"), Some(123456));
        assert_eq!(
            ack_of("4312[{\"success\":true}]"),
            Some((12, "[{\"success\":true}]"))
        );
    }
}
