//! # memsinks-data
//!
//! Corpora, tokenizers, splits with sequence IDs, token caches and batchers for MemSinks
//! experiments.

pub mod batch;

pub use batch::LmBatch;
