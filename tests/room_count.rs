//! `join_room`'s room size across instances (issue 17): each instance answers the Redis
//! adapter's count request with a number; no instance's sockets are fetched to count them.
//! A stand-in instance on the adapter's channels (a plain Redis client of the test) sees
//! the requests on the wire and answers with the number it chooses, or not at all, as a
//! crashed or hung instance does not.

mod common;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/redis.rs"]
mod redis;

use std::sync::{Arc, Mutex};

use common::*;
use fred::{
    clients::SubscriberClient,
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    prelude::{Builder, Config},
};
use serde_json::json;
use socketioxide_core::{
    Uid,
    adapter::remote_packet::{RequestIn, RequestTypeIn, Response, ResponseType},
};

/// The adapter's request channel for the main namespace, with no `REDIS_PREFIX`.
const REQUESTS: &str = "socket.io-request#/#";

/// A stand-in instance: records the type of every request on the adapter's channel and,
/// when `answer` is set, answers count requests with that number.
async fn stand_in(redis: &redis::Redis, answer: Option<u64>) -> Arc<Mutex<Vec<u8>>> {
    let client: SubscriberClient = Builder::from_config(Config::from_url(&redis.url).unwrap())
        .build_subscriber_client()
        .unwrap();
    client.init().await.unwrap();
    let publisher = redis.client().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut messages = client.message_rx();
    client.ssubscribe(REQUESTS).await.unwrap();
    let uid = Uid::new();
    let record = seen.clone();
    tokio::spawn(async move {
        let _keep = client;
        while let Ok(msg) = messages.recv().await {
            let Some(bytes) = msg.value.as_bytes() else {
                continue;
            };
            // The request type is the third field of the request array.
            let raw = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
            let kind = raw[2].as_u64().unwrap() as u8;
            record.lock().unwrap().push(kind);
            let (Some(n), Ok(req)) = (answer, rmp_serde::from_slice::<RequestIn>(bytes)) else {
                continue;
            };
            if !matches!(req.r#type, RequestTypeIn::CountSockets) {
                continue;
            }
            let res = Response::<()> {
                node_id: uid,
                r#type: ResponseType::SocketCount(n),
            };
            let body = rmp_serde::to_vec(&(req.id, res)).unwrap();
            let chan = format!("socket.io-response#/#{}#", req.node_id);
            let _: i64 = publisher.spublish(chan, body).await.unwrap();
        }
    });
    seen
}

/// An instance on `redis`, with the shared database instances need beside it.
async fn instance(redis: &redis::Redis, db: &pg::TempDatabase, max_room_size: usize) -> TestServer {
    let (url, db) = (redis.url.clone(), db.url.clone());
    TestServer::start(move |c| {
        c.redis_url = Some(url);
        c.database_url = Some(db);
        c.max_room_size = max_room_size;
    })
    .await
}

#[tokio::test]
async fn sizes_are_counted_by_each_instance_not_fetched() {
    let redis = redis::start().await;
    let db = pg::TempDatabase::create().await;
    let seen = stand_in(&redis, None).await;
    let a = instance(&redis, &db, 0).await;
    let b = instance(&redis, &db, 0).await;
    let claims = |u: &str| json!({"userId": u, "tasks": [1]});
    let mut on_a = Client::user(a.addr, claims("a")).await;
    let mut on_b = Client::user(b.addr, claims("b")).await;
    let mut also_b = Client::user(b.addr, claims("c")).await;

    let size = |ack: serde_json::Value| ack["size"].clone();
    assert_eq!(size(on_a.call("join_room", vec![json!("task:1")]).await), 1);
    assert_eq!(size(on_b.call("join_room", vec![json!("task:1")]).await), 2);
    assert_eq!(
        size(also_b.call("join_room", vec![json!("task:1")]).await),
        3
    );
    // Already in the room: the size path.
    assert_eq!(size(on_a.call("join_room", vec![json!("task:1")]).await), 3);
    also_b.close().await;
    // Gone from the room on B: B's number goes down with it.
    let mut size_now = 0;
    for _ in 0..50 {
        size_now = size(on_a.call("join_room", vec![json!("task:1")]).await)
            .as_u64()
            .unwrap();
        if size_now == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(size_now, 2);

    let kinds = seen.lock().unwrap().clone();
    assert!(
        kinds.contains(&7),
        "count requests (7) on the wire: {kinds:?}"
    );
    assert!(
        !kinds.contains(&6),
        "no fetch_sockets request (6) to count a room: {kinds:?}"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Another instance's number counts toward the cluster-wide cap; an instance that does not
/// answer (crashed with its connection still open, hung) is left out once the request's
/// deadline passes, and the join is answered all the same.
#[tokio::test]
async fn the_cap_adds_the_numbers_of_the_instances_that_answer() {
    let redis = redis::start().await;
    stand_in(&redis, Some(5)).await;
    stand_in(&redis, None).await;
    let db = pg::TempDatabase::create().await;
    let a = instance(&redis, &db, 7).await;
    let claims = |u: &str| json!({"userId": u, "tasks": [1]});
    let mut first = Client::user(a.addr, claims("a")).await;
    let mut second = Client::user(a.addr, claims("b")).await;
    let mut third = Client::user(a.addr, claims("c")).await;
    assert_eq!(
        first.call("join_room", vec![json!("task:1")]).await,
        json!({"success": true, "room": "task:1", "size": 6})
    );
    assert_eq!(
        second.call("join_room", vec![json!("task:1")]).await,
        json!({"success": true, "room": "task:1", "size": 7})
    );
    let full = third.call("join_room", vec![json!("task:1")]).await;
    assert_eq!(full["code"], "ROOM_FULL");
    a.stop().await.unwrap();
}
