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
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::metric::LearningRateMetric;
use burn::train::{ExecutionStrategy, Interrupter, Learner, MultiDeviceOptim, SupervisedTraining};
use memsinks_data::{prepare, write_atomic, Batcher, Cursor, HostBatch, PreparedCorpus, Split};
use memsinks_model::io::{load_model, save_model};
use memsinks_model::{MemSinkLm, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{latest_complete_checkpoint, AtomicFileRecorder, CheckpointBarrier};
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
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    let resume_round = if resume { latest_complete_checkpoint(run_dir) } else { None };
    if !resume && run_dir.join("checkpoint").exists() {
        return Err(TrainError::Config(format!(
            "{} already holds a run: resume it with --resume, or choose another --out",
            run_dir.display()
        )));
    }
    write_atomic(&run_dir.join(CONFIG_FILE), cfg.to_ron().as_bytes())?;

    let data_dir = data_dir.map(Path::to_path_buf).unwrap_or_else(|| run_dir.join("data"));
    let corpus = prepare(&cfg.data, &data_dir, std::io::IsTerminal::is_terminal(&std::io::stderr()))?;
    let model_cfg = cfg.model_config(corpus.tokenizer.vocab_size())?;
    corpus.tokenizer.check_model_vocab(model_cfg.vocab_size)?;

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
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(t.keep_checkpoints))
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
        data_dir: std::path::absolute(&data_dir).unwrap_or(data_dir.clone()),
    };
    write_atomic(&run_dir.join("train.json"), &serde_json::to_vec_pretty(&summary).expect("serialises"))?;
    Ok(summary)
}

/// Reads `train.json` of a finished run.
pub fn load_summary(run_dir: &Path) -> Result<TrainSummary, TrainError> {
    let path = run_dir.join("train.json");
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
        let corpus = PreparedCorpus::open(&summary.data_dir)?;
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
