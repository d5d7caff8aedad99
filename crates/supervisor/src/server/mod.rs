//! The server's life: [`startup`] resolves and checks the model, the
//! front ends start on already-bound [`listeners`] (health answers
//! NOT_SERVING while loading), the worker pools start and every replica
//! answers a warm-up batch, then it serves until SIGTERM/SIGINT and
//! [`shutdown`] drains.

pub mod connections;
pub mod listeners;
pub mod shutdown;
pub mod startup;

use std::sync::Arc;
use std::time::Duration;

use ce_common::control::Role;
use ce_common::spawn::Spawner;
use tokio::sync::{Semaphore, watch};

use crate::api::Api;
use crate::batcher::BatchBudget;
use crate::config::Settings;
use crate::core::{Core, CoreParts};
use crate::metrics::Metrics;
use crate::scheduler::{ModelQueue, Scheduler, SchedulerConfig};
use crate::tokenize::Tokenizers;
use crate::workers::{Client, ReplicaClient, Starter, TokenizerClient, WorkerPool, WorkerProcess};
pub use listeners::Listeners;
use shutdown::Shutdown;

/// How often gRPC health is brought in line with the capacity left.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// Runs the server on `listeners` until a termination signal; returns
/// after a clean shutdown.
pub async fn run(settings: Settings, listeners: Listeners) -> anyhow::Result<()> {
    // First of all: from here on SIGTERM and SIGINT drain, never kill.
    let mut termination = shutdown::Termination::install()?;
    let metrics = Arc::new(Metrics::new());
    let models = startup::load_models(&settings).await?;
    let (tokenizer_specs, replica_specs) = startup::worker_specs(&settings, &models)?;
    let pools = Pools {
        replicas: WorkerPool::new(Role::Model, replica_specs.len()),
        tokenizers: WorkerPool::new(Role::Tokenizer, tokenizer_specs.len()),
    };
    let (ready_tx, ready) = watch::channel(false);
    let core = assemble_core(&settings, &models, &pools, metrics.clone(), ready);

    let (stop_tx, stop) = watch::channel(false);
    let (grpc_addr, http_addr) = listeners.addrs()?;
    let front_ends =
        listeners::serve(listeners, Api::new(core.clone()), &settings, stop.clone()).await?;
    if let Some(path) = &settings.addr_file {
        listeners::write_addr_file(path, grpc_addr, http_addr)?;
    }
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "listening; loading workers");

    // Every replica must answer a warm-up batch through its rings. A worker
    // that fails to start is reported and retried by its pool; the server
    // serves with the capacity it has.
    let warm_up = models.warm_ups()?;
    let spawner = Spawner::start()?;
    let starter = Starters {
        spawner: spawner.clone(),
        metrics,
        deadline: Duration::from_millis(settings.batch_deadline_ms),
        stop: stop.clone(),
        max_attempts: settings.max_start_attempts,
    };
    let starting = async {
        tokio::join!(
            pools.tokenizers.start(tokenizer_specs, starter.with(())),
            pools.replicas.start(replica_specs, starter.with(warm_up)),
        )
    };
    tokio::pin!(starting);
    let mut terminated = false;
    tokio::select! {
        _ = &mut starting => {}
        _ = termination.wait() => {
            // Stopped while loading: no more starts; the ones under way
            // finish (or fail) and are drained with the rest.
            terminated = true;
            spawner.close();
            stop_tx.send_replace(true);
            starting.await;
        }
    }
    ready_tx.send_replace(!terminated);
    tokio::spawn(follow_health(
        core.clone(),
        front_ends.health.clone(),
        stop.clone(),
    ));
    tokio::spawn(crate::sampler::run(core.clone(), stop));
    tracing::info!(
        replicas = core.plans.len(),
        tokenizers = settings.tokenizers,
        "serving"
    );

    if !terminated {
        termination.wait().await;
    }
    spawner.close();
    listeners::set_health(&front_ends.health, false).await;
    stop_tx.send_replace(true);
    Shutdown::from_settings(&settings)
        .drain(front_ends, pools.processes())
        .await;
    tracing::info!("stopped");
    Ok(())
}

/// The two worker pools.
struct Pools {
    replicas: WorkerPool<ReplicaClient>,
    tokenizers: WorkerPool<TokenizerClient>,
}

impl Pools {
    /// Every worker process, replicas first.
    fn processes(&self) -> Vec<WorkerProcess> {
        let replicas = self.replicas.members();
        let tokenizers = self.tokenizers.members();
        replicas
            .iter()
            .map(|c| c.process().clone())
            .chain(tokenizers.iter().map(|c| c.process().clone()))
            .collect()
    }
}

/// What both pools' starters share.
struct Starters {
    spawner: Spawner,
    metrics: Arc<Metrics>,
    deadline: Duration,
    stop: watch::Receiver<bool>,
    max_attempts: u32,
}

impl Starters {
    /// A pool's starter, with what its new workers must answer.
    fn with<C: Client>(&self, warm_up: C::WarmUp) -> Starter<C> {
        Starter {
            spawner: self.spawner.clone(),
            metrics: self.metrics.clone(),
            warm_up,
            warm_up_deadline: self.deadline,
            stop: self.stop.clone(),
            max_attempts: self.max_attempts,
        }
    }
}

/// The serving core over the (not yet started) pools, with its scheduler
/// and tokenizer stage.
fn assemble_core(
    settings: &Settings,
    models: &startup::Models,
    pools: &Pools,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
) -> Arc<Core> {
    let deadline = Duration::from_millis(settings.batch_deadline_ms);
    let config = SchedulerConfig {
        budget: BatchBudget {
            max_tokens: settings.max_batch_tokens,
            max_pairs: settings.max_batch_size,
        },
        timeout: Duration::from_millis(settings.batch_timeout_ms),
        max_inflight: settings.max_inflight_per_replica,
        deadline,
    };
    let schedulers = models
        .served
        .iter()
        .map(|m| {
            let queue = ModelQueue {
                name: m.name.clone(),
                slots: m.slots.clone(),
            };
            Scheduler::start(config, queue, pools.replicas.clone(), metrics.clone())
        })
        .collect();
    let tokenizers = if settings.tokenizers == 0 {
        Tokenizers::InProcess {
            tokenizers: models.tokenizers.clone(),
            permits: Arc::new(Semaphore::new(1)),
            metrics: metrics.clone(),
        }
    } else {
        Tokenizers::Workers {
            pool: pools.tokenizers.clone(),
            deadline,
            metrics: metrics.clone(),
        }
    };
    Arc::new(Core::new(CoreParts {
        settings: settings.clone(),
        models: models.served.clone(),
        default_model: models.default_model,
        plans: models.plans.clone(),
        metrics,
        tokenizers,
        tokenizer_pool: pools.tokenizers.clone(),
        replicas: pools.replicas.clone(),
        schedulers,
        job_budget: models.job_budget,
        ready,
    }))
}

/// Keeps gRPC health in line with the capacity left (replicas and
/// tokenizers alive) until `stop`.
async fn follow_health(
    core: Arc<Core>,
    health: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = None;
    loop {
        let now = core.has_capacity();
        if serving != Some(now) {
            listeners::set_health(&health, now).await;
            serving = Some(now);
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
