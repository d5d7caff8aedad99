//! The JSON bodies of the HTTP routes, as they travel: what a client sends
//! and gets back. The server validates them (its API layer); the types
//! only say their shape, so clients, tests and the fuzzers use them
//! without the server.
#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

/// text-embeddings-inference's `/rerank` request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RerankBody {
    /// The query.
    pub query: String,
    /// Documents to rank.
    pub texts: Vec<String>,
    /// Raw logits instead of the activation.
    #[serde(default)]
    pub raw_scores: bool,
    /// Echo each document in the answer.
    #[serde(default)]
    pub return_text: bool,
    /// Truncate over-long pairs (default true).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// `Right` (default) or `Left`.
    #[serde(default)]
    pub truncation_direction: Option<String>,
}

/// One entry of the `/rerank` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RankBody {
    /// Position in `texts`.
    pub index: usize,
    /// Score.
    pub score: f32,
    /// The document, if asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_body_takes_the_defaults_and_round_trips() {
        let body: RerankBody = serde_json::from_str(r#"{"query":"q","texts":["a"]}"#).unwrap();
        assert_eq!((body.raw_scores, body.truncate), (false, None));
        let again: RerankBody =
            serde_json::from_str(&serde_json::to_string(&body).unwrap()).unwrap();
        assert_eq!(again, body);
    }
}
