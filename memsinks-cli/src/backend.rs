//! Run-time choice among the backends compiled in (cargo features `flex`, `ndarray`, `wgpu`,
//! `cuda`). Everything below the CLI is generic; this is the one place that names backends.

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;

/// A piece of work that runs on any autodiff backend.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// Runs on backend `B` (autodiff over one of the compiled backends) with `devices` (one
    /// for the CPU backends; the first is the main device).
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output>;
}

/// Backend names, in order of preference for the default: the CPU backends first (flex trains
/// fastest on CPU here: see experiments/bench/RESULTS.md).
pub const BACKENDS: [&str; 4] = ["flex", "ndarray", "cuda", "wgpu"];

/// Whether `name` was compiled into this binary.
pub fn is_compiled(name: &str) -> bool {
    match name {
        "flex" => cfg!(feature = "flex"),
        "ndarray" => cfg!(feature = "ndarray"),
        "wgpu" => cfg!(feature = "wgpu"),
        "cuda" => cfg!(feature = "cuda"),
        _ => false,
    }
}

/// The backend used when `--backend` is not given: the first compiled one of [`BACKENDS`].
pub fn default_backend() -> &'static str {
    BACKENDS.into_iter().find(|b| is_compiled(b)).unwrap_or("flex")
}

/// Float precisions: `f32` everywhere, `f16` and `bf16` on the GPU backends.
pub const PRECISIONS: [&str; 3] = ["f32", "f16", "bf16"];

/// Runs `task` on the backend called `name` in `precision`, with `count` devices starting at
/// index `first` (GPU backends; the CPU backends have one device).
pub fn run_on<T: BackendTask>(name: &str, precision: &str, first: usize, count: usize, task: T) -> Result<T::Output> {
    if !PRECISIONS.contains(&precision) {
        bail!("unknown precision `{precision}`; allowed: {}", PRECISIONS.join(", "));
    }
    if precision != "f32" && matches!(name, "flex" | "ndarray") {
        bail!("precision {precision} needs a GPU backend (cuda or wgpu); the CPU backends train in f32");
    }
    if !BACKENDS.contains(&name) {
        bail!("unknown backend `{name}`; allowed: {}", BACKENDS.join(", "));
    }
    if !is_compiled(name) {
        bail!("backend `{name}` is not compiled into this binary; rebuild with `--features {name}`");
    }
    if count > 1 && matches!(name, "flex" | "ndarray") {
        bail!(
            "{count} devices requested: the CPU backends have one device; use cuda or wgpu for data-parallel training"
        );
    }
    // GPU device indices; unused when only the CPU backends are compiled in.
    #[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(unused_variables))]
    let indices = first..first + count.max(1);
    match name {
        #[cfg(feature = "flex")]
        "flex" => task.run::<burn::backend::Autodiff<burn::backend::Flex>>(vec![Default::default()]),
        #[cfg(feature = "ndarray")]
        "ndarray" => task.run::<burn::backend::Autodiff<burn::backend::NdArray>>(vec![Default::default()]),
        #[cfg(feature = "cuda")]
        "cuda" => {
            use burn::backend::{cuda::CudaDevice, Autodiff, Cuda};
            let devices: Vec<CudaDevice> = indices.map(CudaDevice::new).collect();
            match precision {
                "f16" => task.run::<Autodiff<Cuda<burn::tensor::f16>>>(devices),
                "bf16" => task.run::<Autodiff<Cuda<burn::tensor::bf16>>>(devices),
                _ => task.run::<Autodiff<Cuda>>(devices),
            }
        }
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            let devices: Vec<_> = if count <= 1 {
                vec![burn::backend::wgpu::WgpuDevice::DefaultDevice]
            } else {
                indices.map(burn::backend::wgpu::WgpuDevice::DiscreteGpu).collect()
            };
            probe::<burn::backend::Wgpu>(&devices[0])?;
            use burn::backend::{Autodiff, Wgpu};
            match precision {
                "f16" => task.run::<Autodiff<Wgpu<burn::tensor::f16>>>(devices),
                "bf16" => bail!("wgpu has no bf16 support; use f16 or f32"),
                _ => task.run::<Autodiff<Wgpu>>(devices),
            }
        }
        _ => unreachable!("checked above"),
    }
}

/// Creates one tensor on the device so that a missing GPU adapter becomes a clear error here
/// rather than an opaque panic in the middle of training.
#[cfg(feature = "wgpu")]
fn probe<B: burn::tensor::backend::Backend>(device: &B::Device) -> Result<()> {
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::tensor::Tensor::<B, 1>::ones([4], device).sum().into_scalar();
    }));
    if ok.is_err() {
        bail!("no usable wgpu adapter: install a Vulkan/GL driver (e.g. Mesa's llvmpipe) or pick another --backend");
    }
    Ok(())
}
