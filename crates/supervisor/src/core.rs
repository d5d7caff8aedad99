//! [`Core`]: the serving pipeline under the API layer. Admits a request,
//! tokenizes it in chunks, queues the pairs and awaits the scores; knows
//! the worker pools for readiness, `/info` and `/metrics`.

use std::sync::Arc;

use ce_common::TokenBatch;
use ce_common::control::MetricsSnapshot;
use ce_common::frame::{self, QueryIds, QueryJob, TextJob};
use ce_model_spec::{ReplicaSpec, ScoreActivation};
use futures_util::future::try_join_all;
use tokenizer_worker::Truncation;
use tokio::sync::watch;

use crate::api::ApiError;
use crate::config::Settings;
use crate::metrics::{Metrics, ProcessFigures};
use crate::request::{Admission, Answer, PendingRequest, Scored};
use crate::scheduler::{Scheduler, Work};
use crate::tokenize::Tokenizers;
use crate::workers::{Client, ReplicaClient, TokenizerClient, WorkerFigures, WorkerPool};

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

/// How large one tokenize job may be: at most `passages` passages (its
/// reply must fit the worker's ring) and `bytes` payload bytes (the job
/// must fit the ring to the worker). Sized at start-up so that a job of
/// one passage of `max_input_chars` always fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobBudget {
    /// Passages per job at most.
    pub passages: usize,
    /// Payload bytes per job at most.
    pub bytes: usize,
}

/// One replica as `Info` and `/info` report it.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    /// Its slot.
    pub slot: usize,
    /// Model, dtype, device, attention, threads.
    pub spec: ReplicaSpec,
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
    /// The replicas' specs, by slot.
    pub plans: Vec<ReplicaSpec>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    tokenizers: Tokenizers,
    tokenizer_pool: WorkerPool<TokenizerClient>,
    replicas: WorkerPool<ReplicaClient>,
    scheduler: Scheduler,
    admission: Arc<Admission>,
    job_budget: JobBudget,
    ready: watch::Receiver<bool>,
}

/// The parts [`Core::new`] assembles.
#[derive(Debug)]
pub struct CoreParts {
    /// Settings.
    pub settings: Settings,
    /// The model.
    pub served: ServedModel,
    /// Replica specs.
    pub plans: Vec<ReplicaSpec>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where tokenization happens.
    pub tokenizers: Tokenizers,
    /// The tokenizer workers (none with `--tokenizers 0`).
    pub tokenizer_pool: WorkerPool<TokenizerClient>,
    /// The replicas.
    pub replicas: WorkerPool<ReplicaClient>,
    /// The scheduler.
    pub scheduler: Scheduler,
    /// How large a tokenize job may be.
    pub job_budget: JobBudget,
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
            tokenizer_pool: parts.tokenizer_pool,
            replicas: parts.replicas,
            scheduler: parts.scheduler,
            admission: Arc::new(Admission::default()),
            job_budget: parts.job_budget,
            ready: parts.ready,
        }
    }

    /// True once every replica answered its warm-up batch.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    fn check_serving(&self) -> Result<(), ApiError> {
        if !self.is_ready() {
            return Err(ApiError::Unavailable("the model is still loading".into()));
        }
        if self.replicas.serving() == 0 {
            return Err(ApiError::Unavailable(
                "no model replica is serving (restarting)".into(),
            ));
        }
        Ok(())
    }

    /// Tokenizes every pair: each group's query once, then its passages in
    /// jobs against the query's ids; batches in input order with the index
    /// of their first pair.
    async fn tokenize_pairs(
        &self,
        input: PairsInput,
    ) -> Result<Vec<(usize, TokenBatch)>, ApiError> {
        let truncation = input.truncation;
        let queries = try_join_all(input.groups.iter().map(|(query, _)| {
            self.tokenizers.query(QueryJob {
                query: query.clone(),
                truncation: truncation.code(),
            })
        }))
        .await?;
        let mut jobs = Vec::new();
        let mut first = 0;
        for ((_, passages), query) in input.groups.into_iter().zip(&queries) {
            let n = passages.len();
            cut_jobs(
                first,
                query,
                passages,
                truncation,
                self.job_budget,
                &mut jobs,
            );
            first += n;
        }
        try_join_all(jobs.into_iter().map(|(first, job)| async move {
            Ok::<_, ApiError>((first, self.tokenizers.tokenize(job).await?))
        }))
        .await
    }

    /// Scores the pairs; logits come back in input order. Admitted twice:
    /// by pairs on arrival (`max_queue_pairs`), and by the tokens of model
    /// work once tokenized (`max_queue_tokens`), before any pair is queued.
    pub async fn score(&self, input: PairsInput) -> Result<Scored, ApiError> {
        self.check_serving()?;
        let n = input.len();
        let (request, answer) =
            PendingRequest::admit(n, &self.admission, self.settings.max_queue_pairs)?;
        let queued = async {
            let batches = self.tokenize_pairs(input).await?;
            let tokens = batches.iter().map(|(_, b)| b.total_tokens()).sum::<usize>();
            request.admit_tokens(tokens, self.settings.max_queue_tokens)?;
            request.tokenized(tokens as u64);
            for (first_index, batch) in batches {
                self.scheduler.submit(Work {
                    request: request.clone(),
                    first_index,
                    batch,
                })?;
            }
            Ok::<_, ApiError>(())
        };
        if let Err(e) = queued.await {
            request.fail(e.clone());
            return Err(e);
        }
        answered(request, answer).await
    }

    /// Tokenizes the pairs exactly as [`Core::score`] would (same workers,
    /// same jobs) without scoring them: one batch in input order. The
    /// pairs count against `max_queue_pairs` while they are tokenized.
    pub async fn tokenize(&self, input: PairsInput) -> Result<TokenBatch, ApiError> {
        let n = input.len();
        let (_admitted, _answer) =
            PendingRequest::admit(n, &self.admission, self.settings.max_queue_pairs)?;
        let parts = self.tokenize_pairs(input).await?;
        let tokens = parts.iter().map(|(_, b)| b.total_tokens()).sum();
        let mut batch = TokenBatch::with_capacity(n, tokens);
        for (_, part) in &parts {
            batch.extend_from(part);
        }
        Ok(batch)
    }

    /// Scores pairs that arrive as token ids, skipping the tokenizer stage;
    /// every pair must have passed the API's token checks.
    pub async fn score_tokens(&self, batch: TokenBatch) -> Result<Scored, ApiError> {
        self.check_serving()?;
        let (request, answer) =
            PendingRequest::admit(batch.len(), &self.admission, self.settings.max_queue_pairs)?;
        let tokens = batch.total_tokens();
        request.admit_tokens(tokens, self.settings.max_queue_tokens)?;
        request.tokenized(tokens as u64);
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

    /// Replicas with their spec, whether they serve, their figures and
    /// why they failed to start (if they did).
    pub fn replica_status(&self) -> Vec<ReplicaStatus> {
        let replicas = self.replicas.members();
        self.plans
            .iter()
            .enumerate()
            .map(|(slot, spec)| {
                let process = replicas.get(slot).map(Client::process);
                ReplicaStatus {
                    slot,
                    spec: spec.clone(),
                    serving: process.is_some_and(|p| p.is_alive()),
                    metrics: process.map(|p| p.metrics()).unwrap_or_default(),
                    error: process.and_then(|p| p.start_error().map(String::from)),
                }
            })
            .collect()
    }

    /// True when at least one replica and (unless tokenizing in process)
    /// one tokenizer serve.
    pub fn has_capacity(&self) -> bool {
        self.is_ready()
            && self.replicas.serving() > 0
            && (self.settings.tokenizers == 0 || self.tokenizer_pool.serving() > 0)
    }

    /// Every worker slot's figures (replicas with their spec) and the
    /// supervisor's own, for `/metrics`; also refreshes the pool gauges.
    pub fn process_figures(&self) -> ProcessFigures {
        let mut workers: Vec<(WorkerFigures, Option<ReplicaSpec>)> = Vec::new();
        for (slot, replica) in self.replicas.members().iter().enumerate() {
            workers.push((replica.process().figures(), self.plans.get(slot).cloned()));
        }
        for tokenizer in self.tokenizer_pool.members().iter() {
            workers.push((tokenizer.process().figures(), None));
        }
        let m = &self.metrics;
        m.active_replicas.set(self.replicas.serving() as i64);
        m.active_tokenizers
            .set(self.tokenizer_pool.serving() as i64);
        m.tokenizer_queue
            .set(self.tokenizer_pool.in_flight() as i64);
        ProcessFigures {
            supervisor_rss_bytes: ce_common::procstat::resident_bytes().unwrap_or(0),
            workers,
            cpu_percent: m.cpu_percent.lock().map(|c| c.clone()).unwrap_or_default(),
        }
    }

    /// The replica pool.
    pub fn replicas(&self) -> &WorkerPool<ReplicaClient> {
        &self.replicas
    }

    /// The tokenizer pool (empty with `--tokenizers 0`).
    pub fn tokenizer_pool(&self) -> &WorkerPool<TokenizerClient> {
        &self.tokenizer_pool
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

/// The tokenize jobs of one group: its passages against the query's ids,
/// cut so that no job passes `budget` (in passages or bytes; a job holds
/// at least one passage), each with the index of its first pair.
fn cut_jobs(
    first: usize,
    query: &QueryIds,
    passages: Vec<String>,
    truncation: Truncation,
    budget: JobBudget,
    jobs: &mut Vec<(usize, TextJob)>,
) {
    let base = frame::text_job_base_len(query.ids.len());
    let mut next = first;
    let mut job: Vec<String> = Vec::new();
    let mut bytes = base;
    let mut flush = |job: &mut Vec<String>, next: &mut usize| {
        if job.is_empty() {
            return;
        }
        let passages = std::mem::take(job);
        let n = passages.len();
        jobs.push((
            *next,
            TextJob {
                query: query.clone(),
                passages,
                truncation: truncation.code(),
                first_index: *next as u32,
            },
        ));
        *next += n;
    };
    for passage in passages {
        let len = frame::text_job_passage_len(passage.len());
        if !job.is_empty() && (job.len() == budget.passages || bytes + len > budget.bytes) {
            flush(&mut job, &mut next);
            bytes = base;
        }
        bytes += len;
        job.push(passage);
    }
    flush(&mut job, &mut next);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_cut_by_passages_and_by_bytes_in_order() {
        let query = QueryIds {
            tokens: 3,
            ids: vec![1, 2, 3],
        };
        let budget = JobBudget {
            passages: 4,
            bytes: 1000,
        };
        let passages: Vec<String> = [10, 10, 10, 10, 10, 600, 600, 5000, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| format!("{i}{}", "x".repeat(n)))
            .collect();
        let mut jobs = Vec::new();
        cut_jobs(
            7,
            &query,
            passages.clone(),
            Truncation::Right,
            budget,
            &mut jobs,
        );
        let shape: Vec<(usize, usize)> = jobs.iter().map(|(f, j)| (*f, j.passages.len())).collect();
        // Four by count; then 10 + 600 fit, a second 600 does not; the
        // 5000-byte passage goes alone (over the budget by itself); then 1.
        assert_eq!(shape, [(7, 4), (11, 2), (13, 1), (14, 1), (15, 1)]);
        for (first, job) in &jobs {
            assert_eq!(job.first_index as usize, *first);
            assert!(job.encoded_len() <= budget.bytes || job.passages.len() == 1);
        }
        let again: Vec<String> = jobs.into_iter().flat_map(|(_, j)| j.passages).collect();
        assert_eq!(again, passages);
    }
}
