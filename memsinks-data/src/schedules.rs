//! The three training schedules of a prepared corpus (which document each training row starts
//! from, in order): the full corpus, the paper's deduplication (every repeated and canary document
//! once, nothing added) and deduplication with fresh data (the same, plus fresh natural stories
//! in place of the repeated stories' removed repetitions — an upper bound, not the paper's
//! baseline).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DataError;

/// The full training schedule.
pub const SCHEDULE_FILE: &str = "schedule.bin";
/// The deduplicated training schedule (the paper's dedup: no fresh data).
pub const SCHEDULE_DEDUP_FILE: &str = "schedule_dedup.bin";
/// The deduplicated schedule with the fresh fill (`data.dedup_fill`).
pub const SCHEDULE_DEDUP_FRESH_FILE: &str = "schedule_dedup_fresh.bin";
/// The manifest version whose `schedule_dedup.bin` holds no fresh fill (older ones did).
pub const DEDUP_WITHOUT_FILL_VERSION: u32 = 2;

/// Which schedule a model trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduleKind {
    /// Every repetition.
    Full,
    /// Each repeated and canary document once, as the paper deduplicates.
    Dedup,
    /// [`ScheduleKind::Dedup`] plus fresh natural stories for the repeated stories' removed
    /// repetitions (canary repetitions are not replaced).
    DedupFresh,
}

impl ScheduleKind {
    /// Its file in a prepared directory.
    pub fn file(self) -> &'static str {
        match self {
            ScheduleKind::Full => SCHEDULE_FILE,
            ScheduleKind::Dedup => SCHEDULE_DEDUP_FILE,
            ScheduleKind::DedupFresh => SCHEDULE_DEDUP_FRESH_FILE,
        }
    }
}

/// Reads a schedule of a corpus holding `docs` documents, refusing a truncated file or an entry
/// naming a document the corpus does not hold.
pub(crate) fn read_schedule(path: &Path, docs: usize) -> Result<Vec<u32>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let damaged = |message: String| Err(DataError::Format { path: path.into(), message });
    if bytes.len() % 4 != 0 {
        return damaged("truncated schedule; rerun prepare".into());
    }
    let schedule: Vec<u32> =
        bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    match schedule.iter().enumerate().find(|(_, &d)| d as usize >= docs) {
        Some((at, doc)) => damaged(format!(
            "entry {at} names document {doc}, the corpus holds {docs}: the file is damaged; rerun `memsinks data \
             prepare` into a new directory"
        )),
        None => Ok(schedule),
    }
}
