//! The cached stages of a reproduction. Each stage's output is stored in the study directory
//! with the key it was computed for (a hash of everything it depends on) and is redone only when
//! that key changes: training (the run ID), evaluation (run ID and evaluation options), removal
//! methods (run ID, the resolved method file, the forget set).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use memsinks_core::files::{check_checksum, write_atomic_checked, ChecksumCheck};
use memsinks_train::config::Precision;
use memsinks_train::run::{load_run_config, load_summary};
use memsinks_train::{ExperimentConfig, Method, RunDir, TrainSummary};
use memsinks_unlearn::MethodResult;
use serde::{Deserialize, Serialize};

use crate::config::StudyConfig;
use crate::results::Timing;
use crate::study_dir::StudyDir;
use memsinks_train::{DeviceRange, Runner, TrainTask};
use memsinks_unlearn::MethodTask;
use memsinks_unlearn::{EvalFile, EvalRequest};

/// A cached stage's output with the key it was computed for. A file whose key does not parse
/// as a [`StageKey`] (one written before keys were typed) is recomputed.
#[derive(Serialize, Deserialize)]
struct Cached<T> {
    key: StageKey,
    value: T,
    seconds: f64,
}

/// What a cached stage's output was computed from: it is reused only for an equal key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StageKey {
    /// Evaluating a trained run ([`EvalFile`]): a new `schema_version` of
    /// eval.json (another set of modes, say) recomputes it.
    Eval {
        /// The run.
        run: TrainedInputs,
        /// eval.json's schema version.
        eval_schema: u32,
        /// Documents per set.
        eval_docs: usize,
        /// Greedy extraction: prompt tokens.
        extract_prompt: usize,
        /// Greedy extraction: continuation tokens.
        extract_continuation: usize,
    },
    /// A removal method on a trained run.
    Removal {
        /// The run.
        run: TrainedInputs,
        /// The method file after overrides (RON).
        method_file: String,
        /// The forget set's name.
        forget: String,
    },
}

/// The identity of what a trained run hands to the stages after it: its run ID and the digests
/// of its `train.json` and final weights. Part of every later stage's key, so a stage whose
/// model or summary changed is recomputed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainedInputs {
    /// The run ID (hash of the resolved configuration).
    pub run_id: String,
    /// SHA-256 of `train.json`.
    pub summary_sha256: String,
    /// SHA-256 of the final weights.
    pub weights_sha256: String,
}

/// What a reproduction may do with the training runs it finds in its directory.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rerun {
    /// Continue interrupted runs of the same configuration from their newest checkpoint.
    pub resume: bool,
    /// Delete runs of another configuration (or an unreadable one) and train them again.
    pub force: bool,
}

/// The stages run so far, with their wall times.
#[derive(Debug, Default)]
pub struct Stages {
    /// One entry per stage, in order.
    pub timings: Vec<Timing>,
    /// One bar over every stage of the study, with the time left (hidden unless stderr is a
    /// terminal, so that redirected logs stay clean).
    progress: Option<indicatif::ProgressBar>,
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
    /// Shows one progress bar over `stages` stages on a terminal.
    pub fn show_progress(&mut self, stages: u64) {
        use std::io::IsTerminal;
        let bar = memsinks_data::corpus::progress_bar(std::io::stderr().is_terminal(), stages, "study");
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "[{bar:30}] {pos}/{len} stages, {elapsed} gone, ~{eta} left: {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        self.progress = Some(bar);
    }

    /// Adds `more` stages to the bar (stages known only once earlier ones ran).
    pub fn more_stages(&mut self, more: u64) {
        if let Some(bar) = &self.progress {
            bar.inc_length(more);
        }
    }

    /// Says which stage runs now.
    fn starting(&self, stage: &str) {
        tracing::info!("{stage}");
        if let Some(bar) = &self.progress {
            bar.set_message(stage.to_string());
        }
    }

    /// Records a finished (or reused) stage.
    pub fn finished(&mut self, timing: Timing) {
        if let Some(bar) = &self.progress {
            bar.inc(1);
        }
        self.timings.push(timing);
    }

    /// Removes the bar once every stage ran.
    pub fn close_progress(&mut self) {
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
    }

    /// Returns the value cached at `path` when its key is `key`, else computes, stores and
    /// returns it. A cache file that does not parse is recomputed.
    ///
    /// The file carries a checksum: one that was edited or damaged is recomputed (with a warning),
    /// never read as a result.
    pub fn cached<T: Serialize + for<'de> Deserialize<'de>>(
        &mut self,
        path: &Path,
        key: &StageKey,
        stage: String,
        compute: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if let Ok(text) = std::fs::read_to_string(path) {
            match check_checksum(path, None) {
                Ok(ChecksumCheck::Matches) => {
                    if let Ok(c) = serde_json::from_str::<Cached<T>>(&text) {
                        if c.key == *key {
                            self.finished(Timing { stage, seconds: c.seconds, cached: true });
                            return Ok(c.value);
                        }
                    }
                }
                _ => {
                    tracing::warn!("{} does not match its checksum (edited or damaged): recomputing it", path.display())
                }
            }
        }
        self.starting(&stage);
        let started = Instant::now();
        let value = compute()?;
        let seconds = started.elapsed().as_secs_f64();
        let entry = Cached { key: key.clone(), value, seconds };
        write_atomic_checked(path, &serde_json::to_vec_pretty(&entry)?)?;
        self.finished(Timing { stage, seconds, cached: false });
        Ok(entry.value)
    }

    /// Trains (or reuses) the run of `cfg` in `dir` on the corpus in `data`. A run directory
    /// holding another config, or one whose config cannot be read, is never deleted unless
    /// `rerun.force` says so: it is refused, naming the keys that differ and the way forward. An
    /// interrupted run of this config needs `rerun.resume`.
    ///
    /// # Errors
    /// When training fails, the directory holds another run (without `force`), or an interrupted
    /// run is found without `resume`.
    pub fn train(
        &mut self,
        cfg: &ExperimentConfig,
        dir: &RunDir,
        data: &Path,
        rerun: Rerun,
        runner: &impl Runner,
    ) -> Result<TrainSummary> {
        let stage = format!("train {} seed {}", cfg.train.method.name(), cfg.train.seed);
        let path = dir.path();
        if path.exists() {
            let recorded = load_run_config(path);
            let same = recorded.as_ref().is_ok_and(|c| c.run_id() == cfg.run_id());
            if same {
                if let Ok(summary) = load_summary(path) {
                    trained_inputs(dir, &summary.run_id).with_context(|| {
                        format!(
                            "{} is finished but its model cannot be used; rerun with --force to train it again",
                            path.display()
                        )
                    })?;
                    self.finished(Timing { stage, seconds: summary.wall_s, cached: true });
                    return Ok(summary);
                }
                if !rerun.resume {
                    bail!(
                        "{} holds an interrupted run of this config: rerun with --resume to continue it",
                        path.display()
                    );
                }
            } else if rerun.force {
                tracing::info!("{} holds another run: --force, so it is deleted and trained again", path.display());
                std::fs::remove_dir_all(path).with_context(|| format!("cannot clear {}", path.display()))?;
            } else {
                let why = match &recorded {
                    Ok(old) => {
                        let keys = memsinks_core::overrides::changed_keys(old, cfg, "");
                        let keys = if keys.is_empty() { "its run ID".to_string() } else { keys.join(", ") };
                        format!("was trained with another configuration (it differs in {keys})")
                    }
                    Err(e) => format!("holds a run whose configuration cannot be read ({e})"),
                };
                bail!(
                    "{} {why}; nothing was deleted. Keep it and use a new --out, or rerun with --force to \
                     delete the runs whose configuration changed and train them again",
                    path.display()
                );
            }
        }
        self.starting(&stage);
        let resume = rerun.resume && dir.checkpoints().exists();
        let task = TrainTask { cfg: cfg.clone(), run_dir: path.to_path_buf(), data: Some(data.to_path_buf()), resume };
        let summary = task.run_on(runner, None)?;
        self.finished(Timing { stage, seconds: summary.wall_s, cached: false });
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
        let key = StageKey::Eval {
            run: trained_inputs(dir, &cfg.run_id())?,
            eval_schema: memsinks_unlearn::eval::EVAL_SCHEMA,
            eval_docs: s.eval_docs,
            extract_prompt: s.extract_prompt,
            extract_continuation: s.extract_continuation,
        };
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
    /// trained model `on`, forgetting `forget`; the result carries the model's seed.
    ///
    /// # Errors
    /// When the method is unknown or fails.
    pub fn removal(
        &mut self,
        study: &StudyDir,
        on: &Trained,
        task: MethodTask,
        runner: &impl Runner,
    ) -> Result<MethodResult> {
        let forget = task.forget.clone();
        let key = StageKey::Removal {
            run: trained_inputs(&on.dir, &on.summary.run_id)?,
            method_file: ron::to_string(&task.file)?,
            forget: forget.name(),
        };
        let stage = format!("{} on {} seed {} ({})", task.name, on.method.name(), on.seed, forget.name());
        let path = study.posthoc(&task.name, on.method, Some(on.seed), &forget);
        let result = self.cached(&path, &key, stage, || Ok(runner.run(Precision::F32, DeviceRange::ONE, task)?))?;
        Ok(MethodResult { seed: Some(on.seed), ..result })
    }
}

/// The [`TrainedInputs`] of the finished run in `dir` with ID `run_id`.
///
/// # Errors
/// When the final weights are missing or do not match their checksum.
fn trained_inputs(dir: &RunDir, run_id: &str) -> Result<TrainedInputs> {
    let weights = dir.final_model().join(memsinks_model::io::WEIGHTS_FILE);
    if !weights.exists() {
        bail!("{} is missing", weights.display());
    }
    if let ChecksumCheck::Differs { .. } = check_checksum(&weights, None)? {
        bail!("{} does not match its checksum (damaged or edited)", weights.display());
    }
    let digest = |p: &Path| memsinks_core::files::file_sha256(p);
    Ok(TrainedInputs {
        run_id: run_id.to_string(),
        summary_sha256: digest(&dir.summary())?,
        weights_sha256: digest(&weights)?,
    })
}
