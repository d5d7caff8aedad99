//! `config.json` of a Hugging Face encoder cross-encoder, validated: the
//! shapes, the family's own behaviour (see [`crate::family`]) and the score
//! a client gets.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, SpecError};
use crate::family::{Family, SUPPORTED_MODEL_TYPES};

/// An activation, of the feed-forward blocks or of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// Exact GELU, `x * Φ(x)` with erf (transformers' `"gelu"`).
    GeluErf,
    /// The tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    /// `max(0, x)`.
    Relu,
    /// `tanh(x)` (BERT's and RoBERTa's heads).
    Tanh,
    /// `x · sigmoid(x)` (the gate of Qwen3's SwiGLU).
    Silu,
}

impl HiddenAct {
    /// The activation transformers' `ACT2FN[name]` is, if the engine has it.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Self::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Self::GeluTanh,
            "relu" => Self::Relu,
            "tanh" => Self::Tanh,
            "silu" => Self::Silu,
            other => return Err(SpecError::UnsupportedActivation(other.to_string())),
        })
    }
}

/// What a client-facing score applies to the raw logit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreActivation {
    /// Raw logits.
    Identity,
    /// `1 / (1 + e^-x)`, sentence-transformers' default for one-label models.
    Sigmoid,
    /// The relevant label's probability under a softmax over the labels:
    /// the default for two-label models.
    Softmax,
}

impl ScoreActivation {
    /// Applies the activation to one logit (a softmax over one label is 1).
    pub fn apply(self, x: f32) -> f32 {
        self.score(&[x], 0)
    }

    /// The score of a pair from its row of logits: the activation of label
    /// `relevant`; a softmax takes every label.
    pub fn score(self, row: &[f32], relevant: usize) -> f32 {
        let Some(&x) = row.get(relevant) else {
            return f32::NAN;
        };
        match self {
            ScoreActivation::Identity => x,
            ScoreActivation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            ScoreActivation::Softmax => {
                let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let total: f32 = row.iter().map(|v| (v - top).exp()).sum();
                (x - top).exp() / total
            }
        }
    }
}

/// Which of a model's `labels` logits says "relevant" when `config.json`'s
/// label names do not say: the second of two (a binary classifier's
/// positive class), else the first.
pub fn relevant_label(labels: usize) -> usize {
    usize::from(labels == 2)
}

/// Label names that mean "relevant" in `id2label` (compared lowercased).
const RELEVANT_NAMES: &[&str] = &["relevant", "relevance", "positive", "pos", "yes", "true"];

/// The relevant label from `id2label`: the one whose name says so, if
/// exactly one does; else [`relevant_label`].
fn relevant_label_of(id2label: Option<&BTreeMap<String, String>>, labels: usize) -> usize {
    let named: Vec<usize> = id2label
        .into_iter()
        .flatten()
        .filter(|(_, name)| RELEVANT_NAMES.contains(&name.to_lowercase().as_str()))
        .filter_map(|(id, _)| id.parse::<usize>().ok())
        .filter(|&id| id < labels)
        .collect();
    match named.as_slice() {
        [one] => *one,
        _ => relevant_label(labels),
    }
}

/// How the head reads the encoder's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's vector (`[CLS]`, `<s>`).
    Cls,
    /// The mean of every token's vector (ModernBERT's `classifier_pooling: mean`).
    Mean,
}

/// The classification head: `pool → dense → activation (→ norm) → classifier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSpec {
    /// Which vector it reads.
    pub pooling: Pooling,
    /// After the dense layer: tanh (BERT, RoBERTa), GELU (ELECTRA,
    /// ModernBERT's default), ReLU (DistilBERT).
    pub activation: HiddenAct,
    /// Whether a layer norm follows the activation (ModernBERT).
    pub normed: bool,
    /// Whether the dense layer has a bias (all but ModernBERT's default).
    pub dense_bias: bool,
}

/// What only ModernBERT has.
#[derive(Debug, Clone, PartialEq)]
pub struct ModernBertSpec {
    /// Rotary base of the global-attention layers.
    pub global_rope_theta: f64,
    /// Rotary base of the sliding-window layers.
    pub local_rope_theta: f64,
    /// A token of a sliding-window layer attends to keys at most this many
    /// positions away (`local_attention / 2`).
    pub local_window: usize,
    /// Per layer, whether it attends globally (else in the window).
    pub global_layers: Vec<bool>,
    /// Whether `Wqkv` and `Wo` have biases.
    pub attention_bias: bool,
    /// Whether `Wi` and `Wo` of the MLP have biases.
    pub mlp_bias: bool,
    /// Whether the layer norms have biases.
    pub norm_bias: bool,
}

/// How a decoder reranker turns its last token into logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderHead {
    /// `Qwen3ForSequenceClassification`: `score` `[labels, H]`, no bias.
    Classifier,
    /// `Qwen3ForCausalLM` read as Qwen3-Reranker reads it: the language
    /// model head's rows of the tokens "no" and "yes" (in that order: two
    /// logits whose softmax gives p(yes), label 1).
    YesNo,
}

/// What only the decoder LLM rerankers (Qwen3) have.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    /// Key and value heads (grouped-query attention: each serves
    /// `num_attention_heads / kv_heads` query heads).
    pub kv_heads: usize,
    /// Width of one head (Qwen3 declares it: `heads · head_dim` may differ
    /// from `hidden_size`).
    pub head_dim: usize,
    /// Rotary base.
    pub rope_theta: f64,
    /// Whether Q, K, V and O have biases.
    pub attention_bias: bool,
    /// Whether the LM head is the word embedding table (`tie_word_embeddings`).
    pub tied_embeddings: bool,
    /// The head the checkpoint's architecture names.
    pub head: DecoderHead,
}

/// The largest shapes a `config.json` may declare. Far above any
/// cross-encoder published (XLM-RoBERTa's 250,002 tokens; 1,024–4,096 wide;
/// 24–48 layers); low enough that no product of them overflows and no
/// matrix passes 2^31 elements (8 GiB of f32).
struct ConfigLimits {
    vocab_size: usize,
    hidden_size: usize,
    layers: usize,
    heads: usize,
    intermediate_size: usize,
    positions: usize,
    type_vocab_size: usize,
    labels: usize,
    matrix_elements: usize,
}

const LIMITS: ConfigLimits = ConfigLimits {
    vocab_size: 1 << 21,
    hidden_size: 1 << 14,
    layers: 256,
    heads: 512,
    intermediate_size: 1 << 16,
    positions: 1 << 17,
    type_vocab_size: 1 << 10,
    labels: 1 << 12,
    matrix_elements: 1 << 31,
};

/// Every key any family's `config.json` uses, under the names BERT gives
/// them (DistilBERT's and ModernBERT's own names are aliases).
#[derive(Debug, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    #[serde(alias = "dim")]
    hidden_size: usize,
    #[serde(alias = "n_layers")]
    num_hidden_layers: usize,
    #[serde(alias = "n_heads")]
    num_attention_heads: usize,
    #[serde(alias = "hidden_dim")]
    intermediate_size: usize,
    #[serde(
        default = "default_act",
        alias = "activation",
        alias = "hidden_activation"
    )]
    hidden_act: String,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    type_vocab_size: Option<usize>,
    #[serde(default, alias = "norm_eps")]
    layer_norm_eps: Option<f64>,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    sbert_ce_default_activation_function: Option<String>,
    #[serde(default)]
    embedding_size: Option<usize>,
    #[serde(default)]
    pad_token_id: Option<usize>,
    // ModernBERT.
    #[serde(default)]
    global_rope_theta: Option<f64>,
    #[serde(default)]
    local_rope_theta: Option<f64>,
    /// ModernBERT's `{layer type: RopeParameters}`, or a decoder's one
    /// `RopeParameters` (transformers 5 moved `rope_theta` there).
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    local_attention: Option<usize>,
    #[serde(default)]
    global_attn_every_n_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    norm_bias: Option<bool>,
    #[serde(default)]
    classifier_bias: Option<bool>,
    #[serde(default)]
    classifier_pooling: Option<String>,
    #[serde(default)]
    classifier_activation: Option<String>,
    // Qwen3.
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
}

/// One entry of ModernBERT's newer `rope_parameters`.
#[derive(Debug, Deserialize)]
struct RopeParameters {
    #[serde(default)]
    rope_type: Option<String>,
    #[serde(default)]
    rope_theta: Option<f64>,
}

fn default_act() -> String {
    "gelu".into()
}

/// The validated shape and behaviour of an encoder cross-encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The family, from `model_type`.
    pub family: Family,
    /// `model_type` as `config.json` spells it.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width `H`.
    pub hidden_size: usize,
    /// Width `E` of the embedding tables (ELECTRA's may differ from `H`).
    pub embedding_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads; `H` must divide evenly.
    pub num_attention_heads: usize,
    /// Feed-forward width (per half of ModernBERT's GeGLU).
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub hidden_act: HiddenAct,
    /// Rows of the position table (RoBERTa's include its offset); the
    /// rotary range for ModernBERT.
    pub max_position_embeddings: usize,
    /// Position id of a sequence's first token: RoBERTa's `padding_idx + 1`,
    /// else 0.
    pub position_offset: usize,
    /// RoBERTa's padding id: a pad token inside a sequence takes position
    /// `padding_idx` and does not advance the count, as in transformers.
    pub padding_idx: Option<u32>,
    /// Rows of the token type table: 0 where the model has none
    /// (DistilBERT, ModernBERT); RoBERTa's one row is added to every token.
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Labels the classifier head declares in `config.json` (the weights have the last word).
    pub declared_labels: Option<usize>,
    /// Which label's logit is the relevance score.
    pub relevant_label: usize,
    /// Activation a client gets unless it asks for raw scores.
    pub score_activation: ScoreActivation,
    /// The classification head of an encoder (a decoder's is
    /// [`DecoderSpec::head`], read at the last token).
    pub head: HeadSpec,
    /// ModernBERT's rotary, windowed, bias-free layers; `None` for the
    /// post-norm families.
    pub modern: Option<ModernBertSpec>,
    /// A decoder's attention and head (Qwen3); `None` for the encoders.
    pub decoder: Option<DecoderSpec>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            SpecError::Config { message, .. } => SpecError::Config {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let config_err = |message: String| SpecError::Config {
            path: "config.json".into(),
            message,
        };
        // Check the model type before the fields: a T5 config deserves
        // "unsupported model_type", not "missing field".
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| config_err(e.to_string()))?;
        let model_type = match value.get("model_type").and_then(|v| v.as_str()) {
            Some(t) => t.to_string(),
            None => return Err(config_err("no \"model_type\" field".into())),
        };
        let Some(family) = Family::of(&model_type) else {
            return Err(SpecError::UnsupportedModelType {
                model_type,
                supported: SUPPORTED_MODEL_TYPES.join(", "),
            });
        };
        let raw: RawConfig =
            serde_json::from_value(value).map_err(|e| config_err(e.to_string()))?;
        let hidden_act = HiddenAct::parse(&raw.hidden_act)?;
        if let Some(kind) = raw.position_embedding_type.as_deref()
            && kind != "absolute"
        {
            return Err(config_err(format!(
                "position_embedding_type {kind:?} is not supported (only \"absolute\")"
            )));
        }
        let max_position_embeddings = raw.max_position_embeddings.unwrap_or(match family {
            Family::ModernBert => 8192,
            Family::Qwen3 => 32768,
            _ => 512,
        });
        let type_vocab_size = match family {
            Family::Bert | Family::Electra => raw.type_vocab_size.unwrap_or(2),
            // RoBERTa keeps a one-row table that every token adds.
            Family::Roberta => raw.type_vocab_size.unwrap_or(1),
            Family::DistilBert | Family::ModernBert | Family::Qwen3 => 0,
        };
        let embedding_size = match family {
            Family::Electra => raw.embedding_size.unwrap_or(raw.hidden_size),
            _ => raw.hidden_size,
        };
        for (name, v, least, most) in [
            ("vocab_size", raw.vocab_size, 1, LIMITS.vocab_size),
            ("hidden_size", raw.hidden_size, 1, LIMITS.hidden_size),
            ("embedding_size", embedding_size, 1, LIMITS.hidden_size),
            ("num_hidden_layers", raw.num_hidden_layers, 1, LIMITS.layers),
            (
                "num_attention_heads",
                raw.num_attention_heads,
                1,
                LIMITS.heads,
            ),
            (
                "intermediate_size",
                raw.intermediate_size,
                1,
                LIMITS.intermediate_size,
            ),
            (
                "max_position_embeddings",
                max_position_embeddings,
                1,
                LIMITS.positions,
            ),
            (
                "type_vocab_size",
                type_vocab_size,
                usize::from(family.has_token_type_table()),
                LIMITS.type_vocab_size,
            ),
        ] {
            if !(least..=most).contains(&v) {
                return Err(config_err(format!(
                    "{name} {v} is outside {least}..={most}"
                )));
            }
        }
        if let Some(labels) = raw.num_labels
            && !(1..=LIMITS.labels).contains(&labels)
        {
            return Err(config_err(format!(
                "num_labels {labels} is outside 1..={}",
                LIMITS.labels
            )));
        }
        // Every weight matrix, in elements, with checked products: a model
        // file must not be able to make a worker allocate without bound
        // (or wrap an allocation size) before any weight is read.
        let (h, f) = (raw.hidden_size, raw.intermediate_size);
        let matrices = [
            (
                "vocab_size × embedding_size",
                raw.vocab_size.checked_mul(embedding_size),
            ),
            (
                "max_position_embeddings × hidden_size",
                max_position_embeddings.checked_mul(h),
            ),
            (
                "3 × hidden_size²",
                h.checked_mul(h).and_then(|x| x.checked_mul(3)),
            ),
            (
                "2 × hidden_size × intermediate_size",
                h.checked_mul(f).and_then(|x| x.checked_mul(2)),
            ),
        ];
        for (what, elements) in matrices {
            match elements {
                Some(n) if n <= LIMITS.matrix_elements => {}
                _ => {
                    return Err(config_err(format!(
                        "{what} is over {} elements: not a model this server can hold",
                        LIMITS.matrix_elements
                    )));
                }
            }
        }
        let decoder = match family {
            Family::Qwen3 => Some(decoder_spec(&raw, &config_err)?),
            _ => None,
        };
        if let Some(d) = &decoder {
            let q = raw.num_attention_heads.checked_mul(d.head_dim);
            if q.and_then(|q| q.checked_mul(h))
                .is_none_or(|n| n > LIMITS.matrix_elements)
            {
                return Err(config_err(format!(
                    "num_attention_heads × head_dim × hidden_size is over {} elements",
                    LIMITS.matrix_elements
                )));
            }
        } else if !raw.hidden_size.is_multiple_of(raw.num_attention_heads) {
            return Err(config_err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        let (position_offset, padding_idx) = match family {
            Family::Roberta => {
                let pad = raw.pad_token_id.unwrap_or(1);
                if pad + 2 > max_position_embeddings {
                    return Err(config_err(format!(
                        "pad_token_id {pad} leaves no position in max_position_embeddings {max_position_embeddings}"
                    )));
                }
                (pad + 1, Some(pad as u32))
            }
            _ => (0, None),
        };
        let declared_labels = match &decoder {
            Some(d) if d.head == DecoderHead::YesNo => Some(2),
            _ => raw.num_labels.or(raw.id2label.as_ref().map(|m| m.len())),
        };
        let labels = declared_labels.unwrap_or(1);
        let yes_no = decoder
            .as_ref()
            .is_some_and(|d| d.head == DecoderHead::YesNo);
        let score_activation = match raw.sbert_ce_default_activation_function.as_deref() {
            // p(yes) of the two logits, as Qwen3-Reranker scores.
            _ if yes_no => ScoreActivation::Softmax,
            Some(f) if f.ends_with("Identity") => ScoreActivation::Identity,
            Some(f) if f.ends_with("Sigmoid") => ScoreActivation::Sigmoid,
            Some(f) if f.ends_with("Softmax") => ScoreActivation::Softmax,
            Some(other) => {
                return Err(config_err(format!(
                    "sbert_ce_default_activation_function {other:?} is not supported (Identity, Sigmoid or Softmax)"
                )));
            }
            None => match labels {
                1 => ScoreActivation::Sigmoid,
                2 => ScoreActivation::Softmax,
                _ => ScoreActivation::Identity,
            },
        };
        let modern = match family {
            Family::ModernBert => Some(modern_spec(&raw, config_err)?),
            _ => None,
        };
        let head = match family {
            Family::Bert | Family::Roberta => HeadSpec {
                pooling: Pooling::Cls,
                activation: HiddenAct::Tanh,
                normed: false,
                dense_bias: true,
            },
            // transformers' ElectraClassificationHead hard-codes GELU.
            Family::Electra => HeadSpec {
                pooling: Pooling::Cls,
                activation: HiddenAct::GeluErf,
                normed: false,
                dense_bias: true,
            },
            Family::DistilBert => HeadSpec {
                pooling: Pooling::Cls,
                activation: HiddenAct::Relu,
                normed: false,
                dense_bias: true,
            },
            // Unused: a decoder reads its last token, with the head its
            // `DecoderSpec` names.
            Family::Qwen3 => HeadSpec {
                pooling: Pooling::Cls,
                activation: HiddenAct::Silu,
                normed: false,
                dense_bias: false,
            },
            Family::ModernBert => HeadSpec {
                pooling: match raw.classifier_pooling.as_deref().unwrap_or("cls") {
                    "cls" => Pooling::Cls,
                    "mean" => Pooling::Mean,
                    other => {
                        return Err(config_err(format!(
                            "classifier_pooling {other:?} is not supported (\"cls\" or \"mean\")"
                        )));
                    }
                },
                activation: HiddenAct::parse(
                    raw.classifier_activation.as_deref().unwrap_or("gelu"),
                )?,
                normed: true,
                dense_bias: raw.classifier_bias.unwrap_or(false),
            },
        };
        let layer_norm_eps = match family {
            // DistilBERT's norms hard-code 1e-12; ModernBERT defaults to 1e-5.
            Family::DistilBert => 1e-12,
            Family::ModernBert => raw.layer_norm_eps.unwrap_or(1e-5),
            Family::Qwen3 => raw.rms_norm_eps.unwrap_or(1e-6),
            _ => raw.layer_norm_eps.unwrap_or(1e-12),
        };
        Ok(Self {
            family,
            model_type,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            embedding_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act,
            max_position_embeddings,
            position_offset,
            padding_idx,
            type_vocab_size,
            layer_norm_eps,
            declared_labels,
            relevant_label: match yes_no {
                true => 1,
                false => relevant_label_of(raw.id2label.as_ref(), labels),
            },
            score_activation,
            head,
            modern,
            decoder,
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        match &self.decoder {
            Some(d) => d.head_dim,
            None => self.hidden_size / self.num_attention_heads,
        }
    }

    /// The longest sequence the model takes, in tokens.
    pub fn max_sequence_len(&self) -> usize {
        self.max_position_embeddings - self.position_offset
    }

    /// Token types a batch may carry: the model's, or any where the model
    /// reads none (they are ignored).
    pub fn accepted_token_types(&self) -> usize {
        if self.family.reads_token_types() {
            self.type_vocab_size
        } else {
            usize::MAX
        }
    }

    /// Useful FLOPs of one forward pass over a sequence of `len` tokens
    /// (multiply-adds count 2; embeddings, norms and softmax excluded;
    /// a sliding-window layer's attention counts only its window).
    pub fn flops_per_sequence(&self, len: usize) -> f64 {
        let (l, h, f) = (
            len as f64,
            self.hidden_size as f64,
            self.intermediate_size as f64,
        );
        if let Some(d) = &self.decoder {
            let (q, kv) = (
                (self.num_attention_heads * d.head_dim) as f64,
                (d.kv_heads * d.head_dim) as f64,
            );
            let linear = 2.0 * l * (2.0 * h * q + 2.0 * h * kv + 3.0 * h * f);
            // Causal: query r sees r + 1 keys.
            let attention = 2.0 * 2.0 * (l * (l + 1.0) / 2.0) * q;
            return self.num_hidden_layers as f64 * (linear + attention) + 2.0 * h;
        }
        let ffn_matrices = if self.modern.is_some() { 3.0 } else { 2.0 };
        let linear = 2.0 * l * (4.0 * h * h + ffn_matrices * h * f);
        let attention = |keys: f64| 2.0 * 2.0 * l * keys * h;
        let layers: f64 = (0..self.num_hidden_layers)
            .map(|i| match &self.modern {
                Some(m) if !m.global_layers.get(i).copied().unwrap_or(true) => {
                    linear + attention(l.min(2.0 * m.local_window as f64 + 1.0))
                }
                _ => linear + attention(l),
            })
            .sum();
        let head = 2.0 * h * h;
        layers + head
    }
}

/// Qwen3's attention shape, rotary base and head, refusing what the engine
/// does not compute (scaled rotary positions, sliding windows).
fn decoder_spec(raw: &RawConfig, config_err: &impl Fn(String) -> SpecError) -> Result<DecoderSpec> {
    if raw.hidden_act != "silu" {
        return Err(config_err(format!(
            "hidden_act {:?}: Qwen3's SwiGLU gate is \"silu\"",
            raw.hidden_act
        )));
    }
    let heads = raw.num_attention_heads;
    let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(config_err(format!(
            "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )));
    }
    let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
    if !(2..=1024).contains(&head_dim) || !head_dim.is_multiple_of(2) {
        return Err(config_err(format!(
            "head_dim {head_dim} is not an even width in 2..=1024"
        )));
    }
    if raw.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(config_err(
            "rope_scaling is not supported (only the default rotary positions)".into(),
        ));
    }
    if raw.use_sliding_window == Some(true) {
        return Err(config_err("use_sliding_window is not supported".into()));
    }
    let parameters: Option<RopeParameters> = raw
        .rope_parameters
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| config_err(format!("rope_parameters: {e}")))?;
    if let Some(kind) = parameters.as_ref().and_then(|p| p.rope_type.as_deref())
        && kind != "default"
    {
        return Err(config_err(format!(
            "rope_parameters.rope_type {kind:?} is not supported (only \"default\")"
        )));
    }
    let rope_theta = parameters
        .and_then(|p| p.rope_theta)
        .or(raw.rope_theta)
        .unwrap_or(1_000_000.0);
    if !(rope_theta.is_finite() && rope_theta > 1.0) {
        return Err(config_err(format!(
            "rope_theta {rope_theta} is not a rotary base"
        )));
    }
    let architecture = raw
        .architectures
        .as_ref()
        .and_then(|a| a.first())
        .map(String::as_str);
    let head = match architecture {
        Some("Qwen3ForCausalLM") => DecoderHead::YesNo,
        Some("Qwen3ForSequenceClassification") | None => DecoderHead::Classifier,
        Some(other) => {
            return Err(config_err(format!(
                "architecture {other:?} is not a reranker (Qwen3ForSequenceClassification, or Qwen3ForCausalLM read as yes/no)"
            )));
        }
    };
    Ok(DecoderSpec {
        kv_heads,
        head_dim,
        rope_theta,
        attention_bias: raw.attention_bias.unwrap_or(false),
        tied_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        head,
    })
}

/// ModernBERT's layer pattern and rotary bases, from either the older keys
/// (`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`)
/// or the newer (`layer_types`, `rope_parameters`).
fn modern_spec(
    raw: &RawConfig,
    config_err: impl Fn(String) -> SpecError,
) -> Result<ModernBertSpec> {
    let layers = raw.num_hidden_layers;
    let global_layers: Vec<bool> = match &raw.layer_types {
        Some(types) => {
            if types.len() != layers {
                return Err(config_err(format!(
                    "layer_types has {} entries for {layers} layers",
                    types.len()
                )));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(true),
                    "sliding_attention" => Ok(false),
                    other => Err(config_err(format!(
                        "layer_types entry {other:?} is not supported (full_attention or sliding_attention)"
                    ))),
                })
                .collect::<Result<_>>()?
        }
        None => {
            let every = raw.global_attn_every_n_layers.unwrap_or(3);
            if every == 0 {
                return Err(config_err("global_attn_every_n_layers is 0".into()));
            }
            (0..layers).map(|i| i.is_multiple_of(every)).collect()
        }
    };
    let rope = |kind: &str| -> Result<Option<f64>> {
        let Some(p) = raw.rope_parameters.as_ref().and_then(|m| m.get(kind)) else {
            return Ok(None);
        };
        let p: RopeParameters = serde_json::from_value(p.clone())
            .map_err(|e| config_err(format!("rope_parameters.{kind}: {e}")))?;
        match p.rope_type.as_deref() {
            None | Some("default") => Ok(p.rope_theta),
            Some(other) => Err(config_err(format!(
                "rope_parameters.{kind}.rope_type {other:?} is not supported (only \"default\")"
            ))),
        }
    };
    let global_rope_theta = rope("full_attention")?
        .or(raw.global_rope_theta)
        .unwrap_or(160_000.0);
    // Older transformers used the global base where `local_rope_theta` was null.
    let local_rope_theta = rope("sliding_attention")?
        .or(raw.local_rope_theta)
        .unwrap_or(global_rope_theta);
    for (name, theta) in [
        ("global rope_theta", global_rope_theta),
        ("local rope_theta", local_rope_theta),
    ] {
        if !(theta.is_finite() && theta > 1.0) {
            return Err(config_err(format!("{name} {theta} is not a rotary base")));
        }
    }
    let local_attention = raw.local_attention.unwrap_or(128);
    if !(2..=LIMITS.positions).contains(&local_attention) {
        return Err(config_err(format!(
            "local_attention {local_attention} is outside 2..={}",
            LIMITS.positions
        )));
    }
    if !(raw.hidden_size / raw.num_attention_heads).is_multiple_of(2) {
        return Err(config_err(
            "rotary positions need an even head width".into(),
        ));
    }
    Ok(ModernBertSpec {
        global_rope_theta,
        local_rope_theta,
        local_window: local_attention / 2,
        global_layers,
        attention_bias: raw.attention_bias.unwrap_or(false),
        mlp_bias: raw.mlp_bias.unwrap_or(false),
        norm_bias: raw.norm_bias.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_take_the_relevant_label() {
        assert_eq!(ScoreActivation::Sigmoid.score(&[0.0], 0), 0.5);
        assert_eq!(ScoreActivation::Identity.score(&[1.5, -2.0], 1), -2.0);
        let p = ScoreActivation::Softmax.score(&[0.0, 2f32.ln()], 1);
        assert!((p - 2.0 / 3.0).abs() < 1e-6, "{p}");
        let p = ScoreActivation::Softmax.score(&[0.0, 2f32.ln()], 0);
        assert!((p - 1.0 / 3.0).abs() < 1e-6, "{p}");
        assert!(
            ScoreActivation::Softmax.score(&[1000.0, 1000.0], 1) == 0.5,
            "no overflow"
        );
        assert_eq!(ScoreActivation::Identity.score(&[3.0, 1.0, 2.0], 0), 3.0);
        assert!(ScoreActivation::Sigmoid.score(&[], 0).is_nan());
        assert!(ScoreActivation::Sigmoid.score(&[1.0], 1).is_nan());
    }

    const MINILM: &str = r#"{"model_type":"bert","vocab_size":30522,"hidden_size":384,
        "num_hidden_layers":6,"num_attention_heads":12,"intermediate_size":1536,
        "hidden_act":"gelu","max_position_embeddings":512,"type_vocab_size":2,
        "id2label":{"0":"LABEL_0"},
        "sbert_ce_default_activation_function":"torch.nn.modules.linear.Identity"}"#;

    #[test]
    fn parses_minilm() {
        let c = ModelConfig::from_json(MINILM).unwrap();
        assert_eq!(c.head_dim(), 32);
        assert_eq!(c.hidden_act, HiddenAct::GeluErf);
        assert_eq!(c.declared_labels, Some(1));
        assert_eq!(c.score_activation, ScoreActivation::Identity);
        // ≈ 1.89 GFLOP for an 85-token pair, as the performance issues state.
        let gflop = c.flops_per_sequence(85) / 1e9;
        assert!((1.80..1.95).contains(&gflop), "{gflop}");
    }

    #[test]
    fn rejects_other_model_types_by_name() {
        let e = ModelConfig::from_json(r#"{"model_type":"t5"}"#).unwrap_err();
        let message = e.to_string();
        assert!(message.contains("\"t5\""), "{e}");
        for supported in SUPPORTED_MODEL_TYPES {
            assert!(message.contains(supported), "{e}");
        }
    }

    #[test]
    fn rejects_bad_shapes_and_activations() {
        let bad_heads = MINILM.replace("\"num_attention_heads\":12", "\"num_attention_heads\":7");
        assert!(matches!(
            ModelConfig::from_json(&bad_heads),
            Err(SpecError::Config { .. })
        ));
        let bad_act = MINILM.replace("\"hidden_act\":\"gelu\"", "\"hidden_act\":\"swish\"");
        assert!(matches!(
            ModelConfig::from_json(&bad_act),
            Err(SpecError::UnsupportedActivation(_))
        ));
        assert!(matches!(
            ModelConfig::from_json("{not json"),
            Err(SpecError::Config { .. })
        ));
        assert!(matches!(
            ModelConfig::from_json(r#"{"model_type":"bert"}"#),
            Err(SpecError::Config { .. })
        ));
    }

    #[test]
    fn hostile_sizes_are_refused_before_anything_is_allocated() {
        for (field, value) in [
            ("\"hidden_size\":384", "\"hidden_size\":12582912"),
            (
                "\"vocab_size\":30522",
                "\"vocab_size\":18446744073709551615",
            ),
            ("\"intermediate_size\":1536", "\"intermediate_size\":0"),
            ("\"num_hidden_layers\":6", "\"num_hidden_layers\":100000"),
            (
                "\"max_position_embeddings\":512",
                "\"max_position_embeddings\":4294967296",
            ),
        ] {
            let hostile = MINILM.replace(field, value);
            assert_ne!(hostile, MINILM);
            let e = ModelConfig::from_json(&hostile).unwrap_err().to_string();
            let name = field.split('"').nth(1).unwrap();
            assert!(e.contains(name), "{e}");
        }
        // Each within range, their product not.
        let wide = MINILM
            .replace("\"hidden_size\":384", "\"hidden_size\":12288")
            .replace("\"num_attention_heads\":12", "\"num_attention_heads\":96")
            .replace("\"vocab_size\":30522", "\"vocab_size\":2000000");
        let e = ModelConfig::from_json(&wide).unwrap_err().to_string();
        assert!(e.contains("vocab_size × embedding_size"), "{e}");
    }

    #[test]
    fn the_relevant_label_is_named_by_id2label_or_the_second_of_two() {
        let with = |labels: &str| {
            ModelConfig::from_json(&MINILM.replace("{\"0\":\"LABEL_0\"}", labels))
                .unwrap()
                .relevant_label
        };
        assert_eq!(with(r#"{"0":"LABEL_0"}"#), 0);
        assert_eq!(with(r#"{"0":"LABEL_0","1":"LABEL_1"}"#), 1);
        assert_eq!(with(r#"{"0":"relevant","1":"irrelevant"}"#), 0);
        assert_eq!(with(r#"{"0":"no","1":"maybe","2":"YES"}"#), 2);
        assert_eq!(
            with(r#"{"0":"yes","1":"true"}"#),
            1,
            "ambiguous: the default"
        );
    }

    #[test]
    fn each_family_reads_its_own_keys() {
        let roberta = ModelConfig::from_json(
            r#"{"model_type":"xlm-roberta","vocab_size":250002,"hidden_size":768,
            "num_hidden_layers":12,"num_attention_heads":12,"intermediate_size":3072,
            "max_position_embeddings":514,"type_vocab_size":1,"pad_token_id":1,
            "layer_norm_eps":1e-05}"#,
        )
        .unwrap();
        assert_eq!(roberta.family, Family::Roberta);
        assert_eq!(
            (roberta.position_offset, roberta.max_sequence_len()),
            (2, 512)
        );
        assert_eq!(roberta.accepted_token_types(), usize::MAX);
        assert_eq!(roberta.head.activation, HiddenAct::Tanh);
        let distil = ModelConfig::from_json(
            r#"{"model_type":"distilbert","vocab_size":30522,"dim":768,"n_layers":6,
            "n_heads":12,"hidden_dim":3072,"activation":"gelu"}"#,
        )
        .unwrap();
        assert_eq!((distil.hidden_size, distil.intermediate_size), (768, 3072));
        assert_eq!(distil.head.activation, HiddenAct::Relu);
        assert_eq!(distil.type_vocab_size, 0);
        let electra = ModelConfig::from_json(
            r#"{"model_type":"electra","vocab_size":30522,"embedding_size":128,"hidden_size":256,
            "num_hidden_layers":12,"num_attention_heads":4,"intermediate_size":1024}"#,
        )
        .unwrap();
        assert_eq!((electra.embedding_size, electra.hidden_size), (128, 256));
        assert_eq!(electra.head.activation, HiddenAct::GeluErf);
        let old = r#"{"model_type":"modernbert","vocab_size":50368,"hidden_size":768,
            "num_hidden_layers":22,"num_attention_heads":12,"intermediate_size":1152,
            "hidden_activation":"gelu","global_rope_theta":160000.0,"local_rope_theta":10000.0,
            "local_attention":128,"global_attn_every_n_layers":3,"classifier_pooling":"mean",
            "norm_eps":1e-05}"#;
        let modern = ModelConfig::from_json(old).unwrap();
        let m = modern.modern.as_ref().unwrap();
        assert_eq!(modern.head.pooling, Pooling::Mean);
        assert_eq!(m.local_window, 64);
        assert_eq!(&m.global_layers[..4], &[true, false, false, true]);
        assert_eq!(
            (m.global_rope_theta, m.local_rope_theta),
            (160_000.0, 10_000.0)
        );
        assert_eq!(modern.max_sequence_len(), 8192);
        // The newer spelling of the same model.
        let types: Vec<String> = m
            .global_layers
            .iter()
            .map(|&g| {
                format!(
                    "\"{}\"",
                    if g {
                        "full_attention"
                    } else {
                        "sliding_attention"
                    }
                )
            })
            .collect();
        let new = format!(
            r#"{{"model_type":"modernbert","vocab_size":50368,"hidden_size":768,
            "num_hidden_layers":22,"num_attention_heads":12,"intermediate_size":1152,
            "local_attention":128,"classifier_pooling":"mean","layer_types":[{}],
            "rope_parameters":{{"full_attention":{{"rope_type":"default","rope_theta":160000.0}},
            "sliding_attention":{{"rope_type":"default","rope_theta":10000.0}}}}}}"#,
            types.join(",")
        );
        assert_eq!(ModelConfig::from_json(&new).unwrap(), modern);
        let scaled = new.replace(
            "\"rope_type\":\"default\",\"rope_theta\":160000.0",
            "\"rope_type\":\"yarn\"",
        );
        let e = ModelConfig::from_json(&scaled).unwrap_err().to_string();
        assert!(e.contains("yarn"), "{e}");
    }

    #[test]
    fn sigmoid_is_default_for_one_label() {
        let no_act = MINILM.replace(
            ",\n        \"sbert_ce_default_activation_function\":\"torch.nn.modules.linear.Identity\"",
            "",
        );
        let c = ModelConfig::from_json(&no_act).unwrap();
        assert_eq!(c.score_activation, ScoreActivation::Sigmoid);
        assert!((ScoreActivation::Sigmoid.apply(0.0) - 0.5).abs() < 1e-7);
    }

    const QWEN3: &str = r#"{"model_type":"qwen3","architectures":["Qwen3ForCausalLM"],
        "vocab_size":151669,"hidden_size":1024,"intermediate_size":3072,"num_hidden_layers":28,
        "num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,"hidden_act":"silu",
        "max_position_embeddings":40960,"rms_norm_eps":1e-06,"rope_theta":1000000,
        "rope_scaling":null,"tie_word_embeddings":true,"use_sliding_window":false}"#;

    #[test]
    fn qwen3_reads_as_a_decoder_with_its_head_from_the_architecture() {
        let c = ModelConfig::from_json(QWEN3).unwrap();
        let d = c.decoder.as_ref().unwrap();
        assert_eq!((d.kv_heads, d.head_dim, c.head_dim()), (8, 128, 128));
        assert_eq!((d.head, d.tied_embeddings), (DecoderHead::YesNo, true));
        assert_eq!(d.rope_theta, 1e6);
        // p(yes): two logits, "no" then "yes", softmax of label 1.
        assert_eq!(c.declared_labels, Some(2));
        assert_eq!(
            (c.relevant_label, c.score_activation),
            (1, ScoreActivation::Softmax)
        );
        assert_eq!(c.layer_norm_eps, 1e-6);
        assert_eq!(c.accepted_token_types(), usize::MAX);
        // 16 heads of 128 are wider than hidden_size: no divisibility rule.
        let gflop = c.flops_per_sequence(170) / 1e9;
        assert!((140.0..160.0).contains(&gflop), "{gflop}");
        // transformers 5 keeps rope_theta in rope_parameters.
        let moved = QWEN3.replace(
            "\"rope_theta\":1000000,",
            "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":5000.0},",
        );
        assert_eq!(
            ModelConfig::from_json(&moved)
                .unwrap()
                .decoder
                .unwrap()
                .rope_theta,
            5000.0
        );
        let classifier = QWEN3
            .replace("Qwen3ForCausalLM", "Qwen3ForSequenceClassification")
            .replace("\"tie_word_embeddings\":true", "\"num_labels\":1");
        let c = ModelConfig::from_json(&classifier).unwrap();
        assert_eq!(c.decoder.as_ref().unwrap().head, DecoderHead::Classifier);
        assert_eq!(
            (c.declared_labels, c.score_activation),
            (Some(1), ScoreActivation::Sigmoid)
        );
    }

    #[test]
    fn qwen3_configs_the_engine_cannot_compute_are_refused_by_name() {
        for (from, to, named) in [
            (
                "\"rope_scaling\":null",
                "\"rope_scaling\":{\"type\":\"yarn\"}",
                "rope_scaling",
            ),
            (
                "\"use_sliding_window\":false",
                "\"use_sliding_window\":true",
                "use_sliding_window",
            ),
            (
                "\"num_key_value_heads\":8",
                "\"num_key_value_heads\":5",
                "num_key_value_heads",
            ),
            (
                "\"hidden_act\":\"silu\"",
                "\"hidden_act\":\"gelu\"",
                "hidden_act",
            ),
            ("\"head_dim\":128", "\"head_dim\":127", "head_dim"),
            (
                "Qwen3ForCausalLM",
                "Qwen3ForTokenClassification",
                "Qwen3ForTokenClassification",
            ),
        ] {
            let bad = QWEN3.replace(from, to);
            assert_ne!(bad, QWEN3);
            let e = ModelConfig::from_json(&bad).unwrap_err().to_string();
            assert!(e.contains(named), "{named}: {e}");
        }
    }
}
