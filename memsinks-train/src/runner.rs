//! Work that runs on a backend chosen at run time. Everything in this workspace is generic over
//! burn's backend; the command line names the backends compiled into it and implements
//! [`Runner`], and training ([`TrainTask`]), unlearning and the study hand it [`BackendTask`]s.

use memsinks_model::TrainBackend;
use std::path::PathBuf;

use crate::config::Precision;
use crate::{train, ExperimentConfig, TrainError, TrainSummary};

/// A piece of work that runs on any autodiff backend.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// Its error, which also carries why the backend could not run it.
    type Error: From<BackendError>;
    /// Runs on backend `B` (autodiff over one of the compiled backends) with `devices` (one
    /// for the CPU backends; the first is the main device).
    ///
    /// # Errors
    /// The task's own.
    fn run<B: TrainBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output, Self::Error>;
}

/// Why a backend cannot run a task (before the task starts).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend is not a cargo feature of this binary.
    #[error("backend `{0}` is not compiled into this binary; rebuild with `--features {0}`")]
    NotCompiled(BackendName),
    /// The backend cannot compute in the requested precision.
    #[error("{backend} cannot train in precision {precision}: {why}")]
    Precision {
        /// The backend.
        backend: BackendName,
        /// The precision's name.
        precision: &'static str,
        /// Why, and what to use instead.
        why: &'static str,
    },
    /// More devices than the backend trains on.
    #[error("{count} devices requested: {why}")]
    Devices {
        /// Devices requested.
        count: usize,
        /// Why the backend trains on one, and what to use instead.
        why: &'static str,
    },
    /// No adapter or driver answered.
    #[error("no usable {backend} device: {hint}")]
    NoDevice {
        /// The backend.
        backend: BackendName,
        /// What to install or choose.
        hint: &'static str,
    },
    /// The device lacks arithmetic in the float type the precision computes in.
    #[error("this {backend} adapter does not support {dtype} arithmetic; use --precision f32")]
    DType {
        /// The backend.
        backend: BackendName,
        /// The float type, as burn names it.
        dtype: String,
    },
}

/// Devices a task runs on: `count` consecutive device indices from `first` (GPU backends; the
/// CPU backends have one device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRange {
    /// The first device index.
    pub first: usize,
    /// How many devices.
    pub count: usize,
}

impl DeviceRange {
    /// The first device alone.
    pub const ONE: DeviceRange = DeviceRange { first: 0, count: 1 };
}

/// The backends the toolkit runs on, each a cargo feature of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendName {
    /// burn's flex CPU backend with the toolkit's fused kernels (the default).
    Flex,
    /// burn's ndarray CPU backend.
    Ndarray,
    /// NVIDIA GPUs through CubeCL.
    Cuda,
    /// Vulkan, Metal or DirectX GPUs (and the software Vulkan adapter) through wgpu.
    Wgpu,
}

impl BackendName {
    /// Every backend, in order of preference for the default: the CPU backends first (flex trains
    /// fastest on CPU: see experiments/bench/RESULTS.md).
    pub const ALL: [BackendName; 4] = [BackendName::Flex, BackendName::Ndarray, BackendName::Cuda, BackendName::Wgpu];

    /// The name of the cargo feature and of `--backend`.
    pub fn name(self) -> &'static str {
        match self {
            BackendName::Flex => "flex",
            BackendName::Ndarray => "ndarray",
            BackendName::Cuda => "cuda",
            BackendName::Wgpu => "wgpu",
        }
    }

    /// The backend called `name`.
    ///
    /// # Errors
    /// An unknown name, with the allowed ones.
    pub fn parse(name: &str) -> Result<Self, UnknownBackend> {
        Self::ALL.into_iter().find(|b| b.name() == name).ok_or_else(|| UnknownBackend(name.to_string()))
    }

    /// Whether it computes on the CPU (one device, host memory).
    pub fn is_cpu(self) -> bool {
        matches!(self, BackendName::Flex | BackendName::Ndarray)
    }
}

impl std::fmt::Display for BackendName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is none of [`BackendName::ALL`].
#[derive(Debug)]
pub struct UnknownBackend(pub String);

impl std::fmt::Display for UnknownBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<&str> = BackendName::ALL.iter().map(|b| b.name()).collect();
        write!(f, "unknown backend `{}`; allowed: {}", self.0, all.join(", "))
    }
}

impl std::error::Error for UnknownBackend {}

/// Runs [`BackendTask`]s on the backend chosen at run time.
pub trait Runner {
    /// The backend, as recorded in results.
    fn backend(&self) -> BackendName;
    /// Runs `task` in `precision` on `devices`.
    ///
    /// # Errors
    /// When the backend, precision or devices are unusable ([`BackendError`]), or the task fails.
    fn run<T: BackendTask>(&self, precision: Precision, devices: DeviceRange, task: T) -> Result<T::Output, T::Error>;
}

/// Training one run.
pub struct TrainTask {
    /// The resolved experiment.
    pub cfg: ExperimentConfig,
    /// Run directory.
    pub run_dir: PathBuf,
    /// Prepared corpus to use or create (default: the run directory's `data/`).
    pub data: Option<PathBuf>,
    /// Continue from the newest complete checkpoint.
    pub resume: bool,
}

impl TrainTask {
    /// Trains on `runner` in the precision of the config, on `devices` (default: the config's
    /// `train.devices`, from device 0). Another device count keeps the config's global batch
    /// ([`crate::parallel`]).
    ///
    /// # Errors
    /// As [`train`], or the backend's.
    pub fn run_on(self, runner: &impl Runner, devices: Option<DeviceRange>) -> Result<TrainSummary, TrainError> {
        let devices = devices.unwrap_or(DeviceRange { first: 0, count: self.cfg.train.devices });
        runner.run(self.cfg.train.precision, devices, self)
    }
}

impl BackendTask for TrainTask {
    type Output = TrainSummary;
    type Error = TrainError;

    fn run<B: TrainBackend>(self, devices: Vec<B::Device>) -> Result<TrainSummary, TrainError> {
        train::<B>(&self.cfg, &self.run_dir, self.data.as_deref(), self.resume, devices)
    }
}
