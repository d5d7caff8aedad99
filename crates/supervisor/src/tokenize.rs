//! The tokenizer stage: text jobs to packed token batches, either on the
//! tokenizer worker with the least work in flight or, with
//! `--tokenizers 0`, inside the supervisor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ce_common::TokenBatch;
use ce_common::frame::TextJob;
use tokenizer_worker::PairTokenizer;
use tokio::sync::Semaphore;

use crate::api::ApiError;
use crate::metrics::{Metrics, Stage};
use crate::workers::isolation::{AfterDeath, after_death};
use crate::workers::{JobError, Share, TokenizerClient, WorkerPool};

/// How long a job waits for a tokenizer worker to be restarted.
const RESTART_WAIT: Duration = Duration::from_secs(30);

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
    Workers {
        /// The tokenizer workers.
        pool: WorkerPool<TokenizerClient>,
        /// A worker holding a job longer is killed.
        deadline: Duration,
        /// Where tokenize and transfer durations go.
        metrics: Arc<Metrics>,
    },
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
            Tokenizers::Workers {
                pool,
                deadline,
                metrics,
            } => on_workers(pool, &job, *deadline, metrics).await,
        }
    }
}

/// Tokenizes `job` on the least loaded worker. A job whose worker died
/// holding it is retried alone on a worker; if it kills that one too it is
/// refused ([`after_death`]).
async fn on_workers(
    pool: &WorkerPool<TokenizerClient>,
    job: &TextJob,
    deadline: Duration,
    metrics: &Metrics,
) -> Result<TokenBatch, ApiError> {
    let (mut alone, mut deaths) = (false, 0);
    loop {
        let share = if alone {
            Share::Alone
        } else {
            Share::Shared(usize::MAX)
        };
        let Some(lease) = pool.wait_lease(share, RESTART_WAIT).await else {
            return Err(ApiError::Unavailable(
                "no tokenizer worker is serving".into(),
            ));
        };
        match lease.client().tokenize(job, deadline).await {
            Ok(done) => {
                metrics.observe_stage(Stage::Tokenize, done.work.as_secs_f64());
                let transfer = done.round_trip.saturating_sub(done.work);
                metrics.observe_stage(Stage::Ring, transfer.as_secs_f64());
                return Ok(done.output);
            }
            Err(JobError::Died) => {
                deaths += 1;
                if let AfterDeath::Refuse(()) = after_death(vec![()], alone) {
                    let first = job.first_index as usize;
                    return Err(ApiError::Internal(format!(
                        "a tokenizer worker crashed (or hung) tokenizing documents {first}..{} of this request, {deaths} times, the last time alone; this input is refused",
                        first + job.passages.len()
                    )));
                }
                alone = true;
            }
            Err(JobError::Refused(message)) => return Err(ApiError::InvalidArgument(message)),
            Err(JobError::Failed(message)) => return Err(ApiError::Internal(message)),
        }
    }
}
