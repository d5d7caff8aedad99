//! Weight and activation precision, chosen at load time.

use std::fmt;
use std::str::FromStr;

use crate::error::SpecError;

/// How the model's linear layers are stored and computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightDType {
    /// 32-bit floats throughout (the CPU default, the reference for accuracy).
    #[default]
    F32,
    /// Half precision weights and activations.
    F16,
    /// bfloat16 weights and activations.
    Bf16,
    /// 8-bit block-quantized weights (ggml Q8_0: 32 weights share one f16 scale); f32 activations.
    Q8_0,
    /// 4-bit block-quantized weights (ggml Q4_0); f32 activations.
    Q4_0,
    /// 8-bit integer weights (one scale per output channel) times 8-bit
    /// activations (one scale per token, quantized as each layer runs),
    /// summed in i32 by AMX, AVX-512 VNNI or AVX2 (whichever the CPU has):
    /// the fast quantized path, CPU only.
    I8,
}

impl WeightDType {
    /// Every dtype, in the order benchmarks report them.
    pub const ALL: [WeightDType; 6] = [
        WeightDType::F32,
        WeightDType::F16,
        WeightDType::Bf16,
        WeightDType::Q8_0,
        WeightDType::Q4_0,
        WeightDType::I8,
    ];

    /// The name used on the command line and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightDType::F32 => "f32",
            WeightDType::F16 => "f16",
            WeightDType::Bf16 => "bf16",
            WeightDType::Q8_0 => "q8_0",
            WeightDType::Q4_0 => "q4_0",
            WeightDType::I8 => "i8",
        }
    }
}

impl fmt::Display for WeightDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WeightDType {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(WeightDType::F32),
            "f16" | "float16" | "fp16" => Ok(WeightDType::F16),
            "bf16" | "bfloat16" => Ok(WeightDType::Bf16),
            "q8_0" | "q8" => Ok(WeightDType::Q8_0),
            "q4_0" | "q4" | "int4" => Ok(WeightDType::Q4_0),
            "i8" | "int8" => Ok(WeightDType::I8),
            _ => Err(SpecError::UnknownDType(s.to_string())),
        }
    }
}

crate::serde_as_name!(WeightDType);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_names() {
        for d in WeightDType::ALL {
            assert_eq!(d.as_str().parse::<WeightDType>().unwrap(), d);
        }
        // The seed's names for them.
        for (alias, d) in [
            ("fp32", WeightDType::F32),
            ("fp16", WeightDType::F16),
            ("int8", WeightDType::I8),
            ("int4", WeightDType::Q4_0),
        ] {
            assert_eq!(alias.parse::<WeightDType>().unwrap(), d);
        }
        assert!(matches!(
            "q3_k".parse::<WeightDType>(),
            Err(SpecError::UnknownDType(_))
        ));
    }

    #[test]
    fn serializes_as_its_name() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            dtype: WeightDType,
        }
        let text = toml::to_string(&T {
            dtype: WeightDType::Q8_0,
        })
        .unwrap();
        assert_eq!(text.trim(), "dtype = \"q8_0\"");
        assert_eq!(
            toml::from_str::<T>("dtype = \"int8\"").unwrap().dtype,
            WeightDType::I8
        );
        let e = toml::from_str::<T>("dtype = \"q3\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("q3") && e.contains("dtype"), "{e}");
    }
}
