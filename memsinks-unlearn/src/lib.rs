//! # memsinks-unlearn
//!
//! Removing memorization and measuring it: dropping and folding away sinks, and the metrics every
//! method is judged by. (The post-hoc baselines, neuron localization and pruning and fine-tuning
//! unlearning, are not implemented yet.)

pub mod eval;
pub mod fold;
pub mod metrics;

pub use fold::fold_drop_sinks;
