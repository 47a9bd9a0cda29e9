//! The experiment corpus: repeated natural documents, random-token canaries, unique documents
//! seen once and held-out validation documents, each with a sequence ID; a manifest describing
//! them; the training schedule (which document each training row starts from, in order) for the
//! full and the deduplicated corpus; and a token cache.
//!
//! Output directory of [`prepare`] (built in `prepare.rs`):
//! `manifest.json`, `tokenizer.json`, `cache/` (token shards), `schedule.bin` and
//! `schedule_dedup.bin` (little-endian `u32` document indices, one per training occurrence). The
//! configuration types live in `data_config`, the directory rules in `corpus_dir`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::TokenCache;
use crate::rng::mix64;
use crate::source::{read_json_array, shard_files, Document, InvalidUtf8, JsonlReader, TinyStoriesReader};
use crate::synthetic::StoryGenerator;
use crate::tokenizer::TextTokenizer;

use crate::DataError;

pub use crate::data_config::{CanaryConfig, DataConfig, Ordering, RepeatConfig, SourceConfig, TokenizerConfig};
pub use crate::prepare::prepare;

/// The role of a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Natural text repeated many times.
    Repeated,
    /// Random tokens repeated many times.
    Canary,
    /// Natural text seen once.
    Unique,
    /// Held out.
    Validation,
    /// Random-token canaries drawn like the trained ones but never trained on.
    #[serde(rename = "canary-held-out")]
    CanaryHeldOut,
    /// Fresh natural text only the deduplicated model trains on, in place of the repetitions it
    /// does not see.
    #[serde(rename = "dedup-fill")]
    DedupFill,
}

/// The two halves of the repeated documents. Whatever is chosen by looking at how much
/// memorization a model isolated (training length, `p_mem`, learning rate) is chosen on the dev
/// half and reported on the test half, so the reported number was never looked at to make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Half {
    /// Repeated documents at even ranks (in manifest order, which is a random draw).
    Dev,
    /// Repeated documents at odd ranks.
    Test,
}

/// One document of the corpus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocEntry {
    /// Sequence ID (63-bit hash of the tokens, never 0).
    pub id: i64,
    /// Role.
    pub split: Split,
    /// Times seen in training (0 for validation).
    pub repetitions: u32,
    /// Tokens (without the end-of-text token).
    pub tokens: u32,
    /// Where the text came from (`file:offset`, `synthetic#i`, `canary#i`).
    pub origin: String,
    /// Training occurrence indices of this document in `schedule.bin` (repeated and canary only),
    /// so the dynamics can be related to when each repetition was seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<u64>,
}

/// The description of a prepared corpus that every later stage reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Hash of the [`DataConfig`].
    pub config_hash: String,
    /// The configuration itself.
    pub config: DataConfig,
    /// Fingerprint of the source files it was read from (paths, sizes, modification times).
    #[serde(default)]
    pub source_fingerprint: String,
    /// Tokenizer fingerprint.
    pub tokenizer_hash: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// The end-of-text token appended to every document.
    pub end_of_text: u32,
    /// Repeated, canary, validation and held-out canary documents, in cache order (indices
    /// `0..documents.len()`).
    pub documents: Vec<DocEntry>,
    /// Unique documents: cache indices `documents.len()..documents.len() + unique_docs`. They are
    /// counted, not listed, so a corpus of billions of documents keeps a small manifest.
    pub unique_docs: u64,
    /// Tokens of the unique documents.
    pub unique_tokens: u64,
    /// Dedup fill documents ([`Split::DedupFill`]): the cache indices after the unique ones.
    #[serde(default)]
    pub dedup_fill_docs: u64,
    /// Real tokens (as training rows hold them) of the dedup fill documents.
    #[serde(default)]
    pub dedup_fill_tokens: u64,
    /// Real tokens of the repetitions the deduplicated schedule leaves out: what the fill replaces.
    #[serde(default)]
    pub dedup_removed_tokens: u64,
    /// Training documents left out as near-duplicates of validation documents.
    #[serde(default)]
    pub near_duplicates_dropped: u64,
    /// Training occurrences in the full schedule.
    pub occurrences: u64,
    /// Training occurrences in the deduplicated schedule.
    pub occurrences_dedup: u64,
    /// Duplicate texts dropped while reading the sources.
    pub duplicates_dropped: u64,
}

impl Manifest {
    /// Documents in the corpus.
    pub fn num_docs(&self) -> usize {
        // Saturating: a damaged manifest's counts must not overflow (the cache check refuses it).
        let streamed = self.unique_docs.saturating_add(self.dedup_fill_docs);
        self.documents.len().saturating_add(usize::try_from(streamed).unwrap_or(usize::MAX))
    }

    /// Cache indices of the unique documents.
    fn unique_range(&self) -> std::ops::Range<usize> {
        let unique = usize::try_from(self.unique_docs).unwrap_or(usize::MAX);
        self.documents.len()..self.documents.len().saturating_add(unique)
    }

    /// The split of document `i`.
    pub fn split_of(&self, i: usize) -> Split {
        match self.documents.get(i) {
            Some(d) => d.split,
            None if self.unique_range().contains(&i) => Split::Unique,
            None => Split::DedupFill,
        }
    }

    /// Indices of the documents of one split.
    pub fn indices(&self, split: Split) -> Vec<usize> {
        match split {
            Split::Unique => self.unique_range().collect(),
            Split::DedupFill => (self.unique_range().end..self.num_docs()).collect(),
            _ => self.documents.iter().enumerate().filter(|(_, d)| d.split == split).map(|(i, _)| i).collect(),
        }
    }

    /// The repeated documents of one half ([`Half`]).
    pub fn repeated_half(&self, half: Half) -> Vec<usize> {
        let keep = if half == Half::Dev { 0 } else { 1 };
        self.indices(Split::Repeated)
            .into_iter()
            .enumerate()
            .filter(|(rank, _)| rank % 2 == keep)
            .map(|(_, i)| i)
            .collect()
    }

    /// Count of documents per split.
    pub fn counts(&self) -> HashMap<Split, usize> {
        let mut c = HashMap::new();
        for d in &self.documents {
            *c.entry(d.split).or_default() += 1;
        }
        c.insert(Split::Unique, self.unique_docs as usize);
        c.insert(Split::DedupFill, self.dedup_fill_docs as usize);
        c
    }

    /// Tokens per split (for the dedup fill: the real tokens training rows hold).
    pub fn tokens(&self, split: Split) -> u64 {
        match split {
            Split::Unique => self.unique_tokens,
            Split::DedupFill => self.dedup_fill_tokens,
            _ => self.documents.iter().filter(|d| d.split == split).map(|d| d.tokens as u64).sum(),
        }
    }
}

/// File names inside a prepared directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The tokenizer inside a prepared directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The full training schedule.
pub const SCHEDULE_FILE: &str = "schedule.bin";
/// The deduplicated training schedule.
pub const SCHEDULE_DEDUP_FILE: &str = "schedule_dedup.bin";

/// A prepared corpus opened for reading.
pub struct PreparedCorpus {
    /// The manifest.
    pub manifest: Manifest,
    /// The token cache (memory-mapped).
    pub cache: TokenCache,
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// The directory.
    pub dir: PathBuf,
}

impl PreparedCorpus {
    /// Opens a directory written by [`prepare`].
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| DataError::Format {
            path: path.clone(),
            message: format!("not a memsinks manifest: {e}; rerun `memsinks data prepare`"),
        })?;
        let cache = TokenCache::open(&dir.join("cache"))?;
        if cache.num_docs() != manifest.num_docs() {
            return Err(DataError::Format {
                path: dir.join("cache"),
                message: format!(
                    "cache holds {} documents, the manifest {}; rerun `memsinks data prepare`",
                    cache.num_docs(),
                    manifest.num_docs()
                ),
            });
        }
        let tokenizer = TextTokenizer::load(&dir.join(TOKENIZER_FILE))?;
        Ok(Self { manifest, cache, tokenizer, dir: dir.to_path_buf() })
    }

    /// The fingerprint a run records to recognise this corpus later.
    ///
    /// # Errors
    /// When one of its files cannot be read.
    pub fn fingerprint(&self) -> Result<crate::CorpusFingerprint, DataError> {
        crate::CorpusFingerprint::of_dir(&self.dir, &self.manifest.config_hash)
    }

    /// The training schedule (document index per occurrence), full or deduplicated.
    pub fn schedule(&self, dedup: bool) -> Result<Vec<u32>, DataError> {
        read_schedule(&self.dir.join(if dedup { SCHEDULE_DEDUP_FILE } else { SCHEDULE_FILE }))
    }
}

fn read_schedule(path: &Path) -> Result<Vec<u32>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.len() % 4 != 0 {
        return Err(DataError::Format { path: path.into(), message: "truncated schedule; rerun prepare".into() });
    }
    Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
}

/// A deterministic 63-bit sequence ID of a token sequence: never 0, identical for identical
/// sequences.
pub fn sequence_id(tokens: &[u32]) -> i64 {
    // FNV-1a over the little-endian bytes, then a bijective mix so nearby sequences spread out.
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for t in tokens {
        for b in t.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01B3);
        }
    }
    let id = (mix64(h) >> 1) as i64;
    if id == 0 {
        1
    } else {
        id
    }
}

/// Streams the documents of a source.
pub fn open_source(
    source: &SourceConfig,
    invalid: InvalidUtf8,
) -> Result<Box<dyn Iterator<Item = Result<Document, DataError>> + Send>, DataError> {
    Ok(match source {
        SourceConfig::Synthetic { stories, seed } => Box::new(
            StoryGenerator::new(*seed)
                .take(*stories)
                .enumerate()
                .map(|(i, text)| Ok(Document { text, origin: format!("synthetic#{i}") })),
        ),
        SourceConfig::TinyStories { path } => Box::new(TinyStoriesReader::open(path, invalid)?),
        SourceConfig::Json { path, field } => {
            let name = path.to_string_lossy();
            if name.ends_with(".jsonl") || name.ends_with(".jsonl.zst") {
                Box::new(JsonlReader::open(path, field, None, invalid)?)
            } else {
                Box::new(read_json_array(path, field)?.into_iter().map(Ok))
            }
        }
        SourceConfig::SlimPajama { dir, set_name } => {
            let files = shard_files(dir)?;
            let set_name = set_name.clone();
            Box::new(files.into_iter().flat_map(move |f| -> Box<dyn Iterator<Item = _> + Send> {
                match JsonlReader::open(&f, "text", set_name.as_deref(), invalid) {
                    Ok(r) => Box::new(r),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            }))
        }
    })
}

pub(crate) fn source_name(source: &SourceConfig) -> String {
    match source {
        SourceConfig::Synthetic { stories, seed } => format!("synthetic stories={stories} seed={seed}"),
        SourceConfig::TinyStories { path } | SourceConfig::Json { path, .. } => path.display().to_string(),
        SourceConfig::SlimPajama { dir, .. } => dir.display().to_string(),
    }
}

/// A progress bar on stderr, hidden when not wanted.
pub fn progress_bar(show: bool, len: u64, message: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}
