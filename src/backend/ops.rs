//! What a backend implements, family by family: the computation of every op, one trait per op family
//! (each backend implements a family in its file of that name, e.g. `cpu/conv.rs`, `cuda/conv.rs`).
//!
//! These methods are called only by the checked methods of [`super::Backend`], after the op's
//! contract (buffer lengths against the shape, valid shapes) has been checked: an implementation
//! may rely on it. Call the `Backend` methods, not these.

use anyhow::Result;

use super::args::{
    AugmentSpec, BatchNormAct, BatchNormAffine, BatchNormBackwardAct, BatchNormBackwardInputs,
    BatchNormConfig, BatchNormRunning, BatchNormStats, BatchNormTrain, ConvBatchNormOut,
    HostStaging, LossArgs, LossOutput, ParamGrads, SgdConfig, WriteMode,
};
use super::shapes::{
    ChannelDims, Conv2dDims, CosineDims, LinearDims, Pool2dDims, RowDims, SampleDims, ShortcutDims,
};

/// The buffer types of a backend. Opaque handles owned by the backend.
pub trait Buffers {
    /// A device buffer of `f32`.
    type Buf: Send + Sync;
    /// A device buffer of `u32` (labels, indices, permutations).
    type Index: Send + Sync;
    /// A device buffer of `u8` (a whole in-memory dataset, `[N, 3, h, w]`).
    type Bytes: Send + Sync;
    /// Host staging memory for batches built on the host ([`HostStaging`]).
    type Staging: HostStaging;
    /// A captured sequence of ops (a CUDA graph), replayed by [`super::Backend::replay`].
    type Graph;
}

/// Element-wise ops, the sum reduction and mixup.
pub trait ElementwiseOps: Buffers {
    fn add_assign_unchecked(&self, a: &mut Self::Buf, b: &Self::Buf) -> Result<()>;
    fn scale_unchecked(&self, a: &Self::Buf, alpha: f32) -> Result<Self::Buf>;
    fn sum_unchecked(&self, a: &Self::Buf) -> Result<Self::Buf>;
    /// Also checks that every `perm` entry is below `d.n` (on the host or in the kernel).
    fn mixup_unchecked(
        &self,
        x: &Self::Buf,
        perm: &Self::Index,
        lambda: &Self::Buf,
        d: SampleDims,
    ) -> Result<Self::Buf>;
}

/// 2-D convolution, and the training batch norm that follows it.
pub trait ConvOps: Buffers {
    fn conv2d_batch_norm_train_unchecked(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        d: Conv2dDims,
        bn: BatchNormTrain<'_, Self>,
        act: BatchNormAct<'_, Self>,
    ) -> Result<ConvBatchNormOut<Self>>;
    fn conv2d_forward_unchecked(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        d: Conv2dDims,
    ) -> Result<Self::Buf>;
    fn conv2d_backward_data_unchecked(
        &self,
        dy: &Self::Buf,
        w: &Self::Buf,
        d: Conv2dDims,
        dx: &mut Self::Buf,
        mode: WriteMode,
    ) -> Result<()>;
    fn conv2d_backward_weight_unchecked(
        &self,
        x: &Self::Buf,
        dy: &Self::Buf,
        d: Conv2dDims,
        dw: &mut Self::Buf,
    ) -> Result<()>;
}

/// Batch normalisation, with the activation that follows it fused in.
pub trait NormOps: Buffers {
    /// `(y, saved_mean, saved_inv_std)`.
    fn batch_norm_train_forward_unchecked(
        &self,
        x: &Self::Buf,
        affine: BatchNormAffine<'_, Self>,
        running: BatchNormRunning<'_, Self>,
        d: ChannelDims,
        cfg: BatchNormConfig,
        act: BatchNormAct<'_, Self>,
    ) -> Result<(Self::Buf, Self::Buf, Self::Buf)>;
    fn batch_norm_eval_forward_unchecked(
        &self,
        x: &Self::Buf,
        affine: BatchNormAffine<'_, Self>,
        running: BatchNormStats<'_, Self>,
        d: ChannelDims,
        cfg: BatchNormConfig,
        act: BatchNormAct<'_, Self>,
    ) -> Result<Self::Buf>;
    fn batch_norm_backward_unchecked(
        &self,
        inputs: BatchNormBackwardInputs<'_, Self>,
        d: ChannelDims,
        act: BatchNormBackwardAct<'_, Self>,
        grads: ParamGrads<'_, Self>,
    ) -> Result<Self::Buf>;
}

/// Pooling and the option-A shortcut.
pub trait PoolOps: Buffers {
    fn shortcut_a_forward_unchecked(&self, x: &Self::Buf, d: ShortcutDims) -> Result<Self::Buf>;
    fn shortcut_a_backward_unchecked(
        &self,
        dy: &Self::Buf,
        d: ShortcutDims,
        dx: &mut Self::Buf,
    ) -> Result<()>;
    fn max_pool_forward_unchecked(
        &self,
        x: &Self::Buf,
        d: Pool2dDims,
    ) -> Result<(Self::Buf, Self::Index)>;
    fn max_pool_backward_unchecked(
        &self,
        dy: &Self::Buf,
        argmax: &Self::Index,
        d: Pool2dDims,
    ) -> Result<Self::Buf>;
    fn global_avg_pool_forward_unchecked(&self, x: &Self::Buf, d: ChannelDims)
        -> Result<Self::Buf>;
    fn global_avg_pool_backward_unchecked(
        &self,
        dy: &Self::Buf,
        d: ChannelDims,
    ) -> Result<Self::Buf>;
}

/// The fully connected layer.
pub trait LinearOps: Buffers {
    fn linear_forward_unchecked(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        d: LinearDims,
    ) -> Result<Self::Buf>;
    /// `dx`.
    fn linear_backward_unchecked(
        &self,
        dy: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        d: LinearDims,
        grads: ParamGrads<'_, Self>,
    ) -> Result<Self::Buf>;
}

/// Row-wise ops on `[n, c]` matrices the model needs (evaluation).
pub trait RowOps: Buffers {
    fn softmax_rows_unchecked(&self, x: &Self::Buf, d: RowDims) -> Result<Self::Buf>;
    fn row_max_unchecked(&self, x: &Self::Buf, d: RowDims) -> Result<(Self::Buf, Self::Index)>;
}

/// The method's fused ops. Each also checks that every label is below its bound.
pub trait LossOps: Buffers {
    fn fused_loss_unchecked(&self, args: LossArgs<'_, Self>) -> Result<LossOutput<Self>>;
    fn row_cosine_unchecked(
        &self,
        features: &Self::Buf,
        w: &Self::Buf,
        labels: &Self::Index,
        d: CosineDims,
    ) -> Result<Self::Buf>;
    fn cosmax_update_unchecked(
        &self,
        logits: &Self::Buf,
        cos: &Self::Buf,
        labels: &Self::Index,
        d: RowDims,
        table_logit: &mut Self::Buf,
        table_cos: &mut Self::Buf,
    ) -> Result<()>;
}

/// The device-side data path.
pub trait AugmentOps: Buffers {
    /// Also checks every image index and parameter row (`abi::ERR_AUGMENT_*`).
    fn augment_batch_unchecked(
        &self,
        images: &Self::Bytes,
        indices: &Self::Index,
        params: &Self::Buf,
        spec: AugmentSpec,
    ) -> Result<Self::Buf>;
}

/// The optimizer.
pub trait OptimOps: Buffers {
    fn sgd_step_unchecked(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        velocity: &mut Self::Buf,
        lr: &Self::Buf,
        cfg: SgdConfig,
    ) -> Result<()>;
}
