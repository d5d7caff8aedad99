//! GPU memory per model worker, as the driver accounts it: NVML (the
//! library behind `nvidia-smi`, part of the driver) lists every process
//! with a CUDA context and the device memory it holds.
//!
//! NVML is opened at run time (`libnvidia-ml.so.1`), on the first scrape
//! that has a GPU replica to report: the supervisor links no NVIDIA library
//! and starts on any machine. Without the library (no driver) the figures
//! are absent, said once in the log. The device's total memory comes from
//! the worker itself ([`ce_common::control::GpuDevice`]), which knows which
//! device it opened; NVML is asked only "how much does this pid hold",
//! summed over devices, so device numbering (CUDA's order vs NVML's) does
//! not matter.
//!
//! NVML reports host pids: in a container without the host's pid
//! namespace, worker pids do not match and the figures stay absent.

use std::collections::HashMap;
use std::sync::OnceLock;

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;

/// The driver's per-process memory accounting, opened on first use.
#[derive(Default)]
pub struct GpuMemory {
    nvml: OnceLock<Option<Nvml>>,
}

impl std::fmt::Debug for GpuMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.nvml.get() {
            None => "not opened",
            Some(None) => "unavailable",
            Some(Some(_)) => "open",
        };
        f.debug_struct("GpuMemory").field("nvml", &state).finish()
    }
}

impl GpuMemory {
    /// Device memory held by each of `pids`, in bytes, over every GPU.
    /// A pid with no CUDA context (or one NVML cannot see) is absent.
    pub fn used_by(&self, pids: &[u32]) -> HashMap<u32, u64> {
        let mut used = HashMap::new();
        if pids.is_empty() {
            return used;
        }
        let Some(nvml) = self.nvml() else {
            return used;
        };
        let devices = nvml.device_count().unwrap_or(0);
        for index in 0..devices {
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            for process in device.running_compute_processes().unwrap_or_default() {
                if let (true, UsedGpuMemory::Used(bytes)) =
                    (pids.contains(&process.pid), process.used_gpu_memory)
                {
                    *used.entry(process.pid).or_default() += bytes;
                }
            }
        }
        used
    }

    fn nvml(&self) -> Option<&Nvml> {
        self.nvml
            .get_or_init(|| match Nvml::init() {
                Ok(nvml) => Some(nvml),
                Err(e) => {
                    tracing::warn!(
                        "GPU memory is not reported: NVML (libnvidia-ml.so.1, part of the NVIDIA driver) cannot be opened: {e}"
                    );
                    None
                }
            })
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_pids_asks_nothing() {
        let memory = GpuMemory::default();
        assert!(memory.used_by(&[]).is_empty());
        // NVML was not even opened.
        assert!(format!("{memory:?}").contains("not opened"));
    }

    #[test]
    fn a_machine_without_a_driver_reports_nothing_and_does_not_fail() {
        let memory = GpuMemory::default();
        let used = memory.used_by(&[std::process::id()]);
        // This test process holds no CUDA context, driver or not.
        assert!(used.is_empty(), "{used:?}");
    }
}
