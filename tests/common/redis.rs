//! A `redis-server` of the test's own on a free port of 127.0.0.1 (nothing saved to disk),
//! killed when the handle is dropped: the Rust side of `startRedis` in
//! `client-tests/test/services.mjs`. Included with `#[path = "common/redis.rs"] mod redis;`
//! by the test crates that need it.

use std::{
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

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts redis-server and waits until it listens.
pub async fn start() -> Redis {
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
    let redis = Redis {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return redis;
        }
        // A readiness poll: redis-server has no other way to say it listens.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis-server did not listen on {port}");
}
