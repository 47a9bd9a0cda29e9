//! Building a corpus ([`prepare`]) in five steps, each its own function: select the repeated and
//! validation documents, make the tokenizer, draw the canaries, tokenize everything into the
//! cache, and lay out the training schedules. The manifest is written last: its presence marks a
//! complete corpus.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use memsinks_model::io::write_atomic;
use sha2::{Digest, Sha256};

use crate::cache::{CacheKey, CacheWriter, TokenCache};
use crate::corpus::{
    open_source, progress_bar, sequence_id, source_name, DocEntry, Manifest, PreparedCorpus, Split, MANIFEST_FILE,
    SCHEDULE_DEDUP_FILE, SCHEDULE_FILE, TOKENIZER_FILE,
};
use crate::corpus_dir::{inspect, remove_if_exists, remove_stale_temporaries, Existing, CORPUS_MARKER};
use crate::data_config::{DataConfig, Ordering, TokenizerConfig};
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
    let mut reader = DistinctReader { main: Some(open_source(&cfg.source, cfg.invalid_utf8)?), ..Default::default() };
    let (repeated_docs, validation_docs) = select_held_out(cfg, &mut reader, &mut rng)?;
    let (tokenizer, unique_buffer) = make_tokenizer(cfg, &mut reader, &repeated_docs)?;
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
    let mut cache = CacheBuilder::new(TokenCache::writer(&out.join("cache"), tokenizer.vocab_size(), key)?, cfg);
    for (doc, tokens) in repeated_docs.iter().zip(encode(&tokenizer, &repeated_docs)?) {
        cache.add(&tokens, Split::Repeated, cfg.repeated.repetitions, doc.origin.clone())?;
    }
    for (i, tokens) in canaries.iter().enumerate() {
        cache.add(tokens, Split::Canary, cfg.canary.repetitions, format!("canary#{i}"))?;
    }
    for (doc, tokens) in validation_docs.iter().zip(encode(&tokenizer, &validation_docs)?) {
        cache.add(&tokens, Split::Validation, 0, doc.origin.clone())?;
    }
    for (i, tokens) in held_out_canaries.iter().enumerate() {
        cache.add(tokens, Split::CanaryHeldOut, 0, format!("canary-held-out#{i}"))?;
    }
    let streamed = Streamed { reader: &mut reader, tokenizer: &tokenizer, show_progress };
    let unique_count = streamed.add(cfg, Split::Unique, unique_buffer, &mut cache)?;
    let unique_tokens = cache.streamed_tokens;
    let dedup_removed_tokens = removed_row_tokens(cfg, &cache.documents);
    let fill_count = if cfg.dedup_fill && dedup_removed_tokens > 0 {
        cache.streamed_tokens = 0;
        cache.streamed_row_tokens = 0;
        let streamed = Streamed { reader: &mut reader, tokenizer: &tokenizer, show_progress };
        streamed.add(cfg, Split::DedupFill, Vec::new(), &mut cache)?
    } else {
        0
    };
    let dedup_fill_tokens = if fill_count > 0 { cache.streamed_row_tokens } else { 0 };
    if dedup_fill_tokens < dedup_removed_tokens && cfg.dedup_fill {
        tracing::warn!(
            "the source ran out: the dedup fill holds {dedup_fill_tokens} of the {dedup_removed_tokens} tokens of removed repetitions; the deduplicated model will cycle its data more"
        );
    }
    let CacheBuilder { writer, mut documents, .. } = cache;
    let cache = writer.finish()?;

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
    };
    // The manifest is written last: its presence marks a complete corpus.
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write_atomic(&out.join(MANIFEST_FILE), &json)?;
    Ok(PreparedCorpus { manifest, cache, tokenizer, dir: out.to_path_buf() })
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
            out.push(doc);
        }
        Ok(out)
    }
}

/// Step 1: the repeated and validation documents, drawn at random from the first
/// `repeated + validation` distinct documents of their source (unique documents are the next ones
/// in stream order, so a huge source is never held in memory at once).
fn select_held_out(
    cfg: &DataConfig,
    reader: &mut DistinctReader,
    rng: &mut SplitMix64,
) -> Result<(Vec<Document>, Vec<Document>), DataError> {
    let need = cfg.repeated.docs + cfg.validation;
    // With the near-duplicate filter some repeated candidates may be dropped: draw spares.
    let spare = if cfg.near_duplicates.is_some() { cfg.repeated.docs / 2 + 8 } else { 0 };
    let mut pool = match &cfg.repeated_source {
        Some(rep) => reader.take(Some(&mut open_source(rep, cfg.invalid_utf8)?), need + spare, true)?,
        None => reader.take(None, need + spare, true)?,
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
    let Some(nd) = &cfg.near_duplicates else {
        let validation = pool.split_off(cfg.repeated.docs);
        return Ok((pool, validation));
    };
    // Validation first; then the repeated documents among the rest that do not overlap it.
    let validation = pool.split_off(pool.len() - cfg.validation);
    let filter = NearDuplicateFilter::new(nd, &validation);
    let before = pool.len();
    pool.retain(|d| !filter.hits(&d.text));
    reader.near_duplicates += (before - pool.len()) as u64;
    if pool.len() < cfg.repeated.docs {
        return Err(DataError::Config(format!(
            "only {} of {before} candidate repeated documents are not near-duplicates of the validation set (data.near_duplicates threshold {}); raise the threshold or use a larger source",
            pool.len(),
            nd.threshold
        )));
    }
    pool.truncate(cfg.repeated.docs);
    reader.near = Some(filter);
    Ok((pool, validation))
}

/// Step 2: the tokenizer, trained on training text only (never on validation documents), or
/// loaded. Returns the unique documents read to train it (they are the first unique documents).
fn make_tokenizer(
    cfg: &DataConfig,
    reader: &mut DistinctReader,
    repeated: &[Document],
) -> Result<(TextTokenizer, Vec<Document>), DataError> {
    Ok(match &cfg.tokenizer {
        TokenizerConfig::File { path } => (TextTokenizer::load(path)?, Vec::new()),
        TokenizerConfig::Train { vocab_size } => {
            let unique = reader.take(None, cfg.unique.min(TOKENIZER_TRAINING_DOCS), false)?;
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
/// recorded with their sequence IDs.
struct CacheBuilder {
    writer: CacheWriter,
    documents: Vec<DocEntry>,
    ids: HashMap<i64, usize>,
    /// Tokens of the streamed (unique or fill) documents added since the count was reset.
    streamed_tokens: u64,
    /// The same as training rows hold them ([`row_tokens`]).
    streamed_row_tokens: u64,
    /// Tokens per training row, and whether rows are packed ([`row_tokens`]).
    rows: (usize, bool),
}

impl CacheBuilder {
    fn new(writer: CacheWriter, cfg: &DataConfig) -> Self {
        let (documents, ids) = (Vec::new(), HashMap::new());
        Self { writer, documents, ids, streamed_tokens: 0, streamed_row_tokens: 0, rows: (cfg.context, cfg.packing) }
    }

    fn add(&mut self, tokens: &[u32], split: Split, repetitions: usize, origin: String) -> Result<(), DataError> {
        if tokens.is_empty() {
            return Err(DataError::Config(format!("document {origin} tokenizes to nothing")));
        }
        let id = sequence_id(tokens);
        if let Some(&other) = self.ids.get(&id) {
            return Err(DataError::Config(format!(
                "sequence ID collision: {origin} and document {other} both hash to {id}; change data.seed or drop one"
            )));
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
        self.ids.insert(id, self.documents.len());
        self.documents.push(DocEntry {
            id,
            split,
            repetitions: repetitions as u32,
            tokens: tokens.len() as u32,
            origin,
            positions: Vec::new(),
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
    /// has). Returns how many.
    fn add(
        self,
        cfg: &DataConfig,
        split: Split,
        mut buffer: Vec<Document>,
        cache: &mut CacheBuilder,
    ) -> Result<usize, DataError> {
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
                std::mem::take(&mut buffer)
            };
            if chunk.is_empty() {
                break;
            }
            for (doc, tokens) in chunk.iter().zip(encode(self.tokenizer, &chunk)?) {
                if done(count, cache) {
                    break;
                }
                cache.add(&tokens, split, 1, doc.origin.clone())?;
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
        Ok(count)
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
