//! Experiment configuration (RON): the data, model and training sections, with `--set`
//! overrides and validation.

use std::path::Path;

use memsinks_core::overrides::{apply_overrides, omitted, parse_ron, read_ron};
use memsinks_data::DataConfig;
use memsinks_model::{MaskScheme, ModelConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::amp::LossScaleConfig;
use crate::optim::OptimConfig;
use crate::parallel::{Parallel, StepLayout};
use crate::TrainError;

/// The models the study compares: the paper's four, and deduplication with fresh data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Method {
    /// No sinks (`p_gen = 1`), the full corpus.
    Standard,
    /// No sinks, each repeated or canary document kept once, nothing added (the paper's dedup).
    Dedup,
    /// No sinks, deduplicated, with fresh natural stories (`data.dedup_fill`) in place of the
    /// repeated stories' removed repetitions: more distinct data than any other model sees, an
    /// upper bound rather than the paper's baseline.
    DedupFresh,
    /// Sinks selected by each token's sequence ID.
    Memsinks,
    /// The negative control: repeated and canary documents update only the sink pool.
    GradientMasking,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 5] =
        [Method::Standard, Method::Dedup, Method::DedupFresh, Method::Memsinks, Method::GradientMasking];

    /// The training schedule it reads.
    pub fn schedule(self) -> memsinks_data::ScheduleKind {
        match self {
            Method::Dedup => memsinks_data::ScheduleKind::Dedup,
            Method::DedupFresh => memsinks_data::ScheduleKind::DedupFresh,
            _ => memsinks_data::ScheduleKind::Full,
        }
    }

    /// Whether the model has a sink pool.
    pub fn has_sinks(self) -> bool {
        matches!(self, Method::Memsinks | Method::GradientMasking)
    }

    /// The lower-case name used in files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Standard => "standard",
            Method::Dedup => "dedup",
            Method::DedupFresh => "dedup-fresh",
            Method::Memsinks => "memsinks",
            Method::GradientMasking => "gradient-masking",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl memsinks_model::Named for Method {
    const WHAT: &'static str = "training method";

    fn name(&self) -> &'static str {
        Method::name(*self)
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Float precision of training. `F16` and `Bf16` are mixed precision ([`crate::amp`]): the
/// weights and optimizer state stay in f32, the forward and backward pass compute in half
/// precision, f16 with dynamic loss scaling. They need a backend with that arithmetic (cuda and
/// flex: both; wgpu: f16 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    /// 32-bit floats (all backends).
    #[default]
    F32,
    /// Mixed precision computing in IEEE half precision, with dynamic loss scaling (cuda, wgpu, flex).
    F16,
    /// Mixed precision computing in bfloat16 (cuda, flex).
    Bf16,
}

impl Precision {
    /// Every precision.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    /// The backend spelling.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// The precision spelled `name` ([`Precision::name`]).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// How a deduplicated model's token budget relates to the others'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum DedupBudget {
    /// As many optimizer steps (and rows, padding included) as the other methods: the paper's
    /// rule. Its shorter schedule is then passed over more often.
    #[default]
    SameSteps,
    /// As many real (non-padding) tokens as the standard model trains on.
    SameRealTokens,
    /// As many passes over its own schedule as the others make over theirs.
    SameEpochs,
}

/// A vocabulary size for checking the model settings before the tokenizer exists.
const MODEL_CHECK_VOCAB: usize = 256;

/// The model: a preset plus the MemSinks parameters. The vocabulary comes from the tokenizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A preset of `memsinks-model` (`tiny`, `ts-cpu`, ...).
    pub preset: String,
    /// Share of general neurons for the sink methods.
    #[serde(default = "default_p_gen")]
    pub p_gen: f64,
    /// Sink activity per sequence.
    #[serde(default = "default_p_mem")]
    pub p_mem: f64,
    /// Mask scheme.
    #[serde(default)]
    pub mask_scheme: MaskScheme,
    /// Override of the preset's width (for regime sweeps).
    #[serde(default)]
    pub d_model: Option<usize>,
    /// Override of the preset's MLP hidden size.
    #[serde(default)]
    pub d_hidden: Option<usize>,
    /// Override of the preset's depth.
    #[serde(default)]
    pub n_layers: Option<usize>,
    /// Override of the share of hidden units below which a batch's MLPs compute with their
    /// active units alone (`ModelConfig::compact_below`; sparse sink pools).
    #[serde(default, skip_serializing_if = "omitted")]
    pub compact_below: Option<f64>,
}

fn default_p_gen() -> f64 {
    memsinks_model::config::DEFAULT_P_GEN
}
fn default_p_mem() -> f64 {
    memsinks_model::config::DEFAULT_P_MEM
}

/// Optimisation and logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Which model to train.
    pub method: Method,
    /// Rows per optimizer step (before accumulation).
    pub batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    #[serde(default = "one")]
    pub grad_accumulation: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    #[serde(default)]
    pub min_lr: f64,
    /// Linear warm-up steps.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Passes over the training schedule.
    #[serde(default = "one")]
    pub epochs: usize,
    /// Total optimizer steps; overrides `epochs` when set.
    #[serde(default)]
    pub steps: Option<usize>,
    /// Decoupled weight decay (applied to matrices only).
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Adam β1.
    #[serde(default = "default_beta1")]
    pub beta_1: f64,
    /// Adam β2.
    #[serde(default = "default_beta2")]
    pub beta_2: f64,
    /// Global gradient-norm clip; `None` disables it.
    #[serde(default = "default_clip")]
    pub clip_norm: Option<f64>,
    /// Seed of the weights.
    #[serde(default)]
    pub seed: u64,
    /// Steps between evaluations and checkpoints.
    pub eval_every: usize,
    /// Steps between training-loss log lines.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Documents per split in each evaluation.
    #[serde(default = "default_eval_docs")]
    pub eval_docs: usize,
    /// Checkpoints kept.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Devices for data-parallel training (GPU backends); see [`crate::parallel`].
    #[serde(default = "one")]
    pub devices: usize,
    /// How several devices train together.
    #[serde(default, skip_serializing_if = "omitted")]
    pub parallel: Parallel,
    /// Rows per optimizer step over all devices, `batch_size × grad_accumulation × devices`:
    /// optional, and checked against them when given, so that a config edited for another
    /// device count cannot change the effective batch unnoticed.
    #[serde(default, skip_serializing_if = "omitted")]
    pub global_batch: Option<usize>,
    /// Memory of each device in GiB: training refuses a micro-batch whose estimate
    /// (`memsinks model --memory`) exceeds it, naming the batch and accumulation that fit. burn
    /// offers no portable query of a GPU's memory, so a GPU run states it (78 for an 80 GB card);
    /// without it only the host-memory check of the CPU backends applies.
    #[serde(default, skip_serializing_if = "omitted")]
    pub device_memory_gib: Option<f64>,
    /// Token budget rule of the deduplicated models.
    #[serde(default)]
    pub dedup_budget: DedupBudget,
    /// Float precision: f32, or mixed precision (f16 / bf16 compute, f32 weights; see
    /// [`crate::amp`]).
    #[serde(default)]
    pub precision: Precision,
    /// Dynamic loss scaling of f16 mixed precision.
    #[serde(default, skip_serializing_if = "omitted")]
    pub loss_scale: LossScaleConfig,
}

impl TrainConfig {
    /// The optimiser settings of this section.
    pub fn optim(&self) -> OptimConfig {
        OptimConfig {
            beta_1: self.beta_1 as f32,
            beta_2: self.beta_2 as f32,
            weight_decay: self.weight_decay as f32,
            clip_norm: self.clip_norm.map(|c| c as f32),
            ..OptimConfig::default()
        }
    }
}

fn one() -> usize {
    1
}
// The optimiser's defaults have one home, `OptimConfig::default()`.
fn default_wd() -> f64 {
    OptimConfig::default().weight_decay as f64
}
fn default_beta1() -> f64 {
    OptimConfig::default().beta_1 as f64
}
fn default_beta2() -> f64 {
    OptimConfig::default().beta_2 as f64
}
fn default_clip() -> Option<f64> {
    OptimConfig::default().clip_norm.map(f64::from)
}
fn default_log_every() -> usize {
    10
}
fn default_eval_docs() -> usize {
    64
}
fn default_keep() -> usize {
    2
}

/// What training reads of an experiment file: data, model and training. The file's `study`
/// section (what `memsinks reproduce` runs around training) belongs to `memsinks-study`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The corpus.
    pub data: DataConfig,
    /// The model.
    pub model: ModelSection,
    /// Training.
    pub train: TrainConfig,
    /// The file's `study` section, read by `memsinks-study`; skipped here (not part of the run ID).
    #[serde(default, skip_serializing)]
    pub study: serde::de::IgnoredAny,
}

impl ExperimentConfig {
    /// Reads a RON file and applies `key=value` overrides.
    pub fn load(path: &Path, sets: &[String]) -> Result<Self, TrainError> {
        let cfg: Self = read_ron(path)?;
        Self::resolve(cfg, sets)
    }

    /// The `data` section alone of the experiment file at `path`, with `data.*` overrides (for
    /// `data prepare`, which needs no model or training section to be valid).
    ///
    /// # Errors
    /// When the file has no valid data section, or an override names another section.
    pub fn load_data_section(path: &Path, sets: &[String]) -> Result<DataConfig, TrainError> {
        /// The part of an experiment file `data prepare` reads (serde skips the other sections).
        #[derive(Clone, Serialize, Deserialize)]
        struct DataSection {
            data: DataConfig,
        }
        if let Some(other) = sets.iter().find(|s| !s.starts_with("data.")) {
            return Err(TrainError::Invalid(format!(
                "--set {other}: `data prepare` reads only the data section; set data.* keys here, the others with `train`"
            )));
        }
        let section: DataSection = read_ron(path)?;
        Ok(apply_overrides(&section, sets)?.data)
    }

    /// Parses a config from RON text (errors name `origin`) and applies `key=value` overrides.
    pub fn parse(text: &str, origin: &Path, sets: &[String]) -> Result<Self, TrainError> {
        Self::resolve(parse_ron(text, origin)?, sets)
    }

    fn resolve(cfg: Self, sets: &[String]) -> Result<Self, TrainError> {
        if let Some(set) = sets.iter().find(|s| s.starts_with("study.")) {
            return Err(TrainError::Invalid(format!(
                "--set {set}: training does not read the study section; set study.* keys with `memsinks reproduce`"
            )));
        }
        let cfg = apply_overrides(&cfg, sets)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that serde cannot: a flat list of independent checks, each naming its key.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.data.validate()?;
        let t = &self.train;
        let bad = |m: &str| Err(TrainError::Invalid(m.to_string()));
        if t.batch_size == 0 || t.grad_accumulation == 0 || t.eval_every == 0 || t.devices == 0 || t.log_every == 0 {
            return bad("train.batch_size, grad_accumulation, eval_every, log_every and devices must be positive");
        }
        let layout = StepLayout::of_config(t);
        if let Some(global) = t.global_batch.filter(|&g| g != layout.global_batch()) {
            let per_step = t.batch_size * t.devices;
            let hint = if global.is_multiple_of(per_step) {
                format!("train.grad_accumulation = {} gives it", global / per_step)
            } else {
                format!(
                    "no whole grad_accumulation gives it with batch_size {} on {} device(s)",
                    t.batch_size, t.devices
                )
            };
            return Err(TrainError::Invalid(format!(
                "train.global_batch = {global}, but batch_size {} x grad_accumulation {} x devices {} = {} rows per \
                 optimizer step: {hint}",
                t.batch_size,
                t.grad_accumulation,
                t.devices,
                layout.global_batch()
            )));
        }
        if t.device_memory_gib.is_some_and(|g| !(g > 0.0 && g.is_finite())) {
            return bad("train.device_memory_gib must be a positive number of GiB");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) || t.min_lr < 0.0 || t.min_lr > t.lr {
            return bad("train.lr must be positive and train.min_lr in [0, lr]");
        }
        if t.epochs == 0 && t.steps.is_none() {
            return bad("train.epochs must be positive (or set train.steps)");
        }
        if t.keep_checkpoints == 0 {
            return bad("train.keep_checkpoints must be at least 1");
        }
        let range = |key: &str, v: f64, ok: bool, allowed: &str| {
            if ok && v.is_finite() {
                Ok(())
            } else {
                Err(TrainError::Invalid(format!("{key} = {v}: must be {allowed}")))
            }
        };
        if t.steps == Some(0) {
            return bad("train.steps = 0: must be at least 1 (or leave it out to train train.epochs passes)");
        }
        if t.eval_docs == 0 {
            return bad("train.eval_docs = 0: must be at least 1");
        }
        range("train.beta_1", t.beta_1, (0.0..1.0).contains(&t.beta_1), "in [0, 1)")?;
        range("train.beta_2", t.beta_2, (0.0..1.0).contains(&t.beta_2), "in [0, 1)")?;
        range("train.weight_decay", t.weight_decay, t.weight_decay >= 0.0, "at least 0")?;
        if let Some(c) = t.clip_norm {
            range("train.clip_norm", c, c > 0.0, "positive (or None to disable clipping)")?;
        }
        t.loss_scale.validate()?;
        ModelConfig::preset(&self.model.preset)?;
        // The model's own checks (p_gen, p_mem, widths), before any corpus is built; the
        // vocabulary comes from the tokenizer later.
        self.model_config(MODEL_CHECK_VOCAB)?;
        Ok(())
    }

    /// The configuration as RON.
    pub fn to_ron(&self) -> String {
        ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::default()).expect("config serialises")
    }

    /// Run ID: a short hash of what training depends on (data, model, training).
    pub fn run_id(&self) -> String {
        let digest = Sha256::digest(self.to_ron().as_bytes());
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The model configuration for `method` with the tokenizer's vocabulary.
    pub fn model_config(&self, vocab_size: usize) -> Result<ModelConfig, TrainError> {
        let m = &self.model;
        let mut cfg = ModelConfig::preset(&m.preset)?;
        cfg.vocab_size = vocab_size;
        cfg.max_seq_len = cfg.max_seq_len.max(self.data.context);
        cfg.mask_scheme = m.mask_scheme;
        if let Some(d) = m.d_model {
            cfg.d_model = d;
        }
        if let Some(i) = m.d_hidden {
            cfg.d_hidden = i;
        }
        if let Some(l) = m.n_layers {
            cfg.n_layers = l;
        }
        if let Some(c) = m.compact_below {
            cfg.compact_below = c;
        }
        if self.train.method.has_sinks() {
            cfg.p_gen = m.p_gen;
            cfg.p_mem = m.p_mem;
        } else {
            cfg.p_gen = 1.0;
            cfg.p_mem = 0.0;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smoke() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/smoke.ron")
    }

    #[test]
    fn shipped_configs_parse_and_overrides_apply() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "ron") {
                ExperimentConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
        let c =
            ExperimentConfig::load(&smoke(), &["train.method=\"Standard\"".into(), "train.lr=0.01".into()]).unwrap();
        assert_eq!(c.train.method, Method::Standard);
        assert_eq!(c.model_config(300).unwrap().num_sink(), 0);
        let m = ExperimentConfig::load(&smoke(), &["train.method=Memsinks".into()]).unwrap();
        assert!(m.model_config(300).unwrap().num_sink() > 0);
    }

    #[test]
    fn bad_keys_and_values_name_what_is_allowed() {
        let err = ExperimentConfig::load(&smoke(), &["train.lrr=1".into()]).unwrap_err().to_string();
        assert!(err.contains("lrr") && err.contains("warmup_steps"), "{err}");
        let err = ExperimentConfig::load(&smoke(), &["train.method=Fancy".into()]).unwrap_err().to_string();
        assert!(err.contains("Memsinks") && err.contains("GradientMasking"), "{err}");
        let err = ExperimentConfig::load(&smoke(), &["train.batch_size=0".into()]).unwrap_err().to_string();
        assert!(err.contains("batch_size"), "{err}");
        let err = ExperimentConfig::load(&smoke(), &["model.preset=huge".into()]).unwrap_err().to_string();
        assert!(err.contains("ts-cpu"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.ron");
        std::fs::write(&p, "(data: (), surprise: 1)").unwrap();
        assert!(ExperimentConfig::load(&p, &[]).unwrap_err().to_string().contains("x.ron"));
    }
}
