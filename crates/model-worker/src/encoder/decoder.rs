//! A Qwen3 reranker on candle: the GPU path (and the CPU's other dtypes and
//! layouts). Sequences are computed whole, in the plan's attention groups
//! with a causal mask; the CPU decoder ([`super::cpu`]) is the one that
//! shares prompt prefixes.

use candle_core::{D, DType, Device, Tensor};

use super::linear::Linear;
use super::plan::BatchPlan;
use super::{CrossEncoder, ForwardOutput, Place, WeightReader, rotary_table, to_f32};
use crate::error::{EngineError, Result};
use ce_model_spec::{DecoderHead, ModelConfig, Tensor as T, WeightDType};

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    qkv: Linear,
    q_norm: Tensor,
    k_norm: Tensor,
    out: Linear,
    post_norm: Tensor,
    gate_up: Linear,
    down: Linear,
}

/// The decoder with its weights on the device.
#[derive(Debug)]
pub(super) struct CandleDecoder {
    word: Tensor,
    layers: Vec<Layer>,
    final_norm: Tensor,
    head: Linear,
    /// `[positions, d/2]` each, in the activation dtype.
    cos: Tensor,
    sin: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    eps: f32,
}

impl CandleDecoder {
    pub(super) fn load(
        r: &WeightReader,
        c: &ModelConfig,
        dtype: WeightDType,
        device: &Device,
        num_labels: usize,
        head_rows: Option<[u32; 2]>,
    ) -> Result<Self> {
        let Some(spec) = &c.decoder else {
            return Err(EngineError::Weights(format!(
                "{} is not a decoder",
                c.model_type
            )));
        };
        let place = Place { dtype, device };
        let (h, d, kv) = (c.hidden_size, spec.head_dim, spec.kv_heads);
        let q = c.num_attention_heads * d;
        let vector =
            |tensor: T, len: usize| place.activation(&r.get(len, &r.names.weight(tensor))?);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                Ok(Layer {
                    input_norm: vector(T::AttentionNorm(i), h)?,
                    qkv: Linear::fuse(
                        &[
                            r.linear(T::Query(i), q, h)?,
                            r.linear(T::Key(i), kv * d, h)?,
                            r.linear(T::Value(i), kv * d, h)?,
                        ],
                        dtype,
                        device,
                    )?,
                    q_norm: vector(T::QueryNorm(i), d)?,
                    k_norm: vector(T::KeyNorm(i), d)?,
                    out: place.linear(r.linear(T::AttentionOutput(i), h, q)?)?,
                    post_norm: vector(T::FeedForwardNorm(i), h)?,
                    gate_up: Linear::fuse(
                        &[
                            r.linear(T::Gate(i), c.intermediate_size, h)?,
                            r.linear(T::FeedForwardIn(i), c.intermediate_size, h)?,
                        ],
                        dtype,
                        device,
                    )?,
                    down: place.linear(r.linear(
                        T::FeedForwardOut(i),
                        h,
                        c.intermediate_size,
                    )?)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let word = r.matrix(T::WordEmbeddings, c.vocab_size, h)?;
        let head_place = Place::head(dtype, device);
        let head_weight = match (spec.head, head_rows) {
            (DecoderHead::Classifier, _) => r.matrix(T::Classifier, num_labels, h)?,
            (DecoderHead::YesNo, Some(rows)) => {
                let table = match spec.tied_embeddings {
                    true => word.clone(),
                    false => r.matrix(T::LmHead, c.vocab_size, h)?,
                };
                if rows.iter().any(|&id| id as usize >= c.vocab_size) {
                    return Err(EngineError::Weights(format!(
                        "a yes/no token id of {rows:?} is outside the vocabulary of {}",
                        c.vocab_size
                    )));
                }
                table.index_select(&Tensor::new(&rows[..], &Device::Cpu)?, 0)?
            }
            (DecoderHead::YesNo, None) => {
                return Err(EngineError::Weights(
                    "a yes/no reranker needs the ids of its \"yes\" and \"no\" tokens".into(),
                ));
            }
        };
        let labels = head_weight.dim(0)?;
        let head = head_place.linear((
            head_weight,
            Tensor::zeros(labels, DType::F32, &Device::Cpu)?,
        ))?;
        let (cos, sin) = rotary_table(spec.rope_theta, d, c.max_sequence_len());
        let shape = (c.max_sequence_len(), d / 2);
        Ok(Self {
            word: place.activation(&word)?,
            layers,
            final_norm: vector(T::FinalNorm, h)?,
            head,
            cos: place.activation(&Tensor::from_vec(cos, shape, &Device::Cpu)?)?,
            sin: place.activation(&Tensor::from_vec(sin, shape, &Device::Cpu)?)?,
            heads: c.num_attention_heads,
            kv_heads: kv,
            head_dim: d,
            intermediate: c.intermediate_size,
            eps: c.layer_norm_eps as f32,
        })
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            weight,
            self.eps,
        )?)
    }

    /// Causal grouped-query attention of one layer over the plan's groups:
    /// `[T, H]` normed input → `[T, heads · d]` contexts.
    fn attention(&self, layer: &Layer, x: &Tensor, plan: &BatchPlan) -> Result<Tensor> {
        let (heads, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let qkv = layer.qkv.forward(x)?; // [T, (heads + 2 kv) d]
        let scale = 1.0 / (d as f64).sqrt();
        let mut contexts = Vec::with_capacity(plan.groups.len());
        for g in &plan.groups {
            let (b, l) = (g.batch, g.max_len);
            let block = qkv.index_select(&g.gather, 0)?; // [b l, ·]
            let split = |start: usize, count: usize| -> Result<Tensor> {
                Ok(block
                    .narrow(1, start * d, count * d)?
                    .reshape((b, l, count, d))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = self.rms_norm(&split(0, heads)?, &layer.q_norm)?;
            let k = self.rms_norm(&split(heads, kv)?, &layer.k_norm)?;
            let v = split(heads + kv, kv)?;
            // Every sequence starts at slot 0 of its padded row.
            let cos = self.cos.narrow(0, 0, l)?;
            let sin = self.sin.narrow(0, 0, l)?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
            let repeat = |t: Tensor| -> Result<Tensor> {
                Ok(t.unsqueeze(2)?
                    .expand((b, kv, heads / kv, l, d))?
                    .reshape((b, heads, l, d))?)
            };
            let (k, v) = (repeat(k)?, repeat(v)?);
            // Causal and key mask: query q sees keys 0..=q of its own
            // sequence; a pad query sees the real keys before it, so no
            // row is masked whole.
            let causal: Vec<f32> = (0..l)
                .flat_map(|q| (0..l).map(move |k| if k <= q { 0.0 } else { f32::NEG_INFINITY }))
                .collect();
            let causal = Tensor::from_vec(causal, (1, 1, l, l), q.device())?.to_dtype(q.dtype())?;
            let mask = causal.broadcast_add(&g.mask)?;
            let scores = (q * scale)?.matmul(&k.t()?)?.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?; // [b, heads, l, d]
            contexts.push(ctx.transpose(1, 2)?.reshape((b * l, heads * d))?);
        }
        let ctx = match contexts.len() {
            1 => contexts.swap_remove(0),
            _ => Tensor::cat(&contexts, 0)?,
        };
        Ok(ctx.index_select(&plan.unpad, 0)?)
    }

    pub(super) fn forward(
        &self,
        batch: &ce_common::TokenBatch,
        model: &CrossEncoder,
    ) -> Result<ForwardOutput> {
        let plan = model.plan(batch)?;
        let mut hidden = self.word.index_select(&plan.input_ids, 0)?;
        for layer in &self.layers {
            let normed = self.rms_norm(&hidden, &layer.input_norm)?;
            let context = self.attention(layer, &normed, &plan)?;
            hidden = (hidden + layer.out.forward(&context)?)?;
            let normed = self.rms_norm(&hidden, &layer.post_norm)?;
            let gate_up = layer.gate_up.forward(&normed)?;
            let gate = gate_up.narrow(D::Minus1, 0, self.intermediate)?;
            let up = gate_up.narrow(D::Minus1, self.intermediate, self.intermediate)?;
            let gated = (candle_nn::ops::silu(&gate)? * up)?;
            hidden = (hidden + layer.down.forward(&gated)?)?;
        }
        let last: Vec<u32> = plan
            .pair_rows
            .iter()
            .map(|&(start, len)| (start + len - 1) as u32)
            .collect();
        let last = Tensor::from_vec(last, plan.pair_rows.len(), hidden.device())?;
        let pooled = self.rms_norm(&hidden.index_select(&last, 0)?, &self.final_norm)?;
        let head_in = match model.dtype {
            WeightDType::Q8_0 | WeightDType::Q4_0 => pooled.to_dtype(DType::F32)?,
            _ => pooled,
        };
        let logits = self.head.forward(&head_in)?;
        Ok(ForwardOutput {
            logits: to_f32(&logits)?,
            pooled: to_f32(&head_in)?,
            attention_slots: plan.padded_attention_tokens,
        })
    }
}
