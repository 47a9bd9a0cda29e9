//! # memsinks-study
//!
//! The study of the MemSinks paper as a library, under the `memsinks` command line:
//! - [`runner`]: work that runs on a backend chosen at run time ([`runner::BackendTask`],
//!   [`runner::Runner`]), and the training and unlearning tasks;
//! - [`evaluate`]: run-level evaluation in every MLP mode and its file, `eval.json`;
//! - [`reproduce`]: the whole study from one experiment file, each stage cached in its output
//!   directory ([`study_dir::StudyDir`] names its files);
//! - [`results`]: `results.json`, the typed record of every number, which [`report`] and
//!   [`plot`] turn into `report.md` and its plots without the runs.
//!
//! Guide (the study protocol; results: experiments/README.md): `docs/study.md` in the repository.

pub mod assemble;
pub mod bench;
mod charts;
pub mod config;
pub mod evaluate;
pub mod export;
mod findings;
pub mod plot;
mod posthoc_report;
mod relearning;
pub mod report;
pub mod reproduce;
pub mod results;
pub mod runner;
pub mod source_removal;
pub mod stages;
pub mod stats;
pub mod study_dir;
pub mod sweep;

pub use config::{load_experiment, PosthocEntry, StudyConfig};
pub use evaluate::{load_eval, EvalFile, EvalRequest};
pub use export::{ExportRequest, Exported};
pub use reproduce::{reproduce, reproduce_any, ReproduceRequest, Reproduced, DEFAULT_EXPERIMENT};
pub use results::Results;
pub use runner::{BackendName, BackendTask, DeviceRange, MethodTask, Runner, TrainTask};
pub use stages::Rerun;
pub use study_dir::StudyDir;
