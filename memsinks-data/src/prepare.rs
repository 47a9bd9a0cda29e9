//! Building a corpus ([`prepare`]) in five steps, each its own function: select the repeated and
//! validation documents, make the tokenizer, draw the canaries, tokenize everything into the
//! cache, and lay out the training schedules. The manifest is written last: its presence marks a
//! complete corpus.
//!
//! Step 1 lives in `prepare/held_out.rs`, step 5 in `prepare/schedule.rs`.

mod held_out;
mod schedule;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use memsinks_core::files::write_atomic;
use sha2::{Digest, Sha256};

use crate::cache::{CacheKey, CacheWriter, TokenCache};
use crate::corpus::{
    open_source, progress_bar, sequence_id, source_id, source_name, DocEntry, DocIds, Manifest, PreparedCorpus,
    SourceEntry, Split, MANIFEST_FILE, NO_SOURCE, SOURCES_FILE, TOKENIZER_FILE,
};
use crate::corpus_dir::{inspect, remove_if_exists, remove_stale_temporaries, Existing, CORPUS_MARKER};
use crate::data_config::{DataConfig, SequenceIds, TokenizerConfig};
use crate::fingerprint::source_fingerprint;
use crate::rng::SplitMix64;
use crate::source::Document;
use crate::tokenizer::TextTokenizer;
use crate::DataError;
use held_out::{select_held_out, DistinctReader};
use schedule::{removed_row_tokens, row_tokens, write_schedules};

/// Unique documents buffered to train a tokenizer on (with the repeated ones).
const TOKENIZER_TRAINING_DOCS: usize = 50_000;
/// Unique documents read, tokenized and written per chunk.
const UNIQUE_CHUNK: usize = 4096;

/// A stream of documents of a source.
type DocStream = Box<dyn Iterator<Item = Result<Document, DataError>> + Send>;

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
    let _lock = memsinks_core::files::DirLock::acquire(out, "data prepare")?;
    // Another process may have finished it between the check above and the lock.
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
    build(cfg, out, config_hash, fingerprint, show_progress)
}

/// Builds the corpus into `out` (locked, claimed): the five steps in order, then the manifest.
/// The steps share the reader (documents are read once, in order) and the random stream, so they
/// are called from one place.
fn build(
    cfg: &DataConfig,
    out: &Path,
    config_hash: String,
    fingerprint: String,
    show_progress: bool,
) -> Result<PreparedCorpus, DataError> {
    let mut rng = SplitMix64::new(cfg.seed ^ 0xC0_4B05);
    let main = open_source(&cfg.source, cfg.invalid_utf8, cfg.source_key.as_ref())?;
    let mut reader = DistinctReader { main: Some(main), ..Default::default() };
    let (repeated_docs, validation_docs, left_over) = select_held_out(cfg, &mut reader, &mut rng)?;
    // Left-over pool documents of a separate repeated source are not the main source's text.
    let left_over = if cfg.repeated_source.is_some() { Vec::new() } else { left_over };
    let (tokenizer, unique_buffer) = make_tokenizer(cfg, &mut reader, &repeated_docs, left_over)?;
    tokenizer.save(&out.join(TOKENIZER_FILE))?;
    let canaries = draw_canaries(cfg.canary.docs, cfg.canary.length, &tokenizer, &mut rng)?;
    let held_out_canaries = draw_canaries(cfg.canary.held_out_docs(), cfg.canary.length, &tokenizer, &mut rng)?;

    let key = CacheKey {
        source_hash: fingerprint.clone(),
        tokenizer_hash: tokenizer.fingerprint().to_string(),
        config_hash: config_hash.clone(),
    };
    let writer = TokenCache::writer(&out.join("cache"), tokenizer.vocab_size(), key)?;
    let mut cache = CacheBuilder::new(writer, cfg, reader.held_out.clone());
    let drawn = Drawn {
        repeated: &repeated_docs,
        canaries: &canaries,
        validation: &validation_docs,
        held_out_canaries: &held_out_canaries,
    };
    cache.add_drawn(cfg, &tokenizer, &drawn)?;
    let streamed = Streamed { reader: &mut reader, tokenizer: &tokenizer, show_progress };
    let counts = streamed.add_unique_and_fill(cfg, unique_buffer, &mut cache)?;
    let CacheBuilder { writer, mut documents, sources, .. } = cache;
    let cache = writer.finish()?;
    let sources_sha256 = match &sources {
        Some(table) => {
            let bytes: Vec<u8> = table.of_doc.iter().flat_map(|s| s.to_le_bytes()).collect();
            write_atomic(&out.join(SOURCES_FILE), &bytes)?;
            Some(format!("{:x}", Sha256::digest(&bytes)))
        }
        None => None,
    };
    let (schedule, dedup) =
        write_schedules(cfg, out, &mut documents, (counts.unique_docs, counts.fill_docs), &mut rng)?;
    let manifest = Manifest {
        schema_version: crate::corpus::MANIFEST_SCHEMA,
        config_hash,
        source_fingerprint: fingerprint,
        config: cfg.clone(),
        tokenizer_hash: tokenizer.fingerprint().to_string(),
        vocab_size: tokenizer.vocab_size(),
        end_of_text: tokenizer.end_of_text(),
        documents,
        unique_docs: counts.unique_docs as u64,
        unique_tokens: counts.unique_tokens,
        dedup_fill_docs: counts.fill_docs as u64,
        dedup_fill_tokens: counts.fill_tokens,
        dedup_removed_tokens: counts.removed_tokens,
        near_duplicates_dropped: reader.near_duplicates,
        occurrences: schedule as u64,
        occurrences_dedup: dedup as u64,
        duplicates_dropped: reader.duplicates,
        sources_sha256,
        held_out_source_docs_skipped: reader.held_out_skipped,
        sources: sources.as_ref().map(|t| t.entries.clone()).unwrap_or_default(),
    };
    // The manifest is written last: its presence marks a complete corpus.
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write_atomic(&out.join(MANIFEST_FILE), &json)?;
    let source_of = sources.map(|t| std::sync::Arc::new(t.of_doc));
    let ids = DocIds::of(&manifest, source_of.as_ref());
    Ok(PreparedCorpus { manifest, cache, tokenizer, dir: out.to_path_buf(), source_of, ids })
}

/// The documents drawn before the unique stream: they go into the cache first, in this order.
struct Drawn<'a> {
    repeated: &'a [Document],
    canaries: &'a [Vec<u32>],
    validation: &'a [Document],
    held_out_canaries: &'a [Vec<u32>],
}

/// What step 4 streamed into the cache after the drawn documents.
struct StreamedCounts {
    /// Unique documents, and their tokens.
    unique_docs: usize,
    unique_tokens: u64,
    /// Dedup fill documents, and their tokens as training rows hold them.
    fill_docs: usize,
    fill_tokens: u64,
    /// Tokens of the repetitions the deduplicated schedules remove.
    removed_tokens: u64,
}

/// Step 2: the tokenizer, trained on training text only (never on validation documents), or
/// loaded. Returns the unique documents read to train it (they are the first unique documents).
fn make_tokenizer(
    cfg: &DataConfig,
    reader: &mut DistinctReader,
    repeated: &[Document],
    left_over: Vec<Document>,
) -> Result<(TextTokenizer, Vec<Document>), DataError> {
    Ok(match &cfg.tokenizer {
        TokenizerConfig::File { path } => (TextTokenizer::load(path)?, left_over),
        TokenizerConfig::Train { vocab_size } => {
            let mut unique = left_over;
            let more = cfg.unique.min(TOKENIZER_TRAINING_DOCS).saturating_sub(unique.len());
            unique.extend(reader.take(None, more, false)?);
            let texts = repeated.iter().chain(&unique).map(|d| d.text.as_str());
            // The trainer's own progress output goes to stdout, which carries results: keep it quiet.
            (TextTokenizer::train(texts, *vocab_size, false)?, unique)
        }
    })
}

/// Step 3: `count` canaries of `length` uniform random token IDs, never the end-of-text token.
fn draw_canaries(
    count: usize,
    length: usize,
    tokenizer: &TextTokenizer,
    rng: &mut SplitMix64,
) -> Result<Vec<Vec<u32>>, DataError> {
    if count * length > 0 && tokenizer.vocab_size() < 2 {
        return Err(DataError::Invalid(format!(
            "the tokenizer has {} token(s), none but the end-of-text token: canaries are drawn from the other \
             tokens; use a tokenizer with a vocabulary, or data.canary.docs = 0",
            tokenizer.vocab_size()
        )));
    }
    Ok((0..count)
        .map(|_| {
            (0..length)
                .map(|_| loop {
                    let t = rng.below(tokenizer.vocab_size()) as u32;
                    if t != tokenizer.end_of_text() {
                        break t;
                    }
                })
                .collect()
        })
        .collect())
}

/// Step 4: documents written to the token cache, the listed ones (repeated, canary, validation)
/// recorded with their sequence IDs; with source keys, every document's source.
struct CacheBuilder {
    writer: CacheWriter,
    documents: Vec<DocEntry>,
    /// Token-hash IDs of the listed documents, for the collision check.
    ids: HashMap<i64, usize>,
    /// Tokens of the streamed (unique or fill) documents added since the count was reset.
    streamed_tokens: u64,
    /// The same as training rows hold them ([`row_tokens`]).
    streamed_row_tokens: u64,
    /// Tokens per training row, and whether rows are packed ([`row_tokens`]).
    rows: (usize, bool),
    /// With `data.source_key`: the sources and each document's.
    sources: Option<SourceTable>,
    per_source_ids: bool,
}

/// The sources of a corpus as it is built: [`SourceEntry`]s in order of first appearance and the
/// source index of every document so far.
struct SourceTable {
    entries: Vec<SourceEntry>,
    index: HashMap<String, u32>,
    /// Source IDs, for the collision check between keys.
    ids: HashMap<i64, u32>,
    held_out: HashSet<String>,
    of_doc: Vec<u32>,
}

impl SourceTable {
    /// The index of source `key`, added on first sight.
    fn index_of(&mut self, key: &str) -> Result<u32, DataError> {
        if let Some(&i) = self.index.get(key) {
            return Ok(i);
        }
        let (i, id) = (self.entries.len() as u32, source_id(key));
        if let Some(&other) = self.ids.get(&id) {
            return Err(DataError::IdCollision {
                kind: "source",
                first: format!("source `{key}`"),
                second: format!("source `{}`", self.entries[other as usize].key),
                id,
            });
        }
        let held_out = self.held_out.contains(key);
        self.entries.push(SourceEntry { key: key.to_string(), id, held_out, docs: 0, tokens: 0 });
        self.index.insert(key.to_string(), i);
        self.ids.insert(id, i);
        Ok(i)
    }
}

impl CacheBuilder {
    fn new(writer: CacheWriter, cfg: &DataConfig, held_out: HashSet<String>) -> Self {
        let (documents, ids) = (Vec::new(), HashMap::new());
        let sources = cfg.source_key.is_some().then(|| SourceTable {
            entries: Vec::new(),
            index: HashMap::new(),
            ids: HashMap::new(),
            held_out,
            of_doc: Vec::new(),
        });
        Self {
            writer,
            documents,
            ids,
            streamed_tokens: 0,
            streamed_row_tokens: 0,
            rows: (cfg.context, cfg.packing),
            sources,
            per_source_ids: cfg.sequence_ids == SequenceIds::PerSource,
        }
    }

    /// Step 4's first part: the drawn documents, repeated, canary, validation, then held-out
    /// canaries.
    fn add_drawn(&mut self, cfg: &DataConfig, tokenizer: &TextTokenizer, drawn: &Drawn) -> Result<(), DataError> {
        for (doc, tokens) in drawn.repeated.iter().zip(encode(tokenizer, drawn.repeated)?) {
            self.add(&tokens, Split::Repeated, cfg.repeated.repetitions, doc)?;
        }
        for (i, tokens) in drawn.canaries.iter().enumerate() {
            let origin = format!("canary#{i}");
            self.add(tokens, Split::Canary, cfg.canary.repetitions, &Document::new(String::new(), origin))?;
        }
        for (doc, tokens) in drawn.validation.iter().zip(encode(tokenizer, drawn.validation)?) {
            self.add(&tokens, Split::Validation, 0, doc)?;
        }
        for (i, tokens) in drawn.held_out_canaries.iter().enumerate() {
            let origin = format!("canary-held-out#{i}");
            self.add(tokens, Split::CanaryHeldOut, 0, &Document::new(String::new(), origin))?;
        }
        Ok(())
    }

    fn add(&mut self, tokens: &[u32], split: Split, repetitions: usize, doc: &Document) -> Result<(), DataError> {
        let origin = &doc.origin;
        if tokens.is_empty() {
            return Err(DataError::Invalid(format!("document {origin} tokenizes to nothing")));
        }
        // Canaries have no source; natural documents have one exactly when keys are read.
        let source = match (&mut self.sources, doc.source.as_deref()) {
            (Some(table), Some(key)) => {
                let i = table.index_of(key)?;
                let entry = &mut table.entries[i as usize];
                entry.docs += 1;
                entry.tokens += tokens.len() as u64;
                Some((i, entry.id))
            }
            _ => None,
        };
        if let Some(table) = &mut self.sources {
            table.of_doc.push(source.map_or(NO_SOURCE, |(i, _)| i));
        }
        let shared_id = source.filter(|_| self.per_source_ids).map(|(_, id)| id);
        let id = shared_id.unwrap_or_else(|| sequence_id(tokens));
        if shared_id.is_none() {
            if let Some(&other) = self.ids.get(&id) {
                return Err(DataError::IdCollision {
                    kind: "sequence",
                    first: origin.to_string(),
                    second: format!("document {other}"),
                    id,
                });
            }
        }
        self.writer.push(tokens)?;
        if matches!(split, Split::Unique | Split::DedupFill) {
            // Counted, not listed (see `Manifest::unique_docs`). Streamed documents are checked
            // for collisions with the listed ones; among themselves a 63-bit collision is
            // negligible.
            self.streamed_tokens += tokens.len() as u64;
            self.streamed_row_tokens += row_tokens(tokens.len(), self.rows);
            return Ok(());
        }
        if shared_id.is_none() {
            self.ids.insert(id, self.documents.len());
        }
        self.documents.push(DocEntry {
            id,
            split,
            repetitions: repetitions as u32,
            tokens: tokens.len() as u32,
            origin: origin.clone(),
            positions: Vec::new(),
            source: doc.source.clone(),
        });
        Ok(())
    }
}

/// Step 4, streamed documents: read from the main source in chunks, tokenized and written.
struct Streamed<'a> {
    reader: &'a mut DistinctReader,
    tokenizer: &'a TextTokenizer,
    show_progress: bool,
}

impl Streamed<'_> {
    /// Step 4's stream: the unique documents (`buffer`, read for the tokenizer, first), then,
    /// with `data.dedup_fill`, fresh documents for the removed repetitions.
    fn add_unique_and_fill(
        mut self,
        cfg: &DataConfig,
        buffer: Vec<Document>,
        cache: &mut CacheBuilder,
    ) -> Result<StreamedCounts, DataError> {
        let (unique_docs, spare_docs) = self.add(cfg, Split::Unique, buffer, cache)?;
        let unique_tokens = cache.streamed_tokens;
        let removed_tokens = removed_row_tokens(cfg, &cache.documents);
        let fill_docs = if cfg.dedup_fill && removed_tokens > 0 {
            cache.streamed_tokens = 0;
            cache.streamed_row_tokens = 0;
            self.add(cfg, Split::DedupFill, spare_docs, cache)?.0
        } else {
            0
        };
        let fill_tokens = if fill_docs > 0 { cache.streamed_row_tokens } else { 0 };
        if fill_tokens < removed_tokens && cfg.dedup_fill {
            tracing::warn!(
                "the source ran out: the dedup fill holds {fill_tokens} of the {removed_tokens} tokens of removed repetitions; the dedup + fresh data model will cycle its data more"
            );
        }
        Ok(StreamedCounts { unique_docs, unique_tokens, fill_docs, fill_tokens, removed_tokens })
    }

    /// Adds `split`'s documents, `buffer` first: `cfg.unique` unique documents, or dedup fill
    /// documents until their real tokens reach the removed repetitions' (as many as the source
    /// has). Returns how many, and the documents of `buffer` not needed.
    fn add(
        &mut self,
        cfg: &DataConfig,
        split: Split,
        mut buffer: Vec<Document>,
        cache: &mut CacheBuilder,
    ) -> Result<(usize, Vec<Document>), DataError> {
        let removed = removed_row_tokens(cfg, &cache.documents);
        let (total, what) = match split {
            Split::Unique => (cfg.unique as u64, "tokenizing unique documents"),
            _ => (removed, "tokenizing dedup fill documents"),
        };
        let progress = progress_bar(self.show_progress, total, what);
        let mut count = 0usize;
        let done = |count: usize, cache: &CacheBuilder| match split {
            Split::Unique => count >= cfg.unique,
            _ => cache.streamed_row_tokens >= removed,
        };
        while !done(count, cache) {
            let chunk = if buffer.is_empty() {
                let want = if split == Split::Unique { cfg.unique - count } else { UNIQUE_CHUNK };
                self.reader.take(None, want.min(UNIQUE_CHUNK), false)?
            } else {
                let n = if split == Split::Unique { (cfg.unique - count).min(buffer.len()) } else { buffer.len() };
                buffer.drain(..n).collect()
            };
            if chunk.is_empty() {
                break;
            }
            for (doc, tokens) in chunk.iter().zip(encode(self.tokenizer, &chunk)?) {
                if done(count, cache) {
                    break;
                }
                cache.add(&tokens, split, 1, doc)?;
                count += 1;
            }
            progress.set_position(if split == Split::Unique { count as u64 } else { cache.streamed_row_tokens });
        }
        progress.finish_and_clear();
        if split == Split::Unique && count < cfg.unique {
            return Err(DataError::Empty {
                path: PathBuf::from(source_name(&cfg.source)),
                what: format!(
                    "too few distinct documents: {} unique requested, {count} left after the repeated and validation sets",
                    cfg.unique
                ),
            });
        }
        Ok((count, buffer))
    }
}

/// The token IDs of each document.
fn encode(tokenizer: &TextTokenizer, docs: &[Document]) -> Result<Vec<Vec<u32>>, DataError> {
    tokenizer.encode_many(&docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>())
}

pub(crate) fn text_hash(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}
