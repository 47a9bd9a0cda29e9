//! Turns a schedule of documents into training rows: one document per row (padded, with a loss
//! mask) or packed rows with per-token sequence IDs. The order is fixed by the schedule (and, with
//! reshuffling, by the seed of every later pass), and a [`Cursor`] records where the next batch
//! starts, so a run can be resumed exactly.

use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use memsinks_model::SeqLayout;
use serde::{Deserialize, Serialize};

use crate::cache::TokenCache;
use crate::corpus::{DocIds, PreparedCorpus};
use crate::rng::SplitMix64;
use memsinks_model::LmBatch;

/// A saved data cursor that does not fit the schedule it is resumed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// The position lies past the schedule's end.
    #[error("position {position} lies past the schedule's {occurrences} occurrences")]
    PastSchedule {
        /// The cursor's position.
        position: u64,
        /// Occurrences in the schedule.
        occurrences: u64,
    },
    /// The offset lies past the end of its occurrence.
    #[error("offset {offset} lies past the end of occurrence {position}")]
    PastOccurrence {
        /// The cursor's offset.
        offset: u32,
        /// The cursor's position.
        position: u64,
    },
}

/// Where the next batch starts: the epoch, the occurrence in the schedule and, when packing, the
/// token offset inside that occurrence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Completed passes over the schedule.
    pub epoch: u64,
    /// Next occurrence of the schedule.
    pub position: u64,
    /// Tokens of that occurrence already consumed (packing only).
    pub offset: u32,
}

/// A batch on the host, before it is moved to a device.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    /// `batch` rows of `context + 1` tokens.
    pub rows: Vec<Vec<u32>>,
    /// Per-target loss weights (`context` per row).
    pub weights: Vec<Vec<f32>>,
    /// Sequence IDs and document boundaries.
    pub layout: SeqLayout,
    /// Schedule occurrences whose first token is in this batch, as (position, document).
    pub started: Vec<(u64, u32)>,
}

impl HostBatch {
    /// Moves the batch to `device`.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> LmBatch<B> {
        LmBatch::from_rows(&self.rows, &self.weights, self.layout.clone(), device)
    }
}

/// Documents read one per row, each truncated to `context` tokens with end-of-text appended:
/// what every evaluation, scorer and unlearning pass reads.
#[derive(Clone, Copy)]
pub struct DocRows<'a> {
    /// The token cache the documents are in.
    pub cache: &'a TokenCache,
    /// Document indices, in reading order.
    pub docs: &'a [usize],
    /// Tokens per row.
    pub context: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// The end-of-text token.
    pub end_of_text: u32,
    /// The documents' sequence IDs.
    pub ids: &'a DocIds,
}

impl<'a> DocRows<'a> {
    /// `docs` of a prepared corpus.
    pub fn of(corpus: &'a PreparedCorpus, docs: &'a [usize], context: usize, batch_size: usize) -> Self {
        let end_of_text = corpus.manifest.end_of_text;
        Self { cache: &corpus.cache, docs, context, batch_size, end_of_text, ids: &corpus.ids }
    }

    /// The same settings over other documents.
    pub fn with_docs(self, docs: &'a [usize]) -> Self {
        Self { docs, ..self }
    }
}

/// Produces batches from a token cache and a schedule.
#[derive(Clone)]
pub struct Batcher {
    cache: Arc<TokenCache>,
    schedule: Arc<Vec<u32>>,
    route_to_sinks: Option<Arc<Vec<bool>>>,
    context: usize,
    batch_size: usize,
    end_of_text: u32,
    packing: bool,
    /// Seed of a fresh order for every pass after the first (`None`: every pass replays the
    /// schedule).
    reshuffle: Option<u64>,
    /// The order of the pass read last, kept so each pass is shuffled once.
    pass_order: Arc<Mutex<Option<PassOrder>>>,
    /// Each document's sequence ID.
    ids: DocIds,
}

/// The order of one pass: its number and the documents in the order it reads them.
type PassOrder = (u64, Arc<Vec<u32>>);

/// The documents pass `pass` reads: the schedule itself in the first pass or without
/// reshuffling, otherwise a permutation of it drawn from `reshuffle` and the pass number.
pub fn pass_order(schedule: &[u32], reshuffle: Option<u64>, pass: u64) -> Vec<u32> {
    let mut order = schedule.to_vec();
    if let Some(seed) = reshuffle.filter(|_| pass > 0) {
        SplitMix64::new(seed ^ pass.wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut order);
    }
    order
}

/// What the first batches of a training stream hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Consumed {
    /// Batches (a pass ends with a partial one).
    pub batches: u64,
    /// Rows.
    pub rows: u64,
    /// Real (non-padding) target tokens.
    pub real_tokens: u64,
    /// Occurrences started, per document index.
    pub views: Vec<u64>,
}

impl Batcher {
    /// A batcher over `schedule` (document indices). Each document's sequence ID is the hash of
    /// its tokens ([`crate::corpus::sequence_id`]) unless [`Batcher::with_ids`] says otherwise.
    ///
    /// # Panics
    /// If `context` or `batch_size` is 0.
    pub fn new(
        cache: Arc<TokenCache>,
        schedule: Arc<Vec<u32>>,
        context: usize,
        batch_size: usize,
        end_of_text: u32,
        packing: bool,
    ) -> Self {
        assert!(context > 0 && batch_size > 0, "context and batch size must be positive");
        let pass_order = Arc::new(Mutex::new(None));
        Self {
            cache,
            schedule,
            route_to_sinks: None,
            context,
            batch_size,
            end_of_text,
            packing,
            reshuffle: None,
            pass_order,
            ids: DocIds::PerDocument,
        }
    }

    /// Documents take their sequence IDs from `ids` (a corpus's [`PreparedCorpus::ids`]).
    pub fn with_ids(mut self, ids: DocIds) -> Self {
        self.ids = ids;
        self
    }

    /// One document per row over `rows.docs`, in that order: the batcher every evaluation and
    /// unlearning pass uses.
    pub fn over_documents(rows: &DocRows<'_>) -> Self {
        let schedule = Arc::new(rows.docs.iter().map(|&d| d as u32).collect::<Vec<_>>());
        Self::new(Arc::new(rows.cache.clone()), schedule, rows.context, rows.batch_size, rows.end_of_text, false)
            .with_ids(rows.ids.clone())
    }

    /// Every pass after the first reads the schedule in a fresh order drawn from `seed` and the
    /// pass number (the first pass reads it as written).
    pub fn with_reshuffle(mut self, seed: u64) -> Self {
        self.reshuffle = Some(seed);
        // Clones share the cached order: a new seed must not find the old seed's.
        self.pass_order = Arc::new(Mutex::new(None));
        self
    }

    /// The order of pass `epoch`.
    fn order(&self, epoch: u64) -> Arc<Vec<u32>> {
        if self.reshuffle.is_none() || epoch == 0 {
            return self.schedule.clone();
        }
        let mut cached = self.pass_order.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((e, order)) = cached.as_ref() {
            if *e == epoch {
                return order.clone();
            }
        }
        let order = Arc::new(pass_order(&self.schedule, self.reshuffle, epoch));
        *cached = Some((epoch, order.clone()));
        order
    }

    /// What the stream of batches from the start holds once `stop` says so (asked before every
    /// batch, with what was consumed so far), or at the end of pass `max_epochs`.
    pub fn consume(&self, max_epochs: u64, mut stop: impl FnMut(&Consumed) -> bool) -> Consumed {
        let mut out = Consumed { views: vec![0; self.cache.num_docs()], ..Default::default() };
        let mut cursor = Cursor::default();
        while cursor.epoch < max_epochs && !stop(&out) {
            if !self.packing && cursor.position < self.schedule_len() {
                // One document per row: count without building the rows.
                let order = self.order(cursor.epoch);
                let end = (cursor.position + self.batch_size as u64).min(self.schedule_len());
                for &doc in &order[cursor.position as usize..end as usize] {
                    out.views[doc as usize] += 1;
                    out.real_tokens += self.cache.doc_len(doc as usize).min(self.context) as u64;
                }
                out.rows += end - cursor.position;
                out.batches += 1;
                cursor.position = end;
                continue;
            }
            let Some(batch) = self.next_batch(&mut cursor) else { continue };
            for &(_, doc) in &batch.started {
                out.views[doc as usize] += 1;
            }
            out.real_tokens += batch.weights.iter().flatten().filter(|&&w| w > 0.0).count() as u64;
            out.rows += batch.rows.len() as u64;
            out.batches += 1;
        }
        out
    }

    /// Gradient masking: tokens of documents flagged here update only the sink pool (documents
    /// beyond the end of `flags` are not flagged).
    pub fn with_route_to_sinks(mut self, flags: Arc<Vec<bool>>) -> Self {
        self.route_to_sinks = Some(flags);
        self
    }

    /// Occurrences in one pass.
    pub fn schedule_len(&self) -> u64 {
        self.schedule.len() as u64
    }

    /// Rows per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Checks that `cursor` (read back from a checkpoint) points into this schedule: its position
    /// at most the schedule's length, its offset inside that document (packing) or 0.
    ///
    /// # Errors
    /// What is out of range, in words.
    pub fn check_cursor(&self, cursor: &Cursor) -> Result<(), CursorError> {
        if cursor.position > self.schedule_len() {
            return Err(CursorError::PastSchedule { position: cursor.position, occurrences: self.schedule_len() });
        }
        let limit = match self.order(cursor.epoch).get(cursor.position as usize) {
            Some(&doc) if self.packing => self.cache.doc_len(doc as usize) + 1,
            _ => 1,
        };
        if cursor.offset as usize >= limit {
            return Err(CursorError::PastOccurrence { offset: cursor.offset, position: cursor.position });
        }
        Ok(())
    }

    /// The next batch from `cursor` (advanced past it), or `None` at the end of the schedule, in
    /// which case the cursor moves to the start of the next epoch. A final partial batch is
    /// returned with fewer rows.
    pub fn next_batch(&self, cursor: &mut Cursor) -> Option<HostBatch> {
        if cursor.position >= self.schedule_len() {
            *cursor = Cursor { epoch: cursor.epoch + 1, position: 0, offset: 0 };
            return None;
        }
        let order = self.order(cursor.epoch);
        let batch = if self.packing { self.packed(cursor, &order) } else { self.per_document(cursor, &order) };
        if batch.rows.is_empty() {
            *cursor = Cursor { epoch: cursor.epoch + 1, position: 0, offset: 0 };
            return None;
        }
        Some(batch)
    }

    /// The document's tokens followed by end-of-text, with its sequence ID.
    fn stream(&self, doc: u32) -> (Vec<u32>, i64) {
        let mut tokens = self.cache.doc(doc as usize);
        let id = self.ids.id(doc as usize, &tokens);
        tokens.push(self.end_of_text);
        (tokens, id)
    }

    fn routed(&self, doc: u32) -> bool {
        self.route_to_sinks.as_ref().is_some_and(|f| f.get(doc as usize).copied().unwrap_or(false))
    }

    fn per_document(&self, cursor: &mut Cursor, order: &[u32]) -> HostBatch {
        let width = self.context + 1;
        let (mut rows, mut weights, mut row_ids, mut started, mut route) = (vec![], vec![], vec![], vec![], vec![]);
        while rows.len() < self.batch_size && cursor.position < self.schedule_len() {
            let doc = order[cursor.position as usize];
            let (mut row, id) = self.stream(doc);
            row.truncate(width);
            let real = row.len();
            row.resize(width, self.end_of_text);
            weights.push((0..self.context).map(|t| if t + 1 < real { 1.0 } else { 0.0 }).collect());
            rows.push(row);
            row_ids.push(id);
            started.push((cursor.position, doc));
            route.push(self.routed(doc));
            cursor.position += 1;
        }
        let mut layout = SeqLayout::per_row(&row_ids, self.context);
        if self.route_to_sinks.is_some() {
            layout =
                layout.with_route_to_sinks(route.iter().flat_map(|&r| std::iter::repeat_n(r, self.context)).collect());
        }
        HostBatch { rows, weights, layout, started }
    }

    fn packed(&self, cursor: &mut Cursor, order: &[u32]) -> HostBatch {
        let width = self.context + 1;
        let (mut rows, mut weights, mut started) = (vec![], vec![], vec![]);
        let (mut ids, mut segments, mut route) = (vec![], vec![], vec![]);
        while rows.len() < self.batch_size && cursor.position < self.schedule_len() {
            let mut row: Vec<(u32, i64, u32, bool)> = Vec::with_capacity(width);
            let mut segment = 0u32;
            // Each row takes `context + 1` tokens and the stream advances by `context`, so the last
            // token of a row is the first input of the next one and no target is lost.
            let mut resume_at: Option<Cursor> = None;
            while row.len() < width && cursor.position < self.schedule_len() {
                let doc = order[cursor.position as usize];
                let (tokens, id) = self.stream(doc);
                if cursor.offset == 0 {
                    started.push((cursor.position, doc));
                }
                let flag = self.routed(doc);
                while row.len() < width && (cursor.offset as usize) < tokens.len() {
                    if row.len() == self.context {
                        resume_at = Some(*cursor);
                    }
                    row.push((tokens[cursor.offset as usize], id, segment, flag));
                    cursor.offset += 1;
                }
                // `>=`: a cursor read from a damaged checkpoint may point past the document's end
                // (`check_cursor` rejects it on resume); it must never stall the stream.
                if cursor.offset as usize >= tokens.len() {
                    *cursor = Cursor { epoch: cursor.epoch, position: cursor.position + 1, offset: 0 };
                    segment += 1;
                }
            }
            if let Some(back) = resume_at {
                // The started list must not count an occurrence twice when we step back into it.
                if back.offset == 0 {
                    started.retain(|&(p, _)| p != back.position);
                }
                *cursor = back;
            }
            // A cursor past the end of the last occurrence (a damaged checkpoint's; resume rejects
            // it with `check_cursor`) leaves nothing to put in a row.
            let Some(&last) = row.last() else { break };
            let real = row.len();
            row.resize(width, (self.end_of_text, last.1, last.2, last.3));
            weights.push((0..self.context).map(|t| if t + 1 < real { 1.0 } else { 0.0 }).collect());
            rows.push(row.iter().map(|r| r.0).collect());
            for &(_, id, seg, flag) in &row[..self.context] {
                ids.push(id);
                segments.push(seg);
                route.push(flag);
            }
        }
        let mut layout = SeqLayout::packed(rows.len(), self.context, ids, segments);
        if self.route_to_sinks.is_some() {
            layout = layout.with_route_to_sinks(route);
        }
        HostBatch { rows, weights, layout, started }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheKey;

    /// Found by fuzzing (`fuzz/fuzz_targets/run_files.rs`): a packed cursor whose offset lies past
    /// its document's end made `next_batch` loop forever.
    #[test]
    fn a_cursor_past_its_document_neither_hangs_nor_passes_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey { source_hash: "s".into(), tokenizer_hash: "t".into(), config_hash: "c".into() };
        let mut writer = TokenCache::writer(&dir.path().join("cache"), 50, key).unwrap();
        for len in [1usize, 3, 5] {
            writer.push(&(0..len as u32).collect::<Vec<_>>()).unwrap();
        }
        let cache = Arc::new(writer.finish().unwrap());
        let batcher = Batcher::new(cache, Arc::new(vec![0, 1, 2]), 8, 2, 49, true);
        let mut bad = Cursor { epoch: 1, position: 0, offset: 3 };
        assert!(batcher.check_cursor(&bad).unwrap_err().to_string().contains("offset 3"));
        assert!(batcher.check_cursor(&Cursor { epoch: 0, position: 4, offset: 0 }).is_err());
        assert!(batcher.check_cursor(&Cursor { epoch: 0, position: 1, offset: 3 }).is_ok());
        let mut batches = 0;
        while batcher.next_batch(&mut bad).is_some() {
            batches += 1;
            assert!(batches < 10, "the stream stalled");
        }
        // Found next: the same past the end of the schedule's last occurrence (no row to fill).
        let mut last = Cursor { epoch: 1, position: 2, offset: 91 };
        assert!(batcher.check_cursor(&last).is_err());
        assert!(batcher.next_batch(&mut last).is_none());
        assert_eq!(last, Cursor { epoch: 2, position: 0, offset: 0 });
    }
}
