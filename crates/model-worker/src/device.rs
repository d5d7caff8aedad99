//! Opening a [`DeviceSpec`] in the tensor library.

use candle_core::Device;
use ce_model_spec::DeviceSpec;

use crate::error::EngineError;

/// Opens the device. Fails with a clear message when the binary was built
/// without the back-end or the device is absent.
pub fn open(spec: DeviceSpec) -> Result<Device, EngineError> {
    let unavailable = |reason: String| EngineError::Device {
        device: spec.to_string(),
        reason,
    };
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if cfg!(feature = "cuda") {
                Device::new_cuda(n).map_err(|e| unavailable(e.to_string()))
            } else {
                Err(unavailable(
                    "this binary was built without CUDA support; rebuild with --features cuda"
                        .into(),
                ))
            }
        }
        DeviceSpec::Metal(n) => {
            if cfg!(feature = "metal") {
                Device::new_metal(n).map_err(|e| unavailable(e.to_string()))
            } else {
                Err(unavailable(
                    "this binary was built without Metal support; rebuild with --features metal"
                        .into(),
                ))
            }
        }
    }
}

/// The spec of an open device (for the checks written against specs).
pub fn spec_of(device: &Device) -> DeviceSpec {
    match device.location() {
        candle_core::DeviceLocation::Cpu => DeviceSpec::Cpu,
        candle_core::DeviceLocation::Cuda { gpu_id } => DeviceSpec::Cuda(gpu_id),
        candle_core::DeviceLocation::Metal { gpu_id } => DeviceSpec::Metal(gpu_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_says_how_to_fix() {
        let e = open(DeviceSpec::Cuda(0)).unwrap_err();
        assert!(e.to_string().contains("--features cuda"), "{e}");
    }
}
