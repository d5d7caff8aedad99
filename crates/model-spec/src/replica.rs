//! One replica's specification, as the supervisor plans it and the model
//! worker receives it.

use serde::{Deserialize, Serialize};

use crate::{AttentionLayout, DeviceSpec, ModelConfig, SpecError, WeightDType};

/// Where, on what and how one replica runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSpec {
    /// Model directory or hub id.
    pub model: String,
    /// Weight precision.
    pub dtype: WeightDType,
    /// Device.
    pub device: DeviceSpec,
    /// Attention layout.
    pub attention: AttentionLayout,
    /// Compute threads.
    pub threads: usize,
}

impl ReplicaSpec {
    /// Whether the engine can run this model so: `i8` has kernels only on
    /// the CPU, for the grouped layout and heads a multiple of 16 wide
    /// (the attention tile's width). The supervisor checks this before it
    /// starts a worker; the worker checks it again before it loads.
    pub fn check(&self, config: &ModelConfig) -> Result<(), SpecError> {
        if self.dtype == WeightDType::I8 && !self.runs_cpu_kernels(config) {
            return Err(SpecError::Incompatible(format!(
                "dtype i8 runs on the CPU, with the grouped attention layout and heads a multiple of 16 wide (asked: {} attention, heads {} wide, on {}); use q8_0 or f16 there",
                self.attention,
                config.head_dim(),
                self.device
            )));
        }
        Ok(())
    }

    /// True when the CPU encoder (f32 and i8 kernels on slices) serves this
    /// replica rather than the tensor library.
    pub fn runs_cpu_kernels(&self, config: &ModelConfig) -> bool {
        self.device.is_cpu()
            && self.attention == AttentionLayout::Grouped
            && (config.decoder.is_some() || config.head_dim().is_multiple_of(16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{"model_type":"bert","vocab_size":30522,"hidden_size":384,
        "num_hidden_layers":6,"num_attention_heads":12,"intermediate_size":1536}"#;

    fn spec(dtype: WeightDType, device: DeviceSpec, attention: AttentionLayout) -> ReplicaSpec {
        ReplicaSpec {
            model: "m".into(),
            dtype,
            device,
            attention,
            threads: 1,
        }
    }

    #[test]
    fn i8_is_refused_off_the_cpu_kernels_with_the_alternatives() {
        let config = ModelConfig::from_json(MINILM).unwrap();
        let ok = spec(WeightDType::I8, DeviceSpec::Cpu, AttentionLayout::Grouped);
        assert!(ok.check(&config).is_ok());
        for bad in [
            spec(
                WeightDType::I8,
                DeviceSpec::Cuda(0),
                AttentionLayout::Grouped,
            ),
            spec(WeightDType::I8, DeviceSpec::Cpu, AttentionLayout::Padded),
        ] {
            let e = bad.check(&config).unwrap_err().to_string();
            assert!(e.contains("q8_0") && e.contains("f16"), "{e}");
        }
        let f16 = spec(
            WeightDType::F16,
            DeviceSpec::Cuda(0),
            AttentionLayout::Padded,
        );
        assert!(f16.check(&config).is_ok());
    }
}
