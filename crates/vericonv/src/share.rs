//! The share generator `G` of mode `two-server` (docs/scheme.md §11).
//!
//! Cloud A's share `X'_A = G(seed)` is expanded from a 32-byte seed, so that it can travel as
//! 32 bytes: `rand_chacha::ChaCha12Rng::from_seed(seed)`, each `next_u32()` cut to its low 31
//! bits, the value `2^31 - 1` rejected, the tensor filled in NCHW order. Both sides must expand
//! bit-identically.
//!
//! [`expand_into`] produces exactly that sequence, fast: sixteen ChaCha12 blocks at a time, one
//! state word per vector (AVX-512, AVX2 or NEON, picked at run time), in parallel chunks at
//! fixed positions of the key stream; the rare rejected word (probability 2^-31 per element) is
//! then removed by compacting the tail and drawing more words after the last one used.
//! [`expand_reference`] is the word-by-word definition, on `rand_chacha` itself, that tests
//! compare it against.

use multiversion::multiversion;
use rand::{Rng, SeedableRng};
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

/// Fills `out` with `G(seed)` (docs/scheme.md §11), bit-identical to [`expand_reference`].
pub fn expand_into(seed: &[u8; 32], out: &mut [u32]) {
    expand_masked(seed, out, P);
}

/// `G(seed)` word by word, exactly as docs/scheme.md §11 words it: the specification.
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
pub(crate) fn stream_at(seed: &[u8; 32], word: usize) -> KeyStream {
    KeyStream::at(seed, word)
}

/// Fills `out` with the next words of `stream` cut to `mask`; true when one of them is `mask`
/// itself, a word the generator rejects (the block then needs the exact, sequential path).
pub(crate) fn fill_masked(stream: &mut KeyStream, out: &mut [u32], mask: u32) -> bool {
    stream.fill(out);
    // `mask` is the largest value a word can take: the maximum finds it.
    !out.is_empty() && slices::mask_max(out, mask) == mask
}

/// Blocks of the ChaCha12 key stream computed side by side by [`KeyStream`].
const LANES: usize = 16;
/// `"expand 32-byte k"`, ChaCha's constant words.
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// The ChaCha quarter round on state words `a, b, c, d`, lane by lane (one vector
/// instruction per step once vectorised).
macro_rules! quarter_round {
    ($a:ident, $b:ident, $c:ident, $d:ident) => {
        for l in 0..LANES {
            $a[l] = $a[l].wrapping_add($b[l]);
            $d[l] = ($d[l] ^ $a[l]).rotate_left(16);
            $c[l] = $c[l].wrapping_add($d[l]);
            $b[l] = ($b[l] ^ $c[l]).rotate_left(12);
            $a[l] = $a[l].wrapping_add($b[l]);
            $d[l] = ($d[l] ^ $a[l]).rotate_left(8);
            $c[l] = $c[l].wrapping_add($d[l]);
            $b[l] = ($b[l] ^ $c[l]).rotate_left(7);
        }
    };
}

/// `LANES` consecutive ChaCha12 blocks from block `counter` (64-bit counter in words 12–13,
/// stream 0, as `rand_chacha` lays them out), written block after block into `out`: with
/// AVX-512F the hand-written [`chacha12_blocks_avx512`], else the portable version.
fn chacha12_blocks(key: &[u32; 8], counter: u64, out: &mut [u32; 16 * LANES]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { chacha12_blocks_avx512(key, counter, out) };
    }
    chacha12_blocks_portable(key, counter, out);
}

/// [`chacha12_blocks`] in portable code: each state word is one array of lanes, held in its own
/// variable, so each step of a quarter round is one vector instruction over all lanes (8 blocks
/// at a time with AVX2).
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
fn chacha12_blocks_portable(key: &[u32; 8], counter: u64, out: &mut [u32; 16 * LANES]) {
    let lo: [u32; LANES] = std::array::from_fn(|l| counter.wrapping_add(l as u64) as u32);
    let hi: [u32; LANES] = std::array::from_fn(|l| (counter.wrapping_add(l as u64) >> 32) as u32);
    let (mut x0, mut x1, mut x2, mut x3) = ([SIGMA[0]; LANES], [SIGMA[1]; LANES], [SIGMA[2]; LANES], [SIGMA[3]; LANES]);
    let (mut x4, mut x5, mut x6, mut x7) = ([key[0]; LANES], [key[1]; LANES], [key[2]; LANES], [key[3]; LANES]);
    let (mut x8, mut x9, mut x10, mut x11) = ([key[4]; LANES], [key[5]; LANES], [key[6]; LANES], [key[7]; LANES]);
    let (mut x12, mut x13, mut x14, mut x15) = (lo, hi, [0u32; LANES], [0u32; LANES]);
    for _ in 0..6 {
        quarter_round!(x0, x4, x8, x12);
        quarter_round!(x1, x5, x9, x13);
        quarter_round!(x2, x6, x10, x14);
        quarter_round!(x3, x7, x11, x15);
        quarter_round!(x0, x5, x10, x15);
        quarter_round!(x1, x6, x11, x12);
        quarter_round!(x2, x7, x8, x13);
        quarter_round!(x3, x4, x9, x14);
    }
    let init: [u32; 16] = [
        SIGMA[0], SIGMA[1], SIGMA[2], SIGMA[3], key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7], 0, 0,
        0, 0,
    ];
    let words = [x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15];
    for (l, block) in out.chunks_exact_mut(16).enumerate() {
        for (w, o) in block.iter_mut().enumerate() {
            *o = words[w][l].wrapping_add(init[w]);
        }
        block[12] = block[12].wrapping_add(lo[l]);
        block[13] = block[13].wrapping_add(hi[l]);
    }
}

/// [`chacha12_blocks`] with AVX-512F: sixteen blocks, one state word per register, the
/// rotations single instructions (`vprold`), and the result transposed in registers from one
/// register per word to one per block (four rounds of shuffles) before it is stored.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chacha12_blocks_avx512(key: &[u32; 8], counter: u64, out: &mut [u32; 16 * LANES]) {
    use core::arch::x86_64::*;
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // The 64-bit counters of the sixteen blocks, split into words 12 (low) and 13 (high).
    let lo = _mm512_add_epi32(_mm512_set1_epi32(counter as u32 as i32), lanes);
    let carry = _mm512_cmplt_epu32_mask(lo, _mm512_set1_epi32(counter as u32 as i32));
    let hi = _mm512_mask_add_epi32(
        _mm512_set1_epi32((counter >> 32) as u32 as i32),
        carry,
        _mm512_set1_epi32((counter >> 32) as u32 as i32),
        _mm512_set1_epi32(1),
    );
    let splat = |w: u32| _mm512_set1_epi32(w as i32);
    let init = [
        splat(SIGMA[0]),
        splat(SIGMA[1]),
        splat(SIGMA[2]),
        splat(SIGMA[3]),
        splat(key[0]),
        splat(key[1]),
        splat(key[2]),
        splat(key[3]),
        splat(key[4]),
        splat(key[5]),
        splat(key[6]),
        splat(key[7]),
        lo,
        hi,
        _mm512_setzero_si512(),
        _mm512_setzero_si512(),
    ];
    let mut x = init;
    macro_rules! qr {
        ($a:expr, $b:expr, $c:expr, $d:expr) => {
            x[$a] = _mm512_add_epi32(x[$a], x[$b]);
            x[$d] = _mm512_rol_epi32::<16>(_mm512_xor_si512(x[$d], x[$a]));
            x[$c] = _mm512_add_epi32(x[$c], x[$d]);
            x[$b] = _mm512_rol_epi32::<12>(_mm512_xor_si512(x[$b], x[$c]));
            x[$a] = _mm512_add_epi32(x[$a], x[$b]);
            x[$d] = _mm512_rol_epi32::<8>(_mm512_xor_si512(x[$d], x[$a]));
            x[$c] = _mm512_add_epi32(x[$c], x[$d]);
            x[$b] = _mm512_rol_epi32::<7>(_mm512_xor_si512(x[$b], x[$c]));
        };
    }
    for _ in 0..6 {
        qr!(0, 4, 8, 12);
        qr!(1, 5, 9, 13);
        qr!(2, 6, 10, 14);
        qr!(3, 7, 11, 15);
        qr!(0, 5, 10, 15);
        qr!(1, 6, 11, 12);
        qr!(2, 7, 8, 13);
        qr!(3, 4, 9, 14);
    }
    for (w, v) in x.iter_mut().zip(init) {
        *w = _mm512_add_epi32(*w, v);
    }
    // Transpose: x[w] holds word w of blocks 0..16; block l must hold its words 0..16.
    let mut t = [_mm512_setzero_si512(); 16];
    for p in 0..8 {
        t[2 * p] = _mm512_unpacklo_epi32(x[2 * p], x[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_epi32(x[2 * p], x[2 * p + 1]);
    }
    // u[4q + j]: words 4q..4q+4 of blocks j, j+4, j+8, j+12 (one per 128-bit lane).
    let mut u = [_mm512_setzero_si512(); 16];
    for q in 0..4 {
        let (a0, a1, b0, b1) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
        u[4 * q] = _mm512_unpacklo_epi64(a0, b0);
        u[4 * q + 1] = _mm512_unpackhi_epi64(a0, b0);
        u[4 * q + 2] = _mm512_unpacklo_epi64(a1, b1);
        u[4 * q + 3] = _mm512_unpackhi_epi64(a1, b1);
    }
    for j in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[j], u[4 + j]);
        let v1 = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[j], u[4 + j]);
        let w0 = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[8 + j], u[12 + j]);
        let w1 = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[8 + j], u[12 + j]);
        let blocks = [
            (j, _mm512_shuffle_i32x4::<0b10_00_10_00>(v0, w0)),
            (j + 8, _mm512_shuffle_i32x4::<0b11_01_11_01>(v0, w0)),
            (j + 4, _mm512_shuffle_i32x4::<0b10_00_10_00>(v1, w1)),
            (j + 12, _mm512_shuffle_i32x4::<0b11_01_11_01>(v1, w1)),
        ];
        for (l, b) in blocks {
            // SAFETY: block l is out[16·l..16·l + 16], inside the 256 words of `out`.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(16 * l).cast(), b) };
        }
    }
}

/// The words of `ChaCha12Rng::from_seed(seed)` from any position, `LANES` blocks at a time:
/// bit-identical to `rand_chacha` (tested), several times faster where AVX-512 is available.
pub(crate) struct KeyStream {
    key: [u32; 8],
    next_block: u64,
    buf: [u32; 16 * LANES],
    pos: usize,
}

impl KeyStream {
    /// The stream of `seed` positioned at word `word`.
    pub(crate) fn at(seed: &[u8; 32], word: usize) -> Self {
        let key = std::array::from_fn(|i| {
            u32::from_le_bytes([seed[4 * i], seed[4 * i + 1], seed[4 * i + 2], seed[4 * i + 3]])
        });
        let mut s = Self { key, next_block: (word / 16) as u64, buf: [0; 16 * LANES], pos: 16 * LANES };
        if !word.is_multiple_of(16) {
            s.refill();
            s.pos = word % 16;
        }
        s
    }

    fn refill(&mut self) {
        chacha12_blocks(&self.key, self.next_block, &mut self.buf);
        self.next_block = self.next_block.wrapping_add(LANES as u64);
        self.pos = 0;
    }

    /// Fills `out` with the next words.
    pub(crate) fn fill(&mut self, out: &mut [u32]) {
        let mut done = 0;
        while done < out.len() {
            if self.pos == self.buf.len() {
                // Whole groups of blocks go straight to `out`.
                while let Some(group) = out[done..].first_chunk_mut::<{ 16 * LANES }>() {
                    chacha12_blocks(&self.key, self.next_block, group);
                    self.next_block = self.next_block.wrapping_add(LANES as u64);
                    done += 16 * LANES;
                }
                if done == out.len() {
                    break;
                }
                self.refill();
            }
            let n = (self.buf.len() - self.pos).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
        }
    }
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
    fn the_vectorised_key_stream_equals_rand_chacha_from_any_word() {
        let seed: [u8; 32] = std::array::from_fn(|i| (i * 7 + 3) as u8);
        for (start, len) in [(0, 1), (0, 300), (5, 17), (16, 256), (255, 513), (1000, 4097), (123_456, 70)] {
            let mut rng = ChaCha12Rng::from_seed(seed);
            rng.set_word_pos(start as u128);
            let expected: Vec<u32> = (0..len).map(|_| rng.next_u32()).collect();
            let mut got = vec![0u32; len];
            let mut stream = KeyStream::at(&seed, start);
            // In two pieces, so that a fill resumes mid-buffer.
            let (a, b) = got.split_at_mut(len / 3);
            stream.fill(a);
            stream.fill(b);
            assert_eq!(got, expected, "from word {start}, {len} words");
        }
    }

    #[test]
    fn the_avx512_blocks_equal_the_portable_ones_across_counter_carries() {
        let key: [u32; 8] = std::array::from_fn(|i| 0x9e37_79b9u32.wrapping_mul(i as u32 + 1));
        for counter in [0, 1, 16, 0xFFFF_FFF8, 0x1_FFFF_FFFF, u64::MAX - 7] {
            let (mut fast, mut slow) = ([0u32; 16 * LANES], [0u32; 16 * LANES]);
            chacha12_blocks(&key, counter, &mut fast);
            chacha12_blocks_portable(&key, counter, &mut slow);
            assert_eq!(fast, slow, "counter {counter:#x}");
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
