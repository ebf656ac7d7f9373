//! Who a connecting client is: token lookup, JWT verification, claims.
//!
//! The token is read from the first source present, in the contract's order: `auth.token`
//! in the CONNECT packet, an `Authorization: Bearer` header, a `token` query parameter.
//! A bad token there is not retried with the other sources. Failures map to the
//! contract's exact `connect_error` messages. Tokens are never logged.
//!
//! Here: the [`User`] a token's claims give, and the failures. `token.rs`: where the
//! token is found ([`find_token`]). `jwt.rs`: its verification ([`Verifier`]).

mod jwt;
mod token;

use std::{fmt, sync::Arc};

use serde_json::Value;

use crate::{metrics::LabelValues, rooms::Id};

pub use self::{
    jwt::{AuthConfigError, MAX_TOKEN_BYTES, Verifier},
    token::find_token,
};

/// Why a connection was refused by authentication; `Display` is the `connect_error` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token and auth is required.
    Required,
    /// Bad signature, malformed, wrong algorithm, issuer or audience, not yet valid, or no
    /// usable user id.
    Failed,
    /// The token's `exp` has passed.
    Expired,
}

impl AuthError {
    /// A short label, for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Required => "missing",
            AuthError::Failed => "invalid",
            AuthError::Expired => "expired",
        }
    }
}

impl LabelValues for AuthError {
    const COUNTER: &'static str = "trestle_auth_failures_total";
    const LABEL: &'static str = "reason";
    const ALL: &'static [Self] = &[AuthError::Required, AuthError::Failed, AuthError::Expired];
    fn label(self) -> &'static str {
        self.reason()
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::Required => "Authentication required",
            AuthError::Failed => "Authentication failed",
            AuthError::Expired => "Token expired",
        })
    }
}

impl std::error::Error for AuthError {}

/// A sorted, deduplicated set of ids: small and fast for the handful a token carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSet(Box<[Id]>);

impl IdSet {
    /// Builds the set from a claim: an array of ids (strings or integers); anything else
    /// in it is ignored, as the Node backend did.
    fn from_claim(v: Option<&Value>) -> Self {
        let mut ids: Vec<Id> = match v {
            Some(Value::Array(items)) => items.iter().filter_map(Id::from_json).collect(),
            _ => Vec::new(),
        };
        ids.sort();
        ids.dedup();
        IdSet(ids.into_boxed_slice())
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: &Id) -> bool {
        self.0.binary_search(id).is_ok()
    }

    /// The ids, in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &Id> {
        self.0.iter()
    }
}

/// The authenticated (or anonymous) user behind a socket.
#[derive(Debug, Clone)]
pub struct User {
    /// `userId` (or `sub`) of the token, or `anon:<socket id>`.
    pub id: Id,
    /// Display name, falling back to the id.
    pub name: Arc<str>,
    /// True for a token-less client when `AUTH_REQUIRED=false`.
    pub anonymous: bool,
    /// Holds the `admin` permission.
    pub admin: bool,
    /// The `permissions` claim.
    pub permissions: Box<[Box<str>]>,
    /// The `projects` claim.
    pub projects: IdSet,
    /// The `teams` claim.
    pub teams: IdSet,
    /// The `tasks` claim.
    pub tasks: IdSet,
}

impl User {
    /// Whether the user holds `permission` (or is `admin`, which holds every permission).
    pub fn can(&self, permission: &str) -> bool {
        self.admin || self.permissions.iter().any(|p| &**p == permission)
    }

    /// The anonymous user for a socket, with no memberships.
    pub fn anonymous(socket_id: &str) -> User {
        // `:` is outside the id alphabet, so build the id directly: it can never collide
        // with a real user's id nor parse as a room.
        let id = Id::from_trusted(&format!("anon:{socket_id}"));
        User {
            name: Arc::from(id.as_str()),
            id,
            anonymous: true,
            admin: false,
            permissions: Box::new([]),
            projects: IdSet::default(),
            teams: IdSet::default(),
            tasks: IdSet::default(),
        }
    }

    /// Reads a user from verified claims; `None` without a usable user id.
    pub fn from_claims(claims: &Value) -> Option<User> {
        let id = Id::from_json(claims.get("userId").or_else(|| claims.get("sub"))?)?;
        let name = match claims.get("name") {
            Some(Value::String(s)) if !s.is_empty() => Arc::from(s.as_str()),
            _ => Arc::from(id.as_str()),
        };
        let permissions: Box<[Box<str>]> = match claims.get("permissions") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(Box::from)
                .collect(),
            _ => Box::new([]),
        };
        Some(User {
            admin: permissions.iter().any(|p| &**p == "admin"),
            id,
            name,
            anonymous: false,
            permissions,
            projects: IdSet::from_claim(claims.get("projects")),
            teams: IdSet::from_claim(claims.get("teams")),
            tasks: IdSet::from_claim(claims.get("tasks")),
        })
    }
}
