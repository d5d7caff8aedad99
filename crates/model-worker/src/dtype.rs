//! What a [`WeightDType`] means to the tensor library.

use candle_core::DType;
use candle_core::quantized::GgmlDType;
use ce_model_spec::WeightDType;

/// The tensor library's side of a weight dtype.
pub trait CandleDType {
    /// The dtype activations (hidden states) are kept in.
    fn activation_dtype(self) -> DType;
    /// The ggml block format, for the quantized dtypes.
    fn ggml(self) -> Option<GgmlDType>;
}

impl CandleDType for WeightDType {
    fn activation_dtype(self) -> DType {
        match self {
            WeightDType::F16 => DType::F16,
            WeightDType::Bf16 => DType::BF16,
            WeightDType::F32 | WeightDType::Q8_0 | WeightDType::Q4_0 | WeightDType::I8 => {
                DType::F32
            }
        }
    }

    fn ggml(self) -> Option<GgmlDType> {
        match self {
            WeightDType::Q8_0 => Some(GgmlDType::Q8_0),
            WeightDType::Q4_0 => Some(GgmlDType::Q4_0),
            _ => None,
        }
    }
}
