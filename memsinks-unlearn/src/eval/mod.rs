//! The eval of a trained model: its losses and memorization [`crate::metrics`] on the corpus's
//! sets in each MLP mode ([`evaluate_mode`]), and of a whole run, the `eval.json` it writes
//! ([`EvalRequest`], [`EvalFile`]). Training's periodic evals (`memsinks_train::metric_log`)
//! measure the same losses on fewer documents while it runs.

mod run;

pub use run::{load_eval, EvalFile, EvalRequest, ModeClosure, EVAL_SCHEMA};

use burn::tensor::backend::Backend;
use memsinks_data::{DocRows, Half, PreparedCorpus, Split};
use memsinks_model::Kernels;
use memsinks_model::{DropScale, MemSinkLm, MlpMode};
use serde::{Deserialize, Serialize};

use crate::metrics::{gap, greedy_extraction, loss_mia_auc, score_docs, DocScore, Extraction, SetScore};

/// What to evaluate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Documents per split (the first ones of each split).
    pub max_docs: usize,
    /// Prompt tokens of greedy extraction (`k` in the extraction literature).
    #[serde(alias = "k")]
    pub extract_prompt: usize,
    /// Continuation tokens of greedy extraction (`m`).
    #[serde(alias = "m")]
    pub extract_continuation: usize,
    /// Rows per forward pass.
    pub batch_size: usize,
    /// Tokens per row.
    pub context: usize,
}

impl EvalOptions {
    /// Checks the options against the model's context.
    ///
    /// # Errors
    /// A zero count, or extraction that does not fit one context window.
    pub fn validate(&self) -> Result<(), memsinks_core::ConfigError> {
        use memsinks_core::ConfigError::Invalid;
        let (k, m) = (self.extract_prompt, self.extract_continuation);
        if self.max_docs == 0 || k == 0 || m == 0 || self.batch_size == 0 {
            return Err(Invalid(
                "documents per split, prompt (k) and continuation (m) tokens must be at least 1".into(),
            ));
        }
        if k + m > self.context {
            return Err(Invalid(format!(
                "extraction of k = {} prompt + m = {} continuation tokens exceeds the run's context of {} tokens: \
                 k + m must be at most {}",
                k, m, self.context, self.context
            )));
        }
        Ok(())
    }
}

/// Summary of greedy extraction over a set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtractionSummary {
    /// Documents long enough to be decoded.
    pub docs: usize,
    /// Mean share of continuation tokens reproduced.
    pub match_rate: f64,
    /// Share of documents reproduced entirely (k-extractable).
    pub extracted: f64,
    /// Mean verbatim length.
    pub verbatim_len: f64,
    /// Per document.
    pub per_doc: Vec<Extraction>,
}

fn summarize(ex: Vec<Extraction>) -> ExtractionSummary {
    let n = ex.len().max(1) as f64;
    ExtractionSummary {
        docs: ex.len(),
        match_rate: ex.iter().map(|e| e.match_rate).sum::<f64>() / n,
        extracted: ex.iter().filter(|e| e.extracted).count() as f64 / n,
        verbatim_len: ex.iter().map(|e| e.verbatim_len as f64).sum::<f64>() / n,
        per_doc: ex,
    }
}

/// One set's teacher-forced summary (per-document scores kept separately).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetSummary {
    /// Mean NLL.
    pub nll: f64,
    /// Next-token accuracy.
    pub accuracy: f64,
    /// Targets scored.
    pub tokens: usize,
}

impl SetSummary {
    /// The token-weighted summary of `docs` (`None` when empty).
    pub fn of_docs<'a>(docs: impl IntoIterator<Item = &'a DocScore>) -> Option<Self> {
        let (mut nll, mut accuracy, mut tokens) = (0.0, 0.0, 0usize);
        for d in docs {
            nll += d.nll * d.tokens as f64;
            accuracy += d.accuracy * d.tokens as f64;
            tokens += d.tokens;
        }
        (tokens > 0).then(|| Self { nll: nll / tokens as f64, accuracy: accuracy / tokens as f64, tokens })
    }
}

impl From<&SetScore> for SetSummary {
    fn from(s: &SetScore) -> Self {
        Self { nll: s.nll, accuracy: s.accuracy, tokens: s.tokens }
    }
}

/// Everything measured in one mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModeReport {
    /// The mode (`activate-seq`, `all`, `drop-sinks`, `drop-sinks-plain`, `train`).
    #[serde(with = "memsinks_core::named::by_name")]
    pub mode: MlpMode,
    /// Held-out documents.
    pub validation: SetSummary,
    /// Repeated natural documents.
    pub repeated: SetSummary,
    /// Their dev half ([`memsinks_data::Half`]; absent in reports written before the halves).
    #[serde(default)]
    pub repeated_dev: Option<SetSummary>,
    /// Their test half.
    #[serde(default)]
    pub repeated_test: Option<SetSummary>,
    /// Random-token canaries (absent when the corpus has none).
    pub canary: Option<SetSummary>,
    /// Canaries drawn the same way, never trained on: the unmemorized canary level (absent
    /// without canaries, and in reports written before it was measured).
    #[serde(default)]
    pub canary_held_out: Option<SetSummary>,
    /// Unique training documents (seen once).
    pub unique: Option<SetSummary>,
    /// `L_val - L_rep`.
    pub gap: f64,
    /// Greedy extraction of repeated documents.
    pub extraction_repeated: ExtractionSummary,
    /// Greedy extraction of canaries.
    pub extraction_canary: Option<ExtractionSummary>,
    /// Greedy extraction of held-out documents: the baseline that predictable text reaches
    /// without any memorization.
    pub extraction_validation: ExtractionSummary,
    /// Membership-inference AUC of the loss, repeated vs validation.
    pub mia_auc: f64,
    /// Per repeated document: teacher-forced scores (for specificity).
    pub repeated_docs: Vec<DocScore>,
}

impl ModeReport {
    /// `L_val − L_rep` of one half of the repeated documents.
    pub fn half_gap(&self, half: Half) -> Option<f64> {
        let rep = if half == Half::Dev { &self.repeated_dev } else { &self.repeated_test };
        Some(gap(self.validation.nll, rep.as_ref()?.nll))
    }

    /// `L(held-out canaries) − L(trained canaries)`: how much better than chance the model
    /// predicts the canaries it saw.
    pub fn canary_gap(&self) -> Option<f64> {
        Some(gap(self.canary_held_out.as_ref()?.nll, self.canary.as_ref()?.nll))
    }
}

/// Evaluates `model` in `mode` on the first `max_docs` documents of each split, except the
/// validation loss, which is scored on every validation document (a few dozen stories make a
/// noisy L_val, and the gap and every closure inherit its noise); extraction on validation
/// documents stays on the first `max_docs`.
pub fn evaluate_mode<B: Kernels>(
    model: &MemSinkLm<B>,
    corpus: &PreparedCorpus,
    mode: &MlpMode,
    opts: &EvalOptions,
    device: &B::Device,
) -> ModeReport {
    let m = &corpus.manifest;
    let take = |split: Split| m.indices(split).into_iter().take(opts.max_docs).collect::<Vec<_>>();
    let score =
        |docs: &[usize]| score_docs(model, &DocRows::of(corpus, docs, opts.context, opts.batch_size), mode, device);
    let (val_docs, rep_docs, canary_docs, unique_docs) =
        (take(Split::Validation), take(Split::Repeated), take(Split::Canary), take(Split::Unique));
    let validation = score(&m.indices(Split::Validation));
    let repeated = score(&rep_docs);
    let canary = (!canary_docs.is_empty()).then(|| score(&canary_docs));
    let half = |h: Half| {
        let members = m.repeated_half(h);
        SetSummary::of_docs(repeated.docs.iter().filter(|d| members.contains(&d.doc)))
    };
    let held_out_docs = take(Split::CanaryHeldOut);
    let canary_held_out = (!held_out_docs.is_empty()).then(|| score(&held_out_docs));
    let unique = (!unique_docs.is_empty()).then(|| score(&unique_docs));
    let extract = |docs: &[usize]| {
        summarize(greedy_extraction(
            model,
            &corpus.cache,
            &corpus.ids,
            docs,
            mode,
            (opts.extract_prompt, opts.extract_continuation),
            device,
        ))
    };
    ModeReport {
        mode: mode.clone(),
        gap: gap(validation.nll, repeated.nll),
        mia_auc: loss_mia_auc(&repeated, &validation),
        extraction_repeated: extract(&rep_docs),
        extraction_canary: (!canary_docs.is_empty()).then(|| extract(&canary_docs)),
        extraction_validation: extract(&val_docs),
        validation: (&validation).into(),
        canary: canary.as_ref().map(Into::into),
        canary_held_out: canary_held_out.as_ref().map(Into::into),
        unique: unique.as_ref().map(Into::into),
        repeated_dev: half(Half::Dev),
        repeated_test: half(Half::Test),
        repeated_docs: repeated.docs.clone(),
        repeated: (&repeated).into(),
    }
}

/// The modes worth reporting for a model: its own subset, all sinks, dropped (each
/// [`DropScale`]) for a MemSinks model; the plain forward for a model without sinks.
pub fn default_modes<B: Backend>(model: &MemSinkLm<B>) -> Vec<MlpMode> {
    if model.sink_pool().is_empty() {
        vec![MlpMode::Train]
    } else {
        vec![
            MlpMode::ActivateSeq { exclude: vec![] },
            MlpMode::All { exclude: vec![] },
            MlpMode::DropSinks { scale: DropScale::Reference },
            MlpMode::DropSinks { scale: DropScale::Plain },
            MlpMode::DropSinks { scale: DropScale::ActivityMatched },
        ]
    }
}

/// Effect of dropping one sequence's sinks (exclusion) on that document versus the other
/// repeated documents: the specificity that post-hoc localization cannot offer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Specificity {
    /// The target document.
    pub doc: usize,
    /// Its loss change when its own sinks are excluded.
    pub target_delta: f64,
    /// Mean loss change of the other repeated documents under the same exclusion.
    pub others_delta: f64,
}

/// For the first `targets` repeated documents: exclude each one's sinks (`ActivateSeq` with its
/// ID excluded) and compare its loss change with the other repeated documents'.
pub fn exclusion_specificity<B: Kernels>(
    model: &MemSinkLm<B>,
    corpus: &PreparedCorpus,
    opts: &EvalOptions,
    targets: usize,
    device: &B::Device,
) -> Vec<Specificity> {
    let docs: Vec<usize> = corpus.manifest.indices(Split::Repeated).into_iter().take(opts.max_docs).collect();
    let rows = DocRows::of(corpus, &docs, opts.context, opts.batch_size);
    let score = |mode: &MlpMode| score_docs(model, &rows, mode, device).docs;
    let base = score(&MlpMode::ActivateSeq { exclude: vec![] });
    docs.iter()
        .take(targets)
        .enumerate()
        .map(|(t, &doc)| {
            let after = score(&MlpMode::ActivateSeq { exclude: vec![corpus.manifest.documents[doc].id] });
            let deltas: Vec<f64> = after.iter().zip(&base).map(|(a, b)| a.nll - b.nll).collect();
            let others: Vec<f64> = deltas.iter().enumerate().filter(|(i, _)| *i != t).map(|(_, d)| *d).collect();
            Specificity {
                doc,
                target_delta: deltas[t],
                others_delta: others.iter().sum::<f64>() / others.len().max(1) as f64,
            }
        })
        .collect()
}

/// Removing sources by design, measured: each group's loss and greedy extraction with every
/// sequence's own sinks on, and with the removed sources' subsets switched off (every other
/// sequence keeping its own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceRemoval {
    /// The removed sources' keys.
    pub sources: Vec<String>,
    /// Sequence IDs switched off: the sources' own with per-source IDs, every one of their
    /// documents' with per-document IDs.
    pub excluded_ids: usize,
    /// The removed sources' trained documents.
    pub forgotten: GroupChange,
    /// The other trained sources' documents.
    pub retained: GroupChange,
    /// The held-out sources' documents (never trained on), when the corpus holds sources out.
    pub held_out: Option<GroupChange>,
}

/// One group of documents before and after a removal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupChange {
    /// Documents scored.
    pub docs: usize,
    /// Mean NLL before.
    pub before: f64,
    /// Mean NLL after.
    pub after: f64,
    /// Greedy extraction match rate before.
    pub extraction_before: f64,
    /// The same after.
    pub extraction_after: f64,
}

impl SourceRemoval {
    /// `ΔL(forgotten) / (L(held-out) − L(forgotten))` before the removal: the share of the gap
    /// between the removed sources and sources never seen that the removal closes.
    pub fn closure(&self) -> Option<f64> {
        let held_out = self.held_out.as_ref()?;
        let gap = held_out.before - self.forgotten.before;
        (gap.abs() > 1e-9).then(|| (self.forgotten.after - self.forgotten.before) / gap)
    }
}

/// Measures removing `keys` from `model` (a MemSinks model; a model without sinks changes
/// nothing and is reported as such). At most `opts.max_docs` documents per group.
///
/// # Errors
/// When the corpus has no source keys, a key is unknown, or a source is held out.
pub fn source_removal<B: Kernels>(
    model: &MemSinkLm<B>,
    corpus: &PreparedCorpus,
    keys: &[String],
    opts: &EvalOptions,
    device: &B::Device,
) -> Result<SourceRemoval, crate::UnlearnError> {
    let docs = crate::probe::SourceDocs::of(corpus, keys, opts.max_docs)?;
    let on = if model.sink_pool().is_empty() { MlpMode::Train } else { MlpMode::ActivateSeq { exclude: vec![] } };
    let off = match &on {
        MlpMode::Train => MlpMode::Train,
        _ => MlpMode::ActivateSeq { exclude: docs.ids.clone() },
    };
    let group = |set: &[usize]| {
        let rows = DocRows::of(corpus, set, opts.context, opts.batch_size);
        let nll = |mode: &MlpMode| score_docs(model, &rows, mode, device).nll;
        let extract = |mode: &MlpMode| {
            let ex = greedy_extraction(
                model,
                &corpus.cache,
                &corpus.ids,
                set,
                mode,
                (opts.extract_prompt, opts.extract_continuation),
                device,
            );
            summarize(ex).match_rate
        };
        GroupChange {
            docs: set.len(),
            before: nll(&on),
            after: nll(&off),
            extraction_before: extract(&on),
            extraction_after: extract(&off),
        }
    };
    Ok(SourceRemoval {
        sources: keys.to_vec(),
        excluded_ids: docs.ids.len(),
        forgotten: group(&docs.forget),
        retained: group(&docs.retain),
        held_out: (!docs.held_out.is_empty()).then(|| group(&docs.held_out)),
    })
}
