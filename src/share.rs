//! The share generator `G` of mode `two-server` (SCHEME.md §11).
//!
//! Cloud A's share `X'_A = G(seed)` is expanded from a 32-byte seed, so that it can travel as
//! 32 bytes: `rand_chacha::ChaCha12Rng::from_seed(seed)`, each `next_u32()` cut to its low 31
//! bits, the value `2^31 - 1` rejected, the tensor filled in NCHW order. Both sides must expand
//! bit-identically.
//!
//! [`expand_into`] produces exactly that sequence, fast: the ChaCha blocks come from
//! `rand_chacha`'s vectorised core (AVX2 / NEON picked at run time), filled in parallel chunks at
//! fixed positions of the key stream; the rare rejected word (probability 2^-31 per element) is
//! then removed by compacting the tail and drawing more words after the last one used.
//! [`expand_reference`] is the word-by-word definition that tests compare it against.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;
use rayon::prelude::*;
use zeroize::Zeroize;

use crate::field::{P, slices};
use crate::keys::KeyRng;

/// Words per parallel chunk (256 KiB of key stream).
const CHUNK: usize = 1 << 16;

/// The secret 32-byte seed of cloud A's share. It is zeroized on drop and never printed.
pub struct ShareSeed([u8; 32]);

impl ShareSeed {
    /// Draws a fresh seed from the client's CSPRNG.
    pub fn generate(rng: &mut KeyRng) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self(seed)
    }

    /// A seed with the given bytes (for a cloud that received it, and for tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes that travel to cloud A.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `G(seed)`: `len` field elements.
    pub fn expand(&self, len: usize) -> Vec<u32> {
        let mut out = vec![0u32; len];
        expand_into(&self.0, &mut out);
        out
    }
}

impl std::fmt::Debug for ShareSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShareSeed(<secret>)")
    }
}

impl Drop for ShareSeed {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Fills `out` with `G(seed)` (SCHEME.md §11), bit-identical to [`expand_reference`].
pub fn expand_into(seed: &[u8; 32], out: &mut [u32]) {
    expand_masked(seed, out, P);
}

/// `G(seed)` word by word, exactly as SCHEME.md §11 words it: the specification.
pub fn expand_reference(seed: &[u8; 32], len: usize) -> Vec<u32> {
    reference_masked(seed, len, P)
}

/// Both generators for any all-ones `mask` (the words are cut to `mask` and the value `mask` is
/// rejected), so that tests can make rejections frequent; `G` is `mask = P`.
fn expand_masked(seed: &[u8; 32], out: &mut [u32], mask: u32) {
    // Raw words of the key stream at their fixed positions, cut to 31 bits, in parallel.
    let rejected = out
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(i, chunk)| fill_masked(&mut stream_at(seed, i * CHUNK), chunk, mask))
        .reduce(|| false, |a, b| a | b);
    if !rejected {
        return;
    }
    // Drop every rejected word (in order) and draw the missing elements after the last word.
    let mut kept = 0;
    for read in 0..out.len() {
        if out[read] != mask {
            out[kept] = out[read];
            kept += 1;
        }
    }
    let mut rng = ChaCha12Rng::from_seed(*seed);
    rng.set_word_pos(out.len() as u128);
    while kept < out.len() {
        let v = rng.next_u32() & mask;
        if v != mask {
            out[kept] = v;
            kept += 1;
        }
    }
}

/// The key stream of `G(seed)` positioned at word `word`: the source of element `word` as long
/// as no earlier word was rejected.
pub(crate) fn stream_at(seed: &[u8; 32], word: usize) -> ChaCha12Rng {
    let mut rng = ChaCha12Rng::from_seed(*seed);
    rng.set_word_pos(word as u128);
    rng
}

/// Fills `out` with the next words of `rng` cut to `mask`; true when one of them is `mask`
/// itself, a word the generator rejects (the block then needs the exact, sequential path).
pub(crate) fn fill_masked(rng: &mut ChaCha12Rng, out: &mut [u32], mask: u32) -> bool {
    rng.fill(out);
    // `mask` is the largest value a word can take: the maximum finds it.
    !out.is_empty() && slices::mask_max(out, mask) == mask
}

pub(crate) fn reference_masked(seed: &[u8; 32], len: usize, mask: u32) -> Vec<u32> {
    let mut rng = ChaCha12Rng::from_seed(*seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let v = rng.next_u32() & mask;
        if v != mask {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_generator_equals_the_word_by_word_definition() {
        for (seed_byte, len) in [(0u8, 0), (1, 1), (2, 15), (3, 1000), (4, CHUNK + 7), (5, 3 * CHUNK)] {
            let seed = [seed_byte; 32];
            assert_eq!(ShareSeed::from_bytes(seed).expand(len), expand_reference(&seed, len), "seed byte {seed_byte}");
        }
    }

    #[test]
    fn rejected_words_are_dropped_in_order_across_chunks() {
        // With 4-bit words and 15 rejected, one word in 16 is dropped: the compaction path runs
        // in every chunk and must still equal the sequential definition.
        for len in [1, 100, CHUNK - 1, 2 * CHUNK + 3] {
            let seed = [9u8; 32];
            let mut fast = vec![0u32; len];
            expand_masked(&seed, &mut fast, 0xF);
            assert_eq!(fast, reference_masked(&seed, len, 0xF), "len {len}");
            assert!(fast.iter().all(|&v| v < 0xF));
        }
    }
}
