//! # memsinks-train
//!
//! Training of MemSinks, standard, dedup and gradient-masking models.

pub mod loss;
pub mod optim;

pub use loss::{lm_loss, token_nll};
pub use optim::OptimConfig;
