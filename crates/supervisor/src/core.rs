//! [`Core`]: what every API endpoint calls. Validates limits, admits the
//! request, tokenizes it in chunks, queues the pairs and awaits the scores.

use std::sync::Arc;

use ce_common::TokenBatch;
use ce_common::control::{MetricsSnapshot, Role};
use ce_common::frame::TextJob;
use futures_util::future::try_join_all;
use model_worker::ScoreActivation;
use tokenizer_worker::Truncation;
use tokio::sync::{RwLock, watch};

use crate::config::{ReplicaPlan, Settings};
use crate::metrics::{Metrics, ProcessFigures};
use crate::request::{Admission, Answer, ApiError, PendingRequest, Scored};
use crate::scheduler::{Scheduler, Work};
use crate::tokenize::Tokenizers;
use crate::workers::{WorkerFigures, WorkerHandle};

/// Pairs to score: consecutive groups sharing a query, in input order.
#[derive(Debug, Clone, Default)]
pub struct PairsInput {
    /// `(query, passages)` groups.
    pub groups: Vec<(String, Vec<String>)>,
    /// How over-long pairs are handled.
    pub truncation: Truncation,
}

impl PairsInput {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|(_, p)| p.len()).sum()
    }

    /// True without pairs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One replica as `Info` and `/info` report it.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    /// Its index.
    pub index: usize,
    /// Model, dtype, device, threads.
    pub plan: ReplicaPlan,
    /// Whether it serves now.
    pub serving: bool,
    /// Its latest figures.
    pub metrics: MetricsSnapshot,
    /// Why it failed to start, while it has not.
    pub error: Option<String>,
}

/// What is being served, for `Info` and `/info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServedModel {
    /// Where the model came from.
    pub model: String,
    /// Longest pair in tokens.
    pub max_length: usize,
    /// Activation applied unless raw scores are asked for.
    pub activation: ScoreActivation,
    /// Token ids the model knows (ids at or above it are refused).
    pub vocab_size: usize,
    /// Segment ids the model knows.
    pub type_vocab_size: usize,
}

/// The serving core shared by the gRPC and HTTP front ends.
#[derive(Debug)]
pub struct Core {
    /// The settings in effect.
    pub settings: Settings,
    /// The model.
    pub served: ServedModel,
    /// The replicas' plans (model, dtype, device, threads), by index.
    pub plans: Vec<ReplicaPlan>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    tokenizers: Tokenizers,
    tokenizer_workers: Arc<RwLock<Vec<WorkerHandle>>>,
    replicas: Arc<RwLock<Vec<WorkerHandle>>>,
    scheduler: Scheduler,
    admission: Arc<Admission>,
    ready: watch::Receiver<bool>,
}

/// The parts [`Core::new`] assembles.
#[derive(Debug)]
pub struct CoreParts {
    /// Settings.
    pub settings: Settings,
    /// The model.
    pub served: ServedModel,
    /// Replica plans.
    pub plans: Vec<ReplicaPlan>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where tokenization happens.
    pub tokenizers: Tokenizers,
    /// Tokenizer worker handles (empty with `--tokenizers 0`).
    pub tokenizer_workers: Arc<RwLock<Vec<WorkerHandle>>>,
    /// Replica handles.
    pub replicas: Arc<RwLock<Vec<WorkerHandle>>>,
    /// The scheduler.
    pub scheduler: Scheduler,
    /// Readiness.
    pub ready: watch::Receiver<bool>,
}

impl Core {
    /// Assembles the core.
    pub fn new(parts: CoreParts) -> Self {
        Self {
            settings: parts.settings,
            served: parts.served,
            plans: parts.plans,
            metrics: parts.metrics,
            tokenizers: parts.tokenizers,
            tokenizer_workers: parts.tokenizer_workers,
            replicas: parts.replicas,
            scheduler: parts.scheduler,
            admission: Arc::new(Admission::default()),
            ready: parts.ready,
        }
    }

    /// True once every replica answered its warm-up batch.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Checks one text field against `max_input_chars`.
    pub fn check_text(&self, field: &str, text: &str) -> Result<(), ApiError> {
        let limit = self.settings.max_input_chars;
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
    pub fn check_count(&self, field: &str, n: usize) -> Result<(), ApiError> {
        if n == 0 {
            return Err(ApiError::InvalidArgument(format!(
                "{field}: must not be empty"
            )));
        }
        if n > self.settings.max_documents {
            return Err(ApiError::InvalidArgument(format!(
                "{field}: {n} exceed max_documents ({})",
                self.settings.max_documents
            )));
        }
        Ok(())
    }

    /// Checks one pre-tokenized pair (`field` names it in the message):
    /// ids and segments parallel, not empty, within `max_length`, and every
    /// id within the model's vocabularies. A batch that passes cannot make
    /// a model worker fail.
    pub fn check_tokens(&self, field: &str, ids: &[u32], types: &[u32]) -> Result<(), ApiError> {
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
        let max = self.served.max_length;
        if ids.len() > max {
            return bad(format!(
                "input_ids: {} tokens exceed max_length ({max})",
                ids.len()
            ));
        }
        let first_at_or_above = |v: &[u32], limit: usize| {
            v.iter()
                .enumerate()
                .find(|(_, x)| **x as usize >= limit)
                .map(|(i, x)| (i, *x))
        };
        let vocab = self.served.vocab_size;
        if let Some((i, id)) = first_at_or_above(ids, vocab) {
            return bad(format!(
                "input_ids[{i}]: token id {id} is outside the vocabulary ({vocab} ids)"
            ));
        }
        let segments = self.served.type_vocab_size;
        if let Some((i, t)) = first_at_or_above(types, segments) {
            return bad(format!(
                "type_ids[{i}]: segment {t} is outside the model's {segments} segments"
            ));
        }
        Ok(())
    }

    async fn check_serving(&self) -> Result<(), ApiError> {
        if !self.is_ready() {
            return Err(ApiError::Unavailable("the model is still loading".into()));
        }
        if !self.replicas.read().await.iter().any(|r| r.is_alive()) {
            return Err(ApiError::Unavailable(
                "no model replica is serving (restarting)".into(),
            ));
        }
        Ok(())
    }

    /// The tokenize jobs of `input`: each group cut into `tokenize_chunk`
    /// passages, with the index of its first pair.
    fn text_jobs(&self, input: PairsInput) -> Vec<(usize, TextJob)> {
        let chunk = self.settings.tokenize_chunk;
        let mut jobs = Vec::new();
        let mut first = 0usize;
        for (query, passages) in input.groups {
            for part in passages.chunks(chunk) {
                jobs.push((
                    first,
                    TextJob {
                        query: query.clone(),
                        passages: part.to_vec(),
                        truncation: input.truncation.code(),
                        first_index: first as u32,
                    },
                ));
                first += part.len();
            }
        }
        jobs
    }

    /// Scores the pairs; logits come back in input order.
    pub async fn score(&self, input: PairsInput) -> Result<Scored, ApiError> {
        self.check_serving().await?;
        let n = input.len();
        let (request, answer) =
            PendingRequest::admit(n, &self.admission, self.settings.max_queue_pairs)?;
        let jobs = self.text_jobs(input);
        let tokenized = try_join_all(jobs.into_iter().map(|(first_index, job)| {
            let request = request.clone();
            async move {
                let batch = self.tokenizers.tokenize(job).await?;
                request.tokenized(batch.total_tokens() as u64);
                self.scheduler.submit(Work {
                    request,
                    first_index,
                    batch,
                })
            }
        }))
        .await;
        if let Err(e) = tokenized {
            request.fail(e.clone());
            return Err(e);
        }
        answered(request, answer).await
    }

    /// Tokenizes the pairs exactly as [`Core::score`] would (same workers,
    /// same chunks) without scoring them: one batch in input order. The
    /// pairs count against `max_queue_pairs` while they are tokenized.
    pub async fn tokenize(&self, input: PairsInput) -> Result<TokenBatch, ApiError> {
        let n = input.len();
        let (_admitted, _answer) =
            PendingRequest::admit(n, &self.admission, self.settings.max_queue_pairs)?;
        let jobs = self.text_jobs(input);
        let parts = try_join_all(
            jobs.into_iter()
                .map(|(_, job)| self.tokenizers.tokenize(job)),
        )
        .await?;
        let tokens = parts.iter().map(TokenBatch::total_tokens).sum();
        let mut batch = TokenBatch::with_capacity(n, tokens);
        for part in &parts {
            batch.extend_from(part);
        }
        Ok(batch)
    }

    /// Scores pairs that arrive as token ids, skipping the tokenizer stage;
    /// every pair must have passed [`Core::check_tokens`].
    pub async fn score_tokens(&self, batch: TokenBatch) -> Result<Scored, ApiError> {
        self.check_serving().await?;
        let (request, answer) =
            PendingRequest::admit(batch.len(), &self.admission, self.settings.max_queue_pairs)?;
        request.tokenized(batch.total_tokens() as u64);
        if let Err(e) = self.scheduler.submit(Work {
            request: request.clone(),
            first_index: 0,
            batch,
        }) {
            request.fail(e.clone());
            return Err(e);
        }
        answered(request, answer).await
    }

    /// Applies the model's activation unless `raw`.
    pub fn client_score(&self, logit: f32, raw: bool) -> f32 {
        if raw {
            logit
        } else {
            self.served.activation.apply(logit)
        }
    }

    /// Replicas with their plan, whether they serve, their figures and
    /// why they failed to start (if they did).
    pub async fn replica_status(&self) -> Vec<ReplicaStatus> {
        let replicas = self.replicas.read().await;
        self.plans
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let handle = replicas.get(i);
                ReplicaStatus {
                    index: i,
                    plan: plan.clone(),
                    serving: handle.is_some_and(|h| h.is_alive()),
                    metrics: handle.map(|h| h.metrics()).unwrap_or_default(),
                    error: handle.and_then(|h| h.start_error().map(String::from)),
                }
            })
            .collect()
    }

    /// True when at least one replica and (unless tokenizing in process)
    /// one tokenizer serve.
    pub async fn has_capacity(&self) -> bool {
        self.is_ready()
            && self.replicas.read().await.iter().any(|r| r.is_alive())
            && (self.settings.tokenizers == 0 || self.tokenizers_serving().await > 0)
    }

    /// Every worker slot's figures (replicas with their plan) and the
    /// supervisor's own, for `/metrics`; also refreshes the pool gauges.
    pub async fn process_figures(&self) -> ProcessFigures {
        let mut workers: Vec<(WorkerFigures, Option<ReplicaPlan>)> = Vec::new();
        for (i, replica) in self.replicas.read().await.iter().enumerate() {
            workers.push((replica.figures(), self.plans.get(i).cloned()));
        }
        let mut tokenize_jobs = 0;
        for tokenizer in self.tokenizer_workers.read().await.iter() {
            tokenize_jobs += tokenizer.outstanding();
            workers.push((tokenizer.figures(), None));
        }
        let m = &self.metrics;
        let serving = |role| {
            workers
                .iter()
                .filter(|(w, _)| w.role == role && w.alive)
                .count()
        };
        m.active_replicas.set(serving(Role::Model) as i64);
        m.active_tokenizers.set(serving(Role::Tokenizer) as i64);
        m.tokenizer_queue.set(tokenize_jobs as i64);
        ProcessFigures {
            supervisor_rss_bytes: ce_common::procstat::resident_bytes().unwrap_or(0),
            workers,
            cpu_percent: m.cpu_percent.lock().map(|c| c.clone()).unwrap_or_default(),
        }
    }

    /// Tokenizer workers serving.
    pub async fn tokenizers_serving(&self) -> usize {
        self.tokenizer_workers
            .read()
            .await
            .iter()
            .filter(|w| w.is_alive())
            .count()
    }
}

/// Lets go of the submitting side's handle (the batches hold their own)
/// and waits for the request's answer.
async fn answered(request: Arc<PendingRequest>, answer: Answer) -> Result<Scored, ApiError> {
    drop(request);
    answer
        .await
        .map_err(|_| ApiError::Internal("the request was dropped unanswered".into()))?
}
