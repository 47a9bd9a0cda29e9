//! What every post-hoc method is judged by while it runs: the loss on (a sample of) the forget
//! set against the validation loss, as points of a trade-off curve.

use memsinks_data::{DocRows, PreparedCorpus, Split};
use memsinks_model::Kernels;
use memsinks_model::{MemSinkLm, MlpMode};
use serde::{Deserialize, Serialize};

use crate::metrics::score_docs;
use crate::UnlearnError;

/// What to forget.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ForgetSet {
    /// The repeated natural documents.
    Repeated,
    /// The random-token canaries.
    Canary,
    /// Every trained document of one source (an author, a website: `data.source_key`).
    Source(String),
}

impl ForgetSet {
    /// Parses the CLI spelling: `repeated`, `canary`, `source:KEY`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "repeated" => Some(ForgetSet::Repeated),
            "canary" => Some(ForgetSet::Canary),
            _ => name.strip_prefix("source:").filter(|k| !k.is_empty()).map(|k| ForgetSet::Source(k.to_string())),
        }
    }

    /// The CLI spelling (inverse of [`ForgetSet::parse`]), also used in messages.
    pub fn name(&self) -> String {
        match self {
            ForgetSet::Repeated => "repeated".into(),
            ForgetSet::Canary => "canary".into(),
            ForgetSet::Source(key) => format!("source:{key}"),
        }
    }

    /// The name as a file-name part: the source key with anything but letters, digits, `-`, `_`
    /// and `.` replaced.
    pub fn file_name(&self) -> String {
        self.name().chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
    }

    /// Its documents in `corpus` (for a source: its trained documents, repeated and unique).
    ///
    /// # Errors
    /// When the corpus has none, or the source is unknown or held out.
    pub fn docs(&self, corpus: &PreparedCorpus) -> Result<Vec<usize>, UnlearnError> {
        let docs = match self {
            ForgetSet::Repeated => corpus.manifest.indices(Split::Repeated),
            ForgetSet::Canary => corpus.manifest.indices(Split::Canary),
            ForgetSet::Source(key) => SourceDocs::of(corpus, std::slice::from_ref(key), usize::MAX)?.forget,
        };
        if docs.is_empty() {
            return Err(UnlearnError::EmptySet(self.name()));
        }
        Ok(docs)
    }
}

/// A forget set that is none of `repeated`, `canary`, `source:KEY`.
#[derive(Debug, thiserror::Error)]
#[error("`{0}`: give repeated, canary or source:KEY")]
pub struct UnknownForgetSet(pub String);

impl std::str::FromStr for ForgetSet {
    type Err = UnknownForgetSet;

    fn from_str(s: &str) -> Result<Self, UnknownForgetSet> {
        Self::parse(s).ok_or_else(|| UnknownForgetSet(s.to_string()))
    }
}

/// The documents a source removal is measured on: the forgotten sources' trained documents, the
/// other trained sources' (retained), and the held-out sources' (never trained: validation).
#[derive(Clone, Debug, PartialEq)]
pub struct SourceDocs {
    /// Trained documents of the forgotten sources.
    pub forget: Vec<usize>,
    /// Trained documents of the other sources, at most `max` spread over them.
    pub retain: Vec<usize>,
    /// Documents of the held-out sources (the validation set), at most `max`.
    pub held_out: Vec<usize>,
    /// The sequence IDs whose sinks hold the forgotten sources: with per-source IDs the sources'
    /// own, with per-document IDs every forgotten document's.
    pub ids: Vec<i64>,
}

impl SourceDocs {
    /// The documents of removing `keys` from `corpus`, at most `max` per set (all forgotten
    /// documents' IDs regardless).
    ///
    /// # Errors
    /// When the corpus has no source keys, a key is unknown, or a source is held out.
    pub fn of(corpus: &PreparedCorpus, keys: &[String], max: usize) -> Result<Self, UnlearnError> {
        let trained = [Split::Repeated, Split::Unique];
        let mut indices = Vec::new();
        for key in keys {
            let (index, entry) = corpus.source(key)?;
            if entry.held_out {
                return Err(UnlearnError::Method(format!(
                    "source `{key}` is held out (data.held_out_sources): it was never trained on, so there is nothing to forget"
                )));
            }
            indices.push(index);
        }
        let source_of = |d: usize| corpus.source_of.as_ref().and_then(|t| t.get(d).copied());
        let mut all_forget: Vec<usize> = Vec::new();
        let mut retain_pool: Vec<usize> = Vec::new();
        for split in trained {
            for d in corpus.manifest.indices(split) {
                match source_of(d) {
                    Some(s) if indices.contains(&(s as usize)) => all_forget.push(d),
                    Some(_) => retain_pool.push(d),
                    None => {}
                }
            }
        }
        all_forget.sort_unstable();
        retain_pool.sort_unstable();
        let mut ids: Vec<i64> = all_forget.iter().map(|&d| corpus.ids.id(d, &corpus.cache.doc(d))).collect();
        ids.sort_unstable();
        ids.dedup();
        // Retained documents evenly spaced over the pool, so that every retained source shows.
        let step = retain_pool.len().div_ceil(max.max(1)).max(1);
        let retain = retain_pool.iter().step_by(step).take(max).copied().collect();
        let held_out = corpus.manifest.indices(Split::Validation).into_iter().take(max).collect();
        let forget = all_forget.into_iter().take(max).collect();
        Ok(Self { forget, retain, held_out, ids })
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
    /// Forgetting a source: the loss of the other trained sources' documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_loss: Option<f64>,
    /// Its change against the untreated model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_retain: Option<f64>,
}

/// The losses a probe measures at one point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Losses {
    /// Forget-set loss.
    pub forget: f64,
    /// Validation loss.
    pub val: f64,
    /// Retained sources' loss (forgetting a source).
    pub retain: Option<f64>,
}

/// The documents and settings a method is measured on.
pub struct Probe<'a> {
    /// The prepared corpus.
    pub corpus: &'a PreparedCorpus,
    /// What is forgotten.
    pub forget: ForgetSet,
    /// Every document of the forget set (what fine-tuning and scoring use).
    pub forget_docs: Vec<usize>,
    /// The forget documents each measurement scores (the first `eval_docs`).
    pub eval_forget: Vec<usize>,
    /// The validation documents each measurement scores.
    pub val_docs: Vec<usize>,
    /// Forgetting a source: the other trained sources' documents each measurement scores.
    pub retain_docs: Vec<usize>,
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
        let forget_docs = forget.docs(corpus)?;
        let val_docs: Vec<usize> = m.indices(Split::Validation).into_iter().take(eval_docs).collect();
        if val_docs.is_empty() {
            return Err(UnlearnError::EmptySet("validation".into()));
        }
        let retain_docs = match &forget {
            ForgetSet::Source(key) => SourceDocs::of(corpus, std::slice::from_ref(key), eval_docs)?.retain,
            _ => Vec::new(),
        };
        let eval_forget = forget_docs.iter().copied().take(eval_docs).collect();
        let batch_size = batch_size.max(1);
        Ok(Self { corpus, forget, forget_docs, eval_forget, val_docs, retain_docs, context, batch_size })
    }

    /// Mean NLL of `docs` under `model` in `mode`.
    pub fn nll<B: Kernels>(&self, model: &MemSinkLm<B>, docs: &[usize], mode: &MlpMode, device: &B::Device) -> f64 {
        score_docs(model, &DocRows::of(self.corpus, docs, self.context, self.batch_size), mode, device).nll
    }

    /// The forget, validation (and retained) losses of `model` in `mode`.
    pub fn losses<B: Kernels>(&self, model: &MemSinkLm<B>, mode: &MlpMode, device: &B::Device) -> Losses {
        let retain = (!self.retain_docs.is_empty()).then(|| self.nll(model, &self.retain_docs, mode, device));
        Losses {
            forget: self.nll(model, &self.eval_forget, mode, device),
            val: self.nll(model, &self.val_docs, mode, device),
            retain,
        }
    }
}

/// The point at `setting` with losses `now` measured against the untreated `base`.
pub fn point(setting: f64, now: Losses, base: Losses) -> TradeoffPoint {
    TradeoffPoint {
        setting,
        forget_loss: now.forget,
        val_loss: now.val,
        delta_forget: now.forget - base.forget,
        delta_val: now.val - base.val,
        retain_loss: now.retain,
        delta_retain: now.retain.zip(base.retain).map(|(a, b)| a - b),
    }
}

/// The validation-loss cost of a method at a matched forgetting: `ΔL_val` where its curve first
/// reaches `ΔL_forget = target`, linearly interpolated between the two points around the
/// crossing. `None` when the curve never gets there.
pub fn delta_val_at(curve: &[TradeoffPoint], target: f64) -> Option<f64> {
    delta_at(curve, target, |p| Some(p.delta_val))
}

/// [`delta_val_at`] for any change a point records (`ΔL_retain` of a source removal); `None`
/// also where the points around the crossing do not record it.
pub fn delta_at(curve: &[TradeoffPoint], target: f64, of: impl Fn(&TradeoffPoint) -> Option<f64>) -> Option<f64> {
    let first = curve.first()?;
    if first.delta_forget >= target {
        return of(first);
    }
    curve.windows(2).find(|w| w[0].delta_forget < target && w[1].delta_forget >= target).and_then(|w| {
        let (a, b) = (&w[0], &w[1]);
        let t = (target - a.delta_forget) / (b.delta_forget - a.delta_forget);
        Some(of(a)? + t * (of(b)? - of(a)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(df: f64, dv: f64) -> TradeoffPoint {
        TradeoffPoint {
            setting: 0.0,
            forget_loss: 0.0,
            val_loss: 0.0,
            delta_forget: df,
            delta_val: dv,
            retain_loss: None,
            delta_retain: None,
        }
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
