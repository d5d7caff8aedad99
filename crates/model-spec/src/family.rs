//! The model families the engine runs, and where each keeps its tensors.
//!
//! Every family here is an encoder with a classification head read from one
//! token (or the mean of all tokens), so one engine computes them all; what
//! differs is said once, in this file and in [`crate::ModelConfig`]: the
//! embeddings (position offset, token types, a projection), the layer
//! (post-norm BERT blocks, or ModernBERT's pre-norm blocks with rotary
//! positions, GeGLU and sliding-window attention) and the head. The engine
//! and the supervisor's shape check both ask [`TensorNames`] for a tensor,
//! so a family's checkpoint layout is written down exactly once.

use std::fmt;

/// A family of encoder cross-encoders, from `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `bert`: `BertForSequenceClassification` (pooler tanh, classifier).
    Bert,
    /// `roberta`, `xlm-roberta`, `camembert`: positions from
    /// `padding_idx + 1`, one token type, `RobertaClassificationHead`.
    Roberta,
    /// `electra`: an optional embedding projection, a GELU head.
    Electra,
    /// `distilbert`: no token types, `pre_classifier` + ReLU head.
    DistilBert,
    /// `modernbert`: pre-norm, rotary positions, GeGLU, alternating local
    /// and global attention, a normed head over `[CLS]` or the mean.
    ModernBert,
    /// `qwen3`: a causal decoder (RMSNorm, rotary positions, grouped-query
    /// attention with per-head Q and K norms, SwiGLU) read at the last
    /// token, by a classifier (`Qwen3ForSequenceClassification`) or by
    /// the language-model head's "yes" and "no" rows (`Qwen3ForCausalLM`,
    /// Qwen3-Reranker).
    Qwen3,
}

/// Every `model_type` the engine loads, as `config.json` spells them.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "electra",
    "distilbert",
    "modernbert",
    "qwen3",
];

impl Family {
    /// The family of a `model_type`, or `None` when the engine has none.
    pub fn of(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "bert" => Self::Bert,
            "roberta" | "xlm-roberta" | "camembert" => Self::Roberta,
            "electra" => Self::Electra,
            "distilbert" => Self::DistilBert,
            "modernbert" => Self::ModernBert,
            "qwen3" => Self::Qwen3,
            _ => return None,
        })
    }

    /// Whether the model reads token type (segment) ids. Those that do not
    /// are given none by their tokenizers in transformers (the ids the
    /// tokenizer worker sends are ignored, as transformers' zeros are).
    pub fn reads_token_types(self) -> bool {
        matches!(self, Self::Bert | Self::Electra)
    }

    /// Whether the checkpoint has a token type table (RoBERTa's has one
    /// row, which every token adds, whatever its segment).
    pub fn has_token_type_table(self) -> bool {
        matches!(self, Self::Bert | Self::Electra | Self::Roberta)
    }

    /// Whether the family is a causal decoder (an LLM reranker), scored at
    /// each sequence's last token.
    pub fn is_decoder(self) -> bool {
        matches!(self, Self::Qwen3)
    }

    /// The encoder's prefix in a `*ForSequenceClassification` checkpoint.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Bert => "bert.",
            Self::Roberta => "roberta.",
            Self::Electra => "electra.",
            Self::DistilBert => "distilbert.",
            Self::ModernBert | Self::Qwen3 => "model.",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bert => "BERT",
            Self::Roberta => "RoBERTa",
            Self::Electra => "ELECTRA",
            Self::DistilBert => "DistilBERT",
            Self::ModernBert => "ModernBERT",
            Self::Qwen3 => "Qwen3",
        })
    }
}

/// A tensor of a cross-encoder by what it is, not by its name in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tensor {
    /// Word embeddings `[vocab, E]`.
    WordEmbeddings,
    /// Learned position embeddings `[positions, E]` (not ModernBERT's).
    PositionEmbeddings,
    /// Token type embeddings `[types, E]` (BERT, RoBERTa, ELECTRA).
    TokenTypeEmbeddings,
    /// The embeddings' layer norm.
    EmbeddingNorm,
    /// ELECTRA's `E → H` projection, where `embedding_size != hidden_size`.
    EmbeddingProjection,
    /// Layer `i`'s query projection (post-norm families).
    Query(usize),
    /// Layer `i`'s key projection (post-norm families).
    Key(usize),
    /// Layer `i`'s value projection (post-norm families).
    Value(usize),
    /// Layer `i`'s fused `[3H, H]` Q, K, V projection (ModernBERT).
    Qkv(usize),
    /// Layer `i`'s attention output projection.
    AttentionOutput(usize),
    /// The norm around layer `i`'s attention: after it (post-norm) or before
    /// it (ModernBERT, which has none in layer 0).
    AttentionNorm(usize),
    /// Layer `i`'s feed-forward input projection (`[2F, H]` for GeGLU).
    FeedForwardIn(usize),
    /// Layer `i`'s feed-forward output projection.
    FeedForwardOut(usize),
    /// The norm around layer `i`'s feed-forward block.
    FeedForwardNorm(usize),
    /// ModernBERT's norm after the last layer.
    FinalNorm,
    /// The head's `H → H` dense layer (BERT's pooler).
    HeadDense,
    /// ModernBERT's norm in the head.
    HeadNorm,
    /// The `H → labels` projection.
    Classifier,
    /// Layer `i`'s per-head RMSNorm of the queries (Qwen3).
    QueryNorm(usize),
    /// Layer `i`'s per-head RMSNorm of the keys (Qwen3).
    KeyNorm(usize),
    /// Layer `i`'s SwiGLU gate projection (Qwen3; `FeedForwardIn` is the
    /// up projection).
    Gate(usize),
    /// A causal LM's output projection `[vocab, H]` (absent where it is
    /// tied to the word embeddings).
    LmHead,
}

/// Where one family keeps its tensors: `name(t)` is the module path,
/// to which `.weight` or `.bias` is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorNames {
    family: Family,
    /// The encoder's prefix as the checkpoint has it: the family's, or none
    /// for a bare encoder saved without its head's wrapper.
    prefix: &'static str,
}

impl TensorNames {
    /// The names of `family`, finding its prefix with `has`, which tells
    /// whether a tensor of that name is in the file.
    pub fn find(family: Family, has: impl Fn(&str) -> bool) -> Self {
        let with = Self {
            family,
            prefix: family.prefix(),
        };
        let word = format!("{}.weight", with.name(Tensor::WordEmbeddings));
        if has(&word) {
            with
        } else {
            Self { family, prefix: "" }
        }
    }

    /// The module path of `tensor`.
    pub fn name(&self, tensor: Tensor) -> String {
        use Family as F;
        use Tensor as T;
        let p = self.prefix;
        let layer = |i: usize, rest: &str| match self.family {
            F::DistilBert => format!("{p}transformer.layer.{i}.{rest}"),
            F::ModernBert | F::Qwen3 => format!("{p}layers.{i}.{rest}"),
            _ => format!("{p}encoder.layer.{i}.{rest}"),
        };
        match (self.family, tensor) {
            (F::ModernBert, T::WordEmbeddings) => format!("{p}embeddings.tok_embeddings"),
            (F::ModernBert, T::EmbeddingNorm) => format!("{p}embeddings.norm"),
            (F::ModernBert, T::Qkv(i)) => layer(i, "attn.Wqkv"),
            (F::ModernBert, T::AttentionOutput(i)) => layer(i, "attn.Wo"),
            (F::ModernBert, T::AttentionNorm(i)) => layer(i, "attn_norm"),
            (F::ModernBert, T::FeedForwardIn(i)) => layer(i, "mlp.Wi"),
            (F::ModernBert, T::FeedForwardOut(i)) => layer(i, "mlp.Wo"),
            (F::ModernBert, T::FeedForwardNorm(i)) => layer(i, "mlp_norm"),
            (F::ModernBert, T::FinalNorm) => format!("{p}final_norm"),
            (F::ModernBert, T::HeadDense) => "head.dense".into(),
            (F::ModernBert, T::HeadNorm) => "head.norm".into(),
            (F::Qwen3, T::WordEmbeddings) => format!("{p}embed_tokens"),
            (F::Qwen3, T::Query(i)) => layer(i, "self_attn.q_proj"),
            (F::Qwen3, T::Key(i)) => layer(i, "self_attn.k_proj"),
            (F::Qwen3, T::Value(i)) => layer(i, "self_attn.v_proj"),
            (F::Qwen3, T::QueryNorm(i)) => layer(i, "self_attn.q_norm"),
            (F::Qwen3, T::KeyNorm(i)) => layer(i, "self_attn.k_norm"),
            (F::Qwen3, T::AttentionOutput(i)) => layer(i, "self_attn.o_proj"),
            (F::Qwen3, T::AttentionNorm(i)) => layer(i, "input_layernorm"),
            (F::Qwen3, T::FeedForwardNorm(i)) => layer(i, "post_attention_layernorm"),
            (F::Qwen3, T::Gate(i)) => layer(i, "mlp.gate_proj"),
            (F::Qwen3, T::FeedForwardIn(i)) => layer(i, "mlp.up_proj"),
            (F::Qwen3, T::FeedForwardOut(i)) => layer(i, "mlp.down_proj"),
            (F::Qwen3, T::FinalNorm) => format!("{p}norm"),
            (F::Qwen3, T::Classifier) => "score".into(),
            (_, T::LmHead) => "lm_head".into(),
            (F::DistilBert, T::Query(i)) => layer(i, "attention.q_lin"),
            (F::DistilBert, T::Key(i)) => layer(i, "attention.k_lin"),
            (F::DistilBert, T::Value(i)) => layer(i, "attention.v_lin"),
            (F::DistilBert, T::AttentionOutput(i)) => layer(i, "attention.out_lin"),
            (F::DistilBert, T::AttentionNorm(i)) => layer(i, "sa_layer_norm"),
            (F::DistilBert, T::FeedForwardIn(i)) => layer(i, "ffn.lin1"),
            (F::DistilBert, T::FeedForwardOut(i)) => layer(i, "ffn.lin2"),
            (F::DistilBert, T::FeedForwardNorm(i)) => layer(i, "output_layer_norm"),
            (F::DistilBert, T::HeadDense) => "pre_classifier".into(),
            (F::Bert, T::HeadDense) => format!("{p}pooler.dense"),
            (F::Roberta | F::Electra, T::HeadDense) => "classifier.dense".into(),
            (F::Qwen3, T::HeadDense) => "head.dense".into(),
            (F::Roberta | F::Electra, T::Classifier) => "classifier.out_proj".into(),
            (_, T::Classifier) => "classifier".into(),
            (_, T::WordEmbeddings) => format!("{p}embeddings.word_embeddings"),
            (_, T::PositionEmbeddings) => format!("{p}embeddings.position_embeddings"),
            (_, T::TokenTypeEmbeddings) => format!("{p}embeddings.token_type_embeddings"),
            (_, T::EmbeddingNorm) => format!("{p}embeddings.LayerNorm"),
            (_, T::EmbeddingProjection) => format!("{p}embeddings_project"),
            (_, T::Query(i)) => layer(i, "attention.self.query"),
            (_, T::Key(i)) => layer(i, "attention.self.key"),
            (_, T::Value(i)) => layer(i, "attention.self.value"),
            (_, T::Qkv(i)) => layer(i, "attention.self.qkv"),
            (_, T::AttentionOutput(i)) => layer(i, "attention.output.dense"),
            (_, T::AttentionNorm(i)) => layer(i, "attention.output.LayerNorm"),
            (_, T::FeedForwardIn(i)) => layer(i, "intermediate.dense"),
            (_, T::FeedForwardOut(i)) => layer(i, "output.dense"),
            (_, T::FeedForwardNorm(i)) => layer(i, "output.LayerNorm"),
            (_, T::FinalNorm) => format!("{p}final_norm"),
            (_, T::HeadNorm) => "head.norm".into(),
            (_, T::QueryNorm(i)) => layer(i, "self_attn.q_norm"),
            (_, T::KeyNorm(i)) => layer(i, "self_attn.k_norm"),
            (_, T::Gate(i)) => layer(i, "mlp.gate_proj"),
        }
    }

    /// `name(tensor).weight`.
    pub fn weight(&self, tensor: Tensor) -> String {
        format!("{}.weight", self.name(tensor))
    }

    /// `name(tensor).bias`.
    pub fn bias(&self, tensor: Tensor) -> String {
        format!("{}.bias", self.name(tensor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_names_its_checkpoint_tensors() {
        let all = |_: &str| true;
        let bert = TensorNames::find(Family::Bert, all);
        assert_eq!(
            bert.weight(Tensor::Query(3)),
            "bert.encoder.layer.3.attention.self.query.weight"
        );
        assert_eq!(bert.weight(Tensor::HeadDense), "bert.pooler.dense.weight");
        assert_eq!(bert.bias(Tensor::Classifier), "classifier.bias");
        let roberta = TensorNames::find(Family::Roberta, all);
        assert_eq!(
            roberta.weight(Tensor::Classifier),
            "classifier.out_proj.weight"
        );
        assert_eq!(
            roberta.weight(Tensor::EmbeddingNorm),
            "roberta.embeddings.LayerNorm.weight"
        );
        let electra = TensorNames::find(Family::Electra, all);
        assert_eq!(
            electra.weight(Tensor::EmbeddingProjection),
            "electra.embeddings_project.weight"
        );
        let distil = TensorNames::find(Family::DistilBert, all);
        assert_eq!(
            distil.weight(Tensor::FeedForwardIn(0)),
            "distilbert.transformer.layer.0.ffn.lin1.weight"
        );
        assert_eq!(distil.weight(Tensor::HeadDense), "pre_classifier.weight");
        let modern = TensorNames::find(Family::ModernBert, all);
        assert_eq!(
            modern.weight(Tensor::Qkv(2)),
            "model.layers.2.attn.Wqkv.weight"
        );
        assert_eq!(
            modern.weight(Tensor::WordEmbeddings),
            "model.embeddings.tok_embeddings.weight"
        );
        assert_eq!(modern.weight(Tensor::HeadNorm), "head.norm.weight");
        let qwen = TensorNames::find(Family::Qwen3, all);
        assert_eq!(
            qwen.weight(Tensor::KeyNorm(1)),
            "model.layers.1.self_attn.k_norm.weight"
        );
        assert_eq!(
            qwen.weight(Tensor::Gate(0)),
            "model.layers.0.mlp.gate_proj.weight"
        );
        assert_eq!(qwen.weight(Tensor::Classifier), "score.weight");
        assert_eq!(qwen.weight(Tensor::LmHead), "lm_head.weight");
        // A bare encoder has no prefix.
        let bare = TensorNames::find(Family::Bert, |n| !n.starts_with("bert."));
        assert_eq!(
            bare.weight(Tensor::WordEmbeddings),
            "embeddings.word_embeddings.weight"
        );
    }

    #[test]
    fn model_types_map_to_families() {
        for t in SUPPORTED_MODEL_TYPES {
            assert!(Family::of(t).is_some(), "{t}");
        }
        assert_eq!(Family::of("xlm-roberta"), Some(Family::Roberta));
        assert_eq!(Family::of("t5"), None);
        assert!(!Family::Roberta.reads_token_types());
        assert!(Family::Electra.reads_token_types());
    }
}
