//! The two matrix products a convolution is made of, blocked in registers and compiled once per
//! instruction set (AVX-512, AVX2 + FMA, portable), the widest the CPU has chosen at run time:
//! - [`gemm_nn`]: `C [m, n] (+)= A [m, k] · B [k, n]`, with `A` packed in panels of `mr` rows
//!   ([`PackedA`], made once per op from the weights) and `B`, `C` row-major with `n` contiguous
//!   (the forward's column matrix, the backward's `dy`). The micro-tile is `mr` rows x `NR` columns of
//!   accumulators held in vector registers for the whole `k` loop.
//! - [`gemm_nt`]: `C [m, n] += Σ_s A_s [m, k] · B_s [n, k]ᵀ` over segments `s`, both operands with
//!   `k` contiguous (the weight gradient: `dy_s · col_sᵀ` over a few samples). Each output is a
//!   vector of partial dot products summed over every segment before one fixed-order horizontal sum.
//!
//! Every result is a fixed sequence of operations for a given shape and instruction set, so it does not
//! depend on the thread count (the convolution splits work over samples above these kernels).

use std::sync::OnceLock;

/// The instruction set the kernels run with, detected once per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The widest instruction set this CPU supports.
    pub(super) fn detected() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                    return Isa::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
    }

    /// Every instruction set this CPU can run (the detected one and the narrower ones), for tests.
    #[cfg(test)]
    pub(super) fn supported() -> Vec<Isa> {
        match Isa::detected() {
            Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2, Isa::Portable],
            Isa::Avx2 => vec![Isa::Avx2, Isa::Portable],
            Isa::Portable => vec![Isa::Portable],
        }
    }

    /// Rows of a packed `A` panel: the height of the [`gemm_nn`] micro-tile.
    fn mr(self) -> usize {
        match self {
            Isa::Avx512 => NN_MR_AVX512,
            Isa::Avx2 | Isa::Portable => NN_MR_NARROW,
        }
    }
}

/// `A [m, k]` packed for [`gemm_nn`]: panel `i` holds rows `i * mr .. i * mr + mr` column by column,
/// `panel[p * mr + r] = A[i * mr + r, p]`, zero past row `m`.
pub(super) struct PackedA {
    data: Vec<f32>, // [ceil(m / mr), k, mr]
    m: usize,
    k: usize,
    mr: usize,
}

impl PackedA {
    /// Packs `A[r, p] = at(r, p)`.
    pub(super) fn new(isa: Isa, m: usize, k: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        let mr = isa.mr();
        let panels = m.div_ceil(mr);
        let mut data = vec![0.0f32; panels * k * mr];
        for (i, panel) in data.chunks_exact_mut((k * mr).max(1)).enumerate() {
            for (p, column) in panel.chunks_exact_mut(mr).enumerate() {
                for (r, v) in column.iter_mut().enumerate() {
                    let row = i * mr + r;
                    if row < m {
                        *v = at(row, p);
                    }
                }
            }
        }
        Self { data, m, k, mr }
    }
}

/// Vector operations of one instruction set, for the kernel bodies written once below. Every method
/// is `unsafe`: the caller guarantees the CPU has the instruction set and the pointers are valid for
/// `LANES` floats.
trait Simd {
    const LANES: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// The sum of the lanes, in a fixed order.
    unsafe fn sum(v: Self::V) -> f32;
    /// Scalar `a * b + c`, fused where the vector one is.
    unsafe fn fma_scalar(a: f32, b: f32, c: f32) -> f32;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    pub(super) struct Avx512;
    pub(super) struct Avx2;

    impl Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn sum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline]
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn fma_scalar(a: f32, b: f32, c: f32) -> f32 {
            a.mul_add(b, c)
        }
    }

    impl Simd for Avx2 {
        const LANES: usize = 8;
        type V = __m256;
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn sum(v: __m256) -> f32 {
            // Halves folded onto each other: 8 -> 4 -> 2 -> 1.
            let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fma_scalar(a: f32, b: f32, c: f32) -> f32 {
            a.mul_add(b, c)
        }
    }
}

/// One lane, unfused: any CPU.
struct Portable;

impl Simd for Portable {
    const LANES: usize = 1;
    type V = f32;
    unsafe fn zero() -> f32 {
        0.0
    }
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    unsafe fn load(p: *const f32) -> f32 {
        *p
    }
    unsafe fn store(p: *mut f32, v: f32) {
        *p = v
    }
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    unsafe fn sum(v: f32) -> f32 {
        v
    }
    unsafe fn fma_scalar(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `B` of [`gemm_nn`]: the data and where each row starts.
type B<'a> = (&'a [f32], &'a [usize]);
/// `(m, n, k)` of [`gemm_nt`] and its segments `(A_s, B_s)`.
type Mnk = (usize, usize, usize);
type Segments<'a> = &'a [(&'a [f32], &'a [f32])];

/// [`gemm_nn`] micro-tiles: `MR` rows x `NV` vectors of accumulators: 8 x 2 AVX-512 registers, 4 x 2
/// AVX2 ones, leaving registers for the `B` row and the broadcast `A` value; portable: 4 x 8 scalars.
const NN_MR_AVX512: usize = 8;
const NN_MR_NARROW: usize = 4;
const NN_NV: usize = 2;
const NN_NV_PORTABLE: usize = 8;

/// `C [m, n] (+)= A · B [k, n]`, `B` row `p` being `b[b_rows[p]..][..n]` (a row-major matrix, or the
/// shifted windows of an image that an implicit convolution reads), `C` row-major; `accumulate` adds to
/// `C`.
pub(super) fn gemm_nn(
    isa: Isa,
    a: &PackedA,
    (b, b_rows): (&[f32], &[usize]),
    n: usize,
    c: &mut [f32],
    accumulate: bool,
) {
    // Internal invariants (the convolution derives every length from one geometry); the bodies
    // below address nothing else.
    assert_eq!(b_rows.len(), a.k, "gemm_nn: b rows");
    assert!(
        b_rows.iter().all(|&r| r + n <= b.len()),
        "gemm_nn: b rows past b"
    );
    assert_eq!(c.len(), a.m * n, "gemm_nn: c length");
    assert_eq!(
        a.mr,
        isa.mr(),
        "gemm_nn: A packed for another instruction set"
    );
    if a.k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    // SAFETY: the lengths are checked above; `Isa::detected` (or the tests' `Isa::supported`) found
    // the instruction set.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => nn_avx512(a, (b, b_rows), n, c, accumulate),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => nn_avx2(a, (b, b_rows), n, c, accumulate),
            _ => {
                nn_body::<Portable, NN_MR_NARROW, NN_NV_PORTABLE>(a, (b, b_rows), n, c, accumulate)
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn nn_avx512(a: &PackedA, b: B<'_>, n: usize, c: &mut [f32], accumulate: bool) {
    nn_body::<x86::Avx512, NN_MR_AVX512, NN_NV>(a, b, n, c, accumulate)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nn_avx2(a: &PackedA, b: B<'_>, n: usize, c: &mut [f32], accumulate: bool) {
    nn_body::<x86::Avx2, NN_MR_NARROW, NN_NV>(a, b, n, c, accumulate)
}

/// The [`gemm_nn`] loops. Safety: as [`gemm_nn`] checks (`k > 0`).
#[inline(always)]
unsafe fn nn_body<S: Simd, const MR: usize, const NV: usize>(
    a: &PackedA,
    (b, b_rows): B<'_>,
    n: usize,
    c: &mut [f32],
    accumulate: bool,
) {
    let (m, k) = (a.m, a.k);
    let nr = NV * S::LANES;
    // The last columns, when `n` is not a multiple of `nr`, come from a zero-padded copy.
    // Both made only when a tile is cut (no allocation for the whole tiles of a convolution).
    let mut padded: Vec<f32> = Vec::new(); // [k, nr]
    let mut padded_rows: Vec<usize> = Vec::new();
    let mut edge: Vec<f32> = Vec::new(); // [MR, nr]: a tile cut by the edge of C
    for j0 in (0..n).step_by(nr) {
        let cols = nr.min(n - j0);
        let (panel_b, rows_b, first) = if cols == nr {
            (b.as_ptr(), b_rows, j0)
        } else {
            padded.clear();
            padded.resize(k * nr, 0.0);
            if padded_rows.is_empty() {
                padded_rows = (0..k).map(|p| p * nr).collect();
            }
            for (row, &start) in padded.chunks_exact_mut(nr).zip(b_rows) {
                row[..cols].copy_from_slice(&b[start + j0..start + j0 + cols]);
            }
            (padded.as_ptr(), &padded_rows[..], 0)
        };
        for (i, panel_a) in a.data.chunks_exact(k * MR).enumerate() {
            let mut acc = [[S::zero(); NV]; MR];
            let mut ap = panel_a.as_ptr();
            for &row in rows_b {
                let bp = panel_b.add(row + first);
                let bv: [S::V; NV] = std::array::from_fn(|v| S::load(bp.add(v * S::LANES)));
                for acc_row in acc.iter_mut() {
                    let av = S::splat(*ap);
                    ap = ap.add(1);
                    for v in 0..NV {
                        acc_row[v] = S::fma(av, bv[v], acc_row[v]);
                    }
                }
            }
            let rows = MR.min(m - i * MR);
            let whole = rows == MR && cols == nr;
            // A whole tile is stored in place; a cut one through `edge`, then its valid part.
            let (tile, ldt) = if whole {
                (c.as_mut_ptr().add(i * MR * n + j0), n)
            } else {
                edge.resize(MR * nr, 0.0);
                (edge.as_mut_ptr(), nr)
            };
            for (r, acc_row) in acc.iter().enumerate() {
                for (v, &value) in acc_row.iter().enumerate() {
                    let at = tile.add(r * ldt + v * S::LANES);
                    let value = if accumulate && whole {
                        S::add(S::load(at), value)
                    } else {
                        value
                    };
                    S::store(at, value);
                }
            }
            if !whole {
                for r in 0..rows {
                    let c_row = &mut c[(i * MR + r) * n + j0..][..cols];
                    let e_row = &edge[r * nr..r * nr + cols];
                    if accumulate {
                        c_row.iter_mut().zip(e_row).for_each(|(o, v)| *o += v);
                    } else {
                        c_row.copy_from_slice(e_row);
                    }
                }
            }
        }
    }
}

/// [`gemm_nt`] micro-tiles: `MR x NR` outputs, each a vector of partial sums: 4 x 4 AVX-512 registers,
/// 2 x 4 AVX2 ones, 4 x 4 portable scalars.
const NT_AVX512: (usize, usize) = (4, 4);
const NT_AVX2: (usize, usize) = (2, 4);
const NT_PORTABLE: (usize, usize) = (4, 4);

/// `C [m, n] += Σ_s A_s [m, k] · B_s [n, k]ᵀ` over the `segments` `(A_s, B_s)`, `A_s` row-major and
/// row `j` of `B_s` being `B_s[b_rows[j]..][..k]` (as in [`gemm_nn`]).
pub(super) fn gemm_nt(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    segments: &[(&[f32], &[f32])],
    b_rows: &[usize],
    c: &mut [f32],
) {
    // Internal invariants; the bodies below address nothing else.
    assert_eq!(b_rows.len(), n, "gemm_nt: b rows");
    for (a, b) in segments {
        assert_eq!(a.len(), m * k, "gemm_nt: a length");
        assert!(
            b_rows.iter().all(|&r| r + k <= b.len()),
            "gemm_nt: b rows past b"
        );
    }
    assert_eq!(c.len(), m * n, "gemm_nt: c length");
    // SAFETY: the lengths are checked above; `Isa::detected` (or the tests' `Isa::supported`) found
    // the instruction set.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => nt_avx512((m, n, k), segments, b_rows, c),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => nt_avx2((m, n, k), segments, b_rows, c),
            _ => nt_body::<Portable, { NT_PORTABLE.0 }, { NT_PORTABLE.1 }>(
                (m, n, k),
                segments,
                b_rows,
                c,
            ),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn nt_avx512(mnk: Mnk, segments: Segments<'_>, b_rows: &[usize], c: &mut [f32]) {
    nt_body::<x86::Avx512, { NT_AVX512.0 }, { NT_AVX512.1 }>(mnk, segments, b_rows, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nt_avx2(mnk: Mnk, segments: Segments<'_>, b_rows: &[usize], c: &mut [f32]) {
    nt_body::<x86::Avx2, { NT_AVX2.0 }, { NT_AVX2.1 }>(mnk, segments, b_rows, c)
}

/// The [`gemm_nt`] loops. Safety: as [`gemm_nt`] checks.
#[inline(always)]
unsafe fn nt_body<S: Simd, const MR: usize, const NR: usize>(
    (m, n, k): Mnk,
    segments: Segments<'_>,
    b_rows: &[usize],
    c: &mut [f32],
) {
    let k_vec = k - k % S::LANES;
    for i0 in (0..m).step_by(MR) {
        let rows = MR.min(m - i0);
        for j0 in (0..n).step_by(NR) {
            let cols = NR.min(n - j0);
            let mut acc = [[S::zero(); NR]; MR];
            let mut rest = [[0.0f32; NR]; MR]; // the last `k % LANES` products
            for (a, b) in segments {
                // Rows past the edge repeat the last one; their sums are not stored.
                let a_rows: [*const f32; MR] =
                    std::array::from_fn(|r| a.as_ptr().add((i0 + r.min(rows - 1)) * k));
                let b_rows: [*const f32; NR] =
                    std::array::from_fn(|j| b.as_ptr().add(b_rows[j0 + j.min(cols - 1)]));
                for p in (0..k_vec).step_by(S::LANES) {
                    let av: [S::V; MR] = std::array::from_fn(|r| S::load(a_rows[r].add(p)));
                    let bv: [S::V; NR] = std::array::from_fn(|j| S::load(b_rows[j].add(p)));
                    for r in 0..MR {
                        for j in 0..NR {
                            acc[r][j] = S::fma(av[r], bv[j], acc[r][j]);
                        }
                    }
                }
                for p in k_vec..k {
                    for r in 0..MR {
                        for j in 0..NR {
                            rest[r][j] =
                                S::fma_scalar(*a_rows[r].add(p), *b_rows[j].add(p), rest[r][j]);
                        }
                    }
                }
            }
            for r in 0..rows {
                for j in 0..cols {
                    c[(i0 + r) * n + j0 + j] += S::sum(acc[r][j]) + rest[r][j];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, rng: &mut impl Rng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Relative error of `got` against an f64 reference, scaled by the sum of |terms|.
    fn assert_close(got: &[f32], want: &[f64], scale: &[f64], what: &str) {
        for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
            let err = (*g as f64 - w).abs() / s.max(1e-30);
            assert!(
                err < 1e-5,
                "{what}: element {i}: {g} vs {w} (relative {err:e})"
            );
        }
    }

    /// Shapes with every edge: `m`, `n`, `k` below, at and past the tile sizes, and zero-sized.
    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (3, 5, 7),
        (8, 32, 16),
        (16, 1024, 144),
        (9, 33, 17),
        (64, 64, 576),
        (27, 49, 16),
        (5, 0, 3),
        (4, 6, 0),
    ];

    #[test]
    fn gemm_nn_matches_the_f64_product_on_every_instruction_set() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for isa in Isa::supported() {
            for (m, n, k) in SHAPES {
                for transposed in [false, true] {
                    let a = random(m * k, &mut rng); // [m, k], or [k, m] when transposed
                    let b = random(k * n, &mut rng);
                    let c0 = random(m * n, &mut rng);
                    let at = |r: usize, p: usize| {
                        if transposed {
                            a[p * m + r]
                        } else {
                            a[r * k + p]
                        }
                    };
                    let packed = PackedA::new(isa, m, k, at);
                    let rows: Vec<usize> = (0..k).map(|p| p * n).collect();
                    for accumulate in [false, true] {
                        let mut c = c0.clone();
                        gemm_nn(isa, &packed, (&b, &rows), n, &mut c, accumulate);
                        let mut want = vec![0.0f64; m * n];
                        let mut scale = vec![0.0f64; m * n];
                        for r in 0..m {
                            for j in 0..n {
                                let base = if accumulate {
                                    c0[r * n + j] as f64
                                } else {
                                    0.0
                                };
                                want[r * n + j] = base;
                                scale[r * n + j] = base.abs();
                                for p in 0..k {
                                    let t = at(r, p) as f64 * b[p * n + j] as f64;
                                    want[r * n + j] += t;
                                    scale[r * n + j] += t.abs();
                                }
                            }
                        }
                        assert_close(&c, &want, &scale, &format!("{isa:?} nn {m}x{n}x{k}"));
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_nt_sums_every_segment_on_every_instruction_set() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for isa in Isa::supported() {
            for (m, n, k) in SHAPES {
                for count in [1, 3] {
                    let data: Vec<(Vec<f32>, Vec<f32>)> = (0..count)
                        .map(|_| (random(m * k, &mut rng), random(n * k, &mut rng)))
                        .collect();
                    let segments: Vec<(&[f32], &[f32])> =
                        data.iter().map(|(a, b)| (&a[..], &b[..])).collect();
                    let c0 = random(m * n, &mut rng);
                    let mut c = c0.clone();
                    let rows: Vec<usize> = (0..n).map(|j| j * k).collect();
                    gemm_nt(isa, (m, n, k), &segments, &rows, &mut c);
                    let mut want: Vec<f64> = c0.iter().map(|&v| v as f64).collect();
                    let mut scale: Vec<f64> = want.iter().map(|v| v.abs()).collect();
                    for (a, b) in &data {
                        for r in 0..m {
                            for j in 0..n {
                                for p in 0..k {
                                    let t = a[r * k + p] as f64 * b[j * k + p] as f64;
                                    want[r * n + j] += t;
                                    scale[r * n + j] += t.abs();
                                }
                            }
                        }
                    }
                    assert_close(&c, &want, &scale, &format!("{isa:?} nt {m}x{n}x{k}"));
                }
            }
        }
    }
}
