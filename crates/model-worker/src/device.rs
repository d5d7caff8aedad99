//! Device selection: `cpu`, `cuda:N`, `metal:N`.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::EngineError;

/// Where a replica runs, as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal; needs the `cuda` feature.
    Cuda(usize),
    /// An Apple GPU by ordinal; needs the `metal` feature.
    Metal(usize),
}

impl DeviceSpec {
    /// Opens the device. Fails with a clear message when the binary was built
    /// without the back-end or the device is absent.
    pub fn open(self) -> Result<Device, EngineError> {
        let unavailable = |reason: String| EngineError::Device {
            device: self.to_string(),
            reason,
        };
        match self {
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
                        "this binary was built without Metal support; rebuild with --features metal".into(),
                    ))
                }
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || EngineError::Device {
            device: s.to_string(),
            reason: "expected cpu, cuda[:N] or metal[:N]".into(),
        };
        let lower = s.trim().to_ascii_lowercase();
        let (kind, ordinal) = match lower.split_once(':') {
            Some((k, n)) => (k.to_string(), n.parse::<usize>().map_err(|_| bad())?),
            None => (lower.clone(), 0),
        };
        match kind.as_str() {
            "cpu" if !lower.contains(':') => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(ordinal)),
            "metal" | "mps" => Ok(DeviceSpec::Metal(ordinal)),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(
            "metal:0".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Metal(0)
        );
        assert!("tpu:0".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("cpu:1".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_says_how_to_fix() {
        let e = DeviceSpec::Cuda(0).open().unwrap_err();
        assert!(e.to_string().contains("--features cuda"), "{e}");
    }
}
