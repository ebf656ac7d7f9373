//! Socket.IO behaviour over real websockets against an in-process server.

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn connect_errors_use_the_contract_messages() {
    let server = TestServer::start(|_| {}).await;
    let refused = |m: &str| Err(ConnectError::Refused(m.into()));
    assert_eq!(
        Client::connect(server.addr, json!({})).await.map(|_| ()),
        refused("Authentication required")
    );
    assert_eq!(
        Client::connect(server.addr, json!({"token": "garbage"}))
            .await
            .map(|_| ()),
        refused("Authentication failed")
    );
    let expired = token(json!({"userId": "u", "exp": now() - 5}));
    assert_eq!(
        Client::connect(server.addr, json!({"token": expired}))
            .await
            .map(|_| ()),
        refused("Token expired")
    );
    // The query parameter is used when nothing comes before it; a bad auth.token is not
    // retried with the query.
    let good = token(json!({"userId": "u"}));
    assert!(
        Client::connect_with(server.addr, &format!("&token={good}"), json!({}))
            .await
            .is_ok()
    );
    assert_eq!(
        Client::connect_with(
            server.addr,
            &format!("&token={good}"),
            json!({"token": "bad"})
        )
        .await
        .map(|_| ()),
        refused("Authentication failed")
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn anonymous_users_when_auth_is_optional() {
    let server = TestServer::start(|c| c.auth_required = false).await;
    let mut anon = Client::connect(server.addr, json!({})).await.unwrap();
    let ack = anon.call("join_room", vec![json!("presence:x")]).await;
    assert_eq!(ack["code"], "FORBIDDEN");
    assert_eq!(
        Client::connect(server.addr, json!({"token": "bad"}))
            .await
            .map(|_| ()),
        Err(ConnectError::Refused("Authentication failed".into()))
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connection_caps() {
    let server = TestServer::start(|c| {
        c.max_connections = 3;
        c.max_connections_per_ip = 2;
    })
    .await;
    let a = Client::user(server.addr, json!({"userId": "a"})).await;
    let _b = Client::user(server.addr, json!({"userId": "b"})).await;
    let third = Client::connect(server.addr, json!({"token": token(json!({"userId": "c"}))})).await;
    assert_eq!(
        third.map(|_| ()),
        Err(ConnectError::Refused(
            "Too many connections from this IP".into()
        ))
    );
    a.close().await;
    // The place is given back once the first socket is gone.
    let mut ok = false;
    for _ in 0..50 {
        if Client::connect(server.addr, json!({"token": token(json!({"userId": "c"}))}))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "a freed place is reused");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn auto_joined_rooms_and_own_socket_room() {
    let server = TestServer::start(|_| {}).await;
    let mut a = Client::user(
        server.addr,
        json!({"userId": "ann", "projects": [7], "teams": ["t1"], "tasks": [9]}),
    )
    .await;
    let mut a2 = Client::user(server.addr, json!({"userId": "ann"})).await;
    for room in [
        "notifications:ann",
        "contacts:ann",
        "presence:ann",
        "project:7",
        "team:t1",
    ] {
        assert_eq!(
            api_emit(
                &server,
                json!({"rooms": [room], "event": "ping_room", "data": room})
            )
            .await,
            202
        );
        assert_eq!(
            a.event("ping_room", LONG).await,
            Some(json!(room)),
            "{room}"
        );
    }
    assert_eq!(
        api_emit(&server, json!({"rooms": ["task:9"], "event": "task_ping"})).await,
        202
    );
    assert_eq!(
        a.event("task_ping", SHORT).await,
        None,
        "tasks are not auto-joined"
    );
    assert_eq!(
        api_emit(
            &server,
            json!({"rooms": [a.sid.clone()], "event": "just_you"})
        )
        .await,
        202
    );
    assert_eq!(a.event("just_you", LONG).await, Some(json!(null)));
    assert_eq!(
        a2.event("just_you", SHORT).await,
        None,
        "another socket of the same user"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn join_and_leave_rooms() {
    let server = TestServer::start(|c| {
        c.max_room_size = 2;
        c.max_rooms_per_socket = 2;
    })
    .await;
    let mut a = Client::user(server.addr, json!({"userId": "a", "tasks": [1, 2, 3]})).await;
    let mut b = Client::user(server.addr, json!({"userId": "b", "tasks": [1]})).await;
    let mut c = Client::user(server.addr, json!({"userId": "c", "tasks": [1]})).await;
    let mut admin = Client::user(
        server.addr,
        json!({"userId": "root", "permissions": ["admin"]}),
    )
    .await;

    let ack = a.call("join_room", vec![json!("task:1")]).await;
    assert_eq!(ack, json!({"success": true, "room": "task:1", "size": 1}));
    let ack = b.call("join_room", vec![json!({"room": "task:1"})]).await;
    assert_eq!(ack, json!({"success": true, "room": "task:1", "size": 2}));
    assert_eq!(
        a.event("user_joined", LONG).await,
        Some(json!({"userId": "b", "roomId": "task:1"}))
    );
    assert_eq!(
        b.event("user_joined", SHORT).await,
        None,
        "the joiner is not told"
    );
    let full = c.call("join_room", vec![json!("task:1")]).await;
    assert_eq!(full["code"], "ROOM_FULL");
    // Joining again succeeds without an event.
    assert_eq!(
        b.call("join_room", vec![json!("task:1")]).await["success"],
        true
    );
    assert_eq!(a.event("user_joined", SHORT).await, None);

    assert_eq!(
        a.call("join_room", vec![json!("task:2")]).await["success"],
        true
    );
    let third = a.call("join_room", vec![json!("task:3")]).await;
    assert_eq!(
        (third["success"].clone(), third["code"].clone()),
        (json!(false), json!("FORBIDDEN"))
    );

    for (payload, code) in [
        (json!("task:4"), "FORBIDDEN"),
        (json!("notifications:b"), "FORBIDDEN"),
        (json!("nope"), "INVALID_ROOM"),
        (json!("Task:1"), "INVALID_ROOM"),
        (json!(a.sid.clone()), "INVALID_ROOM"),
        (json!(5), "INVALID_PAYLOAD"),
        (json!({}), "INVALID_PAYLOAD"),
    ] {
        let ack = c.call("join_room", vec![payload.clone()]).await;
        assert_eq!(ack["code"], code, "{payload}");
        assert!(ack["error"].is_string());
        assert_eq!(ack["success"], false);
    }
    assert_eq!(
        admin.call("join_room", vec![json!("team:any")]).await["success"],
        true
    );
    assert_eq!(
        admin.call("join_room", vec![json!(b.sid.clone())]).await["code"],
        "INVALID_ROOM"
    );

    assert_eq!(
        b.call("leave_room", vec![json!("task:1")]).await,
        json!({"success": true, "room": "task:1"})
    );
    assert_eq!(
        a.event("user_left", LONG).await,
        Some(json!({"userId": "b", "roomId": "task:1"}))
    );
    assert_eq!(
        b.call("leave_room", vec![json!("task:1")]).await["success"],
        true
    );
    // The place b left is free again; c's disconnect is announced too.
    assert_eq!(
        c.call("join_room", vec![json!("task:1")]).await["success"],
        true
    );
    assert_eq!(
        a.event("user_joined", LONG).await,
        Some(json!({"userId": "c", "roomId": "task:1"}))
    );
    c.close().await;
    assert_eq!(
        a.event("user_left", LONG).await,
        Some(json!({"userId": "c", "roomId": "task:1"}))
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn events_without_a_callback_fail_with_an_error_event() {
    let server = TestServer::start(|_| {}).await;
    let mut a = Client::user(server.addr, json!({"userId": "a"})).await;
    a.emit("join_room", vec![json!("bad name")]).await;
    let err = a.event("error", LONG).await.unwrap();
    assert_eq!(
        err,
        json!({"success": false, "error": "Invalid room name", "code": "INVALID_ROOM"})
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn broadcast_room_needs_permission_and_membership() {
    let server = TestServer::start(|_| {}).await;
    let mut a = Client::user(
        server.addr,
        json!({"userId": "a", "projects": [1], "permissions": ["room_broadcast"]}),
    )
    .await;
    let mut b = Client::user(server.addr, json!({"userId": "b", "projects": [1]})).await;
    let ack = a
        .call(
            "broadcast_room",
            vec![json!("project:1"), json!("drawing_moved"), json!({"x": 1})],
        )
        .await;
    assert_eq!(ack, json!({"success": true}));
    assert_eq!(b.event("drawing_moved", LONG).await, Some(json!({"x": 1})));
    assert_eq!(
        a.event("drawing_moved", SHORT).await,
        None,
        "the sender is excluded"
    );
    let ack = a
        .call(
            "broadcast_room",
            vec![json!({"room": "project:1", "event": "e2", "data": 5})],
        )
        .await;
    assert_eq!(ack["success"], true);
    assert_eq!(b.event("e2", LONG).await, Some(json!(5)));
    assert_eq!(
        b.call(
            "broadcast_room",
            vec![json!("project:1"), json!("x"), json!(1)]
        )
        .await["code"],
        "FORBIDDEN"
    );
    assert_eq!(
        a.call(
            "broadcast_room",
            vec![json!("project:2"), json!("x"), json!(1)]
        )
        .await["code"],
        "FORBIDDEN"
    );
    for reserved in ["disconnect", "user_joined", "server_shutdown", "connect"] {
        let ack = a
            .call(
                "broadcast_room",
                vec![json!("project:1"), json!(reserved), json!(1)],
            )
            .await;
        assert_eq!(ack["code"], "INVALID_PAYLOAD", "{reserved}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn rate_limit_refuses_then_disconnects() {
    let server = TestServer::start(|c| {
        c.rate_limit_per_minute = 3;
        c.rate_limit_disconnect_after = 5;
    })
    .await;
    let mut a = Client::user(server.addr, json!({"userId": "a", "projects": [1]})).await;
    let mut bystander = Client::user(server.addr, json!({"userId": "b", "projects": [1]})).await;
    for _ in 0..3 {
        assert_eq!(
            a.call("join_room", vec![json!("project:1")]).await["success"],
            true
        );
    }
    // Unknown event names count like any other (contract section 10): the budget is spent.
    assert_eq!(
        a.call("no_such_event", vec![]).await["code"],
        "RATE_LIMITED"
    );
    assert_eq!(
        a.call("join_room", vec![json!("project:1")]).await["code"],
        "RATE_LIMITED"
    );
    // Three more refusals make five in a row: the flooder is disconnected.
    for _ in 0..3 {
        a.emit("join_room", vec![json!("project:1")]).await;
    }
    assert!(
        a.packet("41", LONG).await,
        "a Socket.IO disconnect for the flooder"
    );
    assert_eq!(
        bystander.call("join_room", vec![json!("project:1")]).await["success"],
        true
    );
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("trestle_rate_limited_total 5"),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_messages_close_only_the_sender() {
    let server = TestServer::start(|c| c.max_message_bytes = 10_000).await;
    let mut big = Client::user(server.addr, json!({"userId": "a"})).await;
    let mut bystander = Client::user(server.addr, json!({"userId": "b"})).await;
    big.send_raw(format!("42[\"join_room\",\"{}\"]", "x".repeat(20_000)))
        .await;
    big.until_closed(LONG).await;
    assert_eq!(
        bystander.call("join_room", vec![json!("presence:a")]).await["success"],
        true
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_subscription() {
    let server = TestServer::start(|c| c.metrics_interval_ms = 200).await;
    let mut plain = Client::user(server.addr, json!({"userId": "p"})).await;
    assert_eq!(
        plain.call("subscribe_metrics", vec![]).await["code"],
        "FORBIDDEN"
    );
    let mut ops = Client::user(
        server.addr,
        json!({"userId": "o", "permissions": ["metrics"]}),
    )
    .await;
    assert_eq!(ops.call("subscribe_metrics", vec![]).await["success"], true);
    let first = ops
        .event("metrics_update", SHORT)
        .await
        .expect("first update at once");
    assert_eq!(first["connections"], 2);
    assert!(
        first["rooms"].is_u64()
            && first["eventsPerSecond"].is_number()
            && first["uptimeSeconds"].is_u64()
    );
    assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(
        ops.event("metrics_update", LONG).await.is_some(),
        "periodic update"
    );
    assert_eq!(
        ops.call("unsubscribe_metrics", vec![]).await["success"],
        true
    );
    ops.event("metrics_update", SHORT).await; // one may already be in flight
    assert_eq!(
        ops.event("metrics_update", std::time::Duration::from_millis(600))
            .await,
        None
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_notifies_then_closes_the_engine_connection() {
    let mut server = TestServer::start(|c| c.shutdown_drain_ms = 500).await;
    let mut a = Client::user(server.addr, json!({"userId": "a"})).await;
    server.begin_shutdown();
    let notice = a
        .event("server_shutdown", LONG)
        .await
        .expect("server_shutdown");
    assert_eq!(
        notice,
        json!({"message": "Server is shutting down", "reconnectDelay": 5000})
    );
    let ready = reqwest::get(server.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    // A new engine.io session is refused at its handshake, as engine.io's `allowRequest`
    // refuses one: the client's transport fails and it retries, through the load balancer,
    // on another instance.
    let late = reqwest::get(server.url("/socket.io/?EIO=4&transport=polling"))
        .await
        .unwrap();
    assert_eq!(late.status(), 403);
    assert_eq!(
        late.json::<Value>().await.unwrap(),
        json!({"code": 4, "message": "Server at capacity"})
    );
    let seen = a.until_closed(LONG).await;
    assert!(
        !seen.iter().any(|m| m == "41"),
        "an engine close, not a Socket.IO disconnect: {seen:?}"
    );
    assert!(
        seen.iter().any(|m| m == "1"),
        "engine close packet: {seen:?}"
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn per_ip_cap_reads_the_proxy_address_only_when_trusted() {
    let claims = || json!({"token": token(json!({"userId": "p"}))});
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let refused = Err(ConnectError::Refused(
        "Too many connections from this IP".into(),
    ));

    let trusted = TestServer::start(|c| {
        c.trust_proxy = true;
        c.max_connections_per_ip = 1;
    })
    .await;
    // The last entry is the one the proxy added; a forged first entry does not matter.
    let _a = Client::connect_full(trusted.addr, "", &from("203.0.113.9, 10.0.0.1"), claims())
        .await
        .unwrap();
    let _b = Client::connect_full(trusted.addr, "", &from("10.0.0.2"), claims())
        .await
        .unwrap();
    let again =
        Client::connect_full(trusted.addr, "", &from("203.0.113.7, 10.0.0.1"), claims()).await;
    assert_eq!(again.map(|_| ()), refused.clone());
    trusted.stop().await.unwrap();

    let untrusted = TestServer::start(|c| c.max_connections_per_ip = 1).await;
    let _c = Client::connect_full(untrusted.addr, "", &from("10.0.0.1"), claims())
        .await
        .unwrap();
    let other = Client::connect_full(untrusted.addr, "", &from("10.0.0.2"), claims()).await;
    assert_eq!(
        other.map(|_| ()),
        refused,
        "the header is ignored without TRUST_PROXY"
    );
    untrusted.stop().await.unwrap();
}
