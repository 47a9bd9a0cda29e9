//! `memsinks train`: train one model of an experiment through burn-train's learner.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use memsinks_train::run::load_run_config;
use memsinks_train::ExperimentConfig;
use memsinks_train::{DeviceRange, TrainTask};

use crate::backend::BackendChoice;

/// Train a model (method from the config's `train.method`).
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  memsinks train --config experiments/ts-quick.ron --set train.method=Standard --out runs/std\n  memsinks train --resume runs/std\n  memsinks train --resume runs/two-gpus --devices 1 --backend wgpu"
)]
pub struct TrainArgs {
    /// Experiment config (RON).
    #[arg(long, required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Overrides, e.g. `--set train.method=Memsinks --set train.lr=3e-4`.
    #[arg(long = "set", value_name = "KEY=VALUE", conflicts_with = "resume")]
    pub sets: Vec<String>,
    /// Run directory (default: runs/NAME-METHOD-RUNID).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its newest complete checkpoint.
    #[arg(long, conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// Prepared corpus to use or create (default: RUN_DIR/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Backend: flex, ndarray, cuda, wgpu (those compiled in).
    #[arg(long, value_parser = memsinks_train::BackendName::parse)]
    pub backend: Option<memsinks_train::BackendName>,
    /// First GPU index (GPU backends); `train.devices` consecutive devices are used.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Devices for this invocation instead of `train.devices` (e.g. to resume a two-device run
    /// on one): the global batch of the config stays, the accumulation changes to keep it.
    #[arg(long)]
    pub devices: Option<usize>,
}

/// Runs the subcommand.
pub fn run(args: &TrainArgs, out: &mut impl std::io::Write) -> Result<()> {
    let (cfg, run_dir, resume) = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            let cfg = load_run_config(dir).with_context(|| format!("cannot resume {}", dir.display()))?;
            (cfg, dir.clone(), true)
        }
        (None, Some(path)) => {
            let cfg = ExperimentConfig::load(path, &args.sets)?;
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
            let dir = args.out.clone().unwrap_or_else(|| {
                PathBuf::from("runs").join(format!("{name}-{}-{}", cfg.train.method.name(), cfg.run_id()))
            });
            (cfg, dir, false)
        }
        (None, None) => bail!("give --config FILE or --resume RUN_DIR"),
    };
    let devices = DeviceRange { first: args.device, count: args.devices.unwrap_or(cfg.train.devices) };
    if devices.count == 0 {
        bail!("--devices 0: train on at least one device");
    }
    let task = TrainTask { cfg, run_dir: run_dir.clone(), data: args.data.clone(), resume };
    let summary = task.run_on(&BackendChoice::chosen(args.backend), Some(devices))?;
    writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    writeln!(out, "run directory: {}", run_dir.display())?;
    Ok(())
}
