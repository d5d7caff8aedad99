//! `config.json` of a Hugging Face BERT cross-encoder, validated.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, SpecError};

/// The hidden activation of the feed-forward blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// Exact GELU, `x * Φ(x)` with erf (transformers' `"gelu"`).
    GeluErf,
    /// The tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    /// `max(0, x)`.
    Relu,
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
    /// the default for two-label models (label 1 is the relevant one).
    Softmax,
}

impl ScoreActivation {
    /// Applies the activation to one logit (a softmax over one label is 1).
    pub fn apply(self, x: f32) -> f32 {
        self.score(&[x])
    }

    /// The score of a pair from its row of logits: the activation of the
    /// relevant label ([`relevant_label`]); a softmax takes every label.
    pub fn score(self, row: &[f32]) -> f32 {
        let relevant = relevant_label(row.len());
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

/// Which of a model's `labels` logits says "relevant": the second of two
/// (a binary classifier's positive class), else the first.
pub fn relevant_label(labels: usize) -> usize {
    usize::from(labels == 2)
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

#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    id2label: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    sbert_ce_default_activation_function: Option<String>,
    #[serde(default)]
    _name_or_path: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// The validated shape and behaviour of a BERT cross-encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width `H`.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads; `H` must divide evenly.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub hidden_act: HiddenAct,
    /// Longest sequence the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Labels the classifier head declares in `config.json` (the weights have the last word).
    pub declared_labels: Option<usize>,
    /// Activation a client gets unless it asks for raw scores.
    pub score_activation: ScoreActivation,
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
        // Check the model type before the fields: a RoBERTa or T5 config
        // deserves "unsupported model_type", not "missing field".
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| config_err(e.to_string()))?;
        match value.get("model_type").and_then(|v| v.as_str()) {
            Some("bert") => {}
            Some(other) => return Err(SpecError::UnsupportedModelType(other.to_string())),
            None => return Err(config_err("no \"model_type\" field".into())),
        }
        let raw: RawConfig =
            serde_json::from_value(value).map_err(|e| config_err(e.to_string()))?;
        debug_assert_eq!(raw.model_type.as_deref(), Some("bert"));
        let hidden_act = match raw.hidden_act.as_str() {
            "gelu" => HiddenAct::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => HiddenAct::GeluTanh,
            "relu" => HiddenAct::Relu,
            other => return Err(SpecError::UnsupportedActivation(other.to_string())),
        };
        if let Some(kind) = raw.position_embedding_type.as_deref()
            && kind != "absolute"
        {
            return Err(config_err(format!(
                "position_embedding_type {kind:?} is not supported (only \"absolute\")"
            )));
        }
        for (name, v, most) in [
            ("vocab_size", raw.vocab_size, LIMITS.vocab_size),
            ("hidden_size", raw.hidden_size, LIMITS.hidden_size),
            ("num_hidden_layers", raw.num_hidden_layers, LIMITS.layers),
            ("num_attention_heads", raw.num_attention_heads, LIMITS.heads),
            (
                "intermediate_size",
                raw.intermediate_size,
                LIMITS.intermediate_size,
            ),
            (
                "max_position_embeddings",
                raw.max_position_embeddings,
                LIMITS.positions,
            ),
            (
                "type_vocab_size",
                raw.type_vocab_size,
                LIMITS.type_vocab_size,
            ),
        ] {
            if v == 0 || v > most {
                return Err(config_err(format!("{name} {v} is outside 1..={most}")));
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
            ("vocab_size × hidden_size", raw.vocab_size.checked_mul(h)),
            (
                "max_position_embeddings × hidden_size",
                raw.max_position_embeddings.checked_mul(h),
            ),
            (
                "3 × hidden_size²",
                h.checked_mul(h).and_then(|x| x.checked_mul(3)),
            ),
            ("hidden_size × intermediate_size", h.checked_mul(f)),
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
        if !raw.hidden_size.is_multiple_of(raw.num_attention_heads) {
            return Err(config_err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        let declared_labels = raw.num_labels.or(raw.id2label.as_ref().map(|m| m.len()));
        let score_activation = match raw.sbert_ce_default_activation_function.as_deref() {
            Some(f) if f.ends_with("Identity") => ScoreActivation::Identity,
            Some(f) if f.ends_with("Sigmoid") => ScoreActivation::Sigmoid,
            Some(f) if f.ends_with("Softmax") => ScoreActivation::Softmax,
            Some(other) => {
                return Err(config_err(format!(
                    "sbert_ce_default_activation_function {other:?} is not supported (Identity, Sigmoid or Softmax)"
                )));
            }
            None => match declared_labels.unwrap_or(1) {
                1 => ScoreActivation::Sigmoid,
                2 => ScoreActivation::Softmax,
                _ => ScoreActivation::Identity,
            },
        };
        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
            declared_labels,
            score_activation,
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Useful FLOPs of one forward pass over a sequence of `len` tokens
    /// (multiply-adds count 2; embeddings, norms and softmax excluded).
    pub fn flops_per_sequence(&self, len: usize) -> f64 {
        let (l, h, f) = (
            len as f64,
            self.hidden_size as f64,
            self.intermediate_size as f64,
        );
        let linear = 2.0 * l * (4.0 * h * h + 2.0 * h * f);
        let attention = 2.0 * 2.0 * l * l * h;
        let head = 2.0 * h * h;
        self.num_hidden_layers as f64 * (linear + attention) + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_take_the_relevant_label() {
        assert_eq!(ScoreActivation::Sigmoid.score(&[0.0]), 0.5);
        assert_eq!(ScoreActivation::Identity.score(&[1.5, -2.0]), -2.0);
        let p = ScoreActivation::Softmax.score(&[0.0, 2f32.ln()]);
        assert!((p - 2.0 / 3.0).abs() < 1e-6, "{p}");
        assert!(
            ScoreActivation::Softmax.score(&[1000.0, 1000.0]) == 0.5,
            "no overflow"
        );
        assert_eq!(ScoreActivation::Identity.score(&[3.0, 1.0, 2.0]), 3.0);
        assert!(ScoreActivation::Sigmoid.score(&[]).is_nan());
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
        let e = ModelConfig::from_json(r#"{"model_type":"xlm-roberta"}"#).unwrap_err();
        assert!(e.to_string().contains("xlm-roberta"), "{e}");
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
        assert!(e.contains("vocab_size × hidden_size"), "{e}");
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
}
