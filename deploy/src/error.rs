//! One error type for the deploy crate; the server maps each kind to one HTTP status and one
//! JSON body `{"error": message, "kind": kind}`.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request or input file is unusable (not an image, bad parameters).
    #[error("{0}")]
    BadInput(String),
    /// The request body or image exceeds the configured limits.
    #[error("{0}")]
    TooLarge(String),
    /// The queue is full: retry later.
    #[error("{0}")]
    Overloaded(String),
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
            Error::TooLarge(_) => "too_large",
            Error::Overloaded(_) => "overloaded",
            Error::Timeout(_) => "timeout",
            Error::Model(_) => "model",
            Error::Engine(_) => "engine",
        }
    }
}
