//! The model crate's own errors: a file that cannot be read or parsed, a model or value outside
//! what vericonv runs, non-finite numbers. The scheme's errors (a private layer's failed
//! verification, a bad shape, a cloud backend's failure) pass through as
//! [`ModelError::Scheme`], so `VerificationFailed` matches wherever it surfaces.

use std::sync::Arc;

use thiserror::Error;

/// What can go wrong while loading, converting or running a model.
#[derive(Debug, Error, Clone)]
#[non_exhaustive]
pub enum ModelError {
    /// A tensor, model or data file could not be parsed.
    #[error("parse error in {what}: {message}")]
    Parse {
        /// What was being parsed.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// An I/O error, with the path involved.
    #[error("I/O error on {path}: {source}{hint}")]
    Io {
        /// The file.
        path: String,
        /// What to do about it, if anything (empty, or starting with a separator).
        hint: String,
        /// The operating system's error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// An input tensor or a weight is NaN or an infinity.
    #[error("{what}[{index}] is {value}: inputs must be finite")]
    NonFinite {
        /// Which tensor.
        what: String,
        /// Flat index of the entry.
        index: usize,
        /// The value, as text (`NaN`, `inf`, `-inf`).
        value: String,
    },
    /// An operator, attribute or setting outside what vericonv supports.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A bug in vericonv or in a library it runs (a self-check that failed, a serializer that
    /// refused our own data): please report it.
    #[error("internal error: {0}")]
    Internal(String),
    /// The scheme's own error, from a private layer or a cloud backend.
    #[error(transparent)]
    Scheme(#[from] vericonv::Error),
}

impl ModelError {
    /// An [`ModelError::Io`] on `path`, keeping `source` as the error's source.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.as_ref().display().to_string(), hint: String::new(), source: Arc::new(source) }
    }
}

/// The result type of the model crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
