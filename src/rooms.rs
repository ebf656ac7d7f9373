//! Room names and ids: a typed enum with parse and format, and their decoding from
//! payloads. Who may use a room is [`crate::access`]'s.
//!
//! A client never invents a room name: every name it sends is parsed into a [`Room`]
//! (anything else is `INVALID_ROOM`) and every name the server uses is formatted from one.
//! Socket-id rooms are not [`Room`]s, so no client can join another socket's room.
//!
//! Payload structs take `room: Room` and `taskId: Id` fields directly: their
//! `Deserialize` fails with [`InvalidRoom`] or [`InvalidId`], which
//! [`crate::handlers::Cx::payload`] answers as `INVALID_ROOM` or as `INVALID_PAYLOAD`
//! naming the field.

use std::{fmt, str::FromStr, sync::Arc};

use crate::error::{AppError, Code};

/// A user, project, task or team id: 1 to 128 characters of `[A-Za-z0-9_.@-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(Arc<str>);

impl Id {
    /// The longest id accepted.
    pub const MAX_LEN: usize = 128;

    /// Parses an id, or `None` when it is empty, too long or has other characters.
    pub fn parse(s: &str) -> Option<Id> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
        ok.then(|| Id(Arc::from(s)))
    }

    /// An id from a JSON claim or payload value: a string, or an integer sent as a number.
    pub fn from_json(v: &serde_json::Value) -> Option<Id> {
        match v {
            serde_json::Value::String(s) => Id::parse(s),
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Id::parse(&n.to_string()),
            _ => None,
        }
    }

    /// An id built by the server itself (such as `anon:<socket id>`), not checked against
    /// the id alphabet.
    pub(crate) fn from_trusted(s: &str) -> Id {
        Id(Arc::from(s))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A payload value that is not an id (see [`Id::from_json`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid id")]
pub struct InvalidId;

/// As [`Id::from_json`]. Read as any JSON value first, so that a missing field is serde's
/// own "missing field" error, as it was when ids were read as JSON values.
impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let v = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
        Id::from_json(&v).ok_or_else(|| serde::de::Error::custom(InvalidId))
    }
}

/// Every room a client may name (contract section 2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Room {
    /// `notifications:{userId}`: direct messages, mentions, published notifications.
    Notifications(Id),
    /// `contacts:{userId}`.
    Contacts(Id),
    /// `presence:{userId}`: that user's status changes.
    Presence(Id),
    /// `project:{p}`.
    Project(Id),
    /// `project:{p}:comments`.
    ProjectComments(Id),
    /// `project:{p}:activity`.
    ProjectActivity(Id),
    /// `task:{t}`.
    Task(Id),
    /// `task:{t}:comments`.
    TaskComments(Id),
    /// `task:{t}:time`.
    TaskTime(Id),
    /// `team:{m}`.
    Team(Id),
    /// `team:{m}:chat`.
    TeamChat(Id),
}

/// A room name that is not one the server builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid room name")]
pub struct InvalidRoom;

/// The contract's answer to a bad room name, wherever it is parsed.
impl From<InvalidRoom> for AppError {
    fn from(_: InvalidRoom) -> AppError {
        AppError::new(Code::InvalidRoom, "Invalid room name")
    }
}

impl FromStr for Room {
    type Err = InvalidRoom;

    fn from_str(name: &str) -> Result<Room, InvalidRoom> {
        let mut parts = name.splitn(3, ':');
        let kind = parts.next().ok_or(InvalidRoom)?;
        let id = Id::parse(parts.next().ok_or(InvalidRoom)?).ok_or(InvalidRoom)?;
        let sub = parts.next();
        Ok(match (kind, sub) {
            ("notifications", None) => Room::Notifications(id),
            ("contacts", None) => Room::Contacts(id),
            ("presence", None) => Room::Presence(id),
            ("project", None) => Room::Project(id),
            ("project", Some("comments")) => Room::ProjectComments(id),
            ("project", Some("activity")) => Room::ProjectActivity(id),
            ("task", None) => Room::Task(id),
            ("task", Some("comments")) => Room::TaskComments(id),
            ("task", Some("time")) => Room::TaskTime(id),
            ("team", None) => Room::Team(id),
            ("team", Some("chat")) => Room::TeamChat(id),
            _ => return Err(InvalidRoom),
        })
    }
}

/// A string parsed as [`FromStr`]; anything but a string is serde's own type error, as it
/// was when room names were read as strings.
impl<'de> serde::Deserialize<'de> for Room {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Room, D::Error> {
        let name = <String as serde::Deserialize>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Room::Notifications(id) => write!(f, "notifications:{id}"),
            Room::Contacts(id) => write!(f, "contacts:{id}"),
            Room::Presence(id) => write!(f, "presence:{id}"),
            Room::Project(id) => write!(f, "project:{id}"),
            Room::ProjectComments(id) => write!(f, "project:{id}:comments"),
            Room::ProjectActivity(id) => write!(f, "project:{id}:activity"),
            Room::Task(id) => write!(f, "task:{id}"),
            Room::TaskComments(id) => write!(f, "task:{id}:comments"),
            Room::TaskTime(id) => write!(f, "task:{id}:time"),
            Room::Team(id) => write!(f, "team:{id}"),
            Room::TeamChat(id) => write!(f, "team:{id}:chat"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for name in [
            "notifications:u1",
            "contacts:u.1@x",
            "presence:U-1_",
            "project:42",
            "project:42:comments",
            "project:42:activity",
            "task:t",
            "task:t:comments",
            "task:t:time",
            "team:m",
            "team:m:chat",
        ] {
            let room: Room = name.parse().unwrap();
            assert_eq!(room.to_string(), name);
        }
    }

    #[test]
    fn bad_names_are_refused() {
        let long = format!("project:{}", "a".repeat(129));
        for name in [
            "",
            "foo",
            "project",
            "project:",
            "project:a b",
            "project:a:b",
            "project:a:comments:x",
            "Project:1",
            "notifications:u:chat",
            "team:m:comments",
            "task:t:activity",
            "project:\u{0}",
            "project:ａ",
            long.as_str(),
        ] {
            assert_eq!(name.parse::<Room>(), Err(InvalidRoom), "{name:?}");
        }
        assert!(
            format!("project:{}", "a".repeat(128))
                .parse::<Room>()
                .is_ok()
        );
    }

    #[test]
    fn ids_accept_numbers_and_strings() {
        assert_eq!(Id::from_json(&serde_json::json!(7)).unwrap().as_str(), "7");
        assert_eq!(
            Id::from_json(&serde_json::json!("x@y")).unwrap().as_str(),
            "x@y"
        );
        assert!(Id::from_json(&serde_json::json!(1.5)).is_none());
        assert!(Id::from_json(&serde_json::json!(null)).is_none());
    }

    #[test]
    fn payload_fields_decode_or_say_why() {
        let room: Room = serde_json::from_value(serde_json::json!("task:7:time")).unwrap();
        assert_eq!(room, Room::TaskTime(Id::parse("7").unwrap()));
        let bad = serde_json::from_value::<Room>(serde_json::json!("task:7:nope")).unwrap_err();
        assert_eq!(bad.to_string(), InvalidRoom.to_string());
        let not_text = serde_json::from_value::<Room>(serde_json::json!(7)).unwrap_err();
        assert_ne!(not_text.to_string(), InvalidRoom.to_string());
        let id: Id = serde_json::from_value(serde_json::json!(42)).unwrap();
        assert_eq!(id.as_str(), "42");
        for v in [
            serde_json::json!(null),
            serde_json::json!("a b"),
            serde_json::json!([1]),
        ] {
            let e = serde_json::from_value::<Id>(v).unwrap_err();
            assert_eq!(e.to_string(), InvalidId.to_string());
        }
        assert_eq!(
            AppError::from(InvalidRoom).code,
            Code::InvalidRoom,
            "one answer for a bad room name"
        );
    }
}

/// Property tests: room and id parsing never panics, and formatting round-trips.
/// `PROPTEST_CASES=100000 cargo test --release prop_` runs them longer.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn id() -> impl Strategy<Value = Id> {
        "[A-Za-z0-9_.@-]{1,128}".prop_map(|s| Id::parse(&s).unwrap())
    }

    fn room() -> impl Strategy<Value = Room> {
        (0..11usize, id()).prop_map(|(k, id)| match k {
            0 => Room::Notifications(id),
            1 => Room::Contacts(id),
            2 => Room::Presence(id),
            3 => Room::Project(id),
            4 => Room::ProjectComments(id),
            5 => Room::ProjectActivity(id),
            6 => Room::Task(id),
            7 => Room::TaskComments(id),
            8 => Room::TaskTime(id),
            9 => Room::Team(id),
            _ => Room::TeamChat(id),
        })
    }

    proptest! {
        #[test]
        fn prop_any_string_parses_or_is_refused(s in any::<String>()) {
            if let Ok(room) = s.parse::<Room>() {
                // Whatever parses formats back to the same name.
                prop_assert_eq!(room.to_string(), s.clone());
            }
            let _ = Id::parse(&s);
        }

        #[test]
        fn prop_room_names_round_trip(room in room()) {
            prop_assert_eq!(room.to_string().parse::<Room>().unwrap(), room);
        }

        #[test]
        fn prop_ids_from_json_never_panic(n in any::<i64>(), f in any::<f64>(), s in ".{0,200}") {
            prop_assert!(Id::from_json(&serde_json::json!(n)).is_some());
            let _ = Id::from_json(&serde_json::json!(f));
            let _ = Id::from_json(&serde_json::json!(s));
        }
    }
}
