//! `memsinks reproduce`: the whole study from one experiment file.
//!
//! Stages, each cached in the output directory and redone only when what it depends on changed
//! ([`crate::stages`]): prepare the corpus (keyed by the data config's hash); train every method
//! and seed; evaluate each run; run the post-hoc methods on the standard model and drop the
//! sinks of the MemSinks model. Then `results.json`, `report.md` and the plots.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use memsinks_core::files::{is_empty_dir, write_atomic, DirLock};
use memsinks_data::{DataConfig, PreparedCorpus, Split};
use memsinks_train::{ExperimentConfig, Method};
use memsinks_unlearn::{ForgetSet, MethodResult};

use crate::assemble::{assemble, StudyOutputs};
use crate::config::{load_experiment, PosthocEntry, StudyConfig};
use crate::report;
use crate::results::{Results, SourceRemovalRun, Timing};
use crate::stages::{Rerun, Stages, Trained};
use crate::study_dir::StudyDir;
use crate::sweep::{reproduce_sweep, SweepResults};
use memsinks_train::Runner;
use memsinks_unlearn::MethodTask;

/// The embedded default experiment (`experiments/ts-quick.ron`): synthetic stories, no download.
pub const DEFAULT_EXPERIMENT: &str = include_str!("../../experiments/ts-quick.ron");

/// A reproduction to run.
#[derive(Clone, Debug)]
pub struct ReproduceRequest {
    /// Experiment name (the config file's stem).
    pub name: String,
    /// What training reads of the experiment (overrides applied).
    pub config: ExperimentConfig,
    /// The experiment's study section (overrides applied).
    pub study: StudyConfig,
    /// The output directory.
    pub out: PathBuf,
    /// What to do with the runs found in the output directory (`--resume`, `--force`).
    pub rerun: Rerun,
}

impl ReproduceRequest {
    /// The experiment file `text` (named `name`, read from `origin`) with overrides `sets`,
    /// into `out`.
    ///
    /// # Errors
    /// When the file or an override is invalid.
    pub fn from_text(name: &str, text: &str, origin: &Path, sets: &[String], out: PathBuf) -> Result<Self> {
        let (config, study) = load_experiment(text, origin, sets)?;
        Ok(Self { name: name.to_string(), config, study, out, rerun: Rerun::default() })
    }

    /// The embedded default experiment (`ts-quick`) with overrides `sets`, into `out`.
    ///
    /// # Errors
    /// When an override is invalid (the shipped file itself parses: a test checks it).
    pub fn default_experiment(sets: &[String], out: PathBuf) -> Result<Self> {
        Self::from_text("ts-quick", DEFAULT_EXPERIMENT, Path::new("<embedded ts-quick.ron>"), sets, out)
    }
}

/// What a reproduction produced: one study, or a sweep of variants.
#[derive(Clone, Debug)]
pub enum Reproduced {
    /// One study (`results.json`).
    Study(Box<Results>),
    /// A sweep over `study.variants` (`sweep.json`).
    Sweep(SweepResults),
}

/// Runs `request`: a sweep when its study lists variants ([`reproduce_sweep`]), else the study.
///
/// # Errors
/// As [`reproduce`] and [`reproduce_sweep`].
pub fn reproduce_any(request: &ReproduceRequest, runner: &impl Runner) -> Result<Reproduced> {
    Ok(if request.study.variants.is_empty() {
        Reproduced::Study(Box::new(reproduce(request, runner)?))
    } else {
        Reproduced::Sweep(reproduce_sweep(request, runner)?)
    })
}

/// One seed of a study: its data configuration and where its corpus lives.
struct SeedPlan {
    seed: u64,
    data: DataConfig,
    data_dir: PathBuf,
}

/// A seed's corpus, prepared once however many seeds share it.
struct SeedCorpus {
    data_dir: PathBuf,
    corpus: PreparedCorpus,
}

/// Runs the study of `request` on `runner`; writes `results.json`, `report.md` and the plots
/// into the output directory and returns the results.
///
/// # Errors
/// When the output directory is a user's own, in use, or any stage fails.
pub fn reproduce(request: &ReproduceRequest, runner: &impl Runner) -> Result<Results> {
    let cfg = &request.config;
    let study = &request.study;
    if !study.variants.is_empty() {
        bail!("study.variants is a sweep: run it with reproduce_any (memsinks reproduce does)");
    }
    cfg.validate()?;
    study.validate(cfg)?;
    let dir = StudyDir::new(&request.out);
    // A reproduction writes data/, runs/, posthoc/, plots/, results.json and report.md: never into
    // a user's own directory.
    if !is_empty_dir(dir.path())? && !dir.holds_reproduction() {
        bail!("{} is not empty and holds no reproduction: choose a new or empty --out", dir.path().display());
    }
    let _lock = DirLock::acquire(dir.path(), "reproduce")?;
    let seeds = if study.seeds.is_empty() { vec![cfg.train.seed] } else { study.seeds.clone() };
    let mut stages = Stages::default();

    // Each seed draws its own corpus (held-out and repeated documents, canaries, data order, and
    // generated stories themselves) when `study.vary_data` is on: seed `s` uses data seed
    // `data.seed + s` (`StudyConfig::data_for_seed`), so a seed's corpus is the same in every
    // study that lists it.
    let plan: Vec<SeedPlan> = seeds
        .iter()
        .map(|&seed| {
            let data = study.data_for_seed(&cfg.data, seed);
            let data_dir = dir.data_for(&data, &cfg.data);
            SeedPlan { seed, data, data_dir }
        })
        .collect();
    let corpora = prepare_corpora(&mut stages, &plan, study)?;
    let corpus = &corpora[0].corpus;
    let forget_sets: Vec<ForgetSet> = if corpus.manifest.indices(Split::Canary).is_empty() {
        vec![ForgetSet::Repeated]
    } else {
        vec![ForgetSet::Repeated, ForgetSet::Canary]
    };
    let drops = usize::from(study.methods.contains(&Method::Memsinks));
    stages.more_stages((seeds.len() * forget_sets.len() * (drops + study.posthoc.len())) as u64);

    let mut trained = Vec::new();
    for p in &plan {
        for &method in &study.methods {
            let mut run_cfg = cfg.clone();
            run_cfg.data = p.data.clone();
            run_cfg.train.method = method;
            run_cfg.train.seed = p.seed;
            let run_dir = dir.run(method, p.seed);
            let summary = stages.train(&run_cfg, &run_dir, &p.data_dir, request.rerun, runner)?;
            let eval = stages.evaluate(&dir, &run_cfg, study, &run_dir, runner)?;
            trained.push(Trained { method, seed: p.seed, dir: run_dir, summary, eval });
        }
    }
    let (by_design, posthoc) = removals(&mut stages, &dir, study, &trained, &seeds, &forget_sets, runner)?;
    let sources = remove_sources(&mut stages, &dir, study, &trained, &corpora, &plan, runner)?;

    stages.close_progress();
    let outputs = StudyOutputs { timings: stages.timings, trained, posthoc, by_design, sources };
    let results = assemble(&request.name, cfg, study, &seeds, runner.backend(), outputs, corpus)?;
    write_atomic(&dir.results(), &serde_json::to_vec_pretty(&results)?)?;
    report::write_report(dir.path(), &results)?;
    Ok(results)
}

/// Prepares (or reuses) each distinct corpus of the plan, in plan order, and starts the progress
/// bar over the stages known so far: corpora, then training and evaluating each method of each
/// seed (removals are added once the first corpus says whether there are canaries).
fn prepare_corpora(stages: &mut Stages, plan: &[SeedPlan], study: &StudyConfig) -> Result<Vec<SeedCorpus>> {
    let distinct = plan.iter().map(|p| &p.data_dir).collect::<std::collections::BTreeSet<_>>().len();
    stages.show_progress((distinct + plan.len() * study.methods.len() * 2) as u64);
    let mut corpora: Vec<SeedCorpus> = Vec::new();
    for p in plan {
        if corpora.iter().any(|c| c.data_dir == p.data_dir) {
            continue;
        }
        let started = Instant::now();
        let corpus = memsinks_data::prepare(&p.data, &p.data_dir, true)?;
        let name = p.data_dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        stages.finished(Timing {
            stage: format!("prepare corpus ({name})"),
            seconds: started.elapsed().as_secs_f64(),
            cached: false,
        });
        corpora.push(SeedCorpus { data_dir: p.data_dir.clone(), corpus });
    }
    Ok(corpora)
}

/// Dropping the sinks of the MemSinks model and every post-hoc method on the standard model, in
/// every seed and for every forget set, so that their comparisons get intervals over seeds:
/// `(by design, post-hoc)`.
fn removals(
    stages: &mut Stages,
    dir: &StudyDir,
    study: &StudyConfig,
    trained: &[Trained],
    seeds: &[u64],
    forget_sets: &[ForgetSet],
    runner: &impl Runner,
) -> Result<(Vec<MethodResult>, Vec<MethodResult>)> {
    let (mut by_design, mut posthoc) = (Vec::new(), Vec::new());
    for &seed in seeds {
        let of = |m: Method| trained.iter().find(|t| t.method == m && t.seed == seed);
        let mut dropped = Vec::new();
        if let Some(mem) = of(Method::Memsinks) {
            for forget in forget_sets {
                let task = MethodTask::new(mem.dir.path(), "drop-sinks", &[], forget.clone())?;
                dropped.push(stages.removal(dir, mem, task, runner)?);
            }
        }
        // Post-hoc relearning starts where the method forgot as much as dropping the sinks did
        // in the same seed, so that every method's relearning test starts from the same ΔL_forget.
        let matched = |forget: &ForgetSet| {
            dropped.iter().find(|m| m.forget == *forget).and_then(|m| m.curve.last()).map(|p| p.delta_forget)
        };
        let standard = of(Method::Standard).with_context(|| format!("the standard model of seed {seed}"))?;
        for entry in &study.posthoc {
            for forget in forget_sets {
                let mut task = MethodTask::new(standard.dir.path(), &entry.method, &entry.sets, forget.clone())?;
                if let Some(relearn) = task.file.relearn.as_mut() {
                    relearn.start_at_delta_forget = relearn.start_at_delta_forget.or(matched(forget));
                }
                posthoc.push(stages.removal(dir, standard, task, runner)?);
            }
        }
        by_design.extend(dropped);
    }
    Ok((by_design, posthoc))
}

/// With a corpus of sources (`data.source_key`) and `study.forget_sources`: in every seed, each
/// MemSinks-family model drops the sinks of the first trained sources of its corpus
/// (`drop-source-sinks`), and every `study.source_posthoc` method forgets the same sources on the
/// standard model (without their relearning test).
fn remove_sources(
    stages: &mut Stages,
    dir: &StudyDir,
    study: &StudyConfig,
    trained: &[Trained],
    corpora: &[SeedCorpus],
    plan: &[SeedPlan],
    runner: &impl Runner,
) -> Result<Vec<SourceRemovalRun>> {
    let mut out = Vec::new();
    for p in plan {
        let corpus = &corpora.iter().find(|c| c.data_dir == p.data_dir).context("the seed's corpus")?.corpus;
        let keys: Vec<String> = corpus
            .manifest
            .sources
            .iter()
            .filter(|s| !s.held_out)
            .take(study.forget_sources)
            .map(|s| s.key.clone())
            .collect();
        for key in keys {
            let forget = ForgetSet::Source(key);
            for t in trained.iter().filter(|t| t.seed == p.seed) {
                let by_design = [PosthocEntry { method: "drop-source-sinks".into(), sets: Vec::new() }];
                let methods: &[PosthocEntry] = match t.method {
                    Method::Memsinks => &by_design,
                    Method::Standard => &study.source_posthoc,
                    _ => continue,
                };
                stages.more_stages(methods.len() as u64);
                for entry in methods {
                    let mut task = MethodTask::new(t.dir.path(), &entry.method, &entry.sets, forget.clone())?;
                    task.file.relearn = None;
                    let result = stages.removal(dir, t, task, runner)?;
                    out.push(SourceRemovalRun { seed: p.seed, method: t.method, result });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_experiment_parses_and_validates() {
        let request = ReproduceRequest::default_experiment(&[], PathBuf::from("x")).unwrap();
        request.config.validate().unwrap();
        assert!(request.study.methods.contains(&Method::Standard));
    }
}
