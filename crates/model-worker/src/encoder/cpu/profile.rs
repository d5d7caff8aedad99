//! Where the CPU encoder's time goes, stage by stage: off (one relaxed load
//! per stage) unless [`enable`]d, as `ce-engine-bench --profile` does.
//!
//! Each stage's time is summed over every compute thread (so the shares
//! are of CPU time, which is wall time times threads while the shards keep
//! every thread busy). The linear stages include their activations'
//! quantization or rounding; [`Stage::Quantize`] is that part of them
//! alone, reported beside, not added to the total.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// A stage of the encoder's forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Embedding lookups, their layer norm (and ELECTRA's projection).
    Embed,
    /// The QKV product and its bias.
    Qkv,
    /// Rotary turns and attention (the per-sequence products and softmax).
    Attention,
    /// The attention output product.
    AttentionOut,
    /// The feed-forward up product.
    FeedForwardIn,
    /// Bias and activation (GELU, GeGLU) after it.
    Activation,
    /// The feed-forward down product.
    FeedForwardOut,
    /// Residual adds and layer norms, and the gathers of `[CLS]` rows.
    Norms,
    /// Pooling, the head's dense layer and the classifier.
    Head,
    /// Of the linear stages: activations quantized (i8) or rounded (bf16).
    Quantize,
}

impl Stage {
    /// Every stage, in the order of a forward pass (`Quantize` last).
    pub const ALL: [Stage; 10] = [
        Stage::Embed,
        Stage::Qkv,
        Stage::Attention,
        Stage::AttentionOut,
        Stage::FeedForwardIn,
        Stage::Activation,
        Stage::FeedForwardOut,
        Stage::Norms,
        Stage::Head,
        Stage::Quantize,
    ];

    /// A short name for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Embed => "embeddings",
            Stage::Qkv => "QKV product",
            Stage::Attention => "attention",
            Stage::AttentionOut => "attention-out product",
            Stage::FeedForwardIn => "FFN-in product",
            Stage::Activation => "bias + activation",
            Stage::FeedForwardOut => "FFN-out product",
            Stage::Norms => "residual + norms",
            Stage::Head => "head",
            Stage::Quantize => "of the products: quantize/round activations",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; Stage::ALL.len()] = [const { AtomicU64::new(0) }; Stage::ALL.len()];

/// Turns the profile on or off (for the whole process) and zeroes it.
pub fn enable(on: bool) {
    for n in &NANOS {
        n.store(0, Relaxed);
    }
    ON.store(on, Relaxed);
}

/// The seconds each stage took so far, over every thread, in
/// [`Stage::ALL`]'s order.
pub fn seconds() -> Vec<(Stage, f64)> {
    Stage::ALL
        .iter()
        .zip(&NANOS)
        .map(|(&s, n)| (s, n.load(Relaxed) as f64 * 1e-9))
        .collect()
}

/// Runs `f`, adding its time to `stage` while the profile is on.
#[inline]
pub(crate) fn timed<R>(stage: Stage, f: impl FnOnce() -> R) -> R {
    if !ON.load(Relaxed) {
        return f();
    }
    let started = Instant::now();
    let r = f();
    NANOS[stage as usize].fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_add_up_only_while_on() {
        enable(false);
        timed(Stage::Head, || {
            std::thread::sleep(std::time::Duration::from_millis(2))
        });
        assert!(seconds().iter().all(|&(_, s)| s == 0.0));
        enable(true);
        timed(Stage::Head, || {
            std::thread::sleep(std::time::Duration::from_millis(2))
        });
        let head = seconds()[Stage::ALL.iter().position(|&s| s == Stage::Head).unwrap()].1;
        enable(false);
        assert!(head >= 0.002, "{head}");
    }
}
