//! The ops that only the unfused loss composition (`method::unfused_loss`, the baseline `cargo bench
//! --bench loss` times the fused loss against, and a cross-check of it) is built from. The trainer
//! does not need them, so they live apart from [`super::Backend`]: [`UnfusedLoss`] is what callers
//! call (contracts checked here), [`UnfusedLossOps`] what a backend implements (`cpu/unfused.rs`,
//! `cuda/unfused.rs` + `kernels/unfused.cu`).

use anyhow::Result;

use super::{check_len, check_rows, check_same_len, Backend, Buffers, RowDims};

/// The computation of the unfused loss ops, after their contract held. Each also checks its labels.
pub trait UnfusedLossOps: Buffers {
    fn add_row_bias_unchecked(
        &self,
        x: &Self::Buf,
        bias: &Self::Buf,
        d: RowDims,
    ) -> Result<Self::Buf>;
    fn log_softmax_rows_unchecked(&self, x: &Self::Buf, d: RowDims) -> Result<Self::Buf>;
    fn gather_rows_unchecked(
        &self,
        x: &Self::Buf,
        idx: &Self::Index,
        d: RowDims,
    ) -> Result<Self::Buf>;
    fn sla_weights_unchecked(
        &self,
        prob: &Self::Buf,
        cos_y: &Self::Buf,
        cos_star: &Self::Buf,
        labels: &Self::Index,
        gamma: f32,
        tau: f32,
    ) -> Result<Self::Buf>;
    fn softmax_xent_backward_unchecked(
        &self,
        probs: &Self::Buf,
        labels: &Self::Index,
        row_scale: &Self::Buf,
        d: RowDims,
    ) -> Result<Self::Buf>;
    fn mul_unchecked(&self, a: &Self::Buf, b: &Self::Buf) -> Result<Self::Buf>;
}

/// The unfused loss ops of a backend.
pub trait UnfusedLoss: Backend + UnfusedLossOps {
    /// `x [n, c] + bias [c]` broadcast over rows.
    fn add_row_bias(&self, x: &Self::Buf, bias: &Self::Buf, d: RowDims) -> Result<Self::Buf> {
        const OP: &str = "add_row_bias";
        check_len(OP, "x", self.len(x), d.len())?;
        check_len(OP, "bias", self.len(bias), d.c)?;
        self.add_row_bias_unchecked(x, bias, d)
    }
    /// Log-softmax of every row of `x [n, c]`.
    fn log_softmax_rows(&self, x: &Self::Buf, d: RowDims) -> Result<Self::Buf> {
        check_rows("log_softmax_rows", "x", self.len(x), d)?;
        self.log_softmax_rows_unchecked(x, d)
    }
    /// `out[i] = x[i, idx[i]]`, `x [n, c]`, `idx [n]`.
    fn gather_rows(&self, x: &Self::Buf, idx: &Self::Index, d: RowDims) -> Result<Self::Buf> {
        const OP: &str = "gather_rows";
        check_len(OP, "x", self.len(x), d.len())?;
        check_len(OP, "idx", self.index_len(idx), d.n)?;
        self.gather_rows_unchecked(x, idx, d)
    }
    /// SLA weights as a separate op: `w [n] = (1 - p_i)^gamma * exp(tau * cos_star[labels[i]] - tau *
    /// cos_y[i])` with `prob`, `cos_y`, `labels` `[n]` and `cos_star [c]`.
    fn sla_weights(
        &self,
        prob: &Self::Buf,
        cos_y: &Self::Buf,
        cos_star: &Self::Buf,
        labels: &Self::Index,
        gamma: f32,
        tau: f32,
    ) -> Result<Self::Buf> {
        const OP: &str = "sla_weights";
        let n = self.len(prob);
        check_len(OP, "cos_y", self.len(cos_y), n)?;
        check_len(OP, "labels", self.index_len(labels), n)?;
        self.sla_weights_unchecked(prob, cos_y, cos_star, labels, gamma, tau)
    }
    /// Cross-entropy backward from probabilities: `dlogits[i, j] = (probs[i, j] - [j == labels[i]]) *
    /// row_scale[i]`, `probs [n, c]`, `labels`, `row_scale` `[n]`.
    fn softmax_xent_backward(
        &self,
        probs: &Self::Buf,
        labels: &Self::Index,
        row_scale: &Self::Buf,
        d: RowDims,
    ) -> Result<Self::Buf> {
        const OP: &str = "softmax_xent_backward";
        check_rows(OP, "probs", self.len(probs), d)?;
        check_len(OP, "labels", self.index_len(labels), d.n)?;
        check_len(OP, "row_scale", self.len(row_scale), d.n)?;
        self.softmax_xent_backward_unchecked(probs, labels, row_scale, d)
    }
    /// `a * b` element-wise.
    fn mul(&self, a: &Self::Buf, b: &Self::Buf) -> Result<Self::Buf> {
        check_same_len("mul", self.len(a), self.len(b))?;
        self.mul_unchecked(a, b)
    }
}

impl<B: Backend + UnfusedLossOps> UnfusedLoss for B {}
