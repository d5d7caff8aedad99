//! The engine's error type.

use ce_common::BatchError;
use tokenizer_worker::TokenizeError;

/// Everything that can go wrong loading or running the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model specification is unusable (files, config.json, dtype,
    /// device or layout).
    #[error(transparent)]
    Spec(#[from] ce_model_spec::SpecError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A weight tensor is missing or has the wrong shape.
    #[error("cannot load weights: {0}")]
    Weights(String),
    /// The device is not available (absent, or its back-end not built in).
    #[error("device {device:?} unavailable: {reason}")]
    Device {
        /// The device as given.
        device: String,
        /// Why it cannot be used.
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
