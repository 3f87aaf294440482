//! Bearer tokens read from files, for the client and the server alike, and the server's
//! constant-time check of the header a call carries.

use subtle::ConstantTimeEq;

/// A bearer token from the file `path`: its contents, trimmed, refused when empty or not
/// printable ASCII (the server compares it in constant time; it travels in an HTTP header).
///
/// # Errors
/// [`vericonv::Error::Io`] when the file cannot be read; [`vericonv::Error::Parse`] when the
/// token is not UTF-8, is empty, or is not printable ASCII without spaces.
pub fn read_token(path: &std::path::Path) -> vericonv::Result<String> {
    let bytes = std::fs::read(path).map_err(|e| vericonv::Error::io(path, e))?;
    let token = String::from_utf8(bytes)
        .map_err(|_| vericonv::Error::Parse {
            what: path.display().to_string(),
            message: "the token is not UTF-8".into(),
        })?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(vericonv::Error::Parse {
            what: path.display().to_string(),
            message: "the token file is empty: a server with an empty token would accept anyone".into(),
        });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(vericonv::Error::Parse {
            what: path.display().to_string(),
            message: "the token must be printable ASCII without spaces (it travels in an HTTP header)".into(),
        });
    }
    Ok(token)
}

/// Whether an `authorization` header value is `Bearer <token>`, compared in constant time.
pub(crate) fn bearer_matches(given: &[u8], token: &str) -> bool {
    let expected = format!("Bearer {token}");
    given.len() == expected.len() && bool::from(given.ct_eq(expected.as_bytes()))
}
