//! A run directory and the name of every file in it: the one place those names are written.
//!
//! `config.ron` (the resolved config; its hash is the run id), `corpus.json` (the corpus trained
//! on, with its fingerprint), `data/` (the prepared corpus, unless shared elsewhere),
//! `checkpoint/` (burn-train's model / optimizer / scheduler records with their checksums, plus
//! `cursor-N.json`), `metrics.jsonl`, `final/` (the trained model), `train.json` (what was
//! trained; written last, so its presence marks a finished run), and what later commands add:
//! `eval.json`, `unlearn-METHOD-FORGET.json`.

use std::path::{Path, PathBuf};

/// A run directory (it need not exist yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The resolved configuration (`config.ron`).
    pub fn config(&self) -> PathBuf {
        self.root.join("config.ron")
    }

    /// What a finished run trained (`train.json`, written last).
    pub fn summary(&self) -> PathBuf {
        self.root.join("train.json")
    }

    /// The corpus the run trains on and its fingerprint (`corpus.json`).
    pub fn corpus_record(&self) -> PathBuf {
        self.root.join("corpus.json")
    }

    /// The default place of the prepared corpus (`data/`), when no shared one is given.
    pub fn default_data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Training and evaluation records, one JSON object per line (`metrics.jsonl`).
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// burn-train's checkpoint records and the data cursors (`checkpoint/`).
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    /// The data cursor after round `round`.
    pub fn cursor(&self, round: usize) -> PathBuf {
        self.checkpoints().join(format!("cursor-{round}.json"))
    }

    /// The trained model (`final/`).
    pub fn final_model(&self) -> PathBuf {
        self.root.join("final")
    }

    /// The run's evaluation in every mode (`eval.json`).
    pub fn eval(&self) -> PathBuf {
        self.root.join("eval.json")
    }

    /// The results of removal method `method` (a registry name or a method file's stem) on
    /// forget set `forget` (`unlearn-METHOD-FORGET.json`).
    pub fn unlearn_result(&self, method: &str, forget: &str) -> PathBuf {
        self.root.join(format!("unlearn-{method}-{forget}.json"))
    }
}

impl AsRef<Path> for RunDir {
    fn as_ref(&self) -> &Path {
        &self.root
    }
}
