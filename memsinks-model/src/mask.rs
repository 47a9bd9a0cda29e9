//! Sequence-tied sink masks: which sink neurons a sequence ID owns.
//!
//! Two schemes exist. [`MaskScheme::Reference`] is bit-exact with the MemSinks reference
//! implementation (a multiplicative hash evaluated in wrapping `i64` arithmetic, as PyTorch's
//! `int64` tensors compute it). It has known quirks, kept for compatibility and documented on
//! the variant. [`MaskScheme::Mixed`] is an opt-in, well-mixed 64-bit hash without them.
//!
//! A mask depends only on (scheme, sequence ID, sink index, pool size, `p_mem`) and, for the
//! salted mixed scheme, the layer: it is identical on every repetition of a document, which is
//! what lets memorization accumulate in the same neurons.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use memsinks_core::hash::splitmix64;
use serde::{Deserialize, Serialize};

/// Multiplier of the reference hash.
pub const REFERENCE_A: i64 = 1_588_635_695;
/// Modulus of the reference hash (the largest prime below 2^32).
pub const REFERENCE_M: i64 = 4_294_967_291;
/// Base the sequence ID is scaled by in the reference hash.
pub const REFERENCE_BASE: i64 = 65_536;

/// How a sequence ID selects its subset of the sink pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum MaskScheme {
    /// The reference scheme, bit-exact with the paper's code. For sink index `j` and ID `s`:
    /// `pow_j = (A^j wrapping) rem M`, `m_j = ((s * BASE) * pow_j wrapping) rem M`, and the neuron
    /// is active iff `m_j as f32 / M as f32 < p_mem`.
    ///
    /// Known quirks: ID 0 activates every sink; sink 0 is active for every ID below
    /// `p_mem * M / BASE` (19,660 at `p_mem = 0.3`); IDs `k` and `2k` overlap about 0.15 rather than
    /// `p_mem^2 = 0.09`; bits of the ID above 48 are discarded by the `* BASE` (so `2^62 + 7` gets
    /// ID 7's mask).
    #[default]
    Reference,
    /// A well-mixed 64-bit hash (SplitMix64 finaliser over ID and neuron index) with none of the
    /// reference quirks. With `per_layer_salt`, each layer draws an independent subset.
    Mixed {
        /// Give every layer its own, independent subset for the same ID.
        per_layer_salt: bool,
    },
}

impl MaskScheme {
    /// Whether masks differ between layers (so they must be built per layer).
    pub fn is_layer_dependent(&self) -> bool {
        matches!(self, MaskScheme::Mixed { per_layer_salt: true })
    }

    /// Every scheme by CLI spelling.
    pub const ALL: [MaskScheme; 3] = [
        MaskScheme::Reference,
        MaskScheme::Mixed { per_layer_salt: false },
        MaskScheme::Mixed { per_layer_salt: true },
    ];

    /// The CLI spelling.
    pub fn name(&self) -> &'static str {
        match self {
            MaskScheme::Reference => "reference",
            MaskScheme::Mixed { per_layer_salt: false } => "mixed",
            MaskScheme::Mixed { per_layer_salt: true } => "mixed-salted",
        }
    }

    /// Parses the CLI spelling: `reference`, `mixed`, `mixed-salted`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "reference" => Some(MaskScheme::Reference),
            "mixed" => Some(MaskScheme::Mixed { per_layer_salt: false }),
            "mixed-salted" => Some(MaskScheme::Mixed { per_layer_salt: true }),
            _ => None,
        }
    }
}

#[cfg(feature = "clap")]
impl clap::ValueEnum for MaskScheme {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// `pow_j = rem_euclid(wrapping_pow(A, j), M)` for `j` in `0..n`, computed by repeated wrapping
/// multiplication (wrapping multiplication is associative modulo 2^64, so this equals
/// `wrapping_pow` for every `j`).
pub fn reference_powers(n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    let mut acc: i64 = 1;
    for _ in 0..n {
        out.push(acc.rem_euclid(REFERENCE_M));
        acc = acc.wrapping_mul(REFERENCE_A);
    }
    out
}

/// The fixed parameters of a sink pool: everything but the sequence ID and the layer.
#[derive(Clone, Debug)]
pub struct SinkPool {
    scheme: MaskScheme,
    num_sink: usize,
    /// Kept in f32: the reference scheme compares `m_j / M` with `p_mem` in single precision, and
    /// bit-exact masks need the same rounding.
    p_mem: f32,
    powers: Arc<Vec<i64>>,
}

impl SinkPool {
    /// A pool of `num_sink` neurons where each is active with probability about `p_mem`.
    pub fn new(scheme: MaskScheme, num_sink: usize, p_mem: f64) -> Self {
        let powers = match scheme {
            MaskScheme::Reference => reference_powers(num_sink),
            MaskScheme::Mixed { .. } => Vec::new(),
        };
        Self { scheme, num_sink, p_mem: p_mem as f32, powers: Arc::new(powers) }
    }

    /// Number of neurons in the pool.
    pub fn len(&self) -> usize {
        self.num_sink
    }

    /// Whether the pool has no neurons (a standard model).
    pub fn is_empty(&self) -> bool {
        self.num_sink == 0
    }

    /// The scheme this pool hashes with.
    pub fn scheme(&self) -> MaskScheme {
        self.scheme
    }

    /// Active flags of every sink neuron for `seq_id` in `layer` (the layer matters only for the
    /// salted mixed scheme).
    pub fn mask(&self, seq_id: i64, layer: usize) -> Vec<bool> {
        match self.scheme {
            MaskScheme::Reference => {
                let scaled = seq_id.wrapping_mul(REFERENCE_BASE);
                let m = REFERENCE_M as f32;
                self.powers
                    .iter()
                    .map(|&p| (scaled.wrapping_mul(p).rem_euclid(REFERENCE_M) as f32) / m < self.p_mem)
                    .collect()
            }
            MaskScheme::Mixed { per_layer_salt } => {
                let salt = if per_layer_salt { splitmix64(layer as u64 ^ 0x5A17) } else { 0 };
                let id_hash = splitmix64(seq_id as u64 ^ salt);
                (0..self.num_sink)
                    .map(|j| {
                        let h = splitmix64(id_hash ^ (j as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
                        // 24 high bits give an exactly representable f32 in [0, 1).
                        ((h >> 40) as f32) / ((1u64 << 24) as f32) < self.p_mem
                    })
                    .collect()
            }
        }
    }

    /// The mask as `0`/`1` characters, neuron `j` at position `j`.
    pub fn mask_string(&self, seq_id: i64, layer: usize) -> String {
        self.mask(seq_id, layer).iter().map(|&b| if b { '1' } else { '0' }).collect()
    }

    /// Cached mask for the hot path: built once per (pool, ID, layer) and shared afterwards.
    pub fn mask_cached(&self, seq_id: i64, layer: usize) -> Arc<Vec<bool>> {
        let layer = if self.scheme.is_layer_dependent() { layer } else { 0 };
        let key =
            CacheKey { scheme: self.scheme, num_sink: self.num_sink, p_mem_bits: self.p_mem.to_bits(), seq_id, layer };
        let cache = MASK_CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(hit) = cache.lock().expect("mask cache poisoned").get(&key) {
            return hit.clone();
        }
        let mask = Arc::new(self.mask(seq_id, layer));
        let mut guard = cache.lock().expect("mask cache poisoned");
        // Bounded: corpora with millions of unique documents must not grow memory without end.
        if guard.len() >= MASK_CACHE_CAPACITY {
            guard.clear();
        }
        guard.insert(key, mask.clone());
        mask
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    scheme: MaskScheme,
    num_sink: usize,
    p_mem_bits: u32,
    seq_id: i64,
    layer: usize,
}

/// Entries kept before the cache is emptied; repeated documents come back into it at once.
const MASK_CACHE_CAPACITY: usize = 65_536;

type MaskCache = Mutex<HashMap<CacheKey, Arc<Vec<bool>>>>;
static MASK_CACHE: OnceLock<MaskCache> = OnceLock::new();

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(num: usize) -> SinkPool {
        SinkPool::new(MaskScheme::Reference, num, 0.3)
    }

    #[test]
    fn reference_test_vectors() {
        let pool = reference(32);
        let cases: [(i64, &str); 7] = [
            (1, "10000000010001010110100001100011"),
            (7, "10000000010101110010110001001011"),
            (42, "10101110000010010000100100001010"),
            (12345, "10000101110100100010100101000010"),
            (32768, "00000000011000001000000100101100"),
            ((1i64 << 40) + 12345, "10010100000001001010010100001000"),
            (0, "11111111111111111111111111111111"),
        ];
        for (id, expected) in cases {
            assert_eq!(pool.mask_string(id, 0), expected, "ID {id}");
        }
    }

    #[test]
    fn reference_active_counts_at_paper_pool_size() {
        let pool = reference(2458);
        let counts: Vec<usize> = (1..=5).map(|id| pool.mask(id, 0).iter().filter(|&&b| b).count()).collect();
        assert_eq!(counts, vec![739, 739, 731, 747, 724]);
    }

    #[test]
    fn reference_quirks_are_as_documented() {
        let pool = reference(512);
        // High bits above 48 are discarded.
        assert_eq!(pool.mask((1i64 << 62) + 7, 0), pool.mask(7, 0));
        // Sink 0 is on for small IDs.
        assert!((1..19_660).step_by(97).all(|id| pool.mask(id, 0)[0]));
    }

    #[test]
    fn density_is_near_p_mem_for_both_schemes() {
        for scheme in [MaskScheme::Reference, MaskScheme::Mixed { per_layer_salt: false }] {
            let pool = SinkPool::new(scheme, 1000, 0.3);
            let mut on = 0usize;
            for id in 1..=200i64 {
                on += pool.mask(id * 7919 + 3, 0).iter().filter(|&&b| b).count();
            }
            let density = on as f64 / (200.0 * 1000.0);
            assert!((density - 0.3).abs() < 0.01, "{scheme:?}: density {density}");
        }
    }

    #[test]
    fn mixed_scheme_fixes_overlap_and_salting_separates_layers() {
        let overlap = |pool: &SinkPool, a: i64, b: i64, la: usize, lb: usize| {
            let (ma, mb) = (pool.mask(a, la), pool.mask(b, lb));
            ma.iter().zip(&mb).filter(|(x, y)| **x && **y).count() as f64 / ma.len() as f64
        };
        let mixed = SinkPool::new(MaskScheme::Mixed { per_layer_salt: false }, 4000, 0.3);
        let mean = |f: &dyn Fn(i64) -> f64| (1..=50).map(f).sum::<f64>() / 50.0;
        let mixed_k2k = mean(&|k| overlap(&mixed, k, 2 * k, 0, 0));
        assert!((mixed_k2k - 0.09).abs() < 0.015, "mixed k/2k overlap {mixed_k2k}");
        let reference_k2k = mean(&|k| overlap(&reference(4000), k, 2 * k, 0, 0));
        assert!(reference_k2k > 0.12, "reference k/2k overlap {reference_k2k}");
        assert!(mixed.mask(0, 0).iter().filter(|&&b| b).count() < 4000);
        let salted = SinkPool::new(MaskScheme::Mixed { per_layer_salt: true }, 4000, 0.3);
        assert_ne!(salted.mask(5, 0), salted.mask(5, 1));
        assert_eq!(mixed.mask(5, 0), mixed.mask(5, 1));
    }

    #[test]
    fn cached_mask_equals_fresh_mask() {
        let pool = reference(300);
        for id in [1i64, 99, 12345] {
            assert_eq!(*pool.mask_cached(id, 3), pool.mask(id, 3));
            assert_eq!(*pool.mask_cached(id, 3), pool.mask(id, 3));
        }
    }
}
