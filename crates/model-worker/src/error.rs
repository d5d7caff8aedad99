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
    #[error("{device}: {reason}")]
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
        EngineError::Forward(candle_message(&e))
    }
}

/// A candle error as one line: candle appends a captured backtrace to its
/// message whenever `RUST_BACKTRACE` is set, and a reason that reaches a log
/// line, `/info` and a client must not carry a stack of source paths.
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error;
    match e {
        Error::WithBacktrace { inner, .. } => candle_message(inner),
        Error::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        Error::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        other => other.to_string().replace('\n', " "),
    }
}

impl EngineError {
    /// Whether loading again cannot help: the device is absent or its
    /// back-end is not in this build, which no restart changes (a model
    /// file may yet appear; a GPU will not).
    pub fn is_permanent(&self) -> bool {
        matches!(self, EngineError::Device { .. })
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candle_error_is_one_line_without_its_backtrace() {
        let inner = candle_core::Error::Msg("CUDA_ERROR_STUB_LIBRARY".into());
        let traced = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(
            traced.to_string().contains('\n'),
            "candle's own text has the trace"
        );
        let wrapped = traced.context("opening cuda:0");
        assert_eq!(
            candle_message(&wrapped),
            "opening cuda:0: CUDA_ERROR_STUB_LIBRARY"
        );
        let engine: EngineError = wrapped.into();
        assert_eq!(
            engine.to_string(),
            "forward pass failed: opening cuda:0: CUDA_ERROR_STUB_LIBRARY"
        );
    }
}
