//! Step 1 of [`prepare`](super::prepare): the repeated and validation documents, drawn from the
//! first distinct documents of their source, with whole sources held out when asked and the
//! validation set's near-duplicates kept out of training; and the reader that keeps every later
//! document distinct from them.

use std::collections::HashSet;
use std::path::PathBuf;

use super::{text_hash, DocStream};
use crate::corpus::{open_source, source_name};
use crate::data_config::DataConfig;
use crate::near_dup::NearDuplicateFilter;
use crate::rng::SplitMix64;
use crate::source::Document;
use crate::DataError;

/// Reads distinct documents: the texts of the repeated and validation sets are remembered so no
/// later document repeats them; unique documents are only checked, so memory stays flat however
/// many stream past.
#[derive(Default)]
pub(super) struct DistinctReader {
    pub(super) main: Option<DocStream>,
    pub(super) seen: HashSet<u64>,
    pub(super) duplicates: u64,
    /// The validation set's n-grams, once it is drawn (with `data.near_duplicates`).
    pub(super) near: Option<NearDuplicateFilter>,
    pub(super) near_duplicates: u64,
    /// Sources held out whole (`data.held_out_sources`): their later documents are skipped.
    pub(super) held_out: HashSet<String>,
    pub(super) held_out_skipped: u64,
}

impl DistinctReader {
    /// Up to `n` non-empty documents of `stream` (the main source when `None`) whose text was not
    /// seen; with `remember`, their texts join the seen set.
    pub(super) fn take(
        &mut self,
        stream: Option<&mut DocStream>,
        n: usize,
        remember: bool,
    ) -> Result<Vec<Document>, DataError> {
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

/// Repeated, validation and left-over documents (the left-over ones become unique documents).
pub(super) type HeldOut = (Vec<Document>, Vec<Document>, Vec<Document>);

/// Step 1: the repeated and validation documents, drawn at random from the first
/// `repeated + validation` distinct documents of their source (unique documents are the next ones
/// in stream order, so a huge source is never held in memory at once). With held-out sources the
/// pool is wider ([`SOURCE_POOL_FACTOR`]), validation documents come from the held-out sources
/// only, and the pool's other documents of trained sources are returned to be unique documents.
pub(super) fn select_held_out(
    cfg: &DataConfig,
    reader: &mut DistinctReader,
    rng: &mut SplitMix64,
) -> Result<HeldOut, DataError> {
    let need = cfg.repeated.docs + cfg.validation;
    // With the near-duplicate filter some repeated candidates may be dropped: draw spares.
    let spare = if cfg.near_duplicates.is_some() { cfg.repeated.docs / 2 + 8 } else { 0 };
    let wanted = if cfg.held_out_sources > 0 { need * SOURCE_POOL_FACTOR + spare } else { need + spare };
    // With a draw pool every split comes from one seeded shuffle of the pool.
    let wanted = wanted.max(cfg.draw_pool);
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
        // Validation is the tail of the shuffled pool; the repeated documents are drawn from its head
        // (the rest of a draw pool, or the near-duplicate spares, follow them).
        let validation = pool.split_off(pool.len() - cfg.validation);
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
        return Err(DataError::Invalid(format!(
            "only {} of {before} candidate repeated documents are not near-duplicates of the validation set (data.near_duplicates threshold {}); raise the threshold or use a larger source",
            pool.len(),
            nd.threshold
        )));
    }
    if cfg.held_out_sources > 0 || cfg.draw_pool > 0 {
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
        return Err(DataError::Invalid(format!(
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
            return Err(DataError::Invalid(format!(
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
        return Err(DataError::Invalid(format!(
            "the trained sources hold {} of the first documents read, fewer than data.repeated.docs {}",
            trained.len(),
            cfg.repeated.docs
        )));
    }
    reader.held_out = held_out;
    Ok((trained, validation, later))
}
