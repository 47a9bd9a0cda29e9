//! Near-duplicates of the validation set: word n-grams shared between a training document and
//! the held-out documents. Exact duplicates are removed by text hash while reading; a story
//! rewritten in one word would pass that check and leak held-out text into training.

use std::collections::HashSet;

use crate::data_config::NearDuplicates;
use crate::prepare::text_hash;
use crate::source::Document;

/// Word n-grams of the validation documents: a training document sharing at least `threshold`
/// of its own n-grams with them is a near-duplicate.
pub(crate) struct NearDuplicateFilter {
    n: usize,
    threshold: f64,
    grams: HashSet<u64>,
}

impl NearDuplicateFilter {
    /// The filter of `cfg` over the validation documents.
    pub(crate) fn new(cfg: &NearDuplicates, validation: &[Document]) -> Self {
        let grams = validation.iter().flat_map(|d| word_ngrams(&d.text, cfg.n)).collect();
        Self { n: cfg.n, threshold: cfg.threshold, grams }
    }

    /// Whether `text` shares at least the threshold's share of its n-grams with the validation set.
    pub(crate) fn hits(&self, text: &str) -> bool {
        let grams = word_ngrams(text, self.n);
        if grams.is_empty() {
            return false;
        }
        let shared = grams.iter().filter(|g| self.grams.contains(g)).count();
        shared as f64 >= self.threshold * grams.len() as f64
    }
}

/// Hashes of the lower-cased word n-grams of `text` (none when it has fewer than `n` words).
fn word_ngrams(text: &str, n: usize) -> Vec<u64> {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    words.windows(n).map(|w| text_hash(&w.join(" "))).collect()
}
