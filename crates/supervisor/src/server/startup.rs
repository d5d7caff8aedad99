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
use crate::core::{JobBudget, ServedModel};
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
    /// Ring sizes every worker gets: large enough for the largest frame
    /// the limits allow.
    pub link: LinkConfig,
    /// How large a tokenize job may be, within those rings.
    pub job_budget: JobBudget,
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
    if settings.max_batch_tokens < max_length {
        bail!(
            "max_batch_tokens ({}) must hold one pair of max_length ({max_length}) tokens, the model's effective length",
            settings.max_batch_tokens
        );
    }
    let labels = default_config.declared_labels.unwrap_or(1);
    let (link, job_budget) = frames_for(settings, max_length, labels)?;
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
        link,
        job_budget,
    })
}

/// The rings' sizes and the tokenize job budget the limits imply: every
/// frame the limits allow must fit its ring, or the start fails naming the
/// keys. To a worker: a batch of `max_batch_size` pairs and
/// `max_batch_tokens` tokens, and a text job of one passage of
/// `max_input_chars` (4 bytes a character at most) with a query of
/// `max_length` ids. From a worker: a job's `tokenize_chunk` pairs of
/// `max_length` tokens, a batch's logits, an error message.
fn frames_for(
    settings: &Settings,
    max_length: usize,
    labels: usize,
) -> anyhow::Result<(LinkConfig, JobBudget)> {
    use ce_common::frame;
    let text_bytes = settings.max_input_chars.saturating_mul(4);
    let to_worker = [
        frame::token_batch_len(settings.max_batch_size, settings.max_batch_tokens)
            .try_into()
            .unwrap_or(usize::MAX),
        frame::text_job_base_len(max_length)
            .saturating_add(frame::text_job_passage_len(text_bytes)),
        text_bytes.saturating_add(4),
    ];
    let chunk_tokens = settings.tokenize_chunk.saturating_mul(max_length);
    let from_worker = [
        frame::token_batch_len(settings.tokenize_chunk, chunk_tokens)
            .try_into()
            .unwrap_or(usize::MAX),
        settings
            .max_batch_size
            .saturating_mul(labels.max(16))
            .saturating_mul(4)
            .saturating_add(8),
        4 + frame::MAX_ERROR_MESSAGE,
    ];
    let needed = |sizes: &[usize]| sizes.iter().copied().max().unwrap_or(0);
    let link = LinkConfig::carrying(needed(&to_worker), needed(&from_worker)).with_context(|| {
        format!(
            "the limits need frames over the largest ring ({} MiB): lower max_input_chars ({}), max_batch_tokens ({}), max_batch_size ({}) or tokenize_chunk ({})",
            ce_common::link::MAX_RING_CAPACITY >> 20,
            settings.max_input_chars,
            settings.max_batch_tokens,
            settings.max_batch_size,
            settings.tokenize_chunk
        )
    })?;
    let budget = JobBudget {
        passages: settings.tokenize_chunk,
        bytes: link.max_to_worker_payload(),
    };
    Ok((link, budget))
}

async fn resolve(model: &str) -> anyhow::Result<(ModelFiles, ModelConfig)> {
    let model = model.to_string();
    let resolved = tokio::task::spawn_blocking(move || {
        let files = ModelFiles::resolve(&model)?;
        let config = ModelConfig::from_file(&files.config)?;
        files.weights.check_shapes(&config)?;
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
        link: model.link,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rings_carry_every_frame_the_limits_allow_or_the_start_fails() {
        let defaults = Settings::default();
        let (link, budget) = frames_for(&defaults, 512, 1).unwrap();
        assert_eq!(
            link,
            LinkConfig::default(),
            "the defaults fit the default rings"
        );
        assert_eq!(budget.passages, defaults.tokenize_chunk);
        // One passage of max_input_chars four-byte characters fits a job.
        let one_passage = ce_common::frame::text_job_base_len(512)
            + ce_common::frame::text_job_passage_len(4 * defaults.max_input_chars);
        assert!(budget.bytes >= one_passage);

        let long_texts = Settings {
            max_input_chars: 1_000_000,
            ..Settings::default()
        };
        let (link, budget) = frames_for(&long_texts, 512, 1).unwrap();
        assert!(link.max_to_worker_payload() >= 4_000_000 && budget.bytes >= 4_000_000);
        assert_eq!(link.from_worker, LinkConfig::default().from_worker);

        let huge = Settings {
            max_input_chars: 300_000_000,
            ..Settings::default()
        };
        let e = frames_for(&huge, 512, 1).unwrap_err().to_string();
        assert!(e.contains("max_input_chars (300000000)"), "{e}");
    }
}
