//! Work that runs on a backend chosen at run time. Everything in this workspace is generic over
//! burn's backend; the command line names the backends compiled into it and implements
//! [`Runner`], and the study hands it [`BackendTask`]s.

use memsinks_model::TrainBackend;
use std::path::{Path, PathBuf};

use anyhow::Result;
use memsinks_train::config::Precision;
use memsinks_train::run::FinishedRun;
use memsinks_train::{train, ExperimentConfig, TrainSummary};
use memsinks_unlearn::{load_method, run_method, ForgetSet, MethodFile, MethodResult};

/// A piece of work that runs on any autodiff backend.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// Runs on backend `B` (autodiff over one of the compiled backends) with `devices` (one
    /// for the CPU backends; the first is the main device).
    fn run<B: TrainBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output>;
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
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        Self::ALL.into_iter().find(|b| b.name() == name).ok_or_else(|| {
            let all: Vec<&str> = Self::ALL.iter().map(|b| b.name()).collect();
            format!("unknown backend `{name}`; allowed: {}", all.join(", "))
        })
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

/// Runs [`BackendTask`]s on the backend chosen at run time.
pub trait Runner {
    /// The backend, as recorded in results.
    fn backend(&self) -> BackendName;
    /// Runs `task` in `precision` on `devices`.
    ///
    /// # Errors
    /// When the backend, precision or devices are unusable, or the task fails.
    fn run<T: BackendTask>(&self, precision: Precision, devices: DeviceRange, task: T) -> Result<T::Output>;
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
    /// ([`memsinks_train::parallel`]).
    ///
    /// # Errors
    /// As [`memsinks_train::train`].
    pub fn run_on(self, runner: &impl Runner, devices: Option<DeviceRange>) -> Result<TrainSummary> {
        let devices = devices.unwrap_or(DeviceRange { first: 0, count: self.cfg.train.devices });
        runner.run(self.cfg.train.precision, devices, self)
    }
}

impl BackendTask for TrainTask {
    type Output = TrainSummary;

    fn run<B: TrainBackend>(self, devices: Vec<B::Device>) -> Result<TrainSummary> {
        Ok(train::<B>(&self.cfg, &self.run_dir, self.data.as_deref(), self.resume, devices)?)
    }
}

/// One removal method of the registry run on one trained run.
pub struct MethodTask {
    /// The run directory.
    pub run: PathBuf,
    /// The method's name: the registry name, or a method file's stem.
    pub name: String,
    /// Its file (hyperparameters).
    pub file: MethodFile,
    /// What to forget.
    pub forget: ForgetSet,
}

impl MethodTask {
    /// `method` (a registry name or method file, with `--set` overrides) on the run in `run`.
    ///
    /// # Errors
    /// When the method is unknown or an override does not apply.
    pub fn new(run: &Path, method: &str, sets: &[String], forget: ForgetSet) -> Result<Self> {
        let (name, file) = load_method(method, sets)?;
        Ok(Self { run: run.to_path_buf(), name, file, forget })
    }
}

impl BackendTask for MethodTask {
    type Output = MethodResult;

    fn run<B: TrainBackend>(self, devices: Vec<B::Device>) -> Result<MethodResult> {
        let device = &devices[0];
        let run = FinishedRun::open(&self.run)?;
        let (model, _) = run.model::<B>(device)?;
        Ok(run_method(&self.name, &self.file, model, &run.corpus, self.forget, run.config.data.context, device)?)
    }
}
