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
    /// Every file of the corpus a run reads (token shards, index, schedules, sources, and the
    /// three above), with its size, modification time and SHA-256. Empty in records written before
    /// it existed (then only the three files above are checked).
    #[serde(default)]
    pub files: Vec<FileStamp>,
}

/// One file of a corpus as a run recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Its path inside the corpus directory, `/`-separated.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its modification time (nanoseconds since the epoch), for the fast check.
    pub mtime_ns: Option<u128>,
    /// SHA-256 of its bytes.
    pub sha256: String,
}

/// How thoroughly [`CorpusFingerprint::check`] looks at the corpus's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// A file whose size and modification time are as recorded is taken as unchanged; any other
    /// is hashed. Cheap enough for every command that opens a run.
    Fast,
    /// Every file is hashed (resuming training, where a change would silently mix corpora).
    Full,
}

fn mtime_ns(meta: &std::fs::Metadata) -> Option<u128> {
    meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_nanos())
}

/// The files of the corpus in `dir` a run reads: everything but the lock file, the marker and
/// temporary files of writers, sorted by name.
fn corpus_files(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((at, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&at).map_err(|e| DataError::io(&at, e))? {
            let entry = entry.map_err(|e| DataError::io(&at, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let skip = name == memsinks_core::files::LOCK_FILE
                || name == crate::corpus_dir::CORPUS_MARKER
                || memsinks_core::files::is_temporary_name(&name);
            let kind = entry.file_type().map_err(|e| DataError::io(&entry.path(), e))?;
            if skip {
                continue;
            }
            let rel = format!("{prefix}{name}");
            if kind.is_dir() {
                stack.push((entry.path(), format!("{rel}/")));
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl CorpusFingerprint {
    /// Reads the fingerprint of the corpus in `dir`.
    ///
    /// # Errors
    /// When one of its files cannot be read.
    pub fn of_dir(dir: &Path, config_hash: &str) -> Result<Self, DataError> {
        let sha = |p: &Path| -> Result<String, DataError> { Ok(memsinks_core::files::file_sha256(p)?) };
        let mut files = Vec::new();
        for name in corpus_files(dir)? {
            let path = dir.join(&name);
            let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
            files.push(FileStamp { bytes: meta.len(), mtime_ns: mtime_ns(&meta), sha256: sha(&path)?, name });
        }
        let recorded = |name: &str| files.iter().find(|f| f.name == name).map(|f| f.sha256.clone());
        let named = |name: &str| recorded(name).map_or_else(|| sha(&dir.join(name)), Ok);
        Ok(Self {
            config_hash: config_hash.to_string(),
            manifest_sha256: named(MANIFEST_FILE)?,
            tokenizer_sha256: named(TOKENIZER_FILE)?,
            cache_sha256: named("cache/cache.json")?,
            files,
        })
    }

    /// The recorded files that differ in `dir` (missing, another size, or other bytes), by name.
    fn changed_files(&self, dir: &Path, verify: Verify) -> Result<Vec<String>, DataError> {
        let mut changed = Vec::new();
        for stamp in &self.files {
            let path = dir.join(&stamp.name);
            let Ok(meta) = std::fs::metadata(&path) else {
                changed.push(format!("{} (missing)", stamp.name));
                continue;
            };
            if meta.len() != stamp.bytes {
                changed.push(stamp.name.clone());
                continue;
            }
            let unchanged_stamp = stamp.mtime_ns.is_some() && mtime_ns(&meta) == stamp.mtime_ns;
            if verify == Verify::Fast && unchanged_stamp {
                continue;
            }
            if memsinks_core::files::file_sha256(&path)? != stamp.sha256 {
                changed.push(stamp.name.clone());
            }
        }
        Ok(changed)
    }

    /// Checks that `corpus` is the corpus this fingerprint was taken of; the error names each
    /// file that changed and what to do.
    ///
    /// # Errors
    /// When any digest differs.
    pub fn check(&self, corpus: &PreparedCorpus, user: &str, verify: Verify) -> Result<(), DataError> {
        let sha = |name: &str| memsinks_core::files::file_sha256(&corpus.dir.join(name));
        let mut changed = Vec::new();
        if corpus.manifest.config_hash != self.config_hash {
            changed.push("its data configuration".to_string());
        }
        if self.files.is_empty() {
            // A record written before every file was stamped: the three defining files.
            for (name, recorded) in [
                (MANIFEST_FILE, &self.manifest_sha256),
                (TOKENIZER_FILE, &self.tokenizer_sha256),
                ("cache/cache.json", &self.cache_sha256),
            ] {
                if &sha(name)? != recorded {
                    changed.push(name.to_string());
                }
            }
        } else {
            changed.extend(self.changed_files(&corpus.dir, verify)?);
        }
        if changed.is_empty() {
            return Ok(());
        }
        Err(DataError::CorpusMismatch {
            dir: corpus.dir.clone(),
            reason: format!(
                "is not the one {user} was trained on: {} changed since; its numbers would be silently \
                 wrong. Point the run at its own corpus again, or train a new run on this one",
                changed.join(", ")
            ),
        })
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
