//! Memorization metrics, one module for every method: per-set NLL and next-token accuracy,
//! greedy extraction (k-extractability, Carlini et al.) and verbatim length, membership-inference
//! AUC, loss gap and gap closure. Per-document results are kept so that specificity can be
//! measured.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use memsinks_data::DocIds;
use memsinks_data::{Batcher, Cursor, DocRows, TokenCache};
use memsinks_model::Kernels;
use memsinks_model::{MemSinkLm, MlpMode, SeqLayout};
use serde::{Deserialize, Serialize};

/// Teacher-forced results of one document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocScore {
    /// Document index in the corpus.
    pub doc: usize,
    /// Mean next-token NLL (nats).
    pub nll: f64,
    /// Share of targets predicted exactly by the arg-max.
    pub accuracy: f64,
    /// Targets scored.
    pub tokens: usize,
}

/// Teacher-forced results of a set of documents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetScore {
    /// Token-weighted mean NLL.
    pub nll: f64,
    /// Token-weighted next-token accuracy.
    pub accuracy: f64,
    /// Targets scored.
    pub tokens: usize,
    /// Per document.
    pub docs: Vec<DocScore>,
}

/// Scores documents one per row, each with its own sequence ID, with the MLPs in `mode`.
pub fn score_docs<B: Kernels>(
    model: &MemSinkLm<B>,
    rows: &DocRows<'_>,
    mode: &MlpMode,
    device: &B::Device,
) -> SetScore {
    let batcher = Batcher::over_documents(rows);
    let mut cursor = Cursor::default();
    let mut out = Vec::with_capacity(rows.docs.len());
    while let Some(host) = batcher.next_batch(&mut cursor) {
        let batch = host.to_device::<B>(device);
        let logits = model.forward(batch.inputs.clone(), &batch.layout, mode);
        let [b, t, v] = logits.dims();
        let logp = log_softmax(logits.reshape([b * t, v]), 1);
        let targets = batch.targets.clone().reshape([b * t, 1]);
        let nll: Vec<f32> =
            logp.clone().gather(1, targets.clone()).neg().into_data().convert::<f32>().to_vec().expect("f32");
        let argmax: Vec<i64> = logp.argmax(1).into_data().convert::<i64>().to_vec().expect("i64");
        let target: Vec<i64> = targets.into_data().convert::<i64>().to_vec().expect("i64");
        for (r, &(_, doc)) in host.started.iter().enumerate() {
            let (mut sum, mut hits, mut n) = (0.0f64, 0usize, 0usize);
            for i in r * t..(r + 1) * t {
                if host.weights[r][i - r * t] > 0.0 {
                    sum += nll[i] as f64;
                    hits += usize::from(argmax[i] == target[i]);
                    n += 1;
                }
            }
            out.push(DocScore {
                doc: doc as usize,
                nll: sum / n.max(1) as f64,
                accuracy: hits as f64 / n.max(1) as f64,
                tokens: n,
            });
        }
    }
    let tokens: usize = out.iter().map(|d| d.tokens).sum();
    let weighted =
        |f: fn(&DocScore) -> f64| out.iter().map(|d| f(d) * d.tokens as f64).sum::<f64>() / tokens.max(1) as f64;
    SetScore { nll: weighted(|d| d.nll), accuracy: weighted(|d| d.accuracy), tokens, docs: out }
}

/// Greedy extraction of one document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extraction {
    /// Document index.
    pub doc: usize,
    /// Share of the `m` continuation tokens the greedy decode reproduced (position by position).
    pub match_rate: f64,
    /// Whether all `m` were reproduced (k-extractable).
    pub extracted: bool,
    /// Longest exact prefix of the continuation.
    pub verbatim_len: usize,
}

/// Prompts each document with its first `k` tokens (`(k, m)`: prompt and continuation lengths) and greedy-decodes `m` more (documents
/// shorter than `k + m` tokens are skipped), all documents in one batch, each row with its own
/// sequence ID. Returns one result per document decoded.
pub fn greedy_extraction<B: Kernels>(
    model: &MemSinkLm<B>,
    cache: &TokenCache,
    ids: &DocIds,
    docs: &[usize],
    mode: &MlpMode,
    (k, m): (usize, usize),
    device: &B::Device,
) -> Vec<Extraction> {
    let rows: Vec<(usize, Vec<u32>)> =
        docs.iter().map(|&d| (d, cache.doc(d))).filter(|(_, t)| t.len() >= k + m && k > 0).collect();
    if rows.is_empty() || m == 0 {
        return Vec::new();
    }
    let ids: Vec<i64> = rows.iter().map(|(d, t)| ids.id(*d, t)).collect();
    let mut seqs: Vec<Vec<i64>> = rows.iter().map(|(_, t)| t[..k].iter().map(|&x| x as i64).collect()).collect();
    for _ in 0..m {
        let len = seqs[0].len();
        let flat: Vec<i64> = seqs.concat();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [seqs.len(), len]), device);
        let logits = model.forward(tokens, &SeqLayout::per_row(&ids, len), mode);
        let [b, _, v] = logits.dims();
        let last = logits.narrow(1, len - 1, 1).reshape([b, v]);
        let next: Vec<i64> = last.argmax(1).into_data().convert::<i64>().to_vec().expect("i64");
        for (s, n) in seqs.iter_mut().zip(next) {
            s.push(n);
        }
    }
    rows.iter()
        .zip(&seqs)
        .map(|((doc, truth), decoded)| {
            let pairs = || truth[k..k + m].iter().zip(&decoded[k..]).map(|(&a, &b)| a as i64 == b);
            let hits = pairs().filter(|&x| x).count();
            Extraction {
                doc: *doc,
                match_rate: hits as f64 / m as f64,
                extracted: hits == m,
                verbatim_len: pairs().take_while(|&x| x).count(),
            }
        })
        .collect()
}

/// Area under the ROC curve of `members` against `non_members`, where a higher score means
/// "member" (ties count half): the Mann-Whitney U statistic over all pairs.
pub fn auc(members: &[f64], non_members: &[f64]) -> f64 {
    if members.is_empty() || non_members.is_empty() {
        return f64::NAN;
    }
    let mut wins = 0.0;
    for &a in members {
        for &b in non_members {
            wins += if a > b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (members.len() * non_members.len()) as f64
}

/// Membership-inference AUC of the per-document loss: members (repeated documents) should have
/// lower loss than held-out documents, so the score is the negated loss.
pub fn loss_mia_auc(members: &SetScore, held_out: &SetScore) -> f64 {
    let score = |s: &SetScore| s.docs.iter().map(|d| -d.nll).collect::<Vec<_>>();
    auc(&score(members), &score(held_out))
}

/// The memorization gap: validation loss minus repeated-set loss.
pub fn gap(val_nll: f64, rep_nll: f64) -> f64 {
    val_nll - rep_nll
}

/// Gap closure of a treated model against a reference: `1 - gap_treated / gap_reference`.
pub fn gap_closure(gap_treated: f64, gap_reference: f64) -> f64 {
    1.0 - gap_treated / gap_reference
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_separable_and_identical_scores() {
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auc(&[1.0, 1.0], &[1.0]), 0.5);
        assert_eq!(auc(&[2.0, 0.0], &[1.0]), 0.5);
        assert!(auc(&[], &[1.0]).is_nan());
    }

    #[test]
    fn gap_and_closure() {
        assert_eq!(gap(3.0, 1.0), 2.0);
        assert_eq!(gap_closure(1.0, 2.0), 0.5);
        assert_eq!(gap_closure(2.0, 2.0), 0.0);
        assert_eq!(gap_closure(0.0, 2.0), 1.0);
    }
}
