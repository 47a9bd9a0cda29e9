//! A reproduction's output directory and the name of every file in it.
//!
//! `data/` (the corpus), `runs/METHOD-sSEED/` (one run directory per model, with its cached
//! evaluation `eval-stage.json`), `posthoc/METHOD-MODEL-FORGET.json` (cached removal methods),
//! `results.json`, `report.md` and `plots/`.

use std::path::{Path, PathBuf};

use memsinks_data::DataConfig;
use memsinks_train::{Method, RunDir};
use memsinks_unlearn::ForgetSet;

/// A reproduction's output directory (it need not exist yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StudyDir {
    root: PathBuf,
}

impl StudyDir {
    /// The reproduction directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Whether the directory holds a reproduction (any of the files only a reproduction writes).
    pub fn holds_reproduction(&self) -> bool {
        self.results().exists() || self.root.join("runs").exists() || memsinks_data::holds_corpus(&self.data())
    }

    /// The prepared corpus every run shares (`data/`).
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Where the corpus of `data` lives: `data/` for the experiment's own data configuration
    /// `base`, `data-SEED/` for one drawn with another data seed.
    pub fn data_for(&self, data: &DataConfig, base: &DataConfig) -> PathBuf {
        if data == base {
            self.data()
        } else {
            self.root.join(format!("data-{}", data.seed))
        }
    }

    /// The run of `method` with `seed`.
    pub fn run(&self, method: Method, seed: u64) -> RunDir {
        RunDir::new(self.root.join("runs").join(format!("{}-s{seed}", method.name())))
    }

    /// A run's cached evaluation stage (its key with the [`crate::EvalFile`]).
    pub fn eval_stage(&self, run: &RunDir) -> PathBuf {
        run.path().join("eval-stage.json")
    }

    /// The cached result of removal method `label` on the model of `on` (of seed `seed`, where
    /// removals run on every seed), forgetting `forget`.
    pub fn posthoc(&self, label: &str, on: Method, seed: Option<u64>, forget: &ForgetSet) -> PathBuf {
        let seed = seed.map_or_else(String::new, |s| format!("-s{s}"));
        self.root.join("posthoc").join(format!("{label}-{}{seed}-{}.json", on.name(), forget.file_name()))
    }

    /// Every number of the study (`results.json`).
    pub fn results(&self) -> PathBuf {
        self.root.join("results.json")
    }

    /// The report (`report.md`).
    pub fn report(&self) -> PathBuf {
        self.root.join("report.md")
    }

    /// The plots (`plots/`).
    pub fn plots(&self) -> PathBuf {
        self.root.join("plots")
    }
}
