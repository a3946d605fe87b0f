//! The handler version: a short hash of a handler's JavaScript source, carried
//! by every outcome (`x-hljs-handler-version`) and by the metrics, so that a
//! consumer can tell which code produced a result across hot reloads.

use sha2::{Digest, Sha256};

/// Hex digits of the version: 12 (48 bits) tell a key's versions apart
/// without being a burden in headers and metric labels.
pub const VERSION_HEX_DIGITS: usize = 12;

/// The first [`VERSION_HEX_DIGITS`] lowercase hex digits of the SHA-256 of
/// `source`, the handler file's exact contents (a whitespace change is a new
/// version: the code compiled is a different text).
pub fn handler_version(source: &str) -> String {
    let digest = Sha256::digest(source.as_bytes());
    let mut out = String::with_capacity(VERSION_HEX_DIGITS);
    for byte in digest.iter().take(VERSION_HEX_DIGITS / 2) {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_start_of_the_sources_sha256() {
        // sha256("") = e3b0c44298fc1c14…, sha256("abc") = ba7816bf8f01cfea…
        assert_eq!(handler_version(""), "e3b0c44298fc");
        assert_eq!(handler_version("abc"), "ba7816bf8f01");
        assert_eq!(handler_version("abc").len(), VERSION_HEX_DIGITS);
        assert_ne!(handler_version("abc"), handler_version("abc "));
    }
}
