//! Start-up: resolve the model and every replica's, check that each
//! replica's dtype, device and layout fit its model (naming the settings
//! key when they do not), and describe the workers to start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ce_common::control::{Role, WorkerConfig, WorkerJob};
use ce_common::link::LinkConfig;
use ce_model_spec::{ModelConfig, ModelFiles, ReplicaSpec};
use tokenizer_worker::PairTokenizer;

use crate::config::Settings;
use crate::core::ServedModel;
use crate::workers::WorkerSpec;

/// Name of the tokenizer worker executable.
pub const TOKENIZER_WORKER: &str = "ce-tokenizer-worker";
/// Name of the model worker executable.
pub const MODEL_WORKER: &str = "ce-model-worker";

/// The model as resolved and checked at start-up.
#[derive(Debug)]
pub struct Model {
    /// What clients are told is served.
    pub served: ServedModel,
    /// The tokenizer, for in-process tokenization and the warm-up batch.
    pub tokenizer: Arc<PairTokenizer>,
    /// `tokenizer.json`, for the tokenizer workers.
    pub tokenizer_file: PathBuf,
    /// Every replica as planned (its model as the settings name it).
    pub plans: Vec<ReplicaSpec>,
    /// The same, each model resolved to its local directory: what the
    /// workers load.
    pub resolved: Vec<ReplicaSpec>,
}

/// Resolves the default model and every replica's (downloading hub ids
/// once, here, so workers start from local files) and checks each replica
/// against its model's `config.json`: a dtype, device or layout that cannot
/// serve it fails the start, naming the key. The default model must load;
/// a replica's own model that does not is left to its worker, which fails
/// to start, is reported and retried while the other replicas serve.
pub async fn load_model(settings: &Settings) -> anyhow::Result<Model> {
    let (default_files, default_config) = resolve(&settings.model)
        .await
        .with_context(|| format!("model {:?}", settings.model))?;
    let max_length = settings
        .max_length
        .min(default_config.max_position_embeddings);
    let tokenizer = Arc::new(PairTokenizer::from_file(
        &default_files.tokenizer,
        max_length,
    )?);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plans = settings.replica_plans(cores);
    let mut resolved = plans.clone();
    for (slot, replica) in resolved.iter_mut().enumerate() {
        let key = settings.replica_key(slot);
        let (files, config) = if replica.model == settings.model {
            (default_files.clone(), default_config.clone())
        } else {
            match resolve(&replica.model).await {
                Ok(found) => found,
                // Like a worker that cannot load: reported in `/info` and
                // retried with back-off while the other replicas serve.
                Err(e) => {
                    tracing::error!(%key, slot, "model {:?}: {e:#}", replica.model);
                    continue;
                }
            }
        };
        replica
            .check(&config)
            .with_context(|| format!("{key}: replica {slot}"))?;
        replica.model = model_dir(&files)?.display().to_string();
    }
    Ok(Model {
        served: ServedModel {
            model: default_files.origin.clone(),
            max_length,
            activation: default_config.score_activation,
            vocab_size: default_config.vocab_size,
            type_vocab_size: default_config.type_vocab_size,
        },
        tokenizer,
        tokenizer_file: default_files.tokenizer,
        plans,
        resolved,
    })
}

async fn resolve(model: &str) -> anyhow::Result<(ModelFiles, ModelConfig)> {
    let model = model.to_string();
    let resolved = tokio::task::spawn_blocking(move || {
        let files = ModelFiles::resolve(&model)?;
        let config = ModelConfig::from_file(&files.config)?;
        Ok::<_, ce_model_spec::SpecError>((files, config))
    })
    .await??;
    Ok(resolved)
}

fn model_dir(files: &ModelFiles) -> anyhow::Result<PathBuf> {
    Ok(files
        .config
        .parent()
        .context("config.json has no directory")?
        .to_path_buf())
}

/// The tokenizer workers' and the replicas' specs.
pub fn worker_specs(
    settings: &Settings,
    model: &Model,
) -> anyhow::Result<(Vec<WorkerSpec>, Vec<WorkerSpec>)> {
    let ready_timeout = Duration::from_secs(settings.ready_timeout_s);
    let spec = |role, slot: usize, program: &Path, job| WorkerSpec {
        role,
        slot: slot as u32,
        program: program.to_path_buf(),
        config: WorkerConfig {
            max_length: model.served.max_length as u32,
            heartbeat_ms: settings.heartbeat_ms,
            job,
        },
        link: LinkConfig::default(),
        ready_timeout,
    };
    let tokenizer_program = worker_program(settings, TOKENIZER_WORKER)?;
    let tokenizers = (0..settings.tokenizers)
        .map(|slot| {
            let job = WorkerJob::Tokenizer {
                tokenizer: model.tokenizer_file.clone(),
            };
            spec(Role::Tokenizer, slot, &tokenizer_program, job)
        })
        .collect();
    let model_program = worker_program(settings, MODEL_WORKER)?;
    let replicas = model
        .resolved
        .iter()
        .enumerate()
        .map(|(slot, replica)| {
            let job = WorkerJob::Model(replica.clone());
            spec(Role::Model, slot, &model_program, job)
        })
        .collect();
    Ok((tokenizers, replicas))
}

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
