//! Autoregressive generation from a [`MemSinkLm`], next to the model as nanoGPT keeps its
//! `generate`: greedy or sampled (temperature, top-k), with the MLPs in any mode.

use burn::tensor::{Int, Tensor, TensorData};

use crate::{MemSinkLm, MlpMode, SeqLayout};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// A draw from `softmax(logits / temperature)` restricted to the `top_k` most likely tokens
    /// (0: all).
    Temperature {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Tokens sampled among (0: all).
        top_k: usize,
    },
}

/// How much to generate and how.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Generation {
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Tokens to generate at most.
    pub max_new: usize,
    /// A token that ends generation (not returned), e.g. end-of-text.
    pub stop: Option<u32>,
    /// The model sees at most this many of the most recent tokens (its context length).
    pub context: usize,
}

/// Continues `prompt` as `how` says; every position uses sequence ID `seq_id` for the sink
/// modes. `uniform` draws from `[0, 1)` (sampling only). Returns the new tokens.
pub fn generate<B: crate::Kernels>(
    model: &MemSinkLm<B>,
    prompt: &[u32],
    seq_id: i64,
    mode: &MlpMode,
    how: &Generation,
    uniform: &mut impl FnMut() -> f64,
    device: &B::Device,
) -> Vec<u32> {
    let mut tokens = prompt.to_vec();
    for _ in 0..how.max_new {
        let window = &tokens[tokens.len().saturating_sub(how.context.max(1))..];
        let ids: Vec<i64> = window.iter().map(|&t| t as i64).collect();
        let len = ids.len();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), device);
        let logits = model.forward(input, &SeqLayout::per_row(&[seq_id], len), mode);
        let last: Vec<f32> = logits.narrow(1, len - 1, 1).into_data().convert::<f32>().to_vec().expect("f32 logits");
        let next = match how.sampling {
            Sampling::Greedy => argmax(&last),
            Sampling::Temperature { temperature, top_k } => sample(&last, temperature, top_k, uniform()),
        };
        if Some(next) == how.stop {
            break;
        }
        tokens.push(next);
    }
    tokens.split_off(prompt.len())
}

/// The index of the largest logit.
pub fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

/// The token that `u` (uniform in `[0, 1)`) selects from `softmax(logits / temperature)`
/// restricted to the `top_k` largest logits (0: all).
pub fn sample(logits: &[f32], temperature: f64, top_k: usize, u: f64) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let t = temperature.max(1e-6);
    let top = logits[order[0]] as f64;
    let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - top) / t).exp()).collect();
    let mut u = u * weights.iter().sum::<f64>();
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    order[order.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed sequence of uniform draws (a small LCG: no dependency on the data crate's RNG).
    fn draws(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn sampling_respects_top_k_and_temperature() {
        let logits = [0.0f32, 5.0, 4.0, -3.0];
        assert_eq!(argmax(&logits), 1);
        let mut u = draws(1);
        for _ in 0..200 {
            assert!(matches!(sample(&logits, 1.0, 2, u()), 1 | 2), "outside the top 2");
        }
        // A near-zero temperature is greedy.
        assert!((0..50).all(|_| sample(&logits, 1e-4, 0, u()) == 1));
        // Temperature 1 follows the softmax: token 2 has probability 1/(1+e) ≈ 0.27 within the top 2.
        let twos = (0..4000).filter(|_| sample(&logits, 1.0, 2, u()) == 2).count() as f64 / 4000.0;
        assert!((twos - 0.269).abs() < 0.03, "{twos}");
    }
}
