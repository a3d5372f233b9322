//! Which device the tensors live on: `--device auto|cpu|cuda[:N]|metal`.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use candle_core::Device;

/// A device as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA if built in and a GPU answers, else Metal likewise, else CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
    /// The default Metal GPU.
    Metal,
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "metal" => Ok(Self::Metal),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?}: use auto, cpu, cuda, cuda:N or metal"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal => write!(f, "metal"),
        }
    }
}

/// Makes glibc's allocator keep freed memory for reuse instead of handing each large
/// buffer back to the kernel. A forward pass allocates and frees tens of megabytes per op;
/// by default each such buffer is a fresh `mmap`, so the kernel zero-fills every page on
/// first touch, which measured 7% of bert-base's time. Other
/// allocators already reuse memory; there this does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any worker thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // One heap for every thread: the model runs on pool workers, and a heap per
        // worker kept its own high-water mark (45 MB more peak memory on bert-base).
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Opens the device; asking for one this build or machine lacks is an error that says
/// how to get it, never a silent fall back to the CPU.
pub fn open(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                bail!("this build has no CUDA support; rebuild with --features cuda (see README, \"GPU builds\") or use --device cpu");
            }
            Device::new_cuda(n).map_err(|e| {
                anyhow::anyhow!(
                    "cannot open CUDA device {n}: {e}\nCheck that the NVIDIA driver is loaded and `nvidia-smi` lists GPU {n}, or use --device cpu"
                )
            })
        }
        DeviceSpec::Metal => {
            if !cfg!(feature = "metal") {
                bail!("this build has no Metal support; rebuild with --features metal on macOS or use --device cpu");
            }
            Device::new_metal(0).map_err(|e| anyhow::anyhow!("cannot open the Metal device: {e}"))
        }
        DeviceSpec::Auto => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            if cfg!(feature = "metal") && candle_core::utils::metal_is_available() {
                if let Ok(d) = Device::new_metal(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_rejects_others() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("gpu".parse::<DeviceSpec>().unwrap_err().contains("gpu"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let err = open(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
