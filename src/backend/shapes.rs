//! The shapes ops take, one named struct per op family, and the rules a shape must satisfy (checked
//! once, by [`super::Backend`], before a backend sees the op).

use anyhow::{bail, Result};

/// Convolution shape: input `[n, c_in, h, w]`, weight `[c_out, c_in / groups, k, k]`,
/// output `[n, c_out, h_out, w_out]`. Square kernels, symmetric zero padding, no bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dDims {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl Conv2dDims {
    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn input_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    pub fn output_len(&self) -> usize {
        self.n * self.c_out * self.h_out() * self.w_out()
    }
    pub fn weight_len(&self) -> usize {
        self.c_out * (self.c_in / self.groups) * self.k * self.k
    }
    /// The output as channels `[n, c_out, h_out * w_out]` (for the batch norm that follows).
    pub fn output_channels(&self) -> ChannelDims {
        ChannelDims {
            n: self.n,
            c: self.c_out,
            hw: self.h_out() * self.w_out(),
        }
    }

    /// Errors unless the shape is one a convolution can have; `op` names the op in the error.
    pub fn validate(&self, op: &str) -> Result<()> {
        let d = self;
        if d.groups == 0 || d.k == 0 || d.stride == 0 {
            bail!("{op}: groups, kernel size and stride must be at least 1 (got {d:?})");
        }
        if !d.c_in.is_multiple_of(d.groups) || !d.c_out.is_multiple_of(d.groups) {
            bail!(
                "{op}: c_in ({}) and c_out ({}) must both be divisible by groups ({})",
                d.c_in,
                d.c_out,
                d.groups
            );
        }
        if d.h + 2 * d.pad < d.k || d.w + 2 * d.pad < d.k {
            bail!(
                "{op}: the {0}x{0} kernel does not fit the padded input ({d:?})",
                d.k
            );
        }
        Ok(())
    }
}

/// Window pooling shape: input `[n, c, h, w]`, output `[n, c, h_out, w_out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dDims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Pool2dDims {
    /// Errors unless the shape is one a pooling window can have; `op` names the op in the error.
    pub fn validate(&self, op: &str) -> Result<()> {
        let d = self;
        if d.k == 0 || d.stride == 0 {
            bail!("{op}: kernel size and stride must be at least 1 (got {d:?})");
        }
        // As in PyTorch: with pad <= k / 2 every window holds at least one real input element.
        if 2 * d.pad > d.k {
            bail!(
                "{op}: padding ({}) must be at most half the kernel size ({})",
                d.pad,
                d.k
            );
        }
        if d.h + 2 * d.pad < d.k || d.w + 2 * d.pad < d.k {
            bail!(
                "{op}: the {0}x{0} window does not fit the padded input ({d:?})",
                d.k
            );
        }
        Ok(())
    }
    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn output_len(&self) -> usize {
        self.n * self.c * self.h_out() * self.w_out()
    }
}

/// Per-channel shape shared by batch norm and global pooling: `[n, c, hw]` with `hw = h * w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelDims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl ChannelDims {
    pub fn len(&self) -> usize {
        self.n * self.c * self.hw
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Option-A ResNet shortcut: `x [n, c_in, h, w]` subsampled by `stride` in h and w, channels
/// zero-padded equally on both sides to `c_out` → `[n, c_out, ceil(h/stride), ceil(w/stride)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShortcutDims {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub stride: usize,
}

impl ShortcutDims {
    /// Errors unless the shape is valid; `op` names the op in the error.
    pub fn validate(&self, op: &str) -> Result<()> {
        if self.stride == 0 {
            bail!("{op}: stride must be at least 1");
        }
        if self.c_out < self.c_in || !(self.c_out - self.c_in).is_multiple_of(2) {
            bail!(
                "{op}: option-A shortcut pads channels equally on both sides, so c_out ({}) - c_in ({}) \
                 must be a non-negative even number",
                self.c_out,
                self.c_in
            );
        }
        Ok(())
    }

    /// Zero channels padded on each side (of a validated shape).
    pub fn pad(&self) -> usize {
        (self.c_out - self.c_in) / 2
    }
    pub fn h_out(&self) -> usize {
        self.h.div_ceil(self.stride)
    }
    pub fn w_out(&self) -> usize {
        self.w.div_ceil(self.stride)
    }
    pub fn input_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    pub fn output_len(&self) -> usize {
        self.n * self.c_out * self.h_out() * self.w_out()
    }
}

/// A row-major matrix `[n, c]`: `n` rows (samples) of `c` columns (classes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowDims {
    pub n: usize,
    pub c: usize,
}

impl RowDims {
    pub fn len(&self) -> usize {
        self.n * self.c
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Errors unless every row has a column to reduce over (softmax, max).
    pub fn validate_reducible(&self, op: &str) -> Result<()> {
        if self.c == 0 && self.n > 0 {
            bail!("{op}: rows must have at least one column");
        }
        Ok(())
    }
}

/// Fully connected layer: `x [n, d_in]`, `w [d_out, d_in]`, `b [d_out]`, `y [n, d_out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinearDims {
    pub n: usize,
    pub d_in: usize,
    pub d_out: usize,
}

/// Feature/classifier cosine: `features [n, d]`, classifier `w [c, d]`, `labels [n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CosineDims {
    pub n: usize,
    pub d: usize,
    pub c: usize,
}

/// A batch of `n` samples of `per_sample` elements each, `[n, per_sample]` (mixup).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleDims {
    pub n: usize,
    pub per_sample: usize,
}

impl SampleDims {
    pub fn len(&self) -> usize {
        self.n * self.per_sample
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
