//! The CPU decoder: Qwen3 rerankers on plain slices, each shared prompt
//! prefix computed once.
//!
//! ```text
//! batch ─▶ prefix groups (sequences sorted by their ids; neighbours that
//!          share a long enough prefix form a group) ─▶ shards (rayon)
//!            └─▶ per shard, on one thread, a packed matrix of segments:
//!                each group's shared prefix once, then each member's rest
//!                embeddings ─▶ [ RMSNorm ─▶ QKV GEMM ─▶ per-head RMSNorm of Q
//!                                and K, rotary turn ─▶ causal attention (a
//!                                member's rest sees its group's prefix and
//!                                itself) ─▶ out GEMM ─▶ +residual ─▶ RMSNorm
//!                                ─▶ gate|up GEMM ─▶ SiLU(gate)·up ─▶ down GEMM
//!                                ─▶ +residual ] × N
//!                ─▶ each member's last row ─▶ RMSNorm ─▶ head (classifier,
//!                   or the LM head's "no" and "yes" rows)
//! ```
//!
//! Why a prefix can be shared: in a causal model a token's hidden state at
//! every layer depends only on the tokens before it and on its position.
//! Every document of a reranking request follows the same system prompt,
//! instruction and query, so their keys and values are the same in every
//! sequence; computing them once and letting each document's tokens attend
//! to them gives the logits of the full computation (tests compare both),
//! for the cost of the documents alone. Groups are found from the token ids
//! themselves, so nothing upstream has to mark a prefix, and requests with
//! different queries batched together simply form different groups.
//!
//! In int8 the two products that read a normed copy of the residual stream
//! are smoothed as the encoder's are ([`super::int8`]) where calibration
//! finds outlier channels in their inputs ([`DecoderLayer::into_int8`]),
//! calibrated layer by layer as the model loads ([`super::calibration`]).

use std::ops::Range;

use ce_common::TokenBatch;
use ce_model_spec::{DecoderHead, ModelConfig, Tensor as T};

use super::calibration::{ActivationPeaks, LayerPeaks, Observed};
use super::kernels::{self, Activation, View, matmul};
use super::profile::{Stage, timed};
use super::{CpuLinear, LayerBuffers, Pool, Precision, embedding_row, grown, to_vec};
use crate::encoder::{ForwardOutput, WeightReader, rotary_table};
use crate::error::{EngineError, Result};

/// Sequences share a prefix only when it is at least this many tokens:
/// shorter ones save less than the extra segment costs.
const MIN_SHARED_PREFIX: usize = 8;

/// About how many computed tokens one shard holds. A decoder's weights are
/// far larger than its activations (0.6B parameters against a few MB per
/// shard), and every shard streams all of them, so shards are large: by
/// default one per thread for a request of 128 documents.
const SHARD_TOKENS: usize = 8192;

/// One decoder layer's weights.
#[derive(Debug)]
struct DecoderLayer {
    input_norm: Vec<f32>,
    /// `[Q | K | V]` rows: `heads · d`, `kv · d`, `kv · d`.
    qkv: CpuLinear,
    /// Per-head RMSNorm weights `[d]`; the query's pre-scaled by 1/√d
    /// (a scale after the norm is the same as one on the scores).
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    out: CpuLinear,
    post_norm: Vec<f32>,
    /// `[gate | up]` rows, `2F`.
    gate_up: CpuLinear,
    down: CpuLinear,
}

impl DecoderLayer {
    /// Layer `i`'s weights, its products in `precision`, or `None`: f32 as
    /// read, to calibrate on before quantizing ([`CpuLinear::F32AsRead`]).
    fn load(
        r: &WeightReader,
        c: &ModelConfig,
        shape: Shape,
        i: usize,
        precision: Option<Precision>,
    ) -> Result<Self> {
        let linear = |weight: Vec<f32>, bias: Vec<f32>, out: usize, inp: usize| match precision {
            Some(precision) => CpuLinear::from_parts(weight, bias, out, inp, precision),
            None => Ok(CpuLinear::F32AsRead {
                weight,
                bias,
                inputs: inp,
            }),
        };
        let read = |tensor: T, out: usize, inp: usize| -> Result<CpuLinear> {
            let (w, b) = r.linear(tensor, out, inp)?;
            linear(to_vec(&w)?, to_vec(&b)?, out, inp)
        };
        let (h, d) = (shape.hidden, shape.head_dim);
        let vector = |tensor: T, len: usize| -> Result<Vec<f32>> {
            to_vec(&r.get(len, &r.names.weight(tensor))?)
        };
        let (mut weight, mut bias) = (Vec::new(), Vec::new());
        for (part, rows) in [
            (T::Query(i), shape.q_width()),
            (T::Key(i), shape.kv_heads * d),
            (T::Value(i), shape.kv_heads * d),
        ] {
            let (w, b) = r.linear(part, rows, h)?;
            weight.extend(to_vec(&w)?);
            bias.extend(to_vec(&b)?);
        }
        let (mut gate_up, mut gate_up_bias) = (Vec::new(), Vec::new());
        for part in [T::Gate(i), T::FeedForwardIn(i)] {
            let (w, b) = r.linear(part, c.intermediate_size, h)?;
            gate_up.extend(to_vec(&w)?);
            gate_up_bias.extend(to_vec(&b)?);
        }
        let mut q_norm = vector(T::QueryNorm(i), d)?;
        let scale = 1.0 / (d as f32).sqrt();
        q_norm.iter_mut().for_each(|g| *g *= scale);
        Ok(Self {
            input_norm: vector(T::AttentionNorm(i), h)?,
            qkv: linear(weight, bias, shape.qkv_width(), h)?,
            q_norm,
            k_norm: vector(T::KeyNorm(i), d)?,
            out: read(T::AttentionOutput(i), h, shape.q_width())?,
            post_norm: vector(T::FeedForwardNorm(i), h)?,
            gate_up: linear(gate_up, gate_up_bias, 2 * c.intermediate_size, h)?,
            down: read(T::FeedForwardOut(i), h, c.intermediate_size)?,
        })
    }

    /// This f32 layer (as read) in int8, the two products that read a
    /// normed copy of the residual stream (Q K V and gate|up) smoothed for
    /// `peaks` where they show outlier channels, as in the encoder
    /// ([`super::int8`]).
    /// The attention output's and the down product's are not: smoothing
    /// the attention output halved the error on the 64-wide fixtures but
    /// raised it at Qwen3-Reranker-0.6B's size (random weights, i8 vs f32
    /// mean |Δ| 0.61 → 0.66 alone), and the down product's (SwiGLU's
    /// product of two projections) measured worse on the classifier.
    fn into_int8(self, peaks: &LayerPeaks) -> Self {
        Self {
            qkv: self.qkv.into_int8(Some(&peaks.qkv)),
            out: self.out.into_int8(None),
            gate_up: self.gate_up.into_int8(Some(&peaks.feed_forward_in)),
            down: self.down.into_int8(None),
            ..self
        }
    }
}

/// The shapes every pass reads.
#[derive(Debug, Clone, Copy)]
struct Shape {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
}

impl Shape {
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// A Qwen3 reranker with its weights in the CPU layout.
#[derive(Debug)]
pub struct CpuDecoder {
    shape: Shape,
    word: Vec<f32>,
    layers: Vec<DecoderLayer>,
    final_norm: Vec<f32>,
    /// `[labels, H]`, f32.
    head: CpuLinear,
    /// Rotary cos and sin, `[positions, d/2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Whether shared prefixes are computed once (else every sequence whole).
    prefix_reuse: bool,
    shard_tokens: usize,
    workspaces: Pool<Workspace>,
}

/// Reusable activation buffers of one shard.
#[derive(Debug, Default)]
struct Workspace {
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
    buffers: LayerBuffers,
}

/// Sequences of a batch whose first `shared` tokens are the same.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    /// Batch indices of the members.
    members: Vec<usize>,
    /// Tokens every member shares (0: computed whole); always less than
    /// each member's length, so every member has a last token of its own.
    shared: usize,
}

/// One run of consecutive rows of a shard's packed matrix.
#[derive(Debug, Clone)]
struct Segment {
    /// Its rows in the shard's matrix.
    rows: Range<usize>,
    /// Rows of the shared prefix it attends to before itself (empty for a
    /// prefix or a sequence computed whole).
    prefix: Range<usize>,
    /// The member whose last token ends this segment (a prefix has none).
    member: Option<usize>,
}

/// What one shard computes: its segments and the members they answer.
#[derive(Debug, Default)]
struct ShardPlan {
    segments: Vec<Segment>,
    /// Per row: token id and position.
    ids: Vec<u32>,
    positions: Vec<u32>,
    /// Batch indices of the members, in the order of their segments.
    members: Vec<usize>,
}

impl CpuDecoder {
    /// Prepares every weight: the layers' products in `precision`, the
    /// embeddings, norms and the head in f32. `head_rows` are the LM
    /// head's rows a yes/no reranker reads ("no", then "yes").
    pub(in crate::encoder) fn load(
        r: &WeightReader,
        c: &ModelConfig,
        num_labels: usize,
        head_rows: Option<[u32; 2]>,
        precision: Precision,
        prefix_reuse: bool,
        calibration: Option<&TokenBatch>,
    ) -> Result<Self> {
        let Some(spec) = &c.decoder else {
            return Err(EngineError::Weights(format!(
                "{} is not a decoder",
                c.model_type
            )));
        };
        let shape = Shape {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: spec.kv_heads,
            head_dim: spec.head_dim,
            eps: c.layer_norm_eps as f32,
        };
        let (h, d) = (shape.hidden, shape.head_dim);
        let vector = |tensor: T, len: usize| -> Result<Vec<f32>> {
            to_vec(&r.get(len, &r.names.weight(tensor))?)
        };
        let word = to_vec(&r.matrix(T::WordEmbeddings, c.vocab_size, h)?)?;
        let head = match (spec.head, head_rows) {
            (DecoderHead::Classifier, _) => {
                let w = to_vec(&r.matrix(T::Classifier, num_labels, h)?)?;
                CpuLinear::from_parts(w, vec![0.0; num_labels], num_labels, h, Precision::F32)?
            }
            (DecoderHead::YesNo, Some(rows)) => {
                let table = match spec.tied_embeddings {
                    true => None,
                    false => Some(to_vec(&r.matrix(T::LmHead, c.vocab_size, h)?)?),
                };
                let table = table.as_deref().unwrap_or(&word);
                let mut w = Vec::with_capacity(2 * h);
                for id in rows {
                    w.extend_from_slice(embedding_row(table, h, id as usize, "yes/no token")?);
                }
                CpuLinear::from_parts(w, vec![0.0; 2], 2, h, Precision::F32)?
            }
            (DecoderHead::YesNo, None) => {
                return Err(EngineError::Weights(
                    "a yes/no reranker needs the ids of its \"yes\" and \"no\" tokens".into(),
                ));
            }
        };
        let (cos, sin) = rotary_table(spec.rope_theta, d, c.max_sequence_len());
        let mut decoder = Self {
            shape,
            word,
            layers: Vec::with_capacity(c.num_hidden_layers),
            final_norm: vector(T::FinalNorm, h)?,
            head,
            cos,
            sin,
            prefix_reuse,
            shard_tokens: std::env::var("CE_CPU_SHARD_TOKENS")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&t| t > 0)
                .unwrap_or(SHARD_TOKENS),
            workspaces: Pool::new(),
        };
        let mut calibration = match (precision, calibration) {
            (Precision::I8, Some(text)) => match decoder.calibration(text) {
                Ok(shards) => Some(shards),
                Err(e) => {
                    // As the encoder: a model that cannot read the text
                    // still serves, unsmoothed.
                    tracing::warn!("int8 calibration failed, so the model is not smoothed: {e}");
                    None
                }
            },
            _ => None,
        };
        for i in 0..c.num_hidden_layers {
            let layer = match &mut calibration {
                // Layer by layer, so that only one layer is ever held in
                // f32: an 8B model's f32 weights would need 32 GB.
                Some(shards) => {
                    let layer = DecoderLayer::load(r, c, shape, i, None)?;
                    let peaks = decoder.observe_layer(&layer, shards);
                    layer.into_int8(&peaks)
                }
                None => DecoderLayer::load(r, c, shape, i, Some(precision))?,
            };
            decoder.layers.push(layer);
        }
        Ok(decoder)
    }

    /// Whether this int8 decoder's normed products are smoothed
    /// ([`DecoderLayer::into_int8`]).
    pub(in crate::encoder) fn smoothed(&self) -> bool {
        self.layers
            .iter()
            .any(|l| l.qkv.is_smoothed() || l.gate_up.is_smoothed())
    }

    /// The calibration text embedded, in shards as [`CpuDecoder::forward`]
    /// would cut it (its shared prompt computed once), ready for the
    /// layers to run on as they load.
    fn calibration(&self, text: &TokenBatch) -> Result<Vec<(ShardPlan, Workspace)>> {
        self.plans(text)
            .into_iter()
            .map(|plan| {
                let mut ws = Workspace::default();
                self.embed(&plan, &mut ws.hidden)?;
                Ok((plan, ws))
            })
            .collect()
    }

    /// Runs f32 `layer` on every calibration shard (advancing their hidden
    /// states to its output): the peaks of its observed products' inputs.
    fn observe_layer(
        &self,
        layer: &DecoderLayer,
        shards: &mut [(ShardPlan, Workspace)],
    ) -> LayerPeaks {
        use rayon::prelude::*;
        let peaks = ActivationPeaks::new(1);
        shards
            .par_iter_mut()
            .for_each(|(plan, ws)| self.run_layer(layer, plan, ws, None, Some(&peaks)));
        peaks.into_layers().pop().unwrap_or_default()
    }

    /// `batch` in prefix groups (or every sequence whole) and shards.
    fn plans(&self, batch: &TokenBatch) -> Vec<ShardPlan> {
        let groups = match self.prefix_reuse {
            true => prefix_groups(batch, MIN_SHARED_PREFIX),
            false => (0..batch.len())
                .map(|i| Group {
                    members: vec![i],
                    shared: 0,
                })
                .collect(),
        };
        shard_plans(
            batch,
            &groups,
            self.shard_tokens,
            rayon::current_num_threads(),
        )
    }

    /// Scores a validated batch.
    pub(in crate::encoder) fn forward(&self, batch: &TokenBatch) -> Result<ForwardOutput> {
        use rayon::prelude::*;
        let plans = self.plans(batch);
        let computed: usize = plans.iter().map(|p| p.ids.len()).sum();
        let parts: Vec<Result<(Vec<f32>, Vec<f32>)>> = plans
            .par_iter()
            .map(|plan| self.workspaces.with(|ws| self.forward_shard(plan, ws)))
            .collect();
        let (labels, h) = (self.head.outputs(), self.shape.hidden);
        let mut out = ForwardOutput {
            logits: vec![0.0; batch.len() * labels],
            pooled: vec![0.0; batch.len() * h],
            attention_slots: computed,
        };
        for (plan, part) in plans.iter().zip(parts) {
            let (logits, pooled) = part?;
            for (k, &member) in plan.members.iter().enumerate() {
                out.logits[member * labels..(member + 1) * labels]
                    .copy_from_slice(&logits[k * labels..(k + 1) * labels]);
                out.pooled[member * h..(member + 1) * h]
                    .copy_from_slice(&pooled[k * h..(k + 1) * h]);
            }
        }
        Ok(out)
    }

    /// Runs one shard's segments through the whole model on this thread:
    /// the logits and final-normed last hidden state of each member.
    fn forward_shard(&self, plan: &ShardPlan, ws: &mut Workspace) -> Result<(Vec<f32>, Vec<f32>)> {
        let h = self.shape.hidden;
        self.embed(plan, &mut ws.hidden)?;
        // Only each member's last token is read after the last layer.
        let last_rows: Vec<usize> = plan
            .segments
            .iter()
            .filter(|seg| seg.member.is_some())
            .map(|seg| seg.rows.end - 1)
            .collect();
        let last = self.layers.len().saturating_sub(1);
        for (index, layer) in self.layers.iter().enumerate() {
            let final_rows = (index == last).then_some(last_rows.as_slice());
            self.run_layer(layer, plan, ws, final_rows, None);
        }
        let members = last_rows.len();
        let (hidden, buffers) = (&ws.hidden, &mut ws.buffers);
        timed(Stage::Head, || {
            let last_hidden: Vec<f32> = match self.layers.is_empty() {
                true => gather(hidden, h, &last_rows),
                false => hidden[..members * h].to_vec(),
            };
            let mut pooled = vec![0f32; members * h];
            kernels::rms_norm_into(&last_hidden, &mut pooled, &self.final_norm, self.shape.eps);
            let mut logits = vec![0f32; members * self.head.outputs()];
            self.head
                .product(&pooled, members, &mut logits, &mut buffers.products);
            Ok((logits, pooled))
        })
    }

    /// The shard's rows' token embeddings into `hidden`.
    fn embed(&self, plan: &ShardPlan, hidden: &mut Vec<f32>) -> Result<()> {
        let h = self.shape.hidden;
        let hidden = grown(hidden, plan.ids.len() * h);
        timed(Stage::Embed, || -> Result<()> {
            for (row, &id) in hidden.chunks_exact_mut(h).zip(&plan.ids) {
                row.copy_from_slice(embedding_row(&self.word, h, id as usize, "token id")?);
            }
            Ok(())
        })
    }

    /// One layer on the shard's hidden state in `ws`. `final_rows`: the
    /// last layer, whose output only those rows (each member's last) need,
    /// so everything after attention runs on them alone and their outputs
    /// end up first in `ws.hidden`. `peaks`: where the inputs of the two
    /// normed products are recorded (calibration).
    fn run_layer(
        &self,
        layer: &DecoderLayer,
        plan: &ShardPlan,
        ws: &mut Workspace,
        final_rows: Option<&[usize]>,
        peaks: Option<&ActivationPeaks>,
    ) {
        let s = self.shape;
        let h = s.hidden;
        let rows = plan.ids.len();
        let Workspace {
            hidden,
            qkv,
            context,
            keys,
            values,
            scores,
            buffers,
        } = ws;
        let hidden = &mut hidden[..rows * h];
        let normed_rows = grown(&mut buffers.normed, rows * h);
        timed(Stage::Norms, || {
            kernels::rms_norm_into(hidden, normed_rows, &layer.input_norm, s.eps)
        });
        if let Some(peaks) = peaks {
            peaks.observe(0, Observed::Qkv, normed_rows, h);
        }
        let qkv = grown(qkv, rows * s.qkv_width());
        timed(Stage::Qkv, || {
            layer
                .qkv
                .product(normed_rows, rows, qkv, &mut buffers.products);
            kernels::add_bias(qkv, layer.qkv.bias());
        });
        timed(Stage::Attention, || {
            self.norm_and_rotate(layer, qkv, &plan.positions)
        });
        let context = grown(context, rows * s.q_width());
        timed(Stage::Attention, || {
            for seg in &plan.segments {
                if final_rows.is_some() && seg.member.is_none() {
                    continue;
                }
                let queries = match final_rows {
                    Some(_) => seg.rows.end - 1..seg.rows.end,
                    None => seg.rows.clone(),
                };
                attend(s, qkv, seg, queries, context, (keys, values, scores));
            }
        });
        match final_rows {
            Some(last_rows) => {
                // The rest of the last layer on the members' last rows only.
                let mut last_hidden = gather(hidden, h, last_rows);
                let last_context = gather(context, s.q_width(), last_rows);
                self.finish_layer(layer, &mut last_hidden, &last_context, buffers, peaks);
                hidden[..last_hidden.len()].copy_from_slice(&last_hidden);
            }
            None => self.finish_layer(layer, hidden, context, buffers, peaks),
        }
    }

    /// Per-head RMSNorm of every row's queries and keys, then their rotary
    /// turn by the row's position.
    fn norm_and_rotate(&self, layer: &DecoderLayer, qkv: &mut [f32], positions: &[u32]) {
        let s = self.shape;
        let (d, half) = (s.head_dim, s.head_dim / 2);
        let width = s.qkv_width();
        let keys_end = (s.heads + s.kv_heads) * d;
        for (row, &position) in qkv.chunks_exact_mut(width).zip(positions) {
            let (q, k) = row[..keys_end].split_at_mut(s.q_width());
            kernels::rms_norm(q, &layer.q_norm, s.eps);
            kernels::rms_norm(k, &layer.k_norm, s.eps);
            let p = position as usize;
            let (cos, sin) = (
                &self.cos[p * half..(p + 1) * half],
                &self.sin[p * half..(p + 1) * half],
            );
            for head in row[..keys_end].chunks_exact_mut(d) {
                let (a, b) = head.split_at_mut(half);
                for (((x, y), c), s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
                    let (x0, y0) = (*x, *y);
                    *x = x0 * c - y0 * s;
                    *y = y0 * c + x0 * s;
                }
            }
        }
    }

    /// The rest of a layer after attention on `hidden`'s rows: output
    /// projection and residual, RMSNorm, SwiGLU and residual (`peaks`: as
    /// [`CpuDecoder::run_layer`]'s).
    fn finish_layer(
        &self,
        layer: &DecoderLayer,
        hidden: &mut [f32],
        context: &[f32],
        buffers: &mut LayerBuffers,
        peaks: Option<&ActivationPeaks>,
    ) {
        let h = self.shape.hidden;
        let rows = hidden.len() / h;
        let out = grown(&mut buffers.out, rows * h);
        timed(Stage::AttentionOut, || {
            layer.out.product(context, rows, out, &mut buffers.products)
        });
        let normed = grown(&mut buffers.normed, rows * h);
        timed(Stage::Norms, || {
            kernels::add_residual(hidden, out, layer.out.bias());
            kernels::rms_norm_into(hidden, normed, &layer.post_norm, self.shape.eps);
        });
        if let Some(peaks) = peaks {
            peaks.observe(0, Observed::FeedForwardIn, normed, h);
        }
        let inner = grown(&mut buffers.inner, rows * layer.gate_up.outputs());
        timed(Stage::FeedForwardIn, || {
            layer
                .gate_up
                .product(normed, rows, inner, &mut buffers.products)
        });
        let gated = grown(&mut buffers.gated, rows * layer.gate_up.outputs() / 2);
        timed(Stage::Activation, || {
            kernels::gated_activation(inner, layer.gate_up.bias(), Activation::Silu, gated)
        });
        timed(Stage::FeedForwardOut, || {
            layer.down.product(gated, rows, out, &mut buffers.products)
        });
        timed(Stage::Norms, || {
            kernels::add_residual(hidden, out, layer.down.bias())
        });
    }
}

/// Causal attention of `queries` (rows of `seg`) over the segment's prefix
/// and its own rows up to each query, every query head reading its group's
/// key and value head; contexts go to `context` (row stride `heads · d`).
fn attend(
    s: Shape,
    qkv: &[f32],
    seg: &Segment,
    queries: Range<usize>,
    context: &mut [f32],
    (keys, values, scores): (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>),
) {
    let (d, width) = (s.head_dim, s.qkv_width());
    let prefix = seg.prefix.len();
    // Keys this segment's last query sees.
    let visible = prefix + (queries.end - seg.rows.start);
    let n = queries.len();
    let keys = grown(keys, visible * d);
    let values = grown(values, visible * d);
    let scores = grown(scores, n * visible);
    let per_kv = s.heads / s.kv_heads;
    let key_rows = seg.prefix.clone().chain(seg.rows.start..queries.end);
    for kv in 0..s.kv_heads {
        let k_col = s.q_width() + kv * d;
        let v_col = s.q_width() + (s.kv_heads + kv) * d;
        for (j, row) in key_rows.clone().enumerate() {
            let src = &qkv[row * width..(row + 1) * width];
            keys[j * d..(j + 1) * d].copy_from_slice(&src[k_col..k_col + d]);
            values[j * d..(j + 1) * d].copy_from_slice(&src[v_col..v_col + d]);
        }
        for head in kv * per_kv..(kv + 1) * per_kv {
            let q = View {
                data: &qkv[queries.start * width + head * d..],
                rows: n,
                cols: d,
                row: width,
                col: 1,
            };
            matmul(scores, visible, q, View::rows(keys, visible, d).t());
            for (i, row) in scores.chunks_exact_mut(visible).enumerate() {
                // Query `queries.start + i` sees the prefix and its own
                // segment up to itself.
                let seen = prefix + (queries.start + i - seg.rows.start) + 1;
                kernels::softmax_rows(&mut row[..seen], seen);
                row[seen..].fill(0.0);
            }
            let dst = &mut context[queries.start * s.q_width() + head * d..];
            matmul(
                dst,
                s.q_width(),
                View::rows(scores, n, visible),
                View::rows(values, visible, d),
            );
        }
    }
}

/// Rows `rows` of a matrix of width `w`, stacked.
fn gather(matrix: &[f32], w: usize, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * w);
    for &r in rows {
        out.extend_from_slice(&matrix[r * w..(r + 1) * w]);
    }
    out
}

/// Tokens two id sequences share from their start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The batch's sequences in groups that share a prefix of at least
/// `min_shared` tokens: sorted by their ids, a group starts with a
/// sequence, takes its neighbour if they share that much (fixing the
/// group's prefix at what they share), and then every following sequence
/// that shares the whole of it. A sequence that shares nothing long
/// enough is a group of one, computed whole.
fn prefix_groups(batch: &TokenBatch, min_shared: usize) -> Vec<Group> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| batch.ids(a).cmp(batch.ids(b)));
    let mut groups: Vec<Group> = Vec::new();
    for &i in &order {
        let ids = batch.ids(i);
        if let Some(g) = groups.last_mut() {
            let first = batch.ids(g.members[0]);
            // Every member keeps at least its last token for itself.
            let shared = common_prefix(first, ids)
                .min(first.len().saturating_sub(1))
                .min(ids.len().saturating_sub(1));
            let joins = match g.members.len() {
                1 => shared >= min_shared,
                _ => shared >= g.shared,
            };
            if joins {
                if g.members.len() == 1 {
                    g.shared = shared;
                }
                g.members.push(i);
                continue;
            }
        }
        groups.push(Group {
            members: vec![i],
            shared: 0,
        });
    }
    groups
}

/// Cuts the groups into shards of about equal computed tokens — a multiple
/// of `threads`, each at most about `shard_tokens` — keeping the sorted
/// order, a group cut between two shards computing its prefix in both.
fn shard_plans(
    batch: &TokenBatch,
    groups: &[Group],
    shard_tokens: usize,
    threads: usize,
) -> Vec<ShardPlan> {
    let cost: usize = groups
        .iter()
        .map(|g| {
            g.shared
                + g.members
                    .iter()
                    .map(|&m| batch.seq_len(m) - g.shared)
                    .sum::<usize>()
        })
        .sum();
    let members: usize = groups.iter().map(|g| g.members.len()).sum();
    let threads = threads.max(1);
    let count = (cost.div_ceil(shard_tokens.max(1)).div_ceil(threads).max(1) * threads)
        .clamp(1, members.max(1));
    let target = cost.div_ceil(count).max(1);
    let mut plans = vec![ShardPlan::default()];
    let mut tokens = 0;
    for g in groups {
        let mut prefix: Option<Range<usize>> = None;
        for &m in &g.members {
            let rest = batch.seq_len(m) - g.shared;
            let current = plans.len() - 1;
            if tokens >= target && plans.len() < count && !plans[current].members.is_empty() {
                plans.push(ShardPlan::default());
                tokens = 0;
                prefix = None;
            }
            let plan = plans.last_mut().expect("one plan at least");
            let ids = batch.ids(m);
            if g.shared > 0 && prefix.is_none() {
                let start = plan.ids.len();
                plan.ids.extend_from_slice(&ids[..g.shared]);
                plan.positions.extend(0..g.shared as u32);
                plan.segments.push(Segment {
                    rows: start..plan.ids.len(),
                    prefix: 0..0,
                    member: None,
                });
                prefix = Some(start..plan.ids.len());
                tokens += g.shared;
            }
            let start = plan.ids.len();
            plan.ids.extend_from_slice(&ids[g.shared..]);
            plan.positions
                .extend(g.shared as u32..(g.shared + rest) as u32);
            plan.segments.push(Segment {
                rows: start..plan.ids.len(),
                prefix: prefix.clone().unwrap_or(0..0),
                member: Some(m),
            });
            plan.members.push(m);
            tokens += rest;
        }
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seqs: &[&[u32]]) -> TokenBatch {
        let mut b = TokenBatch::default();
        for s in seqs {
            b.push(s, &vec![0; s.len()]);
        }
        b
    }

    #[test]
    fn sequences_that_share_a_prefix_are_grouped_and_keep_a_token_each() {
        let p: Vec<u32> = (100..112).collect();
        let with = |tail: &[u32]| -> Vec<u32> { p.iter().chain(tail).copied().collect() };
        let (a, b, c) = (with(&[1, 2]), with(&[1, 3]), with(&[4]));
        let other: Vec<u32> = (0..20).collect();
        let short = p.clone();
        let b = batch(&[&a, &other, &b, &c, &short]);
        let groups = prefix_groups(&b, 8);
        // Sorted: other (0..), then p-prefixed: short (= p), a, b, c.
        assert_eq!(
            groups,
            vec![
                Group {
                    members: vec![1],
                    shared: 0
                },
                Group {
                    members: vec![4, 0, 2, 3],
                    shared: 11
                },
            ]
        );
        let none = prefix_groups(&b, 13);
        assert!(none.iter().all(|g| g.members.len() == 1 || g.shared >= 13));
    }

    #[test]
    fn shards_cover_every_member_once_with_its_prefix_before_it() {
        let mut seqs: Vec<Vec<u32>> = Vec::new();
        for q in 0..3u32 {
            for doc in 0..10u32 {
                let mut s: Vec<u32> = (0..20).map(|t| 1000 * (q + 1) + t).collect();
                s.extend((0..(5 + doc)).map(|t| t + 7 * doc));
                seqs.push(s);
            }
        }
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let b = batch(&refs);
        let groups = prefix_groups(&b, 8);
        assert_eq!(groups.len(), 3);
        for threads in [1, 2, 3] {
            for shard_tokens in [16, 200, 100_000] {
                let plans = shard_plans(&b, &groups, shard_tokens, threads);
                let mut seen: Vec<usize> = plans.iter().flat_map(|p| p.members.clone()).collect();
                seen.sort();
                assert_eq!(seen, (0..30).collect::<Vec<_>>());
                for plan in &plans {
                    for seg in plan.segments.iter().filter(|s| s.member.is_some()) {
                        let m = seg.member.unwrap();
                        // The prefix rows then the segment's rows spell the sequence.
                        let ids: Vec<u32> = seg
                            .prefix
                            .clone()
                            .chain(seg.rows.clone())
                            .map(|r| plan.ids[r])
                            .collect();
                        assert_eq!(ids, seqs[m]);
                        let positions: Vec<u32> = seg
                            .prefix
                            .clone()
                            .chain(seg.rows.clone())
                            .map(|r| plan.positions[r])
                            .collect();
                        assert_eq!(positions, (0..seqs[m].len() as u32).collect::<Vec<_>>());
                    }
                }
            }
        }
    }
}
