//! The tokenizer stage: text jobs to packed token batches, either on the
//! tokenizer worker with the least outstanding work or, with
//! `--tokenizers 0`, inside the supervisor.

use std::sync::Arc;
use std::time::Duration;

use ce_common::TokenBatch;
use ce_common::frame::{self, ERROR_INVALID_INPUT, FrameKind, TextJob};
use tokenizer_worker::PairTokenizer;
use tokio::sync::{RwLock, Semaphore};

use crate::request::ApiError;
use crate::workers::{WorkerFailure, WorkerHandle};

/// Tries on other workers when the one holding a job dies.
const TRIES: usize = 3;
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
    },
    /// In worker processes.
    Workers {
        /// The tokenizer workers.
        workers: Arc<RwLock<Vec<WorkerHandle>>>,
        /// A worker holding a job longer is killed (the job moves on).
        deadline: Duration,
    },
}

impl Tokenizers {
    /// Tokenizes one job.
    pub async fn tokenize(&self, job: TextJob) -> Result<TokenBatch, ApiError> {
        match self {
            Tokenizers::InProcess { tokenizer, permits } => {
                let _permit = permits
                    .acquire()
                    .await
                    .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
                let tokenizer = tokenizer.clone();
                tokio::task::spawn_blocking(move || {
                    tokenizer_worker::job::tokenize(&tokenizer, &job)
                })
                .await
                .map_err(|e| ApiError::Internal(format!("tokenizer task failed: {e}")))?
                .map_err(ApiError::InvalidArgument)
            }
            Tokenizers::Workers { workers, deadline } => {
                let mut payload = Vec::new();
                job.encode(&mut payload);
                let (mut tries, mut waited) = (0, Duration::ZERO);
                while tries < TRIES {
                    let worker = {
                        let ws = workers.read().await;
                        ws.iter()
                            .filter(|w| w.is_alive())
                            .min_by_key(|w| w.outstanding())
                            .cloned()
                    };
                    let Some(worker) = worker else {
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
                    tries += 1;
                    let mut reply = worker.submit(
                        FrameKind::TextJob,
                        job.passages.len() as u32,
                        payload.clone(),
                    );
                    let reply = match tokio::time::timeout(*deadline, &mut reply).await {
                        Ok(r) => r,
                        Err(_) => {
                            worker.kill(&format!("tokenize job over its deadline of {deadline:?}"));
                            reply.await
                        }
                    };
                    match reply {
                        Ok(Ok(reply)) => return decode_reply(reply.kind, &reply.payload),
                        Ok(Err(WorkerFailure::Died)) | Err(_) => continue,
                    }
                }
                Err(ApiError::Unavailable(format!(
                    "tokenizer workers died {TRIES} times on this request"
                )))
            }
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
