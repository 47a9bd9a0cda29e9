//! The metric log, `metrics.jsonl`: the typed records a run appends during training (its losses and
//! periodic evals), shared by the writer ([`crate::run_state::RunState`]) and every reader.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Repeated documents whose losses are logged at every evaluation: the first this many of the
/// manifest's repeated split.
pub const TRACKED_DOCS: usize = 16;

/// The evaluation losses a run logs: the one list behind burn-train's dashboard metrics, the
/// learner that computes them and [`EvalRecord`]'s fields (each key's [`EvalKey::name`] is its
/// field's name in `metrics.jsonl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EvalKey {
    /// Held-out documents.
    ValLoss,
    /// Repeated documents, each with its own sinks.
    RepLossSinks,
    /// Repeated documents with the sinks dropped.
    RepLossNosinks,
    /// Canaries, each with its own sinks.
    CanaryLossSinks,
    /// Canaries with the sinks dropped.
    CanaryLossNosinks,
    /// Held-out canaries, never trained on.
    CanaryHeldoutLoss,
    /// The dev half of the repeated documents, each with its own sinks.
    RepDevSinks,
    /// The dev half with the sinks dropped.
    RepDevNosinks,
    /// The test half, each with its own sinks.
    RepTestSinks,
    /// The test half with the sinks dropped.
    RepTestNosinks,
}

impl EvalKey {
    /// Every key.
    pub const ALL: [EvalKey; 10] = [
        EvalKey::ValLoss,
        EvalKey::RepLossSinks,
        EvalKey::RepLossNosinks,
        EvalKey::CanaryLossSinks,
        EvalKey::CanaryLossNosinks,
        EvalKey::CanaryHeldoutLoss,
        EvalKey::RepDevSinks,
        EvalKey::RepDevNosinks,
        EvalKey::RepTestSinks,
        EvalKey::RepTestNosinks,
    ];

    /// The metric's name: its field in `metrics.jsonl` and its label on burn-train's dashboard.
    pub fn name(self) -> &'static str {
        match self {
            EvalKey::ValLoss => "val_loss",
            EvalKey::RepLossSinks => "rep_loss_sinks",
            EvalKey::RepLossNosinks => "rep_loss_nosinks",
            EvalKey::CanaryLossSinks => "canary_loss_sinks",
            EvalKey::CanaryLossNosinks => "canary_loss_nosinks",
            EvalKey::CanaryHeldoutLoss => "canary_heldout_loss",
            EvalKey::RepDevSinks => "rep_dev_sinks",
            EvalKey::RepDevNosinks => "rep_dev_nosinks",
            EvalKey::RepTestSinks => "rep_test_sinks",
            EvalKey::RepTestNosinks => "rep_test_nosinks",
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricsLine {
    /// Training progress, every `log_every` optimizer steps.
    Train(TrainRecord),
    /// The evaluation at the end of a round.
    Eval(EvalRecord),
}

impl MetricsLine {
    /// The optimizer step the line was written at.
    pub fn step(&self) -> u64 {
        match self {
            MetricsLine::Train(t) => t.step,
            MetricsLine::Eval(e) => e.step,
        }
    }
}

/// Training progress over the last `log_every` steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Optimizer step.
    pub step: u64,
    /// Mean training loss over the window.
    pub loss: f64,
    /// Learning rate at this step.
    pub lr: f64,
    /// Throughput over the window (rows × context per second, padding included).
    pub tokens_per_s: f64,
    /// Tokens trained on so far (rows × context, padding included).
    pub tokens_seen: u64,
    /// f16 mixed precision: the loss scale after the window's last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// f16 mixed precision: steps of the window skipped because gradients overflowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
}

/// The evaluation after one round: mean losses per split (absent where the split is empty) and
/// the tracked repeated documents' losses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Round (1-based).
    pub round: u64,
    /// Optimizer step.
    pub step: u64,
    /// Validation loss (sinks dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Repeated documents, each with its own sinks on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rep_loss_sinks: Option<f64>,
    /// Repeated documents with the sinks dropped (equal to `rep_loss_sinks` without sinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rep_loss_nosinks: Option<f64>,
    /// Canaries, each with its own sinks on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_loss_sinks: Option<f64>,
    /// Canaries with the sinks dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_loss_nosinks: Option<f64>,
    /// Held-out canaries, never trained on (sinks dropped): the unmemorized canary level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_heldout_loss: Option<f64>,
    /// The dev half of the repeated documents ([`memsinks_data::Half`]), each with its own sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rep_dev_sinks: Option<f64>,
    /// The dev half with the sinks dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rep_dev_nosinks: Option<f64>,
    /// The test half, each with its own sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rep_test_sinks: Option<f64>,
    /// The test half with the sinks dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rep_test_nosinks: Option<f64>,
    /// Per tracked repeated document (corpus index): `(loss with its sinks, loss without)`.
    #[serde(default, deserialize_with = "doc_index_keys")]
    pub rep_doc_losses: BTreeMap<usize, (f64, f64)>,
}

/// Reads the document map with its keys as JSON writes them (strings). serde_json parses such
/// keys as integers only when it deserializes the map itself; inside the `kind`-tagged
/// [`MetricsLine`] serde buffers the object first and loses that, so the keys are parsed here.
fn doc_index_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<usize, (f64, f64)>, D::Error> {
    let raw: BTreeMap<String, (f64, f64)> = BTreeMap::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| k.parse().map(|k| (k, v)).map_err(|_| serde::de::Error::custom(format!("document index `{k}`"))))
        .collect()
}

impl EvalRecord {
    /// The field of `key`.
    fn slot(&mut self, key: EvalKey) -> &mut Option<f64> {
        match key {
            EvalKey::ValLoss => &mut self.val_loss,
            EvalKey::RepLossSinks => &mut self.rep_loss_sinks,
            EvalKey::RepLossNosinks => &mut self.rep_loss_nosinks,
            EvalKey::CanaryLossSinks => &mut self.canary_loss_sinks,
            EvalKey::CanaryLossNosinks => &mut self.canary_loss_nosinks,
            EvalKey::CanaryHeldoutLoss => &mut self.canary_heldout_loss,
            EvalKey::RepDevSinks => &mut self.rep_dev_sinks,
            EvalKey::RepDevNosinks => &mut self.rep_dev_nosinks,
            EvalKey::RepTestSinks => &mut self.rep_test_sinks,
            EvalKey::RepTestNosinks => &mut self.rep_test_nosinks,
        }
    }

    /// Sets the loss of `key`.
    pub fn set(&mut self, key: EvalKey, value: f64) {
        *self.slot(key) = Some(value);
    }
}

/// Reads every line of a `metrics.jsonl`.
///
/// # Errors
/// When the file cannot be read or a line is not a metrics record (naming the line).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::corrupt(path, format!("line {}: not a metrics record: {e}", i + 1)))
        })
        .collect()
}

/// The evaluation records of a `metrics.jsonl`, in order.
///
/// # Errors
/// As [`read_metrics`].
pub fn read_evals(path: &Path) -> Result<Vec<EvalRecord>, TrainError> {
    Ok(read_metrics(path)?
        .into_iter()
        .filter_map(|l| match l {
            MetricsLine::Eval(e) => Some(e),
            MetricsLine::Train(_) => None,
        })
        .collect())
}

/// Keeps the lines of `metrics.jsonl` up to evaluation round `max_round` and training step
/// `max_step`, so that a resumed run does not log a round twice. Lines that do not parse (a
/// write cut by a kill) are dropped.
pub(crate) fn truncate_metrics(path: &Path, max_step: u64, max_round: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let mut kept = String::new();
    for line in text.lines() {
        let keep = match serde_json::from_str::<MetricsLine>(line) {
            Ok(MetricsLine::Eval(e)) => e.round <= max_round,
            Ok(MetricsLine::Train(t)) => t.step <= max_step,
            Err(_) => false,
        };
        if keep {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    Ok(memsinks_core::files::write_atomic(path, kept.as_bytes())?)
}

/// burn-train's metric logger slot, filled with one that keeps nothing: the run's metrics are
/// written by [`crate::run_state::RunState`] (`metrics.jsonl`), and burn-train's file logger panics
/// when a write fails. Nothing of burn-train reads metrics back here (no metric-based
/// checkpointing or early stopping).
pub struct DiscardMetrics;

impl burn::train::logger::MetricLogger for DiscardMetrics {
    fn log(
        &mut self,
        _update: burn::train::metric::store::MetricsUpdate,
        _epoch: usize,
        _split: &burn::train::metric::store::Split,
    ) {
    }

    fn read_numeric(
        &mut self,
        _name: &str,
        _epoch: usize,
        _split: &burn::train::metric::store::Split,
    ) -> Result<Vec<burn::train::metric::NumericEntry>, String> {
        Ok(Vec::new())
    }

    fn log_metric_definition(&mut self, _definition: burn::train::metric::MetricDefinition) {}

    fn log_epoch_summary(&mut self, _summary: burn::train::metric::store::EpochSummary) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_keep_the_old_layout() {
        let mut e = EvalRecord { round: 2, step: 40, ..Default::default() };
        e.set(EvalKey::ValLoss, 3.5);
        e.set(EvalKey::RepLossSinks, 1.25);
        e.rep_doc_losses.insert(7, (1.0, 2.0));
        let line = serde_json::to_string(&MetricsLine::Eval(e.clone())).unwrap();
        // The layout older runs wrote: a `kind` tag, flat losses, documents keyed by index.
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "eval");
        assert_eq!(v["rep_doc_losses"]["7"], serde_json::json!([1.0, 2.0]));
        assert!(v.get("canary_loss_sinks").is_none());
        assert_eq!(serde_json::from_str::<MetricsLine>(&line).unwrap(), MetricsLine::Eval(e));
    }

    #[test]
    fn every_eval_key_sets_the_field_of_that_name() {
        for (i, key) in EvalKey::ALL.into_iter().enumerate() {
            let mut e = EvalRecord::default();
            e.set(key, i as f64 + 0.5);
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v[key.name()], serde_json::json!(i as f64 + 0.5), "{key:?}");
            let set: Vec<&str> =
                v.as_object().unwrap().iter().filter(|(_, x)| x.is_f64()).map(|(k, _)| k.as_str()).collect();
            assert_eq!(set, [key.name()], "{key:?} sets one field");
        }
    }

    #[test]
    fn truncation_keeps_earlier_rounds_and_drops_cut_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let train = |step| {
            MetricsLine::Train(TrainRecord {
                step,
                loss: 1.0,
                lr: 1e-3,
                tokens_per_s: 1.0,
                tokens_seen: 1,
                loss_scale: None,
                skipped_steps: None,
            })
        };
        let eval = |round, step| MetricsLine::Eval(EvalRecord { round, step, ..Default::default() });
        let lines = [train(10), eval(1, 10), train(20), eval(2, 20)];
        let mut text: String = lines.iter().map(|l| serde_json::to_string(l).unwrap() + "\n").collect();
        text.push_str("{\"kind\":\"tr");
        std::fs::write(&path, text).unwrap();
        truncate_metrics(&path, 10, 1).unwrap();
        assert_eq!(read_metrics(&path).unwrap(), lines[..2].to_vec());
        assert_eq!(read_evals(&path).unwrap().len(), 1);
    }
}
