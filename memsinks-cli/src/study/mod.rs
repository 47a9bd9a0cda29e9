//! `memsinks reproduce` and `memsinks report`: the whole study from one experiment file.
//!
//! Stages, each cached in the output directory and redone only when what it depends on changed:
//! prepare the corpus (keyed by the data config's hash); train every method and seed (keyed by
//! the run ID, a hash of data, model and training); evaluate each run (keyed by the run ID and
//! the evaluation options); run the post-hoc methods on the standard model and drop the sinks of
//! the MemSinks model (keyed by the run ID, the method file and the forget set). Then
//! `results.json`, `report.md` and the plots.

pub mod plot;
pub mod report;
pub mod results;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use memsinks_data::overrides::apply_overrides;
use memsinks_data::{write_atomic, Manifest, Split};
use memsinks_model::io::{is_empty_dir, DirLock};
use memsinks_train::run::{load_run_config, load_summary, TrainSummary};
use memsinks_train::{ExperimentConfig, Method};
use memsinks_unlearn::{load_method, ForgetSet, MethodResult};
use serde::{Deserialize, Serialize};

use crate::backend::{default_backend, run_on};
use crate::eval::{EvalFile, EvalTask};
use crate::train::TrainTask;
use crate::unlearn::run_method_on;
use results::{Dynamics, DynamicsPoint, Forgetting, MainRow, Results, RowValues, Timing, TrackedDoc, Versions};

/// The embedded default experiment (`experiments/ts-quick.ron`): synthetic stories, no download.
pub const DEFAULT_EXPERIMENT: &str = include_str!("../../../experiments/ts-quick.ron");

/// Reproduce the paper's TinyStories study from one experiment file: corpus, four training
/// methods, evaluation in every mode, post-hoc baselines, report and plots.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  memsinks reproduce                       # experiments/ts-quick.ron, embedded, ~10 min on 2 cores\n  \
memsinks reproduce experiments/smoke.ron --out runs/smoke\n  \
memsinks reproduce experiments/ts-cpu.ron --set data.source.path=valid.txt --set 'study.seeds=[0,1]'\n  \
memsinks reproduce experiments/ts-cpu.ron --resume      # continue interrupted training"
)]
pub struct ReproduceArgs {
    /// Experiment config (RON); default: the embedded `ts-quick`.
    config: Option<PathBuf>,
    /// Output directory (default: runs/reproduce-NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overrides, e.g. `--set train.epochs=2 --set 'study.posthoc=["npo"]'`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Continue interrupted training runs from their newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Backend.
    #[arg(long)]
    backend: Option<String>,
}

/// Redraw `report.md` and the plots of a reproduction from its `results.json`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Example:\n  memsinks report runs/reproduce-ts-quick")]
pub struct ReportArgs {
    /// The reproduction's output directory.
    dir: PathBuf,
}

/// Runs `memsinks report`.
pub fn run_report(args: &ReportArgs, out: &mut impl std::io::Write) -> Result<()> {
    let results = report::load_results(&args.dir)?;
    report::write_report(&args.dir, &results)?;
    writeln!(out, "{}", report::main_table(&results))?;
    writeln!(out, "wrote {}", args.dir.join("report.md").display())?;
    Ok(())
}

/// A cached stage's output with the key it was computed for.
#[derive(Serialize, Deserialize)]
struct Cached<T> {
    key: String,
    value: T,
    seconds: f64,
}

/// Returns the cached value at `path` when its key is `key`, else computes, stores and returns it.
fn cached<T: Serialize + for<'de> Deserialize<'de>>(
    path: &Path,
    key: &str,
    stage: String,
    timings: &mut Vec<Timing>,
    compute: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(c) = serde_json::from_str::<Cached<T>>(&text) {
            if c.key == key {
                timings.push(Timing { stage, seconds: c.seconds, cached: true });
                return Ok(c.value);
            }
        }
    }
    tracing::info!("{stage}");
    let started = Instant::now();
    let value = compute()?;
    let seconds = started.elapsed().as_secs_f64();
    let entry = Cached { key: key.to_string(), value, seconds };
    write_atomic(path, &serde_json::to_vec_pretty(&entry)?)?;
    timings.push(Timing { stage, seconds, cached: false });
    Ok(entry.value)
}

fn short_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Trains (or reuses) one run; returns its summary.
fn train_stage(
    cfg: &ExperimentConfig,
    dir: &Path,
    data: &Path,
    resume: bool,
    backend: &str,
    timings: &mut Vec<Timing>,
) -> Result<TrainSummary> {
    let stage = format!("train {} seed {}", cfg.train.method.name(), cfg.train.seed);
    if dir.exists() {
        let same = load_run_config(dir).map(|c| c.run_id() == cfg.run_id()).unwrap_or(false);
        if same {
            if let Ok(summary) = load_summary(dir) {
                timings.push(Timing { stage, seconds: summary.wall_s, cached: true });
                return Ok(summary);
            }
            if !resume {
                bail!("{} holds an interrupted run of this config: rerun with --resume to continue it", dir.display());
            }
        } else {
            tracing::info!("{} was trained with another config: training it again", dir.display());
            std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
    }
    tracing::info!("{stage}");
    let resume = resume && dir.join("checkpoint").exists();
    let task = TrainTask { cfg: cfg.clone(), run_dir: dir.to_path_buf(), data: Some(data.to_path_buf()), resume };
    let summary = run_on(backend, cfg.train.precision.name(), 0, cfg.train.devices, task)?;
    timings.push(Timing { stage, seconds: summary.wall_s, cached: false });
    Ok(summary)
}

/// One trained and evaluated model.
struct Trained {
    method: Method,
    seed: u64,
    dir: PathBuf,
    summary: TrainSummary,
    eval: EvalFile,
}

/// Runs `memsinks reproduce`.
pub fn run_reproduce(args: &ReproduceArgs, out: &mut impl std::io::Write) -> Result<()> {
    let started = Instant::now();
    let (name, base) = match &args.config {
        Some(path) => {
            let name = path.file_stem().map_or_else(|| "experiment".into(), |s| s.to_string_lossy().to_string());
            (name, ExperimentConfig::load(path, &[])?)
        }
        None => ("ts-quick".to_string(), ron::from_str(DEFAULT_EXPERIMENT).context("the embedded ts-quick.ron")?),
    };
    let cfg: ExperimentConfig = apply_overrides(&base, &args.sets)?;
    cfg.validate()?;
    let dir = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("reproduce-{name}")));
    // A reproduction writes data/, runs/, posthoc/, plots/, results.json and report.md: never into
    // a user's own directory.
    let ours =
        ["results.json", "runs", "data/.memsinks-corpus", "data/manifest.json"].iter().any(|f| dir.join(f).exists());
    if !is_empty_dir(&dir)? && !ours {
        bail!("{} is not empty and holds no reproduction: choose a new or empty --out", dir.display());
    }
    let _lock = DirLock::acquire(&dir, "reproduce")?;
    let backend = args.backend.clone().unwrap_or_else(|| default_backend().to_string());
    let study = &cfg.study;
    if !study.methods.contains(&Method::Standard) {
        bail!("study.methods must include Standard: every comparison is made against it");
    }
    let seeds = if study.seeds.is_empty() { vec![cfg.train.seed] } else { study.seeds.clone() };
    let mut timings = Vec::new();

    // Corpus.
    let data = dir.join("data");
    let t = Instant::now();
    let corpus = memsinks_data::prepare(&cfg.data, &data, true)?;
    timings.push(Timing { stage: "prepare corpus".into(), seconds: t.elapsed().as_secs_f64(), cached: false });
    let has_canaries = !corpus.manifest.indices(Split::Canary).is_empty();

    // Training and evaluation.
    let mut trained = Vec::new();
    for &seed in &seeds {
        for &method in &study.methods {
            let mut run_cfg = cfg.clone();
            run_cfg.train.method = method;
            run_cfg.train.seed = seed;
            let run_dir = dir.join("runs").join(format!("{}-s{seed}", method.name()));
            let summary = train_stage(&run_cfg, &run_dir, &data, args.resume, &backend, &mut timings)?;
            let key = format!(
                "{} {} {} {}",
                run_cfg.run_id(),
                study.eval_docs,
                study.extract_prompt,
                study.extract_continuation
            );
            let eval_task = || EvalTask {
                run: run_dir.clone(),
                mode: None,
                exclude: Vec::new(),
                max_docs: study.eval_docs,
                k: study.extract_prompt,
                m: study.extract_continuation,
                reference: None,
            };
            let stage = format!("eval {} seed {seed}", method.name());
            let eval = cached(&run_dir.join("eval-stage.json"), &key, stage, &mut timings, || {
                let file = run_on(&backend, "f32", 0, 1, eval_task())?;
                // Also the plain eval.json that `memsinks eval` writes, for the other commands.
                write_atomic(&run_dir.join("eval.json"), &serde_json::to_vec_pretty(&file)?)?;
                Ok(file)
            })?;
            trained.push(Trained { method, seed, dir: run_dir, summary, eval });
        }
    }

    // Post-hoc methods on the standard model and dropping the sinks of the MemSinks model.
    let first = |m: Method| trained.iter().find(|t| t.method == m && t.seed == seeds[0]);
    let forget_sets: Vec<ForgetSet> =
        if has_canaries { vec![ForgetSet::Repeated, ForgetSet::Canary] } else { vec![ForgetSet::Repeated] };
    let mut posthoc = Vec::new();
    let standard = first(Method::Standard).expect("trained above");
    for entry in &study.posthoc {
        let mut words = entry.split_whitespace();
        let method = words.next().context("an empty study.posthoc entry")?;
        let sets: Vec<String> = words.map(String::from).collect();
        for &forget in &forget_sets {
            posthoc.push(method_stage(&dir, standard, method, &sets, forget, &backend, &mut timings)?);
        }
    }
    let mut by_design = Vec::new();
    if let Some(mem) = first(Method::Memsinks) {
        for &forget in &forget_sets {
            by_design.push(method_stage(&dir, mem, "drop-sinks", &[], forget, &backend, &mut timings)?);
        }
    }

    let results = assemble(&name, &cfg, &seeds, &backend, timings, &trained, posthoc, by_design, &corpus.manifest)?;
    write_atomic(&dir.join("results.json"), &serde_json::to_vec_pretty(&results)?)?;
    report::write_report(&dir, &results)?;
    writeln!(out, "{}", report::main_table(&results))?;
    writeln!(out, "wrote {} ({:.0} s)", dir.join("report.md").display(), started.elapsed().as_secs_f64())?;
    Ok(())
}

/// Runs (or reuses) one registry method on a trained run.
fn method_stage(
    dir: &Path,
    on: &Trained,
    method: &str,
    sets: &[String],
    forget: ForgetSet,
    backend: &str,
    timings: &mut Vec<Timing>,
) -> Result<MethodResult> {
    let (_, file) = load_method(method, sets)?;
    let key = format!("{} {} {}", on.summary.run_id, ron::to_string(&file)?, forget.name());
    let label = Path::new(method).file_stem().map_or_else(|| method.to_string(), |s| s.to_string_lossy().to_string());
    let path = dir.join("posthoc").join(format!("{label}-{}-{}.json", on.method.name(), forget.name()));
    let stage = format!("{label} on {} ({})", on.method.name(), forget.name());
    std::fs::create_dir_all(dir.join("posthoc"))?;
    cached(&path, &key, stage, timings, || run_method_on(&on.dir, method, sets, forget, backend))
}

/// Builds `results.json` from the stages' outputs.
#[allow(clippy::too_many_arguments)]
fn assemble(
    name: &str,
    cfg: &ExperimentConfig,
    seeds: &[u64],
    backend: &str,
    timings: Vec<Timing>,
    trained: &[Trained],
    posthoc: Vec<MethodResult>,
    by_design: Vec<MethodResult>,
    manifest: &Manifest,
) -> Result<Results> {
    let rows_spec: [(&str, Method, &str); 6] = [
        ("standard", Method::Standard, "train"),
        ("dedup", Method::Dedup, "train"),
        ("gradient masking, sinks dropped", Method::GradientMasking, "drop-sinks"),
        ("memsinks, sinks on", Method::Memsinks, "activate-seq"),
        ("memsinks, sinks dropped (rescaled)", Method::Memsinks, "drop-sinks"),
        ("memsinks, sinks dropped (plain)", Method::Memsinks, "drop-sinks-plain"),
    ];
    let standard_gap = |seed: u64| {
        trained
            .iter()
            .find(|t| t.method == Method::Standard && t.seed == seed)
            .and_then(|t| t.eval.modes.first())
            .map(|m| m.gap)
    };
    let mut rows = Vec::new();
    for (label, method, mode) in rows_spec {
        let values: Vec<RowValues> = trained
            .iter()
            .filter(|t| t.method == method)
            .filter_map(|t| {
                let m = t.eval.modes.iter().find(|m| m.mode == mode)?;
                Some(RowValues {
                    seed: t.seed,
                    l_rep: m.repeated.nll,
                    l_canary: m.canary.as_ref().map(|c| c.nll),
                    l_val: m.validation.nll,
                    gap: m.gap,
                    closure_vs_standard: (method != Method::Standard)
                        .then(|| standard_gap(t.seed).map(|g| memsinks_unlearn::metrics::gap_closure(m.gap, g)))
                        .flatten(),
                    extraction: m.extraction_repeated.match_rate,
                    extraction_heldout: m.extraction_validation.match_rate,
                    verbatim: m.extraction_repeated.verbatim_len,
                    mia_auc: m.mia_auc,
                    tokens_seen: t.summary.tokens_seen,
                    wall_s: t.summary.wall_s,
                })
            })
            .collect();
        if !values.is_empty() {
            rows.push(MainRow { label: label.into(), method: method.name().into(), mode: mode.into(), values });
        }
    }
    let first_seed: Vec<&Trained> = trained.iter().filter(|t| t.seed == seeds[0]).collect();
    let mut dynamics = Vec::new();
    let mut forgetting = Vec::new();
    for t in &first_seed {
        let lines = eval_lines(&t.dir)?;
        dynamics.push(Dynamics {
            method: t.method.name().into(),
            points: lines
                .iter()
                .map(|l| DynamicsPoint {
                    step: l["step"].as_u64().unwrap_or(0),
                    val: l["val_loss"].as_f64().unwrap_or(f64::NAN),
                    rep_sinks: l["rep_loss_sinks"].as_f64().unwrap_or(f64::NAN),
                    rep_nosinks: l["rep_loss_nosinks"].as_f64().unwrap_or(f64::NAN),
                })
                .collect(),
        });
        if matches!(t.method, Method::Standard | Method::Memsinks) {
            forgetting.push(Forgetting { method: t.method.name().into(), docs: tracked_docs(&lines, t, manifest, 4) });
        }
    }
    let specificity = first_seed.iter().find(|t| t.method == Method::Memsinks).and_then(|t| {
        let s = &t.eval.exclusion_specificity;
        (!s.is_empty()).then(|| {
            let n = s.len() as f64;
            (s.iter().map(|x| x.target_delta).sum::<f64>() / n, s.iter().map(|x| x.others_delta).sum::<f64>() / n)
        })
    });
    Ok(Results {
        experiment: name.to_string(),
        config_hash: short_hash(&cfg.to_ron()),
        config: cfg.to_ron(),
        seeds: seeds.to_vec(),
        extraction: (cfg.study.extract_prompt, cfg.study.extract_continuation),
        versions: Versions { memsinks: env!("CARGO_PKG_VERSION").into(), burn: "0.21.0".into() },
        backend: backend.to_string(),
        timings,
        rows,
        posthoc,
        by_design,
        dynamics,
        forgetting,
        specificity,
    })
}

/// The evaluation lines of a run's `metrics.jsonl`.
fn eval_lines(run: &Path) -> Result<Vec<serde_json::Value>> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "eval")
        .collect())
}

/// The first `count` tracked repeated documents: their losses at each evaluation and the steps
/// at which they were trained on. A document at schedule position `p` is in optimizer step
/// `pass · ⌈occurrences / rows_per_step⌉ + ⌊p / rows_per_step⌋ + 1` of each pass over the
/// schedule (exact for one document per row; packed rows shift it by at most a step).
fn tracked_docs(lines: &[serde_json::Value], t: &Trained, manifest: &Manifest, count: usize) -> Vec<TrackedDoc> {
    let rows = t.summary.rows_per_step.max(1) as u64;
    let steps_per_pass = manifest.occurrences.div_ceil(rows);
    let passes = t.summary.schedule_passes.ceil() as u64;
    let last_step = t.summary.steps as f64;
    manifest
        .indices(Split::Repeated)
        .into_iter()
        .filter(|d| lines.first().is_some_and(|l| l["rep_doc_losses"].get(d.to_string()).is_some()))
        .take(count)
        .map(|doc| {
            let seen_at = (0..passes)
                .flat_map(|pass| {
                    manifest.documents[doc]
                        .positions
                        .iter()
                        .map(move |&p| (pass * steps_per_pass + p / rows + 1) as f64)
                })
                .filter(|&s| s <= last_step)
                .collect();
            let losses = lines
                .iter()
                .filter_map(|l| {
                    let pair = l["rep_doc_losses"].get(doc.to_string())?;
                    Some((l["step"].as_u64()?, pair[0].as_f64()?, pair[1].as_f64()?))
                })
                .collect();
            TrackedDoc { doc, seen_at, losses }
        })
        .collect()
}
