//! The optional API key (`--api-key`): scoring and info need
//! `authorization: Bearer KEY` (gRPC metadata or HTTP header); health and
//! metrics stay open, as in text-embeddings-inference.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Checks an `authorization` header value against the key. The scheme is
/// matched case-insensitively (`Bearer`, `bearer`: RFC 9110 §11.1). The
/// keys are compared as SHA-256 digests in constant time, so neither
/// where they first differ nor the key's length shows in the timing.
pub fn authorized(expected: Option<&str>, header: Option<&str>) -> bool {
    let Some(key) = expected else { return true };
    let Some((scheme, given)) = header.and_then(|h| h.split_once(' ')) else {
        return false;
    };
    let digest = |s: &str| Sha256::digest(s.as_bytes());
    let same: bool = digest(given.trim_start_matches(' '))
        .ct_eq(&digest(key))
        .into();
    scheme.eq_ignore_ascii_case("bearer") & same
}

/// A tonic interceptor enforcing the key.
pub fn grpc_interceptor(
    key: Option<String>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request: tonic::Request<()>| {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if authorized(key.as_deref(), header) {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated(
                "missing or wrong API key (authorization: Bearer …)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_key_must_match_exactly() {
        assert!(authorized(None, None));
        assert!(authorized(Some("k1"), Some("Bearer k1")));
        assert!(!authorized(Some("k1"), Some("Bearer k2")));
        assert!(!authorized(Some("k1"), Some("Bearer k10")));
        assert!(!authorized(Some("k1"), Some("k1")));
        assert!(!authorized(Some("k1"), None));
        assert!(!authorized(Some("k1"), Some("Bearer ")));
        assert!(!authorized(Some("k1"), Some("Basic k1")));
        assert!(!authorized(Some("k1"), Some("Bearerk1")));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            assert!(
                authorized(Some("k1"), Some(&format!("{scheme} k1"))),
                "{scheme}"
            );
        }
        assert!(authorized(Some("k1"), Some("Bearer  k1")), "extra spaces");
    }
}
