//! Linear layers in every supported precision.
//!
//! ```text
//! x [tokens, in] ── Linear ──▶ [tokens, out]      y = x · Wᵀ + b
//! ```
//!
//! The weight is prepared once at load for the chosen [`WeightDType`]:
//! transposed to `[in, out]` for the dense kinds so the GEMM reads it row by
//! row, or block-quantized for `q8_0`/`q4_0`.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::dtype::CandleDType;
use crate::error::Result;
use ce_model_spec::WeightDType;

/// One linear layer (`y = x Wᵀ + b`).
#[derive(Debug, Clone)]
pub enum Linear {
    /// Weight `[in, out]` in the activation dtype; the GEMM runs in that dtype.
    Dense {
        /// Transposed weight `[in, out]`.
        weight_t: Tensor,
        /// Bias `[out]`.
        bias: Tensor,
    },
    /// bf16 weight on the CPU, whose GEMM has no bf16 kernel: stored in bf16
    /// (half the memory) and widened to f32 for each product.
    Widened {
        /// Transposed bf16 weight `[in, out]`.
        weight_t: Tensor,
        /// f32 bias `[out]`.
        bias: Tensor,
    },
    /// Block-quantized weight (ggml layout, `[out, in]`), f32 activations.
    Quantized {
        /// The quantized product.
        weight: QMatMul,
        /// f32 bias `[out]`.
        bias: Tensor,
    },
}

impl Linear {
    /// Prepares a layer from an f32 weight `[out, in]` and bias `[out]`.
    pub fn new(weight: Tensor, bias: Tensor, dtype: WeightDType, device: &Device) -> Result<Self> {
        if let Some(ggml) = dtype.ggml() {
            let cpu_weight = weight.to_device(&Device::Cpu)?;
            let q = match ggml {
                GgmlDType::Q4_0 => crate::quant::quantize_q4_0(&cpu_weight)?,
                _ => QTensor::quantize(&cpu_weight, ggml)?,
            };
            let q = if device.is_cpu() {
                q
            } else {
                let blocks = q.data()?;
                QTensor::new(
                    candle_core::quantized::QStorage::from_data(blocks, device, ggml)?,
                    q.shape().clone(),
                )?
            };
            return Ok(Linear::Quantized {
                weight: QMatMul::from_qtensor(q)?,
                bias: bias.to_dtype(DType::F32)?.to_device(device)?,
            });
        }
        let act = dtype.activation_dtype();
        let weight_t = weight.t()?.contiguous()?;
        if act == DType::BF16 && device.is_cpu() {
            return Ok(Linear::Widened {
                weight_t: weight_t.to_dtype(DType::BF16)?,
                bias: bias.to_dtype(DType::F32)?,
            });
        }
        Ok(Linear::Dense {
            weight_t: weight_t.to_dtype(act)?.to_device(device)?,
            bias: bias.to_dtype(act)?.to_device(device)?,
        })
    }

    /// Concatenates layers that read the same input into one wider layer
    /// (Q, K and V become one GEMM). All parts must be of the same kind.
    pub fn fuse(parts: &[(Tensor, Tensor)], dtype: WeightDType, device: &Device) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|(w, _)| w).collect();
        let biases: Vec<&Tensor> = parts.iter().map(|(_, b)| b).collect();
        Self::new(
            Tensor::cat(&weights, 0)?,
            Tensor::cat(&biases, 0)?,
            dtype,
            device,
        )
    }

    /// Applies the layer to `x` `[tokens, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Dense { weight_t, bias } => x.matmul(weight_t)?.broadcast_add(bias)?,
            Linear::Widened { weight_t, bias } => {
                let in_dtype = x.dtype();
                x.to_dtype(DType::F32)?
                    .matmul(&weight_t.to_dtype(DType::F32)?)?
                    .broadcast_add(bias)?
                    .to_dtype(in_dtype)?
            }
            Linear::Quantized { weight, bias } => {
                let in_dtype = x.dtype();
                weight
                    .forward(&x.to_dtype(DType::F32)?)?
                    .broadcast_add(bias)?
                    .to_dtype(in_dtype)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &Tensor, w: &Tensor, b: &Tensor) -> Vec<Vec<f32>> {
        x.matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(b)
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn every_dtype_approximates_the_f32_product() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (64, 96), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 64, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 96), &dev).unwrap();
        let want = reference(&x, &w, &b);
        for (dtype, tol) in [
            (WeightDType::F32, 1e-5),
            (WeightDType::F16, 2e-2),
            (WeightDType::Bf16, 6e-2),
            (WeightDType::Q8_0, 3e-2),
            (WeightDType::Q4_0, 2e-1),
        ] {
            let lin = Linear::new(w.clone(), b.clone(), dtype, &dev).unwrap();
            let xin = x.to_dtype(dtype.activation_dtype()).unwrap();
            let got: Vec<Vec<f32>> = lin
                .forward(&xin)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec2()
                .unwrap();
            for (gr, wr) in got.iter().zip(&want) {
                for (g, w) in gr.iter().zip(wr) {
                    assert!((g - w).abs() < tol, "{dtype}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn fused_layer_equals_parts() {
        let dev = Device::Cpu;
        let parts: Vec<(Tensor, Tensor)> = (0..3)
            .map(|_| {
                (
                    Tensor::randn(0f32, 0.05, (32, 64), &dev).unwrap(),
                    Tensor::randn(0f32, 0.1, 32, &dev).unwrap(),
                )
            })
            .collect();
        let x = Tensor::randn(0f32, 1.0, (4, 64), &dev).unwrap();
        let fused = Linear::fuse(&parts, WeightDType::F32, &dev)
            .unwrap()
            .forward(&x)
            .unwrap();
        for (i, (w, b)) in parts.iter().enumerate() {
            let one = Linear::new(w.clone(), b.clone(), WeightDType::F32, &dev)
                .unwrap()
                .forward(&x)
                .unwrap();
            let diff = (fused.narrow(1, i * 32, 32).unwrap() - one)
                .unwrap()
                .abs()
                .unwrap();
            let max: f32 = diff
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(max < 1e-6);
        }
    }
}
