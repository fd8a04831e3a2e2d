//! The op interface. Everything above it (`nn`, `model`, `method`, `train`) is written once against
//! [`Backend`]; backends only implement ops and own memory. They know nothing of experts, stages or SLA.
//!
//! Three layers, each rule in one place:
//! - [`Backend`] is what callers call. Each op's contract (buffer lengths against the shape, valid
//!   shapes, options that go together) is checked once, here, in the op's provided method, which
//!   then calls the backend's computation;
//! - the op-family traits of `ops.rs` ([`ConvOps`], `NormOps`, ...) are what a backend implements: one
//!   `*_unchecked` method per op, in the backend's file of that family (`cpu/conv.rs`,
//!   `cuda/conv.rs` + `kernels/conv.cu`), relying on the contract;
//! - the shapes (`shapes.rs`, e.g. [`Conv2dDims`]) and argument types (`args.rs`) the ops take.
//!
//! Data-dependent checks (a label below the class count, a valid augmentation row) need the data:
//! the CPU backend makes them on the host, the CUDA kernels on the device, both with the messages of
//! [`abi::KERNEL_ERRORS`].
//!
//! Conventions, for every op:
//! - tensors are flat `f32` buffers in NCHW (images) or row-major `[rows, cols]` (matrices); the caller
//!   passes the shape in a small `*Dims` struct, written next to each buffer as `[n, c, h, w]`;
//! - ops allocate and return their outputs (no aliasing questions), except the explicitly in-place ones
//!   (`*_assign`, running statistics, the optimizer step, the cos-max table);
//! - every backward op is explicit and returns the gradient of its inputs for the given output gradient.
//!
//! The ops that only the unfused-loss benchmark baseline composes live apart, in [`unfused`].

pub mod abi;
mod args;
pub mod augment_params;
pub mod cost;
pub mod counters;
pub mod cpu;
pub mod cuda;
mod ops;
mod shapes;
pub mod unfused;

use anyhow::{bail, Result};

use counters::DeviceCounters;

pub use args::{
    AugmentSpec, BatchNormAct, BatchNormAffine, BatchNormBackwardAct, BatchNormBackwardInputs,
    BatchNormConfig, BatchNormRunning, BatchNormStats, BatchNormTrain, ConvBatchNormOut,
    HostStaging, LossArgs, LossOutput, LossReduction, LossTargets, LossWeighting, ParamGrads,
    SgdConfig, WriteMode,
};
pub use ops::{
    AugmentOps, Buffers, ConvOps, ElementwiseOps, LinearOps, LossOps, NormOps, OptimOps, PoolOps,
    RowOps,
};
pub use shapes::{
    ChannelDims, Conv2dDims, CosineDims, LinearDims, Pool2dDims, RowDims, SampleDims, ShortcutDims,
};
pub use unfused::UnfusedLoss;

/// Errors unless buffer `what` of `op` holds the `expected` number of elements.
pub(crate) fn check_len(op: &str, what: &str, actual: usize, expected: usize) -> Result<()> {
    if actual != expected {
        bail!("{op}: `{what}` has {actual} elements but the given shape needs {expected}");
    }
    Ok(())
}

/// Errors unless the two operands of an element-wise op have the same length.
/// Errors unless elements `offset..offset + len` lie inside a buffer of `buf_len`.
fn check_view(op: &str, buf_len: usize, offset: usize, len: usize) -> Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > buf_len) {
        bail!(
            "{op}: {len} elements from offset {offset} of a {buf_len}-element buffer are out of \
             bounds"
        );
    }
    Ok(())
}

pub(crate) fn check_same_len(op: &str, a: usize, b: usize) -> Result<()> {
    if a != b {
        bail!("{op}: operands differ in length ({a} vs {b})");
    }
    Ok(())
}

/// Errors unless `[n, c]` matrix `what` of `op` holds `d.len()` values and its rows can be reduced.
pub(crate) fn check_rows(op: &str, what: &str, len: usize, d: RowDims) -> Result<()> {
    check_len(op, what, len, d.len())?;
    d.validate_reducible(op)
}

/// The op interface: memory, then every op as a provided method that checks the op's contract and
/// calls the backend's computation (the op-family traits of `ops.rs`).
pub trait Backend:
    Buffers
    + ElementwiseOps
    + ConvOps
    + NormOps
    + PoolOps
    + LinearOps
    + RowOps
    + LossOps
    + AugmentOps
    + OptimOps
    + Send
    + Sync
    + 'static
{
    /// Short human-readable description, e.g. `cpu (2 threads)` or `cuda: NVIDIA H200`.
    fn name(&self) -> String;

    // ---- memory (what each backend implements itself) ----
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer of unspecified contents for an op to write all of (NaN on the CPU and on the
    /// emulator, so that reading it before writing shows in tests); no zero-fill on a GPU.
    fn empty(&self, len: usize) -> Result<Self::Buf>;
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    fn upload_index(&self, data: &[u32]) -> Result<Self::Index>;
    fn download_index(&self, buf: &Self::Index) -> Result<Vec<u32>>;
    /// Copies `u8` data (an in-memory dataset) to the device once.
    fn upload_bytes(&self, data: &[u8]) -> Result<Self::Bytes>;
    /// Staging memory for `len` `f32` (page-locked on a GPU: allocate a few once, then reuse them).
    fn alloc_staging(&self, len: usize) -> Result<Self::Staging>;
    /// Elements of a buffer.
    fn len(&self, buf: &Self::Buf) -> usize;
    fn index_len(&self, buf: &Self::Index) -> usize;
    /// Bytes of a `u8` buffer.
    fn bytes_len(&self, buf: &Self::Bytes) -> usize;
    /// Waits for all queued work (a no-op on the CPU).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// Profiler range markers (NVTX on CUDA); no-ops by default.
    fn range_push(&self, _name: &str) {}
    fn range_pop(&self) {}
    /// The device work counted so far ([`counters`]); `None` on a backend without a device.
    fn device_counters(&self) -> Option<DeviceCounters> {
        None
    }

    // ---- graphs (CUDA graphs; what a backend without them need not implement) ----
    /// Whether [`Backend::begin_capture`] works here.
    fn supports_graphs(&self) -> bool {
        false
    }
    /// Whether replaying graphs pays here (a real GPU: the host issues one launch per step).
    fn prefers_graphs(&self) -> bool {
        false
    }
    /// Records the ops issued from now on into a graph instead of running them, until
    /// [`Backend::end_capture`]. Meanwhile an op that synchronises, reads back, copies from pageable
    /// host memory or needs fresh device memory fails, naming itself; every buffer a recorded op
    /// uses must stay allocated (and in place) while the graph lives.
    fn begin_capture(&self) -> Result<()> {
        bail!("{}: this backend captures no graphs", self.name())
    }
    /// The graph of the ops issued since [`Backend::begin_capture`] (also after a failed op, to
    /// end the capture).
    fn end_capture(&self) -> Result<Self::Graph> {
        bail!("{}: this backend captures no graphs", self.name())
    }
    /// Runs a captured graph: its ops again, on the buffers they were recorded with.
    fn replay(&self, _graph: &Self::Graph) -> Result<()> {
        bail!("{}: this backend captures no graphs", self.name())
    }
    /// [`Backend::copy_range`] after its bounds check.
    fn copy_range_unchecked(
        &self,
        src: &Self::Buf,
        src_offset: usize,
        dst: &mut Self::Buf,
        dst_offset: usize,
        len: usize,
    ) -> Result<()>;
    /// [`Backend::upload_staged`] after its capacity check.
    fn upload_staged_unchecked(&self, staging: &Self::Staging, len: usize) -> Result<Self::Buf>;
    /// [`Backend::write_staged`] after its capacity check.
    fn write_staged_unchecked(
        &self,
        dst: &mut Self::Buf,
        staging: &Self::Staging,
        from: usize,
    ) -> Result<()>;
    /// [`Backend::write_index_staged`] after its capacity check.
    fn write_index_staged_unchecked(
        &self,
        dst: &mut Self::Index,
        staging: &Self::Staging,
        from: usize,
    ) -> Result<()>;
    /// [`Backend::view`] after its bounds check.
    fn view_unchecked(&self, buf: &Self::Buf, offset: usize, len: usize) -> Result<Self::Buf>;
    /// [`Backend::write`] after its length check.
    fn write_unchecked(&self, dst: &mut Self::Buf, data: &[f32]) -> Result<()>;
    /// [`Backend::index_view`] after its bounds check.
    fn index_view_unchecked(
        &self,
        buf: &Self::Index,
        offset: usize,
        len: usize,
    ) -> Result<Self::Index>;
    /// [`Backend::write_index`] after its length check.
    fn write_index_unchecked(&self, dst: &mut Self::Index, data: &[u32]) -> Result<()>;
    /// Whether two buffers share memory (views of overlapping parts of one allocation).
    fn shares_memory(&self, a: &Self::Buf, b: &Self::Buf) -> bool;

    /// A buffer sharing elements `offset..offset + len` of `buf`'s memory: what is written through
    /// either is seen through both (flat parameter stores, the experts' rows of the shared trunk's
    /// batch). An op's output must not share memory with its inputs (the contracts check it where
    /// an op writes in place).
    fn view(&self, buf: &Self::Buf, offset: usize, len: usize) -> Result<Self::Buf> {
        check_view("view", self.len(buf), offset, len)?;
        self.view_unchecked(buf, offset, len)
    }

    /// Copies `data` into `dst` (of the same length), e.g. loaded weights into a parameter's view.
    fn write(&self, dst: &mut Self::Buf, data: &[f32]) -> Result<()> {
        check_len("write", "dst", self.len(dst), data.len())?;
        self.write_unchecked(dst, data)
    }

    /// [`Backend::view`] of an index buffer.
    fn index_view(&self, buf: &Self::Index, offset: usize, len: usize) -> Result<Self::Index> {
        check_view("index_view", self.index_len(buf), offset, len)?;
        self.index_view_unchecked(buf, offset, len)
    }

    /// [`Backend::write`] of an index buffer.
    fn write_index(&self, dst: &mut Self::Index, data: &[u32]) -> Result<()> {
        check_len("write_index", "dst", self.index_len(dst), data.len())?;
        self.write_index_unchecked(dst, data)
    }

    /// `dst[dst_offset..dst_offset + len] = src[src_offset..src_offset + len]`.
    fn copy_range(
        &self,
        src: &Self::Buf,
        src_offset: usize,
        dst: &mut Self::Buf,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        let fits =
            |offset: usize, buf_len: usize| offset.checked_add(len).is_some_and(|e| e <= buf_len);
        let (src_len, dst_len) = (self.len(src), self.len(dst));
        if !fits(src_offset, src_len) || !fits(dst_offset, dst_len) {
            bail!(
                "copy_range: {len} elements from offset {src_offset} of a {src_len}-element source to \
                 offset {dst_offset} of a {dst_len}-element destination are out of bounds"
            );
        }
        check_disjoint(self, "copy_range", &[("dst", dst)], &[("src", src)])?;
        self.copy_range_unchecked(src, src_offset, dst, dst_offset, len)
    }

    /// Uploads `staging[..len]`. On a GPU the copy is queued like a kernel and the staging buffer
    /// stays busy (`as_mut_slice` waits) until it has been read.
    fn upload_staged(&self, staging: &Self::Staging, len: usize) -> Result<Self::Buf> {
        let capacity = staging.capacity();
        if len > capacity {
            bail!("upload_staged: {len} elements requested from a staging buffer of {capacity}");
        }
        self.upload_staged_unchecked(staging, len)
    }

    /// Copies `staging[from..from + len(dst)]` into `dst`, like [`Backend::upload_staged`]
    /// (asynchronous on a GPU: the staging buffer stays busy until it has been read).
    fn write_staged(
        &self,
        dst: &mut Self::Buf,
        staging: &Self::Staging,
        from: usize,
    ) -> Result<()> {
        check_view("write_staged", staging.capacity(), from, self.len(dst))?;
        self.write_staged_unchecked(dst, staging, from)
    }

    /// [`Backend::write_staged`] into an index buffer: the staged words hold the indices' bits (write
    /// them through `bytemuck::cast_slice_mut::<f32, u32>`).
    fn write_index_staged(
        &self,
        dst: &mut Self::Index,
        staging: &Self::Staging,
        from: usize,
    ) -> Result<()> {
        check_view(
            "write_index_staged",
            staging.capacity(),
            from,
            self.index_len(dst),
        )?;
        self.write_index_staged_unchecked(dst, staging, from)
    }

    // ---- element-wise ----
    /// `a += b`.
    fn add_assign(&self, a: &mut Self::Buf, b: &Self::Buf) -> Result<()> {
        check_same_len("add_assign", self.len(a), self.len(b))?;
        check_disjoint(self, "add_assign", &[("a", a)], &[("b", b)])?;
        self.add_assign_unchecked(a, b)
    }
    /// `alpha * a`.
    fn scale(&self, a: &Self::Buf, alpha: f32) -> Result<Self::Buf> {
        self.scale_unchecked(a, alpha)
    }
    /// Sum of all elements, as a one-element buffer (read it back only when needed).
    fn sum(&self, a: &Self::Buf) -> Result<Self::Buf> {
        self.sum_unchecked(a)
    }
    /// Mixup of a batch `x [n, per_sample]`: `y_i = lambda * x_i + (1 - lambda) * x_perm[i]`,
    /// `perm [n]`.
    fn mixup(
        &self,
        x: &Self::Buf,
        perm: &Self::Index,
        lambda: &Self::Buf,
        d: SampleDims,
    ) -> Result<Self::Buf> {
        const OP: &str = "mixup";
        check_len(OP, "x", self.len(x), d.len())?;
        check_len(OP, "perm", self.index_len(perm), d.n)?;
        check_len(OP, "lambda", self.len(lambda), 1)?;
        self.mixup_unchecked(x, perm, lambda, d)
    }

    // ---- convolution (weight `[c_out, c_in / groups, k, k]`) ----
    fn conv2d_forward(&self, x: &Self::Buf, w: &Self::Buf, d: Conv2dDims) -> Result<Self::Buf> {
        const OP: &str = "conv2d_forward";
        d.validate(OP)?;
        check_len(OP, "x", self.len(x), d.input_len())?;
        check_len(OP, "w", self.len(w), d.weight_len())?;
        self.conv2d_forward_unchecked(x, w, d)
    }
    /// The convolution followed by a training batch norm over its output, with the activation
    /// that follows fused in (`y = relu(bn(z) + residual)`, as
    /// [`Backend::batch_norm_train_forward_act`]): the convolution computes the batch statistics in
    /// the same pass. Updates the running statistics; returns the convolution's output `z` and the
    /// saved statistics (the batch norm's backward needs both) beside `y`.
    fn conv2d_batch_norm_train(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        d: Conv2dDims,
        bn: BatchNormTrain<'_, Self>,
        act: BatchNormAct<'_, Self>,
    ) -> Result<ConvBatchNormOut<Self>> {
        const OP: &str = "conv2d_batch_norm_train";
        d.validate(OP)?;
        check_len(OP, "x", self.len(x), d.input_len())?;
        check_len(OP, "w", self.len(w), d.weight_len())?;
        let out = d.output_channels();
        check_batch_norm_train(
            self,
            OP,
            &bn.affine,
            &bn.running,
            out,
            &act,
            &[("x", x), ("w", w)],
        )?;
        self.conv2d_batch_norm_train_unchecked(x, w, d, bn, act)
    }
    fn conv2d_backward_data(
        &self,
        dy: &Self::Buf,
        w: &Self::Buf,
        d: Conv2dDims,
    ) -> Result<Self::Buf> {
        let mut dx = self.empty(d.input_len())?;
        self.conv2d_backward_data_into(dy, w, d, &mut dx, WriteMode::Overwrite)?;
        Ok(dx)
    }
    /// The input gradient written over `dx` or added to it (`mode`).
    fn conv2d_backward_data_into(
        &self,
        dy: &Self::Buf,
        w: &Self::Buf,
        d: Conv2dDims,
        dx: &mut Self::Buf,
        mode: WriteMode,
    ) -> Result<()> {
        const OP: &str = "conv2d_backward_data";
        d.validate(OP)?;
        check_len(OP, "dy", self.len(dy), d.output_len())?;
        check_len(OP, "w", self.len(w), d.weight_len())?;
        check_len(OP, "dx", self.len(dx), d.input_len())?;
        check_disjoint(self, OP, &[("dx", dx)], &[("dy", dy), ("w", w)])?;
        self.conv2d_backward_data_unchecked(dy, w, d, dx, mode)
    }
    /// The weight gradient, written over `dw` (a view of the flat gradient buffer).
    fn conv2d_backward_weight(
        &self,
        x: &Self::Buf,
        dy: &Self::Buf,
        d: Conv2dDims,
        dw: &mut Self::Buf,
    ) -> Result<()> {
        const OP: &str = "conv2d_backward_weight";
        d.validate(OP)?;
        check_len(OP, "x", self.len(x), d.input_len())?;
        check_len(OP, "dy", self.len(dy), d.output_len())?;
        check_len(OP, "dw", self.len(dw), d.weight_len())?;
        check_disjoint(self, OP, &[("dw", dw)], &[("x", x), ("dy", dy)])?;
        self.conv2d_backward_weight_unchecked(x, dy, d, dw)
    }

    // ---- batch norm (gamma, beta, running stats `[c]`) ----
    /// Training forward: normalises with the batch statistics, updates the running statistics in
    /// place, returns `(y, saved_mean [c], saved_inv_std [c])` for the backward.
    fn batch_norm_train_forward(
        &self,
        x: &Self::Buf,
        affine: BatchNormAffine<'_, Self>,
        running_mean: &mut Self::Buf,
        running_var: &mut Self::Buf,
        d: ChannelDims,
        cfg: BatchNormConfig,
    ) -> Result<(Self::Buf, Self::Buf, Self::Buf)> {
        let running = BatchNormRunning {
            mean: running_mean,
            var: running_var,
        };
        self.batch_norm_train_forward_act(x, affine, running, d, cfg, BatchNormAct::none())
    }
    /// [`Backend::batch_norm_train_forward`] with the activation that follows fused in:
    /// `y = relu(bn(x) + residual)` (each part optional).
    fn batch_norm_train_forward_act(
        &self,
        x: &Self::Buf,
        affine: BatchNormAffine<'_, Self>,
        running: BatchNormRunning<'_, Self>,
        d: ChannelDims,
        cfg: BatchNormConfig,
        act: BatchNormAct<'_, Self>,
    ) -> Result<(Self::Buf, Self::Buf, Self::Buf)> {
        const OP: &str = "batch_norm_train_forward";
        check_len(OP, "x", self.len(x), d.len())?;
        check_batch_norm_train(self, OP, &affine, &running, d, &act, &[("x", x)])?;
        self.batch_norm_train_forward_unchecked(x, affine, running, d, cfg, act)
    }
    /// Evaluation forward with the running statistics.
    fn batch_norm_eval_forward(
        &self,
        x: &Self::Buf,
        affine: BatchNormAffine<'_, Self>,
        running_mean: &Self::Buf,
        running_var: &Self::Buf,
        d: ChannelDims,
        cfg: BatchNormConfig,
    ) -> Result<Self::Buf> {
        let running = BatchNormStats {
            mean: running_mean,
            var: running_var,
        };
        self.batch_norm_eval_forward_act(x, affine, running, d, cfg, BatchNormAct::none())
    }
    /// [`Backend::batch_norm_eval_forward`] with the activation that follows fused in.
    fn batch_norm_eval_forward_act(
        &self,
        x: &Self::Buf,
        affine: BatchNormAffine<'_, Self>,
        running: BatchNormStats<'_, Self>,
        d: ChannelDims,
        cfg: BatchNormConfig,
        act: BatchNormAct<'_, Self>,
    ) -> Result<Self::Buf> {
        const OP: &str = "batch_norm_eval_forward";
        check_len(OP, "x", self.len(x), d.len())?;
        for (what, buf) in [
            ("gamma", affine.gamma),
            ("beta", affine.beta),
            ("running_mean", running.mean),
            ("running_var", running.var),
        ] {
            check_len(OP, what, self.len(buf), d.c)?;
        }
        if let Some(r) = act.residual {
            check_len(OP, "residual", self.len(r), d.len())?;
        }
        self.batch_norm_eval_forward_unchecked(x, affine, running, d, cfg, act)
    }
    /// Backward of [`Backend::batch_norm_train_forward_act`] (for a fused ReLU, its output in
    /// `act.relu_output`): returns `dx`, writes `dgamma` and `dbeta` over `grads` and the masked
    /// gradient over `act.masked_dy` when given.
    fn batch_norm_backward(
        &self,
        inputs: BatchNormBackwardInputs<'_, Self>,
        d: ChannelDims,
        act: BatchNormBackwardAct<'_, Self>,
        grads: ParamGrads<'_, Self>,
    ) -> Result<Self::Buf> {
        const OP: &str = "batch_norm_backward";
        let BatchNormBackwardInputs {
            dy,
            x,
            gamma,
            saved,
        } = &inputs;
        check_len(OP, "dy", self.len(dy), d.len())?;
        check_len(OP, "x", self.len(x), d.len())?;
        for (what, buf) in [
            ("gamma", *gamma),
            ("saved_mean", saved.mean),
            ("saved_inv_std", saved.var),
            ("dgamma", &*grads.weight),
            ("dbeta", &*grads.bias),
        ] {
            check_len(OP, what, self.len(buf), d.c)?;
        }
        if let Some(y) = act.relu_output {
            check_len(OP, "relu_output", self.len(y), d.len())?;
        }
        let mut written = vec![("dgamma", &*grads.weight), ("dbeta", &*grads.bias)];
        if let Some(m) = &act.masked_dy {
            if act.relu_output.is_none() {
                bail!("{OP}: a masked gradient asked for without the ReLU output that masks it");
            }
            check_len(OP, "masked_dy", self.len(m), d.len())?;
            written.push(("masked_dy", &**m));
        }
        check_disjoint(
            self,
            OP,
            &written,
            &[
                ("dy", dy),
                ("x", x),
                ("gamma", gamma),
                ("saved_mean", saved.mean),
                ("saved_inv_std", saved.var),
            ],
        )?;
        self.batch_norm_backward_unchecked(inputs, d, act, grads)
    }

    // ---- shortcut and pooling ----
    fn shortcut_a_forward(&self, x: &Self::Buf, d: ShortcutDims) -> Result<Self::Buf> {
        const OP: &str = "shortcut_a_forward";
        d.validate(OP)?;
        check_len(OP, "x", self.len(x), d.input_len())?;
        self.shortcut_a_forward_unchecked(x, d)
    }
    /// The input gradient, written over `dx`.
    fn shortcut_a_backward(
        &self,
        dy: &Self::Buf,
        d: ShortcutDims,
        dx: &mut Self::Buf,
    ) -> Result<()> {
        const OP: &str = "shortcut_a_backward";
        d.validate(OP)?;
        check_len(OP, "dy", self.len(dy), d.output_len())?;
        check_len(OP, "dx", self.len(dx), d.input_len())?;
        check_disjoint(self, OP, &[("dx", dx)], &[("dy", dy)])?;
        self.shortcut_a_backward_unchecked(dy, d, dx)
    }
    /// Max pooling (padding never wins); returns `(y, argmax)` with `argmax` the flat input index.
    fn max_pool_forward(&self, x: &Self::Buf, d: Pool2dDims) -> Result<(Self::Buf, Self::Index)> {
        const OP: &str = "max_pool_forward";
        d.validate(OP)?;
        check_len(OP, "x", self.len(x), d.input_len())?;
        self.max_pool_forward_unchecked(x, d)
    }
    fn max_pool_backward(
        &self,
        dy: &Self::Buf,
        argmax: &Self::Index,
        d: Pool2dDims,
    ) -> Result<Self::Buf> {
        const OP: &str = "max_pool_backward";
        d.validate(OP)?;
        check_len(OP, "dy", self.len(dy), d.output_len())?;
        check_len(OP, "argmax", self.index_len(argmax), d.output_len())?;
        self.max_pool_backward_unchecked(dy, argmax, d)
    }
    /// `[n, c, hw]` → `[n, c]`.
    fn global_avg_pool_forward(&self, x: &Self::Buf, d: ChannelDims) -> Result<Self::Buf> {
        const OP: &str = "global_avg_pool_forward";
        check_len(OP, "x", self.len(x), d.len())?;
        check_plane(OP, d)?;
        self.global_avg_pool_forward_unchecked(x, d)
    }
    fn global_avg_pool_backward(&self, dy: &Self::Buf, d: ChannelDims) -> Result<Self::Buf> {
        const OP: &str = "global_avg_pool_backward";
        check_len(OP, "dy", self.len(dy), d.n * d.c)?;
        check_plane(OP, d)?;
        self.global_avg_pool_backward_unchecked(dy, d)
    }

    // ---- linear: y [n, out] = x [n, in] · w [out, in]ᵀ + b [out] ----
    fn linear_forward(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        d: LinearDims,
    ) -> Result<Self::Buf> {
        const OP: &str = "linear_forward";
        check_len(OP, "x", self.len(x), d.n * d.d_in)?;
        check_len(OP, "w", self.len(w), d.d_out * d.d_in)?;
        check_len(OP, "b", self.len(b), d.d_out)?;
        self.linear_forward_unchecked(x, w, b, d)
    }
    /// Returns `dx [n, in]`; writes `dw [out, in]` and `db [out]` over `grads`.
    fn linear_backward(
        &self,
        dy: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        d: LinearDims,
        grads: ParamGrads<'_, Self>,
    ) -> Result<Self::Buf> {
        const OP: &str = "linear_backward";
        check_len(OP, "dy", self.len(dy), d.n * d.d_out)?;
        check_len(OP, "x", self.len(x), d.n * d.d_in)?;
        check_len(OP, "w", self.len(w), d.d_out * d.d_in)?;
        check_len(OP, "dw", self.len(grads.weight), d.d_out * d.d_in)?;
        check_len(OP, "db", self.len(grads.bias), d.d_out)?;
        check_disjoint(
            self,
            OP,
            &[("dw", &*grads.weight), ("db", &*grads.bias)],
            &[("dy", dy), ("x", x), ("w", w)],
        )?;
        self.linear_backward_unchecked(dy, x, w, d, grads)
    }

    // ---- rows `[n, c]` ----
    fn softmax_rows(&self, x: &Self::Buf, d: RowDims) -> Result<Self::Buf> {
        check_rows("softmax_rows", "x", self.len(x), d)?;
        self.softmax_rows_unchecked(x, d)
    }
    /// Per row: `(max value [n], argmax [n])`, the first maximum winning.
    fn row_max(&self, x: &Self::Buf, d: RowDims) -> Result<(Self::Buf, Self::Index)> {
        check_rows("row_max", "x", self.len(x), d)?;
        self.row_max_unchecked(x, d)
    }

    // ---- the method's fused ops ----
    /// Fused logit-adjusted softmax cross-entropy with per-sample weighting: loss, `p_i`, `w_i` and
    /// `dloss/dlogits` in one pass.
    fn fused_loss(&self, args: LossArgs<'_, Self>) -> Result<LossOutput<Self>> {
        const OP: &str = "fused_loss";
        let (n, c) = (args.n, args.c);
        check_len(OP, "logits", self.len(args.logits), n * c)?;
        if c == 0 && n > 0 {
            bail!("{OP}: logits need at least one class");
        }
        if let Some(adj) = args.adjustment {
            check_len(OP, "adjustment", self.len(adj), c)?;
        }
        let mixed = match &args.targets {
            LossTargets::Single(a) => {
                check_len(OP, "targets", self.index_len(a), n)?;
                false
            }
            LossTargets::Mixed { a, b, lambda } => {
                check_len(OP, "targets", self.index_len(a), n)?;
                check_len(OP, "mixed targets b", self.index_len(b), n)?;
                check_len(OP, "lambda", self.len(lambda), 1)?;
                true
            }
        };
        match &args.weighting {
            LossWeighting::Unit => {}
            LossWeighting::PerClass(cw) => check_len(OP, "class weights", self.len(cw), c)?,
            LossWeighting::Focal { .. } | LossWeighting::Sla { .. } if mixed => bail!(
                "{OP}: focal and SLA weighting are defined for single targets only, not mixup pairs"
            ),
            LossWeighting::Focal { .. } => {}
            LossWeighting::Sla {
                cos_y, cos_star, ..
            } => {
                check_len(OP, "cos_y", self.len(cos_y), n)?;
                check_len(OP, "cos_star", self.len(cos_star), c)?;
            }
        }
        self.fused_loss_unchecked(args)
    }
    /// `cos [n]`: cosine between feature row `z_i` (`features [n, d]`) and classifier row
    /// `w[labels[i]]` (`w [c, d]`); 0 when either norm is 0.
    fn row_cosine(
        &self,
        features: &Self::Buf,
        w: &Self::Buf,
        labels: &Self::Index,
        d: CosineDims,
    ) -> Result<Self::Buf> {
        const OP: &str = "row_cosine";
        check_len(OP, "features", self.len(features), d.n * d.d)?;
        check_len(OP, "w", self.len(w), d.c * d.d)?;
        check_len(OP, "labels", self.index_len(labels), d.n)?;
        self.row_cosine_unchecked(features, w, labels, d)
    }
    /// Batched per-class cos-max: for each class, the batch sample with the largest true-class
    /// logit `logits[i, labels[i]]` (`logits [n, c]`); where it beats `table_logit[class]`, both
    /// `table_logit` and `table_cos` (`[c]` each) take that sample's logit and `cos[i]`. Ties keep the
    /// earlier entry.
    fn cosmax_update(
        &self,
        logits: &Self::Buf,
        cos: &Self::Buf,
        labels: &Self::Index,
        d: RowDims,
        table_logit: &mut Self::Buf,
        table_cos: &mut Self::Buf,
    ) -> Result<()> {
        const OP: &str = "cosmax_update";
        check_len(OP, "logits", self.len(logits), d.len())?;
        check_len(OP, "cos", self.len(cos), d.n)?;
        check_len(OP, "labels", self.index_len(labels), d.n)?;
        check_len(OP, "table_logit", self.len(table_logit), d.c)?;
        check_len(OP, "table_cos", self.len(table_cos), d.c)?;
        check_disjoint(
            self,
            OP,
            &[("table_logit", table_logit), ("table_cos", table_cos)],
            &[("logits", logits), ("cos", cos)],
        )?;
        self.cosmax_update_unchecked(logits, cos, labels, d, table_logit, table_cos)
    }

    // ---- the data path ----
    /// Builds normalised views `[n, 3, h, w]` of the images `indices [n]` of `images [N, 3, h, w]`.
    /// With `spec.drawn`, `params [n, augment_params::PARAM_WORDS]` holds each sample's drawn
    /// parameters in the layout of [`augment_params`] (drawn on the host by the same generator as the
    /// host path, see `augment_params::draw_batch`; rows of different levels may be mixed, e.g. the
    /// experts' views of one batch, stacked); for the plain transform it must be empty. The result
    /// equals `augment::apply` + `augment::normalize_into` on the same parameters.
    fn augment_batch(
        &self,
        images: &Self::Bytes,
        indices: &Self::Index,
        params: &Self::Buf,
        spec: AugmentSpec,
    ) -> Result<Self::Buf> {
        const OP: &str = "augment_batch";
        let (h, w) = (spec.h, spec.w);
        let image_len = 3 * h * w;
        let bytes = self.bytes_len(images);
        if image_len == 0 || !bytes.is_multiple_of(image_len) {
            bail!("{OP}: the dataset has {bytes} bytes, not a whole number of {h}x{w} RGB images");
        }
        let words = self.len(params);
        if !spec.drawn {
            if words != 0 {
                bail!("{OP}: the plain transform takes no parameters (got {words} words)");
            }
        } else {
            let n = self.index_len(indices);
            check_len(OP, "params", words, n * augment_params::PARAM_WORDS)?;
        }
        self.augment_batch_unchecked(images, indices, params, spec)
    }

    // ---- optimizer ----
    /// One SGD step in place on `param` and its `velocity`.
    fn sgd_step(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        velocity: &mut Self::Buf,
        lr: &Self::Buf,
        cfg: SgdConfig,
    ) -> Result<()> {
        const OP: &str = "sgd_step";
        let len = self.len(param);
        check_len(OP, "grad", self.len(grad), len)?;
        check_len(OP, "velocity", self.len(velocity), len)?;
        check_len(OP, "lr", self.len(lr), 1)?;
        check_disjoint(
            self,
            OP,
            &[("param", param), ("velocity", velocity)],
            &[("grad", grad)],
        )?;
        self.sgd_step_unchecked(param, grad, velocity, lr, cfg)
    }
}

/// The contract of a training batch norm over `d`: its parameters, running statistics and residual
/// against `d`, the running statistics (written in place) apart from everything the op reads
/// (`inputs` besides the parameters), and more than one value per channel.
fn check_batch_norm_train<B: Backend + ?Sized>(
    be: &B,
    op: &str,
    affine: &BatchNormAffine<'_, B>,
    running: &BatchNormRunning<'_, B>,
    d: ChannelDims,
    act: &BatchNormAct<'_, B>,
    inputs: &[(&str, &B::Buf)],
) -> Result<()> {
    for (what, buf) in [
        ("gamma", affine.gamma),
        ("beta", affine.beta),
        ("running_mean", &*running.mean),
        ("running_var", &*running.var),
    ] {
        check_len(op, what, be.len(buf), d.c)?;
    }
    let mut read = vec![("gamma", affine.gamma), ("beta", affine.beta)];
    if let Some(r) = act.residual {
        check_len(op, "residual", be.len(r), d.len())?;
        read.push(("residual", r));
    }
    read.extend_from_slice(inputs);
    check_disjoint(
        be,
        op,
        &[
            ("running_mean", &*running.mean),
            ("running_var", &*running.var),
        ],
        &read,
    )?;
    let count = d.n * d.hw;
    if count < 2 {
        bail!(
            "{op}: training batch norm needs more than one value per channel (n * hw = {count}); \
             use a larger batch"
        );
    }
    Ok(())
}

/// Errors if a buffer an op writes in place shares memory with another of its buffers (each written
/// one against every other one).
fn check_disjoint<B: Backend + ?Sized>(
    be: &B,
    op: &str,
    written: &[(&str, &B::Buf)],
    read: &[(&str, &B::Buf)],
) -> Result<()> {
    for (i, &(name, w)) in written.iter().enumerate() {
        for &(other, b) in written[i + 1..].iter().chain(read) {
            if be.shares_memory(w, b) {
                bail!("{op}: `{name}` shares memory with `{other}`; an op's outputs must not overlap its other buffers");
            }
        }
    }
    Ok(())
}

/// Errors unless there is a plane to average over.
fn check_plane(op: &str, d: ChannelDims) -> Result<()> {
    if d.hw == 0 {
        bail!("{op}: cannot average over an empty plane (hw = 0)");
    }
    Ok(())
}
