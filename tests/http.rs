//! The HTTP surface: health, readiness, metrics, the publish API.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn health_ready_metrics_and_404() {
    let server = TestServer::start(|_| {}).await;
    assert_eq!(
        reqwest::get(server.url("/health")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(server.url("/ready")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(server.url("/nope")).await.unwrap().status(),
        404
    );
    let _ = Client::connect(server.addr, json!({"token": "bad"})).await;
    let mut a = Client::user(server.addr, json!({"userId": "a"})).await;
    a.call("join_room", vec![json!("presence:b")]).await;
    let res = reqwest::get(server.url("/metrics")).await.unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    for needle in [
        "trestle_connected_sockets 1",
        "trestle_connections_total 1",
        "trestle_auth_failures_total{reason=\"invalid\"} 1",
        "trestle_events_received_total{event=\"join_room\"} 1",
        "trestle_rate_limited_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    a.close().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn api_emit_checks_key_and_body() {
    let server = TestServer::start(|_| {}).await;
    let http = reqwest::Client::new();
    let post = |key: Option<&str>, body: String| {
        let mut req = http
            .post(server.url("/api/emit"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    let ok = json!({"rooms": ["project:1"], "event": "e", "data": 1}).to_string();
    assert_eq!(post(None, ok.clone()).await.unwrap().status(), 401);
    assert_eq!(post(Some("wrong"), ok.clone()).await.unwrap().status(), 401);
    assert_eq!(post(Some(API_KEY), "{".into()).await.unwrap().status(), 400);
    for bad in [
        json!({"event": "e"}),
        json!({"rooms": [], "event": "e"}),
        json!({"rooms": ["nope"], "event": "e"}),
        json!({"rooms": ["project:1"], "event": ""}),
        json!({"rooms": ["project:1"], "event": "connect"}),
        json!({"rooms": ["project:1"], "event": "e", "except": ["bad room"]}),
    ] {
        assert_eq!(
            post(Some(API_KEY), bad.to_string()).await.unwrap().status(),
            400,
            "{bad}"
        );
    }
    let huge = format!(
        "{{\"rooms\":[\"project:1\"],\"event\":\"e\",\"data\":\"{}\"}}",
        "x".repeat(1_100_000)
    );
    assert_eq!(post(Some(API_KEY), huge).await.unwrap().status(), 413);
    let res = post(Some(API_KEY), ok).await.unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        json!({"success": true})
    );

    // except: a socket in an excepted room does not get the event.
    let mut a = Client::user(server.addr, json!({"userId": "a", "projects": [1]})).await;
    let mut b = Client::user(server.addr, json!({"userId": "b", "projects": [1]})).await;
    let body = json!({"rooms": ["project:1"], "event": "news", "data": {"n": 1}, "except": ["notifications:b"]});
    assert_eq!(api_emit(&server, body).await, 202);
    assert_eq!(a.event("news", LONG).await, Some(json!({"n": 1})));
    assert_eq!(b.event("news", SHORT).await, None);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn api_emit_without_a_configured_key_refuses_everything() {
    let server = TestServer::start(|c| c.api_key = None).await;
    let res = reqwest::Client::new()
        .post(server.url("/api/emit"))
        .bearer_auth("anything")
        .json(&json!({"rooms": ["project:1"], "event": "e"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn several_instances_on_a_sqlite_file_are_refused() {
    let mut cfg = trestle::Config::for_tests(SECRET);
    cfg.redis_url = Some("redis://127.0.0.1:1".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = trestle::serve(listener, cfg, std::future::pending())
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("SQLite") && msg.contains("DATABASE_URL=postgres"),
        "{msg}"
    );
}

#[tokio::test]
async fn ready_checks_the_database() {
    let server = TestServer::start(|_| {}).await;
    let res = reqwest::get(server.url("/ready")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "ready"})
    );
    server.stop().await.unwrap();
}
