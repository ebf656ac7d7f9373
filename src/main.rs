//! The `trestle` binary: configuration, logging, run.

use std::{io::IsTerminal, process::ExitCode};

use tracing_subscriber::{EnvFilter, fmt};
use trestle::{Config, config::LogFormat};

/// Crates that log raw frames, requests or engine.io session ids at their lower levels
/// (tungstenite writes every received message at trace, CONNECT packets and their tokens
/// included; engineioxide and socketioxide name the engine.io session id, the secret a
/// long-polling request or an upgrade presents, in their debug lines). They are capped
/// whatever `RUST_LOG` says, so that tokens, query strings and session ids never reach
/// the logs; Trestle's own lines name sockets by their public socket id.
const PAYLOAD_LOGGERS: &str = "tungstenite=info,tokio_tungstenite=info,hyper=info,hyper_util=info,h2=info,\
     engineioxide=info,socketioxide=info";

fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let user = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    EnvFilter::try_new(format!("{user},{PAYLOAD_LOGGERS}")).unwrap_or_else(|e| {
        eprintln!("trestle: RUST_LOG is not valid ({e}); using info");
        EnvFilter::new(format!("info,{PAYLOAD_LOGGERS}"))
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::from_env_and_args();
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    // `fmt()` writes to stdout. Colour codes only help a person at a terminal; in files,
    // journald or a log collector they are noise that breaks searching. `with_ansi`
    // overrides the subscriber's own NO_COLOR check, so that convention is kept here.
    let ansi = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    match config.log_format {
        LogFormat::Json => fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .with_ansi(ansi)
            .init(),
        LogFormat::Pretty => fmt().with_env_filter(filter).with_ansi(ansi).init(),
    }
    match trestle::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("cannot start: {e:#}");
            ExitCode::from(2)
        }
    }
}
