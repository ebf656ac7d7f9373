//! The one error type handlers return, and how it reaches the client.
//!
//! A handler fails with an [`AppError`]; the dispatcher turns it into the contract's
//! `{ success: false, error, code }` shape once. A failure of the server itself comes in
//! as an `anyhow::Error` (`?` after `.context("what was being done")`): the client sees
//! only `INTERNAL`, and the whole chain of causes is logged once, where the answer is
//! sent (`connection::reply`), so no call site logs and none loses the inner causes.

use std::sync::Arc;

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
    /// Every code.
    pub const ALL: &'static [Code] = &[
        Code::InvalidPayload,
        Code::InvalidRoom,
        Code::Forbidden,
        Code::NotFound,
        Code::RoomFull,
        Code::RateLimited,
        Code::TooLarge,
        Code::Conflict,
        Code::Internal,
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
    /// For `INTERNAL`: what failed, with its context, for the log only.
    cause: Option<Arc<anyhow::Error>>,
}

impl AppError {
    /// An error with the given code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            cause: None,
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

    /// What failed on the server, with every context it went through; `None` for a
    /// refusal of the request itself.
    pub fn cause(&self) -> Option<&anyhow::Error> {
        self.cause.as_deref()
    }
}

/// A failure of the server: `INTERNAL` for the client, the cause kept for the log.
impl From<anyhow::Error> for AppError {
    fn from(cause: anyhow::Error) -> Self {
        Self {
            cause: Some(Arc::new(cause)),
            ..Self::new(Code::Internal, "Internal error")
        }
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

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn an_internal_error_keeps_its_whole_chain_and_shows_the_client_nothing_of_it() {
        let inner: anyhow::Result<()> = Err(anyhow::anyhow!("connection refused"));
        let e: AppError = inner
            .context("reading a comment")
            .context("editing a comment")
            .unwrap_err()
            .into();
        assert_eq!(e.code, Code::Internal);
        assert_eq!(e.message, "Internal error");
        let logged = format!("{:#}", e.cause().expect("a cause"));
        assert_eq!(
            logged,
            "editing a comment: reading a comment: connection refused"
        );
        let body = serde_json::to_value(Failure::from(&e)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"success": false, "error": "Internal error", "code": "INTERNAL"})
        );
    }

    #[test]
    fn a_refusal_has_no_cause() {
        assert!(AppError::forbidden("no").cause().is_none());
    }
}
