//! One training run through burn-train's learner: run directory, data, model, loaders,
//! checkpoints, resume and the final model. The files of a run directory are named in
//! [`crate::run_dir`].

use memsinks_model::TrainBackend;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::train::metric::LearningRateMetric;
use burn::train::{ExecutionStrategy, Interrupter, Learner, MultiDeviceOptim, SupervisedTraining};
use memsinks_core::files::write_atomic_checked;
use memsinks_data::{Batcher, Consumed, Cursor, DocRows, Half, HostBatch, PreparedCorpus, Split};
use memsinks_model::io::{load_model, save_model};
use memsinks_model::{MemSinkLm, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{remove_stale_checkpoint_files, AtomicFileRecorder, CheckpointBarrier, KeepCompleteRounds};
use crate::config::{DedupBudget, ExperimentConfig, Method, TrainConfig};
use crate::learner::{EvalDocs, LossKey, NamedLoss, QuietRenderer, TrainingLm};
use crate::loader::{EvalLoader, TrainLoader};
use crate::metric_log::{truncate_metrics, DiscardMetrics, EvalKey, TRACKED_DOCS};
use crate::optim::WarmupCosine;
use crate::ownership::{set_up_run_dir, RunCorpus};
use crate::parallel::{Parallel, StepLayout};
use crate::run_dir::RunDir;
use crate::run_state::{Progress, RunState, StepCounting};
use crate::runner::BackendError;
use crate::TrainError;

/// The current `schema_version` of `train.json`.
pub const TRAIN_SCHEMA: u32 = 1;

/// What a finished run trained.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainSummary {
    /// Format version ([`TRAIN_SCHEMA`]; 0 in files written before it was recorded).
    #[serde(default)]
    pub schema_version: u32,
    /// Run id (hash of the resolved config).
    pub run_id: String,
    /// Method.
    #[serde(with = "memsinks_core::named::by_name")]
    pub method: Method,
    /// Optimizer steps.
    pub steps: usize,
    /// Rows per optimizer step over all devices (the global batch: batch × accumulation ×
    /// devices), the same whatever the device count.
    pub rows_per_step: usize,
    /// Devices this invocation trained on (absent in runs from before it was recorded).
    #[serde(default)]
    pub devices: Option<usize>,
    /// Micro-batches each device accumulated per optimizer step in this invocation.
    #[serde(default)]
    pub grad_accumulation: Option<usize>,
    /// Tokens trained on (rows × context, padding included).
    pub tokens_seen: u64,
    /// Real (non-padding) target tokens trained on (absent in runs from before it was recorded).
    #[serde(default)]
    pub real_tokens: Option<u64>,
    /// Times each repeated document was trained on, on average (its manifest count × passes,
    /// as the run's batches actually held it).
    #[serde(default)]
    pub views_per_repeated: Option<f64>,
    /// The same for the canaries.
    #[serde(default)]
    pub views_per_canary: Option<f64>,
    /// Passes over this method's schedule.
    pub schedule_passes: f64,
    /// The budget rule, in words.
    pub budget_rule: String,
    /// Wall time of this invocation.
    pub wall_s: f64,
    /// Whether the run resumed from a checkpoint, and which.
    pub resumed_from: Option<usize>,
    /// f16 mixed precision: steps skipped because gradients overflowed (in the last process of a
    /// resumed run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
    /// The prepared corpus the run trained on.
    pub data_dir: PathBuf,
}

/// Evaluation batches: the first `eval_docs` documents of the validation, repeated, canary and
/// held-out canary splits, one document per row.
fn eval_batches(corpus: &PreparedCorpus, cfg: &ExperimentConfig) -> Vec<(HostBatch, Split, Vec<usize>)> {
    let mut out = Vec::new();
    for split in [Split::Validation, Split::Repeated, Split::Canary, Split::CanaryHeldOut] {
        let docs: Vec<usize> = corpus.manifest.indices(split).into_iter().take(cfg.train.eval_docs).collect();
        if docs.is_empty() {
            continue;
        }
        let batcher = Batcher::over_documents(&DocRows::of(corpus, &docs, cfg.data.context, cfg.train.batch_size));
        let mut cursor = Cursor::default();
        while let Some(b) = batcher.next_batch(&mut cursor) {
            let rows: Vec<usize> = b.started.iter().map(|&(_, d)| d as usize).collect();
            out.push((b, split, rows));
        }
    }
    out
}

/// Passes read at most when a budget is worked out: a bound that a budget rule cannot reach on
/// a non-empty schedule, so that no rule can loop forever.
const MAX_BUDGET_PASSES: u64 = 1_000_000;

/// The token budget of a run: how many optimizer steps, and what the run reads in them.
#[derive(Clone, Debug)]
struct Budget {
    /// Optimizer steps in all.
    total_steps: usize,
    /// Rows per optimizer step (batch × accumulation × devices).
    rows_per_step: usize,
    /// What the run's batches hold: rows, real tokens, views per document.
    consumed: Consumed,
    /// Rows of one pass over this method's own schedule.
    own_rows: u64,
    /// The rule, in words.
    rule: &'static str,
}

impl Budget {
    /// Every method takes as many optimizer steps as the standard model's schedule needs, unless
    /// the dedup rule says otherwise; `train.steps` sets the standard model's steps (and, but for
    /// `SameRealTokens`, the dedup model's).
    fn of(cfg: &ExperimentConfig, corpus: &PreparedCorpus) -> Result<Self, TrainError> {
        let t = &cfg.train;
        // The config's layout: the global batch, and so the budget, do not depend on the devices
        // a run is given (crate::parallel).
        let layout = StepLayout::of_config(t);
        let micro_per_step = layout.micro_per_step() as u64;
        let own = training_batcher(cfg, corpus)?;
        let pass = |b: &Batcher| b.consume(1, |_| false);
        let steps_for = |pass_batches: u64| {
            t.steps.unwrap_or_else(|| (t.epochs as u64 * pass_batches).div_ceil(micro_per_step) as usize).max(1)
        };
        let standard_cfg =
            ExperimentConfig { train: TrainConfig { method: Method::Standard, ..t.clone() }, ..cfg.clone() };
        let standard = training_batcher(&standard_cfg, corpus)?;
        let standard_pass = pass(&standard).batches;
        if t.steps.is_none() && micro_per_step > t.epochs as u64 * standard_pass {
            return Err(TrainError::Invalid(format!(
                "one optimizer step takes {micro_per_step} batches (train.grad_accumulation {} x {} \
                 device(s)), more than train.epochs {} pass(es) of the schedule hold ({} batches): the run \
                 would train on far more passes than asked; lower grad_accumulation or batch_size, or set \
                 train.steps",
                t.grad_accumulation,
                t.devices,
                t.epochs,
                t.epochs as u64 * standard_pass
            )));
        }
        let standard_steps = steps_for(standard_pass);
        let (total_steps, rule) = match (t.method, t.dedup_budget) {
            (Method::Dedup | Method::DedupFresh, DedupBudget::SameEpochs) => {
                (steps_for(pass(&own).batches), "dedup: same passes over its own schedule")
            }
            (Method::Dedup | Method::DedupFresh, DedupBudget::SameRealTokens) => {
                let batches = standard_steps as u64 * micro_per_step;
                let target = standard.consume(MAX_BUDGET_PASSES, |c| c.batches >= batches).real_tokens;
                let needed = own.consume(MAX_BUDGET_PASSES, |c| c.real_tokens >= target).batches;
                (needed.div_ceil(micro_per_step).max(1) as usize, "dedup: as many real tokens as the standard model")
            }
            _ => (standard_steps, "same optimizer steps as the standard model"),
        };
        let batches = total_steps as u64 * micro_per_step;
        let consumed = own.consume(MAX_BUDGET_PASSES, |c| c.batches >= batches);
        let rows_per_step = layout.global_batch();
        Ok(Self { total_steps, rows_per_step, consumed, own_rows: pass(&own).rows, rule })
    }

    /// Mean views of the documents of `split` (`None` when it has none).
    fn mean_views(&self, corpus: &PreparedCorpus, split: Split) -> Option<f64> {
        let docs = corpus.manifest.indices(split);
        (!docs.is_empty()).then(|| docs.iter().map(|&d| self.consumed.views[d] as f64).sum::<f64>() / docs.len() as f64)
    }
}

/// The training batcher of `cfg`'s method over `corpus` (gradient masking routes repeated and
/// canary documents to the sinks; every pass after the first reshuffled when the data asks for
/// it).
fn training_batcher(cfg: &ExperimentConfig, corpus: &PreparedCorpus) -> Result<Batcher, TrainError> {
    if cfg.train.method == Method::DedupFresh && corpus.manifest.dedup_fill_docs == 0 {
        return Err(TrainError::Invalid(format!(
            "train.method DedupFresh trains on fresh stories in place of removed repetitions, and the corpus \
             in {} holds none: prepare it with data.dedup_fill = true (and a source with stories to spare)",
            corpus.dir.display()
        )));
    }
    let mut batcher = Batcher::new(
        Arc::new(corpus.cache.clone()),
        Arc::new(corpus.schedule(cfg.train.method.schedule())?),
        cfg.data.context,
        cfg.train.batch_size,
        corpus.manifest.end_of_text,
        cfg.data.packing,
    )
    .with_ids(corpus.ids.clone());
    if let Some(seed) = cfg.data.reshuffle_seed() {
        batcher = batcher.with_reshuffle(seed);
    }
    if cfg.train.method == Method::GradientMasking {
        let flags =
            corpus.manifest.documents.iter().map(|d| matches!(d.split, Split::Repeated | Split::Canary)).collect();
        batcher = batcher.with_route_to_sinks(Arc::new(flags));
    }
    Ok(batcher)
}

/// The data cursor to start from: the one saved with checkpoint round `round` (checked against
/// the batcher's schedule), or the start.
fn starting_cursor(files: &RunDir, batcher: &Batcher, round: Option<usize>) -> Result<(Cursor, usize), TrainError> {
    let Some(r) = round else { return Ok((Cursor::default(), 0)) };
    let path = files.cursor(r);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let cursor: Cursor =
        serde_json::from_str(&text).map_err(|e| TrainError::corrupt(&path, format!("corrupt cursor: {e}")))?;
    batcher
        .check_cursor(&cursor)
        .map_err(|e| TrainError::corrupt(&path, format!("the cursor does not fit this run's schedule: {e}")))?;
    Ok((cursor, r))
}

/// Trains `cfg` into `run_dir` on `devices` (the first is the main device). With `resume`, the
/// run continues from its newest complete checkpoint. `data_dir` shares a prepared corpus
/// between runs (default: `run_dir/data`).
///
/// One function on purpose: it is the single place that wires burn-train's learner (loaders,
/// schedule, checkpointing, metrics, strategy), and those pieces share the step layout, the
/// budget and the run state; the parts with a meaning of their own (directory set-up, budget,
/// cursor, memory checks) are functions of their own.
pub fn train<B: TrainBackend>(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    data_dir: Option<&Path>,
    resume: bool,
    devices: Vec<B::Device>,
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    let files = RunDir::new(run_dir);
    let device =
        devices.first().cloned().ok_or(BackendError::Devices { count: 0, why: "train on at least one device" })?;
    cfg.validate()?;
    let t = &cfg.train;
    let layout = StepLayout::on(t, devices.len())?;
    // Checked before anything is written, also on one device: the config asks for a strategy this
    // backend cannot run.
    let strategy = match (t.parallel, devices.len()) {
        (Parallel::Ddp, _) => Some(crate::parallel::ddp_strategy::<B>(devices.clone())?),
        (Parallel::MultiDevice, 1) => None,
        (Parallel::MultiDevice, _) => {
            Some(ExecutionStrategy::MultiDevice(devices.clone(), MultiDeviceOptim::OptimMainDevice))
        }
    };
    let (_lock, resume_round, corpus, model_cfg) = set_up_run_dir(cfg, run_dir, data_dir, resume)?;
    let budget = Budget::of(cfg, &corpus)?;
    let rounds = budget.total_steps.div_ceil(t.eval_every);
    let micro_per_step = layout.micro_per_step() as u64;
    let batcher = training_batcher(cfg, &corpus)?;
    let (cursor, round) = starting_cursor(&files, &batcher, resume_round)?;
    let metrics = files.metrics();
    if resume {
        truncate_metrics(&metrics, (round * t.eval_every) as u64, round as u64)?;
    } else {
        let _ = std::fs::remove_file(&metrics);
    }
    // burn-train steps the scheduler once per iteration (one micro-batch per device), so with
    // gradient accumulation the schedule is laid out in iterations, not optimizer steps.
    let accum = layout.grad_accumulation;
    let schedule_lr = WarmupCosine {
        peak: t.lr,
        min: t.min_lr,
        warmup: t.warmup_steps * accum,
        total: budget.total_steps * accum,
        step: 0,
        iterations_per_step: accum,
    };
    let interrupter = Interrupter::new();
    let micro_per_round = t.eval_every as u64 * micro_per_step;
    // The train step waits for the checkpointer threads of the rounds saved so far (see
    // `checkpoint`: the fusion backends abort otherwise).
    let checkpoints = Arc::new(CheckpointBarrier::stopping(interrupter.clone()));
    let counting = StepCounting {
        micro_per_step,
        iterations_per_step: accum as u64,
        log_every: t.log_every as u64,
        schedule: schedule_lr.clone(),
        tokens_per_micro: (t.batch_size * cfg.data.context) as u64,
    };
    let start = Progress { micro_done: (round * t.eval_every) as u64 * micro_per_step, rounds_done: round as u64 };
    let log = Arc::new(
        RunState::new(metrics, counting, start, interrupter.clone())
            .with_checkpoint_barrier(checkpoints.clone(), micro_per_round),
    );
    let train_loader = TrainLoader::<B>::new(
        batcher,
        cursor,
        round,
        micro_per_round,
        budget.total_steps as u64 * micro_per_step,
        run_dir.to_path_buf(),
        device.clone(),
    );
    let eval_loader = EvalLoader::<B::InnerBackend>::new(eval_batches(&corpus, cfg), log.clone(), device.clone());

    check_memory::<B>(cfg, &model_cfg)?;
    B::seed(&device, t.seed);
    let lm = model_cfg.init::<B>(&device)?;
    let optim_cfg = t.optim();
    let m = &corpus.manifest;
    let docs = EvalDocs {
        tracked: m.indices(Split::Repeated).into_iter().take(TRACKED_DOCS).collect(),
        dev: m.repeated_half(Half::Dev).into_iter().collect(),
    };
    let model = TrainingLm::new(lm, log.clone(), optim_cfg.clip_norm.map(f64::from), Arc::new(docs))
        .with_precision(t.precision, t.loss_scale.clone())
        .with_micro_batches_per_step(layout.micro_per_step());
    let optim = optim_cfg.init::<B, TrainingLm<B>>();

    let mut training = SupervisedTraining::new(run_dir, Arc::new(train_loader), Arc::new(eval_loader))
        .with_file_checkpointer(AtomicFileRecorder::counting(checkpoints.clone()))
        .with_checkpointing_strategy(KeepCompleteRounds {
            keep: t.keep_checkpoints,
            run_dir: Some(run_dir.to_path_buf()),
        })
        .with_application_logger(None)
        // metrics.jsonl is the run's metric log; burn-train's own file logger panics on a write
        // error (a full disk), so it is replaced by one that keeps nothing.
        .with_metric_logger(DiscardMetrics)
        .with_interrupter(interrupter)
        .num_epochs(rounds)
        .metric_train_numeric(NamedLoss::new(LossKey::Training))
        .metric_train_numeric(LearningRateMetric::new());
    for key in EvalKey::ALL {
        training = training.metric_valid_numeric(NamedLoss::new(LossKey::Eval(key)));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        training = training.renderer(QuietRenderer);
    }
    if accum > 1 {
        training = training.grads_accumulation(accum);
    }
    if let Some(strategy) = strategy {
        training = training.with_training_strategy(strategy.into());
    }
    if let Some(r) = resume_round {
        training = training.checkpoint(r);
    }
    let result = training.launch(Learner::new(model, optim, schedule_lr));
    if let Some(failure) = log.failure() {
        return Err(TrainError::NonFinite(failure));
    }
    if let Some(failure) = checkpoints.failure().or_else(|| log.write_failure()) {
        return Err(TrainError::Stopped(failure));
    }
    save_model(&result.model.lm, &model_cfg, &files.final_model())?;
    remove_stale_checkpoint_files(run_dir);
    let rows = budget.consumed.rows;
    let summary = TrainSummary {
        schema_version: TRAIN_SCHEMA,
        run_id: cfg.run_id(),
        method: t.method,
        steps: budget.total_steps,
        rows_per_step: budget.rows_per_step,
        devices: Some(layout.devices),
        grad_accumulation: Some(layout.grad_accumulation),
        tokens_seen: rows * cfg.data.context as u64,
        real_tokens: Some(budget.consumed.real_tokens),
        views_per_repeated: budget.mean_views(&corpus, Split::Repeated),
        views_per_canary: budget.mean_views(&corpus, Split::Canary),
        schedule_passes: rows as f64 / budget.own_rows.max(1) as f64,
        budget_rule: budget.rule.to_string(),
        wall_s: started.elapsed().as_secs_f64(),
        resumed_from: resume_round,
        skipped_steps: t.precision.scales_loss().then(|| log.skipped_steps()),
        data_dir: corpus.dir.clone(),
    };
    write_atomic_checked(&files.summary(), &serde_json::to_vec_pretty(&summary).expect("serialises"))?;
    Ok(summary)
}

/// Refuses, before the model is built, a step that cannot fit: the device memory the run states
/// (`train.device_memory_gib`), and on the CPU backends the host's.
fn check_memory<B: TrainBackend>(cfg: &ExperimentConfig, model_cfg: &ModelConfig) -> Result<(), TrainError> {
    let t = &cfg.train;
    let context = cfg.data.context;
    if let Some(device_gib) = t.device_memory_gib {
        memsinks_model::memory::check_device_memory(model_cfg, t.batch_size, t.grad_accumulation, context, device_gib)?;
    }
    if memsinks_model::memory::computes_on_host::<B>() {
        memsinks_model::memory::check_host_memory(
            model_cfg.training_memory(t.batch_size, context).total(),
            "training this model",
            "use a smaller model, train.batch_size (grad_accumulation keeps the effective batch) or data.context",
        )?;
    }
    Ok(())
}

/// Reads `train.json` of a finished run.
pub fn load_summary(run_dir: &Path) -> Result<TrainSummary, TrainError> {
    let path = RunDir::new(run_dir).summary();
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    // A summary written with a checksum must still match it (older runs have none).
    if let memsinks_core::files::ChecksumCheck::Differs { .. } = memsinks_core::files::check_checksum(&path, None)? {
        return Err(TrainError::corrupt(
            &path,
            "does not match its checksum (train.json.sha256): it was edited or damaged, so what it says \
             about the run cannot be trusted; retrain the run",
        ));
    }
    let summary: TrainSummary =
        serde_json::from_str(&text).map_err(|e| TrainError::corrupt(&path, format!("{e}; the run did not finish")))?;
    memsinks_core::files::check_schema(&path, summary.schema_version, TRAIN_SCHEMA)?;
    Ok(summary)
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
            Some(recorded) => recorded.open(dir, memsinks_data::Verify::Fast)?,
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
        Ok(load_model::<B>(&RunDir::new(&self.dir).final_model(), device)?)
    }
}

/// Reads the resolved configuration of a run directory (for `--resume`).
pub fn load_run_config(run_dir: &Path) -> Result<ExperimentConfig, TrainError> {
    ExperimentConfig::load(&RunDir::new(run_dir).config(), &[])
}
