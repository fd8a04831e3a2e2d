//! 2-D convolution by im2col (kernels/conv.cu) + cuBLAS GEMMs, batched over the images of a chunk:
//! per image and group `g`, with `ckk = (c_in / groups) * k * k` and `hw = h_out * w_out`
//! (row-major shapes; cuBLAS sees each as its column-major transpose):
//! - forward:         `y_g [c_out_g, hw] = w_g [c_out_g, ckk] · col_g [ckk, hw]`;
//! - backward data:   `dcol_g [ckk, hw] = w_gᵀ · dy_g`, then col2im gathers it into `dx`;
//! - backward weight: per image `dw_g = dy_g · col_gᵀ` into a partial, folded over images by
//!   `sum_rows` (fixed order, no atomics).
//!
//! A 1x1, stride-1, unpadded convolution uses its input directly as the column matrix.

use anyhow::Result;

use super::{kernels, to_u32, CudaBackend, CudaBuf, Gemm, LaunchConfig};
use crate::backend::{Conv2dDims, ConvOps};

struct Geometry {
    d: Conv2dDims,
    c_in_g: usize,
    c_out_g: usize,
    /// `c_in_g * k * k`: rows of one group's column matrix.
    ckk: usize,
    /// `h_out * w_out`.
    hw: usize,
    direct: bool,
    /// Images per chunk.
    chunk: usize,
}

impl Geometry {
    /// `workspace`: the most floats a column buffer may hold (whole images per chunk, at least one).
    fn new(op: &str, d: Conv2dDims, workspace: usize) -> Result<Self> {
        let c_in_g = d.c_in / d.groups;
        let hw = d.h_out() * d.w_out();
        let ckk = c_in_g * d.k * d.k;
        let col_per_image = d.c_in * d.k * d.k * hw;
        to_u32(op, "input size", d.input_len())?;
        to_u32(op, "output size", d.output_len())?;
        to_u32(op, "column matrix of one image", col_per_image)?;
        Ok(Self {
            d,
            c_in_g,
            c_out_g: d.c_out / d.groups,
            ckk,
            hw,
            direct: d.k == 1 && d.stride == 1 && d.pad == 0,
            chunk: (workspace / col_per_image.max(1)).clamp(1, d.n.max(1)),
        })
    }

    /// Column-matrix rows of one image (all groups).
    fn col_rows(&self) -> usize {
        self.d.c_in * self.d.k * self.d.k
    }

    /// `[first, first + count)` image chunks.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.d.n)
            .step_by(self.chunk)
            .map(|first| (first, self.chunk.min(self.d.n - first)))
    }

    /// Nothing to compute (an empty batch or channel count): outputs stay zero.
    fn is_empty(&self) -> bool {
        self.d.n == 0 || self.hw == 0 || self.c_out_g == 0 || self.c_in_g == 0
    }
}

impl CudaBackend {
    fn im2col(
        &self,
        x: &CudaBuf,
        col: &mut CudaBuf,
        g: &Geometry,
        first: usize,
        count: usize,
    ) -> Result<()> {
        let d = g.d;
        if let Some(cfg) = self.elementwise(count * d.c_in * g.hw) {
            kernels::im2col(
                self.dev(),
                cfg,
                x,
                col,
                first as u32,
                count as u32,
                d.c_in as u32,
                d.h as u32,
                d.w as u32,
                d.k as u32,
                d.stride as u32,
                d.pad as u32,
                d.h_out() as u32,
                d.w_out() as u32,
            )?;
        }
        Ok(())
    }
}

impl ConvOps for CudaBackend {
    fn conv2d_forward_unchecked(&self, x: &CudaBuf, w: &CudaBuf, d: Conv2dDims) -> Result<CudaBuf> {
        let g = Geometry::new("conv2d_forward", d, self.conv_workspace)?;
        let mut y = self.alloc(d.output_len())?;
        if g.is_empty() {
            return Ok(y);
        }
        let mut col = if g.direct {
            None
        } else {
            Some(self.alloc(g.chunk * g.col_rows() * g.hw)?)
        };
        for (first, count) in g.chunks() {
            let (a, a_base, a_stride) = match col.as_mut() {
                Some(col) => {
                    self.im2col(x, col, &g, first, count)?;
                    (&*col, 0, g.col_rows() * g.hw)
                }
                None => (x, first * d.c_in * g.hw, d.c_in * g.hw),
            };
            for group in 0..d.groups {
                // C (hw x c_out_g, ldc hw) = A (hw x ckk, lda hw) · B (ckk x c_out_g, ldb ckk)
                let gemm = Gemm {
                    a_offset: a_base + group * g.ckk * g.hw,
                    lda: g.hw,
                    stride_a: a_stride,
                    b_offset: group * g.c_out_g * g.ckk,
                    ldb: g.ckk,
                    stride_b: 0,
                    c_offset: first * d.c_out * g.hw + group * g.c_out_g * g.hw,
                    ldc: g.hw,
                    stride_c: d.c_out * g.hw,
                    batch: count,
                    ..Gemm::new(false, false, g.hw, g.c_out_g, g.ckk)
                };
                self.gemm(&gemm, a, w, &mut y)?;
            }
        }
        Ok(y)
    }

    fn conv2d_backward_data_unchecked(
        &self,
        dy: &CudaBuf,
        w: &CudaBuf,
        d: Conv2dDims,
    ) -> Result<CudaBuf> {
        let g = Geometry::new("conv2d_backward_data", d, self.conv_workspace)?;
        let mut dx = self.alloc(d.input_len())?;
        if g.is_empty() {
            return Ok(dx);
        }
        let mut dcol = if g.direct {
            None
        } else {
            Some(self.alloc(g.chunk * g.col_rows() * g.hw)?)
        };
        for (first, count) in g.chunks() {
            for group in 0..d.groups {
                // C (hw x ckk, ldc hw) = A (dy: hw x c_out_g, lda hw) · op(B) (w stored ckk x c_out_g,
                // ldb ckk, transposed: c_out_g x ckk)
                let gemm = Gemm {
                    a_offset: first * d.c_out * g.hw + group * g.c_out_g * g.hw,
                    lda: g.hw,
                    stride_a: d.c_out * g.hw,
                    b_offset: group * g.c_out_g * g.ckk,
                    ldb: g.ckk,
                    stride_b: 0,
                    ldc: g.hw,
                    batch: count,
                    ..Gemm::new(false, true, g.hw, g.ckk, g.c_out_g)
                };
                match dcol.as_mut() {
                    Some(dcol) => {
                        let gemm = Gemm {
                            c_offset: group * g.ckk * g.hw,
                            stride_c: g.col_rows() * g.hw,
                            ..gemm
                        };
                        self.gemm(&gemm, dy, w, dcol)?;
                    }
                    None => {
                        let gemm = Gemm {
                            c_offset: first * d.c_in * g.hw + group * g.ckk * g.hw,
                            stride_c: d.c_in * g.hw,
                            ..gemm
                        };
                        self.gemm(&gemm, dy, w, &mut dx)?;
                    }
                }
            }
            if let Some(dcol) = dcol.as_ref() {
                if let Some(cfg) = self.elementwise(count * d.c_in * d.h * d.w) {
                    kernels::col2im(
                        self.dev(),
                        cfg,
                        dcol,
                        &mut dx,
                        first as u32,
                        count as u32,
                        d.c_in as u32,
                        d.h as u32,
                        d.w as u32,
                        d.k as u32,
                        d.stride as u32,
                        d.pad as u32,
                        d.h_out() as u32,
                        d.w_out() as u32,
                    )?;
                }
            }
        }
        Ok(dx)
    }

    fn conv2d_backward_weight_unchecked(
        &self,
        x: &CudaBuf,
        dy: &CudaBuf,
        d: Conv2dDims,
    ) -> Result<CudaBuf> {
        let g = Geometry::new("conv2d_backward_weight", d, self.conv_workspace)?;
        let mut dw = self.alloc(d.weight_len())?;
        if g.is_empty() {
            return Ok(dw);
        }
        let weight_len = d.weight_len();
        let mut partial = self.alloc(g.chunk * weight_len)?; // [chunk, c_out, ckk]
        let mut col = if g.direct {
            None
        } else {
            Some(self.alloc(g.chunk * g.col_rows() * g.hw)?)
        };
        for (index, (first, count)) in g.chunks().enumerate() {
            let (a, a_base, a_stride) = match col.as_mut() {
                Some(col) => {
                    self.im2col(x, col, &g, first, count)?;
                    (&*col, 0, g.col_rows() * g.hw)
                }
                None => (x, first * d.c_in * g.hw, d.c_in * g.hw),
            };
            for group in 0..d.groups {
                // C (ckk x c_out_g, ldc ckk) = op(A) (col stored hw x ckk, lda hw, transposed)
                //                               · B (dy: hw x c_out_g, ldb hw)
                let gemm = Gemm {
                    a_offset: a_base + group * g.ckk * g.hw,
                    lda: g.hw,
                    stride_a: a_stride,
                    b_offset: first * d.c_out * g.hw + group * g.c_out_g * g.hw,
                    ldb: g.hw,
                    stride_b: d.c_out * g.hw,
                    c_offset: group * g.c_out_g * g.ckk,
                    ldc: g.ckk,
                    stride_c: weight_len,
                    batch: count,
                    ..Gemm::new(true, false, g.ckk, g.c_out_g, g.hw)
                };
                self.gemm(&gemm, a, dy, &mut partial)?;
            }
            let cfg = self
                .elementwise(weight_len)
                .unwrap_or(LaunchConfig::linear(1, 32));
            kernels::sum_rows(
                self.dev(),
                cfg,
                &partial,
                &mut dw,
                count as u32,
                weight_len as u32,
                i32::from(index > 0),
            )?;
        }
        Ok(dw)
    }
}
