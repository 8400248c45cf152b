//! Kinds of failure every layer can report, so front ends map them to their
//! own codes (the Docker API to HTTP statuses) without reading messages.

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object does not exist (404).
    NotFound,
    /// A name clash, or a state that forbids the operation (409).
    Conflict,
    /// The request is invalid (400).
    Invalid,
    /// The container is not running (409).
    NotRunning,
    /// The engine or this host cannot do this (501).
    Unsupported,
    /// The engine root's filesystem is full (500, as Docker answers).
    NoSpace,
    /// A registry refused the credentials (401).
    Unauthorized,
    /// Anything else (500).
    Internal,
}

impl ErrorKind {
    /// The HTTP status the Docker Engine API uses for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            Self::NotFound => 404,
            Self::Conflict | Self::NotRunning => 409,
            Self::Invalid => 400,
            Self::Unauthorized => 401,
            Self::Unsupported => 501,
            Self::NoSpace | Self::Internal => 500,
        }
    }
}
