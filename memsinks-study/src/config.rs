//! The `study` section of an experiment file: what `memsinks reproduce` runs around training.
//! Training reads the other sections (`memsinks_train::ExperimentConfig`) and skips this one.

use std::path::Path;

use anyhow::{bail, Context, Result};
use memsinks_core::overrides::{apply_overrides, omitted, parse_ron};
use memsinks_data::DataConfig;
use memsinks_train::config::{ModelSection, TrainConfig};
use memsinks_train::{ExperimentConfig, Method};
use serde::{Deserialize, Serialize};

/// What `memsinks reproduce` runs around training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudyConfig {
    /// Training methods compared (each trained once per seed).
    pub methods: Vec<Method>,
    /// Training seeds (`train.seed` when empty); several give means with 95 % intervals.
    pub seeds: Vec<u64>,
    /// Post-hoc methods run on the standard model: registry names or `.ron` paths, each
    /// optionally followed by `key=value` overrides (`"gradient-ascent steps=20 lr=1e-3"`).
    pub posthoc: Vec<PosthocEntry>,
    /// Documents per split in evaluation.
    pub eval_docs: usize,
    /// Prompt tokens of greedy extraction.
    pub extract_prompt: usize,
    /// Continuation tokens of greedy extraction.
    pub extract_continuation: usize,
    /// Whether each seed also draws its own corpus (held-out and repeated documents, canaries,
    /// data order: data seed `data.seed + seed`; generated stories: generator seed
    /// `source.seed + seed`), not only its own initialisation.
    pub vary_data: bool,
    /// How the training length the report reads is chosen.
    pub training_length: LengthRule,
    /// With a corpus of sources (`data.source_key`): how many trained sources to remove, in
    /// every seed (the first ones of the corpus's source list).
    #[serde(skip_serializing_if = "omitted")]
    pub forget_sources: usize,
    /// Post-hoc methods that forget the same sources on the standard model (registry names or
    /// paths with overrides, as in `posthoc`).
    #[serde(skip_serializing_if = "omitted")]
    pub source_posthoc: Vec<PosthocEntry>,
    /// Variants of the experiment, each a whole study with its `--set` overrides, compared in one
    /// report (a sweep); empty: the experiment alone.
    #[serde(skip_serializing_if = "omitted")]
    pub variants: Vec<Variant>,
}

/// One removal method of a study: a registry name (or a `.ron` path) and `key=value` overrides of
/// its file. An experiment file writes it as one string (`"gradient-ascent steps=20 lr=1e-3"`),
/// read into this form once, when the file is read; it is written back the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PosthocEntry {
    /// Registry name or path of the method file.
    pub method: String,
    /// Overrides of the method file.
    pub sets: Vec<String>,
}

impl std::str::FromStr for PosthocEntry {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let mut words = text.split_whitespace();
        let method = words.next().context("an empty post-hoc entry: give a method name, then key=value overrides")?;
        Ok(Self { method: method.to_string(), sets: words.map(String::from).collect() })
    }
}

impl std::fmt::Display for PosthocEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.method)?;
        self.sets.iter().try_for_each(|set| write!(f, " {set}"))
    }
}

impl Serialize for PosthocEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PosthocEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|e: anyhow::Error| serde::de::Error::custom(format!("`{text}`: {e}")))
    }
}

/// One variant of a sweep: a name and the overrides that make it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// The name (a directory under `variants/`: letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// `key=value` overrides of the experiment (`train.epochs=6`, `data.sequence_ids=PerSource`).
    pub set: Vec<String>,
}

/// How the training length is chosen: never by looking at the documents the result is reported
/// on. The repeated documents are split in halves ([`memsinks_data::Half`]); a rule that looks
/// at closure looks at the dev half and the report gives the test half's number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum LengthRule {
    /// The configured budget: the main table's final models; nothing is chosen.
    #[default]
    Fixed,
    /// Besides the final models: the evaluation step (of the MemSinks run's trajectory, per
    /// seed) with the highest dev-half gap closure among the steps whose validation loss is
    /// within `max_l_val_ratio` of the standard model's at that step; reported with the test
    /// half's closure at that step.
    BestDevStep {
        /// Largest L_val ÷ standard allowed at the chosen step.
        max_l_val_ratio: f64,
    },
}

impl Default for StudyConfig {
    fn default() -> Self {
        Self {
            methods: Method::ALL.to_vec(),
            seeds: Vec::new(),
            posthoc: ["gradient-ascent", "gradient-difference", "npo", "prune-activations", "prune-random"]
                .map(|method| PosthocEntry { method: method.into(), sets: Vec::new() })
                .to_vec(),
            eval_docs: 64,
            extract_prompt: 32,
            extract_continuation: 32,
            vary_data: true,
            training_length: LengthRule::Fixed,
            forget_sources: 0,
            source_posthoc: Vec::new(),
            variants: Vec::new(),
        }
    }
}

/// The part of an experiment file the study reads (serde skips the other sections).
#[derive(Clone, Serialize, Deserialize)]
struct StudySection {
    #[serde(default)]
    study: StudyConfig,
}

impl StudyConfig {
    /// The `study` section of the experiment file text `text` (errors name `origin`), with the
    /// `study.*` overrides among `sets` applied.
    ///
    /// # Errors
    /// When the section or an override is invalid.
    pub fn parse(text: &str, origin: &Path, sets: &[String]) -> Result<Self> {
        let section: StudySection = parse_ron(text, origin)?;
        let ours: Vec<String> = sets.iter().filter(|s| s.starts_with("study.")).cloned().collect();
        Ok(apply_overrides(&section, &ours)?.study)
    }

    /// The data configuration training seed `seed` uses: with [`StudyConfig::vary_data`], the
    /// experiment's with data seed `data.seed + seed` and, for generated stories, generator seed
    /// `source.seed + seed` (so the stories themselves, repeated, held-out, unique and fresh
    /// alike, differ between seeds, not only which of them play which part); otherwise the
    /// experiment's. Seed 0 keeps the experiment's corpus.
    pub fn data_for_seed(&self, data: &DataConfig, seed: u64) -> DataConfig {
        let mut out = data.clone();
        if self.vary_data {
            out.seed = data.seed.wrapping_add(seed);
            if let memsinks_data::corpus::SourceConfig::Synthetic { seed: stories, .. } = &mut out.source {
                *stories = stories.wrapping_add(seed);
            }
        }
        out
    }

    /// Checks the settings against the experiment they run around.
    ///
    /// # Errors
    /// A zero count, or extraction that does not fit one context window.
    pub fn validate(&self, experiment: &ExperimentConfig) -> Result<()> {
        if self.eval_docs == 0 || self.extract_prompt == 0 || self.extract_continuation == 0 {
            bail!("study.eval_docs, extract_prompt and extract_continuation must be at least 1");
        }
        if self.extract_prompt + self.extract_continuation > experiment.data.context {
            bail!(
                "study.extract_prompt {} + extract_continuation {} exceed data.context {}: extraction runs within one context window",
                self.extract_prompt,
                self.extract_continuation,
                experiment.data.context
            );
        }
        let mut distinct = self.seeds.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != self.seeds.len() {
            bail!(
                "study.seeds {:?} lists a seed twice: a repeated seed is the same model trained again, and \
                 would make an interval look tighter than it is; list each seed once",
                self.seeds
            );
        }
        // Every post-hoc entry is loaded now, so a typo fails before hours of training, not after.
        for entry in self.posthoc.iter().chain(&self.source_posthoc) {
            memsinks_unlearn::load_method(&entry.method, &entry.sets)
                .with_context(|| format!("study.posthoc `{entry}`"))?;
        }
        if !self.methods.contains(&Method::Standard) {
            bail!("study.methods must include Standard: every comparison is made against it");
        }
        Ok(())
    }
}

/// A whole experiment file (all four sections), for writing it back out.
#[derive(Serialize)]
struct ExperimentFile<'a> {
    data: &'a DataConfig,
    model: &'a ModelSection,
    train: &'a TrainConfig,
    study: &'a StudyConfig,
}

/// The resolved experiment as one RON file: what training read plus the study section.
pub fn experiment_ron(experiment: &ExperimentConfig, study: &StudyConfig) -> String {
    let file = ExperimentFile { data: &experiment.data, model: &experiment.model, train: &experiment.train, study };
    ron::ser::to_string_pretty(&file, ron::ser::PrettyConfig::default()).expect("config serialises")
}

/// Reads an experiment file for a study: training's sections with the overrides among `sets`
/// that are not `study.*`, and the study section with those that are.
///
/// # Errors
/// When the file or an override is invalid.
pub fn load_experiment(text: &str, origin: &Path, sets: &[String]) -> Result<(ExperimentConfig, StudyConfig)> {
    let training_sets: Vec<String> = sets.iter().filter(|s| !s.starts_with("study.")).cloned().collect();
    let experiment = ExperimentConfig::parse(text, origin, &training_sets)?;
    let study = StudyConfig::parse(text, origin, sets)?;
    study.validate(&experiment)?;
    Ok((experiment, study))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_study_section_is_read_and_overridden_apart_from_training() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/smoke.ron");
        let text = std::fs::read_to_string(&path).unwrap();
        let sets = ["study.seeds=[0,1]".to_string(), "train.lr=1e-3".to_string()];
        let (experiment, study) = load_experiment(&text, &path, &sets).unwrap();
        assert_eq!(study.seeds, vec![0, 1]);
        assert_eq!(experiment.train.lr, 1e-3);
        // The written file reads back to the same experiment and study.
        let ron = experiment_ron(&experiment, &study);
        let (e2, s2) = load_experiment(&ron, &path, &[]).unwrap();
        assert_eq!((&e2, &s2), (&experiment, &study));
        // Seeds draw their own corpora unless told not to; seed 0 keeps the experiment's.
        assert_eq!(study.data_for_seed(&experiment.data, 0), experiment.data);
        let second = study.data_for_seed(&experiment.data, 2);
        assert_eq!(second.seed, experiment.data.seed + 2);
        let story_seed = |d: &DataConfig| match d.source {
            memsinks_data::corpus::SourceConfig::Synthetic { seed, .. } => seed,
            _ => panic!("smoke.ron generates its stories"),
        };
        assert_eq!(story_seed(&second), story_seed(&experiment.data) + 2, "the stories themselves are redrawn");
        let fixed = StudyConfig { vary_data: false, ..study.clone() };
        assert_eq!(fixed.data_for_seed(&experiment.data, 2), experiment.data);
        let bad = ["study.extract_prompt=1000".to_string()];
        let err = load_experiment(&text, &path, &bad).unwrap_err().to_string();
        assert!(err.contains("extract_prompt") && err.contains("context"), "{err}");
    }

    /// Post-hoc entries are parsed once into method and overrides and written back as written.
    #[test]
    fn posthoc_entries_are_typed_and_keep_their_written_form() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/ts-quick.ron");
        let text = std::fs::read_to_string(&path).unwrap();
        let (_, study) = load_experiment(&text, &path, &[]).unwrap();
        let zero_out = study.posthoc.iter().find(|e| e.method == "prune-zero-out").unwrap();
        assert_eq!(zero_out.sets, vec!["score_docs=4".to_string()]);
        let written = ron::to_string(&study.posthoc).unwrap();
        assert!(written.contains("\"prune-zero-out score_docs=4\""), "{written}");
        let sets = [r#"study.posthoc=["npo steps=3 lr=1e-4"]"#.to_string()];
        let (_, study) = load_experiment(&text, &path, &sets).unwrap();
        let want = PosthocEntry { method: "npo".into(), sets: vec!["steps=3".into(), "lr=1e-4".into()] };
        assert_eq!(study.posthoc, vec![want]);
        let err = load_experiment(&text, &path, &[r#"study.posthoc=["  "]"#.to_string()]).unwrap_err();
        assert!(format!("{err:#}").contains("empty post-hoc entry"), "{err:#}");
    }
}
