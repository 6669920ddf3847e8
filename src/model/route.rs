//! Which implementation runs where: the one place that chooses between the hand-written CPU paths
//! (`src/cpu/`) and candle's ops, by device and dtype. Everything CPU-only is reached through a
//! [`Route`], so nothing CPU-only is ever called on a GPU tensor.
//!
//! | work | CPU, f32 | CUDA (or CPU in another dtype) |
//! |---|---|---|
//! | sampling | host decoder with its KV cache (`cpu::step`) | candle decoder with a KV cache |
//! | inference matmul | `cpu::matmul_t` | candle `matmul` |
//! | gradients | fused forward + backward (`GradPath::Fused`) | candle autograd (`GradPath::Autograd`) |
//! | AdamW | moments in host vectors | moments as tensors on the device |
//! | policy weights | f32 | bf16 on CUDA (the learner keeps f32 master weights and AdamW state) |
//!
//! The route is a function of a [`DeviceKind`] and a dtype, so it is unit-tested for every device
//! on a machine that has none but the CPU.

use candle_core::{DType, Device, Tensor};

use super::GradPath;

/// A device, as far as choosing a route goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Metal,
}

impl DeviceKind {
    pub fn of(device: &Device) -> Self {
        match device {
            Device::Cpu => DeviceKind::Cpu,
            Device::Cuda(_) => DeviceKind::Cuda,
            Device::Metal(_) => DeviceKind::Metal,
        }
    }
}

/// The implementations chosen for one (device, dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The hand-written CPU kernels (host sampling, `cpu::matmul_t`, host AdamW) may run.
    pub host: bool,
    /// How the learner computes gradients.
    pub grads: GradPath,
    /// The dtype the policy samples in (the learner's master weights stay f32).
    pub policy_dtype: DType,
}

impl Route {
    /// The route for tensors of `dtype` on a device of `kind`.
    pub fn new(kind: DeviceKind, dtype: DType) -> Self {
        let host = kind == DeviceKind::Cpu && dtype == DType::F32;
        Route {
            host,
            grads: if host {
                GradPath::Fused
            } else {
                GradPath::Autograd
            },
            policy_dtype: match kind {
                DeviceKind::Cuda => DType::BF16,
                DeviceKind::Cpu | DeviceKind::Metal => DType::F32,
            },
        }
    }

    /// The route for f32 training state on `device`.
    pub fn for_device(device: &Device) -> Self {
        Self::new(DeviceKind::of(device), DType::F32)
    }

    /// The route for a tensor as it is.
    pub fn of(t: &Tensor) -> Self {
        Self::new(DeviceKind::of(t.device()), t.dtype())
    }
}

/// Which device a command computes on: `RPT_DEVICE` = `auto` (the default: the first CUDA GPU in a
/// `cuda` build when one answers, else the CPU), `cpu`, `cuda` or `cuda:N` (that GPU, or an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        match s {
            "" | "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    format!("RPT_DEVICE={s:?}: expected `auto`, `cpu`, `cuda` or `cuda:N`")
                }),
        }
    }

    /// Opens the device. A GPU asked for by name that cannot be had is an error naming why, never a
    /// silent fall-back to the CPU.
    pub fn open(self) -> std::result::Result<Device, String> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(cuda(0).unwrap_or(Device::Cpu)),
            DeviceChoice::Cuda(n) => cuda(n).map_err(|why| format!("RPT_DEVICE=cuda:{n}: {why}")),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> std::result::Result<Device, String> {
    Device::new_cuda(n).map_err(|e| format!("no CUDA device {n} answers ({e})"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: usize) -> std::result::Result<Device, String> {
    Err(
        "this rpt was built without the `cuda` feature (`cargo build --release --features cuda`, \
         see the README's GPU section)"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices_parse_and_a_missing_gpu_is_an_error() {
        assert_eq!(DeviceChoice::parse("auto"), Ok(DeviceChoice::Auto));
        assert_eq!(DeviceChoice::parse(""), Ok(DeviceChoice::Auto));
        assert_eq!(DeviceChoice::parse("cpu"), Ok(DeviceChoice::Cpu));
        assert_eq!(DeviceChoice::parse("cuda"), Ok(DeviceChoice::Cuda(0)));
        assert_eq!(DeviceChoice::parse("cuda:3"), Ok(DeviceChoice::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA"] {
            let e = DeviceChoice::parse(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("cuda:N"), "{e}");
        }
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        #[cfg(not(feature = "cuda"))]
        {
            assert!(DeviceChoice::Auto.open().unwrap().is_cpu());
            let e = DeviceChoice::Cuda(0).open().unwrap_err();
            assert!(
                e.contains("RPT_DEVICE=cuda:0") && e.contains("--features cuda"),
                "{e}"
            );
        }
    }

    #[test]
    fn host_paths_only_for_f32_on_the_cpu() {
        let cpu = Route::new(DeviceKind::Cpu, DType::F32);
        assert!(cpu.host);
        assert_eq!(cpu.grads, GradPath::Fused);
        assert_eq!(cpu.policy_dtype, DType::F32);
        for dtype in [DType::BF16, DType::F16, DType::F64] {
            let r = Route::new(DeviceKind::Cpu, dtype);
            assert!(!r.host, "{dtype:?}");
            assert_eq!(r.grads, GradPath::Autograd);
        }
        for kind in [DeviceKind::Cuda, DeviceKind::Metal] {
            for dtype in [DType::F32, DType::BF16] {
                let r = Route::new(kind, dtype);
                assert!(!r.host, "{kind:?} {dtype:?}");
                assert_eq!(r.grads, GradPath::Autograd);
            }
        }
    }

    #[test]
    fn the_policy_samples_in_bf16_on_cuda_only() {
        assert_eq!(
            Route::new(DeviceKind::Cuda, DType::F32).policy_dtype,
            DType::BF16
        );
        assert_eq!(
            Route::new(DeviceKind::Cpu, DType::F32).policy_dtype,
            DType::F32
        );
        assert_eq!(
            Route::new(DeviceKind::Metal, DType::F32).policy_dtype,
            DType::F32
        );
    }

    #[test]
    fn tensors_route_by_their_device_and_dtype() {
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        assert!(Route::of(&t).host);
        assert!(!Route::of(&t.to_dtype(DType::BF16).unwrap()).host);
        assert_eq!(DeviceKind::of(&Device::Cpu), DeviceKind::Cpu);
    }
}
