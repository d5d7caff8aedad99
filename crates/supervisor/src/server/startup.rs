//! Start-up: resolve every replica's model, group the replicas by the name
//! they serve under, check that each replica's dtype, device and layout fit
//! its model (naming the settings key when they do not), and describe the
//! workers to start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ce_common::TokenBatch;
use ce_common::control::{Role, TokenizerSpec, WorkerConfig, WorkerJob};
use ce_common::link::LinkConfig;
use ce_model_spec::{ModelConfig, ModelFiles, PromptTemplate, ReplicaSpec};
use tokenizer_worker::PairTokenizer;

use crate::config::Settings;
use crate::core::{JobBudget, ModelFacts, ServedModel};
use crate::workers::WorkerSpec;

/// Name of the tokenizer worker executable.
pub const TOKENIZER_WORKER: &str = "ce-tokenizer-worker";
/// Name of the model worker executable.
pub const MODEL_WORKER: &str = "ce-model-worker";

/// The models as resolved and checked at start-up.
#[derive(Debug)]
pub struct Models {
    /// Every served model, in order of first appearance among the
    /// replicas; a job's `model` is an index here.
    pub served: Vec<ServedModel>,
    /// The model requests without `model` get.
    pub default_model: usize,
    /// Each model's tokenizer (`None` where its model did not load), for
    /// in-process tokenization and the warm-up batches.
    pub tokenizers: Vec<Option<Arc<PairTokenizer>>>,
    /// Each model's `tokenizer.json` and length, for the tokenizer workers.
    pub tokenizer_specs: Vec<Option<TokenizerSpec>>,
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

impl Models {
    /// One warm-up batch per replica slot, tokenized by its model's
    /// tokenizer (an empty batch where the model did not load: that
    /// replica's worker fails before it is asked).
    pub fn warm_ups(&self) -> anyhow::Result<Vec<TokenBatch>> {
        let mut batches = Vec::with_capacity(self.plans.len());
        for slot in 0..self.plans.len() {
            let model = self.served.iter().position(|m| m.slots.contains(&slot));
            let tokenizer = model.and_then(|m| self.tokenizers[m].as_ref());
            batches.push(match tokenizer {
                Some(t) => t.encode_query("warm up", &["the supervisor"], Default::default())?,
                None => TokenBatch::default(),
            });
        }
        Ok(batches)
    }
}

/// Resolves every replica's model (downloading hub ids once, here, so
/// workers start from local files), groups the replicas by the name they
/// serve under, and checks each replica against its model's `config.json`:
/// a dtype, device or layout that cannot serve it fails the start, naming
/// the key. The default model must load; another model that does not is
/// served as unavailable (requests naming it get UNAVAILABLE with the
/// reason) while its replicas fail to start, are reported and retried.
pub async fn load_models(settings: &Settings) -> anyhow::Result<Models> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plans = settings.replica_plans(cores);
    let mut served = group_by_name(settings, &plans)?;
    let default_name = settings.default_model_name();
    let default_model = served
        .iter()
        .position(|m| m.name == default_name)
        .unwrap_or(0);
    let mut files = Vec::with_capacity(served.len());
    for (index, model) in served.iter_mut().enumerate() {
        match resolve(&model.source).await {
            Ok((found, mut config)) => {
                let chosen = model
                    .slots
                    .iter()
                    .find_map(|&slot| settings.instances.get(slot)?.relevant_label);
                if let Some(label) = chosen {
                    let labels = config.declared_labels.unwrap_or(1);
                    if label >= labels {
                        bail!(
                            "model {:?}: relevant_label {label} is not one of its {labels} labels",
                            model.name
                        );
                    }
                    config.relevant_label = label;
                }
                model.loaded = Ok(ModelFacts::of(settings, &config));
                files.push(Some((found, config)));
            }
            // The default model must load; the others are like a worker
            // that cannot: reported in `/info`, retried with back-off
            // while the other models serve.
            Err(e) if index == default_model => {
                return Err(e).with_context(|| format!("model {:?}", model.source));
            }
            Err(e) => {
                tracing::error!(model = %model.name, "model {:?}: {e:#}", model.source);
                model.loaded = Err(format!("model {:?} cannot be loaded: {e:#}", model.source));
                files.push(None);
            }
        }
    }
    let facts: Vec<&ModelFacts> = served
        .iter()
        .filter_map(|m| m.loaded.as_ref().ok())
        .collect();
    let max_length = facts.iter().map(|f| f.max_length).max().unwrap_or(1);
    if settings.max_batch_tokens < max_length {
        bail!(
            "max_batch_tokens ({}) must hold one pair of max_length ({max_length}) tokens, the model's effective length",
            settings.max_batch_tokens
        );
    }
    let labels = facts.iter().map(|f| f.labels).max().unwrap_or(1);
    let (link, job_budget) = frames_for(settings, max_length, labels)?;
    let prompts = prompts_of(settings, &served, &files)?;
    let global = settings.prompt_template.is_some() || settings.instruction.is_some();
    if global && files.iter().all(Option::is_some) && prompts.iter().all(Option::is_none) {
        bail!("prompt_template and instruction are for LLM rerankers, and no served model is one");
    }
    for (model, prompt) in served.iter_mut().zip(&prompts) {
        if let Ok(facts) = &mut model.loaded {
            facts.prompt = prompt.clone();
        }
    }
    let loaded = tokenizers_of(&served, &files, &prompts)?;
    let tokenizers = loaded
        .iter()
        .map(|t| t.as_ref().map(|(t, _)| t.clone()))
        .collect();
    let tokenizer_specs = loaded
        .into_iter()
        .map(|t| t.map(|(_, spec)| spec))
        .collect();
    let mut resolved = plans.clone();
    for (model, found) in served.iter().zip(&files) {
        let Some((found, config)) = found else {
            continue;
        };
        for &slot in &model.slots {
            let replica = &mut resolved[slot];
            replica
                .check(config)
                .with_context(|| format!("{}: replica {slot}", settings.replica_key(slot)))?;
            replica.model = model_dir(found)?.display().to_string();
        }
    }
    Ok(Models {
        served,
        default_model,
        tokenizers,
        tokenizer_specs,
        plans,
        resolved,
        link,
        job_budget,
    })
}

/// The served models, in order of first appearance: the replicas grouped
/// by the name they serve under (one name serves one model), not yet
/// loaded.
fn group_by_name(settings: &Settings, plans: &[ReplicaSpec]) -> anyhow::Result<Vec<ServedModel>> {
    let mut served: Vec<ServedModel> = Vec::new();
    for (slot, (plan, name)) in plans.iter().zip(settings.replica_names()).enumerate() {
        match served.iter_mut().find(|m| m.name == name) {
            Some(model) if model.source == plan.model => model.slots.push(slot),
            Some(model) => bail!(
                "{}: the name {name:?} already serves model {:?}; one name serves one model",
                settings.replica_key(slot),
                model.source
            ),
            None => served.push(ServedModel {
                name,
                source: plan.model.clone(),
                slots: vec![slot],
                loaded: Err("not loaded yet".into()),
            }),
        }
    }
    Ok(served)
}

/// A model's tokenizer (for in-process tokenization) with its file and
/// length (for the tokenizer workers).
type LoadedTokenizer = (Arc<PairTokenizer>, TokenizerSpec);

/// Each model's prompt: an LLM reranker's (its instance's
/// `prompt_template` and `instruction`, else the global ones, else
/// Qwen3-Reranker's), `None` for an encoder (which may not be given one) or
/// a model that did not load.
fn prompts_of(
    settings: &Settings,
    served: &[ServedModel],
    files: &[Option<(ModelFiles, ModelConfig)>],
) -> anyhow::Result<Vec<Option<PromptTemplate>>> {
    served
        .iter()
        .zip(files)
        .map(|(model, found)| {
            let Some((_, config)) = found else {
                return Ok(None);
            };
            let chosen = |pick: fn(&crate::config::Instance) -> Option<String>| {
                model
                    .slots
                    .iter()
                    .find_map(|&slot| settings.instances.get(slot).and_then(pick))
            };
            let text = chosen(|i| i.prompt_template.clone()).or(settings.prompt_template.clone());
            let instruction = chosen(|i| i.instruction.clone()).or(settings.instruction.clone());
            if config.decoder.is_none() {
                let named = chosen(|i| i.prompt_template.clone().or(i.instruction.clone()));
                if named.is_some() {
                    bail!(
                        "model {:?} is an encoder ({}): prompt_template and instruction are for LLM rerankers",
                        model.name,
                        config.family
                    );
                }
                return Ok(None);
            }
            let default = PromptTemplate::qwen3_reranker();
            let template = PromptTemplate::new(
                text.unwrap_or_else(|| default.text().to_string()),
                instruction.unwrap_or_else(|| default.default_instruction().to_string()),
            )
            .with_context(|| format!("model {:?}: prompt_template", model.name))?;
            Ok(Some(template))
        })
        .collect()
}

/// Each loaded model's tokenizer; `None` for a model that did not load.
fn tokenizers_of(
    served: &[ServedModel],
    files: &[Option<(ModelFiles, ModelConfig)>],
    prompts: &[Option<PromptTemplate>],
) -> anyhow::Result<Vec<Option<LoadedTokenizer>>> {
    served
        .iter()
        .zip(files)
        .zip(prompts)
        .map(|((model, found), prompt)| match (found, &model.loaded) {
            (Some((found, _)), Ok(facts)) => {
                let mut tokenizer = PairTokenizer::from_file(&found.tokenizer, facts.max_length)?;
                if let Some(prompt) = prompt {
                    tokenizer = tokenizer.with_prompt(prompt.clone())?;
                }
                let spec = TokenizerSpec {
                    file: found.tokenizer.clone(),
                    max_length: facts.max_length as u32,
                    prompt: prompt.clone(),
                };
                Ok(Some((Arc::new(tokenizer), spec)))
            }
            _ => Ok(None),
        })
        .collect()
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
    // A job answers with `tokenize_chunk` pairs, or as many windows (one
    // document alone may make `max_chunks_per_doc`).
    let rows = settings.tokenize_chunk.max(settings.max_chunks_per_doc);
    let chunk_tokens = rows.saturating_mul(max_length);
    let from_worker = [
        frame::windowed_batch_len(rows, chunk_tokens)
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
            "the limits need frames over the largest ring ({} MiB): lower max_input_chars ({}), max_batch_tokens ({}), max_batch_size ({}), tokenize_chunk ({}) or max_chunks_per_doc ({})",
            ce_common::link::MAX_RING_CAPACITY >> 20,
            settings.max_input_chars,
            settings.max_batch_tokens,
            settings.max_batch_size,
            settings.tokenize_chunk,
            settings.max_chunks_per_doc
        )
    })?;
    let budget = JobBudget {
        passages: settings.tokenize_chunk,
        rows,
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
    models: &Models,
) -> anyhow::Result<(Vec<WorkerSpec>, Vec<WorkerSpec>)> {
    let ready_timeout = Duration::from_secs(settings.ready_timeout_s);
    let spec = |role, slot: usize, program: &Path, max_length: usize, job| WorkerSpec {
        role,
        slot: slot as u32,
        program: program.to_path_buf(),
        config: WorkerConfig {
            max_length: max_length as u32,
            heartbeat_ms: settings.heartbeat_ms,
            job,
        },
        link: models.link,
        ready_timeout,
    };
    let longest = models
        .served
        .iter()
        .filter_map(|m| m.loaded.as_ref().ok().map(|f| f.max_length))
        .max()
        .unwrap_or(settings.max_length);
    let tokenizer_program = worker_program(settings, TOKENIZER_WORKER)?;
    let tokenizers = (0..settings.tokenizers)
        .map(|slot| {
            let job = WorkerJob::Tokenizer {
                tokenizers: models.tokenizer_specs.clone(),
                threads: u32::try_from(settings.tokenizer_threads).unwrap_or(u32::MAX),
            };
            spec(Role::Tokenizer, slot, &tokenizer_program, longest, job)
        })
        .collect();
    let model_program = worker_program(settings, MODEL_WORKER)?;
    let replicas = models
        .resolved
        .iter()
        .enumerate()
        .map(|(slot, replica)| {
            let max_length = models
                .served
                .iter()
                .find(|m| m.slots.contains(&slot))
                .and_then(|m| m.loaded.as_ref().ok())
                .map_or(settings.max_length, |f| f.max_length);
            let job = WorkerJob::Model(replica.clone());
            spec(Role::Model, slot, &model_program, max_length, job)
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
