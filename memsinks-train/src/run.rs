//! One training run through burn-train's learner: run directory, data, model, loaders,
//! checkpoints, resume and the final model.
//!
//! Run directory: `config.ron` (the resolved config; its hash is the run id), `data/` (the
//! prepared corpus, unless shared elsewhere), `checkpoint/` (burn-train's model / optimizer /
//! scheduler records, written atomically, plus `cursor-N.json`), `metrics.jsonl`, `final/` (the
//! trained model) and `train.json` (what was trained: steps, tokens, budget, wall time).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::metric::LearningRateMetric;
use burn::train::{ExecutionStrategy, Interrupter, Learner, MultiDeviceOptim, SupervisedTraining};
use memsinks_data::{prepare, write_atomic, Batcher, CorpusFingerprint, Cursor, HostBatch, PreparedCorpus, Split};
use memsinks_model::io::{is_empty_dir, DirLock};
use memsinks_model::io::{load_model, save_model};
use memsinks_model::{MemSinkLm, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    latest_complete_checkpoint, remove_stale_checkpoint_files, AtomicFileRecorder, CheckpointBarrier,
    KeepCompleteRounds,
};
use crate::config::{DedupBudget, ExperimentConfig, Method};
use crate::learner::{LmLearner, NamedLoss, QuietRenderer, RunLog, EVAL_KEYS};
use crate::loader::{cursor_file, EvalLoader, TrainLoader};
use crate::optim::{OptimConfig, WarmupCosine};
use crate::TrainError;

/// The resolved configuration inside a run directory.
pub const CONFIG_FILE: &str = "config.ron";
/// Metrics, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The trained model directory.
pub const FINAL_DIR: &str = "final";
/// What a finished run trained (written last: its presence marks a finished run).
pub const SUMMARY_FILE: &str = "train.json";
/// The corpus a run trains on: its directory and fingerprint, written before training starts.
pub const CORPUS_FILE: &str = "corpus.json";

/// The corpus of a run, as recorded in `corpus.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunCorpus {
    /// The prepared corpus directory (absolute).
    pub dir: PathBuf,
    /// Its fingerprint when training started.
    pub fingerprint: CorpusFingerprint,
}

impl RunCorpus {
    /// Reads `corpus.json` of a run, `None` when the run has not recorded one.
    fn load(run_dir: &Path) -> Result<Option<Self>, TrainError> {
        let path = run_dir.join(CORPUS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| TrainError::Config(format!("{}: corrupt: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TrainError::io(&path, e)),
        }
    }

    /// Opens the recorded corpus and checks it is unchanged.
    fn open(&self, run_dir: &Path) -> Result<PreparedCorpus, TrainError> {
        let corpus = PreparedCorpus::open(&self.dir)?;
        self.fingerprint.check(&corpus, &format!("the run in {}", run_dir.display()))?;
        Ok(corpus)
    }
}

/// How `train` may use its run directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// New (missing or empty): the run starts here.
    Fresh,
    /// This run's own directory (same config), unfinished.
    Own,
}

/// Refuses every run directory `train` must not write into: a user's non-empty directory, another
/// run, a finished run, an unfinished run without `--resume`, and `--resume` of a non-run.
fn check_run_dir(cfg: &ExperimentConfig, run_dir: &Path, resume: bool) -> Result<Claim, TrainError> {
    let dir = run_dir.display();
    if is_empty_dir(run_dir)? {
        return if resume {
            Err(TrainError::Config(format!("{dir} holds no run to resume")))
        } else {
            Ok(Claim::Fresh)
        };
    }
    let Ok(recorded) = load_run_config(run_dir) else {
        return Err(TrainError::Config(format!(
            "{dir} is not empty and holds no memsinks run: choose a new or empty --out (nothing was written)"
        )));
    };
    if recorded.run_id() != cfg.run_id() {
        return Err(TrainError::Config(format!(
            "{dir} holds another run (id {}, this config is {}): choose another --out",
            recorded.run_id(),
            cfg.run_id()
        )));
    }
    if run_dir.join(SUMMARY_FILE).exists() {
        return Err(TrainError::Config(format!(
            "{dir} holds this run, finished ({SUMMARY_FILE}): nothing to train; evaluate it or choose another --out"
        )));
    }
    if !resume && latest_complete_checkpoint(run_dir).is_some() {
        return Err(TrainError::Config(format!(
            "{dir} already holds this run, unfinished: resume it with --resume, or choose another --out"
        )));
    }
    Ok(Claim::Own)
}

/// Removes what `train` wrote into a run directory it found missing or empty before training
/// started (its config, corpus record, the default corpus inside it, its lock file), and the
/// directory itself when it did not exist.
fn undo_fresh_run_dir(run_dir: &Path, existed: bool, default_data: bool, lock: DirLock) {
    for file in [CONFIG_FILE, CORPUS_FILE] {
        let _ = std::fs::remove_file(run_dir.join(file));
    }
    if default_data {
        let _ = std::fs::remove_dir_all(run_dir.join("data"));
    }
    drop(lock);
    let _ = std::fs::remove_file(run_dir.join(memsinks_model::io::LOCK_FILE));
    if !existed {
        let _ = std::fs::remove_dir(run_dir);
    }
}

/// The corpus of a run: when resuming from a checkpoint, the one recorded in `corpus.json`,
/// checked against its fingerprint (never rebuilt: the source may have changed since); otherwise
/// prepared (or reused) in `data_dir` (default `RUN_DIR/data`) and recorded.
fn open_run_corpus(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    data_dir: Option<&Path>,
    from_checkpoint: bool,
) -> Result<PreparedCorpus, TrainError> {
    let default_dir = run_dir.join("data");
    let wanted = data_dir.unwrap_or(&default_dir);
    if from_checkpoint {
        if let Some(recorded) = RunCorpus::load(run_dir)? {
            let wanted = std::path::absolute(wanted).unwrap_or(wanted.to_path_buf());
            if data_dir.is_some() && wanted != recorded.dir {
                return Err(TrainError::Config(format!(
                    "{} trained on the corpus in {}, not {}: resume without --data",
                    run_dir.display(),
                    recorded.dir.display(),
                    wanted.display()
                )));
            }
            return recorded.open(run_dir);
        }
    }
    let corpus = prepare(&cfg.data, wanted, std::io::IsTerminal::is_terminal(&std::io::stderr()))?;
    let dir = std::path::absolute(&corpus.dir).map_err(|e| TrainError::io(&corpus.dir, e))?;
    let record = RunCorpus { fingerprint: corpus.fingerprint()?, dir: dir.clone() };
    write_atomic(&run_dir.join(CORPUS_FILE), &serde_json::to_vec_pretty(&record).expect("serialises"))?;
    Ok(PreparedCorpus { dir, ..corpus })
}

/// What a finished run trained.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainSummary {
    /// Run id (hash of the resolved config).
    pub run_id: String,
    /// Method.
    pub method: String,
    /// Optimizer steps.
    pub steps: usize,
    /// Rows per optimizer step (batch × accumulation × devices).
    pub rows_per_step: usize,
    /// Tokens trained on (rows × context, padding included).
    pub tokens_seen: u64,
    /// Passes over this method's schedule.
    pub schedule_passes: f64,
    /// The budget rule, in words.
    pub budget_rule: String,
    /// Wall time of this invocation.
    pub wall_s: f64,
    /// Whether the run resumed from a checkpoint, and which.
    pub resumed_from: Option<usize>,
    /// The prepared corpus the run trained on.
    pub data_dir: PathBuf,
}

/// Keeps the metric lines of rounds up to `round` (so a resumed run does not log twice).
fn truncate_metrics(path: &Path, max_step: u64, max_round: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            match v["kind"].as_str() {
                Some("eval") => v["round"].as_u64().is_some_and(|r| r <= max_round),
                _ => v["step"].as_u64().is_some_and(|s| s <= max_step),
            }
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(write_atomic(path, out.as_bytes())?)
}

/// Evaluation batches: the first `eval_docs` documents of the validation, repeated and canary
/// splits, one document per row.
fn eval_batches(corpus: &PreparedCorpus, cfg: &ExperimentConfig) -> Vec<(HostBatch, Split, Vec<usize>)> {
    let mut out = Vec::new();
    for split in [Split::Validation, Split::Repeated, Split::Canary] {
        let docs: Vec<usize> = corpus.manifest.indices(split).into_iter().take(cfg.train.eval_docs).collect();
        if docs.is_empty() {
            continue;
        }
        let batcher = Batcher::over_documents(
            &corpus.cache,
            &docs,
            cfg.data.context,
            cfg.train.batch_size,
            corpus.manifest.end_of_text,
        );
        let mut cursor = Cursor::default();
        while let Some(b) = batcher.next_batch(&mut cursor) {
            let rows: Vec<usize> = b.started.iter().map(|&(_, d)| d as usize).collect();
            out.push((b, split, rows));
        }
    }
    out
}

/// Trains `cfg` into `run_dir` on `devices` (the first is the main device). With `resume`, the
/// run continues from its newest complete checkpoint. `data_dir` shares a prepared corpus
/// between runs (default: `run_dir/data`).
pub fn train<B: AutodiffBackend>(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    data_dir: Option<&Path>,
    resume: bool,
    devices: Vec<B::Device>,
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    let device = devices.first().cloned().ok_or_else(|| TrainError::Config("no device".into()))?;
    cfg.validate()?;
    let existed = run_dir.exists();
    let claim = check_run_dir(cfg, run_dir, resume)?;
    let lock = DirLock::acquire(run_dir, if resume { "train --resume" } else { "train" })?;
    // Checked again under the lock: another writer may have claimed it in between.
    check_run_dir(cfg, run_dir, resume)?;
    remove_stale_checkpoint_files(run_dir);
    let resume_round = if resume { latest_complete_checkpoint(run_dir) } else { None };
    if resume && resume_round.is_none() {
        tracing::warn!("{} has no complete checkpoint: training from step 0", run_dir.display());
    }
    let setup = || -> Result<(PreparedCorpus, ModelConfig), TrainError> {
        if claim == Claim::Fresh {
            write_atomic(&run_dir.join(CONFIG_FILE), cfg.to_ron().as_bytes())?;
        }
        let corpus = open_run_corpus(cfg, run_dir, data_dir, resume_round.is_some())?;
        let model_cfg = cfg.model_config(corpus.tokenizer.vocab_size())?;
        corpus.tokenizer.check_model_vocab(model_cfg.vocab_size)?;
        Ok((corpus, model_cfg))
    };
    let (corpus, model_cfg) = match setup() {
        Ok(ready) => ready,
        Err(e) => {
            // Nothing was trained: a new run directory goes back to how it was found, so that
            // fixing the input and rerunning is never refused because of this attempt.
            if claim == Claim::Fresh {
                undo_fresh_run_dir(run_dir, existed, data_dir.is_none(), lock);
            }
            return Err(e);
        }
    };

    // Budget: every method takes as many optimizer steps as the standard model's schedule needs,
    // unless the dedup rule says otherwise.
    let t = &cfg.train;
    let rows_per_step = t.batch_size * t.grad_accumulation * devices.len();
    let rows_per_pass = |dedup: bool| -> Result<u64, TrainError> {
        let schedule = corpus.schedule(dedup)?;
        Ok(if cfg.data.packing {
            let tokens: u64 = schedule.iter().map(|&d| corpus.cache.doc_len(d as usize) as u64 + 1).sum();
            tokens.div_ceil(cfg.data.context as u64)
        } else {
            schedule.len() as u64
        })
    };
    let dedup = t.method == Method::Dedup;
    let (budget_rows, budget_rule) = match (dedup, t.dedup_budget) {
        (true, DedupBudget::SameEpochs) => (rows_per_pass(true)?, "dedup: same passes over its own schedule"),
        _ => (rows_per_pass(false)?, "same optimizer steps as the standard model"),
    };
    let total_steps =
        t.steps.unwrap_or_else(|| (t.epochs as u64 * budget_rows).div_ceil(rows_per_step as u64) as usize).max(1);
    let rounds = total_steps.div_ceil(t.eval_every);
    let micro_per_step = (t.grad_accumulation * devices.len()) as u64;

    let schedule = Arc::new(corpus.schedule(dedup)?);
    let own_rows = rows_per_pass(dedup)?;
    let mut batcher = Batcher::new(
        Arc::new(corpus.cache.clone()),
        schedule,
        cfg.data.context,
        t.batch_size,
        corpus.manifest.end_of_text,
        cfg.data.packing,
    );
    if t.method == Method::GradientMasking {
        let flags =
            corpus.manifest.documents.iter().map(|d| matches!(d.split, Split::Repeated | Split::Canary)).collect();
        batcher = batcher.with_route_to_sinks(Arc::new(flags));
    }

    let (cursor, round) = match resume_round {
        Some(r) => {
            let path = cursor_file(run_dir, r);
            let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
            let cursor: Cursor = serde_json::from_str(&text)
                .map_err(|e| TrainError::Config(format!("{}: corrupt cursor: {e}", path.display())))?;
            batcher.check_cursor(&cursor).map_err(|e| {
                TrainError::Config(format!("{}: the cursor does not fit this run's schedule: {e}", path.display()))
            })?;
            (cursor, r)
        }
        None => (Cursor::default(), 0),
    };
    let metrics = run_dir.join(METRICS_FILE);
    if resume {
        truncate_metrics(&metrics, (round * t.eval_every) as u64, round as u64)?;
    } else {
        let _ = std::fs::remove_file(&metrics);
    }
    // burn-train steps the scheduler once per iteration (one micro-batch per device), so with
    // gradient accumulation the schedule is laid out in iterations, not optimizer steps.
    let accum = t.grad_accumulation;
    let schedule_lr =
        WarmupCosine { peak: t.lr, min: t.min_lr, warmup: t.warmup_steps * accum, total: total_steps * accum, step: 0 };
    let interrupter = Interrupter::new();
    let micro_per_round = t.eval_every as u64 * micro_per_step;
    // The train step waits for the checkpointer threads of the rounds saved so far (see
    // `checkpoint`: the fusion backends abort otherwise).
    let checkpoints = Arc::new(CheckpointBarrier::default());
    let log = Arc::new(
        RunLog::new(
            metrics,
            micro_per_step,
            accum as u64,
            t.log_every as u64,
            schedule_lr.clone(),
            (round * t.eval_every) as u64 * micro_per_step,
            round as u64,
            interrupter.clone(),
        )
        .with_checkpoint_barrier(checkpoints.clone(), micro_per_round),
    );
    let train_loader = TrainLoader::<B>::new(
        batcher,
        cursor,
        round,
        micro_per_round,
        total_steps as u64 * micro_per_step,
        run_dir.to_path_buf(),
        device.clone(),
    );
    let eval_loader = EvalLoader::<B::InnerBackend>::new(eval_batches(&corpus, cfg), log.clone(), device.clone());

    B::seed(&device, t.seed);
    let lm = model_cfg.init::<B>(&device)?;
    let model = LmLearner::new(lm, log.clone(), t.clip_norm);
    let optim = OptimConfig {
        beta_1: t.beta_1 as f32,
        beta_2: t.beta_2 as f32,
        weight_decay: t.weight_decay as f32,
        epsilon: 1e-8,
        clip_norm: None, // clipping happens in the train step, globally
    }
    .init::<B, LmLearner<B>>();

    let mut training = SupervisedTraining::new(run_dir, Arc::new(train_loader), Arc::new(eval_loader))
        .with_file_checkpointer(AtomicFileRecorder::counting(checkpoints))
        .with_checkpointing_strategy(KeepCompleteRounds { keep: t.keep_checkpoints })
        .with_application_logger(None)
        .with_interrupter(interrupter)
        .num_epochs(rounds)
        .metric_train_numeric(NamedLoss::new("loss"))
        .metric_train_numeric(LearningRateMetric::new());
    for key in EVAL_KEYS {
        training = training.metric_valid_numeric(NamedLoss::new(key));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        training = training.renderer(QuietRenderer);
    }
    if t.grad_accumulation > 1 {
        training = training.grads_accumulation(t.grad_accumulation);
    }
    if devices.len() > 1 {
        training = training
            .with_training_strategy(ExecutionStrategy::MultiDevice(devices, MultiDeviceOptim::OptimMainDevice).into());
    }
    if let Some(r) = resume_round {
        training = training.checkpoint(r);
    }
    let result = training.launch(Learner::new(model, optim, schedule_lr));
    if let Some(failure) = log.failure() {
        return Err(TrainError::NonFinite(failure));
    }
    let final_dir = run_dir.join(FINAL_DIR);
    save_model(&result.model.lm, &model_cfg, &final_dir)?;
    remove_stale_checkpoint_files(run_dir);
    let rows = total_steps as u64 * rows_per_step as u64;
    let summary = TrainSummary {
        run_id: cfg.run_id(),
        method: t.method.name().to_string(),
        steps: total_steps,
        rows_per_step,
        tokens_seen: rows * cfg.data.context as u64,
        schedule_passes: rows as f64 / own_rows.max(1) as f64,
        budget_rule: budget_rule.to_string(),
        wall_s: started.elapsed().as_secs_f64(),
        resumed_from: resume_round,
        data_dir: corpus.dir.clone(),
    };
    write_atomic(&run_dir.join(SUMMARY_FILE), &serde_json::to_vec_pretty(&summary).expect("serialises"))?;
    Ok(summary)
}

/// Reads `train.json` of a finished run.
pub fn load_summary(run_dir: &Path) -> Result<TrainSummary, TrainError> {
    let path = run_dir.join(SUMMARY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::Config(format!("{}: {e}; the run did not finish", path.display())))
}

/// A finished run, opened for evaluation, unlearning or generation: its configuration, summary
/// and the corpus it trained on.
pub struct FinishedRun {
    /// The run directory.
    pub dir: PathBuf,
    /// The resolved experiment.
    pub config: ExperimentConfig,
    /// `train.json`.
    pub summary: TrainSummary,
    /// The prepared corpus.
    pub corpus: PreparedCorpus,
}

impl FinishedRun {
    /// Opens the run in `dir`.
    ///
    /// # Errors
    /// When the run did not finish or its files or corpus are unreadable.
    pub fn open(dir: &Path) -> Result<Self, TrainError> {
        let summary = load_summary(dir)?;
        let corpus = match RunCorpus::load(dir)? {
            Some(recorded) => recorded.open(dir)?,
            None => {
                tracing::warn!(
                    "{} records no corpus fingerprint (trained by an older memsinks): its corpus is not checked",
                    dir.display()
                );
                PreparedCorpus::open(&summary.data_dir)?
            }
        };
        Ok(Self { dir: dir.to_path_buf(), config: load_run_config(dir)?, summary, corpus })
    }

    /// The final model and its configuration on `device`.
    ///
    /// # Errors
    /// When the weights are missing or do not match their configuration.
    pub fn model<B: Backend>(&self, device: &B::Device) -> Result<(MemSinkLm<B>, ModelConfig), TrainError> {
        Ok(load_model::<B>(&self.dir.join(FINAL_DIR), device)?)
    }
}

/// Reads the resolved configuration of a run directory (for `--resume`).
pub fn load_run_config(run_dir: &Path) -> Result<ExperimentConfig, TrainError> {
    ExperimentConfig::load(&run_dir.join(CONFIG_FILE), &[])
}
