//! The JSON bodies of the HTTP routes, as they travel: what a client sends
//! and gets back, in the shapes of the APIs clients already speak —
//! text-embeddings-inference (`/rerank`), Cohere v1 and Jina (`/v1/rerank`),
//! Cohere v2 (`/v2/rerank`), vLLM's score API (`/score`) and the model list
//! (`/v1/models`). The server validates them (its API layer); the types
//! only say their shape (and, through `utoipa`, their OpenAPI schema), so
//! clients, tests and the fuzzers use them without the server.
#![warn(missing_docs)]

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// An optional count as JSON Schema's `integer` admits it: a JSON integer,
/// or a number with no fractional part (`3.0`), which serde alone refuses.
/// One past `usize` (JSON has no bound; serde reads `1e31` as a float) is
/// `usize::MAX`: a `top_n` that large keeps every document, and a limit
/// that large meets the server's own limit check, with its precise error.
fn optional_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(u) = n.as_u64() {
        return Ok(Some(usize::try_from(u).unwrap_or(usize::MAX)));
    }
    match n.as_f64() {
        // `as` saturates a float past usize::MAX.
        Some(f) if f.is_finite() && f.fract() == 0.0 && f >= 0.0 => Ok(Some(f as usize)),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a count (a whole number from 0)"
        ))),
    }
}

/// text-embeddings-inference's `/rerank` request (plus `model` and the
/// chunking fields, which TEI lacks).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct RerankBody {
    /// The query (not blank).
    #[schema(min_length = 1, pattern = r"\S")]
    pub query: String,
    /// Documents to rank.
    #[schema(min_items = 1)]
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
    /// Which end of an over-long pair is cut (default `Right`).
    #[serde(default)]
    pub truncation_direction: Option<TruncationSide>,
    /// The served model's name (default: the server's default model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Score a long document in at most this many windows instead of
    /// truncating it.
    #[serde(
        default,
        deserialize_with = "optional_count",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1)]
    pub max_chunks_per_doc: Option<usize>,
    /// With windows: report the deciding window's characters (`chunk`).
    #[serde(default)]
    pub return_chunk_offsets: bool,
    /// An LLM reranker's instruction (Qwen3-Reranker's `<Instruct>`;
    /// default: the model's). An encoder model refuses one.
    #[serde(default)]
    pub instruction: Option<String>,
}

/// TEI's `truncation_direction` (either capitalisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub enum TruncationSide {
    /// Cut the end (the default).
    #[serde(alias = "right")]
    Right,
    /// Cut the start.
    #[serde(alias = "left")]
    Left,
}

/// One entry of the `/rerank` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RankBody {
    /// Position in `texts`.
    pub index: usize,
    /// Score.
    pub score: f32,
    /// The document, if asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Where a windowed document's score came from, if asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkBody>,
}

/// The window that decided a long document's score.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ChunkBody {
    /// Character offset of its start in the document.
    pub start: u32,
    /// Character offset just past its end.
    pub end: u32,
    /// Windows the document was scored in.
    pub chunks: usize,
}

/// A document as Cohere v1 and Jina take it: a string, or an object whose
/// `text` (or `rank_fields`) is scored and which is echoed whole.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum DocumentIn {
    /// The document's text.
    Text(String),
    /// An object: `{"text": …}`, or any fields `rank_fields` names.
    #[schema(value_type = Object)]
    Fields(serde_json::Map<String, serde_json::Value>),
}

/// `POST /v1/rerank`: Cohere v1's and Jina's request (one shape serves both).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct CohereRerankBody {
    /// The served model's name (default: the server's default model).
    #[serde(default)]
    pub model: Option<String>,
    /// The query (not blank).
    #[schema(min_length = 1, pattern = r"\S")]
    pub query: String,
    /// Documents to rank.
    #[schema(min_items = 1)]
    pub documents: Vec<DocumentIn>,
    /// Return only the best `top_n` (at least 1).
    #[serde(default, deserialize_with = "optional_count")]
    #[schema(minimum = 1)]
    pub top_n: Option<usize>,
    /// Echo each document (default true: Jina's default; Cohere clients
    /// read it when present).
    #[serde(default)]
    pub return_documents: Option<bool>,
    /// Windows a long document is split into at most (Cohere v1; default
    /// and ceiling: the server's `max_chunks_per_doc`).
    #[serde(default, deserialize_with = "optional_count")]
    #[schema(minimum = 1)]
    pub max_chunks_per_doc: Option<usize>,
    /// For object documents: the fields scored, in order (default `text`).
    #[serde(default)]
    #[schema(min_items = 1)]
    pub rank_fields: Option<Vec<String>>,
    /// Report the deciding window's characters (`chunk`).
    #[serde(default)]
    pub return_chunk_offsets: bool,
    /// An LLM reranker's instruction (Qwen3-Reranker's `<Instruct>`;
    /// default: the model's). An encoder model refuses one.
    #[serde(default)]
    pub instruction: Option<String>,
}

/// `POST /v2/rerank`: Cohere v2's request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct CohereV2RerankBody {
    /// The served model's name (required, as Cohere v2 requires it).
    pub model: String,
    /// The query (not blank).
    #[schema(min_length = 1, pattern = r"\S")]
    pub query: String,
    /// Documents to rank.
    #[schema(min_items = 1)]
    pub documents: Vec<String>,
    /// Return only the best `top_n` (at least 1).
    #[serde(default, deserialize_with = "optional_count")]
    #[schema(minimum = 1)]
    pub top_n: Option<usize>,
    /// Tokens of a document considered at most (default and ceiling: the
    /// server's `max_tokens_per_doc`); longer ones are scored in windows.
    #[serde(default, deserialize_with = "optional_count")]
    #[schema(minimum = 1)]
    pub max_tokens_per_doc: Option<usize>,
    /// Echo each document (default false).
    #[serde(default)]
    pub return_documents: Option<bool>,
    /// Report the deciding window's characters (`chunk`).
    #[serde(default)]
    pub return_chunk_offsets: bool,
    /// An LLM reranker's instruction (Qwen3-Reranker's `<Instruct>`;
    /// default: the model's). An encoder model refuses one.
    #[serde(default)]
    pub instruction: Option<String>,
}

/// A document echoed in a rerank result: `{"text": …}` for a document
/// sent as a string, the object sent, whole, for an object.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct DocumentOut(
    /// Its fields.
    pub serde_json::Map<String, serde_json::Value>,
);

impl DocumentOut {
    /// `{"text": text}`.
    pub fn text(text: &str) -> Self {
        let mut fields = serde_json::Map::new();
        fields.insert("text".into(), text.into());
        Self(fields)
    }
}

/// One result of `/v1/rerank` and `/v2/rerank`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct RerankResult {
    /// Position in `documents`.
    pub index: usize,
    /// The model's activation of the relevant label (see the README).
    pub relevance_score: f32,
    /// The document, if asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentOut>,
    /// Where a windowed document's score came from, if asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkBody>,
}

/// Cohere's `meta.api_version`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ApiVersion {
    /// `"1"` or `"2"`.
    pub version: String,
}

/// Cohere's `meta.billed_units`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct BilledUnits {
    /// Searches: one per 100 scored windows or part thereof.
    pub search_units: u64,
}

/// Cohere's `meta.tokens`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct MetaTokens {
    /// Tokens the model read.
    pub input_tokens: u64,
}

/// Cohere's `meta`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct RerankMeta {
    /// The API version answered.
    pub api_version: ApiVersion,
    /// What the request cost.
    pub billed_units: BilledUnits,
    /// Tokens read.
    pub tokens: MetaTokens,
}

/// Jina's `usage`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct Usage {
    /// Tokens the model read.
    pub total_tokens: u64,
}

/// The answer of `/v1/rerank` (Cohere v1's fields and Jina's `model` and
/// `usage`, so one response satisfies both) and of `/v2/rerank`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct RerankResponseBody {
    /// A fresh id per request.
    pub id: String,
    /// The ranked documents, best first.
    pub results: Vec<RerankResult>,
    /// Cohere's metadata.
    pub meta: RerankMeta,
    /// The served model's name (Jina).
    pub model: String,
    /// Tokens read (Jina).
    pub usage: Usage,
}

/// A text or a list of texts (vLLM's `text_1`/`text_2`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Texts {
    /// One text.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `POST /score`: vLLM's score request. A single `text_1` is scored
/// against every `text_2`; two lists are scored pairwise (equal lengths).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ScoreBody {
    /// The served model's name (default: the server's default model).
    #[serde(default)]
    pub model: Option<String>,
    /// Queries.
    pub text_1: Texts,
    /// Documents.
    pub text_2: Texts,
    /// Truncate over-long pairs (default true; vLLM's
    /// `truncate_prompt_tokens` is not taken).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// An LLM reranker's instruction (Qwen3-Reranker's `<Instruct>`;
    /// default: the model's). An encoder model refuses one.
    #[serde(default)]
    pub instruction: Option<String>,
}

/// One score of `/score`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ScoreData {
    /// The pair's position.
    pub index: usize,
    /// Always `"score"`.
    pub object: String,
    /// The model's activation of the relevant label.
    pub score: f32,
}

/// vLLM's `usage` of a score answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ScoreUsage {
    /// Tokens read.
    pub prompt_tokens: u64,
    /// The same (nothing is generated).
    pub total_tokens: u64,
}

/// The answer of `/score`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ScoreResponseBody {
    /// A fresh id per request.
    pub id: String,
    /// Always `"list"`.
    pub object: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// One score per pair, in order.
    pub data: Vec<ScoreData>,
    /// Tokens read.
    pub usage: ScoreUsage,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ModelCard {
    /// The name requests route to.
    pub id: String,
    /// Always `"model"`.
    pub object: String,
    /// Seconds since the epoch when the server started.
    pub created: u64,
    /// Always `"ce-supervisor"`.
    pub owned_by: String,
    /// Model directory or hub id.
    pub root: String,
    /// Longest pair in tokens (0 if it did not load).
    pub max_model_len: usize,
    /// Whether requests without `model` get it.
    pub default: bool,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `"list"`.
    pub object: String,
    /// The served models.
    pub data: Vec<ModelCard>,
}

/// The error body of `/rerank`, `/info` and the other TEI-shaped routes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct TeiError {
    /// What went wrong.
    pub error: String,
    /// Its class (`Validation`, `Overloaded`, `NotFound`, …).
    pub error_type: String,
}

/// The error body of `/v1/rerank` and `/v2/rerank`: Cohere's `message`,
/// and Jina's `detail` (the same text).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct CohereError {
    /// What went wrong (Cohere).
    pub message: String,
    /// The same (Jina).
    pub detail: String,
}

/// The inside of [`OpenAiError`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    /// What went wrong.
    pub message: String,
    /// Its class (`BadRequestError`, `NotFoundError`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status.
    pub code: u16,
}

/// The error body of `/score` and `/v1/models`, as vLLM (OpenAI) shapes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct OpenAiError {
    /// The error.
    pub error: OpenAiErrorDetail,
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

    #[test]
    fn counts_are_whole_numbers_and_saturate_past_usize() {
        let top_n = |json: &str| {
            serde_json::from_str::<CohereRerankBody>(&format!(
                r#"{{"query":"q","documents":["a"],"top_n":{json}}}"#
            ))
            .map(|b| b.top_n)
        };
        assert_eq!(top_n("3").unwrap(), Some(3));
        assert_eq!(top_n("3.0").unwrap(), Some(3));
        assert_eq!(top_n("null").unwrap(), None);
        // Schema-valid integers past u64, as schemathesis sends them.
        assert_eq!(
            top_n("26907955555549688901983820316672").unwrap(),
            Some(usize::MAX)
        );
        assert_eq!(top_n("1e31").unwrap(), Some(usize::MAX));
        for bad in ["-1", "2.5", "-0.5"] {
            let err = top_n(bad).unwrap_err().to_string();
            assert!(err.contains("is not a count"), "{bad}: {err}");
        }
    }

    #[test]
    fn documents_are_strings_or_objects_and_texts_one_or_many() {
        let body: CohereRerankBody = serde_json::from_str(
            r#"{"query":"q","documents":["a",{"text":"b","id":7}],"rank_fields":["text"]}"#,
        )
        .unwrap();
        assert_eq!(body.documents[0], DocumentIn::Text("a".into()));
        assert!(matches!(&body.documents[1], DocumentIn::Fields(f) if f["id"] == 7));
        let score: ScoreBody =
            serde_json::from_str(r#"{"text_1":"q","text_2":["a","b"]}"#).unwrap();
        assert_eq!(score.text_1, Texts::One("q".into()));
        assert_eq!(score.text_2, Texts::Many(vec!["a".into(), "b".into()]));
        let out = serde_json::to_value(DocumentOut::text("a")).unwrap();
        assert_eq!(out, serde_json::json!({"text": "a"}));
    }
}
