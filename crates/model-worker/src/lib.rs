//! The cross-encoder engine and the model worker process.
//!
//! * [`Engine`] — load a Hugging Face cross-encoder (directory or hub id),
//!   tokenize pairs, score packed [`TokenBatch`](ce_common::TokenBatch)es.
//! * [`bert`] — the BERT blocks: on the CPU in f32/i8 on plain slices with
//!   fused kernels ([`bert::cpu`]), elsewhere on candle (packed linear
//!   layers, attention by length group); pooler and classifier head.
//! * [`config`], [`dtype`], [`device`], [`source`] — what to load, in which
//!   precision, where, and from which files.
//! * [`quant`] — error-minimising Q4_0 weight quantization.
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

pub mod bert;
pub mod config;
pub mod device;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod process;
pub mod quant;
pub mod source;
pub mod threads;

pub use bert::cpu::int8::{Kernel as Int8Kernel, kernel as int8_kernel};
pub use bert::plan::AttentionLayout;
pub use config::{BertConfig, ScoreActivation};
pub use device::DeviceSpec;
pub use dtype::WeightDType;
pub use engine::{BatchScores, Engine, EngineConfig, ModelInfo};
pub use error::EngineError;
