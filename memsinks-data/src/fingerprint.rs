//! The identity of a prepared corpus, recorded by every run trained on it and checked by every
//! command that opens the run again, so a swapped, rebuilt or edited corpus is an error that
//! names what changed, never a silently different result.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::corpus::{MANIFEST_FILE, TOKENIZER_FILE};
use crate::data_config::SourceConfig;
use crate::source::shard_files;
use crate::{DataError, PreparedCorpus};

/// SHA-256 digests of the files that define a prepared corpus. The manifest lists every listed
/// document's ID, split and length and the unique documents' counts; the cache's `cache.json`
/// records its shards' sizes and the key it was built with (its shards are size-checked when
/// opened); the tokenizer maps text to IDs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusFingerprint {
    /// Hash of the data configuration.
    pub config_hash: String,
    /// SHA-256 of `manifest.json`.
    pub manifest_sha256: String,
    /// SHA-256 of `tokenizer.json`.
    pub tokenizer_sha256: String,
    /// SHA-256 of `cache/cache.json`.
    pub cache_sha256: String,
}

impl CorpusFingerprint {
    /// Reads the fingerprint of the corpus in `dir`.
    ///
    /// # Errors
    /// When one of its files cannot be read.
    pub fn of_dir(dir: &Path, config_hash: &str) -> Result<Self, DataError> {
        let sha = |p: &Path| -> Result<String, DataError> { Ok(memsinks_model::io::file_sha256(p)?) };
        Ok(Self {
            config_hash: config_hash.to_string(),
            manifest_sha256: sha(&dir.join(MANIFEST_FILE))?,
            tokenizer_sha256: sha(&dir.join(TOKENIZER_FILE))?,
            cache_sha256: sha(&dir.join("cache").join("cache.json"))?,
        })
    }

    /// Checks that `corpus` is the corpus this fingerprint was taken of; the error names each
    /// file that changed and what to do.
    ///
    /// # Errors
    /// When any digest differs.
    pub fn check(&self, corpus: &PreparedCorpus, user: &str) -> Result<(), DataError> {
        let found = Self::of_dir(&corpus.dir, &corpus.manifest.config_hash)?;
        let mut changed = Vec::new();
        if found.config_hash != self.config_hash {
            changed.push("its data configuration");
        }
        if found.manifest_sha256 != self.manifest_sha256 {
            changed.push(MANIFEST_FILE);
        }
        if found.tokenizer_sha256 != self.tokenizer_sha256 {
            changed.push(TOKENIZER_FILE);
        }
        if found.cache_sha256 != self.cache_sha256 {
            changed.push("cache/cache.json");
        }
        if changed.is_empty() {
            return Ok(());
        }
        Err(DataError::Config(format!(
            "the corpus in {} is not the one {user} was trained on: {} changed since; its numbers would \
             be silently wrong. Point the run at its own corpus again, or train a new run on this one",
            corpus.dir.display(),
            changed.join(", ")
        )))
    }
}

/// Fingerprint of a source's content identity: file paths, sizes and modification times (or the
/// generator's parameters), so a changed file invalidates caches without rereading it.
pub(crate) fn source_fingerprint(source: &SourceConfig) -> Result<String, DataError> {
    let mut h = Sha256::new();
    let stamp = |h: &mut Sha256, p: &Path| -> Result<(), DataError> {
        let meta = std::fs::metadata(p).map_err(|e| DataError::io(p, e))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        h.update(format!("{}|{}|{:?};", p.display(), meta.len(), mtime).as_bytes());
        Ok(())
    };
    match source {
        SourceConfig::Synthetic { .. } => h.update(ron::to_string(source).expect("serialises").as_bytes()),
        SourceConfig::TinyStories { path } | SourceConfig::Json { path, .. } => stamp(&mut h, path)?,
        SourceConfig::SlimPajama { dir, .. } => {
            for f in shard_files(dir)? {
                stamp(&mut h, &f)?;
            }
        }
    }
    Ok(format!("{:x}", h.finalize()))
}
