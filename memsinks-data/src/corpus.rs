//! The experiment corpus: repeated natural documents, random-token canaries, unique documents
//! seen once and held-out validation documents, each with a sequence ID; a manifest describing
//! them; the training schedule (which document each training row starts from, in order) for the
//! full and the deduplicated corpus; and a token cache.
//!
//! Output directory of [`prepare`] (built in `prepare.rs`):
//! `manifest.json`, `tokenizer.json`, `cache/` (token shards), `schedule.bin` and
//! `schedule_dedup.bin` (little-endian `u32` document indices, one per training occurrence). The
//! configuration types live in `data_config`, the directory rules in `corpus_dir`.
//!
//! The sequence-ID hash lives in `ids.rs` (re-exported here).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;

use serde::{Deserialize, Serialize};

use crate::cache::TokenCache;
pub use crate::ids::{sequence_id, source_id};
use crate::source::{read_json_array, shard_files, Document, InvalidUtf8, JsonlReader, TinyStoriesReader};
use crate::synthetic::{author_key, StoryGenerator};
use crate::tokenizer::TextTokenizer;

use crate::schedules::{read_schedule, ScheduleKind, DEDUP_WITHOUT_FILL_VERSION};
pub use crate::schedules::{SCHEDULE_DEDUP_FILE, SCHEDULE_DEDUP_FRESH_FILE, SCHEDULE_FILE};
use crate::DataError;

pub use crate::data_config::{
    CanaryConfig, DataConfig, Ordering, RepeatConfig, SequenceIds, SourceConfig, SourceKey, TokenizerConfig,
};
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
    /// Its source key (with `data.source_key`; canaries have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One source of a corpus whose documents carry source keys (`data.source_key`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceEntry {
    /// The key (author, website, file name).
    pub key: String,
    /// Its sequence ID ([`source_id`]): the ID of every document of the source when
    /// `data.sequence_ids` is `PerSource`.
    pub id: i64,
    /// Held out whole (`data.held_out_sources`): its documents are validation documents, never
    /// trained on.
    pub held_out: bool,
    /// Documents of the corpus from this source.
    pub docs: u64,
    /// Their tokens.
    pub tokens: u64,
}

/// The description of a prepared corpus that every later stage reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_SCHEMA`]; written as `version` before it was named so).
    #[serde(alias = "version")]
    pub schema_version: u32,
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
    /// The sources of the documents, in order of first appearance (with `data.source_key`);
    /// `sources.bin` gives each document's index in this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceEntry>,
    /// SHA-256 of `sources.bin`, so a swapped table is found when the corpus is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources_sha256: Option<String>,
    /// Documents of held-out sources left out of training (beyond the validation set).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_out_source_docs_skipped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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

/// The manifest's current `schema_version`: version 2 is the first whose `schedule_dedup.bin`
/// holds no fresh fill ([`DEDUP_WITHOUT_FILL_VERSION`]).
pub const MANIFEST_SCHEMA: u32 = DEDUP_WITHOUT_FILL_VERSION;
/// The tokenizer inside a prepared directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Each document's source (a little-endian `u32` index into [`Manifest::sources`] per cache
/// document, [`NO_SOURCE`] for canaries), with `data.source_key`.
pub const SOURCES_FILE: &str = "sources.bin";
/// The source index of a document without a source (a canary).
pub const NO_SOURCE: u32 = u32::MAX;

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
    /// Each document's source index (`sources.bin`), with `data.source_key`.
    pub source_of: Option<Arc<Vec<u32>>>,
    /// Each document's sequence ID.
    pub ids: DocIds,
}

/// The sequence ID of each document of a corpus: the one home of "the ID of document `d`", used
/// by training's batcher, evaluation, extraction and generation alike.
#[derive(Clone, Debug, Default)]
pub enum DocIds {
    /// The hash of the document's tokens ([`sequence_id`]), recomputed where needed, so no
    /// per-document table has to fit in memory.
    #[default]
    PerDocument,
    /// The ID of the document's source (`data.sequence_ids: PerSource`); documents without a
    /// source (canaries) keep their tokens' hash.
    PerSource {
        /// Each document's source index.
        source_of: Arc<Vec<u32>>,
        /// Each source's ID.
        ids: Arc<Vec<i64>>,
    },
}

/// [`DocIds::PerDocument`], for readers of documents outside any corpus.
pub static PER_DOCUMENT: DocIds = DocIds::PerDocument;

impl DocIds {
    /// The IDs of a corpus with `manifest` and source table `source_of`, as
    /// `data.sequence_ids` says.
    pub fn of(manifest: &Manifest, source_of: Option<&Arc<Vec<u32>>>) -> Self {
        match (source_of, manifest.config.sequence_ids) {
            (Some(source_of), SequenceIds::PerSource) => DocIds::PerSource {
                source_of: source_of.clone(),
                ids: Arc::new(manifest.sources.iter().map(|s| s.id).collect()),
            },
            _ => DocIds::PerDocument,
        }
    }

    /// The sequence ID of document `doc` whose tokens are `tokens`.
    pub fn id(&self, doc: usize, tokens: &[u32]) -> i64 {
        match self {
            DocIds::PerDocument => sequence_id(tokens),
            DocIds::PerSource { source_of, ids } => match source_of.get(doc) {
                Some(&s) if s != NO_SOURCE => ids[s as usize],
                _ => sequence_id(tokens),
            },
        }
    }
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
        memsinks_core::files::check_schema(&path, manifest.schema_version, MANIFEST_SCHEMA)?;
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
        let source_of = read_source_table(dir, &manifest)?;
        let ids = DocIds::of(&manifest, source_of.as_ref());
        Ok(Self { manifest, cache, tokenizer, dir: dir.to_path_buf(), source_of, ids })
    }

    /// The source of document `doc`, if it has one.
    pub fn source_of(&self, doc: usize) -> Option<&SourceEntry> {
        let index = *self.source_of.as_ref()?.get(doc)?;
        self.manifest.sources.get(index as usize)
    }

    /// The source whose key is `key`.
    ///
    /// # Errors
    /// When the corpus has no source keys or no such source (the message lists some keys).
    pub fn source(&self, key: &str) -> Result<(usize, &SourceEntry), DataError> {
        let sources = &self.manifest.sources;
        if sources.is_empty() {
            return Err(DataError::Invalid(format!(
                "the corpus in {} has no source keys: prepare it with data.source_key",
                self.dir.display()
            )));
        }
        sources.iter().enumerate().find(|(_, s)| s.key == key).ok_or_else(|| {
            let some: Vec<&str> = sources.iter().take(8).map(|s| s.key.as_str()).collect();
            DataError::Invalid(format!(
                "no source `{key}` in the corpus in {}; its {} sources include {}",
                self.dir.display(),
                sources.len(),
                some.join(", ")
            ))
        })
    }

    /// Indices of the documents of `split` from the source with index `source` (in the
    /// manifest's list), in cache order.
    pub fn docs_of_source(&self, split: Split, source: usize) -> Vec<usize> {
        let Some(table) = &self.source_of else { return Vec::new() };
        self.manifest.indices(split).into_iter().filter(|&d| table.get(d).copied() == Some(source as u32)).collect()
    }

    /// The fingerprint a run records to recognise this corpus later.
    ///
    /// # Errors
    /// When one of its files cannot be read.
    pub fn fingerprint(&self) -> Result<crate::CorpusFingerprint, DataError> {
        crate::CorpusFingerprint::of_dir(&self.dir, &self.manifest.config_hash)
    }

    /// The training schedule (document index per occurrence) of `kind`.
    ///
    /// # Errors
    /// When the file is unreadable, truncated, or names a document the cache does not hold; and
    /// for a deduplicated schedule of a corpus prepared before it stopped holding the fresh fill.
    pub fn schedule(&self, kind: ScheduleKind) -> Result<Vec<u32>, DataError> {
        if kind != ScheduleKind::Full && self.manifest.schema_version < DEDUP_WITHOUT_FILL_VERSION {
            return Err(DataError::CorpusMismatch {
                dir: self.dir.clone(),
                reason: "was prepared by an older memsinks whose deduplicated schedule holds fresh stories: \
                         prepare the corpus again into a new directory to train a deduplicated model"
                    .into(),
            });
        }
        read_schedule(&self.dir.join(kind.file()), self.cache.num_docs())
    }
}

/// `sources.bin`, checked against its digest and document count in the manifest; `None` for a
/// corpus without source keys.
fn read_source_table(dir: &Path, manifest: &Manifest) -> Result<Option<Arc<Vec<u32>>>, DataError> {
    let Some(digest) = &manifest.sources_sha256 else { return Ok(None) };
    let path = dir.join(SOURCES_FILE);
    let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
    let found = format!("{:x}", sha2::Sha256::digest(&bytes));
    let damaged = |why: String| DataError::Format {
        path: path.clone(),
        message: format!("{why}; rerun `memsinks data prepare`"),
    };
    if &found != digest {
        return Err(damaged("does not match the manifest's digest".into()));
    }
    if bytes.len() % 4 != 0 || bytes.len() / 4 != manifest.num_docs() {
        return Err(damaged(format!("holds {} entries for {} documents", bytes.len() / 4, manifest.num_docs())));
    }
    let table: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    if let Some(bad) = table.iter().find(|&&s| s != NO_SOURCE && s as usize >= manifest.sources.len()) {
        return Err(damaged(format!("names source {bad} of {}", manifest.sources.len())));
    }
    Ok(Some(Arc::new(table)))
}

/// Streams the documents of a source; with `key`, each carries its source key.
pub fn open_source(
    source: &SourceConfig,
    invalid: InvalidUtf8,
    key: Option<&SourceKey>,
) -> Result<Box<dyn Iterator<Item = Result<Document, DataError>> + Send>, DataError> {
    let key = key.cloned();
    Ok(match source {
        SourceConfig::Synthetic { stories, seed, authors } => {
            let mut stories_of = StoryGenerator::with_authors(*seed, *authors);
            let by_file = key == Some(SourceKey::FileName);
            Box::new((0..*stories).map(move |i| {
                let (text, author) = stories_of.next_story();
                let source = match (&key, author) {
                    (None, _) => None,
                    _ if by_file => Some("synthetic".to_string()),
                    (Some(_), Some(a)) => Some(author_key(a)),
                    (Some(_), None) => {
                        return Err(DataError::Invalid(
                            "data.source_key: these synthetic stories have no authors; set data.source.authors".into(),
                        ))
                    }
                };
                Ok(Document { text, origin: format!("synthetic#{i}"), source })
            }))
        }
        SourceConfig::TinyStories { path } => {
            let reader = TinyStoriesReader::open(path, invalid)?;
            if key.is_some() {
                Box::new(reader.with_file_key())
            } else {
                Box::new(reader)
            }
        }
        SourceConfig::Json { path, field } => {
            let name = path.to_string_lossy();
            if name.ends_with(".jsonl") || name.ends_with(".jsonl.zst") {
                Box::new(JsonlReader::open(path, field, None, invalid)?.with_key(key))
            } else {
                Box::new(read_json_array(path, field, key.as_ref())?.into_iter().map(Ok))
            }
        }
        SourceConfig::SlimPajama { dir, set_name } => {
            let files = shard_files(dir)?;
            let set_name = set_name.clone();
            Box::new(files.into_iter().flat_map(move |f| -> Box<dyn Iterator<Item = _> + Send> {
                match JsonlReader::open(&f, "text", set_name.as_deref(), invalid) {
                    Ok(r) => Box::new(r.with_key(key.clone())),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            }))
        }
    })
}

pub(crate) fn source_name(source: &SourceConfig) -> String {
    match source {
        SourceConfig::Synthetic { stories, seed, .. } => format!("synthetic stories={stories} seed={seed}"),
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
