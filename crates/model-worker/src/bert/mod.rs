//! A BERT cross-encoder (`BertForSequenceClassification`) on candle, computing
//! on packed batches.
//!
//! One struct per block, each with `load` and `forward`:
//!
//! ```text
//! TokenBatch ─▶ Embeddings ─▶ Layer × N ─▶ Pooler ─▶ Classifier ─▶ logits [pairs, labels]
//!               [T, H]        (SelfAttention, FeedForward)   [pairs, H]
//! ```
//!
//! `T` is the batch's real token count: there is no padded `[pairs, L]`
//! matrix anywhere but inside attention (see [`plan`]).
//!
//! Two implementations run these blocks. On the CPU, in `f32` or `i8` with
//! the default attention layout, [`cpu`] runs them on plain slices: fused
//! passes, AVX-512 GEMMs, one shard of the batch per thread, attention per
//! sequence with no padding at all. Everywhere else (GPUs, the other dtypes,
//! the padded layouts of the padding experiment) candle runs them.

pub mod cpu;
pub mod linear;
pub mod plan;

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use ce_common::TokenBatch;
use ce_common::batch::BatchLimits;

use crate::dtype::CandleDType;
use crate::error::{EngineError, Result};
use ce_model_spec::Weights;
use ce_model_spec::{HiddenAct, ModelConfig, WeightDType};
use linear::Linear;
use plan::{AttentionLayout, BatchPlan};

/// Reads f32 tensors by name, checking their shapes.
struct WeightReader<'a> {
    vb: VarBuilder<'a>,
    prefix: &'static str,
}

impl WeightReader<'_> {
    fn open(weights: &Weights) -> Result<Self> {
        let vb = match weights {
            Weights::Safetensors(path) => {
                check_readable(path)?;
                // SAFETY: the file is mapped read-only; the engine never
                // writes it, and a model directory is not modified while a
                // server runs from it (as with every mmap-based loader).
                unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }
            }
            Weights::Pytorch(path) => {
                check_readable(path)?;
                VarBuilder::from_pth(path, DType::F32, &Device::Cpu)
            }
        }
        .map_err(|e| EngineError::Weights(e.to_string()))?;
        // Cross-encoders save the encoder under `bert.`; a bare BertModel does not.
        let prefix = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        Ok(Self { vb, prefix })
    }

    fn get<S: Into<candle_core::Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        self.get_raw(shape, &format!("{}{name}", self.prefix))
    }

    fn get_raw<S: Into<candle_core::Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        self.vb
            .get(shape, name)
            .map_err(|e| EngineError::Weights(format!("{name}: {e}")))
    }

    fn has_raw(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    fn linear(&self, out: usize, inp: usize, name: &str) -> Result<(Tensor, Tensor)> {
        Ok((
            self.get((out, inp), &format!("{name}.weight"))?,
            self.get(out, &format!("{name}.bias"))?,
        ))
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
        name: &str,
        c: &ModelConfig,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        Ok(Self {
            weight: r
                .get(c.hidden_size, &format!("{name}.weight"))?
                .to_dtype(dtype)?
                .to_device(dev)?,
            bias: r
                .get(c.hidden_size, &format!("{name}.bias"))?
                .to_dtype(dtype)?
                .to_device(dev)?,
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

/// The word, position and token-type tables, each loaded by
/// `table(rows, name)`: both encoders read the same three.
fn embedding_tables<T>(
    c: &ModelConfig,
    mut table: impl FnMut(usize, &str) -> Result<T>,
) -> Result<[T; 3]> {
    Ok([
        table(c.vocab_size, "embeddings.word_embeddings.weight")?,
        table(
            c.max_position_embeddings,
            "embeddings.position_embeddings.weight",
        )?,
        table(c.type_vocab_size, "embeddings.token_type_embeddings.weight")?,
    ])
}

/// Word + position + token-type embeddings, then a layer norm.
#[derive(Debug)]
struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(r: &WeightReader, c: &ModelConfig, dtype: DType, dev: &Device) -> Result<Self> {
        let table = |rows: usize, name: &str| -> Result<Tensor> {
            Ok(r.get((rows, c.hidden_size), name)?
                .to_dtype(dtype)?
                .to_device(dev)?)
        };
        let [word, position, token_type] = embedding_tables(c, table)?;
        Ok(Self {
            word,
            position,
            token_type,
            norm: LayerNorm::load(r, "embeddings.LayerNorm", c, dtype, dev)?,
        })
    }

    /// `[T]` ids → `[T, H]`.
    fn forward(&self, plan: &BatchPlan) -> Result<Tensor> {
        let x = self.word.index_select(&plan.input_ids, 0)?;
        let x = (x + self.position.index_select(&plan.position_ids, 0)?)?;
        let x = (x + self.token_type.index_select(&plan.type_ids, 0)?)?;
        self.norm.forward(&x)
    }
}

/// Multi-head self-attention with its output projection and residual norm.
#[derive(Debug)]
struct SelfAttention {
    qkv: Linear,
    output: Linear,
    norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    hidden: usize,
}

impl SelfAttention {
    fn load(
        r: &WeightReader,
        p: &str,
        c: &ModelConfig,
        dtype: WeightDType,
        dev: &Device,
    ) -> Result<Self> {
        let h = c.hidden_size;
        let parts = [
            r.linear(h, h, &format!("{p}.attention.self.query"))?,
            r.linear(h, h, &format!("{p}.attention.self.key"))?,
            r.linear(h, h, &format!("{p}.attention.self.value"))?,
        ];
        let (ow, ob) = r.linear(h, h, &format!("{p}.attention.output.dense"))?;
        Ok(Self {
            qkv: Linear::fuse(&parts, dtype, dev)?,
            output: Linear::new(ow, ob, dtype, dev)?,
            norm: LayerNorm::load(
                r,
                &format!("{p}.attention.output.LayerNorm"),
                c,
                dtype.activation_dtype(),
                dev,
            )?,
            heads: c.num_attention_heads,
            head_dim: c.head_dim(),
            hidden: h,
        })
    }

    /// `[T, H]` → `[T, H]`.
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
            let q = (block.i((.., .., 0))?.transpose(1, 2)?.contiguous()? * scale)?;
            let k = block.i((.., .., 1))?.transpose(1, 2)?.contiguous()?;
            let v = block.i((.., .., 2))?.transpose(1, 2)?.contiguous()?;
            let scores = q.matmul(&k.t()?)?.broadcast_add(&g.mask)?; // [b, heads, l, l]
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
        let out = self.output.forward(&ctx)?;
        self.norm.forward(&(out + x)?)
    }
}

/// The position-wise feed-forward block with its residual norm.
#[derive(Debug)]
struct FeedForward {
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
    act: HiddenAct,
}

impl FeedForward {
    fn load(
        r: &WeightReader,
        p: &str,
        c: &ModelConfig,
        dtype: WeightDType,
        dev: &Device,
    ) -> Result<Self> {
        let (iw, ib) = r.linear(
            c.intermediate_size,
            c.hidden_size,
            &format!("{p}.intermediate.dense"),
        )?;
        let (ow, ob) = r.linear(
            c.hidden_size,
            c.intermediate_size,
            &format!("{p}.output.dense"),
        )?;
        Ok(Self {
            intermediate: Linear::new(iw, ib, dtype, dev)?,
            output: Linear::new(ow, ob, dtype, dev)?,
            norm: LayerNorm::load(
                r,
                &format!("{p}.output.LayerNorm"),
                c,
                dtype.activation_dtype(),
                dev,
            )?,
            act: c.hidden_act,
        })
    }

    /// `[T, H]` → `[T, H]` through `[T, F]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.intermediate.forward(x)?;
        let h = match self.act {
            HiddenAct::GeluErf => h.gelu_erf()?,
            HiddenAct::GeluTanh => h.gelu()?,
            HiddenAct::Relu => h.relu()?,
        };
        let out = self.output.forward(&h)?;
        self.norm.forward(&(out + x)?)
    }
}

/// One encoder layer.
#[derive(Debug)]
struct Layer {
    attention: SelfAttention,
    ffn: FeedForward,
}

/// `tanh(W · h[CLS] + b)`.
#[derive(Debug)]
struct Pooler {
    dense: Linear,
}

/// The relevance head: `W · pooled + b` → `num_labels` logits.
#[derive(Debug)]
struct Classifier {
    dense: Linear,
}

/// What one forward pass returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardOutput {
    /// Row-major `[pairs, num_labels]` raw logits.
    pub logits: Vec<f32>,
    /// Row-major `[pairs, hidden]` pooled `[CLS]` vectors (after the pooler's tanh).
    pub pooled: Vec<f32>,
    /// Token slots attention computed, pads included.
    pub attention_slots: usize,
}

/// The blocks on candle tensors.
#[derive(Debug)]
struct CandleEncoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pooler: Pooler,
    classifier: Classifier,
}

/// Which implementation runs the blocks.
#[derive(Debug)]
enum Encoder {
    Candle(CandleEncoder),
    Cpu(Box<cpu::CpuEncoder>),
}

/// A loaded BERT cross-encoder.
#[derive(Debug)]
pub struct BertCrossEncoder {
    config: ModelConfig,
    dtype: WeightDType,
    device: Device,
    attention: AttentionLayout,
    num_labels: usize,
    encoder: Encoder,
}

impl BertCrossEncoder {
    /// Loads the weights and prepares every layer for `dtype` on `device`,
    /// laying attention out as `attention` says.
    pub fn load(
        weights: &Weights,
        config: ModelConfig,
        dtype: WeightDType,
        device: &Device,
        attention: AttentionLayout,
    ) -> Result<Self> {
        let r = WeightReader::open(weights)?;
        let num_labels = Self::num_labels_of(&r, &config)?;
        let spec = ce_model_spec::ReplicaSpec {
            model: String::new(),
            dtype,
            device: crate::device::spec_of(device),
            attention,
            threads: 0,
        };
        spec.check(&config)?;
        let cpu_kernels = spec.runs_cpu_kernels(&config);
        let encoder = match dtype {
            WeightDType::F32 | WeightDType::I8 if cpu_kernels => Encoder::Cpu(Box::new(
                cpu::CpuEncoder::load(&r, &config, num_labels, dtype == WeightDType::I8)?,
            )),
            _ => Encoder::Candle(CandleEncoder::load(&r, &config, dtype, device, num_labels)?),
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

    /// The classifier's rows, checked against what `config.json` declares.
    fn num_labels_of(r: &WeightReader, c: &ModelConfig) -> Result<usize> {
        if !r.has_raw("classifier.weight") {
            return Err(EngineError::Weights(
                "classifier.weight is missing: this is not a cross-encoder (BertForSequenceClassification) checkpoint".into(),
            ));
        }
        let num_labels =
            r.vb.get_unchecked("classifier.weight")
                .map_err(|e| EngineError::Weights(e.to_string()))?
                .dim(0)
                .map_err(|e| EngineError::Weights(e.to_string()))?;
        if let Some(declared) = c.declared_labels
            && declared != num_labels
        {
            return Err(EngineError::Weights(format!(
                "config.json declares {declared} labels but classifier.weight has {num_labels} rows"
            )));
        }
        Ok(num_labels)
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

    /// The limits a batch must satisfy.
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            vocab_size: self.config.vocab_size,
            type_vocab_size: self.config.type_vocab_size,
            max_sequence_len: self.config.max_position_embeddings,
        }
    }

    /// Scores a packed batch. The batch is validated first: a malformed one
    /// is an error, never an out-of-bounds read.
    pub fn forward(&self, batch: &TokenBatch) -> Result<ForwardOutput> {
        batch.validate(&self.batch_limits())?;
        match &self.encoder {
            Encoder::Cpu(cpu) => cpu.forward(batch),
            Encoder::Candle(candle) => candle.forward(batch, self),
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
        let act = dtype.activation_dtype();
        let embeddings = Embeddings::load(r, c, act, device)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(Layer {
                    attention: SelfAttention::load(r, &p, c, dtype, device)?,
                    ffn: FeedForward::load(r, &p, c, dtype, device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The head is tiny: keep it in the activation precision, never quantized.
        let head_dtype = match dtype {
            WeightDType::Q8_0 | WeightDType::Q4_0 => WeightDType::F32,
            other => other,
        };
        let (pw, pb) = r.linear(c.hidden_size, c.hidden_size, "pooler.dense")?;
        let pooler = Pooler {
            dense: Linear::new(pw, pb, head_dtype, device)?,
        };
        let classifier = Classifier {
            dense: Linear::new(
                r.get_raw((num_labels, c.hidden_size), "classifier.weight")?,
                r.get_raw(num_labels, "classifier.bias")?,
                head_dtype,
                device,
            )?,
        };
        Ok(Self {
            embeddings,
            layers,
            pooler,
            classifier,
        })
    }

    fn forward(&self, batch: &TokenBatch, model: &BertCrossEncoder) -> Result<ForwardOutput> {
        let plan = BatchPlan::new(
            batch,
            &model.device,
            model.dtype.activation_dtype(),
            model.attention,
        )?;
        let mut hidden = self.embeddings.forward(&plan)?;
        for layer in &self.layers {
            hidden = layer.attention.forward(&hidden, &plan)?;
            hidden = layer.ffn.forward(&hidden)?;
        }
        let cls = hidden.index_select(&plan.cls_rows, 0)?; // [pairs, H]
        let head_in = match model.dtype {
            WeightDType::Q8_0 | WeightDType::Q4_0 => cls.to_dtype(DType::F32)?,
            _ => cls,
        };
        let pooled = self.pooler.dense.forward(&head_in)?.tanh()?;
        let logits = self.classifier.dense.forward(&pooled)?;
        let to_f32 = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        Ok(ForwardOutput {
            logits: to_f32(&logits)?,
            pooled: to_f32(&pooled)?,
            attention_slots: plan.padded_attention_tokens,
        })
    }
}
