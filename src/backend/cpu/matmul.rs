//! A safe, row-major wrapper around `gemm::gemm` (whose convention is
//! `dst = alpha * dst + beta * lhs * rhs`, with `dst` read only when `read_dst` is set).

/// How a matrix operand is stored: `Plain` holds `[rows, cols]` row-major, `Transposed` holds the
/// transpose, `[cols, rows]` row-major.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    Plain,
    Transposed,
}

/// Row and column strides of an operand with `rows x cols` logical shape.
fn strides(layout: Layout, rows: usize, cols: usize) -> (isize, isize) {
    match layout {
        Layout::Plain => (cols as isize, 1),
        Layout::Transposed => (1, rows as isize),
    }
}

/// `dst [m, n] (+)= lhs [m, k] · rhs [k, n]`, single-threaded (callers parallelise above it).
/// `accumulate` adds to `dst`, otherwise `dst` is overwritten.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    lhs: &[f32],
    lhs_layout: Layout,
    rhs: &[f32],
    rhs_layout: Layout,
    accumulate: bool,
) {
    // The bounds below are what makes the unsafe call sound; they are internal invariants, callers
    // validate user-facing shapes before reaching here.
    assert_eq!(dst.len(), m * n, "matmul: dst length");
    assert_eq!(lhs.len(), m * k, "matmul: lhs length");
    assert_eq!(rhs.len(), k * n, "matmul: rhs length");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let (lhs_rs, lhs_cs) = strides(lhs_layout, m, k);
    let (rhs_rs, rhs_cs) = strides(rhs_layout, k, n);
    // SAFETY: all three slices hold exactly the elements addressed by their shapes and strides
    // (checked above); `dst` is exclusively borrowed and does not alias the inputs.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            ::gemm::Parallelism::None,
        );
    }
}
