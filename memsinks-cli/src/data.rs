//! `memsinks data`: prepare corpora, generate synthetic stories, show statistics, download the
//! public corpora.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use memsinks_core::files::{temporary_sibling, write_atomic};
use memsinks_data::corpus::{Split, TOKENIZER_FILE};
use memsinks_data::download::{download_file, slimpajama_url, TINYSTORIES_FILES};
use memsinks_data::synthetic::{
    distinct_ngram_rate, distinct_story_rate, generate_stories, to_tinystories_text, StoryGenerator,
};
use memsinks_data::{prepare, PreparedCorpus};

/// Corpora: prepare, generate, stats, download.
#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Build the corpus of an experiment config: tokenizer, token cache, manifest, schedules.
    #[command(
        after_help = "Example:\n  memsinks data prepare --config experiments/ts-quick.ron --out runs/ts-quick/data"
    )]
    Prepare {
        /// Experiment config (RON) with a `data` section.
        #[arg(long)]
        config: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Overrides of the data section, e.g. `--set data.unique=500`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Write synthetic stories: TinyStories text format, or JSON Lines (`{"text": ...}`, zstd-compressed
    /// when the file ends in `.zst`) with `--jsonl`.
    #[command(
        after_help = "Examples:\n  memsinks data generate --stories 1000 --seed 1 --out stories.txt\n  memsinks data generate --stories 1000000 --jsonl --out shards/part-0.jsonl.zst"
    )]
    Generate {
        /// Number of stories.
        #[arg(long)]
        stories: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Write JSON Lines (SlimPajama's layout) instead of TinyStories text.
        #[arg(long)]
        jsonl: bool,
    },
    /// Print the counts of a prepared corpus.
    #[command(after_help = "Example:\n  memsinks data stats runs/ts-quick/data")]
    Stats {
        /// Prepared corpus directory.
        dir: PathBuf,
    },
    /// Download TinyStories or SlimPajama shards (resumable).
    #[command(
        after_help = "Examples:\n  memsinks data download tinystories --to data/tinystories\n  memsinks data download slimpajama --to data/slimpajama --shards 4"
    )]
    Download {
        /// `tinystories` or `slimpajama`.
        corpus: String,
        /// Target directory.
        #[arg(long)]
        to: PathBuf,
        /// SlimPajama shards to fetch.
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// Expected SHA-256 of each file, as `NAME=HEX` (repeatable). Without one, the digest of
        /// the completed file is recorded in NAME.sha256 and checked on every later call.
        #[arg(long = "sha256", value_name = "NAME=HEX")]
        pins: Vec<String>,
    },
}

/// Runs the subcommand, writing results to `out`.
pub fn run(args: &DataArgs, out: &mut impl std::io::Write) -> Result<()> {
    match &args.command {
        DataCommand::Prepare { config, out: dir, sets } => {
            let cfg = memsinks_train::ExperimentConfig::load_data_section(config, sets)?;
            let started = std::time::Instant::now();
            let corpus = prepare(&cfg, dir, true)?;
            writeln!(out, "prepared {} in {:.1}s", dir.display(), started.elapsed().as_secs_f64())?;
            stats(&corpus, out)
        }
        DataCommand::Generate { stories, seed, out: path, jsonl: true } => {
            write_jsonl_stories(*stories, *seed, path)?;
            writeln!(out, "{}", serde_json::json!({"stories": stories, "out": path}))?;
            Ok(())
        }
        DataCommand::Generate { stories, seed, out: path, jsonl: false } => {
            if *stories == 0 {
                bail!("--stories must be positive");
            }
            let texts = generate_stories(*stories, *seed);
            write_atomic(path, to_tinystories_text(&texts).as_bytes())?;
            let line = serde_json::json!({
                "stories": stories,
                "distinct_stories": distinct_story_rate(&texts),
                "distinct_4grams": distinct_ngram_rate(&texts, 4),
                "distinct_8grams": distinct_ngram_rate(&texts, 8),
                "out": path,
            });
            writeln!(out, "{line}")?;
            Ok(())
        }
        DataCommand::Stats { dir } => stats(&PreparedCorpus::open(dir)?, out),
        DataCommand::Download { corpus, to, shards, pins } => {
            let mut pinned = std::collections::HashMap::new();
            for pin in pins {
                let (name, hex) =
                    pin.split_once('=').with_context(|| format!("--sha256 `{pin}` must look like NAME=HEX"))?;
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    bail!("--sha256 {name}: `{hex}` is not a SHA-256 (64 hexadecimal digits)");
                }
                pinned.insert(name.to_string(), hex.to_string());
            }
            let urls: Vec<String> = match corpus.as_str() {
                "tinystories" => TINYSTORIES_FILES.iter().map(|s| s.to_string()).collect(),
                "slimpajama" => (0..*shards).map(slimpajama_url).collect(),
                other => bail!("unknown corpus `{other}`; allowed: tinystories, slimpajama"),
            };
            for url in urls {
                let name = url.rsplit('/').next().unwrap_or("file");
                let path = download_file(&url, &to.join(name), pinned.get(name).map(String::as_str), 5, true)?;
                writeln!(out, "{}", path.display())?;
            }
            Ok(())
        }
    }
}

/// Streams `count` stories as JSON Lines into `path` (zstd when it ends in `.zst`), through a
/// temporary file renamed at the end.
fn write_jsonl_stories(count: usize, seed: u64, path: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let tmp = temporary_sibling(path, "");
    let file =
        memsinks_core::files::create_new_file(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut sink: Box<dyn Write> = if path.extension().is_some_and(|e| e == "zst") {
        Box::new(zstd::stream::write::Encoder::new(file, 3)?.auto_finish())
    } else {
        Box::new(std::io::BufWriter::new(file))
    };
    let bar = memsinks_data::corpus::progress_bar(true, count as u64, "generating stories");
    for (i, story) in StoryGenerator::new(seed).take(count).enumerate() {
        writeln!(sink, "{}", serde_json::json!({ "text": story }))?;
        if i % 10_000 == 0 {
            bar.set_position(i as u64);
        }
    }
    sink.flush()?;
    drop(sink);
    bar.finish_and_clear();
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn stats(corpus: &PreparedCorpus, out: &mut impl std::io::Write) -> Result<()> {
    let m = &corpus.manifest;
    let mut splits = serde_json::Map::new();
    for split in
        [Split::Repeated, Split::Canary, Split::Unique, Split::Validation, Split::CanaryHeldOut, Split::DedupFill]
    {
        let reps =
            m.documents.iter().find(|d| d.split == split).map_or(u32::from(split == Split::Unique), |d| d.repetitions);
        splits.insert(
            serde_json::to_value(split)?.as_str().unwrap_or_default().to_string(),
            serde_json::json!({"documents": m.counts().get(&split).copied().unwrap_or(0), "tokens": m.tokens(split), "repetitions": reps}),
        );
    }
    let line = serde_json::json!({
        "dir": corpus.dir,
        "config_hash": m.config_hash,
        "vocab_size": m.vocab_size,
        "tokenizer": corpus.dir.join(TOKENIZER_FILE),
        "splits": splits,
        "occurrences": m.occurrences,
        "occurrences_dedup": m.occurrences_dedup,
        "cache_tokens": corpus.cache.num_tokens(),
        "duplicates_dropped": m.duplicates_dropped,
        "near_duplicates_dropped": m.near_duplicates_dropped,
        "dedup_removed_tokens": m.dedup_removed_tokens,
        "dedup_fill_tokens": m.dedup_fill_tokens,
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&line)?)?;
    Ok(())
}
