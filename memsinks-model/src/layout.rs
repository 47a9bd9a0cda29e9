//! Host-side description of which document each token of a batch belongs to.

/// Per-token sequence IDs (and optional document boundaries) of a `[batch, seq_len]` batch.
///
/// The model reads it for two things: the sink mask of each token (by sequence ID) and
/// document-aware attention in packed rows (by segment).
#[derive(Clone, Debug, PartialEq)]
pub struct SeqLayout {
    /// Rows in the batch.
    pub batch: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Sequence ID of every token, row-major (`batch * seq_len`).
    pub seq_ids: Vec<i64>,
    /// Document index of every token within its row (non-decreasing along a row). Two copies of
    /// the same document packed side by side share an ID but not a segment, so attention uses
    /// segments, not IDs. `None` when every row holds a single document.
    pub segments: Option<Vec<u32>>,
    /// Gradient masking: tokens flagged here update only the sink pool of the MLPs.
    pub route_to_sinks: Option<Vec<bool>>,
}

impl SeqLayout {
    /// One document per row: `row_ids[b]` is the sequence ID of every token of row `b`.
    pub fn per_row(row_ids: &[i64], seq_len: usize) -> Self {
        let seq_ids = row_ids.iter().flat_map(|&id| std::iter::repeat_n(id, seq_len)).collect();
        Self { batch: row_ids.len(), seq_len, seq_ids, segments: None, route_to_sinks: None }
    }

    /// Packed rows: per-token sequence IDs and segments (document index within the row).
    ///
    /// # Panics
    /// If the vectors do not hold `batch * seq_len` entries.
    pub fn packed(batch: usize, seq_len: usize, seq_ids: Vec<i64>, segments: Vec<u32>) -> Self {
        assert_eq!(seq_ids.len(), batch * seq_len, "seq_ids must hold batch * seq_len entries");
        assert_eq!(segments.len(), batch * seq_len, "segments must hold batch * seq_len entries");
        Self { batch, seq_len, seq_ids, segments: Some(segments), route_to_sinks: None }
    }

    /// Adds per-token gradient-masking flags.
    pub fn with_route_to_sinks(mut self, flags: Vec<bool>) -> Self {
        assert_eq!(flags.len(), self.batch * self.seq_len, "one flag per token");
        self.route_to_sinks = Some(flags);
        self
    }

    /// Whether some row holds more than one document (attention must then be document-aware).
    pub fn is_packed(&self) -> bool {
        match &self.segments {
            None => false,
            Some(seg) => seg.chunks(self.seq_len).any(|row| row.iter().any(|&s| s != row[0])),
        }
    }

    /// The distinct sequence IDs in first-seen order, and each token's index into them.
    pub fn distinct_ids(&self) -> (Vec<i64>, Vec<usize>) {
        let mut distinct: Vec<i64> = Vec::new();
        let mut index = Vec::with_capacity(self.seq_ids.len());
        let mut last: Option<(i64, usize)> = None;
        for &id in &self.seq_ids {
            // Runs of one ID are the common case: skip the search for them.
            let slot = match last {
                Some((prev, slot)) if prev == id => slot,
                _ => match distinct.iter().position(|&d| d == id) {
                    Some(slot) => slot,
                    None => {
                        distinct.push(id);
                        distinct.len() - 1
                    }
                },
            };
            last = Some((id, slot));
            index.push(slot);
        }
        (distinct, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ids_index_tokens() {
        let l = SeqLayout::packed(2, 3, vec![5, 5, 9, 9, 5, 7], vec![0, 0, 1, 0, 1, 2]);
        let (d, i) = l.distinct_ids();
        assert_eq!(d, vec![5, 9, 7]);
        assert_eq!(i, vec![0, 0, 1, 1, 0, 2]);
        assert!(l.is_packed());
        assert!(!SeqLayout::per_row(&[1, 2], 4).is_packed());
        assert!(!SeqLayout::packed(1, 2, vec![3, 3], vec![0, 0]).is_packed());
    }
}
