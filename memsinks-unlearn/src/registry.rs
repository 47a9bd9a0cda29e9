//! The method registry: every removal method (by design or post hoc) is one RON file in
//! `memsinks-unlearn/methods/` (embedded at build time) or any path given instead of a name. A
//! file holds a one-line description, the method's `spec` with all its hyperparameters, and
//! optionally the relearning test to run on the treated model.

use memsinks_model::TrainBackend;
use std::path::Path;
use std::time::Instant;

use burn::module::AutodiffModule;
use memsinks_core::overrides::apply_overrides;
use memsinks_core::ConfigError;
use memsinks_data::PreparedCorpus;
use memsinks_model::{DropScale, MemSinkLm, MlpMode};
use serde::{Deserialize, Serialize};

use crate::finetune::{unlearn, FinetuneConfig, Treated};
use crate::localize::{prune_sweep, PruneConfig};
use crate::probe::{point, ForgetSet, Probe, SourceDocs, TradeoffPoint};
use crate::relearn::{relearn, RelearnConfig, RelearnFrom, RelearnPoint, RelearnStart};
use crate::UnlearnError;

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_methods.rs"));
}

/// What a method does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MethodSpec {
    /// Fine-tuning unlearning (gradient ascent, gradient difference, NPO).
    Finetune(FinetuneConfig),
    /// Localization by a scorer, then pruning a sweep of fractions.
    Prune(PruneConfig),
    /// Removal of one source by design (NULLs): the source's sink subsets switched off (with
    /// per-source IDs its one subset; with per-document IDs every one of its documents'), every
    /// other sequence keeping its own, against the same model with every sequence's sinks on.
    /// Forgets `--forget source:KEY` only.
    DropSourceSinks {
        /// Documents per set in each evaluation.
        eval_docs: usize,
        /// Rows per forward pass.
        batch_size: usize,
    },
    /// Removal by design: a MemSinks model with its sinks dropped, against the same model with
    /// each sequence's sinks on.
    DropSinks {
        /// How the general units are scaled (`Reference`, `Plain` or `ActivityMatched`).
        #[serde(default)]
        scale: DropScale,
        /// The flag of files written when there were two scales (results embed their method
        /// file): `true` is `Reference`, `false` is `Plain`. Read, never written; it wins over
        /// `scale` when present.
        #[serde(default, skip_serializing)]
        rescale: Option<bool>,
        /// Documents per set in each evaluation.
        eval_docs: usize,
        /// Rows per forward pass.
        batch_size: usize,
    },
}

/// The scale a `DropSinks` spec asks for: the old two-scale `rescale` flag where a file has it.
fn drop_scale_read(scale: DropScale, rescale: Option<bool>) -> DropScale {
    rescale.map_or(scale, |r| if r { DropScale::Reference } else { DropScale::Plain })
}

/// One method file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodFile {
    /// One line for tables and `--help`.
    pub about: String,
    /// The method and its hyperparameters.
    pub spec: MethodSpec,
    /// The relearning test on the treated model, if wanted.
    #[serde(default)]
    pub relearn: Option<RelearnConfig>,
}

impl MethodFile {
    /// Checks every hyperparameter's range; the message names the key, the value and what is
    /// allowed.
    ///
    /// # Errors
    /// The first value out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(ConfigError::Invalid)
    }

    /// [`Self::validate`]'s checks, each naming its key.
    fn check(&self) -> Result<(), String> {
        let positive =
            |key: &str, v: usize| if v == 0 { Err(format!("{key} = 0: must be at least 1")) } else { Ok(()) };
        let rate = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{key} = {v}: must be a positive finite number"))
            }
        };
        match &self.spec {
            MethodSpec::Finetune(f) => {
                rate("lr", f.lr)?;
                positive("steps", f.steps)?;
                positive("eval_every", f.eval_every)?;
                positive("batch_size", f.batch_size)?;
                positive("eval_docs", f.eval_docs)?;
                if !(f.retain_weight.is_finite() && f.retain_weight >= 0.0) {
                    return Err(format!("retain_weight = {}: must be finite and at least 0", f.retain_weight));
                }
                rate("beta", f.beta)?;
            }
            MethodSpec::Prune(p) => {
                if p.fractions.is_empty() {
                    return Err("fractions = []: give at least one share of units to prune".into());
                }
                if let Some(f) = p.fractions.iter().find(|f| !(f.is_finite() && (0.0..=1.0).contains(*f))) {
                    return Err(format!("fractions contains {f}: each share must lie in [0, 1]"));
                }
                positive("score_docs", p.score_docs)?;
                if p.score_tokens == (crate::finetune::ScoreTokens::Continuation { prompt: 0 }) {
                    return Err("score_tokens = Continuation(prompt: 0): give the prompt length in tokens (≥ 1)".into());
                }
                positive("eval_docs", p.eval_docs)?;
                positive("batch_size", p.batch_size)?;
            }
            MethodSpec::DropSinks { eval_docs, batch_size, .. }
            | MethodSpec::DropSourceSinks { eval_docs, batch_size } => {
                positive("eval_docs", *eval_docs)?;
                positive("batch_size", *batch_size)?;
            }
        }
        if let Some(r) = &self.relearn {
            rate("relearn.lr", r.lr)?;
            positive("relearn.steps", r.steps)?;
            positive("relearn.batch_size", r.batch_size)?;
            positive("relearn.draws", r.draws)?;
            if !(r.max_control_delta_val.is_finite() && r.max_control_delta_val > 0.0) {
                return Err(format!(
                    "relearn.max_control_delta_val = {}: give a positive bound in nats (e.g. 0.05)",
                    r.max_control_delta_val
                ));
            }
            if r.sizes.contains(&0) {
                return Err("relearn.sizes contains 0: relearn at least one document".into());
            }
        }
        Ok(())
    }
}

/// Everything one method run produced: the results JSON of `memsinks unlearn`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// Registry name (or file stem).
    pub method: String,
    /// The method file as run (after overrides).
    pub file: MethodFile,
    /// What was forgotten.
    pub forget: ForgetSet,
    /// The MLP mode the method acted in (`train` for a plain model, `drop-sinks` for a MemSinks
    /// model's deployed form).
    #[serde(with = "memsinks_core::named::by_name")]
    pub mode: MlpMode,
    /// The trade-off curve; its first point is the untreated model.
    pub curve: Vec<TradeoffPoint>,
    /// The relearning test, when the file asks for it.
    pub relearn: Vec<RelearnPoint>,
    /// Where relearning started (absent without the test, and in results written before it was
    /// recorded).
    #[serde(default)]
    pub relearn_start: Option<RelearnStart>,
    /// Wall time of the whole method, seconds.
    pub wall_s: f64,
    /// The training seed of the model it ran on, when a study runs it on several (absent from
    /// `memsinks unlearn`'s own results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Names of the built-in methods.
pub fn builtin_names() -> Vec<&'static str> {
    builtin::BUILTIN.iter().map(|(name, _)| *name).collect()
}

/// Loads a method by built-in name, or from a `.ron` path, with `key=value` overrides
/// (keys are relative to `spec` unless they start with `about` or `relearn`).
///
/// # Errors
/// An unknown name, an unreadable or malformed file, or a bad override.
pub fn load_method(name_or_path: &str, sets: &[String]) -> Result<(String, MethodFile), UnlearnError> {
    let (name, text, origin) = match builtin::BUILTIN.iter().find(|(name, _)| *name == name_or_path) {
        Some((name, text)) => (name.to_string(), text.to_string(), format!("built-in method `{name}`")),
        None if name_or_path.ends_with(".ron") => {
            let path = Path::new(name_or_path);
            let text = std::fs::read_to_string(path)
                .map_err(|e| UnlearnError::Method(format!("cannot read {}: {e}", path.display())))?;
            let stem = path.file_stem().map_or_else(|| name_or_path.to_string(), |s| s.to_string_lossy().to_string());
            (stem, text, path.display().to_string())
        }
        None => {
            return Err(UnlearnError::Method(format!(
                "unknown method `{name_or_path}`; built-in: {} (or give a path to a .ron method file)",
                builtin_names().join(", ")
            )))
        }
    };
    let file: MethodFile =
        ron::from_str(&text).map_err(|e| UnlearnError::Method(format!("invalid method file {origin}: {e}")))?;
    let sets: Vec<String> = sets
        .iter()
        .map(|s| if s.starts_with("about") || s.starts_with("relearn") { s.clone() } else { format!("spec.{s}") })
        .collect();
    let file = apply_overrides(&file, &sets)?;
    file.validate().map_err(|e| UnlearnError::Method(format!("{origin}: {e}")))?;
    Ok((name, file))
}

/// Runs a method on a trained `model`, forgetting `forget`.
///
/// One function on purpose: it is the registry's dispatch, one arm per kind of method, each arm
/// a few lines around the method's own module, and the arms share the set-up (the deployed and
/// memorizing modes, the probe) and the result record.
///
/// # Errors
/// Empty sets, or `DropSinks` on a model without sinks.
pub fn run_method<B: TrainBackend>(
    name: &str,
    file: &MethodFile,
    model: MemSinkLm<B>,
    corpus: &PreparedCorpus,
    forget: ForgetSet,
    context: usize,
    device: &B::Device,
) -> Result<MethodResult, UnlearnError> {
    let started = Instant::now();
    let has_sinks = !model.sink_pool().is_empty();
    // Post-hoc methods act on the deployed model: for a MemSinks run, with its sinks dropped.
    let deployed = if has_sinks { MlpMode::DropSinks { scale: DropScale::Reference } } else { MlpMode::Train };
    // The mode the untreated model memorized in: what "removed" is measured from, for every method.
    let memorizing = if has_sinks { MlpMode::ActivateSeq { exclude: vec![] } } else { MlpMode::Train };
    let original = model.valid();
    let keep_at = file.relearn.as_ref().and_then(|r| r.start_at_delta_forget);
    let forgotten = forget.clone();
    let (treated, treated_mode, probe) = match &file.spec {
        MethodSpec::Finetune(cfg) => {
            let probe = Probe::new(corpus, forget, context, cfg.batch_size, cfg.eval_docs)?;
            (unlearn(model, &probe, cfg, &deployed, keep_at, device)?, deployed, probe)
        }
        MethodSpec::Prune(cfg) => {
            let probe = Probe::new(corpus, forget, context, cfg.batch_size, cfg.eval_docs)?;
            (prune_sweep(&model, &probe, cfg, &deployed, keep_at, device), deployed, probe)
        }
        MethodSpec::DropSinks { scale, rescale, eval_docs, batch_size } => {
            let scale = drop_scale_read(*scale, *rescale);
            if !has_sinks {
                return Err(UnlearnError::NoSinks);
            }
            let probe = Probe::new(corpus, forget, context, *batch_size, *eval_docs)?;
            let dropped = MlpMode::DropSinks { scale };
            let base = probe.losses(&original, &memorizing, device);
            let curve = vec![point(0.0, base, base), point(1.0, probe.losses(&original, &dropped, device), base)];
            (Treated { curve, model, matched: None }, dropped, probe)
        }
        MethodSpec::DropSourceSinks { eval_docs, batch_size } => {
            if !has_sinks {
                return Err(UnlearnError::NoSinks);
            }
            let ForgetSet::Source(key) = &forget else {
                return Err(UnlearnError::Method(format!(
                    "{name} removes a source: give --forget source:KEY, not {}",
                    forget.name()
                )));
            };
            let ids = SourceDocs::of(corpus, std::slice::from_ref(key), 0)?.ids;
            let probe = Probe::new(corpus, forget, context, *batch_size, *eval_docs)?;
            let removed = MlpMode::ActivateSeq { exclude: ids };
            let base = probe.losses(&original, &memorizing, device);
            let curve = vec![point(0.0, base, base), point(1.0, probe.losses(&original, &removed, device), base)];
            (Treated { curve, model, matched: None }, removed, probe)
        }
    };
    let (relearned, relearn_start) = match &file.relearn {
        Some(cfg) => {
            let (index, start) = match &treated.matched {
                Some(m) => (m.index, &m.model),
                None => (treated.curve.len() - 1, &treated.model),
            };
            let at = &treated.curve[index];
            let from = RelearnFrom {
                original: &original,
                original_mode: &memorizing,
                treated: start,
                treated_mode: &treated_mode,
            };
            let start = RelearnStart {
                setting: at.setting,
                delta_forget: at.delta_forget,
                delta_val: at.delta_val,
                target_delta_forget: cfg.start_at_delta_forget,
            };
            (relearn(&from, &probe, cfg, device), Some(start))
        }
        None => (Vec::new(), None),
    };
    let result = MethodResult {
        method: name.to_string(),
        file: file.clone(),
        forget: forgotten,
        mode: treated_mode,
        curve: treated.curve,
        relearn: relearned,
        relearn_start,
        wall_s: started.elapsed().as_secs_f64(),
        seed: None,
    };
    result.check_finite()?;
    Ok(result)
}

impl MethodResult {
    /// A method whose losses are not finite (it diverged) is a failed run, never a result: JSON
    /// has no NaN, so it would be written as `null`, cached, and break every reader after it.
    ///
    /// # Errors
    /// Naming the first non-finite loss and what to change.
    pub fn check_finite(&self) -> Result<(), UnlearnError> {
        let fail = |what: String| Err(UnlearnError::Diverged { method: self.method.clone(), what });
        for p in &self.curve {
            let values = [p.forget_loss, p.val_loss, p.delta_forget, p.delta_val];
            let retain = [p.retain_loss, p.delta_retain];
            if values.iter().chain(retain.iter().flatten()).any(|v| !v.is_finite()) {
                return fail(format!("the loss at setting {}", p.setting));
            }
        }
        for r in &self.relearn {
            let optional = [r.others_control, r.delta_val_relearned, r.delta_val_control, r.recovered];
            let values = [r.others_original, r.others_treated, r.others_relearned];
            if values.iter().chain(optional.iter().flatten()).any(|v| !v.is_finite()) {
                return fail(format!("the relearning test with {} documents", r.relearned));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_method_file_parses() {
        let names = builtin_names();
        for required in
            ["drop-sinks", "drop-source-sinks", "gradient-ascent", "npo", "prune-zero-out", "prune-hard-concrete"]
        {
            assert!(names.contains(&required), "{required} missing from {names:?}");
        }
        for name in names {
            load_method(name, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn the_drop_scale_is_read_in_both_spellings() {
        let scale_of = |file: MethodFile| match file.spec {
            MethodSpec::DropSinks { scale, rescale, .. } => drop_scale_read(scale, rescale),
            other => panic!("{other:?}"),
        };
        let (_, file) = load_method("drop-sinks", &[]).unwrap();
        assert_eq!(scale_of(file), DropScale::Reference);
        let (_, file) = load_method("drop-sinks", &["scale=ActivityMatched".into()]).unwrap();
        assert_eq!(scale_of(file.clone()), DropScale::ActivityMatched);
        // Results files embed the method file as JSON: the new form round-trips, the old
        // `rescale` flag of two-scale files still reads.
        let json = serde_json::to_string(&file).unwrap();
        assert_eq!(scale_of(serde_json::from_str(&json).unwrap()), DropScale::ActivityMatched);
        let old = json.replace(r#""scale":"ActivityMatched""#, r#""rescale":false"#);
        assert_ne!(old, json);
        assert_eq!(scale_of(serde_json::from_str(&old).unwrap()), DropScale::Plain);
        let old = json.replace(r#""scale":"ActivityMatched""#, r#""rescale":true"#);
        assert_eq!(scale_of(serde_json::from_str(&old).unwrap()), DropScale::Reference);
    }

    #[test]
    fn overrides_reach_the_spec_and_bad_names_say_what_exists() {
        let (_, file) = load_method("gradient-ascent", &["lr=0.01".into(), "relearn.steps=3".into()]).unwrap();
        let MethodSpec::Finetune(cfg) = file.spec else { panic!("finetune") };
        assert_eq!(cfg.lr, 0.01);
        assert_eq!(file.relearn.unwrap().steps, 3);
        let err = load_method("gradient-descent", &[]).unwrap_err().to_string();
        assert!(err.contains("gradient-ascent") && err.contains("npo"), "{err}");
        let err = load_method("npo", &["lrr=1".into()]).unwrap_err().to_string();
        assert!(err.contains("lrr"), "{err}");
        assert!(load_method("/nonexistent/m.ron", &[]).unwrap_err().to_string().contains("cannot read"));
    }
}
