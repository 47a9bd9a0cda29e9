//! `results.json`: every number of a reproduction, enough to redraw the report without the runs.

use serde::{Deserialize, Serialize};

use memsinks_unlearn::MethodResult;

/// The whole study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
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
    /// Post-hoc methods on the standard model (first seed), natural and canary.
    pub posthoc: Vec<MethodResult>,
    /// Dropping the sinks of the MemSinks model (first seed), natural and canary.
    pub by_design: Vec<MethodResult>,
    /// Loss during training, per method (first seed).
    pub dynamics: Vec<Dynamics>,
    /// Tracked repeated documents during training (standard and MemSinks, first seed).
    pub forgetting: Vec<Forgetting>,
    /// Excluding one sequence's sinks (MemSinks, first seed): mean loss change of the target
    /// document and of the other repeated documents.
    pub specificity: Option<(f64, f64)>,
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
    pub method: String,
    /// MLP mode evaluated.
    pub mode: String,
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
    /// Validation loss.
    pub l_val: f64,
    /// `L_val − L_rep`.
    pub gap: f64,
    /// `1 − gap / gap(standard, same seed)`.
    pub closure_vs_standard: Option<f64>,
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
    /// Training tokens.
    pub tokens_seen: u64,
    /// Training wall time, seconds.
    pub wall_s: f64,
}

/// Loss curves of one training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dynamics {
    /// Training method.
    pub method: String,
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
}

/// Tracked repeated documents of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forgetting {
    /// Training method.
    pub method: String,
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
