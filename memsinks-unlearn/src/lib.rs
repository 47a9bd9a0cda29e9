//! # memsinks-unlearn
//!
//! Removing memorization and measuring it. By design: dropping a MemSinks model's sinks (all of
//! them, or one sequence's) and folding them away into a plain Llama model. After the fact, on a
//! standard model: fine-tuning unlearning (gradient ascent, gradient difference, NPO) and neuron
//! localization (activations, zero-out, integrated gradients, slimming, hard-concrete, random)
//! followed by pruning. Every method is a RON file of the [`registry`], judged by the same
//! [`probe`] (forget-set against validation loss) and [`metrics`], with the [`relearn`]ing test.
//!
//! Guide (evaluation, unlearning and metrics; adding a method: docs/extending.md): `docs/unlearning.md` in the repository.

pub mod eval;
pub mod finetune;
pub mod fold;
pub mod localize;
pub mod metrics;
pub mod probe;
pub mod registry;
pub mod relearn;
pub mod scorers;
mod task;

pub use eval::{load_eval, EvalFile, EvalRequest};
pub use fold::fold_drop_sinks;
pub use probe::{delta_at, delta_val_at, ForgetSet, Losses, SourceDocs, TradeoffPoint};
pub use registry::{builtin_names, load_method, run_method, MethodFile, MethodResult, MethodSpec};
pub use task::MethodTask;

/// Errors of the unlearning methods.
#[derive(Debug, thiserror::Error)]
pub enum UnlearnError {
    /// The corpus has no documents in a set the method needs.
    #[error("the corpus has no {0} documents: choose another --forget set or prepare a corpus with some")]
    EmptySet(String),
    /// A method that removes sinks was given a model without them.
    #[error("this method drops sinks, but the model has none: give it a MemSinks run")]
    NoSinks,
    /// A method name, file or forget set that cannot be used (the message says what would).
    #[error("{0}")]
    Method(String),
    /// A method file that cannot be read, or an override that does not apply.
    #[error(transparent)]
    Settings(#[from] memsinks_core::ConfigError),
    /// A corpus that cannot serve the forget set (no source keys, an unknown source).
    #[error(transparent)]
    Data(#[from] memsinks_data::DataError),
    /// A file that could not be written (atomically, with its checksum), or one of a newer format.
    #[error(transparent)]
    File(#[from] memsinks_core::FileError),
    /// A file that is missing, damaged or not what it should be.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A method whose losses became NaN or infinite; nothing was recorded.
    #[error("{method} diverged: {what} is not finite; lower its learning rate or step count (nothing was recorded)")]
    Diverged {
        /// The method.
        method: String,
        /// The first non-finite value.
        what: String,
    },
    /// The trained run cannot be read, or the backend cannot run the method.
    #[error(transparent)]
    Run(#[from] memsinks_train::TrainError),
}

impl UnlearnError {
    /// `path` is missing, damaged or not what it should be: `reason`.
    pub fn corrupt(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        UnlearnError::Corrupt { path: path.to_path_buf(), reason: reason.to_string() }
    }
}

impl From<memsinks_train::BackendError> for UnlearnError {
    fn from(e: memsinks_train::BackendError) -> Self {
        UnlearnError::Run(e.into())
    }
}
