//! Who owns a run directory when `train` starts: what it may write into (never a user's directory,
//! another run or a finished one), undoing a fresh claim that failed before training, and the
//! corpus a run trains on (`corpus.json`), reopened on resume.

use std::path::{Path, PathBuf};

use memsinks_core::files::{is_empty_dir, write_atomic, DirLock};
use memsinks_data::{prepare, CorpusFingerprint, PreparedCorpus, Verify};
use memsinks_model::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{latest_complete_checkpoint, remove_stale_checkpoint_files};
use crate::config::ExperimentConfig;
use crate::run::load_run_config;
use crate::run_dir::RunDir;
use crate::{RunDirProblem, TrainError};

/// The corpus of a run, as recorded in `corpus.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunCorpus {
    /// The prepared corpus directory: relative to the run directory when it lies inside it (the
    /// default `RUN/data`, so a moved or copied run reads its own corpus), else absolute.
    pub dir: PathBuf,
    /// Its fingerprint when training started.
    pub fingerprint: CorpusFingerprint,
}

impl RunCorpus {
    /// Reads `corpus.json` of a run, `None` when the run has not recorded one.
    pub(crate) fn load(run_dir: &Path) -> Result<Option<Self>, TrainError> {
        let path = RunDir::new(run_dir).corpus_record();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut record: Self =
                    serde_json::from_str(&text).map_err(|e| TrainError::corrupt(&path, format!("corrupt: {e}")))?;
                if record.dir.is_relative() {
                    record.dir = run_dir.join(&record.dir);
                }
                Ok(Some(record))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TrainError::io(&path, e)),
        }
    }

    /// Opens the recorded corpus and checks it is unchanged, as thoroughly as `verify` says.
    pub(crate) fn open(&self, run_dir: &Path, verify: Verify) -> Result<PreparedCorpus, TrainError> {
        if !self.dir.is_dir() {
            return Err(TrainError::run_dir(run_dir, RunDirProblem::CorpusMissing { corpus: self.dir.clone() }));
        }
        let corpus = PreparedCorpus::open(&self.dir)?;
        self.fingerprint.check(&corpus, &format!("the run in {}", run_dir.display()), verify)?;
        Ok(corpus)
    }
}

/// How `train` may use its run directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// New (missing or empty): the run starts here.
    Fresh,
    /// This run's own directory (same config), unfinished.
    Own,
}

/// Refuses every run directory `train` must not write into: a user's non-empty directory, another
/// run, a finished run, an unfinished run without `--resume`, and `--resume` of a non-run.
fn check_run_dir(cfg: &ExperimentConfig, run_dir: &Path, resume: bool) -> Result<Claim, TrainError> {
    let refuse = |problem| Err(TrainError::run_dir(run_dir, problem));
    if is_empty_dir(run_dir)? {
        return if resume { refuse(RunDirProblem::NoRunToResume) } else { Ok(Claim::Fresh) };
    }
    let Ok(recorded) = load_run_config(run_dir) else {
        return refuse(RunDirProblem::NotARun);
    };
    if recorded.run_id() != cfg.run_id() {
        return refuse(RunDirProblem::OtherRun { found: recorded.run_id(), expected: cfg.run_id() });
    }
    if RunDir::new(run_dir).summary().exists() {
        return refuse(RunDirProblem::Finished);
    }
    if !resume && latest_complete_checkpoint(run_dir).is_some() {
        return refuse(RunDirProblem::Unfinished);
    }
    Ok(Claim::Own)
}

/// Removes what `train` wrote into a run directory it found missing or empty before training
/// started (its config, corpus record, the default corpus inside it, its lock file), and the
/// directory itself when it did not exist.
fn undo_fresh_run_dir(run_dir: &Path, existed: bool, default_data: bool, lock: DirLock) {
    let files = RunDir::new(run_dir);
    for file in [files.config(), files.corpus_record()] {
        let _ = std::fs::remove_file(file);
    }
    if default_data {
        let _ = std::fs::remove_dir_all(files.default_data());
    }
    drop(lock);
    let _ = std::fs::remove_file(run_dir.join(memsinks_core::files::LOCK_FILE));
    if !existed {
        let _ = std::fs::remove_dir(run_dir);
    }
}

/// The corpus of a run: when resuming from a checkpoint, the one recorded in `corpus.json`,
/// checked against its fingerprint (never rebuilt: the source may have changed since); otherwise
/// prepared (or reused) in `data_dir` (default `RUN_DIR/data`) and recorded.
fn open_run_corpus(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    data_dir: Option<&Path>,
    from_checkpoint: bool,
) -> Result<PreparedCorpus, TrainError> {
    let default_dir = RunDir::new(run_dir).default_data();
    let wanted = data_dir.unwrap_or(&default_dir);
    if from_checkpoint {
        if let Some(recorded) = RunCorpus::load(run_dir)? {
            let wanted = std::path::absolute(wanted).unwrap_or(wanted.to_path_buf());
            let recorded_dir = std::path::absolute(&recorded.dir).unwrap_or(recorded.dir.clone());
            if data_dir.is_some() && wanted != recorded_dir {
                let problem = RunDirProblem::CorpusElsewhere { recorded: recorded.dir.clone(), given: wanted };
                return Err(TrainError::run_dir(run_dir, problem));
            }
            return recorded.open(run_dir, Verify::Full);
        }
    }
    let corpus = prepare(&cfg.data, wanted, std::io::IsTerminal::is_terminal(&std::io::stderr()))?;
    let dir = std::path::absolute(&corpus.dir).map_err(|e| TrainError::io(&corpus.dir, e))?;
    let run_abs = std::path::absolute(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    let recorded_dir = dir.strip_prefix(&run_abs).map_or_else(|_| dir.clone(), Path::to_path_buf);
    let record = RunCorpus { fingerprint: corpus.fingerprint()?, dir: recorded_dir };
    write_atomic(&RunDir::new(run_dir).corpus_record(), &serde_json::to_vec_pretty(&record).expect("serialises"))?;
    Ok(PreparedCorpus { dir, ..corpus })
}

/// Claims `run_dir` for `cfg` (refusing what `check_run_dir` refuses, under the directory's
/// lock), finds the checkpoint to resume from, writes the config of a fresh run and opens its
/// corpus. A fresh directory is put back as it was found when this fails.
pub(crate) fn set_up_run_dir(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    data_dir: Option<&Path>,
    resume: bool,
) -> Result<(DirLock, Option<usize>, PreparedCorpus, ModelConfig), TrainError> {
    let existed = run_dir.exists();
    // Checked before the lock so that a refused directory (a user's own, another run's) never
    // gets a lock file written into it.
    let claim = check_run_dir(cfg, run_dir, resume)?;
    let lock = DirLock::acquire(run_dir, if resume { "train --resume" } else { "train" })?;
    // Checked again under the lock: another writer may have claimed it in between.
    check_run_dir(cfg, run_dir, resume)?;
    remove_stale_checkpoint_files(run_dir);
    let resume_round = if resume { latest_complete_checkpoint(run_dir) } else { None };
    if resume && resume_round.is_none() {
        tracing::warn!("{} has no complete checkpoint: training from step 0", run_dir.display());
    }
    let setup = || -> Result<(PreparedCorpus, ModelConfig), TrainError> {
        if claim == Claim::Fresh {
            write_atomic(&RunDir::new(run_dir).config(), cfg.to_ron().as_bytes())?;
        }
        let corpus = open_run_corpus(cfg, run_dir, data_dir, resume_round.is_some())?;
        let model_cfg = cfg.model_config(corpus.tokenizer.vocab_size())?;
        corpus.tokenizer.check_model_vocab(model_cfg.vocab_size)?;
        Ok((corpus, model_cfg))
    };
    match setup() {
        Ok((corpus, model_cfg)) => Ok((lock, resume_round, corpus, model_cfg)),
        Err(e) => {
            // Nothing was trained: a new run directory goes back to how it was found, so that
            // fixing the input and rerunning is never refused because of this attempt.
            if claim == Claim::Fresh {
                undo_fresh_run_dir(run_dir, existed, data_dir.is_none(), lock);
            }
            Err(e)
        }
    }
}
