//! Run-time choice among the backends compiled in (cargo features `flex`, `ndarray`, `wgpu`,
//! `cuda`). Everything below the CLI is generic; this is the one place that names backends.

use memsinks_train::config::Precision;
use memsinks_train::{BackendError, BackendName, BackendTask, DeviceRange, Runner};

/// Whether `backend` was compiled into this binary.
pub fn is_compiled(backend: BackendName) -> bool {
    match backend {
        BackendName::Flex => cfg!(feature = "flex"),
        BackendName::Ndarray => cfg!(feature = "ndarray"),
        BackendName::Wgpu => cfg!(feature = "wgpu"),
        BackendName::Cuda => cfg!(feature = "cuda"),
    }
}

/// The backend used when `--backend` is not given: the first compiled one of
/// [`BackendName::ALL`].
pub fn default_backend() -> BackendName {
    BackendName::ALL.into_iter().find(|&b| is_compiled(b)).unwrap_or(BackendName::Flex)
}

/// The backend a command runs on: `--backend NAME`, or the default.
#[derive(Clone, Copy, Debug)]
pub struct BackendChoice {
    backend: BackendName,
}

impl BackendChoice {
    /// `backend`, or the default one.
    pub fn chosen(backend: Option<BackendName>) -> Self {
        Self { backend: backend.unwrap_or_else(default_backend) }
    }
}

impl Runner for BackendChoice {
    fn backend(&self) -> BackendName {
        self.backend
    }

    fn run<T: BackendTask>(&self, precision: Precision, devices: DeviceRange, task: T) -> Result<T::Output, T::Error> {
        run_on(self.backend, precision, devices, task)
    }
}

/// Why wgpu trains on one device only. burn 0.21 moves a tensor to another device through
/// cubecl's server-to-server path (burn-cubecl's `CubeTensor::to_client` calls
/// `ComputeClient::to_client_tensor` whatever the runtime), and the wgpu server implements none of
/// it: `comm_init`, `send` and `recv` keep cubecl-runtime 0.10's `unimplemented!()` defaults
/// (`SERVER_COMM_ENABLED = false` in cubecl-wgpu, a flag that path does not read). The first copy
/// of the model to a second device panics on that device's thread, and burn-train's multi-device
/// step then waits for it forever. cuda implements the path.
#[cfg(feature = "wgpu")]
pub const WGPU_MULTI_DEVICE: &str = "wgpu trains on one device: burn 0.21 copies tensors between wgpu devices \
    through a server-to-server transfer that the wgpu runtime does not implement (the first copy panics \
    and training hangs); use --devices 1, or cuda for data-parallel training";

/// Why the CPU backends train on one device.
const CPU_ONE_DEVICE: &str = "the CPU backends have one device; use cuda for data-parallel training";

/// Runs `task` on `backend` in `precision` on `devices` (GPU backends; the CPU backends have one
/// device).
fn run_on<T: BackendTask>(
    backend: BackendName,
    precision: Precision,
    devices: DeviceRange,
    task: T,
) -> Result<T::Output, T::Error> {
    let DeviceRange { first, count } = devices;
    if precision != Precision::F32 && backend == BackendName::Ndarray {
        return Err(BackendError::Precision {
            backend,
            precision: precision.name(),
            why: "mixed precision needs half-precision tensors, which ndarray lacks; use flex, cuda or wgpu, or f32",
        }
        .into());
    }
    if !is_compiled(backend) {
        return Err(BackendError::NotCompiled(backend).into());
    }
    if count > 1 && backend.is_cpu() {
        return Err(BackendError::Devices { count, why: CPU_ONE_DEVICE }.into());
    }
    // Device indices of cuda (wgpu trains on one device: WGPU_MULTI_DEVICE).
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    let indices = first..first + count.max(1);
    match backend {
        #[cfg(feature = "flex")]
        BackendName::Flex => task.run::<burn::backend::Autodiff<burn::backend::Flex>>(vec![Default::default()]),
        #[cfg(feature = "ndarray")]
        BackendName::Ndarray => task.run::<burn::backend::Autodiff<burn::backend::NdArray>>(vec![Default::default()]),
        // Every precision runs on the f32 backend: f16 and bf16 are mixed precision (f32 weights
        // and optimizer state, half-precision compute; memsinks_train::amp).
        #[cfg(feature = "cuda")]
        BackendName::Cuda => {
            use burn::backend::{cuda::CudaDevice, Cuda};
            let devices: Vec<CudaDevice> = indices.map(CudaDevice::new).collect();
            run_checked::<Cuda, T>(backend, precision, devices, task)
        }
        #[cfg(feature = "wgpu")]
        BackendName::Wgpu => {
            use burn::backend::{wgpu::WgpuDevice, Wgpu};
            if precision == Precision::Bf16 {
                // burn's `wgpu` backend compiles WGSL shaders, and WGSL has no bf16 type.
                return Err(BackendError::Precision {
                    backend,
                    precision: precision.name(),
                    why: "its WGSL shaders have no bf16 type; use --precision f16 or f32, or the cuda backend",
                }
                .into());
            }
            if count > 1 {
                return Err(BackendError::Devices { count, why: WGPU_MULTI_DEVICE }.into());
            }
            let device = if first == 0 { WgpuDevice::DefaultDevice } else { WgpuDevice::DiscreteGpu(first) };
            run_checked::<Wgpu, T>(backend, precision, vec![device], task)
        }
        #[allow(unreachable_patterns)]
        _ => unreachable!("checked above: {backend} is compiled in"),
    }
}

/// A GPU backend the toolkit trains on. With the `ddp` feature, burn's autodiff asks every backend
/// it wraps for collective operations (`DistributedBackend`), which cubecl's backends have and the
/// CPU backends lack: a `ddp` binary is GPU-only (checked at compile time below).
#[cfg(feature = "ddp")]
trait GpuKernels: memsinks_model::Kernels + burn::tensor::backend::distributed::DistributedBackend {}
#[cfg(feature = "ddp")]
impl<G: memsinks_model::Kernels + burn::tensor::backend::distributed::DistributedBackend> GpuKernels for G {}
#[cfg(all(not(feature = "ddp"), any(feature = "cuda", feature = "wgpu")))]
trait GpuKernels: memsinks_model::Kernels {}
#[cfg(all(not(feature = "ddp"), any(feature = "cuda", feature = "wgpu")))]
impl<G: memsinks_model::Kernels> GpuKernels for G {}

#[cfg(all(feature = "ddp", any(feature = "flex", feature = "ndarray")))]
compile_error!(
    "the `ddp` feature builds a GPU-only binary: burn's `distributed` feature makes autodiff require collective \
     operations, which the CPU backends lack; build with `--no-default-features --features ddp`"
);

/// Runs `task` on GPU backend `G` after checking, without creating a tensor, that the device
/// answers and supports the float type `precision` computes in: a missing adapter or driver, or
/// an adapter without f16 (bf16) arithmetic, becomes one clear error line here instead of a
/// panic mid-training.
///
/// The probe creates no tensor: burn 0.21 fixes a device's default float type at its first
/// tensor, so nothing may be allocated before the task chooses its backend.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn run_checked<G: GpuKernels, T: BackendTask>(
    backend: BackendName,
    precision: Precision,
    devices: Vec<G::Device>,
    task: T,
) -> Result<T::Output, T::Error> {
    let dtype: burn::tensor::DType = match precision.compute_dtype() {
        Some(half) => half.into(),
        None => <G::FloatElem as burn::tensor::Element>::dtype(),
    };
    // The backends report a missing adapter by panicking (on their own device thread too): the
    // panic hook is silenced for the probe so that neither their message nor a backtrace shows.
    match memsinks_core::catch_library_panic(|| G::supports_dtype(&devices[0], dtype)).ok_or(()) {
        Err(()) => {
            let hint = match backend {
                BackendName::Wgpu => "install a Vulkan driver (on Debian: apt-get install mesa-vulkan-drivers libvulkan1) or pick another --backend",
                _ => "check the NVIDIA driver and CUDA installation (nvidia-smi) or pick another --backend",
            };
            Err(BackendError::NoDevice { backend, hint }.into())
        }
        Ok(false) => Err(BackendError::DType { backend, dtype: format!("{dtype:?}") }.into()),
        Ok(true) => task.run::<burn::backend::Autodiff<G>>(devices),
    }
}
