//! Closed-loop throughput of the bare engine and of a served model, the two
//! measurements every "ours vs X" benchmark repeats.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ce_common::TokenBatch;
use model_worker::{Engine, EngineError};

use crate::server::{ServerError, Supervisor};
use crate::{Request, Workload, WorkloadConfig};

/// Pairs per second of `engine` scoring `batches` one after another (one
/// untimed batch first).
pub fn engine_rate(engine: &Engine, batches: &[TokenBatch]) -> Result<f64, EngineError> {
    if let Some(first) = batches.first() {
        engine.score(first)?;
    }
    let started = Instant::now();
    let mut pairs = 0;
    for b in batches {
        pairs += engine.score(b)?.logits.len() / engine.info().num_labels.max(1);
    }
    Ok(pairs as f64 / started.elapsed().as_secs_f64())
}

/// Why a served measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum ServedError {
    /// The server did not come up.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A request failed.
    #[error("rerank failed: {0}")]
    Rerank(#[from] tonic::Status),
    /// A client task died.
    #[error("client task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Pairs per second of `requests` sent over gRPC `Rerank` by `concurrency`
/// clients, each taking the next request until none is left (one untimed
/// request first).
pub async fn served_rate(
    server: &mut Supervisor,
    requests: Arc<Vec<Request>>,
    concurrency: usize,
) -> Result<f64, ServedError> {
    let client = server.connect(Duration::from_secs(120)).await?;
    if let Some(first) = requests.first() {
        client.clone().rerank(first.to_rerank()).await?;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (mut client, next, requests) = (client.clone(), next.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            let mut pairs = 0usize;
            while let Some(r) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                pairs += client.rerank(r.to_rerank()).await?.into_inner().ranks.len();
            }
            Ok::<_, tonic::Status>(pairs)
        }));
    }
    let mut pairs = 0;
    for t in tasks {
        pairs += t.await??;
    }
    Ok(pairs as f64 / started.elapsed().as_secs_f64())
}

/// The command-line flags every "bare engine vs served" benchmark shares.
#[derive(Debug, Clone, clap::Args)]
pub struct StandardRun {
    /// Model directory.
    #[arg(long, env = "CE_MODEL", default_value = "models/minilm-l6-ce")]
    pub model: String,
    /// Requests per measurement (each 1 query × `--passages` passages).
    #[arg(long, default_value_t = 12)]
    pub requests: usize,
    /// Passages per request.
    #[arg(long, default_value_t = 128)]
    pub passages: usize,
    /// Concurrent gRPC clients for the served runs.
    #[arg(long, default_value_t = 3)]
    pub concurrency: usize,
    /// Workload seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl StandardRun {
    /// The run's requests from the seeded standard workload (at least one).
    pub fn requests(&self) -> Vec<Request> {
        Workload::new(WorkloadConfig {
            seed: self.seed,
            passages: self.passages,
            ..Default::default()
        })
        .take(self.requests.max(1))
        .collect()
    }
}
