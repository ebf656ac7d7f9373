//! The `trestle` binary: configuration, logging, run.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::{EnvFilter, fmt};
use trestle::{Config, config::LogFormat};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Json => fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .init(),
        LogFormat::Pretty => fmt().with_env_filter(filter).init(),
    }
    match trestle::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("cannot start: {e:#}");
            ExitCode::from(2)
        }
    }
}
