//! Argument and result types of the ops: hyper-parameters, the fused loss's targets and weighting,
//! the augmentation spec, and host staging memory.

use super::Buffers;
use crate::augment::Level;

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

/// The learned per-channel scale and shift of a batch norm, `[c]` each.
pub struct BatchNormAffine<'a, B: Buffers + ?Sized> {
    pub gamma: &'a B::Buf,
    pub beta: &'a B::Buf,
}

// Derived Copy would require `B: Copy`.
impl<B: Buffers + ?Sized> Clone for BatchNormAffine<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Buffers + ?Sized> Copy for BatchNormAffine<'_, B> {}

/// Running statistics of a batch norm, `[c]` each, updated in place by a training forward.
pub struct BatchNormRunning<'a, B: Buffers + ?Sized> {
    pub mean: &'a mut B::Buf,
    pub var: &'a mut B::Buf,
}

/// A training batch norm's parameters, running statistics and hyper-parameters.
pub struct BatchNormTrain<'a, B: Buffers + ?Sized> {
    pub affine: BatchNormAffine<'a, B>,
    pub running: BatchNormRunning<'a, B>,
    pub cfg: BatchNormConfig,
}

/// What a convolution followed by a training batch norm returns.
pub struct ConvBatchNormOut<B: Buffers + ?Sized> {
    /// `[n, c_out, h_out, w_out]` the convolution's output (the batch norm's input).
    pub z: B::Buf,
    /// The same shape, the batch norm's output after the fused activation.
    pub y: B::Buf,
    /// `[c_out]` each: the batch statistics for the backward.
    pub saved_mean: B::Buf,
    pub saved_inv_std: B::Buf,
}

/// Statistics a batch norm normalises with, `[c]` each: the running ones in evaluation, the saved
/// batch ones (`mean`, `1 / sqrt(var + eps)`) in the backward.
pub struct BatchNormStats<'a, B: Buffers + ?Sized> {
    pub mean: &'a B::Buf,
    pub var: &'a B::Buf,
}

/// What follows a batch norm in a ResNet, fused into it: `y = relu(bn(x) + residual)`.
pub struct BatchNormAct<'a, B: Buffers + ?Sized> {
    /// `[n, c, hw]` added after the normalisation (a residual block's shortcut).
    pub residual: Option<&'a B::Buf>,
    pub relu: bool,
}

impl<B: Buffers + ?Sized> BatchNormAct<'_, B> {
    /// The plain batch norm.
    pub fn none() -> Self {
        Self {
            residual: None,
            relu: false,
        }
    }
}

/// The backward of a batch norm whose forward fused a ReLU.
pub struct BatchNormBackwardAct<'a, B: Buffers + ?Sized> {
    /// That forward's output `[n, c, hw]`: the gradient passes where it is positive.
    pub relu_output: Option<&'a B::Buf>,
    /// Where to write the masked gradient too (`[n, c, hw]`, the residual's gradient).
    pub masked_dy: Option<&'a mut B::Buf>,
}

impl<B: Buffers + ?Sized> BatchNormBackwardAct<'_, B> {
    /// The plain batch norm.
    pub fn none() -> Self {
        Self {
            relu_output: None,
            masked_dy: None,
        }
    }
}

impl<'a, B: Buffers + ?Sized> BatchNormBackwardAct<'a, B> {
    /// A fused ReLU whose output was `y`.
    pub fn relu(y: &'a B::Buf) -> Self {
        Self {
            relu_output: Some(y),
            masked_dy: None,
        }
    }
}

/// Whether an op writes its output over the destination or adds it to what is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    Overwrite,
    /// `dst += result` (a residual block's input gradient: the shortcut's, then the branch's).
    Add,
}

/// What a batch norm's backward reads: the gradient of its output, its input, `gamma` and the
/// forward's saved `(mean, 1 / sqrt(var + eps))`.
pub struct BatchNormBackwardInputs<'a, B: Buffers + ?Sized> {
    /// `[n, c, hw]` each.
    pub dy: &'a B::Buf,
    pub x: &'a B::Buf,
    /// `[c]`.
    pub gamma: &'a B::Buf,
    pub saved: BatchNormStats<'a, B>,
}

/// Where a backward writes the gradients of a layer's two parameters (batch norm's `gamma` and
/// `beta`, a linear layer's weight and bias): views of the flat gradient buffer, overwritten.
pub struct ParamGrads<'a, B: Buffers + ?Sized> {
    pub weight: &'a mut B::Buf,
    pub bias: &'a mut B::Buf,
}

/// SGD with PyTorch semantics (dampening 0): `g = grad + wd * p; v = momentum * v + g;
/// step = nesterov ? g + momentum * v : v; p -= lr * step`, the learning rate a one-element device
/// buffer of its own (it changes over the run).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// Targets of the fused loss: one label per row, or the mixup pair (`lambda * l(a) + (1 - lambda) * l(b)`).
pub enum LossTargets<'a, B: Buffers + ?Sized> {
    Single(&'a B::Index),
    Mixed {
        a: &'a B::Index,
        b: &'a B::Index,
        /// `[1]` on the device (a per-step value).
        lambda: &'a B::Buf,
    },
}

/// How the per-sample weight `w_i` of the fused loss is formed. Every weight is a constant for the
/// gradient except `Focal`, whose gradient is the true focal-loss gradient.
pub enum LossWeighting<'a, B: Buffers + ?Sized> {
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
pub struct LossArgs<'a, B: Buffers + ?Sized> {
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

/// Outputs of the fused loss, all on the device.
pub struct LossOutput<B: Buffers + ?Sized> {
    /// `[n]` weighted per-sample loss `w_i * l_i` (before reduction).
    pub loss: B::Buf,
    /// `[n]` adjusted softmax probability of the (first) target class, `p_i` of paper Eq. 9.
    pub prob: B::Buf,
    /// `[n]` the weight `w_i` used.
    pub weight: B::Buf,
    /// `[n, c]` gradient of the reduced loss with respect to the raw logits.
    pub dlogits: B::Buf,
}

/// What [`super::Backend::augment_batch`] produces: `[n, 3, h, w]` views of `h x w` u8 images (CIFAR
/// family: output size = input size), normalised per channel as `(v / 255 - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentSpec {
    pub h: usize,
    pub w: usize,
    /// Whether every row has drawn parameters (an augmented level: each row's parameters say what
    /// is done, so one launch serves views of several levels); `false`: the plain transform,
    /// normalisation only, no parameters.
    pub drawn: bool,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl AugmentSpec {
    /// [`AugmentSpec::drawn`] for views of `levels` built in one launch: all plain or all augmented.
    pub fn drawn_for(levels: &[Level]) -> anyhow::Result<bool> {
        let drawn = levels.iter().filter(|&&l| l != Level::Plain).count();
        if drawn != 0 && drawn != levels.len() {
            anyhow::bail!(
                "views of levels {levels:?} cannot share an augmentation launch: the plain \
                 transform has no parameters"
            );
        }
        Ok(drawn != 0)
    }
}

/// Host memory a loader thread fills and [`super::Backend::upload_staged`] copies from: page-locked
/// on a GPU, so the copy runs asynchronously without an intermediate pageable-memory copy.
pub trait HostStaging: Send {
    /// Capacity in `f32`.
    fn capacity(&self) -> usize;
    /// The whole buffer for writing, once no upload still reads it (on a GPU: waits for the last
    /// copy out of it to complete).
    fn as_mut_slice(&mut self) -> anyhow::Result<&mut [f32]>;
}
