//! Building a corpus ([`prepare`]) in five steps, each its own function: select the repeated and
//! validation documents, make the tokenizer, draw the canaries, tokenize everything into the
//! cache, and lay out the training schedules. The manifest is written last: its presence marks a
//! complete corpus.
//!
//! Size (659 lines): the five steps share the `Streamed`/`CacheBuilder` state; the seams are the
//! held-out selection (`select_held_out`, `split_by_source`, `DistinctReader`) and the schedules
//! (`write_schedules`, `build_schedule`, the row-token counts), each a module of its own; not split
//! yet, for lack of time to rebuild and retest the workspace in the session that grew it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use memsinks_model::io::write_atomic;
use sha2::{Digest, Sha256};

use crate::cache::{CacheKey, CacheWriter, TokenCache};
use crate::corpus::{
    open_source, progress_bar, sequence_id, source_id, source_name, DocEntry, DocIds, Manifest, PreparedCorpus,
    SourceEntry, Split, MANIFEST_FILE, NO_SOURCE, SCHEDULE_DEDUP_FILE, SCHEDULE_FILE, SOURCES_FILE, TOKENIZER_FILE,
};
use crate::corpus_dir::{inspect, remove_if_exists, remove_stale_temporaries, Existing, CORPUS_MARKER};
use crate::data_config::{DataConfig, Ordering, SequenceIds, TokenizerConfig};
use crate::fingerprint::source_fingerprint;
use crate::near_dup::NearDuplicateFilter;
use crate::rng::SplitMix64;
use crate::source::Document;
use crate::tokenizer::TextTokenizer;
use crate::DataError;

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

    let mut rng = SplitMix64::new(cfg.seed ^ 0xC0_4B05);
    let main = open_source(&cfg.source, cfg.invalid_utf8, cfg.source_key.as_ref())?;
    let mut reader = DistinctReader { main: Some(main), ..Default::default() };
    let (repeated_docs, validation_docs, left_over) = select_held_out(cfg, &mut reader, &mut rng)?;
    // Left-over pool documents of a separate repeated source are not the main source's text.
    let left_over = if cfg.repeated_source.is_some() { Vec::new() } else { left_over };
    let (tokenizer, unique_buffer) = make_tokenizer(cfg, &mut reader, &repeated_docs, left_over)?;
    tokenizer.save(&out.join(TOKENIZER_FILE))?;
    let canaries = draw_canaries(cfg.canary.docs, cfg.canary.length, &tokenizer, &mut rng);
    let held_out_canaries = draw_canaries(cfg.canary.held_out_docs(), cfg.canary.length, &tokenizer, &mut rng);

    // Tokenize into the cache: repeated, canary, validation, then unique documents streamed in
    // chunks.
    let key = CacheKey {
        source_hash: fingerprint.clone(),
        tokenizer_hash: tokenizer.fingerprint().to_string(),
        config_hash: config_hash.clone(),
    };
    let writer = TokenCache::writer(&out.join("cache"), tokenizer.vocab_size(), key)?;
    let mut cache = CacheBuilder::new(writer, cfg, reader.held_out.clone());
    for (doc, tokens) in repeated_docs.iter().zip(encode(&tokenizer, &repeated_docs)?) {
        cache.add(&tokens, Split::Repeated, cfg.repeated.repetitions, doc)?;
    }
    for (i, tokens) in canaries.iter().enumerate() {
        cache.add(
            tokens,
            Split::Canary,
            cfg.canary.repetitions,
            &Document::new(String::new(), format!("canary#{i}")),
        )?;
    }
    for (doc, tokens) in validation_docs.iter().zip(encode(&tokenizer, &validation_docs)?) {
        cache.add(&tokens, Split::Validation, 0, doc)?;
    }
    for (i, tokens) in held_out_canaries.iter().enumerate() {
        let origin = format!("canary-held-out#{i}");
        cache.add(tokens, Split::CanaryHeldOut, 0, &Document::new(String::new(), origin))?;
    }
    let streamed = Streamed { reader: &mut reader, tokenizer: &tokenizer, show_progress };
    let (unique_count, spare_docs) = streamed.add(cfg, Split::Unique, unique_buffer, &mut cache)?;
    let unique_tokens = cache.streamed_tokens;
    let dedup_removed_tokens = removed_row_tokens(cfg, &cache.documents);
    let fill_count = if cfg.dedup_fill && dedup_removed_tokens > 0 {
        cache.streamed_tokens = 0;
        cache.streamed_row_tokens = 0;
        let streamed = Streamed { reader: &mut reader, tokenizer: &tokenizer, show_progress };
        streamed.add(cfg, Split::DedupFill, spare_docs, &mut cache)?.0
    } else {
        0
    };
    let dedup_fill_tokens = if fill_count > 0 { cache.streamed_row_tokens } else { 0 };
    if dedup_fill_tokens < dedup_removed_tokens && cfg.dedup_fill {
        tracing::warn!(
            "the source ran out: the dedup fill holds {dedup_fill_tokens} of the {dedup_removed_tokens} tokens of removed repetitions; the deduplicated model will cycle its data more"
        );
    }
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

    let (schedule, dedup) = write_schedules(cfg, out, &mut documents, (unique_count, fill_count), &mut rng)?;
    let manifest = Manifest {
        version: 1,
        config_hash,
        source_fingerprint: fingerprint,
        config: cfg.clone(),
        tokenizer_hash: tokenizer.fingerprint().to_string(),
        vocab_size: tokenizer.vocab_size(),
        end_of_text: tokenizer.end_of_text(),
        documents,
        unique_docs: unique_count as u64,
        unique_tokens,
        dedup_fill_docs: fill_count as u64,
        dedup_fill_tokens,
        dedup_removed_tokens,
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

/// Reads distinct documents: the texts of the repeated and validation sets are remembered so no
/// later document repeats them; unique documents are only checked, so memory stays flat however
/// many stream past.
#[derive(Default)]
struct DistinctReader {
    main: Option<DocStream>,
    seen: HashSet<u64>,
    duplicates: u64,
    /// The validation set's n-grams, once it is drawn (with `data.near_duplicates`).
    near: Option<NearDuplicateFilter>,
    near_duplicates: u64,
    /// Sources held out whole (`data.held_out_sources`): their later documents are skipped.
    held_out: HashSet<String>,
    held_out_skipped: u64,
}

impl DistinctReader {
    /// Up to `n` non-empty documents of `stream` (the main source when `None`) whose text was not
    /// seen; with `remember`, their texts join the seen set.
    fn take(&mut self, stream: Option<&mut DocStream>, n: usize, remember: bool) -> Result<Vec<Document>, DataError> {
        let iter = match stream {
            Some(s) => s,
            None => self.main.as_mut().expect("the main source is open"),
        };
        let mut out = Vec::with_capacity(n.min(1 << 16));
        while out.len() < n {
            let Some(doc) = iter.next() else { break };
            let doc = doc?;
            if doc.text.is_empty() {
                continue;
            }
            let hash = text_hash(&doc.text);
            let fresh = if remember { self.seen.insert(hash) } else { !self.seen.contains(&hash) };
            if !fresh {
                self.duplicates += 1;
                continue;
            }
            if self.near.as_ref().is_some_and(|f| f.hits(&doc.text)) {
                self.near_duplicates += 1;
                continue;
            }
            if doc.source.as_ref().is_some_and(|s| self.held_out.contains(s)) {
                self.held_out_skipped += 1;
                continue;
            }
            out.push(doc);
        }
        Ok(out)
    }
}

/// Step 1: the repeated and validation documents, drawn at random from the first
/// `repeated + validation` distinct documents of their source (unique documents are the next ones
/// in stream order, so a huge source is never held in memory at once). With held-out sources the
/// pool is wider ([`SOURCE_POOL_FACTOR`]), validation documents come from the held-out sources
/// only, and the pool's other documents of trained sources are returned to be unique documents.
fn select_held_out(
    cfg: &DataConfig,
    reader: &mut DistinctReader,
    rng: &mut SplitMix64,
) -> Result<(Vec<Document>, Vec<Document>, Vec<Document>), DataError> {
    let need = cfg.repeated.docs + cfg.validation;
    // With the near-duplicate filter some repeated candidates may be dropped: draw spares.
    let spare = if cfg.near_duplicates.is_some() { cfg.repeated.docs / 2 + 8 } else { 0 };
    let wanted = if cfg.held_out_sources > 0 { need * SOURCE_POOL_FACTOR + spare } else { need + spare };
    let mut pool = match &cfg.repeated_source {
        Some(rep) => {
            let mut stream = open_source(rep, cfg.invalid_utf8, cfg.source_key.as_ref())?;
            reader.take(Some(&mut stream), wanted, true)?
        }
        None => reader.take(None, wanted, true)?,
    };
    let pool_source = cfg.repeated_source.as_ref().unwrap_or(&cfg.source);
    if pool.len() < need {
        return Err(DataError::Empty {
            path: PathBuf::from(source_name(pool_source)),
            what: format!(
                "too few distinct documents: need {} repeated + {} validation = {need}, found {}; lower the counts or use a larger source",
                cfg.repeated.docs,
                cfg.validation,
                pool.len()
            ),
        });
    }
    rng.shuffle(&mut pool);
    let (mut pool, validation, mut left_over) = if cfg.held_out_sources > 0 {
        split_by_source(cfg, pool, reader, rng, pool_source)?
    } else {
        let validation = if cfg.near_duplicates.is_some() {
            pool.split_off(pool.len() - cfg.validation)
        } else {
            pool.split_off(cfg.repeated.docs)
        };
        (pool, validation, Vec::new())
    };
    let Some(nd) = &cfg.near_duplicates else {
        left_over.extend(pool.split_off(cfg.repeated.docs.min(pool.len())));
        return Ok((pool, validation, left_over));
    };
    // Validation first; then the repeated documents among the rest that do not overlap it.
    let filter = NearDuplicateFilter::new(nd, &validation);
    let before = pool.len();
    pool.retain(|d| !filter.hits(&d.text));
    left_over.retain(|d| !filter.hits(&d.text));
    reader.near_duplicates += (before - pool.len()) as u64;
    if pool.len() < cfg.repeated.docs {
        return Err(DataError::Config(format!(
            "only {} of {before} candidate repeated documents are not near-duplicates of the validation set (data.near_duplicates threshold {}); raise the threshold or use a larger source",
            pool.len(),
            nd.threshold
        )));
    }
    if cfg.held_out_sources > 0 {
        left_over.extend(pool.split_off(cfg.repeated.docs));
    } else {
        pool.truncate(cfg.repeated.docs);
    }
    reader.near = Some(filter);
    Ok((pool, validation, left_over))
}

/// With held-out sources, the selection pool is this many times `repeated + validation`
/// documents, so that the held-out sources hold enough validation documents.
const SOURCE_POOL_FACTOR: usize = 4;
/// Documents read at a time while the held-out sources' validation documents are still too few.
const VALIDATION_CHUNK: usize = 256;

/// Holds out `data.held_out_sources` sources (drawn among those of the shuffled `pool`): the
/// validation documents are theirs, the candidate repeated documents the others'. Returns the
/// candidates, the validation documents and the trained sources' documents read beyond the pool;
/// the held-out sources' other documents are skipped from now on.
#[allow(clippy::type_complexity)]
fn split_by_source(
    cfg: &DataConfig,
    pool: Vec<Document>,
    reader: &mut DistinctReader,
    rng: &mut SplitMix64,
    pool_source: &crate::data_config::SourceConfig,
) -> Result<(Vec<Document>, Vec<Document>, Vec<Document>), DataError> {
    let mut keys: Vec<String> = Vec::new();
    for doc in &pool {
        let key = doc.source.clone().expect("documents carry keys with data.source_key");
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.sort();
    rng.shuffle(&mut keys);
    if keys.len() <= cfg.held_out_sources {
        return Err(DataError::Config(format!(
            "data.held_out_sources {} leaves no source to train on: the first {} documents of {} come from {} sources",
            cfg.held_out_sources,
            pool.len(),
            source_name(pool_source),
            keys.len()
        )));
    }
    let held_out: HashSet<String> = keys.into_iter().take(cfg.held_out_sources).collect();
    let of_held_out = |d: &Document| d.source.as_ref().is_some_and(|s| held_out.contains(s));
    let (mut validation, trained): (Vec<Document>, Vec<Document>) = pool.into_iter().partition(of_held_out);
    // Read on until the held-out sources hold enough validation documents; the trained sources'
    // documents read meanwhile become unique documents.
    let mut later = Vec::new();
    while validation.len() < cfg.validation {
        let chunk = match &cfg.repeated_source {
            Some(_) => Vec::new(),
            None => reader.take(None, VALIDATION_CHUNK, true)?,
        };
        if chunk.is_empty() {
            return Err(DataError::Config(format!(
                "the {} held-out sources of {} hold {} documents, fewer than data.validation {}: lower it or hold out more sources",
                cfg.held_out_sources,
                source_name(pool_source),
                validation.len(),
                cfg.validation
            )));
        }
        let (v, t): (Vec<Document>, Vec<Document>) = chunk.into_iter().partition(of_held_out);
        validation.extend(v);
        later.extend(t);
    }
    reader.held_out_skipped += (validation.len() - cfg.validation) as u64;
    validation.truncate(cfg.validation);
    if trained.len() < cfg.repeated.docs {
        return Err(DataError::Config(format!(
            "the trained sources hold {} of the first documents read, fewer than data.repeated.docs {}",
            trained.len(),
            cfg.repeated.docs
        )));
    }
    reader.held_out = held_out;
    Ok((trained, validation, later))
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
fn draw_canaries(count: usize, length: usize, tokenizer: &TextTokenizer, rng: &mut SplitMix64) -> Vec<Vec<u32>> {
    (0..count)
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
        .collect()
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
            return Err(DataError::Config(format!(
                "source ID collision: sources `{key}` and `{}` both hash to {id}",
                self.entries[other as usize].key
            )));
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

    fn add(&mut self, tokens: &[u32], split: Split, repetitions: usize, doc: &Document) -> Result<(), DataError> {
        let origin = &doc.origin;
        if tokens.is_empty() {
            return Err(DataError::Config(format!("document {origin} tokenizes to nothing")));
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
                return Err(DataError::Config(format!(
                    "sequence ID collision: {origin} and document {other} both hash to {id}; change data.seed or drop one"
                )));
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

/// The real (non-padding) target tokens a document of `len` tokens gives training: one row of at
/// most `context` targets each, or, packed, its tokens and end-of-text.
fn row_tokens(len: usize, (context, packing): (usize, bool)) -> u64 {
    if packing {
        len as u64 + 1
    } else {
        len.min(context) as u64
    }
}

/// Real tokens of the repetitions beyond the first of every repeated and canary document: what the
/// deduplicated schedule leaves out.
fn removed_row_tokens(cfg: &DataConfig, documents: &[DocEntry]) -> u64 {
    let rows = (cfg.context, cfg.packing);
    documents.iter().map(|d| row_tokens(d.tokens as usize, rows) * u64::from(d.repetitions.saturating_sub(1))).sum()
}

/// Step 4, streamed documents: read from the main source in chunks, tokenized and written.
struct Streamed<'a> {
    reader: &'a mut DistinctReader,
    tokenizer: &'a TextTokenizer,
    show_progress: bool,
}

impl Streamed<'_> {
    /// Adds `split`'s documents, `buffer` first: `cfg.unique` unique documents, or dedup fill
    /// documents until their real tokens reach the removed repetitions' (as many as the source
    /// has). Returns how many, and the documents of `buffer` not needed.
    fn add(
        self,
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

/// Step 5: the full and deduplicated schedules (the latter with the dedup fill), written to their
/// files; each listed document records its positions in the full one. Returns both lengths.
fn write_schedules(
    cfg: &DataConfig,
    out: &Path,
    documents: &mut [DocEntry],
    (unique_count, fill_count): (usize, usize),
    rng: &mut SplitMix64,
) -> Result<(usize, usize), DataError> {
    let unique = documents.len()..documents.len() + unique_count;
    let with_fill = documents.len()..documents.len() + unique_count + fill_count;
    let schedule = build_schedule(documents, unique, cfg.ordering, rng, false);
    let dedup = build_schedule(documents, with_fill, cfg.ordering, rng, true);
    for (pos, &doc) in schedule.iter().enumerate() {
        if let Some(entry) = documents.get_mut(doc as usize) {
            entry.positions.push(pos as u64);
        }
    }
    let as_bytes = |s: &[u32]| s.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    write_atomic(&out.join(SCHEDULE_FILE), &as_bytes(&schedule))?;
    write_atomic(&out.join(SCHEDULE_DEDUP_FILE), &as_bytes(&dedup))?;
    Ok((schedule.len(), dedup.len()))
}

/// Every training occurrence gets a sort key: shuffled keys are uniform, spaced keys put
/// repetition k of a document at (k + phase) / R.
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

/// The token IDs of each document.
fn encode(tokenizer: &TextTokenizer, docs: &[Document]) -> Result<Vec<Vec<u32>>, DataError> {
    tokenizer.encode_many(&docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>())
}

pub(crate) fn text_hash(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}
