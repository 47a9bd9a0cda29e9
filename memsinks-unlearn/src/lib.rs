//! # memsinks-unlearn
//!
//! Removing memorization and measuring it: dropping and folding away sinks, fine-tuning
//! unlearning baselines (gradient ascent, gradient difference, NPO), neuron localization (by
//! activations, or at random) with pruning, and the metrics every method is judged by. (The
//! Zero-Out, Integrated-Gradients, Slimming and HardConcrete scorers and the relearning test are
//! not implemented yet.)

pub mod eval;
pub mod finetune;
pub mod fold;
pub mod localize;
pub mod metrics;

pub use fold::fold_drop_sinks;

/// Errors of the unlearning baselines.
#[derive(Debug, thiserror::Error)]
pub enum UnlearnError {
    /// The corpus has no documents in a set the method needs.
    #[error("the corpus has no {0} documents: choose another --forget set or prepare a corpus with some")]
    EmptySet(&'static str),
}
