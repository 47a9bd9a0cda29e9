//! # memsinks-data
//!
//! Everything the experiments feed on: streaming sources (TinyStories text, JSON/JSONL,
//! SlimPajama `.jsonl.zst` shards, a seeded synthetic story generator), Hugging Face tokenizers,
//! the experiment corpus (repeated / canary / unique / validation splits with sequence IDs, a
//! manifest and a repetition schedule), memory-mapped token caches, and batchers for burn.
//!
//! Guide (data): `docs/data.md` in the repository.

pub mod batcher;
pub mod cache;
pub mod corpus;
mod corpus_dir;
pub mod data_config;
pub mod download;
pub mod fingerprint;
mod ids;
mod near_dup;
mod prepare;
pub mod rng;
mod schedules;
pub mod source;
pub mod synthetic;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use batcher::{pass_order, Batcher, Consumed, Cursor, CursorError, DocRows, HostBatch};
pub use cache::TokenCache;
pub use corpus::{prepare, DataConfig, DocIds, Half, Manifest, PreparedCorpus, Split};
pub use corpus_dir::holds_corpus;
pub use fingerprint::{CorpusFingerprint, Verify};
/// The batch type lives beside the model it feeds.
pub use memsinks_model::LmBatch;
pub use schedules::ScheduleKind;
pub use tokenizer::TextTokenizer;

/// Errors of the data crate. Each names the file concerned and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O error on a file.
    #[error("{path}: {cause}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error (shown in the message, not chained: it would print twice).
        cause: std::io::Error,
    },
    /// Bytes that are not UTF-8.
    #[error("{path}: invalid UTF-8 at byte offset {offset} (set `invalid_utf8: Skip` to skip such documents)")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid byte.
        offset: u64,
    },
    /// A file whose content is not in the expected format.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A source with no (or too few) documents.
    #[error("{path}: {what}")]
    Empty {
        /// The source.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// A configuration value out of range or inconsistent with the data (the message names the
    /// key and what would fit).
    #[error("{0}")]
    Invalid(String),
    /// A configuration file or `--set` override that cannot be read or applied.
    #[error(transparent)]
    Settings(memsinks_core::ConfigError),
    /// A configuration the model refuses.
    #[error(transparent)]
    Model(memsinks_model::ModelError),
    /// A directory holds another corpus than the one asked for, or one changed since a run
    /// trained on it; it is never rebuilt in place.
    #[error("{} {reason}", dir.display())]
    CorpusMismatch {
        /// The corpus directory.
        dir: PathBuf,
        /// What differs, and what to do.
        reason: String,
    },
    /// Two documents (or two sources) hash to the same ID.
    #[error("{kind} ID collision: {first} and {second} both hash to {id}; change data.seed or drop one")]
    IdCollision {
        /// "sequence" or "source".
        kind: &'static str,
        /// The first document or source.
        first: String,
        /// The second.
        second: String,
        /// The shared ID.
        id: i64,
    },
    /// A tokenizer failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A directory lock held by another process (or another file failure of the foundation).
    #[error(transparent)]
    File(memsinks_core::FileError),
    /// A network failure while downloading.
    #[error("download of {url}: {message}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.to_path_buf(), cause: source }
    }
}

/// The file helpers of `memsinks_core::files` (atomic writes, locks, digests) report in this
/// crate's terms: an I/O error keeps its file; a held lock stays what it is.
impl From<memsinks_core::FileError> for DataError {
    fn from(e: memsinks_core::FileError) -> Self {
        match e {
            memsinks_core::FileError::Io { path, cause } => DataError::Io { path, cause },
            other => DataError::File(other),
        }
    }
}

/// A configuration that cannot be read or overridden, in this crate's terms.
impl From<memsinks_core::ConfigError> for DataError {
    fn from(e: memsinks_core::ConfigError) -> Self {
        match e {
            memsinks_core::ConfigError::Io { path, cause } => DataError::Io { path, cause },
            memsinks_core::ConfigError::Format { path, message } => DataError::Format { path, message },
            other => DataError::Settings(other),
        }
    }
}

/// Model errors met while preparing data (a configuration the model refuses, a file of its own).
impl From<memsinks_model::ModelError> for DataError {
    fn from(e: memsinks_model::ModelError) -> Self {
        match e {
            memsinks_model::ModelError::Io { path, cause } => DataError::Io { path, cause },
            memsinks_model::ModelError::File(f) => f.into(),
            other => DataError::Model(other),
        }
    }
}
