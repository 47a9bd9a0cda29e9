//! One removal method run on one trained run, as a [`BackendTask`] for the backend chosen at run
//! time (`memsinks unlearn`, and every removal of the study).

use std::path::{Path, PathBuf};

use memsinks_model::TrainBackend;
use memsinks_train::run::FinishedRun;
use memsinks_train::BackendTask;

use crate::{load_method, run_method, ForgetSet, MethodFile, MethodResult, UnlearnError};

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
    pub fn new(run: &Path, method: &str, sets: &[String], forget: ForgetSet) -> Result<Self, UnlearnError> {
        let (name, file) = load_method(method, sets)?;
        Ok(Self { run: run.to_path_buf(), name, file, forget })
    }
}

impl BackendTask for MethodTask {
    type Output = MethodResult;
    type Error = UnlearnError;

    fn run<B: TrainBackend>(self, devices: Vec<B::Device>) -> Result<MethodResult, UnlearnError> {
        let device = &devices[0];
        let run = FinishedRun::open(&self.run)?;
        let (model, _) = run.model::<B>(device)?;
        run_method(&self.name, &self.file, model, &run.corpus, self.forget, run.config.data.context, device)
    }
}
