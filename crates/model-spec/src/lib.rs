//! The model specification, shared by the supervisor and the model worker
//! so that a setting is parsed once, where it is given, and travels typed:
//!
//! * [`WeightDType`], [`DeviceSpec`], [`AttentionLayout`] — how and where a
//!   replica computes; each parses from the name a user writes and
//!   (de)serializes as that name, so a bad value in a config file is
//!   refused when the supervisor starts, with its key.
//! * [`ModelConfig`] — a cross-encoder's validated `config.json`, with the
//!   [`ScoreActivation`] clients get; [`Family`] and [`TensorNames`] — the
//!   families it runs and where each keeps its tensors.
//! * [`ModelFiles`] — where its files are (a directory or a hub id).
//! * [`ReplicaSpec`] — one replica: model, dtype, device, attention,
//!   threads, and the check that they fit together.
//!
//! No tensor library here: the supervisor links this crate, not the engine.
#![warn(missing_docs)]

mod attention;
pub mod config;
mod device;
mod dtype;
mod error;
pub mod family;
pub mod files;
pub mod prompt;
mod replica;

pub use attention::AttentionLayout;
pub use config::{
    DecoderHead, DecoderSpec, HeadSpec, HiddenAct, ModelConfig, ModernBertSpec, Pooling,
    ScoreActivation, relevant_label,
};
pub use device::DeviceSpec;
pub use dtype::WeightDType;
pub use error::SpecError;
pub use family::{Family, SUPPORTED_MODEL_TYPES, Tensor, TensorNames};
pub use files::{ModelFiles, Weights};
pub use prompt::{PromptParts, PromptTemplate};
pub use replica::ReplicaSpec;

/// Serializes a type as its `Display` name and deserializes it with its
/// `FromStr`, so config files, flags and the control channel all spell a
/// value the same way and a bad one fails with the parser's message.
macro_rules! serde_as_name {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = String::deserialize(d)?;
                name.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_name;
