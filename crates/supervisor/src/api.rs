//! The API layer every front end calls: request validation, the rerank,
//! score, tokenize and score-tokens logic, ranking, truncation, request
//! metrics and the server's [`Info`], over the serving [`Core`]. The front
//! ends ([`crate::grpc`], [`crate::http`]) only translate their wire types
//! to and from these, and [`ApiError`] is mapped once to each protocol's
//! status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use ce_common::TokenBatch;
use ce_model_spec::ScoreActivation;
use serde::Serialize;
use tokenizer_worker::Truncation;

use crate::core::{Core, PairsInput};
use crate::request::{Scored, Timing};

/// Why a request failed, mapped once to a gRPC status and an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The client's input is unusable; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// Too much work is queued; retry later.
    #[error("{0}")]
    Overloaded(String),
    /// No replica or tokenizer is serving.
    #[error("{0}")]
    Unavailable(String),
    /// The server failed.
    #[error("{0}")]
    Internal(String),
    /// The client's deadline passed first.
    #[error("{0}")]
    DeadlineExceeded(String),
}

impl ApiError {
    /// The gRPC status for this error.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            ApiError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            ApiError::Overloaded(m) => tonic::Status::resource_exhausted(m),
            ApiError::Unavailable(m) => tonic::Status::unavailable(m),
            ApiError::Internal(m) => tonic::Status::internal(m),
            ApiError::DeadlineExceeded(m) => tonic::Status::deadline_exceeded(m),
        }
    }

    /// The `status` label of `inference_requests_total` for this error.
    pub fn status_label(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument(_) => "invalid_argument",
            ApiError::Overloaded(_) => "resource_exhausted",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::DeadlineExceeded(_) => "deadline_exceeded",
        }
    }

    /// The HTTP status for this error (text-embeddings-inference's choices).
    pub fn http_status(&self) -> u16 {
        match self {
            ApiError::InvalidArgument(_) => 422,
            ApiError::Overloaded(_) => 429,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
            ApiError::DeadlineExceeded(_) => 504,
        }
    }

    /// The `error_type` of the HTTP error body (text-embeddings-inference's names).
    pub fn http_error_type(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument(_) => "Validation",
            ApiError::Overloaded(_) => "Overloaded",
            ApiError::Unavailable(_) => "Unhealthy",
            ApiError::Internal(_) => "Backend",
            ApiError::DeadlineExceeded(_) => "Timeout",
        }
    }
}

/// The HTTP error body: `{"error": …, "error_type": …}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// Its class (`Validation`, `Overloaded`, …).
    pub error_type: &'static str,
}

/// An HTTP error answer with that body.
pub fn http_refusal(
    status: StatusCode,
    error_type: &'static str,
    error: String,
) -> axum::response::Response {
    (status, axum::Json(ErrorBody { error, error_type })).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        http_refusal(status, self.http_error_type(), self.to_string())
    }
}

/// Which end of an over-long pair is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    /// The end (the default).
    #[default]
    Right,
    /// The start.
    Left,
}

/// The truncation a request asked for: `truncate` (default on) and the side.
pub fn truncation(truncate: Option<bool>, side: Side) -> Truncation {
    match (truncate, side) {
        (Some(false), _) => Truncation::Off,
        (_, Side::Left) => Truncation::Left,
        (_, Side::Right) => Truncation::Right,
    }
}

/// Indices ordered by score, best first (ties keep input order), cut to
/// `top_n` (more than there are: all).
pub fn ranking(scores: &[f32], top_n: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    if let Some(n) = top_n {
        order.truncate(n);
    }
    order
}

/// A rerank request in the API's terms.
#[derive(Debug, Clone)]
pub struct RerankInput {
    /// The query.
    pub query: String,
    /// Documents to rank.
    pub documents: Vec<String>,
    /// How over-long pairs are handled.
    pub truncation: Truncation,
    /// Raw logits instead of the model's activation.
    pub raw_scores: bool,
    /// Echo each document in its rank.
    pub return_documents: bool,
    /// Keep only the best `top_n` (at least 1).
    pub top_n: Option<usize>,
}

/// One document's place in a ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Rank {
    /// Position in the request's documents.
    pub index: usize,
    /// Its score.
    pub score: f32,
    /// The document, if asked for.
    pub document: Option<String>,
}

/// A ranking, best first, with where the time went.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// The ranks.
    pub ranks: Vec<Rank>,
    /// Where the time went.
    pub timing: Timing,
    /// Tokens of all pairs.
    pub tokens: u64,
}

/// Scores in input order, with where the time went.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreList {
    /// One score per pair.
    pub scores: Vec<f32>,
    /// Where the time went.
    pub timing: Timing,
    /// Tokens of all pairs.
    pub tokens: u64,
}

/// One replica as `Info` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaInfo {
    /// Its slot.
    pub replica: usize,
    /// Model directory or hub id.
    pub model: String,
    /// Weight precision.
    pub dtype: String,
    /// Device.
    pub device: String,
    /// Compute threads.
    pub threads: usize,
    /// Whether it serves now.
    pub serving: bool,
    /// Pairs it has scored.
    pub pairs: u64,
    /// Its resident memory.
    pub rss_bytes: u64,
    /// Why it failed to start, while it has not.
    pub error: Option<String>,
}

/// What is served and with which limits: gRPC `Info` and `GET /info`.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// Server version.
    pub version: &'static str,
    /// Where the model came from.
    pub model: String,
    /// Longest pair in tokens.
    pub max_length: usize,
    /// Activation applied unless raw scores are asked for.
    pub score_activation: ScoreActivation,
    /// Documents per request at most.
    pub max_documents: usize,
    /// Characters per text at most.
    pub max_input_chars: usize,
    /// Token budget of a batch.
    pub max_batch_tokens: usize,
    /// Pairs per batch at most.
    pub max_batch_size: usize,
    /// Tokenizer workers.
    pub tokenizers: usize,
    /// The replicas.
    pub replicas: Vec<ReplicaInfo>,
    /// Whether every replica answered its warm-up.
    pub ready: bool,
}

/// How long before a client's deadline a call gives up. gRPC servers cut
/// a call at the deadline with CANCELLED; answering a little earlier gives
/// the client the DEADLINE_EXCEEDED it expects.
const ANSWER_MARGIN: Duration = Duration::from_millis(5);

/// The API over the serving core; cheap to clone.
#[derive(Debug, Clone)]
pub struct Api {
    core: Arc<Core>,
}

impl Api {
    /// The API over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// The serving core (health, metrics, settings).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Runs `call` within `deadline` (if any) and records it in
    /// `inference_requests_total` and the duration histogram under `method`.
    /// Dropping the call abandons its request: queued pairs are never
    /// computed.
    pub async fn recorded<T>(
        &self,
        method: &str,
        deadline: Option<Duration>,
        call: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        // The server's own bound holds on every path, whatever the client asks.
        let most = Duration::from_millis(self.core.settings.request_timeout_ms);
        let result = match deadline {
            Some(d) if d <= most => tokio::time::timeout(d.saturating_sub(ANSWER_MARGIN), call)
                .await
                .unwrap_or_else(|_| {
                    Err(ApiError::DeadlineExceeded(format!(
                        "deadline of {d:?} passed before the scores were ready"
                    )))
                }),
            _ => tokio::time::timeout(most, call).await.unwrap_or_else(|_| {
                Err(ApiError::DeadlineExceeded(format!(
                    "the request took longer than request_timeout_ms ({} ms)",
                    most.as_millis()
                )))
            }),
        };
        self.record(method, started, &result);
        result
    }

    /// Records a finished call (for what fails before [`Api::recorded`] runs).
    pub fn record<T>(&self, method: &str, started: Instant, result: &Result<T, ApiError>) {
        let status = result
            .as_ref()
            .map_or_else(ApiError::status_label, |_| "ok");
        self.core
            .metrics
            .observe_request(method, status, started.elapsed().as_secs_f64());
    }

    /// Scores every document against the query and ranks them best first.
    pub async fn rerank(&self, input: RerankInput) -> Result<Ranking, ApiError> {
        if input.top_n == Some(0) {
            return Err(ApiError::InvalidArgument(
                "top_n: must be at least 1 (leave it out to rank every document)".into(),
            ));
        }
        self.check_query("query", &input.query)?;
        self.check_count("documents", input.documents.len())?;
        for (i, d) in input.documents.iter().enumerate() {
            self.check_text(&format!("documents[{i}]"), d)?;
        }
        let documents = input.documents;
        let scored = self
            .core
            .score(PairsInput {
                groups: vec![(input.query, documents.clone())],
                truncation: input.truncation,
            })
            .await?;
        let scores = self.client_scores(&scored, input.raw_scores);
        let ranks = ranking(&scores, input.top_n)
            .into_iter()
            .map(|i| Rank {
                index: i,
                score: scores[i],
                document: input.return_documents.then(|| documents[i].clone()),
            })
            .collect();
        Ok(Ranking {
            ranks,
            timing: scored.timing,
            tokens: scored.tokens,
        })
    }

    /// Scores `(query, passage)` pairs, in input order.
    pub async fn score(
        &self,
        pairs: Vec<(String, String)>,
        truncation: Truncation,
        raw_scores: bool,
    ) -> Result<ScoreList, ApiError> {
        let input = self.pairs_input(pairs, truncation)?;
        let scored = self.core.score(input).await?;
        Ok(self.score_list(&scored, raw_scores))
    }

    /// Scores one pair of a stream; `id` names it in errors.
    pub async fn score_one(
        &self,
        id: u64,
        query: String,
        passage: String,
        raw_scores: bool,
    ) -> Result<f32, ApiError> {
        // The same checks as every other path, each pair on its own.
        self.check_query(&format!("pair {id}: query"), &query)?;
        self.check_text(&format!("pair {id}: passage"), &passage)?;
        let input = PairsInput {
            groups: vec![(query, vec![passage])],
            truncation: Truncation::Right,
        };
        let scored = self.core.score(input).await?;
        Ok(self
            .client_scores(&scored, raw_scores)
            .first()
            .copied()
            .unwrap_or(f32::NAN))
    }

    /// Tokenizes pairs exactly as scoring would, without scoring them.
    pub async fn tokenize(
        &self,
        pairs: Vec<(String, String)>,
        truncation: Truncation,
    ) -> Result<TokenBatch, ApiError> {
        let input = self.pairs_input(pairs, truncation)?;
        self.core.tokenize(input).await
    }

    /// Scores pre-tokenized pairs `(input_ids, type_ids)`, each checked
    /// against the model's vocabularies and `max_length` first.
    pub async fn score_tokens(
        &self,
        pairs: &[(Vec<u32>, Vec<u32>)],
        raw_scores: bool,
    ) -> Result<ScoreList, ApiError> {
        self.check_count("pairs", pairs.len())?;
        let tokens = pairs.iter().map(|(ids, _)| ids.len()).sum();
        let mut batch = TokenBatch::with_capacity(pairs.len(), tokens);
        for (i, (ids, types)) in pairs.iter().enumerate() {
            self.check_tokens(&format!("pairs[{i}]"), ids, types)?;
            batch.push(ids, types);
        }
        let scored = self.core.score_tokens(batch).await?;
        Ok(self.score_list(&scored, raw_scores))
    }

    /// What is served, with which limits, and each replica's state.
    pub fn info(&self) -> Info {
        let core = &self.core;
        let settings = &core.settings;
        let replicas = core
            .replica_status()
            .into_iter()
            .map(|r| ReplicaInfo {
                replica: r.slot,
                model: r.spec.model,
                dtype: r.spec.dtype.to_string(),
                device: r.spec.device.to_string(),
                threads: r.spec.threads,
                serving: r.serving,
                pairs: r.metrics.pairs,
                rss_bytes: r.metrics.rss_bytes,
                error: r.error,
            })
            .collect();
        Info {
            version: env!("CARGO_PKG_VERSION"),
            model: core.served.model.clone(),
            max_length: core.served.max_length,
            score_activation: core.served.activation,
            max_documents: settings.max_documents,
            max_input_chars: settings.max_input_chars,
            max_batch_tokens: settings.max_batch_tokens,
            max_batch_size: settings.max_batch_size,
            tokenizers: settings.tokenizers,
            replicas,
            ready: core.is_ready(),
        }
    }

    fn client_scores(&self, scored: &Scored, raw: bool) -> Vec<f32> {
        let activation = self.core.served.activation;
        scored
            .first_logits()
            .map(|l| if raw { l } else { activation.apply(l) })
            .collect()
    }

    fn score_list(&self, scored: &Scored, raw: bool) -> ScoreList {
        ScoreList {
            scores: self.client_scores(scored, raw),
            timing: scored.timing,
            tokens: scored.tokens,
        }
    }

    /// Checks `pairs` and groups consecutive pairs that share a query.
    fn pairs_input(
        &self,
        pairs: Vec<(String, String)>,
        truncation: Truncation,
    ) -> Result<PairsInput, ApiError> {
        self.check_count("pairs", pairs.len())?;
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for (i, (query, passage)) in pairs.into_iter().enumerate() {
            self.check_query(&format!("pairs[{i}].query"), &query)?;
            self.check_text(&format!("pairs[{i}].passage"), &passage)?;
            match groups.last_mut() {
                Some((q, passages)) if *q == query => passages.push(passage),
                _ => groups.push((query, vec![passage])),
            }
        }
        Ok(PairsInput { groups, truncation })
    }

    fn check_query(&self, field: &str, query: &str) -> Result<(), ApiError> {
        if query.trim().is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "{field}: must not be empty"
            )));
        }
        self.check_text(field, query)
    }

    /// Checks one text field against `max_input_chars`.
    fn check_text(&self, field: &str, text: &str) -> Result<(), ApiError> {
        let limit = self.core.settings.max_input_chars;
        // Bytes bound characters from above: count only when it can matter.
        if text.len() > limit && text.chars().count() > limit {
            return Err(ApiError::InvalidArgument(format!(
                "{field}: {} characters exceed max_input_chars ({limit})",
                text.chars().count()
            )));
        }
        Ok(())
    }

    /// Checks a request's document count against `max_documents`.
    fn check_count(&self, field: &str, n: usize) -> Result<(), ApiError> {
        if n == 0 {
            return Err(ApiError::InvalidArgument(format!(
                "{field}: must not be empty"
            )));
        }
        let limit = self.core.settings.max_documents;
        if n > limit {
            return Err(ApiError::InvalidArgument(format!(
                "{field}: {n} exceed max_documents ({limit})"
            )));
        }
        Ok(())
    }

    /// Checks one pre-tokenized pair (`field` names it in the message):
    /// ids and segments parallel, not empty, within `max_length`, and every
    /// id within the model's vocabularies. A batch that passes cannot make
    /// a model worker fail.
    fn check_tokens(&self, field: &str, ids: &[u32], types: &[u32]) -> Result<(), ApiError> {
        let bad = |m: String| Err(ApiError::InvalidArgument(format!("{field}.{m}")));
        if ids.is_empty() {
            return bad("input_ids: must not be empty".into());
        }
        if ids.len() != types.len() {
            return bad(format!(
                "type_ids: {} ids for {} input_ids; they must be parallel",
                types.len(),
                ids.len()
            ));
        }
        let served = &self.core.served;
        if ids.len() > served.max_length {
            return bad(format!(
                "input_ids: {} tokens exceed max_length ({})",
                ids.len(),
                served.max_length
            ));
        }
        let first_at_or_above = |v: &[u32], limit: usize| {
            v.iter()
                .enumerate()
                .find(|(_, x)| **x as usize >= limit)
                .map(|(i, x)| (i, *x))
        };
        let vocab = served.vocab_size;
        if let Some((i, id)) = first_at_or_above(ids, vocab) {
            return bad(format!(
                "input_ids[{i}]: token id {id} is outside the vocabulary ({vocab} ids)"
            ));
        }
        let segments = served.type_vocab_size;
        if let Some((i, t)) = first_at_or_above(types, segments) {
            return bad(format!(
                "type_ids[{i}]: segment {t} is outside the model's {segments} segments"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_best_first_stable_and_cut() {
        assert_eq!(ranking(&[0.1, 0.9, 0.5, 0.9], None), vec![1, 3, 2, 0]);
        assert_eq!(ranking(&[0.1, 0.9, 0.5], Some(2)), vec![1, 2]);
        assert_eq!(ranking(&[0.1, 0.9], Some(5)), vec![1, 0]);
    }

    #[test]
    fn truncation_follows_the_request() {
        assert_eq!(truncation(None, Side::Right), Truncation::Right);
        assert_eq!(truncation(Some(true), Side::Left), Truncation::Left);
        assert_eq!(truncation(Some(false), Side::Left), Truncation::Off);
    }
}
