//! The optional API key (`--api-key`): scoring and info need
//! `authorization: Bearer KEY` (gRPC metadata or HTTP header); health and
//! metrics stay open, as in text-embeddings-inference.

/// Checks an `authorization` header value against the key.
pub fn authorized(expected: Option<&str>, header: Option<&str>) -> bool {
    let Some(key) = expected else { return true };
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    // Compare in time independent of where the first difference is.
    given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
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
    }
}
