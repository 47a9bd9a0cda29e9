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
    BurnRecord, FileRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder, RecorderError,
};
use burn::tensor::backend::Backend;
use serde::Serialize;

use crate::loader::cursor_file;

/// Records burn-train writes for every round: model, optimizer, scheduler.
pub const RECORDS_PER_ROUND: usize = 3;

/// Counts the checkpoint records that are finished, so the training thread can wait for them.
#[derive(Debug, Default)]
pub struct CheckpointBarrier {
    finished: Mutex<usize>,
    changed: Condvar,
}

impl CheckpointBarrier {
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
        Recorder::<B>::save_item(self, BurnRecord::<_, B>::new::<Self>(item), file)
    }

    fn save_item<I: Serialize>(&self, item: I, mut file: PathBuf) -> Result<(), RecorderError> {
        file.set_extension(<Self as FileRecorder<B>>::file_extension());
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // The inner recorder sets the extension itself: keep `.mpk` last on the temporary name.
        let tmp = file.with_file_name(format!(".{name}.{}.tmp.mpk", std::process::id()));
        Recorder::<B>::save_item(&self.inner, item, tmp.clone())?;
        let sync = std::fs::File::open(&tmp).and_then(|f| f.sync_all());
        sync.and_then(|_| std::fs::rename(&tmp, &file)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            RecorderError::Unknown(format!("{}: {e}", file.display()))
        })
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

/// The newest round whose model, optimizer, scheduler and cursor files all exist.
pub fn latest_complete_checkpoint(run_dir: &Path) -> Option<usize> {
    let dir = run_dir.join("checkpoint");
    let mut rounds: Vec<usize> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("model-")?.strip_suffix(".mpk")?.parse().ok()
        })
        .collect();
    rounds.sort_unstable();
    rounds.into_iter().rev().find(|r| {
        ["model", "optim", "scheduler"].iter().all(|k| dir.join(format!("{k}-{r}.mpk")).exists())
            && cursor_file(run_dir, *r).exists()
    })
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
