//! The remote cloud's own error. Calls through [`vericonv::cloud::CloudBackend`] return it as
//! [`vericonv::Error::Backend`] (the `From` conversion below), from which
//! `err.backend_error::<RemoteError>()` recovers it.

use thiserror::Error;

/// A remote cloud refused a call or could not be reached (after the retries its client allows),
/// or a server could not start; the message is the server's, or the transport's.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("remote cloud {endpoint}: {code}: {message}")]
pub struct RemoteError {
    /// The endpoint, e.g. `grpc://127.0.0.1:7000`.
    pub endpoint: String,
    /// The gRPC status code, e.g. `Unavailable`.
    pub code: String,
    /// What the server or the transport said.
    pub message: String,
}

impl RemoteError {
    /// The error of `endpoint` with status `code` (its name, e.g. `"Unavailable"`).
    pub fn new(endpoint: impl Into<String>, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { endpoint: endpoint.into(), code: code.into(), message: message.into() }
    }
}

impl From<RemoteError> for vericonv::Error {
    fn from(e: RemoteError) -> Self {
        let exhausted = e.code == "ResourceExhausted";
        vericonv::Error::backend(e, exhausted)
    }
}
