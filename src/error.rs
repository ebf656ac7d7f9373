//! The one error type handlers return, and how it reaches the client.
//!
//! A handler fails with an [`AppError`]; the dispatcher turns it into the contract's
//! `{ success: false, error, code }` shape once. Internal errors are logged with their
//! context and reach the client only as `INTERNAL`.

use serde::Serialize;

/// The contract's ack codes (section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    /// The payload does not have the expected shape.
    InvalidPayload,
    /// The room name is not one the server builds.
    InvalidRoom,
    /// The user may not do this.
    Forbidden,
    /// The thing named does not exist.
    NotFound,
    /// The room holds `MAX_ROOM_SIZE` sockets already.
    RoomFull,
    /// The socket sends events faster than its limit.
    RateLimited,
    /// A text or body over its size limit.
    TooLarge,
    /// The request conflicts with the current state.
    Conflict,
    /// Something failed on the server side; details are only in the log.
    Internal,
}

impl Code {
    /// Every code as the client sees it.
    pub const ALL_STR: &'static [&'static str] = &[
        "INVALID_PAYLOAD",
        "INVALID_ROOM",
        "FORBIDDEN",
        "NOT_FOUND",
        "ROOM_FULL",
        "RATE_LIMITED",
        "TOO_LARGE",
        "CONFLICT",
        "INTERNAL",
    ];

    /// The code as the client sees it, also used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidPayload => "INVALID_PAYLOAD",
            Code::InvalidRoom => "INVALID_ROOM",
            Code::Forbidden => "FORBIDDEN",
            Code::NotFound => "NOT_FOUND",
            Code::RoomFull => "ROOM_FULL",
            Code::RateLimited => "RATE_LIMITED",
            Code::TooLarge => "TOO_LARGE",
            Code::Conflict => "CONFLICT",
            Code::Internal => "INTERNAL",
        }
    }
}

/// A failed client request: a code and a human message safe to show the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct AppError {
    /// The machine-readable code.
    pub code: Code,
    /// The human message sent as `error`.
    pub message: String,
}

impl AppError {
    /// An error with the given code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `INVALID_PAYLOAD` with a message naming what is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidPayload, message)
    }

    /// `FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    /// `INTERNAL`, after logging the real cause with its context.
    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "{context}");
        Self::new(Code::Internal, "Internal error")
    }
}

/// The failure body of the contract: `{ success: false, error, code }`.
#[derive(Debug, Serialize)]
pub struct Failure<'a> {
    success: bool,
    error: &'a str,
    code: Code,
}

impl<'a> From<&'a AppError> for Failure<'a> {
    fn from(e: &'a AppError) -> Self {
        Failure {
            success: false,
            error: &e.message,
            code: e.code,
        }
    }
}
