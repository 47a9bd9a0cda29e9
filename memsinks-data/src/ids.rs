//! Sequence IDs: the hash that names a document (of its tokens) or a source (of its key) for the
//! sink masks. Never 0 (0 marks padding and "no ID"); identical inputs give identical IDs on every
//! run and machine, so a document's sinks are the same on every repetition and after a restart.

use crate::rng::mix64;

/// A deterministic 63-bit sequence ID of a token sequence: never 0, identical for identical
/// sequences.
pub fn sequence_id(tokens: &[u32]) -> i64 {
    hashed_id(tokens.iter().flat_map(|t| t.to_le_bytes()))
}

/// The sequence ID of a source key: its UTF-8 bytes hashed as [`sequence_id`] hashes a
/// sequence's (never 0).
pub fn source_id(key: &str) -> i64 {
    hashed_id(key.bytes())
}

/// FNV-1a over `bytes`, then a bijective mix so nearby inputs spread out; 63 bits, never 0.
fn hashed_id(bytes: impl Iterator<Item = u8>) -> i64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    let id = (mix64(h) >> 1) as i64;
    if id == 0 {
        1
    } else {
        id
    }
}
