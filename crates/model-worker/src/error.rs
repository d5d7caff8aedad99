//! The engine's error type.

use std::path::PathBuf;

use ce_common::BatchError;
use tokenizer_worker::TokenizeError;

/// Everything that can go wrong loading or running the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model directory does not exist or is not a directory.
    #[error(
        "model directory {0} does not exist (run scripts/fetch_model.sh for the default model)"
    )]
    ModelDirMissing(PathBuf),
    /// A file the model needs is missing from its directory.
    #[error("{file} is missing from model directory {dir}")]
    FileMissing {
        /// The directory that was searched.
        dir: PathBuf,
        /// The file that is missing.
        file: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON or lacks a required field.
    #[error("invalid config {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The model is not a BERT model.
    #[error(
        "unsupported model_type {0:?}: this engine runs BERT-family cross-encoders (model_type \"bert\")"
    )]
    UnsupportedModelType(String),
    /// The activation function in `config.json` is not one the engine implements.
    #[error("unsupported hidden_act {0:?} (supported: gelu, gelu_new, gelu_pytorch_tanh, relu)")]
    UnsupportedActivation(String),
    /// A weight tensor is missing or has the wrong shape.
    #[error("cannot load weights: {0}")]
    Weights(String),
    /// The dtype string is not known.
    #[error("unknown dtype {0:?} (expected f32, f16, bf16, q8_0, q4_0 or i8)")]
    UnknownDType(String),
    /// The device string is not known or the device is not available.
    #[error("device {device:?} unavailable: {reason}")]
    Device {
        /// The device as given.
        device: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A hub id could not be resolved.
    #[error("cannot fetch {id} from the model hub: {reason}")]
    Hub {
        /// The hub id.
        id: String,
        /// Why (offline, unknown repo, or built without the `hub` feature).
        reason: String,
    },
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    /// A packed batch is malformed or outside the model's limits.
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
    /// The tensor library failed during a forward pass.
    #[error("forward pass failed: {0}")]
    Forward(String),
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Forward(e.to_string())
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
