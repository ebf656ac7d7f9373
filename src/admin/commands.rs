//! The dashboard's commands, as admin-ui's server takes them, for the sockets of every
//! instance (the adapter's cluster-wide operators):
//!
//! - `emit(nsp, filter, event, ...args)`: `event` with `args` to the namespace's sockets;
//! - `join(nsp, room, filter)` and `leave(nsp, room, filter)`: sockets join or leave `room`;
//! - `_disconnect(nsp, close, filter)`: sockets are disconnected.
//!
//! `filter` (a room or socket id, or a list of them; absent or `null`: every socket)
//! chooses the sockets. A command with arguments of the wrong kind, or naming a namespace
//! that does not exist, is ignored with a log line.
//!
//! Rooms joined or left this way are the adapter's only: Trestle's own record of the
//! rooms a socket joined with `join_room` (which `user_left` is announced for on
//! disconnect) does not change.

use std::collections::HashSet;

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{SeqAccess, Visitor},
    ser::SerializeTuple,
};
use serde_json::{Value as Json, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{Data, SocketRef},
    operators::BroadcastOperators,
};

use super::NAMESPACE;

/// A command's arguments, however many were sent (socketioxide hands a handler every
/// argument only for a tuple type; this one takes any number).
pub struct Args(pub Vec<Json>);

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Args;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the command's arguments")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Args, S::Error> {
                let mut args = Vec::new();
                while let Some(arg) = seq.next_element()? {
                    args.push(arg);
                }
                Ok(Args(args))
            }
        }
        d.deserialize_tuple(usize::MAX, Each)
    }
}

/// Values sent as separate arguments of one event (a `Vec` would be one array argument).
pub struct Spread<'a>(pub &'a [Json]);

impl Serialize for Spread<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for v in self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

/// Registers the commands on a dashboard's socket; `follow`: its dashboards are told of
/// the room changes they make (`ADMIN_UI_MODE=development`).
pub fn register<A: Adapter>(socket: &SocketRef<A>, io: &SocketIo<A>, follow: bool) {
    let on = |event: &'static str, run: fn(SocketIo<A>, Vec<Json>, bool) -> Command| {
        let io = io.clone();
        socket.on(event, move |Data(Args(args)): Data<Args>| {
            let io = io.clone();
            async move {
                if let Err(why) = run(io, args, follow).await {
                    tracing::warn!(command = event, why, "admin dashboard command ignored");
                }
            }
        });
    };
    on("emit", |io, args, _| Box::pin(emit(io, args)));
    on("join", |io, args, follow| {
        Box::pin(rooms(io, args, follow, Change::Join))
    });
    on("leave", |io, args, follow| {
        Box::pin(rooms(io, args, follow, Change::Leave))
    });
    on("_disconnect", |io, args, _| Box::pin(disconnect(io, args)));
}

type Command = futures_util::future::BoxFuture<'static, Result<(), &'static str>>;

/// The sockets a filter chooses: `None` for every socket.
fn filter(arg: Option<&Json>) -> Result<Option<Vec<String>>, &'static str> {
    match arg {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Json::Array(a)) => a
            .iter()
            .map(|r| r.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or("a filter lists rooms"),
        Some(_) => Err("a filter is a room or a list of rooms"),
    }
}

fn namespace<A: Adapter>(
    io: &SocketIo<A>,
    arg: Option<&Json>,
) -> Result<(String, BroadcastOperators<A>), &'static str> {
    let nsp = arg.and_then(Json::as_str).ok_or("no namespace")?;
    let op = io.of(nsp).ok_or("no such namespace")?;
    Ok((nsp.to_owned(), op))
}

fn within<A: Adapter>(
    op: BroadcastOperators<A>,
    rooms: Option<Vec<String>>,
) -> BroadcastOperators<A> {
    match rooms {
        Some(rooms) => op.within(rooms),
        None => op,
    }
}

async fn emit<A: Adapter>(io: SocketIo<A>, args: Vec<Json>) -> Result<(), &'static str> {
    let (_, op) = namespace(&io, args.first())?;
    let rooms = filter(args.get(1))?;
    let event = args.get(2).and_then(Json::as_str).ok_or("no event name")?;
    within(op, rooms)
        .emit(event, &Spread(args.get(3..).unwrap_or_default()))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "admin dashboard emit failed");
            "emit failed"
        })
}

#[derive(Clone, Copy, PartialEq)]
enum Change {
    Join,
    Leave,
}

async fn rooms<A: Adapter>(
    io: SocketIo<A>,
    args: Vec<Json>,
    follow: bool,
    change: Change,
) -> Result<(), &'static str> {
    let (nsp, op) = namespace(&io, args.first())?;
    let room = args
        .get(1)
        .and_then(Json::as_str)
        .ok_or("no room")?
        .to_owned();
    let rooms = filter(args.get(2))?;
    // Who changes, found before the change: the chosen sockets not yet in the room (join)
    // or in it (leave); the instances that hold them do not report this change themselves.
    let changing = if follow {
        let again = || io.of(&nsp).ok_or("no such namespace");
        let chosen = ids(within(again()?, rooms.clone())).await;
        let inside = ids(again()?.within(room.clone())).await;
        match change {
            Change::Join => chosen.difference(&inside).cloned().collect(),
            Change::Leave => chosen.intersection(&inside).cloned().collect(),
        }
    } else {
        Vec::new()
    };
    let (event, done) = match change {
        Change::Join => ("room_joined", within(op, rooms).join(room.clone()).await),
        Change::Leave => ("room_left", within(op, rooms).leave(room.clone()).await),
    };
    done.map_err(|e| {
        tracing::warn!(error = %e, "admin dashboard room change failed");
        "room change failed"
    })?;
    let now = crate::time::iso_now();
    for id in changing {
        let Some(admin) = io.of(NAMESPACE) else { break };
        let args = [json!(nsp), json!(room), json!(id), json!(now)];
        if let Err(e) = admin.emit(event, &Spread(&args)).await {
            tracing::warn!(error = %e, "admin dashboard: could not relay a room change");
        }
    }
    Ok(())
}

/// The ids of the sockets `op` chooses, on every instance.
async fn ids<A: Adapter>(op: BroadcastOperators<A>) -> HashSet<String> {
    match op.fetch_sockets().await {
        Ok(sockets) => sockets.iter().map(|s| s.data().id.to_string()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "admin dashboard: could not list sockets");
            HashSet::new()
        }
    }
}

async fn disconnect<A: Adapter>(io: SocketIo<A>, args: Vec<Json>) -> Result<(), &'static str> {
    let (_, op) = namespace(&io, args.first())?;
    // `close` (whether the client's whole connection goes too) is not taken: the adapter
    // only disconnects sockets, which for Trestle's one namespace is the same.
    let rooms = filter(args.get(2))?;
    within(op, rooms).disconnect().await.map_err(|e| {
        tracing::warn!(error = %e, "admin dashboard disconnect failed");
        "disconnect failed"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_rooms_lists_or_nothing() {
        assert_eq!(filter(None), Ok(None));
        assert_eq!(filter(Some(&Json::Null)), Ok(None));
        assert_eq!(filter(Some(&json!("r"))), Ok(Some(vec!["r".into()])));
        assert_eq!(
            filter(Some(&json!(["a", "b"]))),
            Ok(Some(vec!["a".into(), "b".into()]))
        );
        assert!(filter(Some(&json!(["a", 1]))).is_err());
        assert!(filter(Some(&json!({ "room": "a" }))).is_err());
        assert!(filter(Some(&json!(true))).is_err());
    }

    #[test]
    fn spread_arguments_are_a_tuple_and_args_take_any_count() {
        assert!(socketioxide_core::parser::is_ser_tuple(&Spread(&[json!(
            1
        )])));
        assert!(socketioxide_core::parser::is_de_tuple::<Args>());
        let Args(args) = serde_json::from_str(r#"["/", null, "ev", {"a":1}, 2]"#).unwrap();
        assert_eq!(args.len(), 5);
    }
}
