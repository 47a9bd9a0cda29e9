//! Checkpoint records: burn-train's records written atomically, the newest complete round, and the
//! barrier that keeps training off the tensors a checkpointer thread is still reading.
//!
//! # Why a barrier (the wgpu/cuda abort)
//!
//! burn-train 0.21 saves a round by cloning the model and optimizer records (device tensors that
//! share their buffers with the live model: a clone only bumps a reference count) and handing each
//! to its own checkpointer thread (`burn-train/src/checkpoint/async_checkpoint.rs`), then trains
//! on at once. On the fusion backends that is a data race inside burn-fusion 0.21:
//!
//! - `FusionTensor::into_ir` (`burn-fusion/src/tensor.rs`) decides from the shared atomic count,
//!   on the calling thread, whether an operation may consume the buffer (`ReadWrite`, count 1) or
//!   only read it (`ReadOnly`), and gives up its own count at once, before the operation reaches
//!   the fusion server.
//! - The checkpointer thread's read (`float_into_data` → `FusionServer::read_float`) first drains
//!   the tensor's *home* stream — the training thread's — and only then looks the handle up.
//! - So: the checkpointer takes `ReadOnly` (count 2) and drops to count 1; the training thread's
//!   next AdamW update sees count 1 and registers a `ReadWrite` op that consumes the buffer; the
//!   checkpointer's read drains that op first and finds no handle: "Should have handle for tensor"
//!   (`burn-ir/src/handle.rs:97`), the checkpointer thread dies, the next save panics ("Can send
//!   message to checkpointer thread"), and the process aborts. It depends on thread timing, hence
//!   2 aborts in 3 runs, none on the CPU backends (no lazy streams, no shared handles).
//!
//! Upstream, burn fixed this after 0.21 (in 0.22): a tensor used from a thread other than its home
//! stream first becomes a *shared view* with a fresh id after draining the home stream ("fix(fusion):
//! shared tensor", #4962), and drops from a foreign thread drain the home stream first (#5166).
//!
//! Our fix keeps burn-train's checkpointer and removes the overlap: [`AtomicFileRecorder`] counts
//! every record it finishes (also when converting or writing fails), and the train step waits,
//! before it touches the model of round `k`, until the records of the `k` rounds saved by this
//! process are done ([`CheckpointBarrier::wait_for_rounds`]). The checkpointer threads still write
//! the files; only their reads of device memory happen while training waits (milliseconds for
//! the models trained here). No retry, no sleep: the train step blocks on a condition variable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use burn::record::{
    BurnRecord, FileRecorder, FullPrecisionSettings, NamedMpkBytesRecorder, NamedMpkFileRecorder, Record, Recorder,
    RecorderError,
};
use burn::tensor::backend::Backend;
use burn::train::Interrupter;
use serde::Serialize;

use memsinks_core::files::{check_checksum, is_temporary_name, temporary_sibling, write_checksum, ChecksumCheck};

use crate::run_dir::RunDir;

/// Records burn-train writes for every round: model, optimizer, scheduler.
pub const RECORDS_PER_ROUND: usize = 3;

/// Counts the checkpoint records that are finished, so the training thread can wait for them,
/// and keeps the first record that could not be written: burn-train's checkpointer thread panics
/// on a recorder's error, so a failed write (a full disk) stops training through the interrupter
/// instead, and the run ends with that error.
#[derive(Default)]
pub struct CheckpointBarrier {
    finished: Mutex<usize>,
    changed: Condvar,
    failure: Mutex<Option<String>>,
    interrupter: Option<Interrupter>,
}

impl std::fmt::Debug for CheckpointBarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointBarrier")
            .field("finished", &self.finished())
            .field("failure", &self.failure())
            .finish()
    }
}

impl CheckpointBarrier {
    /// A barrier that stops training through `interrupter` when a record cannot be written.
    pub fn stopping(interrupter: Interrupter) -> Self {
        Self { interrupter: Some(interrupter), ..Self::default() }
    }

    /// The first record that could not be written, and why.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn fail(&self, message: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            if let Some(interrupter) = &self.interrupter {
                interrupter.stop(Some(&message));
            }
            *failure = Some(message);
        }
    }

    /// Blocks until the records of `rounds` saved rounds are finished (written or failed).
    pub fn wait_for_rounds(&self, rounds: usize) {
        let wanted = rounds * RECORDS_PER_ROUND;
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        while *finished < wanted {
            finished = self.changed.wait(finished).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Records finished so far.
    pub fn finished(&self) -> usize {
        *self.finished.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish_one(&self) {
        *self.finished.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
    }
}

/// Marks one record finished when dropped: after success, an error or a panic alike, so the
/// training thread can never wait for a record that will not come.
struct Finished<'a>(Option<&'a CheckpointBarrier>);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        if let Some(barrier) = self.0 {
            barrier.finish_one();
        }
    }
}

/// Writes burn records atomically: to a temporary file in the same directory, synced, then
/// renamed, so a killed process leaves either the previous checkpoint or a complete new one.
/// With a [`CheckpointBarrier`], every finished record is counted there.
#[derive(Debug, Default, Clone)]
pub struct AtomicFileRecorder {
    inner: NamedMpkFileRecorder<FullPrecisionSettings>,
    barrier: Option<Arc<CheckpointBarrier>>,
}

impl AtomicFileRecorder {
    /// A recorder that reports each finished record to `barrier`.
    pub fn counting(barrier: Arc<CheckpointBarrier>) -> Self {
        Self { inner: NamedMpkFileRecorder::default(), barrier: Some(barrier) }
    }
}

impl<B: Backend> Recorder<B> for AtomicFileRecorder {
    type Settings = FullPrecisionSettings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    /// burn's default `record`, plus the count: the record's device tensors are read (and the
    /// record dropped) inside this call, which is what the training thread waits for.
    fn record<R: Record<B>>(&self, record: R, file: PathBuf) -> Result<(), RecorderError> {
        let _finished = Finished(self.barrier.as_deref());
        let item = record.into_item::<Self::Settings>();
        let saved = Recorder::<B>::save_item(self, BurnRecord::<_, B>::new::<Self>(item), file);
        match (saved, &self.barrier) {
            // Reported to the run instead of burn-train's checkpointer thread, which would panic;
            // the round stays incomplete (no checksum), so resume falls back past it.
            (Err(e), Some(barrier)) => {
                barrier.fail(format!("a checkpoint could not be written ({e}); the last complete round is kept"));
                Ok(())
            }
            (saved, _) => saved,
        }
    }

    fn save_item<I: Serialize>(&self, item: I, mut file: PathBuf) -> Result<(), RecorderError> {
        file.set_extension(<Self as FileRecorder<B>>::file_extension());
        // Encoded in memory, then written by this crate: burn's file recorder writes through a
        // buffered writer whose last flush error is lost when it is dropped, which left a
        // truncated record under its final name on a full disk.
        let bytes = Recorder::<B>::save_item(&NamedMpkBytesRecorder::<FullPrecisionSettings>::new(), item, ())?;
        let tmp = temporary_sibling(&file, ".mpk");
        let fail = |e: std::io::Error| {
            let _ = std::fs::remove_file(&tmp);
            RecorderError::Unknown(format!("{}: {e}", file.display()))
        };
        let written = memsinks_core::files::create_new_file(&tmp).and_then(|mut f| {
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()
        });
        written.map_err(fail)?;
        // The digest is written after the rename: a record without a matching digest is
        // incomplete (see `latest_complete_checkpoint`).
        let digest = memsinks_core::files::sha256_hex(&bytes);
        std::fs::rename(&tmp, &file).map_err(fail)?;
        write_checksum(&file, &digest).map_err(|e| RecorderError::Unknown(e.to_string()))
    }

    fn load_item<I: serde::de::DeserializeOwned>(&self, file: &mut PathBuf) -> Result<I, RecorderError> {
        Recorder::<B>::load_item(&self.inner, file)
    }
}

impl<B: Backend> FileRecorder<B> for AtomicFileRecorder {
    fn file_extension() -> &'static str {
        "mpk"
    }
}

/// The record kinds burn-train saves each round.
const RECORD_KINDS: [&str; 3] = ["model", "optim", "scheduler"];

/// Why a record of a round cannot be resumed from, or `None` when it is sound: it exists, and its
/// SHA-256 equals the digest written after it.
fn record_problem(path: &Path) -> Option<String> {
    if !path.exists() {
        return Some("missing".into());
    }
    match check_checksum(path, None) {
        Ok(ChecksumCheck::Matches) => decode_problem(path),
        Ok(ChecksumCheck::NoChecksum) => Some("no checksum (its write did not finish)".into()),
        Ok(ChecksumCheck::Differs { .. }) => {
            Some("its content does not match its checksum (truncated or damaged)".into())
        }
        Err(e) => Some(e.to_string()),
    }
}

/// The outline of every burn record: its metadata and its item, each decoded to the end but kept
/// nowhere. A record that matches its checksum can still fail to decode (written empty, or its
/// digest rewritten); burn-train would panic on it while resuming.
#[derive(serde::Deserialize)]
struct RecordOutline {
    #[allow(dead_code)]
    metadata: serde::de::IgnoredAny,
    #[allow(dead_code)]
    item: serde::de::IgnoredAny,
}

fn decode_problem(path: &Path) -> Option<String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return Some(e.to_string()),
    };
    rmp_serde::from_slice::<RecordOutline>(&bytes).err().map(|e| format!("it does not decode as a burn record ({e})"))
}

/// The rounds with a model record in `checkpoint/`, newest first.
fn rounds_on_disk(run_dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(RunDir::new(run_dir).checkpoints()) else { return Vec::new() };
    let mut rounds: Vec<usize> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("model-")?.strip_suffix(".mpk")?.parse().ok()
        })
        .collect();
    rounds.sort_unstable_by(|a, b| b.cmp(a));
    rounds
}

/// The newest round whose model, optimizer and scheduler records all match their checksums and
/// whose data cursor parses. Each newer round that is damaged or incomplete is named in a warning
/// (file and reason), and the run falls back past it.
pub fn latest_complete_checkpoint(run_dir: &Path) -> Option<usize> {
    let dir = RunDir::new(run_dir).checkpoints();
    for round in rounds_on_disk(run_dir) {
        let mut problems: Vec<String> = RECORD_KINDS
            .iter()
            .filter_map(|k| {
                let path = dir.join(format!("{k}-{round}.mpk"));
                record_problem(&path).map(|p| format!("{}: {p}", path.display()))
            })
            .collect();
        let cursor = RunDir::new(run_dir).cursor(round);
        let parsed = match check_checksum(&cursor, None) {
            Ok(ChecksumCheck::Matches) => std::fs::read_to_string(&cursor)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<memsinks_data::Cursor>(&t).map_err(|e| e.to_string())),
            Ok(ChecksumCheck::NoChecksum) => Err("no checksum (its write did not finish)".to_string()),
            Ok(ChecksumCheck::Differs { .. }) => Err("its content does not match its checksum (edited)".to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = parsed {
            problems.push(format!("{}: {e}", cursor.display()));
        }
        if problems.is_empty() {
            return Some(round);
        }
        tracing::warn!(
            "checkpoint round {round} cannot be resumed from ({}); trying the round before",
            problems.join("; ")
        );
    }
    None
}

/// Removes what killed or pruned rounds left in `checkpoint/`: temporary records of dead
/// writers, and the cursors and checksums of rounds whose model record burn-train has pruned.
/// Called only while no checkpointer thread runs (before training starts and after it ends,
/// under the run's lock), and only on files this crate names.
pub fn remove_stale_checkpoint_files(run_dir: &Path) {
    let dir = RunDir::new(run_dir).checkpoints();
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    let kept: std::collections::HashSet<usize> = rounds_on_disk(run_dir).into_iter().collect();
    let round_of = |name: &str, prefix: &str, suffix: &str| -> Option<usize> {
        name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let temporary = is_temporary_name(&name);
        let orphan = round_of(&name, "cursor-", ".json")
            .or_else(|| round_of(&name, "cursor-", ".json.sha256"))
            .or_else(|| RECORD_KINDS.iter().find_map(|k| round_of(&name, &format!("{k}-"), ".mpk.sha256")))
            .is_some_and(|r| !kept.contains(&r));
        if temporary || orphan {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// burn-train's `KeepLastNCheckpoints` deletes round `e - n` while round `e` is being written, on
/// other threads: with `n = 1` a kill can leave no complete round. This keeps `n` complete rounds
/// whatever the moment of a kill: round `e - n - 1` is deleted only when round `e` is saved, so
/// rounds `e - n .. e - 1` stay complete while `e` is written (`n + 1` rounds on disk at most).
///
/// burn-train deletes only its own records: the checksums and cursor of a round it deleted one
/// save ago are removed here, so `checkpoint/` does not grow with the run.
#[derive(Clone, Debug)]
pub struct KeepCompleteRounds {
    /// Complete rounds always kept.
    pub keep: usize,
    /// The run directory whose `checkpoint/` companions are pruned (`None`: records only).
    pub run_dir: Option<PathBuf>,
}

impl KeepCompleteRounds {
    /// What to do when round `epoch` ends: save it, and delete the round `keep + 1` before it.
    pub fn actions(&self, epoch: usize) -> Vec<burn::train::checkpoint::CheckpointingAction> {
        use burn::train::checkpoint::CheckpointingAction;
        let mut actions = vec![CheckpointingAction::Save];
        if let Some(old) = epoch.checked_sub(self.keep + 1).filter(|&e| e > 0) {
            actions.push(CheckpointingAction::Delete(old));
        }
        actions
    }
}

impl burn::train::checkpoint::CheckpointingStrategy for KeepCompleteRounds {
    fn checkpointing(
        &mut self,
        epoch: usize,
        _collector: &burn::train::metric::store::EventStoreClient,
    ) -> Vec<burn::train::checkpoint::CheckpointingAction> {
        // Round `epoch - keep - 2` was deleted when round `epoch - 1` was saved, and its
        // checkpointer threads finished before round `epoch` trained (the barrier), so nothing
        // writes its companions any more.
        if let (Some(dir), Some(gone)) = (&self.run_dir, epoch.checked_sub(self.keep + 2).filter(|&e| e > 0)) {
            let files = RunDir::new(dir);
            let cursor = files.cursor(gone);
            let mut companions = vec![memsinks_core::files::checksum_path(&cursor), cursor];
            for kind in RECORD_KINDS {
                companions
                    .push(memsinks_core::files::checksum_path(&files.checkpoints().join(format!("{kind}-{gone}.mpk"))));
            }
            for path in companions {
                let _ = std::fs::remove_file(path);
            }
        }
        self.actions(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrier_waits_for_every_record_of_the_saved_rounds() {
        let barrier = Arc::new(CheckpointBarrier::default());
        barrier.wait_for_rounds(0); // nothing saved yet: returns at once
        let writer = {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                for _ in 0..2 * RECORDS_PER_ROUND {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    drop(Finished(Some(&barrier)));
                }
            })
        };
        barrier.wait_for_rounds(2);
        assert_eq!(barrier.finished(), 2 * RECORDS_PER_ROUND, "returned before the second round was finished");
        writer.join().unwrap();
    }

    #[test]
    fn pruning_keeps_n_complete_rounds_while_the_next_is_written() {
        use burn::train::checkpoint::CheckpointingAction;
        let deleted = |keep: usize, epoch: usize| {
            KeepCompleteRounds { keep, run_dir: None }.actions(epoch).into_iter().find_map(|a| match a {
                CheckpointingAction::Delete(e) => Some(e),
                CheckpointingAction::Save => None,
            })
        };
        // keep 1: while round 5 is written, round 4 stays complete; round 3 goes.
        assert_eq!(deleted(1, 5), Some(3));
        assert_eq!(deleted(1, 2), None);
        assert_eq!(deleted(2, 5), Some(2));
    }

    #[test]
    fn a_damaged_record_or_cursor_makes_resume_fall_back() {
        use memsinks_core::files::{checksum_path, write_atomic_checked};
        let run = tempfile::tempdir().unwrap();
        let dir = RunDir::new(run.path()).checkpoints();
        let cursor = |round| RunDir::new(run.path()).cursor(round);
        std::fs::create_dir_all(&dir).unwrap();
        #[derive(serde::Serialize)]
        struct Fake {
            metadata: &'static str,
            item: String,
        }
        for round in [1, 2, 3] {
            for kind in RECORD_KINDS {
                let bytes = rmp_serde::to_vec_named(&Fake { metadata: "m", item: format!("{kind} {round}") }).unwrap();
                write_atomic_checked(&dir.join(format!("{kind}-{round}.mpk")), &bytes).unwrap();
            }
            write_atomic_checked(&cursor(round), br#"{"epoch":0,"position":3,"offset":0}"#).unwrap();
        }
        assert_eq!(latest_complete_checkpoint(run.path()), Some(3));
        // A record that matches its checksum but does not decode (emptied, digest rewritten).
        let scheduler = dir.join("scheduler-3.mpk");
        std::fs::write(&scheduler, b"").unwrap();
        write_checksum(&scheduler, &memsinks_core::files::sha256_hex(b"")).unwrap();
        assert_eq!(latest_complete_checkpoint(run.path()), Some(2));
        // A record that no longer matches its checksum.
        std::fs::write(dir.join("optim-2.mpk"), "optim 2 but damaged").unwrap();
        assert_eq!(latest_complete_checkpoint(run.path()), Some(1));
        // An edited cursor (same length, other position), then one without its checksum.
        std::fs::write(cursor(1), br#"{"epoch":0,"position":0,"offset":0}"#).unwrap();
        assert_eq!(latest_complete_checkpoint(run.path()), None);
        write_atomic_checked(&cursor(1), br#"{"epoch":0,"position":3,"offset":0}"#).unwrap();
        assert_eq!(latest_complete_checkpoint(run.path()), Some(1));
        std::fs::remove_file(checksum_path(&cursor(1))).unwrap();
        assert_eq!(latest_complete_checkpoint(run.path()), None);
        // Stale files: pruned rounds' cursors and checksums, a dead writer's temporary record.
        for round in [1, 3] {
            std::fs::remove_file(dir.join(format!("model-{round}.mpk"))).unwrap();
        }
        std::fs::write(dir.join(".model-4.mpk.tmp-123.mpk"), "partial").unwrap();
        remove_stale_checkpoint_files(run.path());
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "cursor-2.json",
                "cursor-2.json.sha256",
                "model-2.mpk",
                "model-2.mpk.sha256",
                "optim-1.mpk",
                "optim-2.mpk",
                "optim-2.mpk.sha256",
                "optim-3.mpk",
                "scheduler-1.mpk",
                "scheduler-2.mpk",
                "scheduler-2.mpk.sha256",
                "scheduler-3.mpk",
            ]
        );
    }

    #[test]
    fn a_failed_or_panicking_record_still_counts() {
        let barrier = CheckpointBarrier::default();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _finished = Finished(Some(&barrier));
            panic!("conversion failed");
        }));
        assert!(caught.is_err());
        assert_eq!(barrier.finished(), 1);
    }
}
