//! The cached stages of a reproduction. Each stage's output is stored in the study directory
//! with the key it was computed for (a hash of everything it depends on) and is redone only when
//! that key changes: training (the run ID), evaluation (run ID and evaluation options), removal
//! methods (run ID, the resolved method file, the forget set).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use memsinks_model::io::write_atomic;
use memsinks_train::config::Precision;
use memsinks_train::run::{load_run_config, load_summary};
use memsinks_train::{ExperimentConfig, Method, RunDir, TrainSummary};
use memsinks_unlearn::MethodResult;
use serde::{Deserialize, Serialize};

use crate::config::StudyConfig;
use crate::evaluate::{EvalFile, EvalRequest};
use crate::results::Timing;
use crate::runner::{DeviceRange, MethodTask, Runner, TrainTask};
use crate::study_dir::StudyDir;

/// A cached stage's output with the key it was computed for.
#[derive(Serialize, Deserialize)]
struct Cached<T> {
    key: String,
    value: T,
    seconds: f64,
}

/// The stages run so far, with their wall times.
#[derive(Debug, Default)]
pub struct Stages {
    /// One entry per stage, in order.
    pub timings: Vec<Timing>,
}

/// One trained and evaluated model.
#[derive(Clone, Debug)]
pub struct Trained {
    /// Training method.
    pub method: Method,
    /// Training seed.
    pub seed: u64,
    /// Its run directory.
    pub dir: RunDir,
    /// `train.json`.
    pub summary: TrainSummary,
    /// `eval.json`.
    pub eval: EvalFile,
}

impl Stages {
    /// Returns the value cached at `path` when its key is `key`, else computes, stores and
    /// returns it. A cache file that does not parse is recomputed.
    pub fn cached<T: Serialize + for<'de> Deserialize<'de>>(
        &mut self,
        path: &Path,
        key: &str,
        stage: String,
        compute: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(c) = serde_json::from_str::<Cached<T>>(&text) {
                if c.key == key {
                    self.timings.push(Timing { stage, seconds: c.seconds, cached: true });
                    return Ok(c.value);
                }
            }
        }
        tracing::info!("{stage}");
        let started = Instant::now();
        let value = compute()?;
        let seconds = started.elapsed().as_secs_f64();
        let entry = Cached { key: key.to_string(), value, seconds };
        write_atomic(path, &serde_json::to_vec_pretty(&entry)?)?;
        self.timings.push(Timing { stage, seconds, cached: false });
        Ok(entry.value)
    }

    /// Trains (or reuses) the run of `cfg` in `dir` on the corpus in `data`. A run directory
    /// holding another config is retrained; an interrupted one of this config needs `resume`.
    ///
    /// # Errors
    /// When training fails, or an interrupted run is found without `resume`.
    pub fn train(
        &mut self,
        cfg: &ExperimentConfig,
        dir: &RunDir,
        data: &Path,
        resume: bool,
        runner: &impl Runner,
    ) -> Result<TrainSummary> {
        let stage = format!("train {} seed {}", cfg.train.method.name(), cfg.train.seed);
        let path = dir.path();
        if path.exists() {
            let same = load_run_config(path).map(|c| c.run_id() == cfg.run_id()).unwrap_or(false);
            if same {
                if let Ok(summary) = load_summary(path) {
                    self.timings.push(Timing { stage, seconds: summary.wall_s, cached: true });
                    return Ok(summary);
                }
                if !resume {
                    bail!(
                        "{} holds an interrupted run of this config: rerun with --resume to continue it",
                        path.display()
                    );
                }
            } else {
                tracing::info!("{} was trained with another config: training it again", path.display());
                std::fs::remove_dir_all(path).with_context(|| format!("cannot clear {}", path.display()))?;
            }
        }
        tracing::info!("{stage}");
        let resume = resume && dir.checkpoints().exists();
        let task = TrainTask { cfg: cfg.clone(), run_dir: path.to_path_buf(), data: Some(data.to_path_buf()), resume };
        let summary = task.run_on(runner, 0)?;
        self.timings.push(Timing { stage, seconds: summary.wall_s, cached: false });
        Ok(summary)
    }

    /// Evaluates (or reuses the evaluation of) the run in `dir` with the study's options; also
    /// writes the run's plain `eval.json` for the other commands.
    ///
    /// # Errors
    /// When evaluation fails.
    pub fn evaluate(
        &mut self,
        study: &StudyDir,
        cfg: &ExperimentConfig,
        s: &StudyConfig,
        dir: &RunDir,
        runner: &impl Runner,
    ) -> Result<EvalFile> {
        let key = format!("{} {} {} {}", cfg.run_id(), s.eval_docs, s.extract_prompt, s.extract_continuation);
        let stage = format!("eval {} seed {}", cfg.train.method.name(), cfg.train.seed);
        let request = EvalRequest {
            run: dir.path().to_path_buf(),
            mode: None,
            exclude: Vec::new(),
            exclude_sources: Vec::new(),
            max_docs: s.eval_docs,
            extract_prompt: s.extract_prompt,
            extract_continuation: s.extract_continuation,
            reference: None,
        };
        self.cached(&study.eval_stage(dir), &key, stage, || {
            let file = runner.run(Precision::F32, DeviceRange::ONE, request)?;
            file.write(dir.path())?;
            Ok(file)
        })
    }

    /// Runs (or reuses) registry method `method` (with `--set`-style overrides `sets`) on the
    /// trained model `on`, forgetting `forget`; `per_seed` names the seed in the cache file
    /// (removals that run on every seed).
    ///
    /// # Errors
    /// When the method is unknown or fails.
    pub fn removal(
        &mut self,
        study: &StudyDir,
        on: &Trained,
        task: MethodTask,
        per_seed: bool,
        runner: &impl Runner,
    ) -> Result<MethodResult> {
        let forget = task.forget.clone();
        let key = format!("{} {} {}", on.summary.run_id, ron::to_string(&task.file)?, forget.name());
        let stage = format!("{} on {} ({})", task.name, on.method.name(), forget.name());
        let path = study.posthoc(&task.name, on.method, per_seed.then_some(on.seed), &forget);
        self.cached(&path, &key, stage, || runner.run(Precision::F32, DeviceRange::ONE, task))
    }
}
