//! The `Origin` allow-list on Socket.IO requests (`CORS_ORIGINS`).
//!
//! CORS headers only ask browsers to hide responses from other sites; a websocket upgrade
//! is not covered by CORS at all, so without this check any web page could open a socket
//! with a visitor's cookies or token. Requests without `Origin` are not from browsers
//! (native apps, Node services) and pass, and so do requests whose `Origin` is the server's
//! own: a page served from the same origin, or a non-browser websocket library (Python's
//! `websocket-client` under python-socketio, for one) that sends the URL it connects to as
//! its `Origin`. A foreign page cannot forge either: the browser writes `Origin`, and a
//! page whose host name was re-pointed at this server (DNS rebinding) holds none of the
//! real site's cookies or tokens.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{
        HeaderMap, StatusCode, Uri,
        header::{HOST, ORIGIN},
    },
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{app::AppState, config::Config};

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
        cfg.cors_origin_list().map_or(Origins::Any, Origins::List)
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

/// `scheme://host:port`, lower-cased, with `ws`/`wss` read as `http`/`https` (a websocket
/// library may write its `ws://` URL as the origin) and the scheme's default port written
/// out, so that `ws://A.example` and `http://a.example:80` compare equal.
fn normalise(scheme: &str, authority: &str) -> Option<String> {
    let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => ("http", 80),
        "https" | "wss" => ("https", 443),
        _ => return None,
    };
    let authority: axum::http::uri::Authority = authority.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let port = authority.port_u16().unwrap_or(default_port);
    Some(format!(
        "{scheme}://{}:{port}",
        authority.host().to_ascii_lowercase()
    ))
}

/// Whether `origin` names the server this request reached: the same scheme, host and port
/// as its `Host` (or HTTP/2 authority). The scheme is `http` (Trestle itself speaks no
/// TLS), or behind a trusted proxy the last `X-Forwarded-Proto` entry.
fn same_origin(origin: &[u8], uri: &Uri, headers: &HeaderMap, trust_proxy: bool) -> bool {
    let Some((scheme, authority)) = std::str::from_utf8(origin)
        .ok()
        .and_then(|o| o.split_once("://"))
    else {
        return false;
    };
    let Some(host) = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
    else {
        return false;
    };
    let forwarded = trust_proxy
        .then(|| {
            headers
                .get_all("x-forwarded-proto")
                .iter()
                .filter_map(|h| h.to_str().ok())
                .flat_map(|h| h.split(','))
                .map(str::trim)
                .rfind(|p| p.eq_ignore_ascii_case("http") || p.eq_ignore_ascii_case("https"))
        })
        .flatten();
    let own_scheme = forwarded.unwrap_or("http");
    match (normalise(scheme, authority), normalise(own_scheme, host)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// At most this much of a refused `Origin` is logged (the header is the client's to fill).
const LOGGED_ORIGIN: usize = 200;

/// Refuses Socket.IO requests (handshake, polling, websocket upgrade) from an origin
/// that is neither allowed nor the server's own, with 403 before the engine sees them.
pub async fn check(
    State((origins, state)): State<(Arc<Origins>, Arc<AppState>)>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path().starts_with("/socket.io")
        && let Some(origin) = req.headers().get(ORIGIN)
        && !origins.allows(origin.as_bytes())
        && !same_origin(
            origin.as_bytes(),
            req.uri(),
            req.headers(),
            state.config.trust_proxy,
        )
    {
        state.metrics.count(crate::metrics::Refused::Origin);
        // At info: a refused client (often a misconfigured CORS_ORIGINS) otherwise fails
        // silently, falling back to polling or not connecting at all.
        let bytes = origin.as_bytes();
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(LOGGED_ORIGIN)]);
        tracing::info!(
            origin = ?shown,
            "Socket.IO request refused: its Origin is not in CORS_ORIGINS"
        );
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

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_is_scheme_host_and_port_of_the_request() {
        let uri: Uri = "/socket.io/?EIO=4".parse().unwrap();
        let host = headers(&[("host", "Api.example.com:3001")]);
        let same = |o: &str, h: &HeaderMap, proxy: bool| same_origin(o.as_bytes(), &uri, h, proxy);
        assert!(same("http://api.example.com:3001", &host, false));
        assert!(same("ws://API.example.com:3001", &host, false));
        assert!(!same("https://api.example.com:3001", &host, false));
        assert!(!same("http://api.example.com:3002", &host, false));
        assert!(!same("http://api.example.com", &host, false));
        assert!(!same("http://evil.example.com:3001", &host, false));
        assert!(!same("http://user@api.example.com:3001", &host, false));
        assert!(!same("null", &host, false));
        let plain = headers(&[("host", "api.example.com")]);
        assert!(same("http://api.example.com:80", &plain, false));
        // Behind a TLS proxy the scheme comes from X-Forwarded-Proto, when trusted.
        let proxied = headers(&[("host", "api.example.com"), ("x-forwarded-proto", "https")]);
        assert!(same("https://api.example.com", &proxied, true));
        assert!(!same("https://api.example.com", &proxied, false));
        assert!(!same("http://api.example.com", &proxied, true));
        let h2: Uri = "http://api.example.com:3001/socket.io/".parse().unwrap();
        assert!(same_origin(
            b"http://api.example.com:3001",
            &h2,
            &HeaderMap::new(),
            false
        ));
    }
}
