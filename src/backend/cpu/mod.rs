//! CPU reference backend: plain `f32` vectors, ops parallelised with rayon inside a private thread pool,
//! convolutions and matrix products through the `gemm` crate. One file per op family (as in llm.c);
//! this file owns the buffer types, the thread pool and the `Backend` impl, which only validates
//! buffer handles and dispatches.
//!
//! Results do not depend on the thread count: every reduction runs over a fixed partition of the data
//! (independent of the pool size) and partial results are combined in a fixed order.

mod augment;
mod conv;
mod eltwise;
mod linear;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;
mod rows;

use anyhow::{bail, Context, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};

pub use augment::CpuBytes;

use super::abi;
use super::{
    AugmentSpec, Backend, BatchNormConfig, ChannelDims, Conv2dDims, HostStaging, LossArgs,
    LossOutput, Pool2dDims, SgdConfig, ShortcutDims,
};

/// A host buffer of `f32`. Code outside the backend sees it only through [`Backend`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuBuf(Vec<f32>);

/// A host buffer of `u32` (labels, indices, permutations).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuIndex(Vec<u32>);

/// Staging memory of the CPU backend: plain host memory (its "upload" is a copy).
#[derive(Debug)]
pub struct CpuStaging(Vec<f32>);

impl HostStaging for CpuStaging {
    fn capacity(&self) -> usize {
        self.0.len()
    }
    fn as_mut_slice(&mut self) -> Result<&mut [f32]> {
        Ok(&mut self.0)
    }
}

/// The CPU reference backend.
pub struct CpuBackend {
    pool: ThreadPool,
}

impl CpuBackend {
    /// A backend running its ops on `threads` worker threads (`None`: one per available core).
    pub fn new(threads: Option<usize>) -> Result<Self> {
        let mut builder = ThreadPoolBuilder::new().thread_name(|i| format!("ltrain-cpu-{i}"));
        if let Some(threads) = threads {
            if threads == 0 {
                bail!("CpuBackend: the thread count must be at least 1 (got 0)");
            }
            builder = builder.num_threads(threads);
        }
        let pool = builder
            .build()
            .context("CpuBackend: could not build the rayon thread pool")?;
        Ok(Self { pool })
    }

    /// Number of worker threads of the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

/// Errors unless a buffer has exactly the length its shape implies.
pub(crate) use super::check_len;

/// Errors unless every index is below `bound`, with the message of the CUDA kernels' error `code`
/// (`abi::ERR_*`), so both backends report a bad index alike.
pub(crate) fn check_indices(code: u32, idx: &[u32], bound: usize) -> Result<()> {
    if let Some((i, &v)) = idx.iter().enumerate().find(|(_, &v)| v as usize >= bound) {
        bail!(
            "{}",
            abi::error_message(code, i as u64, v.into(), bound as u64)
        );
    }
    Ok(())
}

impl Backend for CpuBackend {
    type Buf = CpuBuf;
    type Index = CpuIndex;
    type Bytes = CpuBytes;
    type Staging = CpuStaging;

    fn name(&self) -> String {
        let threads = self.threads();
        format!(
            "cpu ({threads} thread{})",
            if threads == 1 { "" } else { "s" }
        )
    }

    // ---- memory ----
    fn zeros(&self, len: usize) -> Result<CpuBuf> {
        Ok(CpuBuf(vec![0.0; len]))
    }
    fn upload(&self, data: &[f32]) -> Result<CpuBuf> {
        Ok(CpuBuf(data.to_vec()))
    }
    fn download(&self, buf: &CpuBuf) -> Result<Vec<f32>> {
        Ok(buf.0.clone())
    }
    fn upload_index(&self, data: &[u32]) -> Result<CpuIndex> {
        Ok(CpuIndex(data.to_vec()))
    }
    fn download_index(&self, buf: &CpuIndex) -> Result<Vec<u32>> {
        Ok(buf.0.clone())
    }
    fn len(&self, buf: &CpuBuf) -> usize {
        buf.0.len()
    }
    fn copy_range(
        &self,
        src: &CpuBuf,
        src_offset: usize,
        dst: &mut CpuBuf,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        let src_end = src_offset.checked_add(len).filter(|&e| e <= src.0.len());
        let dst_end = dst_offset.checked_add(len).filter(|&e| e <= dst.0.len());
        match (src_end, dst_end) {
            (Some(src_end), Some(dst_end)) => {
                dst.0[dst_offset..dst_end].copy_from_slice(&src.0[src_offset..src_end]);
                Ok(())
            }
            _ => bail!(
                "copy_range: {len} elements from offset {src_offset} of a {}-element source to offset \
                 {dst_offset} of a {}-element destination are out of bounds",
                src.0.len(),
                dst.0.len()
            ),
        }
    }

    // ---- element-wise ----
    fn add(&self, a: &CpuBuf, b: &CpuBuf) -> Result<CpuBuf> {
        self.pool.install(|| eltwise::add(&a.0, &b.0)).map(CpuBuf)
    }
    fn add_assign(&self, a: &mut CpuBuf, b: &CpuBuf) -> Result<()> {
        self.pool.install(|| eltwise::add_assign(&mut a.0, &b.0))
    }
    fn mul(&self, a: &CpuBuf, b: &CpuBuf) -> Result<CpuBuf> {
        self.pool.install(|| eltwise::mul(&a.0, &b.0)).map(CpuBuf)
    }
    fn scale(&self, a: &CpuBuf, alpha: f32) -> Result<CpuBuf> {
        Ok(CpuBuf(self.pool.install(|| eltwise::scale(&a.0, alpha))))
    }
    fn sum(&self, a: &CpuBuf) -> Result<CpuBuf> {
        Ok(CpuBuf(vec![self.pool.install(|| eltwise::sum(&a.0))]))
    }
    fn relu_forward(&self, x: &CpuBuf) -> Result<CpuBuf> {
        Ok(CpuBuf(self.pool.install(|| eltwise::relu_forward(&x.0))))
    }
    fn relu_backward(&self, dy: &CpuBuf, y: &CpuBuf) -> Result<CpuBuf> {
        self.pool
            .install(|| eltwise::relu_backward(&dy.0, &y.0))
            .map(CpuBuf)
    }

    // ---- convolution ----
    fn conv2d_forward(&self, x: &CpuBuf, w: &CpuBuf, d: Conv2dDims) -> Result<CpuBuf> {
        self.pool
            .install(|| conv::forward(&x.0, &w.0, d))
            .map(CpuBuf)
    }
    fn conv2d_backward_data(&self, dy: &CpuBuf, w: &CpuBuf, d: Conv2dDims) -> Result<CpuBuf> {
        self.pool
            .install(|| conv::backward_data(&dy.0, &w.0, d))
            .map(CpuBuf)
    }
    fn conv2d_backward_weight(&self, x: &CpuBuf, dy: &CpuBuf, d: Conv2dDims) -> Result<CpuBuf> {
        self.pool
            .install(|| conv::backward_weight(&x.0, &dy.0, d))
            .map(CpuBuf)
    }

    // ---- batch norm ----
    fn batch_norm_train_forward(
        &self,
        x: &CpuBuf,
        gamma: &CpuBuf,
        beta: &CpuBuf,
        running_mean: &mut CpuBuf,
        running_var: &mut CpuBuf,
        d: ChannelDims,
        cfg: BatchNormConfig,
    ) -> Result<(CpuBuf, CpuBuf, CpuBuf)> {
        let (y, mean, inv_std) = self.pool.install(|| {
            norm::train_forward(
                &x.0,
                &gamma.0,
                &beta.0,
                &mut running_mean.0,
                &mut running_var.0,
                d,
                cfg,
            )
        })?;
        Ok((CpuBuf(y), CpuBuf(mean), CpuBuf(inv_std)))
    }
    fn batch_norm_eval_forward(
        &self,
        x: &CpuBuf,
        gamma: &CpuBuf,
        beta: &CpuBuf,
        running_mean: &CpuBuf,
        running_var: &CpuBuf,
        d: ChannelDims,
        cfg: BatchNormConfig,
    ) -> Result<CpuBuf> {
        self.pool
            .install(|| {
                norm::eval_forward(
                    &x.0,
                    &gamma.0,
                    &beta.0,
                    &running_mean.0,
                    &running_var.0,
                    d,
                    cfg,
                )
            })
            .map(CpuBuf)
    }
    fn batch_norm_backward(
        &self,
        dy: &CpuBuf,
        x: &CpuBuf,
        gamma: &CpuBuf,
        saved_mean: &CpuBuf,
        saved_inv_std: &CpuBuf,
        d: ChannelDims,
    ) -> Result<(CpuBuf, CpuBuf, CpuBuf)> {
        let (dx, dgamma, dbeta) = self.pool.install(|| {
            norm::backward(&dy.0, &x.0, &gamma.0, &saved_mean.0, &saved_inv_std.0, d)
        })?;
        Ok((CpuBuf(dx), CpuBuf(dgamma), CpuBuf(dbeta)))
    }

    // ---- shortcut and pooling ----
    fn shortcut_a_forward(&self, x: &CpuBuf, d: ShortcutDims) -> Result<CpuBuf> {
        self.pool
            .install(|| pool::shortcut_a_forward(&x.0, d))
            .map(CpuBuf)
    }
    fn shortcut_a_backward(&self, dy: &CpuBuf, d: ShortcutDims) -> Result<CpuBuf> {
        self.pool
            .install(|| pool::shortcut_a_backward(&dy.0, d))
            .map(CpuBuf)
    }
    fn max_pool_forward(&self, x: &CpuBuf, d: Pool2dDims) -> Result<(CpuBuf, CpuIndex)> {
        let (y, argmax) = self.pool.install(|| pool::max_pool_forward(&x.0, d))?;
        Ok((CpuBuf(y), CpuIndex(argmax)))
    }
    fn max_pool_backward(&self, dy: &CpuBuf, argmax: &CpuIndex, d: Pool2dDims) -> Result<CpuBuf> {
        self.pool
            .install(|| pool::max_pool_backward(&dy.0, &argmax.0, d))
            .map(CpuBuf)
    }
    fn global_avg_pool_forward(&self, x: &CpuBuf, d: ChannelDims) -> Result<CpuBuf> {
        self.pool
            .install(|| pool::global_avg_pool_forward(&x.0, d))
            .map(CpuBuf)
    }
    fn global_avg_pool_backward(&self, dy: &CpuBuf, d: ChannelDims) -> Result<CpuBuf> {
        self.pool
            .install(|| pool::global_avg_pool_backward(&dy.0, d))
            .map(CpuBuf)
    }

    // ---- linear ----
    fn linear_forward(
        &self,
        x: &CpuBuf,
        w: &CpuBuf,
        b: &CpuBuf,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<CpuBuf> {
        self.pool
            .install(|| linear::forward(&x.0, &w.0, &b.0, n, d_in, d_out))
            .map(CpuBuf)
    }
    fn linear_backward(
        &self,
        dy: &CpuBuf,
        x: &CpuBuf,
        w: &CpuBuf,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<(CpuBuf, CpuBuf, CpuBuf)> {
        let (dx, dw, db) = self
            .pool
            .install(|| linear::backward(&dy.0, &x.0, &w.0, n, d_in, d_out))?;
        Ok((CpuBuf(dx), CpuBuf(dw), CpuBuf(db)))
    }

    // ---- rows ----
    fn softmax_rows(&self, x: &CpuBuf, n: usize, c: usize) -> Result<CpuBuf> {
        self.pool.install(|| rows::softmax(&x.0, n, c)).map(CpuBuf)
    }
    fn log_softmax_rows(&self, x: &CpuBuf, n: usize, c: usize) -> Result<CpuBuf> {
        self.pool
            .install(|| rows::log_softmax(&x.0, n, c))
            .map(CpuBuf)
    }
    fn add_row_bias(&self, x: &CpuBuf, bias: &CpuBuf, n: usize, c: usize) -> Result<CpuBuf> {
        self.pool
            .install(|| rows::add_row_bias(&x.0, &bias.0, n, c))
            .map(CpuBuf)
    }
    fn gather_rows(&self, x: &CpuBuf, idx: &CpuIndex, n: usize, c: usize) -> Result<CpuBuf> {
        rows::gather(&x.0, &idx.0, n, c).map(CpuBuf)
    }
    fn sla_weights(
        &self,
        prob: &CpuBuf,
        cos_y: &CpuBuf,
        cos_star: &CpuBuf,
        labels: &CpuIndex,
        gamma: f32,
        tau: f32,
    ) -> Result<CpuBuf> {
        rows::sla_weights(&prob.0, &cos_y.0, &cos_star.0, &labels.0, gamma, tau).map(CpuBuf)
    }
    fn softmax_xent_backward(
        &self,
        probs: &CpuBuf,
        labels: &CpuIndex,
        row_scale: &CpuBuf,
        n: usize,
        c: usize,
    ) -> Result<CpuBuf> {
        rows::softmax_xent_backward(&probs.0, &labels.0, &row_scale.0, n, c).map(CpuBuf)
    }
    fn row_max(&self, x: &CpuBuf, n: usize, c: usize) -> Result<(CpuBuf, CpuIndex)> {
        let (max, argmax) = self.pool.install(|| rows::row_max(&x.0, n, c))?;
        Ok((CpuBuf(max), CpuIndex(argmax)))
    }

    // ---- the method's fused ops ----
    fn fused_loss(&self, args: LossArgs<'_, Self>) -> Result<LossOutput<Self>> {
        self.pool.install(|| loss::fused_loss(args))
    }
    fn row_cosine(
        &self,
        features: &CpuBuf,
        w: &CpuBuf,
        labels: &CpuIndex,
        n: usize,
        d: usize,
        c: usize,
    ) -> Result<CpuBuf> {
        self.pool
            .install(|| loss::row_cosine(&features.0, &w.0, &labels.0, n, d, c))
            .map(CpuBuf)
    }
    fn cosmax_update(
        &self,
        logits: &CpuBuf,
        cos: &CpuBuf,
        labels: &CpuIndex,
        n: usize,
        c: usize,
        table_logit: &mut CpuBuf,
        table_cos: &mut CpuBuf,
    ) -> Result<()> {
        loss::cosmax_update(
            &logits.0,
            &cos.0,
            &labels.0,
            n,
            c,
            &mut table_logit.0,
            &mut table_cos.0,
        )
    }
    fn mixup(
        &self,
        x: &CpuBuf,
        perm: &CpuIndex,
        lambda: f32,
        n: usize,
        per_sample: usize,
    ) -> Result<CpuBuf> {
        self.pool
            .install(|| eltwise::mixup(&x.0, &perm.0, lambda, n, per_sample))
            .map(CpuBuf)
    }

    // ---- the data path ----
    fn alloc_staging(&self, len: usize) -> Result<CpuStaging> {
        Ok(CpuStaging(vec![0.0; len]))
    }
    fn upload_staged(&self, staging: &CpuStaging, len: usize) -> Result<CpuBuf> {
        super::check_staged_len(staging.0.len(), len)?;
        Ok(CpuBuf(staging.0[..len].to_vec()))
    }
    fn upload_bytes(&self, data: &[u8]) -> Result<CpuBytes> {
        Ok(CpuBytes(data.to_vec()))
    }
    fn augment_batch(
        &self,
        images: &CpuBytes,
        indices: &CpuIndex,
        params: &CpuBuf,
        spec: AugmentSpec,
    ) -> Result<CpuBuf> {
        self.augment_batch_impl(images, indices, params, spec)
    }

    // ---- optimizer ----
    fn sgd_step(
        &self,
        param: &mut CpuBuf,
        grad: &CpuBuf,
        velocity: &mut CpuBuf,
        cfg: SgdConfig,
    ) -> Result<()> {
        self.pool
            .install(|| optim::sgd_step(&mut param.0, &grad.0, &mut velocity.0, cfg))
    }
}
