//! Step 5 of [`prepare`](super::prepare): the training schedules (which document each training
//! row starts from, in order) of the full corpus, the paper's deduplication and deduplication with
//! fresh data ([`ScheduleKind`]), and the real-token counts of training rows that the fresh fill
//! is measured in.

use std::path::Path;

use memsinks_core::files::write_atomic;

use crate::corpus::{DocEntry, Split};
use crate::data_config::{DataConfig, Ordering};
use crate::rng::SplitMix64;
use crate::schedules::ScheduleKind;
use crate::DataError;

/// The real (non-padding) target tokens a document of `len` tokens gives training: one row of at
/// most `context` targets each, or, packed, its tokens and end-of-text.
pub(super) fn row_tokens(len: usize, (context, packing): (usize, bool)) -> u64 {
    if packing {
        len as u64 + 1
    } else {
        len.min(context) as u64
    }
}

/// Real tokens of the repetitions beyond the first of every repeated (natural) document: what the
/// fresh fill replaces. Canary repetitions are left out too but not replaced: natural text in
/// place of random tokens would add general data the other models never see.
pub(super) fn removed_row_tokens(cfg: &DataConfig, documents: &[DocEntry]) -> u64 {
    let rows = (cfg.context, cfg.packing);
    documents
        .iter()
        .filter(|d| d.split == Split::Repeated)
        .map(|d| row_tokens(d.tokens as usize, rows) * u64::from(d.repetitions.saturating_sub(1)))
        .sum()
}

/// Step 5: the three schedules, written to their files; each listed document records its
/// positions in the full one. Returns the lengths of the full and the paper's dedup schedule.
pub(super) fn write_schedules(
    cfg: &DataConfig,
    out: &Path,
    documents: &mut [DocEntry],
    (unique_count, fill_count): (usize, usize),
    rng: &mut SplitMix64,
) -> Result<(usize, usize), DataError> {
    let unique = documents.len()..documents.len() + unique_count;
    let with_fill = documents.len()..documents.len() + unique_count + fill_count;
    let schedule = build_schedule(documents, unique.clone(), cfg.ordering, rng, false);
    let dedup = build_schedule(documents, unique, cfg.ordering, rng, true);
    let fresh = build_schedule(documents, with_fill, cfg.ordering, rng, true);
    for (pos, &doc) in schedule.iter().enumerate() {
        if let Some(entry) = documents.get_mut(doc as usize) {
            entry.positions.push(pos as u64);
        }
    }
    let as_bytes = |s: &[u32]| s.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    write_atomic(&out.join(ScheduleKind::Full.file()), &as_bytes(&schedule))?;
    write_atomic(&out.join(ScheduleKind::Dedup.file()), &as_bytes(&dedup))?;
    write_atomic(&out.join(ScheduleKind::DedupFresh.file()), &as_bytes(&fresh))?;
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
