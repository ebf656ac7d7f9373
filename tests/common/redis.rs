//! A `redis-server` of the test's own on a free port of 127.0.0.1 (nothing saved to disk),
//! killed when the handle is dropped: the Rust side of `startRedis` in
//! `client-tests/test/services.mjs`. Included with `#[path = "common/redis.rs"] mod redis;`
//! by the test crates that need it.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A running redis-server; dropping it kills the process.
pub struct Redis {
    child: Child,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
}

impl Redis {
    /// A plain client of this server, for a test to look at or damage what it holds.
    pub async fn client(&self) -> fred::clients::Client {
        use fred::{
            interfaces::ClientLike,
            prelude::{Builder, Config},
        };
        let client = Builder::from_config(Config::from_url(&self.url).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        client
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts redis-server and waits until it listens.
///
/// The port is found free and then given to redis-server, so another process (a test
/// running beside this one) may take it in between: then this server exits and the port
/// answers for the other one. A start counts only when the server on the port is this
/// child, by its process id; otherwise it is tried again on another port.
pub async fn start() -> Redis {
    for _ in 0..5 {
        if let Some(redis) = try_start().await {
            return redis;
        }
    }
    panic!("redis-server did not start on a free port in 5 tries");
}

async fn try_start() -> Option<Redis> {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test.sh installs it)");
    // Owned at once, so that a failed start still kills the process.
    let mut redis = Redis {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if redis.child.try_wait().ok().flatten().is_some() {
            return None;
        }
        if let Some(pid) = server_pid(port) {
            return (pid == redis.child.id()).then_some(redis);
        }
        // A readiness poll: redis-server has no other way to say it listens.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis-server did not listen on {port}");
}

/// The process id of the Redis server answering on `port`, if one answers.
fn server_pid(port: u16) -> Option<u32> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    let mut reply = Vec::new();
    let mut buf = [0; 4096];
    while !reply.windows(11).any(|w| w == b"process_id:") || !reply.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    text.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}
