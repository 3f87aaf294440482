//! The remote cloud's own errors. Calls through [`vericonv::CloudBackend`] return them as
//! [`vericonv::Error::Backend`] (the `From` conversion below), from which
//! `err.backend_error::<RemoteError>()` recovers them.

use std::sync::Arc;

use thiserror::Error;

/// What goes wrong on the way to a remote cloud, or when a server starts.
#[derive(Debug, Error, Clone)]
#[non_exhaustive]
pub enum RemoteError {
    /// A remote cloud refused a call or could not be reached (after the retries its client
    /// allows), or a server could not start; the message is the server's, or the transport's.
    #[error("remote cloud {endpoint}: {code}: {message}")]
    Call {
        /// The endpoint, e.g. `grpc://127.0.0.1:7000`.
        endpoint: String,
        /// The gRPC status code, e.g. `Unavailable`.
        code: String,
        /// What the server or the transport said.
        message: String,
    },
    /// A message from the network that does not decode: a geometry the builder refuses, a
    /// tensor of the wrong length or with entries `>= p`, a kernel handle not 32 bytes long.
    #[error("malformed {what}: {message}")]
    Wire {
        /// What was being decoded.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file the transport needs (a bearer token, a CA certificate) cannot be read or is
    /// not usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
        /// The operating system's error, when reading failed.
        #[source]
        source: Option<Arc<std::io::Error>>,
    },
}

impl RemoteError {
    /// The call error of `endpoint` with status `code` (its name, e.g. `"Unavailable"`).
    pub fn new(endpoint: impl Into<String>, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Call { endpoint: endpoint.into(), code: code.into(), message: message.into() }
    }

    /// The gRPC status code of a call error, e.g. `"Unavailable"`.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Call { code, .. } => Some(code),
            Self::Wire { .. } | Self::File { .. } => None,
        }
    }

    /// The decoding error of `what`.
    pub(crate) fn wire(what: &str, message: impl std::fmt::Display) -> Self {
        Self::Wire { what: what.to_string(), message: message.to_string() }
    }

    /// The file error of `path`.
    pub(crate) fn file(path: &std::path::Path, message: impl Into<String>, source: Option<std::io::Error>) -> Self {
        Self::File { path: path.display().to_string(), message: message.into(), source: source.map(Arc::new) }
    }
}

impl From<RemoteError> for vericonv::Error {
    fn from(e: RemoteError) -> Self {
        let exhausted = e.code() == Some("ResourceExhausted");
        vericonv::Error::backend(e, exhausted)
    }
}
