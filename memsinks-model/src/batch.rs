//! The batch every training and evaluation step consumes.

use crate::SeqLayout;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// A causal-LM batch: `inputs[b, t]` predicts `targets[b, t]`; `loss_mask` is 1 where the target
/// counts (0 on padding); `layout` carries each token's sequence ID and document boundaries.
#[derive(Clone, Debug)]
pub struct LmBatch<B: Backend> {
    /// Input token IDs `[batch, seq]`.
    pub inputs: Tensor<B, 2, Int>,
    /// Next-token targets `[batch, seq]`.
    pub targets: Tensor<B, 2, Int>,
    /// 1.0 where the target counts, 0.0 on padding `[batch, seq]`.
    pub loss_mask: Tensor<B, 2>,
    /// Sequence IDs and document boundaries of the inputs.
    pub layout: SeqLayout,
}

impl<B: Backend> LmBatch<B> {
    /// Builds a batch from host rows of `seq + 1` tokens (inputs are the first `seq`, targets the
    /// last `seq`), with a per-target loss weight.
    ///
    /// # Panics
    /// If the rows, weights and layout disagree in shape.
    pub fn from_rows(rows: &[Vec<u32>], weights: &[Vec<f32>], layout: SeqLayout, device: &B::Device) -> Self {
        let batch = rows.len();
        let seq = layout.seq_len;
        assert_eq!(layout.batch, batch, "layout rows");
        let mut inputs = Vec::with_capacity(batch * seq);
        let mut targets = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        for (row, w) in rows.iter().zip(weights) {
            assert_eq!(row.len(), seq + 1, "each row holds seq + 1 tokens");
            assert_eq!(w.len(), seq, "one loss weight per target");
            inputs.extend(row[..seq].iter().map(|&t| t as i64));
            targets.extend(row[1..].iter().map(|&t| t as i64));
            mask.extend_from_slice(w);
        }
        Self {
            inputs: Tensor::from_data(TensorData::new(inputs, [batch, seq]), device),
            targets: Tensor::from_data(TensorData::new(targets, [batch, seq]), device),
            loss_mask: Tensor::from_data(TensorData::new(mask, [batch, seq]), device),
            layout,
        }
    }
}
