//! Calibration for the int8 encoder's smoothing ([`super::int8`]): which
//! input channels of the products that read the residual stream carry the
//! large values, seen by the f32 encoder on a few pairs of real text.
//!
//! The text is built in (`calibration.tsv`: 20 query–passage pairs, prose
//! on mixed topics with numbers, code and six languages) and tokenized by
//! the model's own tokenizer, so every model is calibrated the same way
//! and loading needs nothing beyond the model's files. What it has to
//! find is coarse — the few channels whose peaks are ten times the rest,
//! which BERT-like models show on every input, `[CLS]` and `[SEP]` rows above
//! all — so a small sample is enough: on the default model (1 186 tokens)
//! the peaks of the largest channels come within 15% of what 1 024 pairs
//! of the benchmark's workload (English word salad, unlike this text)
//! reach, and the Kendall τ of i8 against f32 on that workload moves from
//! 0.923 to 0.962 (see [`super::int8::SMOOTHING_ALPHA`]).
//!
//! The CPU decoder (Qwen3 rerankers) calibrates on the same text in its
//! prompt, on the first pairs within [`DECODER_TOKENS`], and does it layer
//! by layer as the model loads: each layer is read in f32, run on the
//! text's hidden states, observed, quantized and its f32 weights dropped,
//! so that loading never holds more than one layer in f32.

use std::sync::Mutex;

use ce_common::TokenBatch;
use tokenizer_worker::{PairTokenizer, Truncation};

use crate::error::Result;

/// Query, tab, passage; one pair a line.
const PAIRS: &str = include_str!("calibration.tsv");

/// Tokens of the calibration text a decoder (an LLM reranker) reads: the
/// first pairs that fit, prompts included. Every token of it costs a
/// forward pass of the whole f32 model at load, and an LLM's is a hundred
/// times an encoder's (Qwen3-Reranker-0.6B: ~1 GFLOP a token, 8B: ~15),
/// while the channels smoothing is for stand out on any text.
pub const DECODER_TOKENS: usize = 1024;

/// The calibration pairs as `tokenizer` encodes them (with its prompt, if
/// it has one), in one batch: in order, as many as fit in `max_tokens`
/// tokens, and the first whatever its length.
pub fn text_batch(tokenizer: &PairTokenizer, max_tokens: usize) -> Result<TokenBatch> {
    let mut batch = TokenBatch::default();
    for (query, passage) in PAIRS.lines().filter_map(|line| line.split_once('\t')) {
        let (ids, types) = tokenizer.encode_pair(query, passage, Truncation::Right)?;
        if !batch.is_empty() && batch.total_tokens() + ids.len() > max_tokens {
            break;
        }
        batch.push(&ids, &types);
    }
    Ok(batch)
}

/// The products whose inputs are observed: the two that read the residual
/// stream (post-norm layers read it as it is, pre-norm ones a normed copy).
#[derive(Debug, Clone, Copy)]
pub(super) enum Observed {
    /// Q, K and V.
    Qkv,
    /// The feed-forward block's first product.
    FeedForwardIn,
}

/// The largest |value| of each input channel of one layer's observed
/// products.
#[derive(Debug, Clone, Default)]
pub(super) struct LayerPeaks {
    pub qkv: Vec<f32>,
    pub feed_forward_in: Vec<f32>,
}

/// Every layer's [`LayerPeaks`], filled by forward passes that observe
/// (shards on several threads share it).
#[derive(Debug)]
pub(super) struct ActivationPeaks(Mutex<Vec<LayerPeaks>>);

impl ActivationPeaks {
    pub fn new(layers: usize) -> Self {
        Self(Mutex::new(vec![LayerPeaks::default(); layers]))
    }

    /// Takes in `rows`, row-major rows of `width` values, as inputs of
    /// `product` in layer `layer`.
    pub fn observe(&self, layer: usize, product: Observed, rows: &[f32], width: usize) {
        let Ok(mut layers) = self.0.lock() else {
            return;
        };
        let Some(peaks) = layers.get_mut(layer) else {
            return;
        };
        let peaks = match product {
            Observed::Qkv => &mut peaks.qkv,
            Observed::FeedForwardIn => &mut peaks.feed_forward_in,
        };
        peaks.resize(width, 0.0);
        for row in rows.chunks_exact(width) {
            for (peak, v) in peaks.iter_mut().zip(row) {
                *peak = peak.max(v.abs());
            }
        }
    }

    /// The peaks, one [`LayerPeaks`] per layer.
    pub fn into_layers(self) -> Vec<LayerPeaks> {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_each_channels_largest_magnitude() {
        let peaks = ActivationPeaks::new(2);
        peaks.observe(1, Observed::Qkv, &[1.0, -3.0, 0.5, 2.0, 2.0, -0.25], 3);
        peaks.observe(1, Observed::Qkv, &[-4.0, 0.0, 0.0], 3);
        peaks.observe(0, Observed::FeedForwardIn, &[0.5, -0.5], 2);
        peaks.observe(7, Observed::Qkv, &[9.0], 1); // no such layer: ignored
        let layers = peaks.into_layers();
        assert_eq!(layers[1].qkv, [4.0, 3.0, 0.5]);
        assert!(layers[1].feed_forward_in.is_empty());
        assert_eq!(layers[0].feed_forward_in, [0.5, 0.5]);
        assert!(layers[0].qkv.is_empty());
    }

    #[test]
    fn every_line_of_the_text_is_a_pair() {
        let lines: Vec<&str> = PAIRS.lines().collect();
        assert!(lines.len() >= 16, "{} pairs", lines.len());
        for line in lines {
            let (query, passage) = line.split_once('\t').expect("a tab in every line");
            assert!(
                !query.trim().is_empty() && !passage.trim().is_empty(),
                "{line}"
            );
        }
    }
}
