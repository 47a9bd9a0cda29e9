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

pub use fold::fold_drop_sinks;
pub use probe::{delta_at, delta_val_at, ForgetSet, Losses, SourceDocs, TradeoffPoint};
pub use registry::{builtin_names, load_method, run_method, MethodFile, MethodResult, MethodSpec};

/// Errors of the unlearning methods.
#[derive(Debug, thiserror::Error)]
pub enum UnlearnError {
    /// The corpus has no documents in a set the method needs.
    #[error("the corpus has no {0} documents: choose another --forget set or prepare a corpus with some")]
    EmptySet(String),
    /// A method that removes sinks was given a model without them.
    #[error("this method drops sinks, but the model has none: give it a MemSinks run")]
    NoSinks,
    /// A method name, file or override that cannot be used.
    #[error("{0}")]
    Method(String),
}
