//! The tokenizer stage: text jobs to packed token batches, either on the
//! tokenizer worker with the least outstanding work or, with
//! `--tokenizers 0`, inside the supervisor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ce_common::TokenBatch;
use ce_common::frame::{self, ERROR_INVALID_INPUT, FrameKind, TextJob};
use tokenizer_worker::PairTokenizer;
use tokio::sync::{RwLock, Semaphore};

use crate::metrics::{Metrics, Stage};
use crate::request::ApiError;
use crate::workers::{WorkerFailure, WorkerHandle};

/// How long a job waits for a tokenizer worker to be restarted.
const RESTART_WAIT: Duration = Duration::from_secs(30);
/// How often it looks.
const POLL: Duration = Duration::from_millis(50);

/// Where tokenization happens.
#[derive(Debug)]
pub enum Tokenizers {
    /// In this process, one job at a time (the `--tokenizers 0` baseline).
    InProcess {
        /// The tokenizer.
        tokenizer: Arc<PairTokenizer>,
        /// Bounds the blocking threads used to one.
        permits: Arc<Semaphore>,
        /// Where tokenize durations go.
        metrics: Arc<Metrics>,
    },
    /// In worker processes.
    Workers(WorkerPool),
}

/// The tokenizer workers, and per slot a gate: jobs share it, a suspect
/// job (its worker died holding it) takes it alone, so a second death
/// blames that job and no other.
#[derive(Debug)]
pub struct WorkerPool {
    workers: Arc<RwLock<Vec<WorkerHandle>>>,
    gates: Vec<Arc<RwLock<()>>>,
    deadline: Duration,
    metrics: Arc<Metrics>,
}

impl WorkerPool {
    /// `slots` workers (the list may still be empty: it is filled at
    /// start-up); a worker holding a job longer than `deadline` is killed.
    pub fn new(
        workers: Arc<RwLock<Vec<WorkerHandle>>>,
        slots: usize,
        deadline: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            workers,
            gates: (0..slots).map(|_| Arc::default()).collect(),
            deadline,
            metrics,
        }
    }

    /// The live worker to use: the least loaded, passing over those a
    /// suspect job holds alone.
    async fn pick(&self) -> Option<usize> {
        let ws = self.workers.read().await;
        (0..ws.len().min(self.gates.len()))
            .filter(|&i| ws[i].is_alive())
            .min_by_key(|&i| (self.gates[i].try_read().is_err(), ws[i].outstanding()))
    }

    async fn tokenize(&self, job: &TextJob) -> Result<TokenBatch, ApiError> {
        let mut payload = Vec::new();
        job.encode(&mut payload);
        let (mut suspect, mut deaths, mut waited) = (false, 0, Duration::ZERO);
        loop {
            let Some(slot) = self.pick().await else {
                // All dead: wait for a restart, within reason.
                if waited >= RESTART_WAIT {
                    return Err(ApiError::Unavailable(
                        "no tokenizer worker is serving".into(),
                    ));
                }
                tokio::time::sleep(POLL).await;
                waited += POLL;
                continue;
            };
            let gate = self.gates[slot].clone();
            // Held until the reply: a suspect waits for the jobs on this
            // worker to finish, and new ones wait for it.
            let (_shared, _alone) = if suspect {
                (None, Some(gate.write_owned().await))
            } else {
                (Some(gate.read_owned().await), None)
            };
            // The slot's worker now: it may have been replaced while we waited.
            let worker = self.workers.read().await.get(slot).cloned();
            let Some(worker) = worker.filter(WorkerHandle::is_alive) else {
                continue;
            };
            let sent = Instant::now();
            let reply = worker.submit(
                FrameKind::TextJob,
                job.passages.len() as u32,
                payload.clone(),
            );
            match worker
                .reply_within(reply, self.deadline, "tokenize job")
                .await
            {
                Ok(reply) => {
                    let m = &self.metrics;
                    m.observe_stage(Stage::Tokenize, reply.work.as_secs_f64());
                    let transfer = sent.elapsed().saturating_sub(reply.work);
                    m.observe_stage(Stage::Ring, transfer.as_secs_f64());
                    return decode_reply(reply.kind, &reply.payload);
                }
                Err(WorkerFailure::Died) => {
                    deaths += 1;
                    if suspect {
                        let first = job.first_index as usize;
                        return Err(ApiError::Internal(format!(
                            "a tokenizer worker crashed (or hung) tokenizing documents {first}..{} of this request, {deaths} times, the last time alone; this input is refused",
                            first + job.passages.len()
                        )));
                    }
                    suspect = true;
                }
            }
        }
    }
}

impl Tokenizers {
    /// Tokenizes one job.
    pub async fn tokenize(&self, job: TextJob) -> Result<TokenBatch, ApiError> {
        match self {
            Tokenizers::InProcess {
                tokenizer,
                permits,
                metrics,
            } => {
                let _permit = permits
                    .acquire()
                    .await
                    .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
                let tokenizer = tokenizer.clone();
                let (batch, took) = tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let batch = tokenizer_worker::job::tokenize(&tokenizer, &job);
                    (batch, started.elapsed())
                })
                .await
                .map_err(|e| ApiError::Internal(format!("tokenizer task failed: {e}")))?;
                metrics.observe_stage(Stage::Tokenize, took.as_secs_f64());
                batch.map_err(ApiError::InvalidArgument)
            }
            Tokenizers::Workers(pool) => pool.tokenize(&job).await,
        }
    }
}

fn decode_reply(kind: u16, payload: &[u8]) -> Result<TokenBatch, ApiError> {
    match FrameKind::from_u16(kind) {
        Some(FrameKind::TokenBatch) => frame::decode_token_batch(payload)
            .map_err(|e| ApiError::Internal(format!("tokenizer worker sent {e}"))),
        Some(FrameKind::Error) => match frame::decode_error(payload) {
            Ok((ERROR_INVALID_INPUT, message)) => Err(ApiError::InvalidArgument(message)),
            Ok((_, message)) => Err(ApiError::Internal(format!("tokenizer worker: {message}"))),
            Err(e) => Err(ApiError::Internal(format!("tokenizer worker sent {e}"))),
        },
        _ => Err(ApiError::Internal(format!(
            "tokenizer worker sent a frame of kind {kind}"
        ))),
    }
}
