//! # memsinks-unlearn
//!
//! Removing memorization and measuring it: dropping and folding away sinks, fine-tuning
//! unlearning baselines (gradient ascent, gradient difference, NPO), and the metrics every method
//! is judged by. (Neuron localization and pruning, and the relearning test, are not implemented
//! yet.)

pub mod eval;
pub mod finetune;
pub mod fold;
pub mod localize;
pub mod metrics;

pub use fold::fold_drop_sinks;
