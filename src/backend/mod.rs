//! The op interface. Everything above it (`nn`, `model`, `method`, `train`) is written once against
//! [`Backend`]; backends only implement ops and own memory. They know nothing of experts, stages or SLA.
//!
//! Conventions, for every op:
//! - tensors are flat `f32` buffers in NCHW (images) or row-major `[rows, cols]` (matrices); the caller
//!   passes the shape in a small `*Dims` struct, written next to each buffer as `[n, c, h, w]`;
//! - ops allocate and return their outputs (no aliasing questions), except the explicitly in-place ones
//!   (`*_assign`, running statistics, the optimizer step, the cos-max table);
//! - every backward op is explicit and returns the gradient of its inputs for the given output gradient.

pub mod abi;
pub mod augment_params;
pub mod cpu;
pub mod cuda;

use crate::augment::Level;
use anyhow::{bail, Result};

/// Errors unless buffer `what` of `op` holds the `expected` number of elements.
pub(crate) fn check_len(op: &str, what: &str, actual: usize, expected: usize) -> Result<()> {
    if actual != expected {
        bail!("{op}: `{what}` has {actual} elements but the given shape needs {expected}");
    }
    Ok(())
}

/// `upload_staged` reads a prefix of its staging buffer.
pub(crate) fn check_staged_len(capacity: usize, len: usize) -> Result<()> {
    if len > capacity {
        bail!("upload_staged: {len} elements requested from a staging buffer of {capacity}");
    }
    Ok(())
}

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

    /// Checks what every backend needs of the shape; `op` names the op in the error.
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
    /// Checks what every backend needs of the shape; `op` names the op in the error.
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
}

/// Per-channel shape shared by batch norm and global pooling: `[n, c, hw]` with `hw = h * w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelDims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl ChannelDims {
    /// Errors unless every `(name, len)` buffer holds one value per channel.
    pub fn check_per_channel(&self, op: &str, buffers: &[(&str, usize)]) -> Result<()> {
        for &(name, len) in buffers {
            check_len(op, name, len, self.c)?;
        }
        Ok(())
    }

    /// Errors unless training-mode batch norm can normalise: more than one value per channel.
    pub fn check_training_batch(&self, op: &str) -> Result<()> {
        let count = self.n * self.hw;
        if count < 2 {
            bail!(
                "{op}: training batch norm needs more than one value per channel (n * hw = {count}); \
                 use a larger batch"
            );
        }
        Ok(())
    }

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
    /// Errors unless the shape is valid; returns `(c_out - c_in) / 2`, the zero channels padded on
    /// each side.
    pub fn validate(&self, op: &str) -> Result<usize> {
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
        Ok((self.c_out - self.c_in) / 2)
    }

    pub fn h_out(&self) -> usize {
        self.h.div_ceil(self.stride)
    }
    pub fn w_out(&self) -> usize {
        self.w.div_ceil(self.stride)
    }
}

/// Batch-norm hyper-parameters (PyTorch semantics: `running = (1 - momentum) * running + momentum *
/// batch`, the running variance uses the unbiased batch variance, normalisation the biased one).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    pub momentum: f32,
    pub eps: f32,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// SGD with PyTorch semantics (dampening 0): `g = grad + wd * p; v = momentum * v + g;
/// step = nesterov ? g + momentum * v : v; p -= lr * step`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// Targets of the fused loss: one label per row, or the mixup pair (`lambda * l(a) + (1 - lambda) * l(b)`).
pub enum LossTargets<'a, B: Backend + ?Sized> {
    Single(&'a B::Index),
    Mixed {
        a: &'a B::Index,
        b: &'a B::Index,
        lambda: f32,
    },
}

/// How the per-sample weight `w_i` of the fused loss is formed. Every weight is a constant for the
/// gradient except `Focal`, whose gradient is the true focal-loss gradient.
pub enum LossWeighting<'a, B: Backend + ?Sized> {
    /// `w_i = 1`.
    Unit,
    /// `w_i = class_weight[y_i]` `[c]` (inverse frequency, class-balanced); with mixed targets each
    /// term takes the weight of its own class.
    PerClass(&'a B::Buf),
    /// Focal loss on the adjusted probability: `l_i = -(1 - p_i)^gamma log p_i` (single targets only).
    Focal { gamma: f32 },
    /// SLA (paper Eq. 12/17): `w_i = (1 - p_i)^gamma * exp(tau * cos_star[y_i] - tau * cos_y[i])`,
    /// `cos_y [n]`, `cos_star [c]`; single targets only.
    Sla {
        cos_y: &'a B::Buf,
        cos_star: &'a B::Buf,
        gamma: f32,
        tau: f32,
    },
}

/// How the weighted per-sample losses are reduced to the scalar whose gradient is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReduction {
    /// `sum_i w_i l_i / n`.
    Mean,
    /// `sum_i w_i l_i / sum_i w_i`.
    WeightNormalized,
}

/// Arguments of the fused logit-adjusted softmax cross-entropy.
pub struct LossArgs<'a, B: Backend + ?Sized> {
    /// `[n, c]` raw logits.
    pub logits: &'a B::Buf,
    pub n: usize,
    pub c: usize,
    pub targets: LossTargets<'a, B>,
    /// `[c]` additive logit adjustment (`tau * log prior`), or `None` for plain cross-entropy.
    pub adjustment: Option<&'a B::Buf>,
    pub weighting: LossWeighting<'a, B>,
    pub reduction: LossReduction,
}

impl<B: Backend + ?Sized> LossArgs<'_, B> {
    /// The op contract both backends enforce: every buffer's length against `n` and `c`, and
    /// focal / SLA weighting only with single targets. (Label ranges are checked where the labels
    /// are read: on the host by the CPU backend, in the kernel by the CUDA backend.)
    pub(crate) fn validate(
        &self,
        buf_len: impl Fn(&B::Buf) -> usize,
        index_len: impl Fn(&B::Index) -> usize,
    ) -> Result<()> {
        const OP: &str = "fused_loss";
        let (n, c) = (self.n, self.c);
        check_len(OP, "logits", buf_len(self.logits), n * c)?;
        if c == 0 && n > 0 {
            bail!("{OP}: logits need at least one class");
        }
        if let Some(adj) = self.adjustment {
            check_len(OP, "adjustment", buf_len(adj), c)?;
        }
        let mixed = match &self.targets {
            LossTargets::Single(a) => {
                check_len(OP, "targets", index_len(a), n)?;
                false
            }
            LossTargets::Mixed { a, b, .. } => {
                check_len(OP, "targets", index_len(a), n)?;
                check_len(OP, "mixed targets b", index_len(b), n)?;
                true
            }
        };
        match &self.weighting {
            LossWeighting::Unit => {}
            LossWeighting::PerClass(cw) => check_len(OP, "class weights", buf_len(cw), c)?,
            LossWeighting::Focal { .. } | LossWeighting::Sla { .. } if mixed => bail!(
                "{OP}: focal and SLA weighting are defined for single targets only, not mixup pairs"
            ),
            LossWeighting::Focal { .. } => {}
            LossWeighting::Sla {
                cos_y, cos_star, ..
            } => {
                check_len(OP, "cos_y", buf_len(cos_y), n)?;
                check_len(OP, "cos_star", buf_len(cos_star), c)?;
            }
        }
        Ok(())
    }
}

/// Outputs of the fused loss, all on the device.
pub struct LossOutput<B: Backend + ?Sized> {
    /// `[n]` weighted per-sample loss `w_i * l_i` (before reduction).
    pub loss: B::Buf,
    /// `[n]` adjusted softmax probability of the (first) target class, `p_i` of paper Eq. 9.
    pub prob: B::Buf,
    /// `[n]` the weight `w_i` used.
    pub weight: B::Buf,
    /// `[n, c]` gradient of the reduced loss with respect to the raw logits.
    pub dlogits: B::Buf,
}

/// What [`Backend::augment_batch`] produces: `[n, 3, h, w]` views of `h x w` u8 images (CIFAR
/// family: output size = input size), normalised per channel as `(v / 255 - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentSpec {
    pub h: usize,
    pub w: usize,
    /// `Level::Plain`: normalisation only, no parameters.
    pub level: Level,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Host memory a loader thread fills and [`Backend::upload_staged`] copies from: page-locked on a GPU,
/// so the copy runs asynchronously without an intermediate pageable-memory copy.
pub trait HostStaging: Send {
    /// Capacity in `f32`.
    fn capacity(&self) -> usize;
    /// The whole buffer for writing, once no upload still reads it (on a GPU: waits for the last
    /// copy out of it to complete).
    fn as_mut_slice(&mut self) -> Result<&mut [f32]>;
}

/// The op interface. Buffers are opaque handles owned by the backend.
pub trait Backend: Send + Sync + 'static {
    /// A device buffer of `f32`.
    type Buf: Send + Sync;
    /// A device buffer of `u32` (labels, indices, permutations).
    type Index: Send + Sync;
    /// A device buffer of `u8` (a whole in-memory dataset, `[N, 3, h, w]`).
    type Bytes: Send + Sync;
    /// Host staging memory for batches built on the host ([`HostStaging`]).
    type Staging: HostStaging;

    /// Short human-readable description, e.g. `cpu (2 threads)` or `cuda: NVIDIA H200`.
    fn name(&self) -> String;

    // ---- memory ----
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    fn upload_index(&self, data: &[u32]) -> Result<Self::Index>;
    fn download_index(&self, buf: &Self::Index) -> Result<Vec<u32>>;
    fn len(&self, buf: &Self::Buf) -> usize;
    /// `dst[dst_offset..dst_offset + len] = src[src_offset..src_offset + len]`.
    fn copy_range(
        &self,
        src: &Self::Buf,
        src_offset: usize,
        dst: &mut Self::Buf,
        dst_offset: usize,
        len: usize,
    ) -> Result<()>;
    /// Waits for all queued work (a no-op on the CPU).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// Profiler range markers (NVTX on CUDA); no-ops by default.
    fn range_push(&self, _name: &str) {}
    fn range_pop(&self) {}

    // ---- element-wise ----
    /// `a + b`.
    fn add(&self, a: &Self::Buf, b: &Self::Buf) -> Result<Self::Buf>;
    /// `a += b`.
    fn add_assign(&self, a: &mut Self::Buf, b: &Self::Buf) -> Result<()>;
    /// `alpha * a`.
    fn scale(&self, a: &Self::Buf, alpha: f32) -> Result<Self::Buf>;
    /// Sum of all elements, as a one-element buffer (read it back only when needed).
    fn sum(&self, a: &Self::Buf) -> Result<Self::Buf>;
    fn relu_forward(&self, x: &Self::Buf) -> Result<Self::Buf>;
    /// `dx = dy * (y > 0)` where `y` is the ReLU output.
    fn relu_backward(&self, dy: &Self::Buf, y: &Self::Buf) -> Result<Self::Buf>;

    // ---- convolution (weight `[c_out, c_in / groups, k, k]`) ----
    fn conv2d_forward(&self, x: &Self::Buf, w: &Self::Buf, d: Conv2dDims) -> Result<Self::Buf>;
    fn conv2d_backward_data(
        &self,
        dy: &Self::Buf,
        w: &Self::Buf,
        d: Conv2dDims,
    ) -> Result<Self::Buf>;
    fn conv2d_backward_weight(
        &self,
        x: &Self::Buf,
        dy: &Self::Buf,
        d: Conv2dDims,
    ) -> Result<Self::Buf>;

    // ---- batch norm (gamma, beta, running stats `[c]`) ----
    /// Training forward: normalises with the batch statistics, updates the running statistics in
    /// place, returns `(y, saved_mean [c], saved_inv_std [c])` for the backward.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_train_forward(
        &self,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        running_mean: &mut Self::Buf,
        running_var: &mut Self::Buf,
        d: ChannelDims,
        cfg: BatchNormConfig,
    ) -> Result<(Self::Buf, Self::Buf, Self::Buf)>;
    /// Evaluation forward with the running statistics.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval_forward(
        &self,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        running_mean: &Self::Buf,
        running_var: &Self::Buf,
        d: ChannelDims,
        cfg: BatchNormConfig,
    ) -> Result<Self::Buf>;
    /// Backward of the training forward: `(dx, dgamma [c], dbeta [c])`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        dy: &Self::Buf,
        x: &Self::Buf,
        gamma: &Self::Buf,
        saved_mean: &Self::Buf,
        saved_inv_std: &Self::Buf,
        d: ChannelDims,
    ) -> Result<(Self::Buf, Self::Buf, Self::Buf)>;

    // ---- shortcut and pooling ----
    fn shortcut_a_forward(&self, x: &Self::Buf, d: ShortcutDims) -> Result<Self::Buf>;
    fn shortcut_a_backward(&self, dy: &Self::Buf, d: ShortcutDims) -> Result<Self::Buf>;
    /// Max pooling (padding never wins); returns `(y, argmax)` with `argmax` the flat input index.
    fn max_pool_forward(&self, x: &Self::Buf, d: Pool2dDims) -> Result<(Self::Buf, Self::Index)>;
    fn max_pool_backward(
        &self,
        dy: &Self::Buf,
        argmax: &Self::Index,
        d: Pool2dDims,
    ) -> Result<Self::Buf>;
    /// `[n, c, hw]` → `[n, c]`.
    fn global_avg_pool_forward(&self, x: &Self::Buf, d: ChannelDims) -> Result<Self::Buf>;
    fn global_avg_pool_backward(&self, dy: &Self::Buf, d: ChannelDims) -> Result<Self::Buf>;

    // ---- linear: y [n, out] = x [n, in] · w [out, in]ᵀ + b [out] ----
    fn linear_forward(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<Self::Buf>;
    /// `(dx [n, in], dw [out, in], db [out])`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        dy: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<(Self::Buf, Self::Buf, Self::Buf)>;

    // ---- rows `[n, c]` ----
    fn softmax_rows(&self, x: &Self::Buf, n: usize, c: usize) -> Result<Self::Buf>;
    fn log_softmax_rows(&self, x: &Self::Buf, n: usize, c: usize) -> Result<Self::Buf>;
    /// `x [n, c] + bias [c]` broadcast over rows.
    fn add_row_bias(
        &self,
        x: &Self::Buf,
        bias: &Self::Buf,
        n: usize,
        c: usize,
    ) -> Result<Self::Buf>;
    /// `out[i] = x[i, idx[i]]`.
    fn gather_rows(
        &self,
        x: &Self::Buf,
        idx: &Self::Index,
        n: usize,
        c: usize,
    ) -> Result<Self::Buf>;
    /// Per row: `(max value [n], argmax [n])`.
    fn row_max(&self, x: &Self::Buf, n: usize, c: usize) -> Result<(Self::Buf, Self::Index)>;

    // ---- the method's fused ops ----
    /// Fused logit-adjusted softmax cross-entropy with per-sample weighting: loss, `p_i`, `w_i` and
    /// `dloss/dlogits` in one pass.
    fn fused_loss(&self, args: LossArgs<'_, Self>) -> Result<LossOutput<Self>>;
    /// `cos [n]`: cosine between feature row `z_i` (`[n, d]`) and classifier row `w[labels[i]]`
    /// (`[c, d]`); 0 when either norm is 0.
    #[allow(clippy::too_many_arguments)]
    fn row_cosine(
        &self,
        features: &Self::Buf,
        w: &Self::Buf,
        labels: &Self::Index,
        n: usize,
        d: usize,
        c: usize,
    ) -> Result<Self::Buf>;
    /// Batched per-class cos-max: for each class, the batch sample with the largest true-class
    /// logit `logits[i, labels[i]]`; where it beats `table_logit[class]`, both `table_logit` and
    /// `table_cos` (`[c]` each) take that sample's logit and `cos[i]`. Ties keep the earlier entry.
    #[allow(clippy::too_many_arguments)]
    fn cosmax_update(
        &self,
        logits: &Self::Buf,
        cos: &Self::Buf,
        labels: &Self::Index,
        n: usize,
        c: usize,
        table_logit: &mut Self::Buf,
        table_cos: &mut Self::Buf,
    ) -> Result<()>;
    /// Mixup of a batch `[n, per_sample]`: `y_i = lambda * x_i + (1 - lambda) * x_perm[i]`.
    fn mixup(
        &self,
        x: &Self::Buf,
        perm: &Self::Index,
        lambda: f32,
        n: usize,
        per_sample: usize,
    ) -> Result<Self::Buf>;

    // ---- the data path ----
    /// Staging memory for `len` `f32` (page-locked on a GPU: allocate a few once, then reuse them).
    fn alloc_staging(&self, len: usize) -> Result<Self::Staging>;
    /// Uploads `staging[..len]`. On a GPU the copy is queued like a kernel and the staging buffer
    /// stays busy (`as_mut_slice` waits) until it has been read.
    fn upload_staged(&self, staging: &Self::Staging, len: usize) -> Result<Self::Buf>;
    /// Copies `u8` data (an in-memory dataset) to the device once.
    fn upload_bytes(&self, data: &[u8]) -> Result<Self::Bytes>;
    /// Builds normalised views `[n, 3, h, w]` of the images `indices [n]` of `images [N, 3, h, w]`
    /// under `spec.level`. `params [n, augment_params::PARAM_WORDS]` holds each sample's drawn
    /// parameters in the layout of [`augment_params`] (drawn on the host by the same generator as the
    /// host path, see `augment_params::draw_batch`); for `Level::Plain` it must be empty. The
    /// result equals `augment::apply` + `augment::normalize_into` on the same parameters.
    fn augment_batch(
        &self,
        images: &Self::Bytes,
        indices: &Self::Index,
        params: &Self::Buf,
        spec: AugmentSpec,
    ) -> Result<Self::Buf>;

    // ---- the unfused loss composition (benchmark baseline and cross-check of `fused_loss`) ----
    /// SLA weights as a separate op: `w [n] = (1 - p_i)^gamma * exp(tau * cos_star[labels[i]] - tau *
    /// cos_y[i])`.
    #[allow(clippy::too_many_arguments)]
    fn sla_weights(
        &self,
        prob: &Self::Buf,
        cos_y: &Self::Buf,
        cos_star: &Self::Buf,
        labels: &Self::Index,
        gamma: f32,
        tau: f32,
    ) -> Result<Self::Buf>;
    /// Cross-entropy backward from probabilities: `dlogits[i, j] = (probs[i, j] - [j == labels[i]]) *
    /// row_scale[i]`.
    fn softmax_xent_backward(
        &self,
        probs: &Self::Buf,
        labels: &Self::Index,
        row_scale: &Self::Buf,
        n: usize,
        c: usize,
    ) -> Result<Self::Buf>;
    /// `a * b` element-wise.
    fn mul(&self, a: &Self::Buf, b: &Self::Buf) -> Result<Self::Buf>;

    // ---- optimizer ----
    /// One SGD step in place on `param` and its `velocity`.
    fn sgd_step(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        velocity: &mut Self::Buf,
        cfg: SgdConfig,
    ) -> Result<()>;
}
