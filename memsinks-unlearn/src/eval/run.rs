//! The eval of a whole trained run: measured in every MLP mode that applies, with its gap
//! closures, written as the run's `eval.json` (the [`EvalFile`] that `memsinks eval` writes,
//! the study reads and the tests parse).

use memsinks_model::TrainBackend;
use std::path::Path;

use memsinks_core::files::write_atomic;
use memsinks_model::{DropScale, MlpMode};
use memsinks_train::run::FinishedRun;
use memsinks_train::BackendTask;
use memsinks_train::{Method, RunDir};
use serde::{Deserialize, Serialize};

use super::{
    default_modes, evaluate_mode, exclusion_specificity, source_removal, EvalOptions, ModeReport, SourceRemoval,
    Specificity,
};
use crate::metrics::gap_closure;
use crate::{SourceDocs, UnlearnError};

/// Repeated documents whose sinks are switched off one at a time to measure specificity.
const SPECIFICITY_DOCS: usize = 8;

/// The current `schema_version` of `eval.json`.
pub const EVAL_SCHEMA: u32 = 1;

/// The content of `eval.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalFile {
    /// Format version ([`EVAL_SCHEMA`]; 0 in files written before it was recorded).
    #[serde(default)]
    pub schema_version: u32,
    /// Run id of the evaluated run.
    pub run_id: String,
    /// Training method.
    #[serde(with = "memsinks_core::named::by_name")]
    pub method: Method,
    /// Options used.
    pub options: EvalOptions,
    /// One report per mode.
    pub modes: Vec<ModeReport>,
    /// `1 - gap(drop-sinks) / gap(activate-seq)`: closure against the same model with sinks on.
    pub gap_closure_vs_sinks_on: Option<f64>,
    /// Per mode, `1 - gap(mode) / gap(reference)`, when a reference run is given.
    pub gap_closure_vs_reference: Option<Vec<ModeClosure>>,
    /// Dropping one sequence's sinks: its loss change versus the other repeated documents'
    /// (MemSinks models only).
    #[serde(default)]
    pub exclusion_specificity: Vec<Specificity>,
    /// Removing the sources of `--exclude-source`: the removed, retained and held-out sources'
    /// documents before and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_removal: Option<SourceRemoval>,
}

/// One mode's gap closure against a reference run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModeClosure {
    /// The mode.
    #[serde(with = "memsinks_core::named::by_name")]
    pub mode: MlpMode,
    /// `1 - gap(mode) / gap(reference)`.
    pub closure: f64,
}

impl EvalFile {
    /// The gap of `mode` when it has one (both repeated and validation tokens; with either set
    /// empty there is no gap to close).
    pub fn gap_of(&self, mode: &MlpMode) -> Option<f64> {
        self.modes.iter().find(|r| r.mode == *mode && r.repeated.tokens > 0 && r.validation.tokens > 0).map(|r| r.gap)
    }

    /// Mean loss change of the excluded document and of the other repeated documents when one
    /// document's sinks are switched off (MemSinks models), `None` without sinks.
    pub fn mean_specificity(&self) -> Option<(f64, f64)> {
        let s = &self.exclusion_specificity;
        (!s.is_empty()).then(|| {
            let n = s.len() as f64;
            (s.iter().map(|x| x.target_delta).sum::<f64>() / n, s.iter().map(|x| x.others_delta).sum::<f64>() / n)
        })
    }

    /// Writes the file as `RUN/eval.json`, atomically.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, run: &Path) -> Result<(), UnlearnError> {
        let path = RunDir::new(run).eval();
        let json = serde_json::to_vec_pretty(self).map_err(|e| UnlearnError::corrupt(&path, e))?;
        Ok(write_atomic(&path, &json)?)
    }
}

/// Reads `RUN/eval.json`.
///
/// # Errors
/// When the run was not evaluated or the file is not an evaluation.
pub fn load_eval(run: &Path) -> Result<EvalFile, UnlearnError> {
    let path = RunDir::new(run).eval();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| UnlearnError::corrupt(&path, format!("{e}: evaluate the run first")))?;
    let file: EvalFile = serde_json::from_str(&text).map_err(|e| UnlearnError::corrupt(&path, e))?;
    memsinks_core::files::check_schema(&path, file.schema_version, EVAL_SCHEMA)?;
    Ok(file)
}

/// Evaluation of one run: which modes, which documents, and what to compare against.
#[derive(Clone, Debug)]
pub struct EvalRequest {
    /// The run directory.
    pub run: std::path::PathBuf,
    /// One mode, or every mode that applies to the model.
    pub mode: Option<MlpMode>,
    /// Sequence IDs whose sinks are off in the `all` and `activate-seq` modes.
    pub exclude: Vec<i64>,
    /// Sources whose sinks are off in those modes (their IDs join `exclude`), and whose removal
    /// is measured ([`SourceRemoval`]).
    pub exclude_sources: Vec<String>,
    /// Documents per split.
    pub max_docs: usize,
    /// Prompt tokens of greedy extraction.
    pub extract_prompt: usize,
    /// Continuation tokens of greedy extraction.
    pub extract_continuation: usize,
    /// An evaluated standard run's `eval.json`, to measure gap closure against.
    pub reference: Option<EvalFile>,
}

impl BackendTask for EvalRequest {
    type Output = EvalFile;
    type Error = UnlearnError;

    fn run<B: TrainBackend>(self, devices: Vec<B::Device>) -> Result<EvalFile, UnlearnError> {
        let device = &devices[0];
        let run = FinishedRun::open(&self.run)?;
        let (model, _) = run.model::<B::InnerBackend>(device)?;
        let FinishedRun { config: cfg, summary, corpus, .. } = run;
        check_sequence_ids(&corpus, &self.exclude)?;
        let mut exclude = self.exclude.clone();
        if !self.exclude_sources.is_empty() {
            exclude.extend(SourceDocs::of(&corpus, &self.exclude_sources, 0)?.ids);
        }
        let modes = match self.mode.clone() {
            Some(mode) => vec![mode],
            None => default_modes(&model),
        };
        let modes: Vec<MlpMode> = modes.into_iter().map(|mode| with_exclusions(mode, &exclude)).collect();
        let options = EvalOptions {
            max_docs: self.max_docs,
            extract_prompt: self.extract_prompt,
            extract_continuation: self.extract_continuation,
            batch_size: cfg.train.batch_size,
            context: cfg.data.context,
        };
        options.validate()?;
        let reports: Vec<ModeReport> =
            modes.iter().map(|mode| evaluate_mode(&model, &corpus, mode, &options, device)).collect();
        let exclusion_specificity = if model.sink_pool().is_empty() {
            Vec::new()
        } else {
            exclusion_specificity(&model, &corpus, &options, SPECIFICITY_DOCS, device)
        };
        let source_removal = (!self.exclude_sources.is_empty())
            .then(|| source_removal(&model, &corpus, &self.exclude_sources, &options, device))
            .transpose()?;
        let mut file = EvalFile {
            schema_version: EVAL_SCHEMA,
            exclusion_specificity,
            source_removal,
            run_id: summary.run_id,
            method: summary.method,
            options,
            modes: reports,
            gap_closure_vs_sinks_on: None,
            gap_closure_vs_reference: None,
        };
        file.gap_closure_vs_sinks_on = file
            .gap_of(&MlpMode::DropSinks { scale: DropScale::Reference })
            .zip(file.gap_of(&MlpMode::ActivateSeq { exclude: vec![] }))
            .map(|(d, a)| gap_closure(d, a));
        if let Some(reference) = &self.reference {
            let gap_ref = reference
                .modes
                .first()
                .map(|r| r.gap)
                .ok_or_else(|| UnlearnError::Method("the reference eval.json has no modes".into()))?;
            file.gap_closure_vs_reference = Some(
                file.modes
                    .iter()
                    .map(|r| ModeClosure { mode: r.mode.clone(), closure: gap_closure(r.gap, gap_ref) })
                    .collect(),
            );
        }
        Ok(file)
    }
}

/// Refuses an excluded sequence ID that names no document of `corpus`: it would switch off
/// sinks no document uses, a silent no-op.
fn check_sequence_ids(corpus: &memsinks_data::PreparedCorpus, exclude: &[i64]) -> Result<(), UnlearnError> {
    let mut unknown: std::collections::BTreeSet<i64> = exclude.iter().copied().collect();
    for d in 0..corpus.cache.num_docs() {
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.remove(&corpus.ids.id(d, &corpus.cache.doc(d)));
    }
    if unknown.is_empty() {
        return Ok(());
    }
    Err(UnlearnError::Method(format!(
        "--exclude: no document of the run's corpus has sequence ID {}; `memsinks mask` and \
         eval.json's exclusion_specificity list the IDs in use",
        unknown.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
    )))
}

/// `mode` with `exclude`'s sinks off, for the modes that switch sinks on.
fn with_exclusions(mode: MlpMode, exclude: &[i64]) -> MlpMode {
    match mode {
        MlpMode::All { .. } => MlpMode::All { exclude: exclude.to_vec() },
        MlpMode::ActivateSeq { .. } => MlpMode::ActivateSeq { exclude: exclude.to_vec() },
        other => other,
    }
}
