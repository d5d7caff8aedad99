//! The tokenizer stage: text jobs to packed token batches (or windows),
//! with the job's model's tokenizer, either on the tokenizer worker with
//! the least work in flight (each holds every model's tokenizer) or, with
//! `--tokenizers 0`, inside the supervisor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ce_common::TokenBatch;
use ce_common::frame::{QueryIds, QueryJob, TextJob};
use tokenizer_worker::PairTokenizer;
use tokio::sync::Semaphore;

use crate::api::ApiError;
use crate::metrics::{Metrics, Stage};
use crate::workers::isolation::{AfterDeath, after_death};
use crate::workers::{JobError, Share, Tokenized, TokenizerClient, Worked, WorkerPool};

/// How long a job waits for a tokenizer worker to be restarted.
const RESTART_WAIT: Duration = Duration::from_secs(30);

/// Where tokenization happens.
#[derive(Debug)]
pub enum Tokenizers {
    /// In this process, one job at a time (the `--tokenizers 0` baseline).
    InProcess {
        /// Each model's tokenizer (`None` where it did not load).
        tokenizers: Vec<Option<Arc<PairTokenizer>>>,
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
    /// Tokenizes a request's query once, for every pair of it.
    pub async fn query(&self, job: QueryJob) -> Result<QueryIds, ApiError> {
        match self {
            Tokenizers::InProcess { .. } => {
                let model = job.model;
                self.in_process(model, move |t| tokenizer_worker::job::query(t, &job))
                    .await
            }
            Tokenizers::Workers {
                pool,
                deadline,
                metrics,
            } => {
                let what = "tokenizing the query of this request".to_string();
                let (job, deadline) = (&job, *deadline);
                on_workers(pool, metrics, what, |c| async move {
                    c.query(job, deadline).await
                })
                .await
            }
        }
    }

    /// Tokenizes one job (into windows, if it asks for them).
    pub async fn tokenize(&self, job: TextJob) -> Result<Tokenized, ApiError> {
        match self {
            Tokenizers::InProcess { .. } => {
                self.in_process(job.model, move |t| {
                    if job.windows.is_on() {
                        let windowed = tokenizer_worker::job::tokenize_windows(t, &job)?;
                        Ok(Tokenized {
                            batch: windowed.batch,
                            windows: Some(windowed.windows),
                        })
                    } else {
                        // On the calling thread: in process the supervisor
                        // is the pipeline experiments' one-thread baseline.
                        let batch: TokenBatch = tokenizer_worker::job::tokenize(t, &job, false)?;
                        Ok(Tokenized {
                            batch,
                            windows: None,
                        })
                    }
                })
                .await
            }
            Tokenizers::Workers {
                pool,
                deadline,
                metrics,
            } => {
                let first = job.first_index as usize;
                let what = format!(
                    "tokenizing documents {first}..{} of this request",
                    first + job.passages.len()
                );
                let (job, deadline) = (&job, *deadline);
                on_workers(pool, metrics, what, |c| async move {
                    c.tokenize(job, deadline).await
                })
                .await
            }
        }
    }

    /// Runs `work` on model `model`'s in-process tokenizer, one job at a time.
    async fn in_process<T: Send + 'static>(
        &self,
        model: u32,
        work: impl FnOnce(&PairTokenizer) -> Result<T, String> + Send + 'static,
    ) -> Result<T, ApiError> {
        let Tokenizers::InProcess {
            tokenizers,
            permits,
            metrics,
        } = self
        else {
            return Err(ApiError::Internal("no in-process tokenizer".into()));
        };
        let Some(Some(tokenizer)) = tokenizers.get(model as usize) else {
            return Err(ApiError::Internal(format!(
                "no tokenizer for model {model}"
            )));
        };
        let _permit = permits
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
        let tokenizer = tokenizer.clone();
        let (output, took) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let output = work(&tokenizer);
            (output, started.elapsed())
        })
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer task failed: {e}")))?;
        metrics.observe_stage(Stage::Tokenize, took.as_secs_f64());
        output.map_err(ApiError::InvalidArgument)
    }
}

/// Runs `call` on the least loaded worker. A job whose worker died holding
/// it (or answered it with nonsense, and was killed for it) is retried
/// alone on a worker; if it kills that one too it is refused
/// ([`after_death`]). `what` names the job in that refusal.
async fn on_workers<T, F, Fut>(
    pool: &WorkerPool<TokenizerClient>,
    metrics: &Metrics,
    what: String,
    call: F,
) -> Result<T, ApiError>
where
    F: Fn(TokenizerClient) -> Fut,
    Fut: Future<Output = Result<Worked<T>, JobError>>,
{
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
        match call(lease.client().clone()).await {
            Ok(done) => {
                metrics.observe_stage(Stage::Tokenize, done.work.as_secs_f64());
                metrics.observe_stage(Stage::Wait, done.waited.as_secs_f64());
                metrics.observe_stage(Stage::Ring, done.transfer().as_secs_f64());
                return Ok(done.output);
            }
            Err(JobError::Died) => {
                deaths += 1;
                if let AfterDeath::Refuse(()) = after_death(vec![()], alone) {
                    return Err(ApiError::Internal(format!(
                        "a tokenizer worker crashed, hung or answered nonsense {what}, {deaths} times, the last time alone; this input is refused"
                    )));
                }
                alone = true;
            }
            Err(JobError::Refused(message)) => return Err(ApiError::InvalidArgument(message)),
            Err(JobError::Failed(message)) => return Err(ApiError::Internal(message)),
        }
    }
}
