//! Fixtures for socket.io's public test suites, served by Trestle's HTTP loop, path
//! `/socket.io/`, any origin:
//!
//! - `--suite protocol` (default, port 3000): socket.io's protocol test suite
//!   (github.com/socketio/socket.io-protocol, `test-suite/`); see `protocol.rs`.
//! - `--suite client` (port 3210): socket.io-client's own test suite; see `client_suite.rs`.

mod client_suite;
mod dynamic;
mod protocol;

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};
use tower_http::cors::CorsLayer;
use trestle::http::serve::{HeaderLimits, serve};

#[derive(Clone, Copy, ValueEnum)]
enum Suite {
    Protocol,
    Client,
}

/// Fixtures for socket.io's public test suites.
#[derive(Parser)]
struct Args {
    /// Which suite to serve.
    #[arg(long, value_enum, default_value = "protocol")]
    suite: Suite,
    /// Port to listen on (127.0.0.1); the suite's own port when not given.
    #[arg(long, env = "PORT")]
    port: Option<u16>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let (router, default_port, name) = match args.suite {
        Suite::Protocol => (
            axum::Router::new().layer(protocol::layer()),
            3000,
            "protocol",
        ),
        Suite::Client => (
            axum::Router::new()
                .layer(client_suite::layer())
                .layer(axum::middleware::from_fn(client_suite::delay_handshakes)),
            3210,
            "client",
        ),
    };
    let router = router.layer(CorsLayer::very_permissive());
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port.unwrap_or(default_port)));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("{name} suite fixture listening on {addr}");
    let limits = HeaderLimits {
        max_headers: 100,
        max_bytes: 65_536,
        read_timeout: Duration::from_secs(10),
    };
    serve(listener, router, limits, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
