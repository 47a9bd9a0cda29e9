//! `memsinks generate`: text from a trained run in a chosen MLP mode, to watch memorized stories
//! come back (sinks on) or not (sinks dropped).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use clap::Args;
use memsinks_data::corpus::sequence_id;
use memsinks_data::rng::SplitMix64;
use memsinks_model::{MlpMode, SeqLayout};
use memsinks_train::run::FinishedRun;

use crate::backend::{default_backend, run_on, BackendTask};

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
    /// MLP mode: train, all, drop-sinks, drop-sinks-plain, activate-seq.
    #[arg(long, default_value = "drop-sinks")]
    mode: String,
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
    #[arg(long)]
    backend: Option<String>,
}

struct GenerateTask {
    args: GenerateArgs,
    mode: MlpMode,
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

    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Generated> {
        let args = &self.args;
        let device = &devices[0];
        let run = FinishedRun::open(&args.run)?;
        let (model, cfg) = run.model::<B::InnerBackend>(device)?;
        let corpus = &run.corpus;
        let tok = &corpus.tokenizer;
        let (mut tokens, id, truth) = match (args.doc, &args.prompt) {
            (Some(doc), _) => {
                if doc >= corpus.manifest.num_docs() {
                    bail!("--doc {doc}: the corpus has {} documents", corpus.manifest.num_docs());
                }
                let all = corpus.cache.doc(doc);
                let k = args.prompt_tokens.min(all.len()).max(1);
                let truth = tok.decode(&all[k..all.len().min(k + args.max_tokens)])?;
                (all[..k].to_vec(), sequence_id(&all), Some(truth))
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
        let prompt_len = tokens.len();
        let mut rng = SplitMix64::new(args.seed);
        for _ in 0..args.max_tokens {
            let window = &tokens[tokens.len().saturating_sub(cfg.max_seq_len)..];
            let ids: Vec<i64> = window.iter().map(|&t| t as i64).collect();
            let len = ids.len();
            let input = Tensor::<B::InnerBackend, 2, Int>::from_data(TensorData::new(ids, [1, len]), device);
            let logits = model.forward(input, &SeqLayout::per_row(&[id], len), &self.mode);
            let last: Vec<f32> = logits.narrow(1, len - 1, 1).into_data().convert::<f32>().to_vec().expect("f32");
            let next = if args.greedy { argmax(&last) } else { sample(&last, args.temperature, args.top_k, &mut rng) };
            if next == tok.end_of_text() {
                break;
            }
            tokens.push(next);
        }
        Ok(Generated {
            prompt: tok.decode(&tokens[..prompt_len])?,
            continuation: tok.decode(&tokens[prompt_len..])?,
            truth,
        })
    }
}

fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

/// Samples from `softmax(logits / temperature)` restricted to the `top_k` largest (0: all).
fn sample(logits: &[f32], temperature: f64, top_k: usize, rng: &mut SplitMix64) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let t = temperature.max(1e-6);
    let top = logits[order[0]] as f64;
    let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - top) / t).exp()).collect();
    let mut u = rng.unit() * weights.iter().sum::<f64>();
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    order[order.len() - 1] as u32
}

/// Runs the subcommand.
pub fn run(args: &GenerateArgs, out: &mut impl std::io::Write) -> Result<()> {
    let mode = MlpMode::parse(&args.mode).with_context(|| {
        format!("unknown --mode `{}`; allowed: train, all, drop-sinks, drop-sinks-plain, activate-seq", args.mode)
    })?;
    if !args.greedy && (args.temperature.is_nan() || args.temperature <= 0.0) {
        bail!("--temperature must be positive (or use --greedy)");
    }
    let backend = args.backend.clone().unwrap_or_else(|| default_backend().to_string());
    let g = run_on(&backend, "f32", 0, 1, GenerateTask { args: args.clone(), mode })?;
    writeln!(out, "{}\u{2192}{}", g.prompt, g.continuation)?;
    if let Some(truth) = g.truth {
        writeln!(out, "\n[the document continues]\n{}{}", g.prompt, truth)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_respects_top_k_and_temperature() {
        let logits = [0.0f32, 5.0, 4.0, -3.0];
        assert_eq!(argmax(&logits), 1);
        let mut rng = SplitMix64::new(1);
        for _ in 0..200 {
            assert!(matches!(sample(&logits, 1.0, 2, &mut rng), 1 | 2), "outside the top 2");
        }
        // A near-zero temperature is greedy.
        assert!((0..50).all(|_| sample(&logits, 1e-4, 0, &mut rng) == 1));
        // Temperature 1 follows the softmax: token 2 has probability 1/(1+e) ≈ 0.27 within the top 2.
        let twos = (0..4000).filter(|_| sample(&logits, 1.0, 2, &mut rng) == 2).count() as f64 / 4000.0;
        assert!((twos - 0.269).abs() < 0.03, "{twos}");
    }
}
