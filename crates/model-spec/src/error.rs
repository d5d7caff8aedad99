//! Why a model specification is unusable.

use std::path::PathBuf;

/// Everything that can be wrong with what a replica is asked to serve.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
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
    /// The model is of a family the engine does not run.
    #[error("unsupported model_type {model_type:?}: this engine runs {supported}")]
    UnsupportedModelType {
        /// `model_type` as `config.json` gives it.
        model_type: String,
        /// The model types it does run.
        supported: String,
    },
    /// The activation function in `config.json` is not one the engine implements.
    #[error(
        "unsupported hidden_act {0:?} (supported: gelu, gelu_new, gelu_pytorch_tanh, relu, tanh, silu)"
    )]
    UnsupportedActivation(String),
    /// A prompt template lacks a placeholder or has one out of order.
    #[error("prompt template: {0}")]
    PromptTemplate(String),
    /// The dtype name is not known.
    #[error("unknown dtype {0:?} (expected f32, f16, bf16, q8_0, q4_0 or i8)")]
    UnknownDType(String),
    /// The device name is not known.
    #[error("unknown device {0:?} (expected cpu, cuda[:N] or metal[:N])")]
    UnknownDevice(String),
    /// The attention layout name is not known.
    #[error("attention layout {0:?}: expected \"grouped\", \"single\" or \"padded\"")]
    UnknownAttention(String),
    /// The weight file does not hold what `config.json` declares.
    #[error("weights {path} do not match config.json: {message}")]
    WeightsMismatch {
        /// The weight file.
        path: PathBuf,
        /// What differs.
        message: String,
    },
    /// The dtype, device, attention layout and model do not fit together.
    #[error("{0}")]
    Incompatible(String),
    /// A hub id could not be resolved.
    #[error("cannot fetch {id} from the model hub: {reason}")]
    Hub {
        /// The hub id.
        id: String,
        /// Why (offline, unknown repo, or built without the `hub` feature).
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = SpecError> = std::result::Result<T, E>;
