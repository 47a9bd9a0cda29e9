//! What defines a prepared corpus: its sources, tokenizer, splits and layout ([`DataConfig`]),
//! read from the `data` section of an experiment file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::source::InvalidUtf8;
use crate::DataError;
use memsinks_core::overrides::omitted;

/// Where documents come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SourceConfig {
    /// The built-in story generator: the embedded default.
    Synthetic {
        /// Stories to generate.
        stories: usize,
        /// Generator seed.
        seed: u64,
        /// Authors, each with their own recurring hero, place, treasure and catch-phrase; every
        /// story gets one (field `author`, for [`SourceKey::Field`]). 0: no authors.
        #[serde(default, skip_serializing_if = "omitted")]
        authors: usize,
    },
    /// A TinyStories text file (`<|endoftext|>` separators).
    TinyStories {
        /// The file.
        path: PathBuf,
    },
    /// A JSON array or JSON Lines file (`.json`, `.jsonl`, `.jsonl.zst`) with a text field.
    Json {
        /// The file.
        path: PathBuf,
        /// The string field holding the text.
        field: String,
    },
    /// A SlimPajama-style directory of `.jsonl` / `.jsonl.zst` shards, streamed in name order.
    SlimPajama {
        /// The directory.
        dir: PathBuf,
        /// Keep only records whose `meta.redpajama_set_name` equals this.
        #[serde(default)]
        set_name: Option<String>,
    },
}

/// Where a document's source key (its author, website, book, licence holder) is read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceKey {
    /// A string field of each JSON record, as a dotted path (`author`, `meta.source`); the
    /// synthetic generator's stories have the field `author`.
    Field(String),
    /// The host name of the URL in a string field (`url`, `meta.url`): one source per website.
    UrlHost(String),
    /// The name of the file a document was read from (TinyStories text, JSON, SlimPajama shards).
    FileName,
}

impl SourceKey {
    /// How the key is written in messages.
    pub fn describe(&self) -> String {
        match self {
            SourceKey::Field(f) => format!("field `{f}`"),
            SourceKey::UrlHost(f) => format!("the URL host of field `{f}`"),
            SourceKey::FileName => "the file name".to_string(),
        }
    }
}

/// How each document's sequence ID (which selects its sink subset) is derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SequenceIds {
    /// A hash of the document's tokens (MemSinks): every document has its own sinks.
    #[default]
    PerDocument,
    /// A hash of the document's source key (`data.source_key`; NULLs): every document of a
    /// source shares one sink subset, so dropping it removes the source. Canaries keep IDs of
    /// their own tokens (they have no source).
    PerSource,
}

/// The tokenizer to use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum TokenizerConfig {
    /// Train a byte-level BPE on the training documents (repeated + unique).
    Train {
        /// Vocabulary size including `<|endoftext|>`.
        vocab_size: usize,
    },
    /// Load a Hugging Face `tokenizer.json`.
    File {
        /// The file.
        path: PathBuf,
    },
}

/// How repetitions are spread over the training run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Ordering {
    /// Every occurrence at a uniformly random position (seeded).
    #[default]
    Shuffled,
    /// The repetitions of each document evenly spaced over the run, at a random phase.
    Spaced,
}

/// A set of documents repeated a number of times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatConfig {
    /// Number of distinct documents.
    pub docs: usize,
    /// Times each is seen in training.
    pub repetitions: usize,
}

/// Random-token canaries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Number of distinct canaries.
    pub docs: usize,
    /// Times each is seen in training.
    pub repetitions: usize,
    /// Tokens per canary.
    pub length: usize,
    /// Canaries drawn the same way but never trained on: the unmemorized level that canary gap
    /// closure is measured against (`None`: as many as `docs`).
    #[serde(default)]
    pub held_out: Option<usize>,
}

impl CanaryConfig {
    /// Held-out canaries drawn.
    pub fn held_out_docs(&self) -> usize {
        if self.docs == 0 {
            return 0;
        }
        self.held_out.unwrap_or(self.docs)
    }
}

/// Word n-gram overlap above which a training document counts as a near-duplicate of the
/// validation set and is left out of training (real text; exact duplicates are always removed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearDuplicates {
    /// Words per n-gram.
    pub n: usize,
    /// Share of a training document's n-grams found in validation documents at or above which it
    /// is dropped.
    pub threshold: f64,
}

/// Everything that defines a prepared corpus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Where the unique (and, without `repeated_source`, all other) documents come from.
    pub source: SourceConfig,
    /// Where repeated and validation documents come from, when not `source` (SlimPajama with
    /// repeated TinyStories mixed in).
    #[serde(default)]
    pub repeated_source: Option<SourceConfig>,
    /// The tokenizer.
    pub tokenizer: TokenizerConfig,
    /// Repeated natural documents.
    pub repeated: RepeatConfig,
    /// Random-token canaries (`docs: 0` for none).
    pub canary: CanaryConfig,
    /// Unique documents seen once.
    pub unique: usize,
    /// Held-out validation documents.
    pub validation: usize,
    /// Training rows hold `context` input tokens.
    pub context: usize,
    /// How repetitions are spread.
    #[serde(default)]
    pub ordering: Ordering,
    /// Pack several documents per row (otherwise one document per row, padded).
    #[serde(default)]
    pub packing: bool,
    /// Seed of selection, canaries and order.
    #[serde(default)]
    pub seed: u64,
    /// Draw a fresh order of the schedule for every pass after the first (from `seed` and the
    /// pass); otherwise every pass replays the first. `Spaced` ordering keeps its spacing and is
    /// never reshuffled.
    #[serde(default = "yes")]
    pub reshuffle_each_pass: bool,
    /// Prepare fresh documents of the main source for the "dedup + fresh data" model
    /// (`train.method = DedupFresh`): as many real tokens as the repeated stories' removed
    /// repetitions held (canary repetitions are not replaced). The paper's dedup model never
    /// reads them: it cycles its shorter schedule.
    #[serde(default = "yes")]
    pub dedup_fill: bool,
    /// Near-duplicate filter between training and validation documents (`None`: exact
    /// duplicates only).
    #[serde(default)]
    pub near_duplicates: Option<NearDuplicates>,
    /// What to do with invalid UTF-8 in the sources.
    #[serde(default)]
    pub invalid_utf8: InvalidUtf8,
    /// Where each document's source key is read from (`None`: documents have no source). The
    /// manifest records every source with its ID and counts.
    #[serde(default, skip_serializing_if = "omitted")]
    pub source_key: Option<SourceKey>,
    /// Sources held out whole (never trained on; needs `source_key`): the validation documents
    /// are drawn from them, so the validation loss is that of sources the model never saw.
    /// Chosen at random (from `seed`) among the sources of the first documents read.
    #[serde(default, skip_serializing_if = "omitted")]
    pub held_out_sources: usize,
    /// How sequence IDs are derived. Documents, splits and schedules do not depend on it: two
    /// corpora that differ only here hold the same data.
    #[serde(default, skip_serializing_if = "omitted")]
    pub sequence_ids: SequenceIds,
    /// Draw every split at random from the first `draw_pool` distinct documents of the source
    /// (0: repeated and validation documents from the first `repeated.docs + validation`, unique
    /// ones in stream order after them). With a pool, the unique and fresh-fill documents are the
    /// pool's rest in a seeded order, so seeds redraw every split, not only the held-out ones;
    /// two seeds' validation sets then overlap by `validation / draw_pool` of their documents in
    /// expectation.
    #[serde(default, skip_serializing_if = "omitted")]
    pub draw_pool: usize,
}

fn yes() -> bool {
    true
}

impl DataConfig {
    /// The seed every pass after the first is reshuffled from (`None`: passes replay the
    /// schedule, as `Spaced` ordering always does).
    pub fn reshuffle_seed(&self) -> Option<u64> {
        (self.reshuffle_each_pass && self.ordering == Ordering::Shuffled).then_some(self.seed ^ 0x5EED_9A55)
    }

    /// Checks value ranges: a flat list of independent checks, one per rule, each naming its key
    /// (longer than most functions because there are that many rules).
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |m: String| Err(DataError::Invalid(m));
        if self.context < 2 {
            return bad(format!("data.context {} must be at least 2", self.context));
        }
        if self.repeated.docs > 0 && self.repeated.repetitions == 0 {
            return bad("data.repeated.repetitions must be positive".into());
        }
        if self.canary.docs > 0 && (self.canary.repetitions == 0 || self.canary.length < 2) {
            return bad("data.canary needs repetitions > 0 and length >= 2".into());
        }
        if self.canary.docs > 0 && self.canary.length > self.context {
            return bad(format!(
                "data.canary.length {} exceeds data.context {}: a canary would be cut; shorten it or widen the context",
                self.canary.length, self.context
            ));
        }
        if self.validation == 0 {
            return bad("data.validation must be at least 1: every loss gap and closure is measured against held-out \
                 validation documents"
                .into());
        }
        if self.draw_pool > 0 && self.draw_pool < self.repeated.docs + self.validation {
            return bad(format!(
                "data.draw_pool {} is smaller than repeated.docs + validation = {}: the pool must hold the held-out \
                 and repeated documents (0 turns the pool off)",
                self.draw_pool,
                self.repeated.docs + self.validation
            ));
        }
        if self.repeated.docs + self.unique + self.canary.docs == 0 {
            return bad("the corpus has no training documents: set repeated.docs, canary.docs or unique".into());
        }
        if let Some(nd) = &self.near_duplicates {
            if nd.n == 0 || !(nd.threshold > 0.0 && nd.threshold <= 1.0) {
                return bad(format!(
                    "data.near_duplicates needs n >= 1 and a threshold in (0, 1], got n {} and threshold {}",
                    nd.n, nd.threshold
                ));
            }
        }
        if let SourceConfig::Synthetic { stories: 0, .. } = self.source {
            return bad("data.source Synthetic needs stories > 0".into());
        }
        if self.source_key.is_none() && (self.held_out_sources > 0 || self.sequence_ids == SequenceIds::PerSource) {
            return bad("data.held_out_sources and data.sequence_ids = PerSource need data.source_key (where each document's source is read from)".into());
        }
        if let (Some(SourceKey::Field(field)), SourceConfig::Synthetic { authors, .. }) =
            (&self.source_key, &self.source)
        {
            if field != "author" || *authors == 0 {
                return bad(format!(
                    "data.source_key Field(\"{field}\"): synthetic stories have one field, `author`, and only with data.source.authors > 0"
                ));
            }
        }
        if matches!(self.source_key, Some(SourceKey::Field(_) | SourceKey::UrlHost(_)))
            && matches!(self.source, SourceConfig::TinyStories { .. })
        {
            return bad(
                "data.source_key: TinyStories text has no fields; use FileName (one source per file) or a JSON source"
                    .into(),
            );
        }
        Ok(())
    }

    /// SHA-256 of the configuration (its RON form): prepared data is keyed by it.
    pub fn hash(&self) -> String {
        let text = ron::to_string(self).expect("config serialises");
        format!("{:x}", Sha256::digest(text.as_bytes()))
    }
}
