//! An encoder cross-encoder (`*ForSequenceClassification` of BERT,
//! RoBERTa/XLM-RoBERTa, ELECTRA, DistilBERT or ModernBERT), computing on
//! packed batches.
//!
//! ```text
//! TokenBatch ─▶ Embeddings ─▶ Layer × N ─▶ (final norm) ─▶ Head ─▶ logits [pairs, labels]
//!               [T, H]        attention, feed-forward        pool [CLS] or mean,
//!                             post-norm (BERT family) or     dense, activation, (norm),
//!                             pre-norm (ModernBERT)          classifier
//! ```
//!
//! `T` is the batch's real token count: there is no padded `[pairs, L]`
//! matrix anywhere but inside attention (see [`plan`]). What differs between
//! the families is read from [`ModelConfig`] (the head, positions, token
//! types, ModernBERT's rotary and windowed layers) and [`TensorNames`] (where
//! a checkpoint keeps each tensor); the blocks below are the same code for
//! all.
//!
//! Two implementations run these blocks. On the CPU, in `f32`, `bf16` or `i8` with
//! the default attention layout, [`cpu`] runs them on plain slices: fused
//! passes, AVX-512 GEMMs, one shard of the batch per thread, attention per
//! sequence with no padding at all. Everywhere else (GPUs, the other dtypes,
//! the padded layouts of the padding experiment) candle runs them.

pub mod cpu;
mod decoder;
pub mod linear;
pub mod plan;

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use ce_common::TokenBatch;
use ce_common::batch::BatchLimits;

use crate::dtype::CandleDType;
use crate::error::{EngineError, Result, candle_message};
use ce_model_spec::{
    HiddenAct, ModelConfig, Pooling, Tensor as T, TensorNames, WeightDType, Weights,
};
use linear::Linear;
use plan::{AttentionLayout, BatchPlan};

/// Reads f32 tensors by what they are, checking their shapes.
struct WeightReader<'a> {
    vb: VarBuilder<'a>,
    names: TensorNames,
    /// Whether a bias may be absent (ModernBERT's `*_bias: false` layers);
    /// elsewhere a missing bias is a broken checkpoint, not a zero.
    biases_optional: bool,
}

impl WeightReader<'_> {
    fn open(weights: &Weights, config: &ModelConfig) -> Result<Self> {
        let vb = match weights {
            Weights::Safetensors(paths) => {
                for path in paths {
                    check_readable(path)?;
                }
                // SAFETY: the file is mapped read-only; the engine never
                // writes it, and a model directory is not modified while a
                // server runs from it (as with every mmap-based loader).
                unsafe { VarBuilder::from_mmaped_safetensors(paths, DType::F32, &Device::Cpu) }
            }
            Weights::Pytorch(path) => {
                check_readable(path)?;
                VarBuilder::from_pth(path, DType::F32, &Device::Cpu)
            }
        }
        .map_err(|e| EngineError::Weights(candle_message(&e)))?;
        let names = TensorNames::find(config.family, |n| vb.contains_tensor(n));
        Ok(Self {
            vb,
            names,
            biases_optional: config.modern.is_some() || config.decoder.is_some(),
        })
    }

    fn get<S: Into<candle_core::Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        self.vb
            .get(shape, name)
            .map_err(|e| EngineError::Weights(format!("{name}: {}", candle_message(&e))))
    }

    fn has(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    /// `tensor.weight`, `[rows, cols]`.
    fn matrix(&self, tensor: T, rows: usize, cols: usize) -> Result<Tensor> {
        self.get((rows, cols), &self.names.weight(tensor))
    }

    /// `tensor.bias`, or zeros where a ModernBERT checkpoint has none (its
    /// bias-free layers; the arithmetic is the same).
    fn bias(&self, tensor: T, len: usize) -> Result<Tensor> {
        let name = self.names.bias(tensor);
        if self.biases_optional && !self.has(&name) {
            return Ok(Tensor::zeros(len, DType::F32, &Device::Cpu)?);
        }
        self.get(len, &name)
    }

    /// A linear layer's weight `[out, in]` and bias `[out]`.
    fn linear(&self, tensor: T, out: usize, inp: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.matrix(tensor, out, inp)?, self.bias(tensor, out)?))
    }

    /// A layer norm's scale and shift (zeros where it has no bias).
    fn norm(&self, tensor: T, width: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.get(width, &self.names.weight(tensor))?,
            self.bias(tensor, width)?,
        ))
    }

    /// The classifier's rows, checked against what `config.json` declares.
    fn num_labels(&self, c: &ModelConfig) -> Result<usize> {
        let name = self.names.weight(T::Classifier);
        if !self.has(&name) {
            return Err(EngineError::Weights(format!(
                "{name} is missing: this is not a cross-encoder ({}ForSequenceClassification) checkpoint",
                c.family
            )));
        }
        let num_labels = self
            .vb
            .get_unchecked(&name)
            .and_then(|t| t.dim(0))
            .map_err(|e| EngineError::Weights(candle_message(&e)))?;
        if let Some(declared) = c.declared_labels
            && declared != num_labels
        {
            return Err(EngineError::Weights(format!(
                "config.json declares {declared} labels but {name} has {num_labels} rows"
            )));
        }
        if c.relevant_label >= num_labels {
            return Err(EngineError::Weights(format!(
                "the relevant label is {} but {name} has {num_labels} rows",
                c.relevant_label
            )));
        }
        Ok(num_labels)
    }
}

fn check_readable(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// The position id of every token of one sequence, appended to `out`:
/// `0..len`, or RoBERTa's count of non-pad tokens from `padding_idx + 1`
/// (a pad token keeps `padding_idx`), as transformers numbers them.
pub(crate) fn push_position_ids(c: &ModelConfig, ids: &[u32], out: &mut Vec<u32>) {
    match c.padding_idx {
        Some(pad) => {
            let mut next = pad;
            out.extend(ids.iter().map(|&id| {
                if id == pad {
                    pad
                } else {
                    next += 1;
                    next
                }
            }));
        }
        None => out.extend(0..ids.len() as u32),
    }
}

/// cos and sin of rotary positions `0..positions` at base `theta`, each
/// `[positions, head_dim / 2]` row-major, as transformers computes them
/// (`inv_freq` in f32, `position · inv_freq` in f32).
pub(crate) fn rotary_table(theta: f64, head_dim: usize, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

/// A tensor's values as a flat f32 vector (logits and pooled vectors leave
/// the device this way).
fn to_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Layer normalisation over the hidden dimension.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(
        r: &WeightReader,
        tensor: T,
        width: usize,
        c: &ModelConfig,
        place: Place,
    ) -> Result<Self> {
        let (weight, bias) = r.norm(tensor, width)?;
        Ok(Self {
            weight: place.activation(&weight)?,
            bias: place.activation(&bias)?,
            eps: c.layer_norm_eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

/// Where and in what the candle encoder keeps a tensor.
#[derive(Debug, Clone, Copy)]
struct Place<'d> {
    dtype: WeightDType,
    device: &'d Device,
}

impl<'d> Place<'d> {
    /// Where a head goes: in the activation precision, never quantized
    /// (it is tiny).
    fn head(dtype: WeightDType, device: &'d Device) -> Self {
        Place {
            dtype: match dtype {
                WeightDType::Q8_0 | WeightDType::Q4_0 => WeightDType::F32,
                other => other,
            },
            device,
        }
    }

    fn activation(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_dtype(self.dtype.activation_dtype())?
            .to_device(self.device)?)
    }

    fn linear(&self, (w, b): (Tensor, Tensor)) -> Result<Linear> {
        Linear::new(w, b, self.dtype, self.device)
    }
}

/// Word (+ position) (+ token type) embeddings, a layer norm, and ELECTRA's
/// projection to the hidden width.
#[derive(Debug)]
struct Embeddings {
    word: Tensor,
    position: Option<Tensor>,
    token_type: Option<TokenTypes>,
    norm: LayerNorm,
    projection: Option<Linear>,
}

/// The token type table, and whether a token's segment picks its row
/// (BERT, ELECTRA) or every token adds row 0 (RoBERTa, whose tokenizers
/// give transformers no segments).
#[derive(Debug)]
struct TokenTypes {
    table: Tensor,
    by_segment: bool,
}

impl Embeddings {
    fn load(r: &WeightReader, c: &ModelConfig, place: Place) -> Result<Self> {
        let e = c.embedding_size;
        let table = |tensor: T, rows: usize| place.activation(&r.matrix(tensor, rows, e)?);
        Ok(Self {
            word: table(T::WordEmbeddings, c.vocab_size)?,
            position: match c.modern {
                Some(_) => None,
                None => Some(table(T::PositionEmbeddings, c.max_position_embeddings)?),
            },
            token_type: match c.type_vocab_size {
                0 => None,
                rows => Some(TokenTypes {
                    table: table(T::TokenTypeEmbeddings, rows)?,
                    by_segment: c.family.reads_token_types(),
                }),
            },
            norm: LayerNorm::load(r, T::EmbeddingNorm, e, c, place)?,
            projection: match e != c.hidden_size {
                true => {
                    Some(place.linear(r.linear(T::EmbeddingProjection, c.hidden_size, e)?)?)
                }
                false => None,
            },
        })
    }

    /// `[T]` ids → `[T, H]`.
    fn forward(&self, plan: &BatchPlan) -> Result<Tensor> {
        let mut x = self.word.index_select(&plan.input_ids, 0)?;
        if let Some(position) = &self.position {
            x = (x + position.index_select(&plan.position_ids, 0)?)?;
        }
        match &self.token_type {
            Some(t) if t.by_segment => x = (x + t.table.index_select(&plan.type_ids, 0)?)?,
            Some(t) => x = x.broadcast_add(&t.table.narrow(0, 0, 1)?)?,
            None => {}
        }
        let x = self.norm.forward(&x)?;
        match &self.projection {
            Some(p) => p.forward(&x),
            None => Ok(x),
        }
    }
}

/// ModernBERT's per-layer attention extras.
#[derive(Debug)]
struct Rotary {
    /// `[positions, d/2]` each, in the activation dtype.
    cos: Tensor,
    sin: Tensor,
    /// Keys at most this far from the query, in sliding-window layers
    /// (the plan's `window_mask` holds the band).
    window: Option<usize>,
}

/// Multi-head self-attention with its output projection.
#[derive(Debug)]
struct SelfAttention {
    qkv: Linear,
    output: Linear,
    rotary: Option<Rotary>,
    heads: usize,
    head_dim: usize,
    hidden: usize,
}

impl SelfAttention {
    fn load(
        r: &WeightReader,
        i: usize,
        c: &ModelConfig,
        place: Place,
        rotary: Option<Rotary>,
    ) -> Result<Self> {
        let h = c.hidden_size;
        let qkv = match c.modern {
            Some(_) => place.linear(r.linear(T::Qkv(i), 3 * h, h)?)?,
            None => Linear::fuse(
                &[
                    r.linear(T::Query(i), h, h)?,
                    r.linear(T::Key(i), h, h)?,
                    r.linear(T::Value(i), h, h)?,
                ],
                place.dtype,
                place.device,
            )?,
        };
        Ok(Self {
            qkv,
            output: place.linear(r.linear(T::AttentionOutput(i), h, h)?)?,
            rotary,
            heads: c.num_attention_heads,
            head_dim: c.head_dim(),
            hidden: h,
        })
    }

    /// `[T, H]` → `[T, H]` (before the residual).
    fn forward(&self, x: &Tensor, plan: &BatchPlan) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?; // [T, 3H]
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut contexts = Vec::with_capacity(plan.groups.len());
        for g in &plan.groups {
            // [b * l, 3H] → [b, l, 3, heads, d]
            let block = qkv.index_select(&g.gather, 0)?.reshape((
                g.batch,
                g.max_len,
                3,
                self.heads,
                self.head_dim,
            ))?;
            // each [b, heads, l, d]
            let mut q = block.i((.., .., 0))?.transpose(1, 2)?.contiguous()?;
            let mut k = block.i((.., .., 1))?.transpose(1, 2)?.contiguous()?;
            let v = block.i((.., .., 2))?.transpose(1, 2)?.contiguous()?;
            let mut mask = &g.mask;
            if let Some(rotary) = &self.rotary {
                // Every sequence starts at slot 0 of its padded row, so one
                // table of positions 0..l serves the whole group.
                let cos = rotary.cos.narrow(0, 0, g.max_len)?;
                let sin = rotary.sin.narrow(0, 0, g.max_len)?;
                q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
                k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
                if rotary.window.is_some()
                    && let Some(windowed) = &g.window_mask
                {
                    mask = windowed;
                }
            }
            let q = (q * scale)?;
            let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?; // [b, heads, l, l]
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?; // [b, heads, l, d]
            contexts.push(
                ctx.transpose(1, 2)?
                    .reshape((g.batch * g.max_len, self.hidden))?,
            );
        }
        let ctx = if contexts.len() == 1 {
            contexts.swap_remove(0)
        } else {
            Tensor::cat(&contexts, 0)?
        };
        let ctx = ctx.index_select(&plan.unpad, 0)?; // back to packed [T, H]
        self.output.forward(&ctx)
    }
}

fn activate(x: &Tensor, act: HiddenAct) -> Result<Tensor> {
    Ok(match act {
        HiddenAct::GeluErf => x.gelu_erf()?,
        HiddenAct::GeluTanh => x.gelu()?,
        HiddenAct::Relu => x.relu()?,
        HiddenAct::Tanh => x.tanh()?,
        HiddenAct::Silu => candle_nn::ops::silu(x)?,
    })
}

/// The position-wise feed-forward block: `act(x W₁) W₂`, or ModernBERT's
/// GeGLU `(act(x Wᵢ) ⊙ x W_g) Wₒ` (`Wᵢ` and `W_g` stacked in one matrix).
#[derive(Debug)]
struct FeedForward {
    input: Linear,
    output: Linear,
    act: HiddenAct,
    gated: bool,
}

impl FeedForward {
    fn load(r: &WeightReader, i: usize, c: &ModelConfig, place: Place) -> Result<Self> {
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let gated = c.modern.is_some();
        let width = if gated { 2 * f } else { f };
        Ok(Self {
            input: place.linear(r.linear(T::FeedForwardIn(i), width, h)?)?,
            output: place.linear(r.linear(T::FeedForwardOut(i), h, f)?)?,
            act: c.hidden_act,
            gated,
        })
    }

    /// `[T, H]` → `[T, H]` (before the residual).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.input.forward(x)?;
        let h = if self.gated {
            let half = h.dim(1)? / 2;
            (activate(&h.narrow(1, 0, half)?, self.act)? * h.narrow(1, half, half)?)?
        } else {
            activate(&h, self.act)?
        };
        self.output.forward(&h)
    }
}

/// One encoder layer: post-norm `x = norm(x + attn(x)); x = norm(x + ffn(x))`
/// (the BERT family), or pre-norm `x = x + attn(norm(x)); x = x + ffn(norm(x))`
/// (ModernBERT, whose layer 0 has no attention norm).
#[derive(Debug)]
struct Layer {
    attention: SelfAttention,
    attention_norm: Option<LayerNorm>,
    ffn: FeedForward,
    ffn_norm: LayerNorm,
    pre_norm: bool,
}

impl Layer {
    fn forward(&self, x: &Tensor, plan: &BatchPlan) -> Result<Tensor> {
        if self.pre_norm {
            let normed = match &self.attention_norm {
                Some(n) => n.forward(x)?,
                None => x.clone(),
            };
            let x = (x + self.attention.forward(&normed, plan)?)?;
            let out = self.ffn.forward(&self.ffn_norm.forward(&x)?)?;
            return Ok((x + out)?);
        }
        let x = (self.attention.forward(x, plan)? + x)?;
        let x = match &self.attention_norm {
            Some(n) => n.forward(&x)?,
            None => x,
        };
        self.ffn_norm.forward(&(self.ffn.forward(&x)? + x)?)
    }
}

/// The classification head: pool, `dense → activation (→ norm)`, classifier.
#[derive(Debug)]
struct Head {
    pooling: Pooling,
    dense: Linear,
    activation: HiddenAct,
    norm: Option<LayerNorm>,
    classifier: Linear,
}

/// What one forward pass returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardOutput {
    /// Row-major `[pairs, num_labels]` raw logits.
    pub logits: Vec<f32>,
    /// Row-major `[pairs, hidden]`: the head's vector before the classifier
    /// (BERT's pooled `[CLS]`, after its tanh).
    pub pooled: Vec<f32>,
    /// Token slots attention computed, pads included.
    pub attention_slots: usize,
}

/// The blocks on candle tensors.
#[derive(Debug)]
struct CandleEncoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    final_norm: Option<LayerNorm>,
    head: Head,
}

/// Which implementation runs the blocks.
#[derive(Debug)]
enum Encoder {
    Candle(CandleEncoder),
    Cpu(Box<cpu::CpuEncoder>),
    CandleDecoder(decoder::CandleDecoder),
    CpuDecoder(Box<cpu::CpuDecoder>),
}

/// What a model needs beyond its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// A yes/no reranker's "no" and "yes" token ids (from its tokenizer).
    pub yes_no_tokens: Option<[u32; 2]>,
    /// Whether the CPU decoder computes a prefix its sequences share once.
    pub prefix_reuse: bool,
    /// Text, tokenized, on which the CPU encoder or decoder calibrates its
    /// int8 smoothing ([`cpu::calibration`]); `None`: int8 unsmoothed.
    pub calibration: Option<TokenBatch>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            yes_no_tokens: None,
            prefix_reuse: true,
            calibration: None,
        }
    }
}

/// A loaded cross-encoder of any supported family.
#[derive(Debug)]
pub struct CrossEncoder {
    config: ModelConfig,
    dtype: WeightDType,
    device: Device,
    attention: AttentionLayout,
    num_labels: usize,
    encoder: Encoder,
}

impl CrossEncoder {
    /// Loads the weights and prepares every layer for `dtype` on `device`,
    /// laying attention out as `attention` says.
    pub fn load(
        weights: &Weights,
        config: ModelConfig,
        dtype: WeightDType,
        device: &Device,
        attention: AttentionLayout,
        options: LoadOptions,
    ) -> Result<Self> {
        let r = WeightReader::open(weights, &config)?;
        let num_labels = match &config.decoder {
            Some(d) if d.head == ce_model_spec::DecoderHead::YesNo => 2,
            _ => r.num_labels(&config)?,
        };
        let spec = ce_model_spec::ReplicaSpec {
            model: String::new(),
            dtype,
            device: crate::device::spec_of(device),
            attention,
            threads: 0,
        };
        spec.check(&config)?;
        let cpu_kernels = spec.runs_cpu_kernels(&config);
        let precision = match dtype {
            WeightDType::F32 => Some(cpu::Precision::F32),
            WeightDType::Bf16 => Some(cpu::Precision::Bf16),
            WeightDType::I8 => Some(cpu::Precision::I8),
            _ => None,
        };
        let head_rows = options.yes_no_tokens;
        let encoder = match (precision, config.decoder.is_some()) {
            (Some(precision), true) if cpu_kernels => {
                Encoder::CpuDecoder(Box::new(cpu::CpuDecoder::load(
                    &r,
                    &config,
                    num_labels,
                    head_rows,
                    precision,
                    options.prefix_reuse,
                    options.calibration.as_ref(),
                )?))
            }
            (_, true) => Encoder::CandleDecoder(decoder::CandleDecoder::load(
                &r, &config, dtype, device, num_labels, head_rows,
            )?),
            (Some(precision), false) if cpu_kernels => {
                Encoder::Cpu(Box::new(cpu::CpuEncoder::load(
                    &r,
                    &config,
                    num_labels,
                    precision,
                    options.calibration.as_ref(),
                )?))
            }
            (_, false) => {
                Encoder::Candle(CandleEncoder::load(&r, &config, dtype, device, num_labels)?)
            }
        };
        Ok(Self {
            config,
            dtype,
            device: device.clone(),
            attention,
            num_labels,
            encoder,
        })
    }

    /// How attention lays sequences out.
    pub fn attention_layout(&self) -> AttentionLayout {
        self.attention
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Number of logits per pair.
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// The precision the model was loaded in.
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the CPU encoder or decoder runs this model in int8 with the
    /// products that read the residual stream smoothed
    /// ([`cpu::calibration`]).
    pub fn int8_smoothed(&self) -> bool {
        match &self.encoder {
            Encoder::Cpu(e) => e.smoothed(),
            Encoder::CpuDecoder(d) => d.smoothed(),
            Encoder::Candle(_) | Encoder::CandleDecoder(_) => false,
        }
    }

    /// Whether the CPU encoder (rather than candle) runs this model.
    pub fn runs_cpu_kernels(&self) -> bool {
        matches!(self.encoder, Encoder::Cpu(_) | Encoder::CpuDecoder(_))
    }

    /// The limits a batch must satisfy.
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            vocab_size: self.config.vocab_size,
            type_vocab_size: self.config.accepted_token_types(),
            max_sequence_len: self.config.max_sequence_len(),
        }
    }

    /// The index plan of `batch` for this model's device, precision and
    /// attention layout (the candle paths' gathers and masks).
    fn plan(&self, batch: &TokenBatch) -> Result<BatchPlan> {
        BatchPlan::new(
            batch,
            &self.config,
            &self.device,
            self.dtype.activation_dtype(),
            self.attention,
        )
    }

    /// Scores a packed batch. The batch is validated first: a malformed one
    /// is an error, never an out-of-bounds read.
    pub fn forward(&self, batch: &TokenBatch) -> Result<ForwardOutput> {
        batch.validate(&self.batch_limits())?;
        match &self.encoder {
            Encoder::Cpu(cpu) => cpu.forward(batch),
            Encoder::Candle(candle) => candle.forward(batch, self),
            Encoder::CpuDecoder(cpu) => cpu.forward(batch),
            Encoder::CandleDecoder(candle) => candle.forward(batch, self),
        }
    }
}

impl CandleEncoder {
    fn load(
        r: &WeightReader,
        c: &ModelConfig,
        dtype: WeightDType,
        device: &Device,
        num_labels: usize,
    ) -> Result<Self> {
        let place = Place { dtype, device };
        let h = c.hidden_size;
        let embeddings = Embeddings::load(r, c, place)?;
        let rotary = |i: usize| -> Result<Option<Rotary>> {
            let Some(m) = &c.modern else {
                return Ok(None);
            };
            let global = m.global_layers.get(i).copied().unwrap_or(true);
            let theta = if global {
                m.global_rope_theta
            } else {
                m.local_rope_theta
            };
            let (cos, sin) = rotary_table(theta, c.head_dim(), c.max_sequence_len());
            let shape = (c.max_sequence_len(), c.head_dim() / 2);
            Ok(Some(Rotary {
                cos: place.activation(&Tensor::from_vec(cos, shape, &Device::Cpu)?)?,
                sin: place.activation(&Tensor::from_vec(sin, shape, &Device::Cpu)?)?,
                window: (!global).then_some(m.local_window),
            }))
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let attention_norm = match (c.modern.is_some(), i) {
                    (true, 0) => None,
                    _ => Some(LayerNorm::load(r, T::AttentionNorm(i), h, c, place)?),
                };
                Ok(Layer {
                    attention: SelfAttention::load(r, i, c, place, rotary(i)?)?,
                    attention_norm,
                    ffn: FeedForward::load(r, i, c, place)?,
                    ffn_norm: LayerNorm::load(r, T::FeedForwardNorm(i), h, c, place)?,
                    pre_norm: c.modern.is_some(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head_place = Place::head(dtype, device);
        let head = Head {
            pooling: c.head.pooling,
            dense: head_place.linear(r.linear(T::HeadDense, h, h)?)?,
            activation: c.head.activation,
            norm: match c.head.normed {
                true => Some(LayerNorm::load(r, T::HeadNorm, h, c, head_place)?),
                false => None,
            },
            classifier: head_place.linear(r.linear(T::Classifier, num_labels, h)?)?,
        };
        Ok(Self {
            embeddings,
            layers,
            final_norm: match c.modern {
                Some(_) => Some(LayerNorm::load(r, T::FinalNorm, h, c, place)?),
                None => None,
            },
            head,
        })
    }

    fn forward(&self, batch: &TokenBatch, model: &CrossEncoder) -> Result<ForwardOutput> {
        let plan = model.plan(batch)?;
        let mut hidden = self.embeddings.forward(&plan)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &plan)?;
        }
        if let Some(norm) = &self.final_norm {
            hidden = norm.forward(&hidden)?;
        }
        let pooled = match self.head.pooling {
            Pooling::Cls => hidden.index_select(&plan.cls_rows, 0)?, // [pairs, H]
            Pooling::Mean => plan
                .mean_rows()?
                .to_dtype(hidden.dtype())?
                .matmul(&hidden)?,
        };
        let head_in = match model.dtype {
            WeightDType::Q8_0 | WeightDType::Q4_0 => pooled.to_dtype(DType::F32)?,
            _ => pooled,
        };
        let mut pooled = activate(&self.head.dense.forward(&head_in)?, self.head.activation)?;
        if let Some(norm) = &self.head.norm {
            pooled = norm.forward(&pooled)?;
        }
        let logits = self.head.classifier.forward(&pooled)?;
        Ok(ForwardOutput {
            logits: to_f32(&logits)?,
            pooled: to_f32(&pooled)?,
            attention_slots: plan.padded_attention_tokens,
        })
    }
}
