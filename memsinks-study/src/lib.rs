//! # memsinks-study
//!
//! The study of the MemSinks paper as a library, under the `memsinks` command line:
//! - the study's own work on a backend chosen at run time (`memsinks_train::runner`): export and
//!   the benchmarks;
//! - run evals (`memsinks_unlearn::eval`, the `eval.json` of a run) as stages of the study;
//! - [`reproduce()`]: the whole study from one experiment file, each stage cached in its output
//!   directory ([`StudyDir`] names its files), and [`sweep`]s of variants;
//! - [`results`]: `results.json`, the typed record of every number, which [`report`] and
//!   [`plot`] turn into `report.md` and its plots without the runs.
//!
//! Guide (the study protocol; results: experiments/README.md): `docs/study.md` in the repository.

mod assemble;
pub mod bench;
mod charts;
pub mod config;
mod export;
mod findings;
pub mod plot;
mod posthoc_report;
mod relearning;
pub mod report;
mod reproduce;
pub mod results;
mod source_removal;
mod stages;
mod stats;
mod study_dir;
pub mod sweep;

pub use config::{load_experiment, PosthocEntry, StudyConfig};
pub use export::{ExportRequest, Exported};
pub use reproduce::{reproduce, reproduce_any, ReproduceRequest, Reproduced, DEFAULT_EXPERIMENT};
pub use results::Results;
pub use stages::{Rerun, StageKey, TrainedInputs};
pub use stats::{Estimate, Side};
pub use study_dir::StudyDir;
