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
            probe::<Cuda>("cuda", &devices[0])?;
            match precision {
                "f16" => run_half::<Cuda<burn::tensor::f16>, T>("cuda", devices, task),
                "bf16" => run_half::<Cuda<burn::tensor::bf16>, T>("cuda", devices, task),
                _ => task.run::<Autodiff<Cuda>>(devices),
            }
        }
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            use burn::backend::{Autodiff, Wgpu};
            let devices: Vec<_> = if count <= 1 {
                vec![burn::backend::wgpu::WgpuDevice::DefaultDevice]
            } else {
                indices.map(burn::backend::wgpu::WgpuDevice::DiscreteGpu).collect()
            };
            probe::<Wgpu>("wgpu", &devices[0])?;
            match precision {
                "f16" => run_half::<Wgpu<burn::tensor::f16>, T>("wgpu", devices, task),
                // burn's `wgpu` backend compiles WGSL shaders, and WGSL has no bf16 type.
                "bf16" => bail!("wgpu has no bf16 (its WGSL shaders have no bf16 type); use --precision f16 or f32, or the cuda backend"),
                _ => task.run::<Autodiff<Wgpu>>(devices),
            }
        }
        _ => unreachable!("checked above"),
    }
}

/// Runs `task` in a half precision after checking that the adapter supports it, so that an
/// adapter without f16 (or bf16) arithmetic gives a clear error instead of a shader panic.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn run_half<G: burn::tensor::backend::Backend, T: BackendTask>(
    name: &str,
    devices: Vec<G::Device>,
    task: T,
) -> Result<T::Output> {
    let dtype = <G::FloatElem as burn::tensor::Element>::dtype();
    if !G::supports_dtype(&devices[0], dtype) {
        bail!("this {name} adapter does not support {dtype:?} arithmetic; use --precision f32");
    }
    task.run::<burn::backend::Autodiff<G>>(devices)
}

/// Creates one tensor on the device so that a missing GPU adapter or driver becomes one clear
/// error line here rather than a panic in the middle of training. The backends report a missing
/// adapter by panicking (on their own device thread too): the panic hook is silenced for the
/// probe so that neither their message nor a backtrace reaches the terminal.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn probe<G: burn::tensor::backend::Backend>(name: &str, device: &G::Device) -> Result<()> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::tensor::Tensor::<G, 1>::ones([4], device).sum().into_scalar();
    }));
    std::panic::set_hook(hook);
    if ok.is_err() {
        let hint = match name {
            "wgpu" => "install a Vulkan driver (on Debian: apt-get install mesa-vulkan-drivers libvulkan1) or pick another --backend",
            _ => "check the NVIDIA driver and CUDA installation (nvidia-smi) or pick another --backend",
        };
        bail!("no usable {name} device: {hint}");
    }
    Ok(())
}
