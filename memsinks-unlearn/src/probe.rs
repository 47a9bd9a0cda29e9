//! What every post-hoc method is judged by while it runs: the loss on (a sample of) the forget
//! set against the validation loss, as points of a trade-off curve.

use burn::tensor::backend::Backend;
use memsinks_data::{DocRows, PreparedCorpus, Split};
use memsinks_model::{MemSinkLm, MlpMode};
use serde::{Deserialize, Serialize};

use crate::metrics::score_docs;
use crate::UnlearnError;

/// What to forget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ForgetSet {
    /// The repeated natural documents.
    Repeated,
    /// The random-token canaries.
    Canary,
}

impl ForgetSet {
    /// Parses the CLI spelling (`repeated`, `canary`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "repeated" => Some(ForgetSet::Repeated),
            "canary" => Some(ForgetSet::Canary),
            _ => None,
        }
    }

    /// The CLI spelling, also the split name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ForgetSet::Repeated => "repeated",
            ForgetSet::Canary => "canary",
        }
    }

    /// The corpus split.
    pub fn split(self) -> Split {
        match self {
            ForgetSet::Repeated => Split::Repeated,
            ForgetSet::Canary => Split::Canary,
        }
    }
}

/// One point of a trade-off curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TradeoffPoint {
    /// The method's knob at this point: unlearning steps, pruned fraction, or 0/1 for sinks
    /// on/dropped.
    pub setting: f64,
    /// Forget-set loss.
    pub forget_loss: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Change of the forget-set loss against the untreated model.
    pub delta_forget: f64,
    /// Change of the validation loss against the untreated model.
    pub delta_val: f64,
}

/// The documents and settings a method is measured on.
pub struct Probe<'a> {
    /// The prepared corpus.
    pub corpus: &'a PreparedCorpus,
    /// Every document of the forget set (what fine-tuning and scoring use).
    pub forget_docs: Vec<usize>,
    /// The forget documents each measurement scores (the first `eval_docs`).
    pub eval_forget: Vec<usize>,
    /// The validation documents each measurement scores.
    pub val_docs: Vec<usize>,
    /// Tokens per row.
    pub context: usize,
    /// Rows per forward pass.
    pub batch_size: usize,
}

impl<'a> Probe<'a> {
    /// The probe for `forget`, scoring at most `eval_docs` documents per set.
    ///
    /// # Errors
    /// When the corpus has no document in the forget set or no validation document.
    pub fn new(
        corpus: &'a PreparedCorpus,
        forget: ForgetSet,
        context: usize,
        batch_size: usize,
        eval_docs: usize,
    ) -> Result<Self, UnlearnError> {
        let m = &corpus.manifest;
        let forget_docs = m.indices(forget.split());
        if forget_docs.is_empty() {
            return Err(UnlearnError::EmptySet(forget.name()));
        }
        let val_docs: Vec<usize> = m.indices(Split::Validation).into_iter().take(eval_docs).collect();
        if val_docs.is_empty() {
            return Err(UnlearnError::EmptySet("validation"));
        }
        let eval_forget = forget_docs.iter().copied().take(eval_docs).collect();
        Ok(Self { corpus, forget_docs, eval_forget, val_docs, context, batch_size: batch_size.max(1) })
    }

    /// Mean NLL of `docs` under `model` in `mode`.
    pub fn nll<B: Backend>(&self, model: &MemSinkLm<B>, docs: &[usize], mode: &MlpMode, device: &B::Device) -> f64 {
        score_docs(model, &DocRows::of(self.corpus, docs, self.context, self.batch_size), mode, device).nll
    }

    /// `(forget loss, validation loss)` of `model` in `mode`.
    pub fn losses<B: Backend>(&self, model: &MemSinkLm<B>, mode: &MlpMode, device: &B::Device) -> (f64, f64) {
        (self.nll(model, &self.eval_forget, mode, device), self.nll(model, &self.val_docs, mode, device))
    }
}

/// The point at `setting` with losses `(forget, val)` measured against the untreated `base`.
pub fn point(setting: f64, (forget, val): (f64, f64), (f0, v0): (f64, f64)) -> TradeoffPoint {
    TradeoffPoint { setting, forget_loss: forget, val_loss: val, delta_forget: forget - f0, delta_val: val - v0 }
}

/// The validation-loss cost of a method at a matched forgetting: `ΔL_val` where its curve first
/// reaches `ΔL_forget = target`, linearly interpolated between the two points around the
/// crossing. `None` when the curve never gets there.
pub fn delta_val_at(curve: &[TradeoffPoint], target: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.delta_forget >= target {
        return Some(first.delta_val);
    }
    curve.windows(2).find_map(|w| {
        let (a, b) = (&w[0], &w[1]);
        (a.delta_forget < target && b.delta_forget >= target).then(|| {
            let t = (target - a.delta_forget) / (b.delta_forget - a.delta_forget);
            a.delta_val + t * (b.delta_val - a.delta_val)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(df: f64, dv: f64) -> TradeoffPoint {
        TradeoffPoint { setting: 0.0, forget_loss: 0.0, val_loss: 0.0, delta_forget: df, delta_val: dv }
    }

    #[test]
    fn matched_cost_interpolates_at_the_first_crossing() {
        let curve = [p(0.0, 0.0), p(1.0, 0.5), p(3.0, 2.5), p(2.0, 9.0), p(5.0, 9.0)];
        assert_eq!(delta_val_at(&curve, 0.0), Some(0.0));
        assert_eq!(delta_val_at(&curve, 0.5), Some(0.25));
        assert_eq!(delta_val_at(&curve, 2.0), Some(1.5));
        assert_eq!(delta_val_at(&curve, 4.0), Some(9.0));
        assert_eq!(delta_val_at(&curve, 6.0), None);
        assert_eq!(delta_val_at(&[], 1.0), None);
    }
}
