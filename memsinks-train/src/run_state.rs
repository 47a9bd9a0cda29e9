//! The run state: what is shared by the train step, the evaluation step and the loaders of one run
//! (step count, evaluation accumulators, the non-finite-loss stop, the checkpoint barrier), and
//! the writer of `metrics.jsonl`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::train::Interrupter;

use crate::amp::{ScaleState, ScaleVerdict};
use crate::checkpoint::CheckpointBarrier;
use crate::learner::{LossKey, StepOutput};
use crate::metric_log::{EvalKey, EvalRecord, MetricsLine, TrainRecord};
use crate::optim::WarmupCosine;

/// State shared by the train step, the evaluation step and the loaders of one run: step count,
/// the JSON-lines metric log, evaluation accumulators and the non-finite-loss stop.
pub struct RunState {
    path: PathBuf,
    micro_per_step: u64,
    iterations_per_step: u64,
    log_every: u64,
    schedule: WarmupCosine,
    tokens_per_micro: u64,
    /// Micro-batches trained so far.
    micro: AtomicU64,
    window: Mutex<LogWindow>,
    eval: Mutex<EvalAccumulator>,
    failure: Mutex<Option<String>>,
    /// The first metric line that could not be written (training stops then).
    write_failure: Mutex<Option<String>>,
    /// Steps skipped because f16 gradients overflowed ([`crate::amp`]), this process.
    skipped: AtomicU64,
    interrupter: Interrupter,
    echo: bool,
    /// Micro-batches trained before this process started (resume).
    micro_at_start: u64,
    /// The checkpointer threads' progress, and micro-batches per saved round.
    checkpoints: Option<(Arc<CheckpointBarrier>, u64)>,
}

impl std::fmt::Debug for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunState").field("path", &self.path).field("step", &self.step()).finish()
    }
}

/// Training since the last `train` line.
#[derive(Debug)]
struct LogWindow {
    started: Instant,
    tokens: u64,
    loss_sum: f64,
    micro_batches: u64,
    /// f16 mixed precision: the loss scale after the last step, and the steps skipped.
    scaling: Option<(f64, u64)>,
}

impl LogWindow {
    fn new() -> Self {
        Self { started: Instant::now(), tokens: 0, loss_sum: 0.0, micro_batches: 0, scaling: None }
    }
}

#[derive(Debug, Default)]
struct EvalAccumulator {
    sums: BTreeMap<EvalKey, (f64, usize)>,
    per_doc: BTreeMap<usize, (f64, f64)>,
    rounds: u64,
}

/// How a run counts its steps, for its [`RunState`].
#[derive(Clone, Debug)]
pub struct StepCounting {
    /// Micro-batches per optimizer step, over all devices.
    pub micro_per_step: u64,
    /// Scheduler steps (burn-train iterations) per optimizer step: the gradient accumulation.
    pub iterations_per_step: u64,
    /// Optimizer steps between `train` lines.
    pub log_every: u64,
    /// The learning-rate schedule (its rate is logged).
    pub schedule: WarmupCosine,
    /// Tokens of one full micro-batch (rows × context, padding included), as `tokens_seen`
    /// counts them: the micro-batch that ends a pass over the schedule may hold fewer rows.
    pub tokens_per_micro: u64,
}

/// Where a run starts: from scratch, or after `micro_done` micro-batches and `rounds_done`
/// evaluation rounds (resume).
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Micro-batches trained before this process started.
    pub micro_done: u64,
    /// Evaluation rounds completed before this process started.
    pub rounds_done: u64,
}

impl RunState {
    /// A log appending to `path`, counting steps as `counting` says from `start`; `interrupter`
    /// stops training on a non-finite loss.
    pub fn new(path: PathBuf, counting: StepCounting, start: Progress, interrupter: Interrupter) -> Self {
        let StepCounting { micro_per_step, iterations_per_step, log_every, schedule, tokens_per_micro } = counting;
        Self {
            path,
            micro_per_step,
            iterations_per_step,
            log_every,
            schedule,
            tokens_per_micro,
            micro: AtomicU64::new(start.micro_done),
            window: Mutex::new(LogWindow::new()),
            eval: Mutex::new(EvalAccumulator { rounds: start.rounds_done, ..Default::default() }),
            failure: Mutex::new(None),
            write_failure: Mutex::new(None),
            skipped: AtomicU64::new(0),
            interrupter,
            echo: !std::io::IsTerminal::is_terminal(&std::io::stdout()),
            micro_at_start: start.micro_done,
            checkpoints: None,
        }
    }

    /// Makes [`RunState::wait_for_checkpoints`] wait on `barrier`; burn-train saves a round every
    /// `micro_per_round` micro-batches.
    pub fn with_checkpoint_barrier(mut self, barrier: Arc<CheckpointBarrier>, micro_per_round: u64) -> Self {
        self.checkpoints = Some((barrier, micro_per_round.max(1)));
        self
    }

    /// Blocks until burn-train's checkpointer threads have finished reading every round this
    /// process saved before the coming micro-batch (see [`crate::checkpoint`]: on the fusion
    /// backends, training while they read aborts the process).
    pub fn wait_for_checkpoints(&self) {
        if let Some((barrier, micro_per_round)) = &self.checkpoints {
            let trained_here = self.micro.load(Ordering::SeqCst) - self.micro_at_start;
            barrier.wait_for_rounds((trained_here / micro_per_round) as usize);
        }
    }

    fn append(&self, line: &MetricsLine) {
        let line = serde_json::to_string(line).expect("metrics records serialise");
        if self.echo {
            eprintln!("{line}");
        }
        let written = memsinks_core::files::open_in_place(&self.path, true).and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            let message = format!("{}: {e}", self.path.display());
            self.interrupter.stop(Some(&message));
            self.write_failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(message);
        }
    }

    /// Optimizer steps completed so far.
    pub fn step(&self) -> u64 {
        self.micro.load(Ordering::SeqCst) / self.micro_per_step
    }

    pub(crate) fn after_train(&self, loss: f64, tokens: u64) {
        let micro = self.micro.fetch_add(1, Ordering::SeqCst) + 1;
        let step = micro / self.micro_per_step;
        if !loss.is_finite() {
            self.fail(format!(
                "non-finite training loss ({loss}) at step {step}; the last complete checkpoint is kept"
            ));
            return;
        }
        let mut w = self.window.lock().expect("poisoned");
        w.tokens += tokens;
        w.loss_sum += loss;
        w.micro_batches += 1;
        if micro.is_multiple_of(self.log_every * self.micro_per_step) {
            let secs = w.started.elapsed().as_secs_f64();
            let line = MetricsLine::Train(TrainRecord {
                step,
                loss: w.loss_sum / w.micro_batches as f64,
                lr: self.schedule.lr_at((step.max(1) * self.iterations_per_step) as usize),
                tokens_per_s: w.tokens as f64 / secs.max(1e-9),
                tokens_seen: micro * self.tokens_per_micro,
                loss_scale: w.scaling.map(|(scale, _)| scale),
                skipped_steps: w.scaling.map(|(_, skipped)| skipped),
            });
            *w = LogWindow::new();
            drop(w);
            self.append(&line);
        }
    }

    /// Records the loss scale after an f16 step and whether the step was skipped; stops the run
    /// when the scale gave up.
    pub(crate) fn after_scaled_step(&self, state: ScaleState, verdict: ScaleVerdict) {
        let skipped = verdict != ScaleVerdict::Step;
        if skipped {
            self.skipped.fetch_add(1, Ordering::SeqCst);
        }
        {
            let mut w = self.window.lock().expect("poisoned");
            let before = w.scaling.map_or(0, |(_, s)| s);
            w.scaling = Some((state.scale, before + skipped as u64));
        }
        if verdict == ScaleVerdict::GiveUp {
            self.fail(format!(
                "f16 gradients overflowed in {} steps in a row (loss scale now {:e}) at step {}: the model does not train in f16; use bf16 (cuda) or f32",
                state.skips,
                state.scale,
                self.step()
            ));
        }
    }

    /// Steps skipped by f16 loss scaling in this process.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped.load(Ordering::SeqCst)
    }

    /// Why `metrics.jsonl` could not be written, if it could not.
    pub fn write_failure(&self) -> Option<String> {
        self.write_failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn fail(&self, msg: String) {
        *self.failure.lock().expect("poisoned") = Some(msg.clone());
        self.interrupter.stop(Some(&msg));
    }

    pub(crate) fn add_eval(&self, out: &StepOutput, per_doc: &[(usize, f64, f64)]) {
        let mut acc = self.eval.lock().expect("poisoned");
        for &(k, mean, n) in &out.losses {
            let LossKey::Eval(k) = k else { continue };
            let e = acc.sums.entry(k).or_default();
            e.0 += mean * n as f64;
            e.1 += n;
        }
        for &(doc, with, without) in per_doc {
            acc.per_doc.insert(doc, (with, without));
        }
    }

    /// Writes the evaluation line of the round that just ended and resets the accumulators.
    pub fn flush_eval(&self) {
        let mut acc = self.eval.lock().expect("poisoned");
        acc.rounds += 1;
        let mut record = EvalRecord { round: acc.rounds, step: self.step(), ..Default::default() };
        for (k, (sum, n)) in &acc.sums {
            record.set(*k, sum / (*n).max(1) as f64);
        }
        record.rep_doc_losses = std::mem::take(&mut acc.per_doc);
        acc.sums.clear();
        drop(acc);
        self.append(&MetricsLine::Eval(record));
    }

    /// The failure that stopped training, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("poisoned").clone()
    }
}
