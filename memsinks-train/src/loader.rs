//! burn `DataLoader`s over the corpus. Training is cut into rounds of `eval_every` optimizer
//! steps: burn-train runs one "epoch" per round, evaluates and checkpoints after it. The data
//! cursor at the end of round `r` is written to `cursor-r.json`, so resuming from checkpoint `r`
//! continues with exactly the batches an uninterrupted run would have seen.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::tensor::backend::Backend;
use memsinks_core::files::write_atomic_checked;
use memsinks_data::{Batcher, Cursor, HostBatch, Split};

use crate::learner::EvalBatch;
use crate::run_dir::RunDir;
use crate::run_state::RunState;

#[derive(Debug)]
struct RoundState {
    /// Cursor at the start of the next round.
    cursor: Cursor,
    /// Rounds completed.
    round: usize,
}

/// The training loader: `micro_per_round` batches per burn-train epoch, `total_micro` in all,
/// cycling the schedule as often as needed. A loader sliced for several devices yields every
/// `shards`-th batch starting at `shard`.
pub struct TrainLoader<B: Backend> {
    batcher: Batcher,
    state: Arc<Mutex<RoundState>>,
    micro_per_round: u64,
    total_micro: u64,
    run_dir: PathBuf,
    shard: usize,
    shards: usize,
    device: B::Device,
}

impl<B: Backend> TrainLoader<B> {
    /// A loader starting after `round` completed rounds at `cursor`.
    pub fn new(
        batcher: Batcher,
        cursor: Cursor,
        round: usize,
        micro_per_round: u64,
        total_micro: u64,
        run_dir: PathBuf,
        device: B::Device,
    ) -> Self {
        Self {
            batcher,
            state: Arc::new(Mutex::new(RoundState { cursor, round })),
            micro_per_round,
            total_micro,
            run_dir,
            shard: 0,
            shards: 1,
            device,
        }
    }

    fn with(&self, shard: usize, shards: usize, device: B::Device) -> Self {
        Self {
            batcher: self.batcher.clone(),
            state: self.state.clone(),
            micro_per_round: self.micro_per_round,
            total_micro: self.total_micro,
            run_dir: self.run_dir.clone(),
            shard,
            shards,
            device,
        }
    }
}

struct TrainIter<'a, B: Backend> {
    loader: &'a TrainLoader<B>,
    cursor: Cursor,
    round: usize,
    index: u64,
    count: u64,
}

impl<B: Backend> Iterator for TrainIter<'_, B> {
    type Item = memsinks_data::LmBatch<B>;

    fn next(&mut self) -> Option<Self::Item> {
        // An empty schedule would never yield a batch (config validation rules it out).
        if self.loader.batcher.schedule_len() == 0 {
            return None;
        }
        while self.index < self.count {
            let batch = loop {
                match self.loader.batcher.next_batch(&mut self.cursor) {
                    Some(b) => break b,
                    None => continue, // end of the schedule: the cursor moved to the next epoch
                }
            };
            let mine = self.index as usize % self.loader.shards == self.loader.shard;
            self.index += 1;
            if mine {
                return Some(batch.to_device(&self.loader.device));
            }
        }
        if self.loader.shard == 0 {
            let mut state = self.loader.state.lock().expect("poisoned");
            if state.round == self.round {
                state.round += 1;
                state.cursor = self.cursor;
                let json = serde_json::to_vec(&self.cursor).expect("cursor serialises");
                if let Err(e) = write_atomic_checked(&RunDir::new(&self.loader.run_dir).cursor(state.round), &json) {
                    tracing::error!("cannot save the data cursor: {e}");
                }
            }
        }
        None
    }
}

impl<B: Backend> DataLoaderIterator<memsinks_data::LmBatch<B>> for TrainIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(self.index as usize, self.count as usize)
    }
}

impl<B: Backend> DataLoader<B, memsinks_data::LmBatch<B>> for TrainLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<memsinks_data::LmBatch<B>> + 'a> {
        let state = self.state.lock().expect("poisoned");
        let done = state.round as u64 * self.micro_per_round;
        let count = self.micro_per_round.min(self.total_micro.saturating_sub(done));
        Box::new(TrainIter { loader: self, cursor: state.cursor, round: state.round, index: 0, count })
    }

    fn num_items(&self) -> usize {
        self.micro_per_round as usize * self.batcher.batch_size()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, memsinks_data::LmBatch<B>>> {
        Arc::new(self.with(self.shard, self.shards, device.clone()))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, memsinks_data::LmBatch<B>>> {
        // burn splits `num_items` evenly across devices: recover this slice's index and count.
        let width = (end - start).max(1);
        let shards = (self.num_items() / width).max(1);
        Arc::new(self.with((start / width).min(shards - 1), shards, self.device.clone()))
    }
}

/// The evaluation loader: fixed batches of validation, repeated and canary documents. When a pass
/// ends it asks the run state to write the evaluation line.
pub struct EvalLoader<B: Backend> {
    batches: Arc<Vec<(HostBatch, Split, Vec<usize>)>>,
    log: Arc<RunState>,
    device: B::Device,
}

impl<B: Backend> EvalLoader<B> {
    /// A loader over host batches.
    pub fn new(batches: Vec<(HostBatch, Split, Vec<usize>)>, log: Arc<RunState>, device: B::Device) -> Self {
        Self { batches: Arc::new(batches), log, device }
    }
}

struct EvalIter<'a, B: Backend> {
    loader: &'a EvalLoader<B>,
    index: usize,
}

impl<B: Backend> Iterator for EvalIter<'_, B> {
    type Item = EvalBatch<B>;

    fn next(&mut self) -> Option<EvalBatch<B>> {
        match self.loader.batches.get(self.index) {
            Some((batch, split, docs)) => {
                self.index += 1;
                Some(EvalBatch { batch: batch.to_device(&self.loader.device), split: *split, docs: docs.clone() })
            }
            None => {
                if self.index == self.loader.batches.len() {
                    self.index += 1;
                    self.loader.log.flush_eval();
                }
                None
            }
        }
    }
}

impl<B: Backend> DataLoaderIterator<EvalBatch<B>> for EvalIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(self.index.min(self.loader.batches.len()), self.loader.batches.len())
    }
}

impl<B: Backend> DataLoader<B, EvalBatch<B>> for EvalLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<EvalBatch<B>> + 'a> {
        Box::new(EvalIter { loader: self, index: 0 })
    }

    fn num_items(&self) -> usize {
        self.batches.iter().map(|(b, _, _)| b.rows.len()).sum()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, EvalBatch<B>>> {
        Arc::new(Self { batches: self.batches.clone(), log: self.log.clone(), device: device.clone() })
    }

    /// Evaluation runs on the main device only (burn-train never slices the validation loader),
    /// so a slice is the whole loader.
    fn slice(&self, _start: usize, _end: usize) -> Arc<dyn DataLoader<B, EvalBatch<B>>> {
        self.to_device(&self.device)
    }
}
