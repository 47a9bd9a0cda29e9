//! The relearning test: after a method removed memorization, fine-tune the treated model on a
//! few of the forgotten documents and measure how much of the memorization of the *other*
//! forgotten documents comes back. Memorization that was only hidden (suppressed, not removed)
//! returns quickly and for documents never shown again.
//!
//! Fine-tuning on any text also lowers the loss of text in general, so every relearning run has
//! a control: the same fine-tuning, from the same model, on as many *held-out* documents
//! (validation documents the probe does not score). Only the drop below the control's counts as
//! memorization coming back. "Removed" has one definition for every method: the other forgotten
//! documents' loss under the treated model minus their loss under the untreated model in the
//! mode it memorized them in (`train` for a plain model, each document's own sinks on for
//! MemSinks). And because a method pushed far past the point where it forgot (gradient ascent
//! at its last step) has lost general ability that any fine-tuning restores, the test can start
//! from a matched point: the first point of the method's curve whose forget-set loss rose by a
//! given amount (the study uses what dropping the sinks achieves).
//!
//! A control that breaks the model measures damage, not recovery: when the control's fine-tuning
//! moves the validation loss by more than `max_control_delta_val`, the point records it and
//! reports no recovery (choose a smaller learning rate or fewer steps). Which documents are
//! relearned is drawn `draws` times, so a result does not rest on one story.

use burn::module::AutodiffModule;
use memsinks_data::rng::SplitMix64;
use memsinks_data::{DocRows, LmBatch, Split};
use memsinks_model::loss::lm_loss;
use memsinks_model::TrainBackend;
use memsinks_model::{MemSinkLm, MlpMode};
use memsinks_train::optim::step;
use memsinks_train::OptimConfig;
use serde::{Deserialize, Serialize};

use crate::finetune::Cycle;
use crate::probe::Probe;

/// Settings of the relearning test (a method file's `relearn`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelearnConfig {
    /// Numbers of forgotten documents relearned, one measurement each (e.g. `[1, 4, 16]`).
    pub sizes: Vec<usize>,
    /// Fine-tuning steps.
    pub steps: usize,
    /// Learning rate (constant, AdamW without decay).
    pub lr: f64,
    /// Rows per batch.
    pub batch_size: usize,
    /// Start from the first point of the method's curve whose forget-set loss rose by at least
    /// this much (nats) instead of from its last point; the last point when none did.
    #[serde(default)]
    pub start_at_delta_forget: Option<f64>,
    /// Random draws of which forgotten documents are relearned (and which held-out documents the
    /// control fine-tunes on); each gives one point per size.
    #[serde(default = "one")]
    pub draws: usize,
    /// The largest validation-loss change (nats, either sign) the control may cause for the model
    /// to count as intact; beyond it no recovery is reported.
    #[serde(default = "default_max_control_delta_val")]
    pub max_control_delta_val: f64,
}

fn one() -> usize {
    1
}

fn default_max_control_delta_val() -> f64 {
    DEFAULT_MAX_CONTROL_DELTA_VAL
}

/// The default bound on the control's validation-loss change.
pub const DEFAULT_MAX_CONTROL_DELTA_VAL: f64 = 0.05;

/// Loss increase (nats) below which a method counts as having removed nothing.
pub const MIN_REMOVED: f64 = 0.01;

/// Where relearning started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelearnStart {
    /// The curve's setting at the start (step, pruned fraction, or 1 for dropped sinks).
    pub setting: f64,
    /// The forget-set loss change at the start, against the untreated model.
    pub delta_forget: f64,
    /// The validation loss change at the start.
    pub delta_val: f64,
    /// The ΔL_forget asked for (`start_at_delta_forget`), if any.
    pub target_delta_forget: Option<f64>,
}

/// One relearning measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelearnPoint {
    /// Forgotten documents fine-tuned on.
    pub relearned: usize,
    /// Which draw of relearned documents (0-based).
    #[serde(default)]
    pub draw: usize,
    /// Other forgotten documents measured (never shown during relearning).
    pub others: usize,
    /// Their mean loss under the untreated model, in the mode it memorized them in.
    pub others_original: f64,
    /// Their mean loss after the method.
    pub others_treated: f64,
    /// Their mean loss after relearning.
    pub others_relearned: f64,
    /// Their mean loss after the control: the same fine-tuning on as many held-out documents
    /// (absent in results written before the control existed, or when the corpus has too few).
    #[serde(default)]
    pub others_control: Option<f64>,
    /// Validation loss change from the treated model to the relearned one.
    #[serde(default)]
    pub delta_val_relearned: Option<f64>,
    /// Validation loss change from the treated model to the control.
    #[serde(default)]
    pub delta_val_control: Option<f64>,
    /// Whether the control left the model intact (its |ΔL_val| within the configured bound);
    /// `None` without a control.
    #[serde(default)]
    pub control_intact: Option<bool>,
    /// The others' loss drop beyond the control, in nats: `control − relearned`; `None` without
    /// an intact control.
    #[serde(default)]
    pub recovered_nats: Option<f64>,
    /// Share of the removed memorization that came back beyond the control:
    /// `(control − relearned) / (treated − original)`; `None` without an intact control, and when
    /// the method removed almost nothing (less than [`MIN_REMOVED`] nats), where the ratio
    /// means nothing.
    pub recovered: Option<f64>,
}

impl std::fmt::Display for RelearnStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "relearning from setting {} (ΔL_forget {:+.3}, ΔL_val {:+.3}",
            self.setting, self.delta_forget, self.delta_val
        )?;
        match self.target_delta_forget {
            Some(t) => write!(f, "; asked for ΔL_forget ≥ {t:.3})"),
            None => write!(f, ")"),
        }
    }
}

impl std::fmt::Display for RelearnPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loss = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("{x:.3}"));
        write!(
            f,
            "relearn {:>2} docs (draw {}): others' loss {:.3} -> {:.3}, control {} (original {:.3}), ΔL_val {} \
             (control {}): ",
            self.relearned,
            self.draw,
            self.others_treated,
            self.others_relearned,
            loss(self.others_control),
            self.others_original,
            loss(self.delta_val_relearned),
            loss(self.delta_val_control),
        )?;
        match (self.control_intact, self.recovered) {
            (Some(false), _) => write!(f, "the control changed the model, no recovery reported"),
            (_, Some(x)) => write!(f, "{:.0} % recovered", 100.0 * x),
            (_, None) => write!(f, "n/a"),
        }
    }
}

/// A treated model and the modes the test compares it in.
pub struct RelearnFrom<'m, B: TrainBackend> {
    /// The untreated model.
    pub original: &'m MemSinkLm<B::InnerBackend>,
    /// The mode the untreated model memorized in.
    pub original_mode: &'m MlpMode,
    /// The model relearning starts from.
    pub treated: &'m MemSinkLm<B>,
    /// The mode the treated model runs in.
    pub treated_mode: &'m MlpMode,
}

/// Runs the test: in each draw the forgotten documents are shuffled, the first `n` are relearned
/// and the documents after the largest `n` (up to the probe's evaluation count) are measured; the
/// control fine-tunes on `n` shuffled validation documents the probe does not score. Sizes that
/// leave no other document are skipped.
pub fn relearn<B: TrainBackend>(
    from: &RelearnFrom<'_, B>,
    probe: &Probe<'_>,
    cfg: &RelearnConfig,
    device: &B::Device,
) -> Vec<RelearnPoint> {
    let sizes: Vec<usize> = cfg.sizes.iter().copied().filter(|&n| n > 0 && n < probe.forget_docs.len()).collect();
    let Some(&largest) = sizes.iter().max() else { return Vec::new() };
    let mode = from.treated_mode;
    let treated_inner = from.treated.valid();
    let val_treated = probe.nll(&treated_inner, &probe.val_docs, mode, device);
    let mut points = Vec::new();
    for draw in 0..cfg.draws.max(1) {
        let mut rng = SplitMix64::new(0x5E1E_A500 ^ draw as u64);
        let mut forgotten = probe.forget_docs.clone();
        let mut held_out: Vec<usize> =
            probe.corpus.manifest.indices(Split::Validation).into_iter().skip(probe.val_docs.len()).collect();
        rng.shuffle(&mut forgotten);
        rng.shuffle(&mut held_out);
        let others: Vec<usize> = forgotten[largest..].iter().copied().take(probe.eval_forget.len().max(1)).collect();
        let others_original = probe.nll(from.original, &others, from.original_mode, device);
        let others_treated = probe.nll(&treated_inner, &others, mode, device);
        // Fine-tunes the treated model on `docs`; returns (others' loss, validation loss) after.
        let fine_tune = |docs: &[usize]| {
            let mut batches = Cycle::new(&DocRows::of(probe.corpus, docs, probe.context, cfg.batch_size));
            let optim_cfg = OptimConfig { weight_decay: 0.0, ..Default::default() };
            let mut optim = optim_cfg.init::<B, MemSinkLm<B>>();
            let mut model = from.treated.clone();
            for _ in 0..cfg.steps {
                let batch: LmBatch<B> = batches.next(device);
                let loss = lm_loss(&model, &batch, mode);
                model = step(&mut optim, model, loss, cfg.lr, &optim_cfg);
            }
            let model = model.valid();
            (probe.nll(&model, &others, mode, device), probe.nll(&model, &probe.val_docs, mode, device))
        };
        for &n in &sizes {
            let (others_relearned, val_relearned) = fine_tune(&forgotten[..n]);
            let control = (held_out.len() >= n).then(|| fine_tune(&held_out[..n]));
            let removed = others_treated - others_original;
            let intact = control.map(|(_, val)| (val - val_treated).abs() <= cfg.max_control_delta_val);
            let recovered_nats = control.filter(|_| intact == Some(true)).map(|(others, _)| others - others_relearned);
            points.push(RelearnPoint {
                relearned: n,
                draw,
                others: others.len(),
                others_original,
                others_treated,
                others_relearned,
                others_control: control.map(|c| c.0),
                delta_val_relearned: Some(val_relearned - val_treated),
                delta_val_control: control.map(|c| c.1 - val_treated),
                control_intact: intact,
                recovered_nats,
                recovered: recovered_nats.filter(|_| removed >= MIN_REMOVED).map(|nats| nats / removed),
            });
        }
    }
    points
}
