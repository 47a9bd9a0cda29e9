//! # memsinks-train
//!
//! Trains the models the MemSinks study compares (`standard`, the paper's `dedup`, `dedup-fresh`,
//! `memsinks`, `gradient-masking`) through burn-train's learner: one code path chosen by the config's
//! `method`, AdamW with a warm-up + cosine schedule and global clipping, evaluation of the
//! repeated set with and without sinks, atomic checkpoints and exact resume.
//!
//! Guide (training and backends): `docs/training.md` in the repository.

pub mod amp;
pub mod checkpoint;
pub mod config;
pub mod learner;
pub mod loader;
pub mod metric_log;
pub mod optim;
pub mod ownership;
pub mod parallel;
pub mod run;
pub mod run_dir;
pub mod run_state;
pub mod runner;

use std::path::{Path, PathBuf};

pub use config::{ExperimentConfig, Method};
pub use optim::OptimConfig;
pub use parallel::{Parallel, StepLayout};
pub use run::{train, TrainSummary};
pub use run_dir::RunDir;
pub use runner::{BackendError, BackendName, BackendTask, DeviceRange, Runner, TrainTask};

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value out of range or inconsistent with another (the message names the
    /// keys and what would fit).
    #[error("{0}")]
    Invalid(String),
    /// The run directory cannot be used as asked; nothing was written to it.
    #[error("{} {problem}", dir.display())]
    RunDir {
        /// The run directory.
        dir: PathBuf,
        /// What it holds that stops the command.
        problem: RunDirProblem,
    },
    /// A file of a run is damaged or does not fit the run: what it says cannot be used.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A data error.
    #[error(transparent)]
    Data(#[from] memsinks_data::DataError),
    /// A model error.
    #[error(transparent)]
    Model(#[from] memsinks_model::ModelError),
    /// The backend chosen cannot run the training.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A configuration file or override that cannot be used.
    #[error(transparent)]
    Settings(#[from] memsinks_core::ConfigError),
    /// A file that could not be written (atomically, with its checksum) or a directory in use.
    #[error(transparent)]
    File(#[from] memsinks_core::FileError),
    /// An I/O error.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The loss became NaN or infinite.
    #[error("{0}")]
    NonFinite(String),
    /// Training stopped because a file of the run (a checkpoint, the metric log) could not be
    /// written; what is on disk is what the last complete round left.
    #[error("training stopped: {0}")]
    Stopped(String),
}

/// Why a run directory cannot be used by `train` (or by a command that reads a finished run).
#[derive(Debug)]
pub enum RunDirProblem {
    /// `--resume` of a missing or empty directory.
    NoRunToResume,
    /// A non-empty directory that is not a memsinks run.
    NotARun,
    /// Another configuration's run.
    OtherRun {
        /// The run ID found there.
        found: String,
        /// The run ID of this configuration.
        expected: String,
    },
    /// This run, already finished.
    Finished,
    /// This run, unfinished, without `--resume`.
    Unfinished,
    /// The corpus the run trained on is gone.
    CorpusMissing {
        /// Where it was.
        corpus: PathBuf,
    },
    /// `--data` names another corpus than the one the run trained on.
    CorpusElsewhere {
        /// The run's corpus.
        recorded: PathBuf,
        /// The one given.
        given: PathBuf,
    },
}

impl std::fmt::Display for RunDirProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunDirProblem::NoRunToResume => f.write_str("holds no run to resume"),
            RunDirProblem::NotARun => {
                f.write_str("is not empty and holds no memsinks run: choose a new or empty --out (nothing was written)")
            }
            RunDirProblem::OtherRun { found, expected } => {
                write!(f, "holds another run (id {found}, this config is {expected}): choose another --out")
            }
            RunDirProblem::Finished => f.write_str(
                "holds this run, finished (train.json): nothing to train; evaluate it or choose another --out",
            ),
            RunDirProblem::Unfinished => {
                f.write_str("already holds this run, unfinished: resume it with --resume, or choose another --out")
            }
            RunDirProblem::CorpusMissing { corpus } => write!(
                f,
                "trained on the corpus in {}, which is not there (moved or deleted): put it back, or train a new run",
                corpus.display()
            ),
            RunDirProblem::CorpusElsewhere { recorded, given } => write!(
                f,
                "trained on the corpus in {}, not {}: resume without --data",
                recorded.display(),
                given.display()
            ),
        }
    }
}

impl TrainError {
    /// `dir` cannot be used: `problem`.
    pub fn run_dir(dir: &Path, problem: RunDirProblem) -> Self {
        TrainError::RunDir { dir: dir.to_path_buf(), problem }
    }

    /// `path` is damaged or does not fit: `reason`.
    pub fn corrupt(path: &Path, reason: impl std::fmt::Display) -> Self {
        TrainError::Corrupt { path: path.to_path_buf(), reason: reason.to_string() }
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, cause: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), cause }
    }
}
