//! The rules for a corpus directory: a prepared corpus is immutable (preparing another
//! configuration, or from a changed source, into its directory is refused, naming what differs),
//! an interrupted build of ours is finished in place, and a directory that is not a corpus is never
//! written into.

use std::path::Path;

use crate::corpus::{source_name, Manifest, PreparedCorpus, MANIFEST_FILE};
use crate::{DataConfig, DataError};

/// Marks a directory as a memsinks corpus (written before anything else when a corpus is
/// started), so an interrupted build can be finished in place while a user's own directory is
/// never written into.
pub const CORPUS_MARKER: &str = ".memsinks-corpus";

/// What decides whether a corpus directory can be used as it is.
pub(crate) enum Existing {
    /// Missing or empty: build here.
    Empty,
    /// A complete corpus of this configuration and source.
    Reusable(Box<PreparedCorpus>),
    /// A corpus of this configuration whose files are damaged, or an interrupted build: ours to
    /// (re)build, since its content is a function of the configuration.
    Rebuild(String),
}

/// Classifies `out` for `cfg`: never answers "rebuild" for a directory that holds another
/// corpus or files that are not a corpus.
/// Whether `dir` holds a corpus of ours, finished or interrupted (its marker or its manifest).
pub fn holds_corpus(dir: &Path) -> bool {
    dir.join(CORPUS_MARKER).exists() || dir.join(MANIFEST_FILE).exists()
}

pub(crate) fn inspect(
    cfg: &DataConfig,
    out: &Path,
    config_hash: &str,
    fingerprint: &str,
) -> Result<Existing, DataError> {
    let empty = memsinks_core::files::is_empty_dir(out)?;
    if empty {
        return Ok(Existing::Empty);
    }
    let manifest_path = out.join(MANIFEST_FILE);
    let manifest: Option<Manifest> =
        std::fs::read_to_string(&manifest_path).ok().and_then(|t| serde_json::from_str(&t).ok());
    if manifest.is_none() && !out.join(CORPUS_MARKER).exists() {
        // A writer that has just locked the directory writes its marker through a temporary
        // file: name it as in use, not as a user's directory.
        if out.join(memsinks_core::files::LOCK_FILE).exists() {
            if let Err(e @ memsinks_core::FileError::Locked { .. }) =
                memsinks_core::files::DirLock::acquire(out, "data prepare (checking)")
            {
                return Err(e.into());
            }
        }
        return Err(DataError::CorpusMismatch {
            dir: out.to_path_buf(),
            reason: "is not empty and holds no memsinks corpus: choose a new or empty directory for the corpus".into(),
        });
    }
    let Some(manifest) = manifest else { return Ok(Existing::Rebuild("an interrupted build".into())) };
    if manifest.config_hash != config_hash {
        let changed = describe_config_change(&manifest.config, cfg);
        return Err(DataError::CorpusMismatch {
            dir: out.to_path_buf(),
            reason: format!(
                "holds the corpus of another data configuration ({changed}); a prepared corpus is never \
                 rebuilt in place, because runs trained on it would silently change: choose another --data \
                 directory (or --out), or delete {} yourself",
                out.display()
            ),
        });
    }
    if !manifest.source_fingerprint.is_empty() && manifest.source_fingerprint != fingerprint {
        return Err(DataError::CorpusMismatch {
            dir: out.to_path_buf(),
            reason: format!(
                "was prepared from {}, which has changed since (size or modification time differ); a \
                 prepared corpus is never rebuilt in place: prepare into another directory",
                source_name(&cfg.source)
            ),
        });
    }
    match PreparedCorpus::open(out) {
        Ok(corpus) => {
            let key = corpus.cache.key();
            if key.source_hash == fingerprint && key.tokenizer_hash == corpus.tokenizer.fingerprint() {
                Ok(Existing::Reusable(Box::new(corpus)))
            } else {
                Ok(Existing::Rebuild("its cache does not match its tokenizer or source".into()))
            }
        }
        Err(e) => Ok(Existing::Rebuild(e.to_string())),
    }
}

/// The keys whose values differ between two data configurations.
fn describe_config_change(old: &DataConfig, new: &DataConfig) -> String {
    let keys = memsinks_core::overrides::changed_keys(old, new, "data");
    if keys.is_empty() {
        "its configuration hash differs".into()
    } else {
        format!("it differs in {}", keys.join(", "))
    }
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<(), DataError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataError::io(path, e)),
        _ => Ok(()),
    }
}

/// Removes temporary files and directories left by killed writers of this corpus (`.NAME.tmp-PID`,
/// written by this crate only; called under the directory's lock, so no live writer owns them).
pub(crate) fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if memsinks_core::files::is_temporary_name(&name) {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}
