//! One error type for the deploy crate; the server maps each kind to one HTTP status and one
//! JSON body `{"error": message, "kind": kind}`.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request or input file is unusable (empty body, bad parameters, bad multipart).
    #[error("{0}")]
    BadInput(String),
    /// The bytes are not an image in a format this build decodes (PNG, JPEG).
    #[error("{0}")]
    Unsupported(String),
    /// An image in a supported format that cannot be decoded (truncated, corrupt).
    #[error("{0}")]
    Undecodable(String),
    /// The request body or image exceeds the configured limits.
    #[error("{0}")]
    TooLarge(String),
    /// The queue is full: retry later.
    #[error("{0}")]
    Overloaded(String),
    /// The service is not ready or is shutting down: retry on another instance or later.
    #[error("{0}")]
    Unavailable(String),
    /// The request waited or ran longer than the configured timeout.
    #[error("{0}")]
    Timeout(String),
    /// The model file is missing, unreadable, or lacks the dmue model card.
    #[error("{0}")]
    Model(String),
    /// The inference engine failed.
    #[error("inference failed: {0}")]
    Engine(String),
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),
}

impl Error {
    /// Stable machine-readable name of the error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadInput(_) | Error::Preprocess(_) => "bad_input",
            Error::Unsupported(_) => "unsupported_media_type",
            Error::Undecodable(_) => "undecodable",
            Error::TooLarge(_) => "too_large",
            Error::Unavailable(_) => "unavailable",
            Error::Overloaded(_) => "overloaded",
            Error::Timeout(_) => "timeout",
            Error::Model(_) => "model",
            Error::Engine(_) => "engine",
        }
    }

    /// The same error with `what` (an image's name) in front of an input error's message.
    pub fn with_context(self, what: &str) -> Self {
        match self {
            Error::BadInput(m) => Error::BadInput(format!("{what}: {m}")),
            Error::Unsupported(m) => Error::Unsupported(format!("{what}: {m}")),
            Error::Undecodable(m) => Error::Undecodable(format!("{what}: {m}")),
            Error::TooLarge(m) => Error::TooLarge(format!("{what}: {m}")),
            other => other,
        }
    }
}
