//! The experiment corpus: repeated natural documents, random-token canaries, unique documents
//! seen once and held-out validation documents, each with a sequence ID; a manifest describing
//! them; the training schedule (which document each training row starts from, in order) for the
//! full and the deduplicated corpus; and a token cache.
//!
//! Output directory of [`prepare`]:
//! `manifest.json`, `tokenizer.json` (when trained), `cache/` (token shards), `schedule.bin` and
//! `schedule_dedup.bin` (little-endian `u32` document indices, one per training occurrence).
//!
//! Over 500 lines on purpose: [`prepare`] is one pipeline of five numbered steps that reads best
//! top to bottom; the configuration types live in `data_config`, the directory rules in
//! `corpus_dir`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::{CacheKey, TokenCache};
use crate::corpus_dir::{inspect, remove_if_exists, remove_stale_temporaries, Existing, CORPUS_MARKER};
use crate::rng::{mix64, SplitMix64};
use crate::source::{read_json_array, shard_files, Document, InvalidUtf8, JsonlReader, TinyStoriesReader};
use crate::synthetic::StoryGenerator;
use crate::tokenizer::TextTokenizer;
use crate::{write_atomic, DataError};

pub use crate::data_config::{CanaryConfig, DataConfig, Ordering, RepeatConfig, SourceConfig, TokenizerConfig};

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
    /// Repeated, canary and validation documents, in cache order (indices `0..documents.len()`).
    pub documents: Vec<DocEntry>,
    /// Unique documents: cache indices `documents.len()..documents.len() + unique_docs`. They are
    /// counted, not listed, so a corpus of billions of documents keeps a small manifest.
    pub unique_docs: u64,
    /// Tokens of the unique documents.
    pub unique_tokens: u64,
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
        self.documents.len() + self.unique_docs as usize
    }

    /// The split of document `i`.
    pub fn split_of(&self, i: usize) -> Split {
        self.documents.get(i).map_or(Split::Unique, |d| d.split)
    }

    /// Indices of the documents of one split.
    pub fn indices(&self, split: Split) -> Vec<usize> {
        if split == Split::Unique {
            return (self.documents.len()..self.num_docs()).collect();
        }
        self.documents.iter().enumerate().filter(|(_, d)| d.split == split).map(|(i, _)| i).collect()
    }

    /// Count of documents per split.
    pub fn counts(&self) -> HashMap<Split, usize> {
        let mut c = HashMap::new();
        for d in &self.documents {
            *c.entry(d.split).or_default() += 1;
        }
        c.insert(Split::Unique, self.unique_docs as usize);
        c
    }

    /// Tokens per split.
    pub fn tokens(&self, split: Split) -> u64 {
        if split == Split::Unique {
            return self.unique_tokens;
        }
        self.documents.iter().filter(|d| d.split == split).map(|d| d.tokens as u64).sum()
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

fn text_hash(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
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

/// Fingerprint of a source's content identity: file paths, sizes and modification times (or the
/// generator's parameters), so a changed file invalidates caches without rereading it.
fn source_fingerprint(source: &SourceConfig) -> Result<String, DataError> {
    let mut h = Sha256::new();
    let stamp = |h: &mut Sha256, p: &Path| -> Result<(), DataError> {
        let meta = std::fs::metadata(p).map_err(|e| DataError::io(p, e))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        h.update(format!("{}|{}|{:?};", p.display(), meta.len(), mtime).as_bytes());
        Ok(())
    };
    match source {
        SourceConfig::Synthetic { .. } => h.update(ron::to_string(source).expect("serialises").as_bytes()),
        SourceConfig::TinyStories { path } | SourceConfig::Json { path, .. } => stamp(&mut h, path)?,
        SourceConfig::SlimPajama { dir, .. } => {
            for f in shard_files(dir)? {
                stamp(&mut h, &f)?;
            }
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Reads up to `n` non-empty documents whose text is not in `held_out`. With `remember`, their
/// hashes join `held_out` (for the repeated and validation sets, which must be distinct and
/// disjoint from everything else); unique documents are only checked, so memory stays flat
/// however many stream past.
fn take_distinct(
    iter: &mut dyn Iterator<Item = Result<Document, DataError>>,
    n: usize,
    held_out: &mut std::collections::HashSet<u64>,
    remember: bool,
    duplicates: &mut u64,
) -> Result<Vec<Document>, DataError> {
    let mut out = Vec::with_capacity(n.min(1 << 16));
    while out.len() < n {
        let Some(doc) = iter.next() else { break };
        let doc = doc?;
        if doc.text.is_empty() {
            continue;
        }
        let hash = text_hash(&doc.text);
        let fresh = if remember { held_out.insert(hash) } else { !held_out.contains(&hash) };
        if !fresh {
            *duplicates += 1;
            continue;
        }
        out.push(doc);
    }
    Ok(out)
}

/// Builds (or reuses) the corpus described by `cfg` in `out`. A corpus whose manifest already
/// carries the same configuration hash and whose cache matches source and tokenizer is reused; a
/// directory holding another corpus, or files that are not a corpus, is refused, never
/// overwritten. The directory is locked while it is built.
pub fn prepare(cfg: &DataConfig, out: &Path, show_progress: bool) -> Result<PreparedCorpus, DataError> {
    cfg.validate()?;
    let config_hash = cfg.hash();
    let mut fingerprint = source_fingerprint(&cfg.source)?;
    if let Some(rep) = &cfg.repeated_source {
        fingerprint.push_str(&source_fingerprint(rep)?);
    }
    if let Existing::Reusable(corpus) = inspect(cfg, out, &config_hash, &fingerprint)? {
        tracing::info!("reusing prepared corpus in {}", out.display());
        return Ok(*corpus);
    }
    let _lock = memsinks_model::io::DirLock::acquire(out, "data prepare")?;
    // Another process may have finished it while we waited for nothing (the lock is not
    // blocking, but it may have completed between the check above and the lock).
    match inspect(cfg, out, &config_hash, &fingerprint)? {
        Existing::Reusable(corpus) => return Ok(*corpus),
        Existing::Rebuild(why) => {
            tracing::warn!("rebuilding the corpus in {}: {why}", out.display());
            // The manifest marks a complete corpus: it goes first, so a killed rebuild is seen
            // as interrupted, never as complete.
            remove_if_exists(&out.join(MANIFEST_FILE))?;
        }
        Existing::Empty => {}
    }
    write_atomic(&out.join(CORPUS_MARKER), config_hash.as_bytes())?;
    remove_stale_temporaries(out);

    // 1. Select documents. Repeated and validation documents are drawn at random from the first
    //    `repeated + validation` distinct documents of their source; unique documents are the next
    //    ones in stream order (so a huge source is never held in memory at once: see step 4).
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0u64;
    let mut rng = SplitMix64::new(cfg.seed ^ 0xC0_4B05);
    let mut main = open_source(&cfg.source, cfg.invalid_utf8)?;
    let held_out_need = cfg.repeated.docs + cfg.validation;
    let mut pool = match &cfg.repeated_source {
        Some(rep) => {
            take_distinct(&mut *open_source(rep, cfg.invalid_utf8)?, held_out_need, &mut seen, true, &mut duplicates)?
        }
        None => take_distinct(&mut *main, held_out_need, &mut seen, true, &mut duplicates)?,
    };
    let pool_source = cfg.repeated_source.as_ref().unwrap_or(&cfg.source);
    if pool.len() < held_out_need {
        return Err(DataError::Empty {
            path: PathBuf::from(source_name(pool_source)),
            what: format!(
                "too few distinct documents: need {} repeated + {} validation = {held_out_need}, found {}; lower the counts or use a larger source",
                cfg.repeated.docs,
                cfg.validation,
                pool.len()
            ),
        });
    }
    rng.shuffle(&mut pool);
    let validation_docs = pool.split_off(cfg.repeated.docs);
    let repeated_docs = pool;

    // 2. The tokenizer: trained on training text only (never on validation documents).
    let mut unique_buffer: Vec<Document> = Vec::new();
    let tokenizer = match &cfg.tokenizer {
        TokenizerConfig::File { path } => TextTokenizer::load(path)?,
        TokenizerConfig::Train { vocab_size } => {
            // Train on the repeated documents and up to 50k unique ones, buffered for step 4.
            unique_buffer = take_distinct(&mut *main, cfg.unique.min(50_000), &mut seen, false, &mut duplicates)?;
            let texts = repeated_docs.iter().chain(&unique_buffer).map(|d| d.text.as_str());
            // The trainer's own progress output goes to stdout, which carries results: keep it quiet.
            TextTokenizer::train(texts, *vocab_size, false)?
        }
    };
    tokenizer.save(&out.join(TOKENIZER_FILE))?;

    // 3. Canaries: uniform random token IDs, never the end-of-text token.
    let canaries: Vec<Vec<u32>> = (0..cfg.canary.docs)
        .map(|_| {
            (0..cfg.canary.length)
                .map(|_| loop {
                    let t = rng.below(tokenizer.vocab_size()) as u32;
                    if t != tokenizer.end_of_text() {
                        break t;
                    }
                })
                .collect()
        })
        .collect();

    // 4. Tokenize into the cache: repeated, canary, validation, then unique documents streamed in
    //    chunks.
    let key_source = fingerprint.clone();
    let key = CacheKey {
        source_hash: fingerprint,
        tokenizer_hash: tokenizer.fingerprint().to_string(),
        config_hash: config_hash.clone(),
    };
    let mut writer = TokenCache::writer(&out.join("cache"), tokenizer.vocab_size(), key)?;
    let mut documents: Vec<DocEntry> = Vec::new();
    let mut ids: HashMap<i64, usize> = HashMap::new();
    let mut unique_tokens = 0u64;
    let mut add =
        |tokens: &[u32], split: Split, repetitions: usize, origin: String, writer: &mut crate::cache::CacheWriter| {
            if tokens.is_empty() {
                return Err(DataError::Config(format!("document {origin} tokenizes to nothing")));
            }
            let id = sequence_id(tokens);
            if let Some(&other) = ids.get(&id) {
                return Err(DataError::Config(format!(
                "sequence ID collision: {origin} and document {other} both hash to {id}; change data.seed or drop one"
            )));
            }
            writer.push(tokens)?;
            if split == Split::Unique {
                // Counted, not listed (see `Manifest::unique_docs`). Unique documents are checked for
                // collisions with the listed ones; among themselves a 63-bit collision is negligible.
                unique_tokens += tokens.len() as u64;
                return Ok(());
            }
            ids.insert(id, documents.len());
            documents.push(DocEntry {
                id,
                split,
                repetitions: repetitions as u32,
                tokens: tokens.len() as u32,
                origin,
                positions: Vec::new(),
            });
            Ok(())
        };
    let encode = |docs: &[Document]| tokenizer.encode_many(&docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>());
    for (doc, tokens) in repeated_docs.iter().zip(encode(&repeated_docs)?) {
        add(&tokens, Split::Repeated, cfg.repeated.repetitions, doc.origin.clone(), &mut writer)?;
    }
    for (i, tokens) in canaries.iter().enumerate() {
        add(tokens, Split::Canary, cfg.canary.repetitions, format!("canary#{i}"), &mut writer)?;
    }
    for (doc, tokens) in validation_docs.iter().zip(encode(&validation_docs)?) {
        add(&tokens, Split::Validation, 0, doc.origin.clone(), &mut writer)?;
    }
    let progress = progress_bar(show_progress, cfg.unique as u64, "tokenizing unique documents");
    let mut unique_count = 0usize;
    loop {
        let chunk = if unique_buffer.is_empty() {
            take_distinct(&mut *main, (cfg.unique - unique_count).min(4096), &mut seen, false, &mut duplicates)?
        } else {
            std::mem::take(&mut unique_buffer)
        };
        if chunk.is_empty() {
            break;
        }
        for (doc, tokens) in chunk.iter().zip(encode(&chunk)?) {
            add(&tokens, Split::Unique, 1, doc.origin.clone(), &mut writer)?;
        }
        unique_count += chunk.len();
        progress.set_position(unique_count as u64);
        if unique_count >= cfg.unique {
            break;
        }
    }
    progress.finish_and_clear();
    if unique_count < cfg.unique {
        return Err(DataError::Empty {
            path: PathBuf::from(source_name(&cfg.source)),
            what: format!(
                "too few distinct documents: {} unique requested, {unique_count} left after the repeated and validation sets",
                cfg.unique
            ),
        });
    }
    let cache = writer.finish()?;

    // 5. Schedules: every training occurrence gets a sort key; shuffled keys are uniform, spaced
    //    keys put repetition k of a document at (k + phase) / R.
    let unique = documents.len()..documents.len() + unique_count;
    let schedule = build_schedule(&documents, unique.clone(), cfg.ordering, &mut rng, false);
    let dedup = build_schedule(&documents, unique, cfg.ordering, &mut rng, true);
    for (pos, &doc) in schedule.iter().enumerate() {
        if let Some(entry) = documents.get_mut(doc as usize) {
            entry.positions.push(pos as u64);
        }
    }
    let as_bytes = |s: &[u32]| s.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    write_atomic(&out.join(SCHEDULE_FILE), &as_bytes(&schedule))?;
    write_atomic(&out.join(SCHEDULE_DEDUP_FILE), &as_bytes(&dedup))?;

    let manifest = Manifest {
        version: 1,
        config_hash,
        source_fingerprint: key_source,
        config: cfg.clone(),
        tokenizer_hash: tokenizer.fingerprint().to_string(),
        vocab_size: tokenizer.vocab_size(),
        end_of_text: tokenizer.end_of_text(),
        documents,
        unique_docs: unique_count as u64,
        unique_tokens,
        occurrences: schedule.len() as u64,
        occurrences_dedup: dedup.len() as u64,
        duplicates_dropped: duplicates,
    };
    // The manifest is written last: its presence marks a complete corpus.
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write_atomic(&out.join(MANIFEST_FILE), &json)?;
    Ok(PreparedCorpus { manifest, cache, tokenizer, dir: out.to_path_buf() })
}

fn build_schedule(
    docs: &[DocEntry],
    unique: std::ops::Range<usize>,
    ordering: Ordering,
    rng: &mut SplitMix64,
    dedup: bool,
) -> Vec<u32> {
    let mut keyed: Vec<(f64, u32)> = Vec::with_capacity(unique.len());
    let listed = docs.iter().map(|d| d.repetitions);
    for (i, repetitions) in listed.chain(unique.map(|_| 1)).enumerate() {
        let reps = if dedup { repetitions.min(1) } else { repetitions };
        let phase = rng.unit();
        for k in 0..reps {
            let key = match ordering {
                Ordering::Shuffled => rng.unit(),
                Ordering::Spaced => (k as f64 + phase) / reps as f64,
            };
            keyed.push((key, i as u32));
        }
    }
    // Ties (spaced keys of equal value) are broken by a random permutation first.
    rng.shuffle(&mut keyed);
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, i)| i).collect()
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
