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
pub mod metrics;
pub mod optim;
pub mod ownership;
pub mod parallel;
pub mod run;
pub mod run_dir;
pub mod run_state;

use std::path::{Path, PathBuf};

pub use config::{ExperimentConfig, Method};
pub use optim::OptimConfig;
pub use parallel::{Parallel, StepLayout};
pub use run::{train, TrainSummary};
pub use run_dir::RunDir;

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A bad configuration.
    #[error("{0}")]
    Config(String),
    /// A data error.
    #[error(transparent)]
    Data(#[from] memsinks_data::DataError),
    /// A model error.
    #[error(transparent)]
    Model(#[from] memsinks_model::ModelError),
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

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, cause: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), cause }
    }
}
