//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
//! counter-based generator of Random123 / cuRAND. A draw is a pure function of (key, counter), so a
//! sample's augmentation parameters depend only on (seed, epoch, sample index, level) — never on
//! the thread that computes them or on the batch it lands in — and a CUDA kernel can reproduce them.
//!
//! Counter layout used by this crate (one Philox block = 4 u32 words):
//! `[block, a, b, stream]` where `stream` names the purpose (augmentation level, mixup, synthetic
//! data, long-tail shuffle) and `(a, b)` its coordinates (e.g. sample index and epoch); `block`
//! counts the blocks consumed by that stream. Key = the 64-bit seed split into two words.

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Stream tags (the last counter word). Levels use 1..=3 (see `augment::Level::stream_tag`).
pub const STREAM_EVAL: u32 = 0;
pub const STREAM_MIXUP: u32 = 0x1000;
pub const STREAM_SYNTHETIC: u32 = 0x2000;
pub const STREAM_LT_SHUFFLE: u32 = 0x3000;

#[inline]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let product = a as u64 * b as u64;
    ((product >> 32) as u32, product as u32)
}

/// One Philox4x32-10 block: 10 rounds, key bumped between rounds.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut ctr = counter;
    let mut key = key;
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(PHILOX_W0);
            key[1] = key[1].wrapping_add(PHILOX_W1);
        }
        let (hi0, lo0) = mulhilo(PHILOX_M0, ctr[0]);
        let (hi1, lo1) = mulhilo(PHILOX_M1, ctr[2]);
        ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0];
    }
    ctr
}

/// A sequential view of one Philox stream: words are taken in order from blocks
/// `[0, a, b, stream]`, `[1, a, b, stream]`, ... Draw `k` is word `k % 4` of block `k / 4`.
#[derive(Clone, Debug)]
pub struct PhiloxStream {
    key: [u32; 2],
    a: u32,
    b: u32,
    stream: u32,
    block: u32,
    words: [u32; 4],
    used: usize,
}

impl PhiloxStream {
    pub fn new(seed: u64, stream: u32, a: u32, b: u32) -> Self {
        Self {
            key: [seed as u32, (seed >> 32) as u32],
            a,
            b,
            stream,
            block: 0,
            words: [0; 4],
            used: 4,
        }
    }

    /// The next raw 32-bit word.
    pub fn next_u32(&mut self) -> u32 {
        if self.used == 4 {
            self.words = philox4x32_10([self.block, self.a, self.b, self.stream], self.key);
            self.block = self.block.wrapping_add(1);
            self.used = 0;
        }
        let word = self.words[self.used];
        self.used += 1;
        word
    }

    /// Uniform in [0, 1) with 24 bits: `(x >> 8) * 2^-24` (exact in f32).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }

    /// Uniform in [lo, hi).
    pub fn uniform_range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Integer in `0..n` by the multiply-shift map `(x * n) >> 32` (no rejection, so the number of
    /// draws is fixed; the bias is below n / 2^32). `n == 0` returns 0.
    pub fn below(&mut self, n: u32) -> u32 {
        ((self.next_u32() as u64 * n as u64) >> 32) as u32
    }

    /// Fisher–Yates shuffle (from the back, as numpy does), one draw per position.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u32 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Lets `rand_distr` distributions (Beta for mixup) draw from a Philox stream.
impl rand::RngCore for PhiloxStream {
    fn next_u32(&mut self) -> u32 {
        PhiloxStream::next_u32(self)
    }
    fn next_u64(&mut self) -> u64 {
        let lo = PhiloxStream::next_u32(self) as u64;
        let hi = PhiloxStream::next_u32(self) as u64;
        (hi << 32) | lo
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(4) {
            let word = PhiloxStream::next_u32(self).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}
