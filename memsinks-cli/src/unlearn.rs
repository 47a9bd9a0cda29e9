//! `memsinks unlearn`: run a post-hoc unlearning baseline on a trained run and write its
//! trade-off curve.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use memsinks_data::overrides::apply_overrides;
use memsinks_data::{write_atomic, PreparedCorpus};
use memsinks_model::io::load_model;
use memsinks_model::MlpMode;
use memsinks_train::run::{load_run_config, load_summary, FINAL_DIR};
use memsinks_unlearn::finetune::{unlearn, FinetuneConfig, ForgetSet, Objective};
use memsinks_unlearn::localize::{prune_sweep, Scorer};

use crate::backend::{default_backend, run_on, BackendTask};

/// Run an unlearning baseline on a trained run: fine-tuning (gradient-ascent,
/// gradient-difference, npo) or localization + pruning (prune-activations, prune-random).
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  memsinks unlearn --run runs/std --method gradient-ascent\n  memsinks unlearn --run runs/std --method npo --forget canary --set lr=3e-4 --set steps=100"
)]
pub struct UnlearnArgs {
    /// Run directory (written by `memsinks train`).
    #[arg(long)]
    run: PathBuf,
    /// gradient-ascent, gradient-difference, npo, prune-activations or prune-random.
    #[arg(long)]
    method: String,
    /// Pruning: shares of each layer's hidden units to zero, one curve point each.
    #[arg(long, value_delimiter = ',', default_value = "0.001,0.01,0.03,0.1,0.3")]
    fractions: Vec<f64>,
    /// repeated or canary.
    #[arg(long, default_value = "repeated")]
    forget: String,
    /// Hyperparameter overrides, e.g. `--set lr=3e-4 --set steps=100`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Backend.
    #[arg(long)]
    backend: Option<String>,
}

/// A method of the registry.
#[derive(Clone, Copy)]
enum Method {
    Finetune(Objective),
    Prune(Scorer),
}

struct UnlearnTask {
    args: UnlearnArgs,
    method: Method,
    cfg: FinetuneConfig,
}

impl BackendTask for UnlearnTask {
    type Output = serde_json::Value;

    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<serde_json::Value> {
        let device = &devices[0];
        let exp = load_run_config(&self.args.run)?;
        let summary = load_summary(&self.args.run)?;
        let corpus = PreparedCorpus::open(&summary.data_dir)?;
        let (model, _) = load_model::<B>(&self.args.run.join(FINAL_DIR), device)?;
        // The post-hoc baselines act on the deployed model: for a MemSinks run, with sinks dropped.
        let mode = if model.sink_pool().is_empty() { MlpMode::Train } else { MlpMode::DropSinks { rescale: true } };
        let (context, cfg) = (exp.data.context, &self.cfg);
        Ok(match self.method {
            Method::Finetune(objective) => {
                serde_json::to_value(unlearn(model, &corpus, context, objective, cfg, &mode, device)?)?
            }
            Method::Prune(scorer) => {
                let inner = burn::module::AutodiffModule::valid(&model);
                let curve = prune_sweep(
                    &inner,
                    &corpus,
                    scorer,
                    cfg.forget,
                    &self.args.fractions,
                    &mode,
                    context,
                    cfg.batch_size,
                    cfg.eval_docs,
                    device,
                )?;
                serde_json::to_value(curve)?
            }
        })
    }
}

/// Runs the subcommand.
pub fn run(args: &UnlearnArgs, out: &mut impl std::io::Write) -> Result<()> {
    let method = Objective::parse(&args.method)
        .map(Method::Finetune)
        .or_else(|| Scorer::parse(&args.method).map(Method::Prune))
        .with_context(|| {
            format!(
                "unknown --method `{}`; allowed: gradient-ascent, gradient-difference, npo, prune-activations, prune-random",
                args.method
            )
        })?;
    let forget = match args.forget.as_str() {
        "repeated" => ForgetSet::Repeated,
        "canary" => ForgetSet::Canary,
        other => anyhow::bail!("unknown --forget `{other}`; allowed: repeated, canary"),
    };
    let cfg = apply_overrides(&FinetuneConfig { forget, ..Default::default() }, &args.sets)?;
    let backend = args.backend.clone().unwrap_or_else(|| default_backend().to_string());
    let curve = run_on(&backend, "f32", 0, 1, UnlearnTask { args: args.clone(), method, cfg: cfg.clone() })?;
    let path = args.run.join(format!("unlearn-{}-{}.json", args.method, args.forget));
    let json = serde_json::json!({ "method": args.method, "config": cfg, "curve": curve });
    write_atomic(&path, &serde_json::to_vec_pretty(&json)?)?;
    for p in curve.as_array().into_iter().flatten() {
        writeln!(out, "{p}")?;
    }
    writeln!(out, "wrote {}", path.display())?;
    Ok(())
}
