//! `results.json`: every number of a reproduction, enough to redraw the report without the runs.

use memsinks_model::{DropScale, MlpMode};
use memsinks_train::Method;
use serde::{Deserialize, Serialize};

use memsinks_unlearn::MethodResult;

/// The current `schema_version` of `results.json`.
pub const RESULTS_SCHEMA: u32 = 1;

/// The whole study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Format version ([`RESULTS_SCHEMA`]; 0 in files written before it was recorded).
    #[serde(default)]
    pub schema_version: u32,
    /// Experiment name (the config file's stem).
    pub experiment: String,
    /// Short hash of the resolved configuration (data, model, training and study).
    pub config_hash: String,
    /// The resolved configuration (RON).
    pub config: String,
    /// Training seeds.
    pub seeds: Vec<u64>,
    /// Greedy extraction: prompt and continuation tokens.
    pub extraction: (usize, usize),
    /// Versions of this toolkit and of burn.
    pub versions: Versions,
    /// The backend everything ran on.
    pub backend: String,
    /// Wall time of each stage; cached stages report the time they took when they ran.
    pub timings: Vec<Timing>,
    /// The main table: one row per model and mode, one value set per seed.
    pub rows: Vec<MainRow>,
    /// Post-hoc methods on the standard model, natural and canary, every seed (each result
    /// carries its seed; results written before carry none and are the first seed's).
    pub posthoc: Vec<MethodResult>,
    /// Dropping the sinks of the MemSinks model, natural and canary, every seed.
    pub by_design: Vec<MethodResult>,
    /// Loss during training, per method (first seed).
    pub dynamics: Vec<Dynamics>,
    /// Tracked repeated documents during training (standard and MemSinks, first seed).
    pub forgetting: Vec<Forgetting>,
    /// Excluding one sequence's sinks (MemSinks, first seed): mean loss change of the target
    /// document and of the other repeated documents.
    pub specificity: Option<(f64, f64)>,
    /// The training length chosen on the dev half, per seed (`study.training_length`), with the
    /// test half's closure there.
    #[serde(default)]
    pub selected_steps: Vec<SelectedStep>,
    /// Removing sources (a corpus with `data.source_key`): per seed, dropping a source's sinks in
    /// the MemSinks model and the post-hoc methods forgetting it on the standard model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceRemovalRun>,
    /// The drop-sinks scale the headline uses, chosen on the dev half. Results written before
    /// the choice was made carry none: their headline is the reference code's scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<DeployedChoice>,
}

impl Results {
    /// The mode of the MemSinks model the headline and the findings use: the dev half's choice,
    /// or the reference code's scale in results that record none.
    pub fn deployed_mode(&self) -> MlpMode {
        MlpMode::DropSinks { scale: self.deployed.as_ref().map_or(DropScale::Reference, |d| d.scale) }
    }
}

/// A closure bought with a validation loss this many times the standard model's is flagged in
/// the report (the gap closed because the model got worse, not because memorization was
/// isolated), and a drop-sinks scale whose mean L_val ÷ standard exceeds it cannot be chosen.
pub const L_VAL_TOLERANCE: f64 = 1.05;

/// The dev half's choice of the drop-sinks scale, with what it chose among.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeployedChoice {
    /// The chosen scale.
    pub scale: DropScale,
    /// Every scale the table evaluated.
    pub candidates: Vec<DropCandidate>,
}

/// One drop-sinks scale as the choice saw it (means over seeds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DropCandidate {
    /// The scale.
    pub scale: DropScale,
    /// Mean gap closure on the dev half of the repeated documents.
    pub dev_closure: f64,
    /// Mean L_val ÷ standard.
    pub l_val_ratio: f64,
}

/// One removal of a source in one seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceRemovalRun {
    /// Training seed.
    pub seed: u64,
    /// The model it acted on.
    #[serde(with = "memsinks_core::named::by_name")]
    pub method: Method,
    /// The method's result (its forget set names the source).
    pub result: MethodResult,
}

/// The evaluation step a length rule chose for one seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectedStep {
    /// Training seed.
    pub seed: u64,
    /// The step chosen.
    pub step: u64,
    /// Dev-half gap closure there (what the rule maximised).
    pub dev_closure: f64,
    /// Test-half gap closure there (what is reported).
    pub test_closure: f64,
    /// L_val ÷ standard there.
    pub l_val_ratio: f64,
}

/// Versions that produced the results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    /// memsinks.
    pub memsinks: String,
    /// burn.
    pub burn: String,
}

/// One stage's wall time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Stage name (`prepare`, `train standard s0`, `eval …`, `posthoc …`).
    pub stage: String,
    /// Seconds.
    pub seconds: f64,
    /// Whether this run reused the stage's cached output.
    pub cached: bool,
}

/// One row of the main table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MainRow {
    /// Row label (`memsinks, sinks dropped (rescaled)`).
    pub label: String,
    /// Training method.
    #[serde(with = "memsinks_core::named::by_name")]
    pub method: Method,
    /// MLP mode evaluated.
    #[serde(with = "memsinks_core::named::by_name")]
    pub mode: MlpMode,
    /// Per seed.
    pub values: Vec<RowValues>,
}

/// The numbers of one row for one seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowValues {
    /// Training seed.
    pub seed: u64,
    /// Loss on the repeated natural documents.
    pub l_rep: f64,
    /// Loss on the canaries (absent without canaries).
    pub l_canary: Option<f64>,
    /// Loss on held-out canaries, never trained on (absent without canaries, and in results
    /// written before it was measured).
    #[serde(default)]
    pub l_canary_held_out: Option<f64>,
    /// `1 − canary gap / canary gap(standard, same seed)`, the canary gap being
    /// `L(held-out canaries) − L(canaries)`.
    #[serde(default)]
    pub canary_closure: Option<f64>,
    /// Validation loss.
    pub l_val: f64,
    /// `L_val − L_rep`.
    pub gap: f64,
    /// `1 − gap / gap(standard, same seed)`.
    pub closure_vs_standard: Option<f64>,
    /// The same on the dev half of the repeated documents ([`memsinks_data::Half`]).
    #[serde(default)]
    pub closure_dev: Option<f64>,
    /// The same on the test half.
    #[serde(default)]
    pub closure_test: Option<f64>,
    /// `L_val / L_val(standard, same seed)`: what a closure cost in general ability (absent in
    /// results written before it was recorded; the report then computes it).
    #[serde(default)]
    pub l_val_vs_standard: Option<f64>,
    /// Greedy extraction: mean share of continuation tokens reproduced (repeated documents).
    pub extraction: f64,
    /// The same on held-out documents: what predictable text reaches without memorization.
    pub extraction_heldout: f64,
    /// Mean verbatim length of the continuation (tokens).
    pub verbatim: f64,
    /// Membership-inference AUC (repeated vs validation).
    pub mia_auc: f64,
    /// Training tokens (rows × context, padding included).
    pub tokens_seen: u64,
    /// Real (non-padding) training tokens.
    #[serde(default)]
    pub real_tokens: Option<u64>,
    /// Passes over the model's own schedule.
    #[serde(default)]
    pub passes: Option<f64>,
    /// Times each repeated document was trained on, on average.
    #[serde(default)]
    pub views_per_repeated: Option<f64>,
    /// Training wall time, seconds.
    pub wall_s: f64,
}

/// Loss curves of one training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dynamics {
    /// Training method.
    #[serde(with = "memsinks_core::named::by_name")]
    pub method: Method,
    /// Evaluation points.
    pub points: Vec<DynamicsPoint>,
}

/// One evaluation during training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DynamicsPoint {
    /// Optimizer step.
    pub step: u64,
    /// Validation loss.
    pub val: f64,
    /// Repeated-set loss, each document with its own sinks on.
    pub rep_sinks: f64,
    /// Repeated-set loss with the sinks dropped (equal to `rep_sinks` without sinks).
    pub rep_nosinks: f64,
    /// Canary loss, each with its own sinks on.
    #[serde(default)]
    pub canary_sinks: Option<f64>,
    /// Canary loss with the sinks dropped.
    #[serde(default)]
    pub canary_nosinks: Option<f64>,
    /// Held-out canary loss.
    #[serde(default)]
    pub canary_held_out: Option<f64>,
}

/// Tracked repeated documents of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forgetting {
    /// Training method.
    #[serde(with = "memsinks_core::named::by_name")]
    pub method: Method,
    /// Documents.
    pub docs: Vec<TrackedDoc>,
}

/// One repeated document during training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackedDoc {
    /// Corpus index.
    pub doc: usize,
    /// Steps at which the document was trained on (from the manifest's schedule positions).
    pub seen_at: Vec<f64>,
    /// `(step, loss with its sinks, loss without sinks)` at each evaluation.
    pub losses: Vec<(u64, f64, f64)>,
}
