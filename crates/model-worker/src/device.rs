//! Opening a [`DeviceSpec`] in the tensor library, and saying in one line
//! why it cannot be opened.

use candle_core::Device;
use ce_common::control::GpuDevice;
use ce_model_spec::DeviceSpec;

use crate::error::{EngineError, candle_message};

/// Opens the device. Fails with a clear message when the binary was built
/// without the back-end or the device is absent: the reason names the
/// device and, for the usual CUDA failures, what to check.
pub fn open(spec: DeviceSpec) -> Result<Device, EngineError> {
    let unavailable = |reason: String| EngineError::Device {
        device: spec.to_string(),
        reason,
    };
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if cfg!(feature = "cuda") {
                Device::new_cuda(n).map_err(|e| unavailable(cuda_cause(&candle_message(&e), n)))
            } else {
                Err(unavailable(
                    "this ce-model-worker was built without CUDA support; build the CUDA variant with scripts/build_cuda.sh and serve with target/cuda/ce-supervisor (or --worker-dir target/cuda)"
                        .into(),
                ))
            }
        }
        DeviceSpec::Metal(n) => {
            if cfg!(feature = "metal") {
                Device::new_metal(n).map_err(|e| unavailable(candle_message(&e)))
            } else {
                Err(unavailable(
                    "this ce-model-worker was built without Metal support; rebuild with --features metal"
                        .into(),
                ))
            }
        }
    }
}

/// The driver's error for opening CUDA device `ordinal`, with what to check
/// for the failures people meet (no driver, a container without the GPU,
/// an old driver); others as the driver put them.
fn cuda_cause(error: &str, ordinal: usize) -> String {
    let hint = if error.contains("CUDA_ERROR_STUB_LIBRARY") {
        "libcuda.so.1 is the toolkit's link-time stub, not a driver — is the NVIDIA driver installed?"
    } else if error.contains("CUDA_ERROR_NO_DEVICE") {
        "the driver sees no GPU — check CUDA_VISIBLE_DEVICES, and that the container was given the GPU (--gpus)"
    } else if error.contains("CUDA_ERROR_INVALID_DEVICE") {
        return format!(
            "there is no CUDA device {ordinal} (devices count from 0; see nvidia-smi -L): {error}"
        );
    } else if error.contains("CUDA_ERROR_INSUFFICIENT_DRIVER")
        || error.contains("CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE")
    {
        "the NVIDIA driver is older than CUDA 13 needs — update it (580 or later)"
    } else if error.contains("CUDA_ERROR_NOT_INITIALIZED") || error.contains("CUDA_ERROR_UNKNOWN") {
        "the driver failed to start — see nvidia-smi and the kernel log (dmesg)"
    } else {
        return error.to_string();
    };
    format!("{hint} ({error})")
}

/// The GPU behind `device`, as its driver names it; `None` on the CPU (and
/// on Metal, whose devices this build does not describe).
pub fn gpu_of(device: &Device) -> Option<GpuDevice> {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        let context = cuda.cuda_stream().context().clone();
        let (major, minor) = context.compute_capability().unwrap_or((0, 0));
        return Some(GpuDevice {
            name: context.name().unwrap_or_else(|e| format!("unnamed ({e})")),
            compute_capability: format!("{major}.{minor}"),
            total_memory_bytes: context.total_mem().map_or(0, |b| b as u64),
        });
    }
    let _ = device;
    None
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
        assert!(e.to_string().contains("scripts/build_cuda.sh"), "{e}");
        assert!(e.is_permanent(), "{e}");
    }

    #[test]
    fn the_usual_driver_failures_say_what_to_check() {
        let stub = cuda_cause(
            "DriverError(CUDA_ERROR_STUB_LIBRARY, \"CUDA driver is a stub library\")",
            0,
        );
        assert!(stub.contains("is the NVIDIA driver installed?"), "{stub}");
        assert!(stub.contains("CUDA_ERROR_STUB_LIBRARY"), "{stub}");
        let absent = cuda_cause(
            "DriverError(CUDA_ERROR_INVALID_DEVICE, \"invalid device ordinal\")",
            3,
        );
        assert!(absent.starts_with("there is no CUDA device 3"), "{absent}");
        let old = cuda_cause("DriverError(CUDA_ERROR_INSUFFICIENT_DRIVER, \"…\")", 0);
        assert!(old.contains("update it"), "{old}");
        assert!(cuda_cause("no GPU: CUDA_ERROR_NO_DEVICE", 0).contains("--gpus"));
        assert_eq!(cuda_cause("something else", 0), "something else");
    }

    #[test]
    fn the_cpu_is_no_gpu() {
        assert_eq!(gpu_of(&Device::Cpu), None);
    }
}
