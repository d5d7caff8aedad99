//! [`Engine`]: a loaded model plus its tokenizer, scoring packed batches.

use std::time::Instant;

use ce_common::TokenBatch;
use ce_common::control::GpuDevice;
use tokenizer_worker::{PairTokenizer, Truncation};

use crate::encoder::{CrossEncoder, LoadOptions};
use crate::error::Result;
use ce_model_spec::ModelFiles;
use ce_model_spec::{
    AttentionLayout, DecoderHead, DeviceSpec, ModelConfig, PromptTemplate, ScoreActivation,
    WeightDType,
};

/// How to load an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A model directory, or a hub id such as `cross-encoder/ms-marco-MiniLM-L-6-v2`.
    pub model: String,
    /// Weight precision.
    pub dtype: WeightDType,
    /// Device.
    pub device: DeviceSpec,
    /// Longest pair in tokens; capped by the model's position embeddings.
    pub max_length: usize,
    /// A batch larger than this many tokens is computed in several forward
    /// passes, which bounds the activations' memory.
    pub max_forward_tokens: usize,
    /// Attention layout (length groups by default).
    pub attention: AttentionLayout,
    /// An LLM reranker's prompt; `None` gives a decoder Qwen3-Reranker's
    /// (encoders score their tokenizer's pairs and take none).
    pub prompt: Option<PromptTemplate>,
    /// Whether the CPU decoder computes a prefix its sequences share once
    /// (on by default; `CE_PREFIX_REUSE=0` turns it off, to measure it).
    pub prefix_reuse: bool,
}

impl EngineConfig {
    /// Defaults for `model`: f32 on the CPU, 512 tokens, 16 Ki tokens a pass.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            dtype: WeightDType::F32,
            device: DeviceSpec::Cpu,
            max_length: 512,
            max_forward_tokens: 16 * 1024,
            attention: AttentionLayout::default(),
            prompt: None,
            prefix_reuse: std::env::var("CE_PREFIX_REUSE").map_or(true, |v| v != "0" && v != "off"),
        }
    }
}

/// What a loaded engine is, for `Info` replies and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// Where the model came from (directory or hub id).
    pub model: String,
    /// Weight precision.
    pub dtype: WeightDType,
    /// Device, as written on the command line.
    pub device: String,
    /// Logits per pair.
    pub num_labels: usize,
    /// Longest pair in tokens after truncation.
    pub max_length: usize,
    /// Activation a client-facing score applies.
    pub score_activation: ScoreActivation,
    /// Hidden width.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_layers: usize,
}

/// The scores of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchScores {
    /// Logits per pair.
    pub num_labels: usize,
    /// Row-major `[pairs, num_labels]` raw logits.
    pub logits: Vec<f32>,
    /// Row-major `[pairs, hidden]` pooled `[CLS]` vectors: only from
    /// [`Engine::score_with_pooled`] (fidelity checks), empty otherwise.
    pub pooled: Vec<f32>,
    /// Real tokens in the batch.
    pub tokens: usize,
    /// Token slots attention computed (pads included).
    pub attention_slots: usize,
}

impl BatchScores {
    /// The first logit of every pair (the relevance score of a one-label model).
    pub fn first_logits(&self) -> Vec<f32> {
        self.logits
            .chunks(self.num_labels)
            .map(|row| row[0])
            .collect()
    }
}

/// A yes/no reranker's "no" and "yes" token ids, as Qwen3-Reranker's model
/// card finds them (`convert_tokens_to_ids`).
fn yes_no_tokens(tokenizer: &PairTokenizer) -> Result<[u32; 2]> {
    let id = |token: &str| {
        tokenizer.token_id(token).ok_or_else(|| {
            crate::error::EngineError::Weights(format!(
                "the tokenizer has no token {token:?}: a Qwen3ForCausalLM reranker reads the logits of \"yes\" and \"no\""
            ))
        })
    };
    Ok([id("no")?, id("yes")?])
}

/// A cross-encoder ready to score pairs.
#[derive(Debug)]
pub struct Engine {
    model: CrossEncoder,
    tokenizer: PairTokenizer,
    info: ModelInfo,
    max_forward_tokens: usize,
    gpu: Option<GpuDevice>,
}

impl Engine {
    /// Resolves, loads and prepares the model and its tokenizer.
    pub fn load(config: &EngineConfig) -> Result<Self> {
        let started = Instant::now();
        // The device first: an absent GPU is said before any download.
        let device = crate::device::open(config.device)?;
        let files = ModelFiles::resolve(&config.model)?;
        let model_config = ModelConfig::from_file(&files.config)?;
        files.weights.check_shapes(&model_config)?;
        let max_length = config
            .max_length
            .min(model_config.max_sequence_len())
            .max(4);
        let mut tokenizer = PairTokenizer::from_file(&files.tokenizer, max_length)?;
        let decoder_head = model_config.decoder.as_ref().map(|d| d.head);
        if decoder_head.is_some() {
            let template = config
                .prompt
                .clone()
                .unwrap_or_else(PromptTemplate::qwen3_reranker);
            tokenizer = tokenizer.with_prompt(template)?;
        } else if config.prompt.is_some() {
            return Err(crate::error::EngineError::Weights(format!(
                "{} is an encoder: it scores its tokenizer's pairs, not a prompt",
                model_config.family
            )));
        }
        let yes_no_tokens = match decoder_head {
            Some(DecoderHead::YesNo) => Some(yes_no_tokens(&tokenizer)?),
            _ => None,
        };
        let calibration = match config.dtype {
            WeightDType::I8 if crate::int8_smoothing() => {
                use crate::encoder::cpu::calibration;
                let max_tokens = match decoder_head {
                    Some(_) => calibration::DECODER_TOKENS,
                    None => usize::MAX,
                };
                Some(calibration::text_batch(&tokenizer, max_tokens)?)
            }
            _ => None,
        };
        let model = CrossEncoder::load(
            &files.weights,
            model_config,
            config.dtype,
            &device,
            config.attention,
            LoadOptions {
                yes_no_tokens,
                prefix_reuse: config.prefix_reuse,
                calibration,
            },
        )?;
        let c = model.config();
        let info = ModelInfo {
            model: files.origin.clone(),
            dtype: config.dtype,
            device: config.device.to_string(),
            num_labels: model.num_labels(),
            max_length,
            score_activation: c.score_activation,
            hidden_size: c.hidden_size,
            num_layers: c.num_hidden_layers,
        };
        tracing::info!(
            model = %info.model, dtype = %info.dtype, device = %info.device,
            int8_kernel = (config.dtype == WeightDType::I8).then(|| crate::int8_kernel().as_str()),
            bf16_kernel = (config.dtype == WeightDType::Bf16 && model.runs_cpu_kernels())
                .then(|| crate::bf16_kernel().as_str()),
            elapsed_ms = started.elapsed().as_millis() as u64, "engine loaded"
        );
        if config.dtype == WeightDType::I8 && crate::int8_kernel() == crate::Int8Kernel::Portable {
            // Measured on a 2-core Zen 5 with CE_INT8_KERNEL=portable: i8 3.6
            // pairs/s, f32 115 (`ce-engine-bench --dtypes f32,i8 --pairs 512`).
            tracing::warn!(
                "this CPU has none of AMX, AVX-512 VNNI or AVX2: i8 runs the portable integer kernel, about 30x slower than f32; serve f32 on this machine"
            );
        }
        Ok(Self {
            model,
            tokenizer,
            info,
            max_forward_tokens: config.max_forward_tokens.max(1),
            gpu: crate::device::gpu_of(&device),
        })
    }

    /// The GPU it computes on, as the driver names it (`None` on the CPU).
    pub fn gpu(&self) -> Option<&GpuDevice> {
        self.gpu.as_ref()
    }

    /// What was loaded.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// Whether the CPU encoder (rather than candle) computes this model.
    pub fn runs_cpu_kernels(&self) -> bool {
        self.model.runs_cpu_kernels()
    }

    /// What computes this model, as `/info` shows it: the CPU encoder with
    /// its precision and the kernel this CPU runs it on (`bf16 on f32`: a
    /// CPU without AVX512-BF16 or AMX-BF16 multiplies the rounded numbers in
    /// f32; `smoothed`: an int8 encoder calibrated as [`crate::encoder::cpu::calibration`]
    /// says), or candle with its dtype and device.
    pub fn kernel(&self) -> String {
        let dtype = self.info.dtype;
        if !self.runs_cpu_kernels() {
            return format!("candle, {dtype} on {}", self.info.device);
        }
        let attention = match self.bf16_attention() {
            Some(unit) => format!(", attention in bf16 on {}", unit.as_str()),
            None => String::new(),
        };
        match dtype {
            WeightDType::Bf16 => format!(
                "cpu encoder, bf16 on {}{attention}",
                crate::bf16_kernel().as_str()
            ),
            WeightDType::I8 => {
                let smoothed = match self.model.int8_smoothed() {
                    true => ", smoothed",
                    false => "",
                };
                format!(
                    "cpu encoder, i8 on {}{smoothed}{attention}",
                    crate::int8_kernel().as_str()
                )
            }
            other => format!("cpu encoder, {other}"),
        }
    }

    /// The unit on which the CPU encoder computes attention's products in
    /// bf16 ([`crate::encoder::cpu::attention_bf16`]): bf16 and i8
    /// encoders on CPUs with AMX-BF16, or AVX512-BF16 at the FMA's rate;
    /// `None` where attention runs in f32.
    fn bf16_attention(&self) -> Option<crate::encoder::cpu::attention_bf16::Unit> {
        let c = self.model.config();
        let encoder = self.runs_cpu_kernels()
            && c.decoder.is_none()
            && matches!(self.info.dtype, WeightDType::Bf16 | WeightDType::I8);
        crate::encoder::cpu::attention_bf16::unit_for(c.head_dim()).filter(|_| encoder)
    }

    /// The pair tokenizer matching this model.
    pub fn tokenizer(&self) -> &PairTokenizer {
        &self.tokenizer
    }

    /// Scores a packed batch (validated first), in forward passes of at most
    /// `max_forward_tokens` tokens each.
    pub fn score(&self, batch: &TokenBatch) -> Result<BatchScores> {
        self.forward_all(batch, false)
    }

    /// [`Engine::score`], also keeping every pair's pooled `[CLS]` vector:
    /// what a reduced precision's fidelity is measured on.
    pub fn score_with_pooled(&self, batch: &TokenBatch) -> Result<BatchScores> {
        self.forward_all(batch, true)
    }

    fn forward_all(&self, batch: &TokenBatch, keep_pooled: bool) -> Result<BatchScores> {
        batch.validate(&self.model.batch_limits())?;
        let pooled_len = if keep_pooled {
            batch.len() * self.info.hidden_size
        } else {
            0
        };
        let mut out = BatchScores {
            num_labels: self.model.num_labels(),
            logits: Vec::with_capacity(batch.len() * self.model.num_labels()),
            pooled: Vec::with_capacity(pooled_len),
            tokens: batch.total_tokens(),
            attention_slots: 0,
        };
        let mut start = 0;
        while start < batch.len() {
            let mut end = start + 1;
            let mut tokens = batch.seq_len(start);
            while end < batch.len() && tokens + batch.seq_len(end) <= self.max_forward_tokens {
                tokens += batch.seq_len(end);
                end += 1;
            }
            let part = if start == 0 && end == batch.len() {
                self.model.forward(batch)?
            } else {
                let mut sub = TokenBatch::with_capacity(end - start, tokens);
                for i in start..end {
                    sub.push(batch.ids(i), batch.types(i));
                }
                self.model.forward(&sub)?
            };
            out.logits.extend_from_slice(&part.logits);
            if keep_pooled {
                out.pooled.extend_from_slice(&part.pooled);
            }
            out.attention_slots += part.attention_slots;
            start = end;
        }
        Ok(out)
    }

    /// Tokenizes `query` against every passage and scores them.
    pub fn score_query<S: AsRef<str>>(
        &self,
        query: &str,
        passages: &[S],
        truncation: Truncation,
    ) -> Result<BatchScores> {
        self.score_query_for(query, None, passages, truncation)
    }

    /// [`Engine::score_query`] with a request's instruction (an LLM
    /// reranker's default where `None`; an encoder refuses one).
    pub fn score_query_for<S: AsRef<str>>(
        &self,
        query: &str,
        instruction: Option<&str>,
        passages: &[S],
        truncation: Truncation,
    ) -> Result<BatchScores> {
        let batch = self
            .tokenizer
            .encode_query_for(query, instruction, passages, truncation)?;
        self.score(&batch)
    }
}
