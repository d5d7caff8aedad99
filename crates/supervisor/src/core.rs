//! [`Core`]: the serving pipeline under the API layer. Routes a request to
//! its model, admits it, tokenizes it in jobs (a long document in windows),
//! queues the pairs on its model's scheduler and awaits the scores; knows
//! the worker pools for readiness, `/info` and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;

use ce_common::TokenBatch;
use ce_common::control::{GpuDevice, MetricsSnapshot};
use ce_common::frame::{self, QueryJob, TextJob, WindowPlan};
use ce_model_spec::{ModelConfig, ReplicaSpec, ScoreActivation};
use futures_util::future::try_join_all;
use tokenizer_worker::Truncation;
use tokio::sync::watch;

use crate::api::ApiError;
use crate::chunks::RowOrigin;
use crate::config::Settings;
use crate::gpu::GpuMemory;
use crate::metrics::{Metrics, NamedReplica, ProcessFigures};
use crate::request::{Admission, Answer, PendingRequest, Scored};
use crate::scheduler::{Scheduler, Work};
use crate::tokenize::Tokenizers;
use crate::workers::{
    Client, ReplicaClient, Tokenized, TokenizerClient, WorkerFigures, WorkerPool,
};

/// Pairs to score: consecutive groups sharing a query, in input order.
#[derive(Debug, Clone, Default)]
pub struct PairsInput {
    /// The served model's index ([`Core::model_index`]).
    pub model: usize,
    /// `(query, passages)` groups.
    pub groups: Vec<(String, Vec<String>)>,
    /// How over-long pairs are handled.
    pub truncation: Truncation,
    /// Whether long passages are scored in windows instead (then the
    /// truncation does not apply), and how.
    pub windows: WindowPlan,
    /// An LLM reranker's instruction (`None`: the model's default).
    pub instruction: Option<String>,
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

/// How large one tokenize job may be: at most `passages` passages, or
/// `rows` windows for a windowed job (its reply must fit the worker's
/// ring), and `bytes` payload bytes (the job must fit the ring to the
/// worker). Sized at start-up so that a job of one passage of
/// `max_input_chars` always fits, in `max_chunks_per_doc` windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobBudget {
    /// Passages per job at most.
    pub passages: usize,
    /// Pairs (windows) a job's answer may hold at most.
    pub rows: usize,
    /// Payload bytes per job at most.
    pub bytes: usize,
}

impl JobBudget {
    /// The passages a job may hold under `plan`: as many as their windows
    /// (`max_windows` each at most) fit `rows`, one at least.
    pub fn passages_under(&self, plan: WindowPlan) -> usize {
        match plan.max_windows as usize {
            0 => self.passages,
            windows => (self.rows / windows).clamp(1, self.passages),
        }
    }
}

/// One replica as `Info` and `/info` report it.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    /// Its slot.
    pub slot: usize,
    /// The name of the model it serves.
    pub model: String,
    /// Model, dtype, device, attention, threads.
    pub spec: ReplicaSpec,
    /// Whether it serves now.
    pub serving: bool,
    /// Its latest figures.
    pub metrics: MetricsSnapshot,
    /// Why it failed to start, while it has not.
    pub error: Option<String>,
    /// What computes its batches, as its worker reported when ready (empty
    /// until one has).
    pub kernel: String,
    /// The GPU it computes on, as its worker reported when ready.
    pub gpu: Option<GpuDevice>,
    /// Device memory its worker holds, as the driver accounts it (`None`
    /// on the CPU, or where the driver cannot tell).
    pub gpu_memory_bytes: Option<u64>,
}

/// One served model: its name, where it comes from, its replicas and,
/// once loaded, what it takes.
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// The name requests route to (`model`).
    pub name: String,
    /// Model directory or hub id, as the settings give it.
    pub source: String,
    /// The replica slots that serve it.
    pub slots: Vec<usize>,
    /// Its facts, or why it could not be loaded.
    pub loaded: Result<ModelFacts, String>,
}

/// What a loaded model takes and gives.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelFacts {
    /// Longest pair in tokens (`max_length` capped by the model).
    pub max_length: usize,
    /// Activation applied unless raw scores are asked for.
    pub activation: ScoreActivation,
    /// Token ids the model knows (ids at or above it are refused).
    pub vocab_size: usize,
    /// Segment ids accepted: the model's token types, or any (`usize::MAX`)
    /// where the model ignores segments (RoBERTa, DistilBERT, ModernBERT).
    pub type_vocab_size: usize,
    /// Logits per pair.
    pub labels: usize,
    /// Which of them is the relevance score.
    pub relevant_label: usize,
    /// The prompt an LLM reranker scores pairs in (it takes an
    /// instruction); `None` for an encoder. Set at start-up from the
    /// settings (`server/startup.rs`, `prompts_of`).
    pub prompt: Option<ce_model_spec::PromptTemplate>,
}

impl ModelFacts {
    /// The facts of a model with `config` under `settings`.
    pub fn of(settings: &Settings, config: &ModelConfig) -> Self {
        Self {
            max_length: settings.max_length.min(config.max_sequence_len()),
            activation: config.score_activation,
            vocab_size: config.vocab_size,
            type_vocab_size: config.accepted_token_types(),
            labels: config.declared_labels.unwrap_or(1),
            relevant_label: config.relevant_label,
            prompt: None,
        }
    }
}

/// The serving core shared by the gRPC and HTTP front ends.
#[derive(Debug)]
pub struct Core {
    /// The settings in effect.
    pub settings: Settings,
    /// The served models; [`PairsInput::model`] indexes them.
    pub models: Vec<ServedModel>,
    /// The model requests without `model` get.
    pub default_model: usize,
    /// When the server started, in seconds since the epoch.
    pub started_s: u64,
    /// The replicas' specs, by slot.
    pub plans: Vec<ReplicaSpec>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    tokenizers: Tokenizers,
    tokenizer_pool: WorkerPool<TokenizerClient>,
    replicas: WorkerPool<ReplicaClient>,
    /// One per model: batches never mix models.
    schedulers: Vec<Scheduler>,
    admission: Arc<Admission>,
    job_budget: JobBudget,
    ready: watch::Receiver<bool>,
    gpu_memory: GpuMemory,
}

/// The parts [`Core::new`] assembles.
#[derive(Debug)]
pub struct CoreParts {
    /// Settings.
    pub settings: Settings,
    /// The served models.
    pub models: Vec<ServedModel>,
    /// The default model's index.
    pub default_model: usize,
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
    /// One scheduler per model, in the models' order.
    pub schedulers: Vec<Scheduler>,
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
            models: parts.models,
            default_model: parts.default_model,
            started_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            plans: parts.plans,
            metrics: parts.metrics,
            tokenizers: parts.tokenizers,
            tokenizer_pool: parts.tokenizer_pool,
            replicas: parts.replicas,
            schedulers: parts.schedulers,
            admission: Arc::new(Admission::default()),
            job_budget: parts.job_budget,
            ready: parts.ready,
            gpu_memory: GpuMemory::default(),
        }
    }

    /// True once every replica answered its warm-up batch.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// The index of the model named `name` (`None` or empty: the default);
    /// an unknown name is NOT_FOUND, listing the names served. Names match
    /// exactly (`" minilm"` is not `"minilm"`), as the OpenAPI document's
    /// `enum` of them says.
    pub fn model_index(&self, name: Option<&str>) -> Result<usize, ApiError> {
        let name = match name {
            None | Some("") => return Ok(self.default_model),
            Some(name) => name,
        };
        self.models
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| {
                let served: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
                ApiError::NotFound(format!(
                    "model {name:?} is not served here; served: {}",
                    served.join(", ")
                ))
            })
    }

    /// The served name `name` routes to (`None` or empty: the default's),
    /// if it is served.
    pub fn served_name(&self, name: Option<&str>) -> Option<&str> {
        let index = self.model_index(name).ok()?;
        Some(self.models[index].name.as_str())
    }

    /// The facts of model `model`, or UNAVAILABLE with why it did not load.
    pub fn facts(&self, model: usize) -> Result<&ModelFacts, ApiError> {
        match self.models.get(model).map(|m| &m.loaded) {
            Some(Ok(facts)) => Ok(facts),
            Some(Err(why)) => Err(ApiError::Unavailable(why.clone())),
            None => Err(ApiError::Internal(format!("no model {model}"))),
        }
    }

    fn check_serving(&self, model: usize) -> Result<(), ApiError> {
        if !self.is_ready() {
            return Err(ApiError::Unavailable("the model is still loading".into()));
        }
        self.facts(model)?;
        let served = &self.models[model];
        if self.replicas.serving_in(&served.slots) == 0 {
            return Err(ApiError::Unavailable(format!(
                "no replica of model {:?} is serving (restarting)",
                served.name
            )));
        }
        Ok(())
    }

    fn scheduler(&self, model: usize) -> Result<&Scheduler, ApiError> {
        self.schedulers
            .get(model)
            .ok_or_else(|| ApiError::Internal(format!("no scheduler for model {model}")))
    }

    /// Tokenizes every pair: each group's query once, then its passages in
    /// jobs against the query's ids; answers in input order with the index
    /// of their first passage.
    async fn tokenize_pairs(&self, input: PairsInput) -> Result<Vec<(usize, Tokenized)>, ApiError> {
        // Windows never truncate a passage, and keep the start of a long query.
        let truncation = match input.windows.is_on() {
            true => Truncation::Right,
            false => input.truncation,
        };
        let model = input.model as u32;
        let queries = try_join_all(input.groups.iter().map(|(query, _)| {
            self.tokenizers.query(QueryJob {
                model,
                query: query.clone(),
                truncation: truncation.code(),
                instruction: input.instruction.clone(),
            })
        }))
        .await?;
        let mut jobs = Vec::new();
        let mut first = 0;
        let budget = JobBudget {
            passages: self.job_budget.passages_under(input.windows),
            ..self.job_budget
        };
        for ((_, passages), query) in input.groups.into_iter().zip(&queries) {
            let n = passages.len();
            let job = TextJob {
                query: query.clone(),
                truncation: truncation.code(),
                model,
                windows: input.windows,
                ..TextJob::default()
            };
            cut_jobs(first, job, passages, budget, &mut jobs);
            first += n;
        }
        try_join_all(jobs.into_iter().map(|(first, job)| async move {
            Ok::<_, ApiError>((first, self.tokenizers.tokenize(job).await?))
        }))
        .await
    }

    /// Scores the pairs; logits come back in input order, one row per
    /// pair — or per window, with where each row came from, when the input
    /// asks for windows. Admitted twice: by pairs on arrival
    /// (`max_queue_pairs`; the windows beyond one a document count too,
    /// once known), and by the tokens of model work once tokenized
    /// (`max_queue_tokens`), before any pair is queued.
    pub async fn score(&self, input: PairsInput) -> Result<Scored, ApiError> {
        let model = input.model;
        self.check_serving(model)?;
        let scheduler = self.scheduler(model)?;
        let n = input.len();
        let (request, answer) =
            PendingRequest::admit(n, &self.admission, self.settings.max_queue_pairs)?;
        let queued = async {
            let parts = self.tokenize_pairs(input).await?;
            let origins = row_origins(&parts);
            let rows = parts.iter().map(|(_, t)| t.batch.len()).sum::<usize>();
            request.grow(rows, self.settings.max_queue_pairs)?;
            let tokens = parts
                .iter()
                .map(|(_, t)| t.batch.total_tokens())
                .sum::<usize>();
            request.admit_tokens(tokens, self.settings.max_queue_tokens)?;
            request.tokenized(tokens as u64);
            let mut first_row = 0;
            for (_, part) in parts {
                let len = part.batch.len();
                scheduler.submit(Work {
                    request: request.clone(),
                    first_index: first_row,
                    batch: part.batch,
                })?;
                first_row += len;
            }
            Ok::<_, ApiError>(origins)
        };
        let origins = match queued.await {
            Ok(origins) => origins,
            Err(e) => {
                request.fail(e.clone());
                return Err(e);
            }
        };
        let mut scored = answered(request, answer).await?;
        scored.windows = origins;
        Ok(scored)
    }

    /// Tokenizes the pairs exactly as [`Core::score`] would (same workers,
    /// same jobs) without scoring them: one batch in input order. The
    /// pairs count against `max_queue_pairs` while they are tokenized.
    pub async fn tokenize(&self, input: PairsInput) -> Result<TokenBatch, ApiError> {
        let n = input.len();
        let (_admitted, _answer) =
            PendingRequest::admit(n, &self.admission, self.settings.max_queue_pairs)?;
        self.facts(input.model)?;
        let parts = self.tokenize_pairs(input).await?;
        let tokens = parts.iter().map(|(_, t)| t.batch.total_tokens()).sum();
        let mut batch = TokenBatch::with_capacity(n, tokens);
        for (_, part) in &parts {
            batch.extend_from(&part.batch);
        }
        Ok(batch)
    }

    /// Scores pairs that arrive as token ids, skipping the tokenizer stage;
    /// every pair must have passed the API's token checks.
    pub async fn score_tokens(&self, model: usize, batch: TokenBatch) -> Result<Scored, ApiError> {
        self.check_serving(model)?;
        let scheduler = self.scheduler(model)?;
        let (request, answer) =
            PendingRequest::admit(batch.len(), &self.admission, self.settings.max_queue_pairs)?;
        let tokens = batch.total_tokens();
        request.admit_tokens(tokens, self.settings.max_queue_tokens)?;
        request.tokenized(tokens as u64);
        if let Err(e) = scheduler.submit(Work {
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
        let gpu_memory = self.gpu_memory_of(&replicas);
        self.plans
            .iter()
            .enumerate()
            .map(|(slot, spec)| {
                let process = replicas.get(slot).map(Client::process);
                ReplicaStatus {
                    slot,
                    model: self.model_of_slot(slot).to_string(),
                    spec: spec.clone(),
                    serving: process.is_some_and(|p| p.is_alive()),
                    metrics: process.map(|p| p.metrics()).unwrap_or_default(),
                    error: process.and_then(|p| p.start_error().map(String::from)),
                    kernel: process.map(|p| p.kernel().to_string()).unwrap_or_default(),
                    gpu: process.and_then(|p| p.gpu().cloned()),
                    gpu_memory_bytes: process.and_then(|p| gpu_memory.get(&p.pid()).copied()),
                }
            })
            .collect()
    }

    /// The name of the model replica `slot` serves.
    pub fn model_of_slot(&self, slot: usize) -> &str {
        self.models
            .iter()
            .find(|m| m.slots.contains(&slot))
            .map_or("", |m| m.name.as_str())
    }

    /// Pairs scored so far, over every model.
    pub fn pairs_scored(&self) -> u64 {
        self.models
            .iter()
            .map(|m| self.metrics.model_pairs(&m.name).get())
            .sum()
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
        let mut workers: Vec<(WorkerFigures, Option<NamedReplica>)> = Vec::new();
        let replicas = self.replicas.members();
        let gpu_memory = self.gpu_memory_of(&replicas);
        for (slot, replica) in replicas.iter().enumerate() {
            let named = self.plans.get(slot).map(|spec| NamedReplica {
                name: self.model_of_slot(slot).to_string(),
                spec: spec.clone(),
            });
            let mut figures = replica.process().figures();
            figures.gpu_memory_bytes = gpu_memory.get(&figures.pid).copied();
            workers.push((figures, named));
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

    /// Device memory held by each serving GPU replica's process, by pid
    /// (the driver is asked only when some replica computes on a GPU).
    fn gpu_memory_of(&self, replicas: &[ReplicaClient]) -> HashMap<u32, u64> {
        let on_gpu: Vec<u32> = replicas
            .iter()
            .map(Client::process)
            .filter(|p| p.is_alive() && p.gpu().is_some())
            .map(|p| p.pid())
            .collect();
        self.gpu_memory.used_by(&on_gpu)
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

/// Where each row of a windowed request's answer came from (`None` when
/// no job was windowed: one row per passage, in order).
fn row_origins(parts: &[(usize, Tokenized)]) -> Option<Vec<RowOrigin>> {
    if parts.iter().all(|(_, t)| t.windows.is_none()) {
        return None;
    }
    let mut origins = Vec::new();
    for (first, part) in parts {
        match &part.windows {
            Some(windows) => origins.extend(windows.iter().map(|w| RowOrigin {
                document: first + w.passage as usize,
                start: w.start,
                end: w.end,
            })),
            None => origins.extend((0..part.batch.len()).map(|i| RowOrigin {
                document: first + i,
                start: 0,
                end: 0,
            })),
        }
    }
    Some(origins)
}

/// The tokenize jobs of one group: its passages in copies of `job` (the
/// query's ids, model, truncation, windows), cut so that no job passes
/// `budget` (in passages or bytes; a job holds at least one passage), each
/// with the index of its first pair.
fn cut_jobs(
    first: usize,
    job: TextJob,
    passages: Vec<String>,
    budget: JobBudget,
    jobs: &mut Vec<(usize, TextJob)>,
) {
    let base = frame::text_job_base_len(job.query.ids.len());
    let mut next = first;
    let mut batch: Vec<String> = Vec::new();
    let mut bytes = base;
    let mut flush = |batch: &mut Vec<String>, next: &mut usize| {
        if batch.is_empty() {
            return;
        }
        let passages = std::mem::take(batch);
        let n = passages.len();
        jobs.push((
            *next,
            TextJob {
                passages,
                first_index: *next as u32,
                ..job.clone()
            },
        ));
        *next += n;
    };
    for passage in passages {
        let len = frame::text_job_passage_len(passage.len());
        if !batch.is_empty() && (batch.len() == budget.passages || bytes + len > budget.bytes) {
            flush(&mut batch, &mut next);
            bytes = base;
        }
        bytes += len;
        batch.push(passage);
    }
    flush(&mut batch, &mut next);
}

#[cfg(test)]
mod tests {
    use super::*;

    use ce_common::frame::QueryIds;

    #[test]
    fn windowed_jobs_hold_as_many_passages_as_their_windows_fit() {
        let budget = JobBudget {
            passages: 32,
            rows: 32,
            bytes: 1 << 20,
        };
        let plan = |max_windows| WindowPlan {
            max_windows,
            ..WindowPlan::default()
        };
        assert_eq!(budget.passages_under(plan(0)), 32, "no windows");
        assert_eq!(budget.passages_under(plan(10)), 3);
        assert_eq!(budget.passages_under(plan(64)), 1, "one at least");
    }

    #[test]
    fn jobs_are_cut_by_passages_and_by_bytes_in_order() {
        let query = QueryIds {
            tokens: 3,
            ids: vec![1, 2, 3],
        };
        let budget = JobBudget {
            passages: 4,
            rows: 4,
            bytes: 1000,
        };
        let passages: Vec<String> = [10, 10, 10, 10, 10, 600, 600, 5000, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| format!("{i}{}", "x".repeat(n)))
            .collect();
        let mut jobs = Vec::new();
        let job = TextJob {
            query,
            ..TextJob::default()
        };
        cut_jobs(7, job, passages.clone(), budget, &mut jobs);
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
