//! The API layer every front end calls: request validation, the rerank,
//! score, tokenize and score-tokens logic, ranking, truncation, request
//! metrics and the server's [`Info`], over the serving [`Core`]. The front
//! ends ([`crate::grpc`], [`crate::http`]) only translate their wire types
//! to and from these, and [`ApiError`] is mapped once to each protocol's
//! status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ce_common::TokenBatch;
use ce_model_spec::ScoreActivation;
use serde::Serialize;
use tokenizer_worker::Truncation;

use ce_common::frame::WindowPlan;

use crate::chunks::{self, DocumentScore};
use crate::core::{Core, PairsInput};
use crate::request::{Scored, Timing};

/// Why a request failed, mapped once to a gRPC status and an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The client's input is unusable; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request names a model that is not served; the message lists
    /// the served ones.
    #[error("{0}")]
    NotFound(String),
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
            ApiError::NotFound(m) => tonic::Status::not_found(m),
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
            ApiError::NotFound(_) => "not_found",
            ApiError::Overloaded(_) => "resource_exhausted",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::DeadlineExceeded(_) => "deadline_exceeded",
        }
    }

    /// The HTTP status for this error (text-embeddings-inference's choices;
    /// the Cohere- and vLLM-shaped routes answer 400 for invalid input).
    pub fn http_status(&self) -> u16 {
        match self {
            ApiError::InvalidArgument(_) => 422,
            ApiError::NotFound(_) => 404,
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
            ApiError::NotFound(_) => "NotFound",
            ApiError::Overloaded(_) => "Overloaded",
            ApiError::Unavailable(_) => "Unhealthy",
            ApiError::Internal(_) => "Backend",
            ApiError::DeadlineExceeded(_) => "Timeout",
        }
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
#[derive(Debug, Clone, Default)]
pub struct RerankInput {
    /// The served model's name (`None`: the default).
    pub model: Option<String>,
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
    /// Score long documents in windows instead of truncating them.
    pub chunking: Option<Chunking>,
    /// An LLM reranker's instruction (`None`: the model's default).
    pub instruction: Option<String>,
}

/// What a request asks of long documents; unset fields take the server's
/// settings (`max_chunks_per_doc`, `max_tokens_per_doc`), which are also
/// the most a request may ask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chunking {
    /// Windows per document at most (Cohere v1's `max_chunks_per_doc`).
    pub max_chunks: Option<usize>,
    /// Tokens of a document considered at most (Cohere v2's
    /// `max_tokens_per_doc`); `None` for all of them.
    pub max_tokens: Option<usize>,
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
    /// For a document scored in windows: the characters `[start, end)` of
    /// the window that decided its score, and how many windows it made.
    pub chunk: Option<ChunkInfo>,
}

/// Where a windowed document's score came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Character offset of the deciding window's start.
    pub start: u32,
    /// Character offset just past its end.
    pub end: u32,
    /// Windows the document was scored in.
    pub windows: usize,
}

/// A ranking, best first, with where the time went.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// The name of the model that scored it.
    pub model: String,
    /// The ranks.
    pub ranks: Vec<Rank>,
    /// Pairs scored: one per document, or per window.
    pub pairs: usize,
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplicaInfo {
    /// Its slot.
    pub replica: usize,
    /// Model directory or hub id.
    pub model: String,
    /// The name its model is served under.
    pub model_name: String,
    /// Weight precision.
    pub dtype: String,
    /// Device.
    pub device: String,
    /// What computes its batches on this machine: the CPU encoder with its
    /// precision and kernel (`cpu encoder, bf16 on amx`; `bf16 on f32` where
    /// the CPU has no bf16 units) or candle with dtype and device. Empty
    /// until the replica is ready.
    pub kernel: String,
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
    /// The GPU it computes on, once it is ready (absent on the CPU).
    pub gpu: Option<GpuInfo>,
}

/// The GPU a replica computes on, as its driver describes it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GpuInfo {
    /// The driver's name for it (`NVIDIA H200`).
    pub name: String,
    /// Compute capability, `major.minor` (`9.0`).
    pub compute_capability: String,
    /// The device's memory, all of it.
    pub memory_total_bytes: u64,
    /// Device memory this replica's process holds, as the driver accounts
    /// it (absent where NVML cannot tell, e.g. a container without the
    /// host's pids).
    pub memory_used_bytes: Option<u64>,
}

/// One served model as `Info` and `/v1/models` report it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// The name requests route to.
    pub name: String,
    /// Model directory or hub id.
    pub source: String,
    /// Whether requests without `model` get it.
    pub default: bool,
    /// Longest pair in tokens (0 if it did not load).
    pub max_length: usize,
    /// Activation applied unless raw scores are asked for (if it loaded).
    #[schema(value_type = Option<String>)]
    pub score_activation: Option<ScoreActivation>,
    /// The replica slots that serve it.
    pub replicas: Vec<usize>,
    /// Of those, the ones serving now.
    pub serving: usize,
    /// Why it could not be loaded, if it could not.
    pub error: Option<String>,
    /// An LLM reranker's prompt template (`None` for an encoder).
    pub prompt_template: Option<String>,
    /// The instruction its requests get when they name none.
    pub default_instruction: Option<String>,
}

/// Records a call of [`Api::recorded`] dropped before it finished (its
/// client went away) as `cancelled`; forgotten once the call finishes.
struct Abandoned<'a> {
    api: &'a Api,
    method: &'a str,
    model: Option<&'a str>,
    started: Instant,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        let label = self.api.core.served_name(self.model).unwrap_or("");
        self.api.core.metrics.observe_request(
            self.method,
            "cancelled",
            label,
            self.started.elapsed().as_secs_f64(),
        );
    }
}

/// A served model's prompt, if it is a loaded LLM reranker.
fn prompt_of(model: &crate::core::ServedModel) -> Option<&ce_model_spec::PromptTemplate> {
    model.loaded.as_ref().ok().and_then(|f| f.prompt.as_ref())
}

/// What is served and with which limits: gRPC `Info` and `GET /info`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Info {
    /// Server version.
    pub version: &'static str,
    /// Where the default model came from.
    pub model: String,
    /// Longest pair in tokens, of the default model.
    pub max_length: usize,
    /// Activation applied unless raw scores are asked for, of the default model.
    #[schema(value_type = String)]
    pub score_activation: ScoreActivation,
    /// Every served model (the default among them).
    pub models: Vec<ModelInfo>,
    /// Windows a long document is split into at most.
    pub max_chunks_per_doc: usize,
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
    /// `inference_requests_total` and the duration histogram under `method`
    /// and the model `model` names (if it is served). Dropping the call
    /// abandons its request: queued pairs are never computed, and it is
    /// recorded as `cancelled` (a client that went away, e.g. whose own
    /// timer beat the server's deadline).
    pub async fn recorded<T>(
        &self,
        method: &str,
        model: Option<&str>,
        deadline: Option<Duration>,
        call: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let abandoned = Abandoned {
            api: self,
            method,
            model,
            started,
        };
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
        std::mem::forget(abandoned);
        self.record(method, model, started, &result);
        result
    }

    /// Records a finished call (for what fails before [`Api::recorded`]
    /// runs), under the model `model` names if it is served, else none:
    /// clients cannot mint label values.
    pub fn record<T>(
        &self,
        method: &str,
        model: Option<&str>,
        started: Instant,
        result: &Result<T, ApiError>,
    ) {
        let status = result
            .as_ref()
            .map_or_else(ApiError::status_label, |_| "ok");
        let label = self.core.served_name(model).unwrap_or("");
        self.core
            .metrics
            .observe_request(method, status, label, started.elapsed().as_secs_f64());
    }

    /// Scores every document against the query with the named model and
    /// ranks them best first; a long document asked to be chunked is
    /// scored in windows and gets their aggregate (`chunk_aggregation`).
    pub async fn rerank(&self, input: RerankInput) -> Result<Ranking, ApiError> {
        let model = self.core.model_index(input.model.as_deref())?;
        if input.top_n == Some(0) {
            return Err(ApiError::InvalidArgument(
                "top_n: must be at least 1 (leave it out to rank every document)".into(),
            ));
        }
        let windows = match input.chunking {
            Some(chunking) => self.window_plan(chunking)?,
            None => WindowPlan::default(),
        };
        self.check_query("query", &input.query)?;
        self.check_instruction(model, input.instruction.as_deref())?;
        self.check_count("documents", input.documents.len())?;
        for (i, d) in input.documents.iter().enumerate() {
            self.check_text(&format!("documents[{i}]"), d)?;
        }
        let documents = input.documents;
        let n = documents.len();
        let scored = self
            .core
            .score(PairsInput {
                model,
                groups: vec![(input.query, documents.clone())],
                truncation: input.truncation,
                windows,
                instruction: input.instruction,
            })
            .await?;
        let rows = self.client_scores(model, &scored, input.raw_scores)?;
        let pairs = rows.len();
        let per_document: Vec<(f32, Option<ChunkInfo>)> = match &scored.windows {
            None => rows.into_iter().map(|s| (s, None)).collect(),
            Some(origins) => {
                let settings = &self.core.settings;
                chunks::aggregate(
                    &rows,
                    origins,
                    n,
                    settings.chunk_aggregation,
                    settings.chunk_top_k,
                )
                .into_iter()
                .map(|d: DocumentScore| {
                    let info = ChunkInfo {
                        start: d.window.0,
                        end: d.window.1,
                        windows: d.windows,
                    };
                    (d.score, Some(info))
                })
                .collect()
            }
        };
        let scores: Vec<f32> = per_document.iter().map(|d| d.0).collect();
        let ranks = ranking(&scores, input.top_n)
            .into_iter()
            .map(|i| Rank {
                index: i,
                score: scores[i],
                document: input.return_documents.then(|| documents[i].clone()),
                chunk: per_document[i].1,
            })
            .collect();
        Ok(Ranking {
            model: self.core.models[model].name.clone(),
            ranks,
            pairs,
            timing: scored.timing,
            tokens: scored.tokens,
        })
    }

    /// The windows a request's chunking asks for, within the server's limits.
    fn window_plan(&self, chunking: Chunking) -> Result<WindowPlan, ApiError> {
        let settings = &self.core.settings;
        let bounded = |field: &str, asked: Option<usize>, most: usize, key: &str| match asked {
            None => Ok(most),
            Some(0) => Err(ApiError::InvalidArgument(format!(
                "{field}: must be at least 1"
            ))),
            Some(n) if n > most => Err(ApiError::InvalidArgument(format!(
                "{field}: {n} exceeds this server's {key} ({most})"
            ))),
            Some(n) => Ok(n),
        };
        let max_windows = bounded(
            "max_chunks_per_doc",
            chunking.max_chunks,
            settings.max_chunks_per_doc,
            "max_chunks_per_doc",
        )?;
        let doc_tokens = match chunking.max_tokens {
            None => 0,
            asked => bounded(
                "max_tokens_per_doc",
                asked,
                settings.max_tokens_per_doc,
                "max_tokens_per_doc",
            )?,
        };
        Ok(WindowPlan {
            max_windows: max_windows as u32,
            overlap: u32::try_from(settings.chunk_overlap_tokens).unwrap_or(u32::MAX),
            doc_tokens: doc_tokens as u32,
        })
    }

    /// Scores `(query, passage)` pairs with the named model, in input order.
    pub async fn score(
        &self,
        model: Option<&str>,
        pairs: Vec<(String, String)>,
        truncation: Truncation,
        raw_scores: bool,
        instruction: Option<String>,
    ) -> Result<ScoreList, ApiError> {
        let model = self.core.model_index(model)?;
        let input = self.pairs_input(model, pairs, truncation, instruction)?;
        let scored = self.core.score(input).await?;
        self.score_list(model, &scored, raw_scores)
    }

    /// Scores one pair of a stream with the named model; `id` names it in
    /// errors.
    pub async fn score_one(
        &self,
        model: Option<&str>,
        id: u64,
        query: String,
        passage: String,
        raw_scores: bool,
        instruction: Option<String>,
    ) -> Result<f32, ApiError> {
        let model = self.core.model_index(model)?;
        // The same checks as every other path, each pair on its own.
        self.check_query(&format!("pair {id}: query"), &query)?;
        self.check_text(&format!("pair {id}: passage"), &passage)?;
        self.check_instruction(model, instruction.as_deref())?;
        let input = PairsInput {
            model,
            groups: vec![(query, vec![passage])],
            instruction,
            ..PairsInput::default()
        };
        let scored = self.core.score(input).await?;
        Ok(self
            .client_scores(model, &scored, raw_scores)?
            .first()
            .copied()
            .unwrap_or(f32::NAN))
    }

    /// Tokenizes pairs exactly as scoring with the named model would,
    /// without scoring them.
    pub async fn tokenize(
        &self,
        model: Option<&str>,
        pairs: Vec<(String, String)>,
        truncation: Truncation,
        instruction: Option<String>,
    ) -> Result<TokenBatch, ApiError> {
        let model = self.core.model_index(model)?;
        let input = self.pairs_input(model, pairs, truncation, instruction)?;
        self.core.tokenize(input).await
    }

    /// Scores pre-tokenized pairs `(input_ids, type_ids)` with the named
    /// model, each checked against its vocabularies and `max_length` first.
    pub async fn score_tokens(
        &self,
        model: Option<&str>,
        pairs: &[(Vec<u32>, Vec<u32>)],
        raw_scores: bool,
    ) -> Result<ScoreList, ApiError> {
        let model = self.core.model_index(model)?;
        self.check_count("pairs", pairs.len())?;
        let tokens = pairs.iter().map(|(ids, _)| ids.len()).sum();
        let mut batch = TokenBatch::with_capacity(pairs.len(), tokens);
        for (i, (ids, types)) in pairs.iter().enumerate() {
            self.check_tokens(model, &format!("pairs[{i}]"), ids, types)?;
            batch.push(ids, types);
        }
        let scored = self.core.score_tokens(model, batch).await?;
        self.score_list(model, &scored, raw_scores)
    }

    /// Every served model, the default first among equals.
    pub fn models(&self) -> Vec<ModelInfo> {
        let core = &self.core;
        core.models
            .iter()
            .enumerate()
            .map(|(i, m)| ModelInfo {
                name: m.name.clone(),
                source: m.source.clone(),
                default: i == core.default_model,
                max_length: m.loaded.as_ref().map_or(0, |f| f.max_length),
                score_activation: m.loaded.as_ref().ok().map(|f| f.activation),
                replicas: m.slots.clone(),
                serving: core.replicas().serving_in(&m.slots),
                error: m.loaded.as_ref().err().cloned(),
                prompt_template: prompt_of(m).map(|p| p.text().to_string()),
                default_instruction: prompt_of(m).map(|p| p.default_instruction().to_string()),
            })
            .collect()
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
                model_name: r.model,
                dtype: r.spec.dtype.to_string(),
                device: r.spec.device.to_string(),
                kernel: r.kernel,
                threads: r.spec.threads,
                serving: r.serving,
                pairs: r.metrics.pairs,
                rss_bytes: r.metrics.rss_bytes,
                error: r.error,
                gpu: r.gpu.map(|g| GpuInfo {
                    name: g.name,
                    compute_capability: g.compute_capability,
                    memory_total_bytes: g.total_memory_bytes,
                    memory_used_bytes: r.gpu_memory_bytes,
                }),
            })
            .collect();
        let default = &core.models[core.default_model];
        let facts = default.loaded.as_ref().ok();
        Info {
            version: env!("CARGO_PKG_VERSION"),
            model: default.source.clone(),
            max_length: facts.map_or(0, |f| f.max_length),
            score_activation: facts.map_or(ScoreActivation::Identity, |f| f.activation),
            models: self.models(),
            max_chunks_per_doc: settings.max_chunks_per_doc,
            max_documents: settings.max_documents,
            max_input_chars: settings.max_input_chars,
            max_batch_tokens: settings.max_batch_tokens,
            max_batch_size: settings.max_batch_size,
            tokenizers: settings.tokenizers,
            replicas,
            ready: core.is_ready(),
        }
    }

    /// The scores a client sees of each row: the model's activation of its
    /// relevant label (sigmoid of one logit, softmax of two), or that
    /// label's logit when `raw`.
    fn client_scores(
        &self,
        model: usize,
        scored: &Scored,
        raw: bool,
    ) -> Result<Vec<f32>, ApiError> {
        let facts = self.core.facts(model)?;
        let (activation, relevant) = (facts.activation, facts.relevant_label);
        Ok(scored
            .rows()
            .map(|row| {
                if raw {
                    row.get(relevant).copied().unwrap_or(f32::NAN)
                } else {
                    activation.score(row, relevant)
                }
            })
            .collect())
    }

    fn score_list(&self, model: usize, scored: &Scored, raw: bool) -> Result<ScoreList, ApiError> {
        Ok(ScoreList {
            scores: self.client_scores(model, scored, raw)?,
            timing: scored.timing,
            tokens: scored.tokens,
        })
    }

    /// Checks `pairs` and groups consecutive pairs that share a query.
    fn pairs_input(
        &self,
        model: usize,
        pairs: Vec<(String, String)>,
        truncation: Truncation,
        instruction: Option<String>,
    ) -> Result<PairsInput, ApiError> {
        self.check_count("pairs", pairs.len())?;
        self.check_instruction(model, instruction.as_deref())?;
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for (i, (query, passage)) in pairs.into_iter().enumerate() {
            self.check_query(&format!("pairs[{i}].query"), &query)?;
            self.check_text(&format!("pairs[{i}].passage"), &passage)?;
            match groups.last_mut() {
                Some((q, passages)) if *q == query => passages.push(passage),
                _ => groups.push((query, vec![passage])),
            }
        }
        Ok(PairsInput {
            model,
            groups,
            truncation,
            windows: WindowPlan::default(),
            instruction,
        })
    }

    /// An instruction goes only to an LLM reranker, within `max_input_chars`.
    fn check_instruction(&self, model: usize, instruction: Option<&str>) -> Result<(), ApiError> {
        let Some(instruction) = instruction else {
            return Ok(());
        };
        if self.core.facts(model)?.prompt.is_none() {
            let name = self.core.models.get(model).map_or("", |m| m.name.as_str());
            return Err(ApiError::InvalidArgument(format!(
                "instruction: model {name:?} is an encoder cross-encoder and takes no instruction (only LLM rerankers such as Qwen3-Reranker do)"
            )));
        }
        self.check_text("instruction", instruction)
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
    fn check_tokens(
        &self,
        model: usize,
        field: &str,
        ids: &[u32],
        types: &[u32],
    ) -> Result<(), ApiError> {
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
        let served = self.core.facts(model)?;
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
