//! # memsinks-model
//!
//! Backend-generic burn modules for Memorization Sinks (Ghosal, Maini, Raghunathan, ICML 2025):
//! a Llama-style decoder ([`MemSinkLm`]) whose SwiGLU MLPs split their hidden units into general
//! neurons (always on) and a sink pool, of which each sequence ID owns a fixed, hashed subset
//! ([`mask`]). [`MlpMode`] selects how the sinks are used: training, all on, dropped, a sequence's
//! own subset, or with some sequences' subsets excluded.
//!
//! Nothing here names a concrete backend: every module is generic over `B: Backend`.
//!
//! Guide (the method and the model): `docs/method.md` in the repository.

pub mod batch;
pub mod config;
pub mod generate;
pub mod io;
pub mod kernels;
pub mod layout;
pub mod loss;
pub mod mask;
pub mod memory;
pub mod mlp;
pub mod model;

pub use batch::LmBatch;
pub use config::{ModelConfig, PRESET_NAMES};
pub use kernels::{AdamWStep, Kernels, TrainBackend};
pub use layout::SeqLayout;
pub use mask::{MaskScheme, SinkPool};
pub use memsinks_core::named::Named;
pub use mlp::{mask_build_time, DropScale, HiddenMask, MemSinkMlp, MlpMode, SinkGeometry};
pub use model::{Attention, Block, HiddenHook, MemSinkLm, Rope};

/// Errors of the model crate: bad configurations and unreadable or mismatched weight files.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value is out of range or inconsistent (the message names the key).
    #[error("{0}")]
    Invalid(String),
    /// A preset name that is none of [`PRESET_NAMES`].
    #[error("unknown preset `{0}`; allowed: {list}", list = PRESET_NAMES.join(", "))]
    UnknownPreset(String),
    /// A model config file that is not RON of a [`ModelConfig`].
    #[error("invalid model config: {0}")]
    Format(String),
    /// The work needs more memory than the host or device has.
    #[error(
        "{what} needs about {needed} {place}; {available} available ({limit}): {hint}",
        needed = memory::gib(*needed),
        available = memory::gib(*available)
    )]
    OutOfMemory {
        /// The work, e.g. "one micro-batch of 16 rows x 128 tokens".
        what: String,
        /// Where: "of memory" on the host, "on the device".
        place: &'static str,
        /// What bounds the available memory.
        limit: &'static str,
        /// Bytes needed (estimated).
        needed: u64,
        /// Bytes available.
        available: u64,
        /// What would fit.
        hint: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file concerned.
        path: std::path::PathBuf,
        /// The underlying error (shown in the message, not chained: it would print twice).
        cause: std::io::Error,
    },
    /// A weight file is corrupt or does not fit the configuration.
    #[error("{path}: {message}")]
    Weights {
        /// The file concerned.
        path: std::path::PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Writing a file (atomically, with its checksum) failed.
    #[error(transparent)]
    File(#[from] memsinks_core::FileError),
}

pub use memsinks_core::catch_library_panic;
