//! Bearer tokens read from files, for the client and the server alike, and the server's
//! constant-time check of the header a call carries.

use subtle::ConstantTimeEq;

use crate::RemoteError;

/// A bearer token from the file `path`: its contents, trimmed, refused when empty or not
/// printable ASCII (the server compares it in constant time; it travels in an HTTP header).
///
/// # Errors
/// [`RemoteError::File`] when the file cannot be read, or the token is not UTF-8, is empty, or
/// is not printable ASCII without spaces.
pub fn read_token(path: &std::path::Path) -> Result<String, RemoteError> {
    let bytes = std::fs::read(path).map_err(|e| RemoteError::file(path, "cannot read the token", Some(e)))?;
    let token = String::from_utf8(bytes)
        .map_err(|_| RemoteError::file(path, "the token is not UTF-8", None))?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(RemoteError::file(
            path,
            "the token file is empty: a server with an empty token would accept anyone",
            None,
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RemoteError::file(
            path,
            "the token must be printable ASCII without spaces (it travels in an HTTP header)",
            None,
        ));
    }
    Ok(token)
}

/// Whether an `authorization` header value is `Bearer <token>`, compared in constant time.
pub(crate) fn bearer_matches(given: &[u8], token: &str) -> bool {
    let expected = format!("Bearer {token}");
    given.len() == expected.len() && bool::from(given.ct_eq(expected.as_bytes()))
}
