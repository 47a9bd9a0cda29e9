//! `memsinks generate`: text from a trained run in a chosen MLP mode, to watch memorized stories
//! come back (sinks on) or not (sinks dropped).

use memsinks_model::TrainBackend;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use memsinks_data::corpus::sequence_id;
use memsinks_data::rng::SplitMix64;
use memsinks_model::generate::{generate, Generation, Sampling};
use memsinks_model::MlpMode;
use memsinks_train::config::Precision;
use memsinks_train::run::FinishedRun;
use memsinks_train::{BackendTask, DeviceRange, Runner};

use crate::backend::BackendChoice;

/// Generate text from a trained run.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  memsinks generate --run runs/mem --mode drop-sinks --prompt 'Once upon a time' --max-tokens 60 --greedy\n  \
memsinks generate --run runs/mem --mode activate-seq --doc 0 --prompt-tokens 32 --greedy   # a repeated story, its own sinks on\n  \
memsinks generate --run runs/std --prompt 'Lily saw a' --temperature 0.8 --top-k 40 --seed 3"
)]
pub struct GenerateArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// MLP mode.
    #[arg(long, value_enum, default_value = "drop-sinks")]
    mode: MlpMode,
    /// Prompt text.
    #[arg(long, required_unless_present = "doc", conflicts_with = "doc")]
    prompt: Option<String>,
    /// Prompt with the start of this corpus document instead (e.g. a repeated story; see
    /// `memsinks data stats`), using its sequence ID for the sink modes.
    #[arg(long)]
    doc: Option<usize>,
    /// With --doc: prompt tokens taken from the document.
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Arg-max decoding.
    #[arg(long, conflicts_with_all = ["temperature", "top_k"])]
    greedy: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Sample among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backend.
    #[arg(long, value_parser = memsinks_train::BackendName::parse)]
    backend: Option<memsinks_train::BackendName>,
}

struct GenerateTask {
    args: GenerateArgs,
}

/// What was generated: the prompt, the continuation, and (with --doc) the document's own text
/// after the prompt for comparison.
struct Generated {
    prompt: String,
    continuation: String,
    truth: Option<String>,
}

impl BackendTask for GenerateTask {
    type Output = Generated;
    type Error = anyhow::Error;

    fn run<B: TrainBackend>(self, devices: Vec<B::Device>) -> Result<Generated> {
        let args = &self.args;
        let device = &devices[0];
        let run = FinishedRun::open(&args.run)?;
        let (model, cfg) = run.model::<B::InnerBackend>(device)?;
        let corpus = &run.corpus;
        let tok = &corpus.tokenizer;
        let (prompt, id, truth) = match (args.doc, &args.prompt) {
            (Some(doc), _) => {
                if doc >= corpus.manifest.num_docs() {
                    bail!("--doc {doc}: the corpus has {} documents", corpus.manifest.num_docs());
                }
                let all = corpus.cache.doc(doc);
                let k = args.prompt_tokens.min(all.len()).max(1);
                let truth = tok.decode(&all[k..all.len().min(k + args.max_tokens)])?;
                (all[..k].to_vec(), corpus.ids.id(doc, &all), Some(truth))
            }
            (None, Some(text)) => {
                let t = tok.encode(text)?;
                if t.is_empty() {
                    bail!("the prompt encodes to no tokens");
                }
                let id = sequence_id(&t);
                (t, id, None)
            }
            (None, None) => bail!("give --prompt TEXT or --doc INDEX"),
        };
        let sampling = if args.greedy {
            Sampling::Greedy
        } else {
            Sampling::Temperature { temperature: args.temperature, top_k: args.top_k }
        };
        let how =
            Generation { sampling, max_new: args.max_tokens, stop: Some(tok.end_of_text()), context: cfg.max_seq_len };
        let mut rng = SplitMix64::new(args.seed);
        let continuation = generate(&model, &prompt, id, &args.mode, &how, &mut || rng.unit(), device);
        Ok(Generated { prompt: tok.decode(&prompt)?, continuation: tok.decode(&continuation)?, truth })
    }
}

/// Runs the subcommand.
pub fn run(args: &GenerateArgs, out: &mut impl std::io::Write) -> Result<()> {
    if !args.greedy && (args.temperature.is_nan() || args.temperature <= 0.0) {
        bail!("--temperature must be positive (or use --greedy)");
    }
    let task = GenerateTask { args: args.clone() };
    let g = BackendChoice::chosen(args.backend).run(Precision::F32, DeviceRange::ONE, task)?;
    writeln!(out, "{}\u{2192}{}", g.prompt, g.continuation)?;
    if let Some(truth) = g.truth {
        writeln!(out, "\n[the document continues]\n{}{}", g.prompt, truth)?;
    }
    Ok(())
}
