//! Start-up, serving and shutdown: resolve the model, open both listeners
//! (health answers NOT_SERVING while loading), start the workers, warm
//! every replica up, serve, and on SIGTERM/SIGINT drain and stop.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ce_common::control::{Role, WorkerConfig};
use ce_common::frame::{self, FrameKind};
use ce_common::link::LinkConfig;
use ce_common::spawn::Spawner;
use ce_proto::v1::cross_encoder_server::CrossEncoderServer;
use futures_util::future::{join_all, try_join_all};
use model_worker::BertConfig;
use model_worker::source::ModelFiles;
use tokenizer_worker::PairTokenizer;
use tokio::sync::{RwLock, Semaphore, watch};

use crate::batcher::BatchLimits;
use crate::config::Settings;
use crate::core::{Core, CoreParts, ServedModel};
use crate::grpc::CrossEncoderService;
use crate::metrics::{Metrics, RoleLabels};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::tls::TlsIdentity;
use crate::tokenize::{Tokenizers, WorkerPool};
use crate::workers::{WorkerHandle, WorkerSpec};

/// Name of the tokenizer worker executable.
pub const TOKENIZER_WORKER: &str = "ce-tokenizer-worker";
/// Name of the model worker executable.
pub const MODEL_WORKER: &str = "ce-model-worker";

fn worker_program(settings: &Settings, name: &str) -> anyhow::Result<PathBuf> {
    let dir = match &settings.worker_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("executable has no directory")?,
    };
    let program = dir.join(name);
    if !program.is_file() {
        bail!(
            "worker executable {} not found; build it with `cargo build --release -p supervisor` or point --worker-dir at it",
            program.display()
        );
    }
    Ok(program)
}

/// Starts a worker (and warms a replica up); on failure, a placeholder
/// that carries the reason, for its keeper to retry.
async fn start_ready(spec: WorkerSpec, spawner: &Spawner, warm: Option<&[u8]>) -> WorkerHandle {
    let (role, index) = (spec.role, spec.index);
    let started = WorkerHandle::start(spec, spawner)
        .await
        .map_err(anyhow::Error::from);
    let ready = match (started, warm) {
        (Ok(h), Some(batch)) => warm_up(&h, batch).await.map(|()| h),
        (other, _) => other,
    };
    ready.unwrap_or_else(|e| {
        tracing::error!(?role, index, "worker failed to start: {e:#}");
        WorkerHandle::failed(role, index, format!("{e:#}"))
    })
}

/// Sends a replica one small batch through its rings and checks the answer.
async fn warm_up(replica: &WorkerHandle, payload: &[u8]) -> anyhow::Result<()> {
    match replica
        .submit(FrameKind::TokenBatch, 1, payload.to_vec())
        .await
    {
        Ok(Ok(reply)) if reply.kind == FrameKind::Scores as u16 => Ok(()),
        other => bail!(
            "replica {} failed its warm-up batch: {other:?}",
            replica.index()
        ),
    }
}

/// Replaces dead workers (DESIGN.md §4).
#[derive(Clone)]
struct Keeper {
    spawner: Spawner,
    scheduler: Scheduler,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

impl Keeper {
    /// Watches slot `slot` of `pool`; when its worker dies, starts a new
    /// one with exponential back-off (0.1 s doubling to 30 s) until one is
    /// ready (and, for replicas, has answered `warm_up`).
    async fn keep_alive(
        mut self,
        slot: usize,
        spec: WorkerSpec,
        pool: Arc<RwLock<Vec<WorkerHandle>>>,
        warm_up_batch: Option<Vec<u8>>,
    ) {
        let role = format!("{:?}", spec.role).to_lowercase();
        loop {
            let Some(current) = pool.read().await.get(slot).cloned() else {
                return;
            };
            tokio::select! {
                _ = current.died() => {}
                _ = self.stop.wait_for(|s| *s) => return,
            }
            let mut backoff = Duration::from_millis(100);
            loop {
                if *self.stop.borrow() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                let handle =
                    start_ready(spec.clone(), &self.spawner, warm_up_batch.as_deref()).await;
                let ok = handle.is_alive();
                if ok {
                    tracing::warn!(
                        role,
                        slot,
                        pid = handle.pid(),
                        "worker replaced after it died"
                    );
                    self.metrics
                        .worker_restarts
                        .get_or_create(&RoleLabels { role: role.clone() })
                        .inc();
                } else {
                    tracing::error!(role, slot, ?backoff, "restarting a worker failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                if let Some(s) = pool.write().await.get_mut(slot) {
                    *s = handle;
                }
                if ok {
                    self.scheduler.nudge();
                    break;
                }
            }
        }
    }
}

/// Sets both the API's and the server-wide ("") health status.
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    if serving {
        health
            .set_serving::<CrossEncoderServer<CrossEncoderService>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
    } else {
        health
            .set_not_serving::<CrossEncoderServer<CrossEncoderService>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Runs the server until a termination signal; returns after a clean shutdown.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let spec = settings.model.clone();
    let files = tokio::task::spawn_blocking(move || ModelFiles::resolve(&spec))
        .await?
        .with_context(|| format!("model {:?}", settings.model))?;
    let model_dir = files
        .config
        .parent()
        .context("config.json has no directory")?
        .to_path_buf();
    let bert = BertConfig::from_file(&files.config)?;
    let max_length = settings.max_length.min(bert.max_position_embeddings);
    let tokenizer = Arc::new(PairTokenizer::from_file(&files.tokenizer, max_length)?);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let plans = settings.replica_plans(cores);

    let (ready_tx, ready) = watch::channel(false);
    let replicas: Arc<RwLock<Vec<WorkerHandle>>> = Arc::default();
    let tokenizer_workers: Arc<RwLock<Vec<WorkerHandle>>> = Arc::default();
    let scheduler = Scheduler::start(
        SchedulerConfig {
            limits: BatchLimits {
                max_tokens: settings.max_batch_tokens,
                max_pairs: settings.max_batch_size,
            },
            timeout: Duration::from_millis(settings.batch_timeout_ms),
            max_inflight: settings.max_inflight_per_replica,
            deadline: Duration::from_millis(settings.batch_deadline_ms),
        },
        replicas.clone(),
        metrics.clone(),
    );
    let tokenizers = if settings.tokenizers == 0 {
        Tokenizers::InProcess {
            tokenizer: tokenizer.clone(),
            permits: Arc::new(Semaphore::new(1)),
            metrics: metrics.clone(),
        }
    } else {
        Tokenizers::Workers(WorkerPool::new(
            tokenizer_workers.clone(),
            settings.tokenizers,
            Duration::from_millis(settings.batch_deadline_ms),
            metrics.clone(),
        ))
    };
    let core = Arc::new(Core::new(CoreParts {
        settings: settings.clone(),
        served: ServedModel {
            model: files.origin.clone(),
            max_length,
            activation: bert.score_activation,
            vocab_size: bert.vocab_size,
            type_vocab_size: bert.type_vocab_size,
        },
        plans: plans.clone(),
        metrics: metrics.clone(),
        tokenizers,
        tokenizer_workers: tokenizer_workers.clone(),
        replicas: replicas.clone(),
        scheduler: scheduler.clone(),
        ready,
    }));

    // Listeners first, so clients and orchestrators see NOT_SERVING while loading.
    let grpc_listener = tokio::net::TcpListener::bind(settings.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC on {}", settings.grpc_addr))?;
    let http_listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", settings.http_addr))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, false).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ce_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let (stop_tx, stop) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::load(cert, key)?),
        _ => None,
    };
    let mut grpc_server = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        grpc_server = grpc_server
            .tls_config(tls.grpc())
            .context("gRPC TLS configuration")?;
    }
    let grpc = tokio::spawn(
        grpc_server
            .add_service(health_service)
            .add_service(reflection)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                CrossEncoderServer::new(CrossEncoderService::new(core.clone()))
                    .max_decoding_message_size(settings.max_request_bytes),
                crate::auth::grpc_interceptor(settings.api_key.clone()),
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                stopped(stop.clone()),
            ),
    );
    let router = crate::http::router(core.clone());
    let http = match &tls {
        Some(tls) => tokio::spawn(
            axum::serve(tls.http_listener(http_listener)?, router)
                .with_graceful_shutdown(stopped(stop.clone()))
                .into_future(),
        ),
        None => tokio::spawn(
            axum::serve(http_listener, router)
                .with_graceful_shutdown(stopped(stop.clone()))
                .into_future(),
        ),
    };
    tracing::info!(
        grpc = %settings.grpc_addr,
        http = %settings.http_addr,
        tls = tls.is_some(),
        "listening; loading workers"
    );

    // Workers: tokenizers and replicas start in parallel.
    let spawner = Spawner::start()?;
    let ready_timeout = Duration::from_secs(settings.ready_timeout_s);
    let tokenizer_specs = (0..settings.tokenizers)
        .map(|i| {
            Ok(WorkerSpec {
                role: Role::Tokenizer,
                index: i as u32,
                program: worker_program(&settings, TOKENIZER_WORKER)?,
                config: WorkerConfig {
                    threads: 1,
                    model: files.tokenizer.display().to_string(),
                    max_length: max_length as u32,
                    heartbeat_ms: settings.heartbeat_ms,
                    ..Default::default()
                },
                link: LinkConfig::default(),
                ready_timeout,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let replica_specs = plans
        .iter()
        .enumerate()
        .map(|(i, plan)| {
            // A replica of the default model gets the resolved directory.
            let model = if plan.model == settings.model {
                model_dir.display().to_string()
            } else {
                plan.model.clone()
            };
            Ok(WorkerSpec {
                role: Role::Model,
                index: i as u32,
                program: worker_program(&settings, MODEL_WORKER)?,
                config: WorkerConfig {
                    threads: plan.threads as u32,
                    model,
                    dtype: plan.dtype.clone(),
                    device: plan.device.clone(),
                    max_length: max_length as u32,
                    heartbeat_ms: settings.heartbeat_ms,
                    attention: settings.attention.clone(),
                },
                link: LinkConfig::default(),
                ready_timeout,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Every replica must answer a warm-up batch through its rings. A worker
    // that fails to start is reported and retried by its keeper; the server
    // serves with the capacity it has.
    let warm = tokenizer.encode_query("warm up", &["the supervisor"], Default::default())?;
    let mut payload = Vec::new();
    frame::encode_token_batch(&warm, &mut payload);
    let (started_tokenizers, started_replicas) = tokio::join!(
        join_all(
            tokenizer_specs
                .iter()
                .map(|s| start_ready(s.clone(), &spawner, None))
        ),
        join_all(
            replica_specs
                .iter()
                .map(|s| start_ready(s.clone(), &spawner, Some(&payload)))
        ),
    );
    *tokenizer_workers.write().await = started_tokenizers;
    *replicas.write().await = started_replicas;
    let keeper = Keeper {
        spawner: spawner.clone(),
        scheduler,
        metrics: metrics.clone(),
        stop: stop.clone(),
    };
    for (slot, spec) in tokenizer_specs.into_iter().enumerate() {
        tokio::spawn(
            keeper
                .clone()
                .keep_alive(slot, spec, tokenizer_workers.clone(), None),
        );
    }
    for (slot, spec) in replica_specs.into_iter().enumerate() {
        tokio::spawn(keeper.clone().keep_alive(
            slot,
            spec,
            replicas.clone(),
            Some(payload.clone()),
        ));
    }
    ready_tx.send_replace(true);
    // gRPC health follows the capacity left (replicas and tokenizers alive).
    {
        let (core, health, mut stop) = (core.clone(), health.clone(), stop.clone());
        tokio::spawn(async move {
            let mut serving = None;
            loop {
                let now = core.has_capacity().await;
                if serving != Some(now) {
                    set_health(&health, now).await;
                    serving = Some(now);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }
    tokio::spawn(crate::sampler::run(core.clone(), stop.clone()));
    tracing::info!(
        replicas = plans.len(),
        tokenizers = settings.tokenizers,
        "serving"
    );

    termination().await;
    set_health(&health, false).await;
    stop_tx.send_replace(true);
    // In-flight requests finish (servers drain) within the grace period.
    let grace = Duration::from_millis(settings.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        let _ = grpc.await;
        let _ = http.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(?grace, "grace period over with requests still in flight");
    }
    let all: Vec<WorkerHandle> = replicas
        .read()
        .await
        .iter()
        .chain(tokenizer_workers.read().await.iter())
        .cloned()
        .collect();
    for w in &all {
        w.shutdown(Duration::from_secs(2));
    }
    let exited = tokio::time::timeout(
        Duration::from_secs(5),
        try_join_all(all.iter().map(|w| async {
            w.died().await;
            Ok::<_, ()>(())
        })),
    )
    .await;
    if exited.is_err() {
        tracing::warn!("some workers did not exit in time; they end with us (parent-death signal)");
    }
    tracing::info!("stopped");
    Ok(())
}
