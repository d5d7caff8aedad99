//! The cross-encoder engine and the model worker process.
//!
//! * [`Engine`] — load a Hugging Face cross-encoder (directory or hub id),
//!   tokenize pairs, score packed [`TokenBatch`](ce_common::TokenBatch)es.
//! * [`encoder`] — the encoder of every family (BERT, RoBERTa/XLM-RoBERTa,
//!   ELECTRA, DistilBERT, ModernBERT): on the CPU in f32/i8 on plain slices
//!   with fused kernels ([`encoder::cpu`]), elsewhere on candle (packed
//!   linear layers, attention by length group); and its classification head.
//! * [`dtype`], [`device`] — what the model specification (the
//!   `ce-model-spec` crate, re-exported here) means to the tensor library.
//! * [`quant`] — error-minimising Q4_0 weight quantization.
//! * [`fidelity`] — max |Δ| and Kendall's τ of a precision against f32.
//! * [`threads`] — the explicit per-process thread count.
//! * [`process`] — the model worker process's main loop (`ce-model-worker`).
//!
//! ```no_run
//! use model_worker::{Engine, EngineConfig};
//! use tokenizer_worker::Truncation;
//!
//! let engine = Engine::load(&EngineConfig::new("models/minilm-l6-ce"))?;
//! let scores = engine.score_query("what is rust?", &["A language.", "A fungus."], Truncation::Right)?;
//! println!("{:?}", scores.first_logits());
//! # Ok::<(), model_worker::EngineError>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod device;
pub mod dtype;
pub mod encoder;
pub mod engine;
pub mod error;
pub mod fidelity;
pub mod process;
pub mod quant;
pub mod threads;

pub use ce_model_spec::{
    AttentionLayout, DeviceSpec, ModelConfig, ModelFiles, ReplicaSpec, ScoreActivation, SpecError,
    WeightDType,
};
pub use dtype::CandleDType;
pub use encoder::cpu::bf16::{Kernel as Bf16Kernel, kernel as bf16_kernel};
pub use encoder::cpu::int8::{
    Kernel as Int8Kernel, kernel as int8_kernel, smoothing as int8_smoothing,
};
pub use engine::{BatchScores, Engine, EngineConfig, ModelInfo};
pub use error::EngineError;
