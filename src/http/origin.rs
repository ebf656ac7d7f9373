//! The `Origin` allow-list on Socket.IO requests (`CORS_ORIGINS`).
//!
//! CORS headers only ask browsers to hide responses from other sites; a websocket upgrade
//! is not covered by CORS at all, so without this check any web page could open a socket
//! with a visitor's cookies or token. Requests without `Origin` are not from browsers
//! (native apps, Node services) and pass.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{StatusCode, header::ORIGIN},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{config::Config, server::AppState};

/// The origins allowed to open sockets.
pub enum Origins {
    /// `CORS_ORIGINS=*` (the default).
    Any,
    /// Exact origins, lower-cased, such as `https://app.example.com`.
    List(Vec<String>),
}

impl Origins {
    /// The allow-list of `CORS_ORIGINS`.
    pub fn from_config(cfg: &Config) -> Origins {
        let list: Vec<String> = cfg
            .cors_origins
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        if list.is_empty() || list.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            Origins::List(list)
        }
    }

    /// Whether a request with this `Origin` header value may pass.
    pub fn allows(&self, origin: &[u8]) -> bool {
        match self {
            Origins::Any => true,
            Origins::List(list) => {
                let origin = String::from_utf8_lossy(origin).to_ascii_lowercase();
                list.contains(&origin)
            }
        }
    }
}

/// Refuses Socket.IO requests (handshake, polling, websocket upgrade) from an origin
/// that is not allowed, with 403 before the engine sees them.
pub async fn check(
    State((origins, state)): State<(Arc<Origins>, Arc<AppState>)>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path().starts_with("/socket.io")
        && let Some(origin) = req.headers().get(ORIGIN)
        && !origins.allows(origin.as_bytes())
    {
        state.metrics.refused("origin");
        tracing::debug!("request from an origin that is not allowed refused");
        return (StatusCode::FORBIDDEN, "Origin not allowed").into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_origins_any_case_and_star() {
        let mut cfg = Config::for_tests("s");
        cfg.cors_origins = "https://App.example.com/, http://localhost:5173".into();
        let o = Origins::from_config(&cfg);
        assert!(o.allows(b"https://app.example.com"));
        assert!(o.allows(b"http://localhost:5173"));
        assert!(!o.allows(b"https://app.example.com.evil.net"));
        assert!(!o.allows(b"http://app.example.com"));
        assert!(!o.allows(b"null"));
        cfg.cors_origins = "*".into();
        assert!(Origins::from_config(&cfg).allows(b"https://anything"));
    }
}
