//! The CPU encoder: every family's encoder on plain slices, for `f32`,
//! `bf16` and `i8` on the CPU.
//!
//! ```text
//! batch ─▶ shards (contiguous pairs, ≈ equal tokens, a few hundred to ~1000
//!          tokens each, a multiple of the thread count; rayon spreads them)
//!            └─▶ per shard, on one thread:
//!                embeddings ─▶ [ QKV GEMM ─▶ attention per sequence and head
//!                                ─▶ out GEMM ─▶ +bias +residual, LayerNorm
//!                                ─▶ FFN GEMM ─▶ +bias, GELU ─▶ GEMM ─▶ +bias +residual, LayerNorm ] × N
//!                ─▶ head (pool, dense, activation, classifier)
//! ```
//!
//! That is the post-norm layer of BERT, RoBERTa, ELECTRA and DistilBERT.
//! ModernBERT's pre-norm layer runs the same passes in another order —
//! LayerNorm into a copy ─▶ QKV GEMM ─▶ rotary turn of Q and K ─▶ attention
//! (within the window, in sliding-window layers) ─▶ out GEMM ─▶ +bias
//! +residual ─▶ LayerNorm into a copy ─▶ GEMM to `2F` ─▶ GeGLU ─▶ GEMM ─▶
//! +bias +residual — and a final norm before the head.
//!
//! Why not candle here: on two cores its per-op threading gains 1.5× from the
//! second thread where two independent single-threaded passes gain 2×; each
//! candle op is its own pass over memory (bias add, GELU, residual add and
//! layer norm are four); GELU and softmax call scalar libm; and attention
//! needs gathers, transposes and a padded block per length group. Here a
//! batch is cut into shards of whole pairs, each shard runs every layer alone
//! on one thread (no barrier between ops), bias, activation, residual and layer norm are
//! fused into one pass each, and attention reads Q, K and V in place from
//! the packed QKV matrix one sequence at a time, so no token is ever padded.
//! The GEMM is the `gemm` crate (candle's own), with its AVX-512 kernels.
//!
//! Shards are small on purpose: pairs are independent, so a shard of ~1000
//! tokens (f32) or ~128 (i8) keeps its activations in the core's L2 cache
//! through all the passes of a layer, where one shard per thread streamed
//! every pass through L3. Measured with `ce-engine-bench`: i8 ~300 → ~500
//! pairs/s, f32 +5%; f32 stops there because its GEMM packs weights per
//! call and loses efficiency on fewer rows, i8's integer GEMM does not.
//! `CE_CPU_SHARD_TOKENS` overrides the size, for such measurements.

#[cfg(target_arch = "x86_64")]
mod amx;
pub mod attention_bf16;
pub mod bf16;
pub mod calibration;
mod decoder;
pub mod int8;
pub mod kernels;
pub mod profile;

use std::ops::Range;
use std::sync::Mutex;

use ce_common::TokenBatch;

use super::{ForwardOutput, WeightReader, push_position_ids, rotary_table};
use crate::error::{EngineError, Result};
use bf16::Bf16Linear;
use calibration::{ActivationPeaks, LayerPeaks, Observed};
use ce_model_spec::{ModelConfig, Pooling, Tensor as T};
pub use decoder::CpuDecoder;
use int8::Int8Linear;
use kernels::{Activation, AttentionScratch, Heads, View, matmul};
use profile::{Stage, timed};

/// The precision of the encoder layers' linear products (embeddings, norms,
/// softmax, activations and the head stay f32 in every one; attention's two
/// products follow bf16 and int8 into bf16 where the CPU has AVX512-BF16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights and products.
    F32,
    /// bf16 weights and activations, f32 sums ([`bf16`]).
    Bf16,
    /// int8 weights and activations, i32 sums ([`int8`]).
    I8,
}

/// A linear layer `y = x Wᵀ + b` as the CPU encoder stores it.
#[derive(Debug)]
enum CpuLinear {
    /// f32 weight, transposed to `[in, out]` once at load.
    F32 {
        weight_t: Vec<f32>,
        bias: Vec<f32>,
        inputs: usize,
    },
    /// f32 weight as read, row-major `[out, in]`: a layer the int8
    /// decoder runs on its calibration text and then quantizes
    /// ([`CpuLinear::into_int8`]), held so only for that moment. Its
    /// product reads the weight transposed in place, and quantizing it
    /// needs no transpose back: two whole-matrix copies fewer per product
    /// (calibrated i8 load of a Qwen3 at 0.6B's size, two cores: 10.2–11.6
    /// → 8.5–10.9 s).
    F32AsRead {
        weight: Vec<f32>,
        bias: Vec<f32>,
        inputs: usize,
    },
    /// bf16 weight; activations rounded at run time.
    Bf16 { weight: Bf16Linear, bias: Vec<f32> },
    /// Integer weight; activations quantized per row at run time.
    I8 { weight: Int8Linear, bias: Vec<f32> },
}

/// Activation buffers of the reduced-precision products.
#[derive(Debug, Default)]
struct LinearScratch {
    bf16: bf16::Scratch,
    int8: int8::Scratch,
}

impl CpuLinear {
    fn load(
        r: &WeightReader,
        tensor: T,
        out: usize,
        inp: usize,
        precision: Precision,
    ) -> Result<Self> {
        let (w, b) = r.linear(tensor, out, inp)?;
        Self::from_parts(to_vec(&w)?, to_vec(&b)?, out, inp, precision)
    }

    /// From a row-major `[out, in]` weight and its bias.
    fn from_parts(
        weight: Vec<f32>,
        bias: Vec<f32>,
        out: usize,
        inp: usize,
        precision: Precision,
    ) -> Result<Self> {
        match precision {
            Precision::I8 => {
                return Ok(Self::I8 {
                    weight: Int8Linear::quantize(&weight, out, inp),
                    bias,
                });
            }
            Precision::Bf16 => {
                return Ok(Self::Bf16 {
                    weight: Bf16Linear::quantize(&weight, out, inp),
                    bias,
                });
            }
            Precision::F32 => {}
        }
        Ok(Self::F32 {
            weight_t: kernels::transpose(&weight, out, inp),
            bias,
            inputs: inp,
        })
    }

    /// An f32 layer quantized to int8, smoothed for `activation_peaks`
    /// where given and showing outlier channels
    /// ([`int8::has_outlier_channels`]); a layer in another precision is
    /// returned as it is.
    fn into_int8(self, activation_peaks: Option<&[f32]>) -> Self {
        let (weight, bias, inputs) = match self {
            Self::F32 {
                weight_t,
                bias,
                inputs,
            } => (
                kernels::transpose(&weight_t, inputs, bias.len()),
                bias,
                inputs,
            ),
            Self::F32AsRead {
                weight,
                bias,
                inputs,
            } => (weight, bias, inputs),
            other => return other,
        };
        let outputs = bias.len();
        let weight = match activation_peaks {
            Some(peaks) if peaks.len() == inputs && int8::has_outlier_channels(peaks) => {
                Int8Linear::quantize_smoothed(&weight, outputs, inputs, peaks)
            }
            _ => Int8Linear::quantize(&weight, outputs, inputs),
        };
        Self::I8 { weight, bias }
    }

    /// Whether it is an int8 layer whose inputs are smoothed.
    fn is_smoothed(&self) -> bool {
        matches!(self, Self::I8 { weight, .. } if weight.is_smoothed())
    }

    fn outputs(&self) -> usize {
        match self {
            Self::F32 { bias, .. }
            | Self::F32AsRead { bias, .. }
            | Self::Bf16 { bias, .. }
            | Self::I8 { bias, .. } => bias.len(),
        }
    }

    fn bias(&self) -> &[f32] {
        match self {
            Self::F32 { bias, .. }
            | Self::F32AsRead { bias, .. }
            | Self::Bf16 { bias, .. }
            | Self::I8 { bias, .. } => bias,
        }
    }

    /// `dst[rows, out] = x[rows, in] · Wᵀ`, without the bias (the fused
    /// pass after it adds it).
    fn product(&self, x: &[f32], rows: usize, dst: &mut [f32], scratch: &mut LinearScratch) {
        match self {
            Self::F32 {
                weight_t, inputs, ..
            } => {
                let out = self.outputs();
                matmul(
                    dst,
                    out,
                    View::rows(x, rows, *inputs),
                    View::rows(weight_t, *inputs, out),
                );
            }
            Self::F32AsRead { weight, inputs, .. } => {
                let out = self.outputs();
                matmul(
                    dst,
                    out,
                    View::rows(x, rows, *inputs),
                    View::rows(weight, out, *inputs).t(),
                );
            }
            Self::Bf16 { weight, .. } => weight.product(x, rows, dst, &mut scratch.bf16),
            Self::I8 { weight, .. } => weight.product(x, rows, dst, &mut scratch.int8),
        }
    }
}

#[derive(Debug)]
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Norm {
    fn load(r: &WeightReader, tensor: T, width: usize) -> Result<Self> {
        let (gamma, beta) = r.norm(tensor, width)?;
        Ok(Self {
            gamma: to_vec(&gamma)?,
            beta: to_vec(&beta)?,
        })
    }

    /// `hidden = norm(hidden + product + bias)`, in one pass (`product` is
    /// scratch afterwards).
    fn residual(&self, hidden: &mut [f32], product: &mut [f32], bias: &[f32], eps: f32) {
        kernels::residual_layer_norm(hidden, product, bias, &self.gamma, &self.beta, eps);
    }

    /// `dst = norm(src)`.
    fn normalize_into(&self, src: &[f32], dst: &mut [f32], eps: f32) {
        kernels::layer_norm_into(src, dst, &self.gamma, &self.beta, eps);
    }
}

/// ModernBERT's extras of one layer.
#[derive(Debug)]
struct RotaryLayer {
    /// Index into [`CpuEncoder::rotary`]: 0 global, 1 local.
    table: usize,
    /// Sliding window, in sliding-window layers.
    window: Option<usize>,
}

#[derive(Debug)]
struct Layer {
    /// Q, K and V in one `[H, 3H]` product; Q pre-scaled by 1/√d.
    qkv: CpuLinear,
    attention_out: CpuLinear,
    /// After attention (post-norm) or before it (pre-norm; ModernBERT's
    /// layer 0 has none).
    attention_norm: Option<Norm>,
    /// `[H, F]`, or `[H, 2F]` for GeGLU.
    intermediate: CpuLinear,
    output: CpuLinear,
    output_norm: Norm,
    rotary: Option<RotaryLayer>,
}

/// Reusable activation buffers of one shard (see [`Pool`]).
#[derive(Debug, Default)]
struct Workspace {
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    attention: AttentionScratch,
    buffers: LayerBuffers,
}

/// The scratch buffers the rest of a layer grows, encoder and decoder
/// alike (each shard's workspace holds one).
#[derive(Debug, Default)]
struct LayerBuffers {
    /// Normed rows.
    normed: Vec<f32>,
    /// A product's output.
    out: Vec<f32>,
    /// The feed-forward block's inner activations.
    inner: Vec<f32>,
    /// Its gated activations (GeGLU, SwiGLU).
    gated: Vec<f32>,
    /// The products' own buffers.
    products: LinearScratch,
}

fn grown(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// The head as the CPU encoder stores it (never quantized: it is tiny).
#[derive(Debug)]
struct Head {
    pooling: Pooling,
    dense: CpuLinear,
    activation: Activation,
    norm: Option<Norm>,
    classifier: CpuLinear,
}

/// The encoder with its weights in the CPU layout.
#[derive(Debug)]
pub struct CpuEncoder {
    config: ModelConfig,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    eps: f32,
    activation: Activation,
    /// GeGLU feed-forward blocks and pre-norm layers (ModernBERT).
    modern: bool,
    word: Vec<f32>,
    position: Option<Vec<f32>>,
    token_type: Option<Vec<f32>>,
    /// Whether a token's segment picks its token type row (BERT, ELECTRA)
    /// or every token adds row 0 (RoBERTa).
    types_by_segment: bool,
    embedding_norm: Norm,
    projection: Option<CpuLinear>,
    layers: Vec<Layer>,
    final_norm: Option<Norm>,
    /// Rotary cos/sin tables `[positions, d/2]`, global then local.
    rotary: Vec<(Vec<f32>, Vec<f32>)>,
    head: Head,
    /// About how many tokens one shard holds.
    shard_tokens: usize,
    /// Attention's products in bf16 ([`attention_bf16`]): the bf16 and
    /// int8 encoders, where the CPU multiplies bf16.
    bf16_attention: bool,
    workspaces: Pool<Workspace>,
}

/// Per-shard buffers kept between forward passes, one per shard in
/// flight: large allocations are fresh zeroed pages each time, which costs
/// page faults on every forward.
#[derive(Debug)]
struct Pool<W>(Mutex<Vec<W>>);

impl<W: Default> Pool<W> {
    fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    /// `work` with a pooled buffer set (a fresh one if none is free).
    fn with<R>(&self, work: impl FnOnce(&mut W) -> R) -> R {
        let mut ws = self
            .0
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_default();
        let result = work(&mut ws);
        if let Ok(mut pool) = self.0.lock() {
            pool.push(ws);
        }
        result
    }
}

/// Tokens per shard where the measured throughput peaks (module docs).
const F32_SHARD_TOKENS: usize = 1024;
/// bf16 on AMX, `CE_CPU_SHARD_TOKENS` alternated on a 2-core Xeon
/// (`ce-engine-bench --dtypes bf16 --pairs 512`): 128 → 403/436/436,
/// 256 → 453, 384 → 463/453/440, 1024 → 425 pairs/s.
const BF16_SHARD_TOKENS: usize = 384;
const I8_SHARD_TOKENS: usize = 128;

/// Tokens per shard for `precision`, or `CE_CPU_SHARD_TOKENS`.
fn shard_tokens(precision: Precision) -> usize {
    std::env::var("CE_CPU_SHARD_TOKENS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(match precision {
            Precision::F32 => F32_SHARD_TOKENS,
            Precision::Bf16 => BF16_SHARD_TOKENS,
            Precision::I8 => I8_SHARD_TOKENS,
        })
}

/// Whether attention's products run in bf16 ([`attention_bf16`]): for the
/// bf16 and int8 encoders, where the CPU multiplies bf16 at heads `dim` wide.
fn attention_in_bf16(precision: Precision, dim: usize) -> bool {
    precision != Precision::F32 && attention_bf16::available(dim)
}

fn to_vec(t: &candle_core::Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

impl CpuEncoder {
    /// Prepares every weight: the layers' linear products transposed (f32),
    /// rounded to bf16 or quantized per output channel (int8), as
    /// `precision` says; embeddings and the head stay f32.
    ///
    /// An int8 encoder given `calibration` text is smoothed (see
    /// [`int8`]): it is loaded in f32 first, scores the text while the
    /// peaks of its products' inputs are recorded, and is quantized from
    /// there — so loading holds the f32 weights for a moment, and costs one
    /// f32 forward pass over the text (~1 200 tokens).
    pub(super) fn load(
        r: &WeightReader,
        c: &ModelConfig,
        num_labels: usize,
        precision: Precision,
        calibration: Option<&TokenBatch>,
    ) -> Result<Self> {
        match (precision, calibration) {
            (Precision::I8, Some(text)) => {
                let f32_encoder = Self::load_plain(r, c, num_labels, Precision::F32)?;
                match f32_encoder.activation_peaks(text) {
                    Ok(peaks) => Ok(f32_encoder.into_int8(Some(peaks))),
                    Err(e) => {
                        // A model whose tokenizer and embeddings disagree
                        // still serves what it can, unsmoothed.
                        tracing::warn!(
                            "int8 calibration failed, so the model is not smoothed: {e}"
                        );
                        Ok(f32_encoder.into_int8(None))
                    }
                }
            }
            _ => Self::load_plain(r, c, num_labels, precision),
        }
    }

    /// [`CpuEncoder::load`] without calibration.
    fn load_plain(
        r: &WeightReader,
        c: &ModelConfig,
        num_labels: usize,
        precision: Precision,
    ) -> Result<Self> {
        let (h, e) = (c.hidden_size, c.embedding_size);
        let d = c.head_dim();
        let modern = c.modern.as_ref();
        let scale = 1.0 / (d as f32).sqrt();
        let table = |tensor: T, rows: usize| to_vec(&r.matrix(tensor, rows, e)?);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                // [Q | K | V] rows, Q scaled by 1/√d (rotation is linear,
                // so scaling before the rotary turn is the same).
                let (mut weight, mut bias) = match modern {
                    Some(_) => {
                        let (w, b) = r.linear(T::Qkv(i), 3 * h, h)?;
                        (to_vec(&w)?, to_vec(&b)?)
                    }
                    None => {
                        let (mut weight, mut bias) =
                            (Vec::with_capacity(3 * h * h), Vec::with_capacity(3 * h));
                        for part in [T::Query(i), T::Key(i), T::Value(i)] {
                            let (w, b) = r.linear(part, h, h)?;
                            weight.extend(to_vec(&w)?);
                            bias.extend(to_vec(&b)?);
                        }
                        (weight, bias)
                    }
                };
                weight[..h * h].iter_mut().for_each(|v| *v *= scale);
                bias[..h].iter_mut().for_each(|v| *v *= scale);
                let ffn_width = match modern {
                    Some(_) => 2 * c.intermediate_size,
                    None => c.intermediate_size,
                };
                Ok(Layer {
                    qkv: CpuLinear::from_parts(weight, bias, 3 * h, h, precision)?,
                    attention_out: CpuLinear::load(r, T::AttentionOutput(i), h, h, precision)?,
                    attention_norm: match (modern, i) {
                        (Some(_), 0) => None,
                        _ => Some(Norm::load(r, T::AttentionNorm(i), h)?),
                    },
                    intermediate: CpuLinear::load(r, T::FeedForwardIn(i), ffn_width, h, precision)?,
                    output: CpuLinear::load(
                        r,
                        T::FeedForwardOut(i),
                        h,
                        c.intermediate_size,
                        precision,
                    )?,
                    output_norm: Norm::load(r, T::FeedForwardNorm(i), h)?,
                    rotary: modern.map(|m| {
                        let global = m.global_layers.get(i).copied().unwrap_or(true);
                        RotaryLayer {
                            table: usize::from(!global),
                            window: (!global).then_some(m.local_window),
                        }
                    }),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rotary = match modern {
            Some(m) => [m.global_rope_theta, m.local_rope_theta]
                .into_iter()
                .map(|theta| rotary_table(theta, d, c.max_sequence_len()))
                .collect(),
            None => Vec::new(),
        };
        let head = Head {
            pooling: c.head.pooling,
            dense: CpuLinear::load(r, T::HeadDense, h, h, Precision::F32)?,
            activation: c.head.activation.into(),
            norm: match c.head.normed {
                true => Some(Norm::load(r, T::HeadNorm, h)?),
                false => None,
            },
            classifier: CpuLinear::load(r, T::Classifier, num_labels, h, Precision::F32)?,
        };
        Ok(Self {
            config: c.clone(),
            hidden: h,
            heads: c.num_attention_heads,
            head_dim: d,
            eps: c.layer_norm_eps as f32,
            activation: c.hidden_act.into(),
            modern: modern.is_some(),
            word: table(T::WordEmbeddings, c.vocab_size)?,
            position: match modern {
                Some(_) => None,
                None => Some(table(T::PositionEmbeddings, c.max_position_embeddings)?),
            },
            token_type: match c.type_vocab_size {
                0 => None,
                rows => Some(table(T::TokenTypeEmbeddings, rows)?),
            },
            types_by_segment: c.family.reads_token_types(),
            embedding_norm: Norm::load(r, T::EmbeddingNorm, e)?,
            projection: match e != h {
                true => Some(CpuLinear::load(
                    r,
                    T::EmbeddingProjection,
                    h,
                    e,
                    Precision::F32,
                )?),
                false => None,
            },
            layers,
            final_norm: match modern {
                Some(_) => Some(Norm::load(r, T::FinalNorm, h)?),
                None => None,
            },
            rotary,
            head,
            shard_tokens: shard_tokens(precision),
            bf16_attention: attention_in_bf16(precision, d),
            workspaces: Pool::new(),
        })
    }

    /// The peaks of the observed products' inputs (see [`calibration`])
    /// while this encoder scores `text`.
    fn activation_peaks(&self, text: &TokenBatch) -> Result<Vec<LayerPeaks>> {
        let peaks = ActivationPeaks::new(self.layers.len());
        if !text.is_empty() {
            self.forward_observed(text, Some(&peaks))?;
        }
        Ok(peaks.into_layers())
    }

    /// This f32 encoder in int8, the products that read the residual
    /// stream smoothed for `peaks` where given and where they show outlier
    /// channels ([`CpuLinear::into_int8`]): the feed-forward output's
    /// input (after GELU) and the attention output's are left as they are,
    /// as smoothing them measured worse (τ 0.962 → 0.956 with all four).
    fn into_int8(mut self, peaks: Option<Vec<LayerPeaks>>) -> Self {
        let peaks = peaks.unwrap_or_default();
        let layers = std::mem::take(&mut self.layers);
        self.layers = layers
            .into_iter()
            .zip(
                peaks
                    .into_iter()
                    .chain(std::iter::repeat_with(LayerPeaks::default)),
            )
            .map(|(layer, peaks)| Layer {
                qkv: layer.qkv.into_int8(Some(&peaks.qkv)),
                attention_out: layer.attention_out.into_int8(None),
                intermediate: layer.intermediate.into_int8(Some(&peaks.feed_forward_in)),
                output: layer.output.into_int8(None),
                ..layer
            })
            .collect();
        self.shard_tokens = shard_tokens(Precision::I8);
        self.bf16_attention = attention_in_bf16(Precision::I8, self.head_dim);
        // The calibration's buffers were sized for f32 shards.
        self.workspaces = Pool::new();
        self
    }

    /// Whether this int8 encoder's residual-stream products are smoothed
    /// ([`int8`], [`calibration`]).
    pub(super) fn smoothed(&self) -> bool {
        self.layers
            .iter()
            .any(|l| l.qkv.is_smoothed() || l.intermediate.is_smoothed())
    }

    /// Scores a validated batch: its shards spread over the compute threads.
    pub(super) fn forward(&self, batch: &TokenBatch) -> Result<ForwardOutput> {
        self.forward_observed(batch, None)
    }

    /// [`CpuEncoder::forward`], recording the observed products' inputs
    /// into `peaks` where given.
    fn forward_observed(
        &self,
        batch: &TokenBatch,
        peaks: Option<&ActivationPeaks>,
    ) -> Result<ForwardOutput> {
        use rayon::prelude::*;
        let count = shard_count(
            batch.total_tokens(),
            self.shard_tokens,
            rayon::current_num_threads(),
        );
        let shards = shards(batch, count);
        let parts: Vec<Result<(Vec<f32>, Vec<f32>)>> = shards
            .into_par_iter()
            .map(|pairs| {
                self.workspaces
                    .with(|ws| self.forward_shard(batch, pairs, ws, peaks))
            })
            .collect();
        let labels = self.head.classifier.outputs();
        let mut out = ForwardOutput {
            logits: Vec::with_capacity(batch.len() * labels),
            pooled: Vec::with_capacity(batch.len() * self.hidden),
            // Attention runs on each sequence alone: not a single pad.
            attention_slots: batch.total_tokens(),
        };
        for part in parts {
            let (logits, pooled) = part?;
            out.logits.extend(logits);
            out.pooled.extend(pooled);
        }
        Ok(out)
    }

    /// Runs pairs `pairs` of `batch` through the whole model on this thread.
    fn forward_shard(
        &self,
        batch: &TokenBatch,
        pairs: Range<usize>,
        ws: &mut Workspace,
        peaks: Option<&ActivationPeaks>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let h = self.hidden;
        let first_row = batch.range(pairs.start).start;
        let rows = batch.range(pairs.end - 1).end - first_row;
        let Workspace {
            hidden,
            qkv,
            context,
            attention,
            buffers,
        } = ws;
        let hidden = grown(hidden, rows * h);
        timed(Stage::Embed, || {
            self.embed(
                batch,
                pairs.clone(),
                first_row,
                hidden,
                &mut buffers.products,
            )
        })?;
        let n = pairs.len();
        let cls_rows: Vec<usize> = pairs
            .clone()
            .map(|i| batch.range(i).start - first_row)
            .collect();

        let last = self.layers.len().saturating_sub(1);
        for (index, layer) in self.layers.iter().enumerate() {
            // Pre-norm layers read a normed copy; post-norm ones the hidden
            // state itself.
            let input: &[f32] = match (&layer.attention_norm, self.modern) {
                (Some(norm), true) => {
                    let normed = grown(&mut buffers.normed, rows * h);
                    timed(Stage::Norms, || {
                        norm.normalize_into(hidden, normed, self.eps)
                    });
                    normed
                }
                _ => hidden,
            };
            if let Some(peaks) = peaks {
                peaks.observe(index, Observed::Qkv, &input[..rows * h], h);
            }
            let qkv = grown(qkv, rows * 3 * h);
            timed(Stage::Qkv, || {
                layer.qkv.product(input, rows, qkv, &mut buffers.products);
                kernels::add_bias(qkv, layer.qkv.bias());
            });

            // A [CLS]-pooled head reads only [CLS]: in the last layer no
            // other token's output is used, so only [CLS] attends (as
            // query; every token is still a key and value) and the rest of
            // the layer runs on [CLS] rows alone — about a seventh of the
            // model's work, the same arithmetic for the rows that matter.
            let cls_only = index == last && self.head.pooling == Pooling::Cls;
            let context = grown(context, rows * h);
            timed(Stage::Attention, || {
                for i in pairs.clone() {
                    let r = batch.range(i);
                    let start = r.start - first_row;
                    let sequence = &mut qkv[start * 3 * h..r.end.saturating_sub(first_row) * 3 * h];
                    if let Some(rotary) = &layer.rotary {
                        let (cos, sin) = &self.rotary[rotary.table];
                        kernels::rotary(sequence, r.len(), self.heads, self.head_dim, cos, sin);
                    }
                    let heads = Heads {
                        count: self.heads,
                        dim: self.head_dim,
                        len: r.len(),
                        queries: if cls_only { 1 } else { r.len() },
                        window: layer.rotary.as_ref().and_then(|l| l.window),
                    };
                    let context = &mut context[start * h..];
                    match self.bf16_attention {
                        true => attention_bf16::attention(sequence, heads, context, attention),
                        false => kernels::attention(sequence, heads, context, attention),
                    }
                }
            });
            let observed = peaks.map(|p| (p, index));
            if cls_only {
                let (mut cls_hidden, cls_context) = timed(Stage::Norms, || {
                    (
                        gather_rows(hidden, h, &cls_rows),
                        gather_rows(context, h, &cls_rows),
                    )
                });
                self.finish_layer(layer, &mut cls_hidden, &cls_context, n, buffers, observed);
                timed(Stage::Norms, || {
                    hidden[..n * h].copy_from_slice(&cls_hidden)
                });
            } else {
                self.finish_layer(layer, hidden, context, rows, buffers, observed);
            }
        }

        let (logits, vector) = timed(Stage::Head, || {
            // After the last layer of a [CLS]-pooled model the [CLS] rows lie
            // first, in pair order.
            let mut pooled = match (self.head.pooling, self.layers.is_empty()) {
                (Pooling::Cls, false) => hidden[..n * h].to_vec(),
                (Pooling::Cls, true) => gather_rows(hidden, h, &cls_rows),
                (Pooling::Mean, _) => Vec::new(),
            };
            match self.head.pooling {
                Pooling::Cls => {
                    if let Some(norm) = &self.final_norm {
                        let copy = pooled.clone();
                        norm.normalize_into(&copy, &mut pooled, self.eps);
                    }
                }
                Pooling::Mean => {
                    if let Some(norm) = &self.final_norm {
                        let normed = grown(&mut buffers.normed, rows * h);
                        norm.normalize_into(hidden, normed, self.eps);
                        hidden.copy_from_slice(normed);
                    }
                    pooled = vec![0f32; n * h];
                    for (p, i) in pairs.clone().enumerate() {
                        let r = batch.range(i);
                        let scale = 1.0 / r.len() as f32;
                        let sum = &mut pooled[p * h..(p + 1) * h];
                        for row in r {
                            let local = row - first_row;
                            for (s, v) in sum.iter_mut().zip(&hidden[local * h..(local + 1) * h]) {
                                *s += v;
                            }
                        }
                        sum.iter_mut().for_each(|s| *s *= scale);
                    }
                }
            }
            let mut vector = vec![0f32; n * h];
            self.head
                .dense
                .product(&pooled, n, &mut vector, &mut buffers.products);
            kernels::bias_activation(&mut vector, self.head.dense.bias(), self.head.activation);
            if let Some(norm) = &self.head.norm {
                let copy = vector.clone();
                norm.normalize_into(&copy, &mut vector, self.eps);
            }
            let mut logits = vec![0f32; n * self.head.classifier.outputs()];
            self.head
                .classifier
                .product(&vector, n, &mut logits, &mut buffers.products);
            kernels::add_bias(&mut logits, self.head.classifier.bias());
            (logits, vector)
        });
        Ok((logits, vector))
    }

    /// The rest of a layer after attention, on `rows` rows: output
    /// projection and residual, feed-forward and residual, with the norms
    /// after (post-norm) or before (pre-norm) each block; `observed`: where
    /// to record the feed-forward input's peaks, with the layer's index.
    fn finish_layer(
        &self,
        layer: &Layer,
        hidden: &mut [f32],
        context: &[f32],
        rows: usize,
        buffers: &mut LayerBuffers,
        observed: Option<(&ActivationPeaks, usize)>,
    ) {
        let h = self.hidden;
        let hidden = &mut hidden[..rows * h];
        let observe = |input: &[f32]| {
            if let Some((peaks, index)) = observed {
                peaks.observe(index, Observed::FeedForwardIn, input, h);
            }
        };
        let out = grown(&mut buffers.out, rows * h);
        timed(Stage::AttentionOut, || {
            layer
                .attention_out
                .product(context, rows, out, &mut buffers.products)
        });
        let inner = grown(&mut buffers.inner, rows * layer.intermediate.outputs());
        if self.modern {
            let normed = grown(&mut buffers.normed, rows * h);
            timed(Stage::Norms, || {
                kernels::add_residual(hidden, out, layer.attention_out.bias());
                layer.output_norm.normalize_into(hidden, normed, self.eps);
            });
            observe(normed);
            timed(Stage::FeedForwardIn, || {
                layer
                    .intermediate
                    .product(normed, rows, inner, &mut buffers.products)
            });
            let width = layer.intermediate.outputs() / 2;
            let gated = grown(&mut buffers.gated, rows * width);
            timed(Stage::Activation, || {
                kernels::gated_activation(inner, layer.intermediate.bias(), self.activation, gated)
            });
            timed(Stage::FeedForwardOut, || {
                layer
                    .output
                    .product(gated, rows, out, &mut buffers.products)
            });
            timed(Stage::Norms, || {
                kernels::add_residual(hidden, out, layer.output.bias())
            });
            return;
        }
        if let Some(norm) = &layer.attention_norm {
            timed(Stage::Norms, || {
                norm.residual(hidden, out, layer.attention_out.bias(), self.eps)
            });
        }
        observe(hidden);
        timed(Stage::FeedForwardIn, || {
            layer
                .intermediate
                .product(hidden, rows, inner, &mut buffers.products)
        });
        timed(Stage::Activation, || {
            kernels::bias_activation(inner, layer.intermediate.bias(), self.activation)
        });
        timed(Stage::FeedForwardOut, || {
            layer
                .output
                .product(inner, rows, out, &mut buffers.products)
        });
        timed(Stage::Norms, || {
            layer
                .output_norm
                .residual(hidden, out, layer.output.bias(), self.eps)
        });
    }

    /// Word (+ position) (+ segment) embeddings of `pairs` (their tokens
    /// start at row `first_row` of the batch), the layer norm, and ELECTRA's
    /// projection to the hidden width.
    fn embed(
        &self,
        batch: &TokenBatch,
        pairs: Range<usize>,
        first_row: usize,
        dst: &mut [f32],
        products: &mut LinearScratch,
    ) -> Result<()> {
        let e = self.config.embedding_size;
        let rows = batch.range(pairs.end - 1).end - first_row;
        let mut embedded = vec![
            0f32;
            if self.projection.is_some() {
                rows * e
            } else {
                0
            }
        ];
        let target: &mut [f32] = match self.projection {
            Some(_) => &mut embedded,
            None => dst,
        };
        let mut positions = Vec::new();
        for i in pairs {
            positions.clear();
            push_position_ids(&self.config, batch.ids(i), &mut positions);
            for (&position, row) in positions.iter().zip(batch.range(i)) {
                let local = row - first_row;
                let out = &mut target[local * e..(local + 1) * e];
                let word = embedding_row(&self.word, e, batch.input_ids[row] as usize, "token id")?;
                out.copy_from_slice(word);
                if let Some(table) = &self.position {
                    let pos = embedding_row(table, e, position as usize, "position")?;
                    out.iter_mut().zip(pos).for_each(|(o, p)| *o += p);
                }
                if let Some(table) = &self.token_type {
                    let segment = match self.types_by_segment {
                        true => batch.type_ids[row] as usize,
                        false => 0,
                    };
                    let kind = embedding_row(table, e, segment, "token type")?;
                    out.iter_mut().zip(kind).for_each(|(o, k)| *o += k);
                }
            }
        }
        kernels::layer_norm(
            target,
            &self.embedding_norm.gamma,
            &self.embedding_norm.beta,
            self.eps,
        );
        if let Some(projection) = &self.projection {
            let h = self.hidden;
            projection.product(&embedded, rows, &mut dst[..rows * h], products);
            kernels::add_bias(&mut dst[..rows * h], projection.bias());
        }
        Ok(())
    }
}

/// Rows `rows` of a matrix of width `h`, stacked.
fn gather_rows(matrix: &[f32], h: usize, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * h);
    for &r in rows {
        out.extend_from_slice(&matrix[r * h..(r + 1) * h]);
    }
    out
}

/// Row `id` of an embedding table of width `h`.
fn embedding_row<'t>(table: &'t [f32], h: usize, id: usize, what: &str) -> Result<&'t [f32]> {
    table
        .get(id * h..(id + 1) * h)
        .ok_or_else(|| EngineError::Weights(format!("{what} {id} is outside the embedding table")))
}

/// How many shards `tokens` tokens make: about `shard_tokens` each, rounded
/// up to a multiple of `threads` so every thread gets the same share.
fn shard_count(tokens: usize, shard_tokens: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    tokens
        .div_ceil(shard_tokens.max(1))
        .div_ceil(threads)
        .max(1)
        * threads
}

/// Cuts pairs `0..batch.len()` into at most `count` contiguous ranges of
/// about equal tokens.
fn shards(batch: &TokenBatch, count: usize) -> Vec<Range<usize>> {
    let n = batch.len();
    let count = count.clamp(1, n.max(1));
    let total = batch.total_tokens().max(1);
    let mut out = Vec::with_capacity(count);
    let mut start = 0;
    for s in 1..=count {
        if start >= n {
            break;
        }
        let mut end = if s == count {
            n
        } else {
            let target = total * s / count;
            (start + 1..n)
                .find(|&i| batch.offsets[i] as usize >= target)
                .unwrap_or(n)
        };
        // Leave at least one pair for every shard still to come.
        end = end.min(n - (count - s)).max(start + 1);
        out.push(start..end);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(lens: &[usize]) -> TokenBatch {
        let mut b = TokenBatch::default();
        for &l in lens {
            b.push(&vec![1; l], &vec![0; l]);
        }
        b
    }

    #[test]
    fn an_f32_layer_as_read_multiplies_and_quantizes_as_the_transposed_one() {
        let (out, inp, rows) = (40, 70, 5);
        let weight: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let bias: Vec<f32> = (0..out).map(|o| o as f32 * 0.01).collect();
        let x: Vec<f32> = (0..rows * inp)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let transposed = || {
            CpuLinear::from_parts(weight.clone(), bias.clone(), out, inp, Precision::F32).unwrap()
        };
        let as_read = || CpuLinear::F32AsRead {
            weight: weight.clone(),
            bias: bias.clone(),
            inputs: inp,
        };
        let product = |layer: &CpuLinear| {
            let mut dst = vec![0f32; rows * out];
            layer.product(&x, rows, &mut dst, &mut LinearScratch::default());
            dst
        };
        assert_eq!((as_read().outputs(), as_read().bias()), (out, &bias[..]));
        for (p, q) in product(&transposed()).iter().zip(&product(&as_read())) {
            assert!((p - q).abs() <= 1e-5 * p.abs().max(1.0), "{p} vs {q}");
        }
        // Quantized, both are the same int8 layer, smoothed or not.
        let peaks: Vec<f32> = (0..inp)
            .map(|k| if k == 3 { 30.0 } else { 1.0 + k as f32 * 0.01 })
            .collect();
        for peaks in [None, Some(&peaks[..])] {
            let (a, b) = (transposed().into_int8(peaks), as_read().into_int8(peaks));
            assert_eq!(
                (a.is_smoothed(), b.is_smoothed()),
                (peaks.is_some(), peaks.is_some())
            );
            assert_eq!(product(&a), product(&b), "smoothed: {}", peaks.is_some());
        }
    }

    #[test]
    fn shards_cover_every_pair_once_with_balanced_tokens() {
        let b = batch(&[10, 10, 10, 10, 80, 10, 10]);
        let s = shards(&b, 2);
        assert_eq!(s, vec![0..5, 5..7]);
        assert_eq!(shards(&b, 1), vec![0..7]);
        assert_eq!(shards(&batch(&[5]), 4), vec![0..1]);
        let many = shards(&batch(&[1, 1, 1]), 3);
        assert_eq!(many, vec![0..1, 1..2, 2..3]);
        let even = shards(&batch(&[10; 8]), 2);
        assert_eq!(even, vec![0..4, 4..8]);
    }

    #[test]
    fn shard_count_is_a_multiple_of_the_threads_near_the_wanted_size() {
        assert_eq!(shard_count(10_880, 1024, 2), 12);
        assert_eq!(shard_count(10_880, 128, 2), 86);
        assert_eq!(shard_count(100, 1024, 2), 2);
        assert_eq!(shard_count(0, 1024, 3), 3);
        assert_eq!(shard_count(5000, 0, 0), 5000);
    }
}
