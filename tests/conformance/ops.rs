//! Checks of every op except the fused loss.

use anyhow::{ensure, Result};
use ltrain::backend::UnfusedLoss;
use ltrain::backend::{
    BatchNormAct, BatchNormBackwardAct, BatchNormBackwardInputs, BatchNormConfig, BatchNormRunning,
    BatchNormStats, BatchNormTrain, ChannelDims, Conv2dDims, HostStaging, ParamGrads, Pool2dDims,
    SgdConfig, ShortcutDims, WriteMode,
};
use ltrain::backend::{BatchNormAffine, CosineDims, LinearDims, RowDims, SampleDims};
use rand::seq::SliceRandom;

use super::reference as r;
use super::{
    assert_close, assert_exact, conv_operand, dot, down, expect_err, f64s, fd_check, gemm_operand,
    labels, nan_filled, rng, uniform, up,
};

pub fn memory<B: UnfusedLoss>(be: &B) -> Result<()> {
    let data = [1.5f32, -2.0, 3.25, 0.0, 7.0];
    let buf = up(be, &data)?;
    ensure!(
        be.len(&buf) == 5,
        "len of a 5-element upload is {}",
        be.len(&buf)
    );
    assert_exact("upload/download", &down(be, &buf)?, &f64s(&data))?;
    let zeros = be.zeros(4)?;
    assert_exact("zeros", &down(be, &zeros)?, &[0.0; 4])?;
    let idx = be.upload_index(&[3, 0, 7])?;
    ensure!(
        be.download_index(&idx)? == vec![3, 0, 7],
        "index round trip"
    );
    let mut dst = be.zeros(6)?;
    be.copy_range(&buf, 1, &mut dst, 2, 3)?;
    assert_exact(
        "copy_range",
        &down(be, &dst)?,
        &[0.0, 0.0, -2.0, 3.25, 0.0, 0.0],
    )?;
    expect_err(
        "copy_range past the source end",
        be.copy_range(&buf, 3, &mut dst, 0, 3),
    )?;
    expect_err(
        "copy_range past the destination end",
        be.copy_range(&buf, 0, &mut dst, 4, 3),
    )?;
    be.synchronize()
}

/// Views share their parent's memory both ways; ops read views like buffers and write through them in
/// place; a view past the end, or an in-place op whose buffers overlap, is an error.
pub fn views<B: UnfusedLoss>(be: &B) -> Result<()> {
    let data: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let mut buf = up(be, &data)?;
    let v = be.view(&buf, 2, 5)?;
    assert_exact("view", &down(be, &v)?, &f64s(&data[2..7]))?;
    let mut tail = be.view(&buf, 7, 5)?;
    be.write(&mut tail, &[-1.0, -2.0, -3.0, -4.0, -5.0])?;
    let mut want = f64s(&data);
    want[7..].copy_from_slice(&[-1.0, -2.0, -3.0, -4.0, -5.0]);
    assert_exact("write through a view", &down(be, &buf)?, &want)?;
    be.add_assign(&mut tail, &v)?;
    for k in 0..5 {
        want[7 + k] += want[2 + k];
    }
    assert_exact("add_assign into a view", &down(be, &buf)?, &want)?;
    ensure!(
        be.shares_memory(&buf, &v) && !be.shares_memory(&v, &tail),
        "shares_memory"
    );
    let overlapping = be.view(&buf, 4, 5)?;
    let mut v = v;
    expect_err(
        "add_assign of overlapping views",
        be.add_assign(&mut v, &overlapping),
    )?;
    expect_err("a view past the end", be.view(&buf, 8, 5))?;
    expect_err("write of the wrong length", be.write(&mut buf, &[1.0]))?;

    // Index buffers: a view reads its part, a write through it shows in the whole.
    let idx = be.upload_index(&[10, 11, 12, 13, 14, 15])?;
    let mut part = be.index_view(&idx, 2, 3)?;
    let got = be.download_index(&part)?;
    ensure!(got == [12, 13, 14], "index view: {got:?}");
    be.write_index(&mut part, &[7, 8, 9])?;
    let got = be.download_index(&idx)?;
    ensure!(
        got == [10, 11, 7, 8, 9, 15],
        "write through an index view: {got:?}"
    );
    // Staged writes: f32 values, and index words written as their bits.
    let mut staging = be.alloc_staging(5)?;
    let host = staging.as_mut_slice()?;
    host[..2].copy_from_slice(&[0.25, -3.0]);
    bytemuck::cast_slice_mut::<f32, u32>(&mut host[2..]).copy_from_slice(&[4, 5, 6]);
    let mut vals = be.zeros(2)?;
    be.write_staged(&mut vals, &staging, 0)?;
    be.write_index_staged(&mut part, &staging, 2)?;
    assert_exact("write_staged", &down(be, &vals)?, &[0.25, -3.0])?;
    let got = be.download_index(&idx)?;
    ensure!(
        got == [10, 11, 4, 5, 6, 15],
        "write_index_staged through a view: {got:?}"
    );
    expect_err(
        "a staged write past the staging",
        be.write_index_staged(&mut part, &staging, 3),
    )?;
    expect_err("an index view past the end", be.index_view(&idx, 4, 3))?;
    expect_err(
        "index write of the wrong length",
        be.write_index(&mut part, &[1]),
    )?;

    // An op on a view (the second sample of a batch) equals the op on a copy of those values.
    let (n, d_in, d_out) = (3, 4, 2);
    let mut g = rng(80);
    let x = uniform(&mut g, n * d_in, -1.0, 1.0);
    let w = uniform(&mut g, d_out * d_in, -1.0, 1.0);
    let b = uniform(&mut g, d_out, -1.0, 1.0);
    let (xb, wb, bb) = (up(be, &x)?, up(be, &w)?, up(be, &b)?);
    let row = LinearDims { n: 1, d_in, d_out };
    let on_view = be.linear_forward(&be.view(&xb, d_in, d_in)?, &wb, &bb, row)?;
    let on_copy = be.linear_forward(&up(be, &x[d_in..2 * d_in])?, &wb, &bb, row)?;
    assert_exact(
        "linear on a view",
        &down(be, &on_view)?,
        &f64s(&down(be, &on_copy)?),
    )?;

    // SGD over views of flat buffers updates the flat buffers.
    let (mut params, grads, mut velocity) = (up(be, &x)?, up(be, &w)?, be.zeros(12)?);
    let cfg = SgdConfig {
        momentum: 0.9,
        weight_decay: 0.0,
        nesterov: false,
    };
    let lr = up(be, &[0.5])?;
    let mut p_view = be.view(&params, 4, 8)?;
    let mut v_view = be.view(&velocity, 4, 8)?;
    be.sgd_step(&mut p_view, &grads, &mut v_view, &lr, cfg)?;
    let got = down(be, &params)?;
    let want: Vec<f64> = (0..12)
        .map(|i| {
            if i < 4 {
                x[i] as f64
            } else {
                x[i] as f64 - 0.5 * w[i - 4] as f64
            }
        })
        .collect();
    assert_close("sgd on views", &got, &want, 1e-7, 1e-6)?;
    let p_alias = be.view(&params, 0, 8)?;
    expect_err(
        "sgd_step with the gradient inside the parameters",
        be.sgd_step(&mut params, &p_alias, &mut velocity, &lr, cfg),
    )?;
    be.synchronize()
}

/// Staged uploads copy the requested prefix, and a staging buffer rewritten right after an upload
/// does not change what was uploaded: on a GPU the copy is still queued behind `busy` work when the
/// host asks to write again, so `as_mut_slice` must wait for it.
pub fn staging<B: UnfusedLoss>(be: &B) -> Result<()> {
    let len = 1 << 20;
    let mut staging = be.alloc_staging(len)?;
    ensure!(staging.capacity() == len, "staging capacity");
    ensure!(
        staging.as_mut_slice()?.iter().all(|&v| v == 0.0),
        "fresh staging memory is not zeroed"
    );
    let first: Vec<f32> = (0..len).map(|i| i as f32).collect();
    staging.as_mut_slice()?.copy_from_slice(&first);
    let mut busy = be.upload(&vec![1.0; 4 << 20])?;
    for _ in 0..16 {
        busy = be.scale(&busy, 2.0)?;
    }
    let prefix = len - 7;
    let uploaded = be.upload_staged(&staging, prefix)?;
    staging.as_mut_slice()?.fill(-1.0);
    let second = be.upload_staged(&staging, len)?;
    ensure!(be.len(&uploaded) == prefix, "staged upload length");
    let got = be.download(&uploaded)?;
    let changed = got.iter().zip(&first).filter(|(a, b)| a != b).count();
    ensure!(
        changed == 0,
        "{changed} of {prefix} uploaded values changed when the staging buffer was rewritten"
    );
    ensure!(
        be.download(&second)?.iter().all(|&v| v == -1.0),
        "second staged upload"
    );
    ensure!(
        be.download(&busy)?[0] == 65536.0,
        "queued work before the upload"
    );
    expect_err(
        "upload_staged past the staging capacity",
        be.upload_staged(&staging, len + 1),
    )?;
    be.synchronize()
}

/// add / add_assign / scale are single roundings (atol 0, rtol 1e-7); sum is f64-accumulated, so its
/// error is one f32 rounding of the result plus summation slack (rtol 1e-6 of sum |x|).
pub fn elementwise<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(1);
    for len in [1usize, 7, 1000, 70_001] {
        let a = uniform(&mut g, len, -2.0, 2.0);
        let b = uniform(&mut g, len, -2.0, 2.0);
        let (ab, bb) = (up(be, &a)?, up(be, &b)?);
        let want_sum: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| *x as f64 + *y as f64)
            .collect();
        let mut acc = up(be, &a)?;
        be.add_assign(&mut acc, &bb)?;
        assert_close("add_assign", &down(be, &acc)?, &want_sum, 0.0, 1e-7)?;
        let want_scaled: Vec<f64> = a.iter().map(|x| -0.37 * *x as f64).collect();
        assert_close(
            "scale",
            &down(be, &be.scale(&ab, -0.37)?)?,
            &want_scaled,
            0.0,
            1e-6,
        )?;
        // An offset makes naive f32 accumulation visibly wrong for the larger lengths.
        let shifted: Vec<f32> = a.iter().map(|x| x + 3.0).collect();
        let total: f64 = shifted.iter().map(|&x| x as f64).sum();
        let abs_total: f64 = shifted.iter().map(|&x| (x as f64).abs()).sum();
        let got = down(be, &be.sum(&up(be, &shifted)?)?)?;
        assert_close("sum", &got, &[total], 1e-6 * abs_total, 0.0)?;
    }
    let empty = be.sum(&be.zeros(0)?)?;
    assert_exact("sum of nothing", &down(be, &empty)?, &[0.0])?;
    let (a, b) = (up(be, &[1.0, 2.0])?, up(be, &[1.0])?);
    let mut a = a;
    expect_err(
        "add_assign with mismatched lengths",
        be.add_assign(&mut a, &b),
    )?;
    Ok(())
}

pub fn mixup<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(3);
    let (n, per) = (5usize, 7usize);
    let x = uniform(&mut g, n * per, -1.0, 1.0);
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(&mut g);
    let lambda = 0.3f32;
    let y = be.mixup(
        &up(be, &x)?,
        &be.upload_index(&perm)?,
        &up(be, &[lambda])?,
        SampleDims { n, per_sample: per },
    )?;
    let want: Vec<f64> = (0..n * per)
        .map(|k| {
            let (i, e) = (k / per, k % per);
            lambda as f64 * x[k] as f64
                + (1.0 - lambda as f64) * x[perm[i] as usize * per + e] as f64
        })
        .collect();
    assert_close("mixup", &down(be, &y)?, &want, 1e-7, 1e-6)?;
    let bad = be.upload_index(&[0, 1, 2, 3, 5])?;
    expect_err(
        "mixup with perm out of range",
        be.mixup(
            &up(be, &x)?,
            &bad,
            &up(be, &[0.5])?,
            SampleDims { n, per_sample: per },
        ),
    )?;
    expect_err(
        "mixup with a lambda of two values",
        be.mixup(
            &up(be, &x)?,
            &be.upload_index(&perm)?,
            &up(be, &[0.5, 0.5])?,
            SampleDims { n, per_sample: per },
        ),
    )
}

/// Shapes covering plain, strided, padded, grouped, depthwise, 1x1 (direct and strided), a 7x7 stem,
/// an even kernel, an unpadded 1x1 output and a batch larger than the weight-gradient chunk count.
pub fn conv_shapes() -> Vec<Conv2dDims> {
    let dims = |n, c_in, h, w, c_out, k, stride, pad, groups| Conv2dDims {
        n,
        c_in,
        h,
        w,
        c_out,
        k,
        stride,
        pad,
        groups,
    };
    vec![
        dims(2, 3, 5, 5, 4, 3, 1, 1, 1),
        dims(2, 4, 6, 5, 6, 3, 2, 1, 2),
        dims(3, 4, 4, 4, 4, 3, 1, 1, 4),
        dims(2, 6, 5, 5, 4, 1, 1, 0, 1),
        dims(2, 4, 7, 7, 8, 1, 2, 0, 2),
        dims(1, 3, 9, 9, 4, 7, 2, 3, 1),
        dims(2, 8, 4, 4, 8, 3, 1, 1, 4),
        dims(2, 2, 3, 3, 2, 3, 1, 0, 1),
        dims(1, 2, 5, 4, 3, 2, 2, 0, 1),
        dims(11, 4, 5, 5, 4, 3, 2, 1, 2),
    ]
}

/// Forward against the direct-loop reference: f32 dot products of at most 147 terms of O(1) values,
/// bound atol 1e-5 + rtol 1e-4.
pub fn conv_forward<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(4);
    for d in conv_shapes() {
        let x = uniform(&mut g, d.input_len(), -1.0, 1.0);
        let w = uniform(&mut g, d.weight_len(), -1.0, 1.0);
        let y = down(be, &be.conv2d_forward(&up(be, &x)?, &up(be, &w)?, d)?)?;
        assert_close(
            &format!("conv2d_forward {d:?}"),
            &y,
            &r::conv2d(&conv_operand(&x), &conv_operand(&w), d),
            1e-5,
            1e-4,
        )?;
    }
    Ok(())
}

/// Backward data/weight against the scattered-loop adjoints (all elements; atol 1e-5 + rtol 1e-4) and
/// against finite differences of `L = <r, conv(x, w)>` in f64 (the forward is linear, so central
/// differences are exact up to f64 rounding; the bound only covers the backend's f32 rounding).
pub fn conv_backward<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(5);
    for d in conv_shapes() {
        let x = uniform(&mut g, d.input_len(), -1.0, 1.0);
        let w = uniform(&mut g, d.weight_len(), -1.0, 1.0);
        let dy = uniform(&mut g, d.output_len(), -1.0, 1.0);
        let (xb, wb, dyb) = (up(be, &x)?, up(be, &w)?, up(be, &dy)?);
        let dx = down(be, &be.conv2d_backward_data(&dyb, &wb, d)?)?;
        let mut dwb = nan_filled(be, d.weight_len())?;
        be.conv2d_backward_weight(&xb, &dyb, d, &mut dwb)?;
        let dw = down(be, &dwb)?;
        let (x64, w64, dy64) = (conv_operand(&x), conv_operand(&w), conv_operand(&dy));
        let (dx_ref, dw_ref) = r::conv2d_backward(&x64, &w64, &dy64, d);
        assert_close(
            &format!("conv2d_backward_data {d:?}"),
            &dx,
            &dx_ref,
            1e-5,
            1e-4,
        )?;
        // The weight gradient sums over the batch too: up to 11 * 25 terms.
        assert_close(
            &format!("conv2d_backward_weight {d:?}"),
            &dw,
            &dw_ref,
            1e-4,
            1e-4,
        )?;
        // Added to what the destination holds (a residual block's shortcut gradient).
        let base = uniform(&mut g, d.input_len(), -1.0, 1.0);
        let mut sum = up(be, &base)?;
        be.conv2d_backward_data_into(&dyb, &wb, d, &mut sum, WriteMode::Add)?;
        let want: Vec<f64> = base
            .iter()
            .zip(&dx_ref)
            .map(|(&b, r)| b as f64 + r)
            .collect();
        assert_close(
            &format!("conv2d_backward_data added {d:?}"),
            &down(be, &sum)?,
            &want,
            1e-5,
            1e-4,
        )?;
        let fx = |x: &[f64]| dot(&dy64, &r::conv2d(x, &w64, d));
        fd_check(
            &format!("conv2d_backward_data {d:?}"),
            &dx,
            fx,
            &x64,
            &mut g,
            30,
            1e-2,
            1e-4,
            1e-4,
        )?;
        let fw = |w: &[f64]| dot(&dy64, &r::conv2d(&x64, w, d));
        fd_check(
            &format!("conv2d_backward_weight {d:?}"),
            &dw,
            fw,
            &w64,
            &mut g,
            30,
            1e-2,
            1e-4,
            1e-4,
        )?;
    }
    Ok(())
}

pub fn conv_errors<B: UnfusedLoss>(be: &B) -> Result<()> {
    let d = Conv2dDims {
        n: 1,
        c_in: 4,
        h: 4,
        w: 4,
        c_out: 4,
        k: 3,
        stride: 1,
        pad: 1,
        groups: 2,
    };
    let x = be.zeros(d.input_len())?;
    let w = be.zeros(d.weight_len())?;
    expect_err(
        "conv2d_forward with a short input",
        be.conv2d_forward(&be.zeros(10)?, &w, d),
    )?;
    expect_err(
        "conv2d_forward with a wrong weight",
        be.conv2d_forward(&x, &be.zeros(9)?, d),
    )?;
    let bad_groups = Conv2dDims { groups: 3, ..d };
    expect_err(
        "conv2d_forward with c_in not divisible by groups",
        be.conv2d_forward(&x, &w, bad_groups),
    )?;
    expect_err(
        "conv2d_backward_weight with a short dy",
        be.conv2d_backward_weight(&x, &be.zeros(3)?, d, &mut be.zeros(d.weight_len())?),
    )?;
    expect_err(
        "conv2d_backward_weight into a short dw",
        be.conv2d_backward_weight(&x, &be.zeros(d.output_len())?, d, &mut be.zeros(3)?),
    )?;
    Ok(())
}

/// The convolution with the training batch norm that follows it: `z` against the direct-loop
/// convolution, `y = relu(bn(z) + residual)` and the saved and running statistics against the f64
/// definitions on the returned `z`. The shapes cover every tile shape (c_out up to 130), groups,
/// strides, and outputs of many tiles whose statistics a device adds up across blocks.
pub fn conv_batch_norm_train<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(62);
    let cfg = BatchNormConfig::default();
    let (eps, m) = (cfg.eps as f64, cfg.momentum as f64);
    let dims = |n, c_in, hw, c_out, stride, groups| Conv2dDims {
        n,
        c_in,
        h: hw,
        w: hw,
        c_out,
        k: 3,
        stride,
        pad: 1,
        groups,
    };
    let mut shapes = conv_shapes();
    shapes.extend([
        dims(3, 3, 20, 5, 1, 1),
        dims(2, 4, 9, 40, 1, 2),
        dims(2, 2, 6, 130, 2, 1),
    ]);
    for d in shapes {
        let x = uniform(&mut g, d.input_len(), -1.0, 1.0);
        let w = uniform(&mut g, d.weight_len(), -1.0, 1.0);
        let residual = uniform(&mut g, d.output_len(), -1.0, 1.0);
        let gamma = uniform(&mut g, d.c_out, 0.5, 1.5);
        let beta = uniform(&mut g, d.c_out, -0.5, 0.5);
        let (xb, wb, rb, gb, bb) = (
            up(be, &x)?,
            up(be, &w)?,
            up(be, &residual)?,
            up(be, &gamma)?,
            up(be, &beta)?,
        );
        let (mut rm, mut rv) = (be.zeros(d.c_out)?, up(be, &vec![1.0; d.c_out])?);
        let bn = BatchNormTrain {
            affine: BatchNormAffine {
                gamma: &gb,
                beta: &bb,
            },
            running: BatchNormRunning {
                mean: &mut rm,
                var: &mut rv,
            },
            cfg,
        };
        let act = BatchNormAct {
            residual: Some(&rb),
            relu: true,
        };
        let out = be.conv2d_batch_norm_train(&xb, &wb, d, bn, act)?;
        let what = format!("conv2d_batch_norm_train {d:?}");
        let z = down(be, &out.z)?;
        assert_close(
            &format!("{what} z"),
            &z,
            &r::conv2d(&conv_operand(&x), &conv_operand(&w), d),
            1e-5,
            1e-4,
        )?;
        let cd = d.output_channels();
        let z64 = f64s(&z);
        let want_y: Vec<f64> = r::batch_norm_train(&z64, &f64s(&gamma), &f64s(&beta), cd, eps)
            .iter()
            .zip(&residual)
            .map(|(v, &r)| (v + r as f64).max(0.0))
            .collect();
        assert_close(
            &format!("{what} y"),
            &down(be, &out.y)?,
            &want_y,
            1e-5,
            1e-4,
        )?;
        let stats = r::channel_stats(&z64, cd);
        let count = (cd.n * cd.hw) as f64;
        let col = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
            stats.iter().map(|&(mean, var)| f(mean, var)).collect()
        };
        for (name, got, want) in [
            ("saved_mean", &out.saved_mean, col(&|mean, _| mean)),
            (
                "saved_inv_std",
                &out.saved_inv_std,
                col(&|_, var| 1.0 / (var + eps).sqrt()),
            ),
            ("running_mean", &rm, col(&|mean, _| m * mean)),
            (
                "running_var",
                &rv,
                col(&|_, var| (1.0 - m) + m * var * count / (count - 1.0)),
            ),
        ] {
            assert_close(
                &format!("{what} {name}"),
                &down(be, got)?,
                &want,
                1e-6,
                1e-5,
            )?;
        }
    }
    Ok(())
}

fn bn_shapes() -> Vec<ChannelDims> {
    vec![
        ChannelDims { n: 4, c: 3, hw: 5 },
        ChannelDims { n: 2, c: 5, hw: 1 },
        ChannelDims { n: 1, c: 2, hw: 9 },
        ChannelDims { n: 8, c: 2, hw: 16 },
    ]
}

/// The batch norm with what follows it fused in (`relu(bn(x) + residual)`) against the definitions, in
/// training and evaluation, and its backward against the plain one on the ReLU-masked gradient; the
/// last shape is long enough per channel that a device sums it in several slices.
pub fn batch_norm_act<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(61);
    let cfg = BatchNormConfig::default();
    let eps = cfg.eps as f64;
    let mut shapes = bn_shapes();
    shapes.push(ChannelDims {
        n: 6,
        c: 3,
        hw: 1500,
    });
    for d in shapes {
        let x = uniform(&mut g, d.len(), -2.0, 2.0);
        let residual = uniform(&mut g, d.len(), -1.0, 1.0);
        let gamma = uniform(&mut g, d.c, 0.5, 1.5);
        let beta = uniform(&mut g, d.c, -0.5, 0.5);
        let (xb, rb, gb, bb) = (
            up(be, &x)?,
            up(be, &residual)?,
            up(be, &gamma)?,
            up(be, &beta)?,
        );
        let affine = || BatchNormAffine {
            gamma: &gb,
            beta: &bb,
        };
        let act = BatchNormAct {
            residual: Some(&rb),
            relu: true,
        };
        let (mut rm, mut rv) = (be.zeros(d.c)?, up(be, &vec![1.0; d.c])?);
        let running = BatchNormRunning {
            mean: &mut rm,
            var: &mut rv,
        };
        let (y, mean, inv_std) =
            be.batch_norm_train_forward_act(&xb, affine(), running, d, cfg, act)?;
        let (x64, g64, b64) = (f64s(&x), f64s(&gamma), f64s(&beta));
        let fused = |plain: Vec<f64>| -> Vec<f64> {
            plain
                .iter()
                .zip(&residual)
                .map(|(v, &r)| (v + r as f64).max(0.0))
                .collect()
        };
        let what = format!("batch_norm_train_forward_act {d:?}");
        let y_host = down(be, &y)?;
        assert_close(
            &format!("{what} y"),
            &y_host,
            &fused(r::batch_norm_train(&x64, &g64, &b64, d, eps)),
            1e-5,
            1e-4,
        )?;
        let stats = r::channel_stats(&x64, d);
        let want_mean: Vec<f64> = stats.iter().map(|s| s.0).collect();
        assert_close(
            &format!("{what} saved_mean"),
            &down(be, &mean)?,
            &want_mean,
            1e-7,
            1e-6,
        )?;

        let running = BatchNormStats {
            mean: &rm,
            var: &rv,
        };
        let act = BatchNormAct {
            residual: Some(&rb),
            relu: true,
        };
        let ye = be.batch_norm_eval_forward_act(&xb, affine(), running, d, cfg, act)?;
        let (rm_host, rv_host) = (f64s(&down(be, &rm)?), f64s(&down(be, &rv)?));
        let want = r::batch_norm_with(&x64, &g64, &b64, d, |ch| (rm_host[ch], rv_host[ch] + eps));
        assert_close(
            &format!("batch_norm_eval_forward_act {d:?}"),
            &down(be, &ye)?,
            &fused(want),
            1e-5,
            1e-4,
        )?;

        let dy = uniform(&mut g, d.len(), -1.0, 1.0);
        let saved = BatchNormStats {
            mean: &mean,
            var: &inv_std,
        };
        let mut masked_out = nan_filled(be, d.len())?;
        let back = BatchNormBackwardAct {
            relu_output: Some(&y),
            masked_dy: Some(&mut masked_out),
        };
        let dyb = up(be, &dy)?;
        let inputs = BatchNormBackwardInputs {
            dy: &dyb,
            x: &xb,
            gamma: &gb,
            saved,
        };
        let (mut dgamma, mut dbeta) = (nan_filled(be, d.c)?, nan_filled(be, d.c)?);
        let param_grads = ParamGrads {
            weight: &mut dgamma,
            bias: &mut dbeta,
        };
        let dx = be.batch_norm_backward(inputs, d, back, param_grads)?;
        let masked: Vec<f64> = dy
            .iter()
            .zip(&y_host)
            .map(|(&g, &v)| if v > 0.0 { g as f64 } else { 0.0 })
            .collect();
        let what = format!("batch_norm_backward_act {d:?}");
        assert_exact(
            &format!("{what} masked dy"),
            &down(be, &masked_out)?,
            &masked,
        )?;
        let (dx_ref, dg_ref, db_ref) = r::batch_norm_backward(&masked, &x64, &g64, d, eps);
        assert_close(&format!("{what} dx"), &down(be, &dx)?, &dx_ref, 1e-5, 1e-4)?;
        assert_close(
            &format!("{what} dgamma"),
            &down(be, &dgamma)?,
            &dg_ref,
            1e-4,
            1e-4,
        )?;
        assert_close(
            &format!("{what} dbeta"),
            &down(be, &dbeta)?,
            &db_ref,
            1e-4,
            1e-5,
        )?;
    }
    Ok(())
}

/// Training and evaluation forward against the definitions (f64 stats, biased variance for y, unbiased
/// for running_var): y atol 1e-5 + rtol 1e-4 (normalised values are O(1)), statistics rtol 1e-5.
pub fn batch_norm<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(6);
    let cfg = BatchNormConfig::default();
    let (eps, mom) = (cfg.eps as f64, cfg.momentum as f64);
    for d in bn_shapes() {
        // A large common offset checks that the variance is not computed as E[x^2] - E[x]^2 in f32.
        let x: Vec<f32> = uniform(&mut g, d.len(), -2.0, 2.0)
            .iter()
            .map(|v| v + 100.0)
            .collect();
        let gamma = uniform(&mut g, d.c, 0.5, 1.5);
        let beta = uniform(&mut g, d.c, -0.5, 0.5);
        let rm0 = uniform(&mut g, d.c, -1.0, 1.0);
        let rv0 = uniform(&mut g, d.c, 0.5, 2.0);
        let (mut rm, mut rv) = (up(be, &rm0)?, up(be, &rv0)?);
        let (y, mean, inv_std) = be.batch_norm_train_forward(
            &up(be, &x)?,
            BatchNormAffine {
                gamma: &up(be, &gamma)?,
                beta: &up(be, &beta)?,
            },
            &mut rm,
            &mut rv,
            d,
            cfg,
        )?;
        let x64 = f64s(&x);
        let stats = r::channel_stats(&x64, d);
        let count = (d.n * d.hw) as f64;
        let what = format!("batch_norm_train_forward {d:?}");
        assert_close(
            &format!("{what} y"),
            &down(be, &y)?,
            &r::batch_norm_train(&x64, &f64s(&gamma), &f64s(&beta), d, eps),
            1e-5,
            1e-4,
        )?;
        let want_mean: Vec<f64> = stats.iter().map(|s| s.0).collect();
        let want_inv: Vec<f64> = stats.iter().map(|s| 1.0 / (s.1 + eps).sqrt()).collect();
        assert_close(
            &format!("{what} saved_mean"),
            &down(be, &mean)?,
            &want_mean,
            0.0,
            1e-6,
        )?;
        assert_close(
            &format!("{what} saved_inv_std"),
            &down(be, &inv_std)?,
            &want_inv,
            0.0,
            1e-4,
        )?;
        let want_rm: Vec<f64> = (0..d.c)
            .map(|k| (1.0 - mom) * rm0[k] as f64 + mom * stats[k].0)
            .collect();
        let want_rv: Vec<f64> = (0..d.c)
            .map(|k| (1.0 - mom) * rv0[k] as f64 + mom * stats[k].1 * count / (count - 1.0))
            .collect();
        assert_close(
            &format!("{what} running_mean"),
            &down(be, &rm)?,
            &want_rm,
            1e-6,
            1e-5,
        )?;
        assert_close(
            &format!("{what} running_var"),
            &down(be, &rv)?,
            &want_rv,
            1e-6,
            1e-4,
        )?;

        let ye = be.batch_norm_eval_forward(
            &up(be, &x)?,
            BatchNormAffine {
                gamma: &up(be, &gamma)?,
                beta: &up(be, &beta)?,
            },
            &rm,
            &rv,
            d,
            cfg,
        )?;
        let (rm1, rv1) = (down(be, &rm)?, down(be, &rv)?);
        let want = r::batch_norm_with(&x64, &f64s(&gamma), &f64s(&beta), d, |k| {
            (rm1[k] as f64, rv1[k] as f64 + eps)
        });
        assert_close(
            &format!("batch_norm_eval_forward {d:?}"),
            &down(be, &ye)?,
            &want,
            1e-4,
            1e-4,
        )?;
    }
    let d = ChannelDims { n: 1, c: 2, hw: 1 };
    let (mut rm, mut rv) = (be.zeros(2)?, be.zeros(2)?);
    let one = up(be, &[1.0, 1.0])?;
    expect_err(
        "batch_norm_train_forward with one value per channel",
        be.batch_norm_train_forward(
            &one,
            BatchNormAffine {
                gamma: &one,
                beta: &one,
            },
            &mut rm,
            &mut rv,
            d,
            cfg,
        ),
    )
}

/// Backward against the textbook formula (atol 1e-5 + rtol 1e-4) and against finite differences of
/// `L = <r, bn_train(x, gamma, beta)>` in f64 (h 1e-3: truncation ~1e-6 relative).
pub fn batch_norm_backward<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(7);
    let cfg = BatchNormConfig::default();
    let eps = cfg.eps as f64;
    for d in bn_shapes() {
        let x: Vec<f32> = uniform(&mut g, d.len(), -2.0, 2.0)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let gamma = uniform(&mut g, d.c, 0.5, 1.5);
        let beta = uniform(&mut g, d.c, -0.5, 0.5);
        let dy = uniform(&mut g, d.len(), -1.0, 1.0);
        let (mut rm, mut rv) = (be.zeros(d.c)?, up(be, &vec![1.0; d.c])?);
        let (xb, gb) = (up(be, &x)?, up(be, &gamma)?);
        let (_, mean, inv_std) = be.batch_norm_train_forward(
            &xb,
            BatchNormAffine {
                gamma: &gb,
                beta: &up(be, &beta)?,
            },
            &mut rm,
            &mut rv,
            d,
            cfg,
        )?;
        let dyb = up(be, &dy)?;
        let inputs = BatchNormBackwardInputs {
            dy: &dyb,
            x: &xb,
            gamma: &gb,
            saved: BatchNormStats {
                mean: &mean,
                var: &inv_std,
            },
        };
        let (mut dgamma, mut dbeta) = (nan_filled(be, d.c)?, nan_filled(be, d.c)?);
        let param_grads = ParamGrads {
            weight: &mut dgamma,
            bias: &mut dbeta,
        };
        let out = be.batch_norm_backward(inputs, d, BatchNormBackwardAct::none(), param_grads)?;
        let (dx, dgamma, dbeta) = (down(be, &out)?, down(be, &dgamma)?, down(be, &dbeta)?);
        let (x64, g64, b64, dy64) = (f64s(&x), f64s(&gamma), f64s(&beta), f64s(&dy));
        let (dx_ref, dg_ref, db_ref) = r::batch_norm_backward(&dy64, &x64, &g64, d, eps);
        let what = format!("batch_norm_backward {d:?}");
        assert_close(&format!("{what} dx"), &dx, &dx_ref, 1e-5, 1e-4)?;
        assert_close(&format!("{what} dgamma"), &dgamma, &dg_ref, 1e-5, 1e-4)?;
        assert_close(&format!("{what} dbeta"), &dbeta, &db_ref, 1e-5, 1e-5)?;
        let fx = |x: &[f64]| dot(&dy64, &r::batch_norm_train(x, &g64, &b64, d, eps));
        fd_check(
            &format!("{what} dx"),
            &dx,
            fx,
            &x64,
            &mut g,
            30,
            1e-3,
            1e-4,
            1e-3,
        )?;
        let fg = |gm: &[f64]| dot(&dy64, &r::batch_norm_train(&x64, gm, &b64, d, eps));
        fd_check(
            &format!("{what} dgamma"),
            &dgamma,
            fg,
            &g64,
            &mut g,
            30,
            1e-3,
            1e-4,
            1e-3,
        )?;
        let fb = |bt: &[f64]| dot(&dy64, &r::batch_norm_train(&x64, &g64, bt, d, eps));
        fd_check(
            &format!("{what} dbeta"),
            &dbeta,
            fb,
            &b64,
            &mut g,
            30,
            1e-3,
            1e-4,
            1e-3,
        )?;
    }
    Ok(())
}

/// One channel holding 1, 2, 3, 4: mean 2.5, biased variance 1.25 (normalisation), unbiased 5/3
/// (running variance). From running (0, 1): running_mean 0.25, running_var 0.9 + 0.1 * 5/3.
pub fn batch_norm_hand<B: UnfusedLoss>(be: &B) -> Result<()> {
    let d = ChannelDims { n: 2, c: 1, hw: 2 };
    let cfg = BatchNormConfig::default();
    let (mut rm, mut rv) = (up(be, &[0.0])?, up(be, &[1.0])?);
    let (y, mean, inv_std) = be.batch_norm_train_forward(
        &up(be, &[1.0, 2.0, 3.0, 4.0])?,
        BatchNormAffine {
            gamma: &up(be, &[2.0])?,
            beta: &up(be, &[0.5])?,
        },
        &mut rm,
        &mut rv,
        d,
        cfg,
    )?;
    let s = 1.0 / (1.25f64 + 1e-5).sqrt();
    let want_y: Vec<f64> = [-1.5, -0.5, 0.5, 1.5]
        .iter()
        .map(|v| 2.0 * v * s + 0.5)
        .collect();
    assert_close("batch_norm hand y", &down(be, &y)?, &want_y, 1e-6, 1e-6)?;
    assert_close(
        "batch_norm hand saved_mean",
        &down(be, &mean)?,
        &[2.5],
        0.0,
        1e-7,
    )?;
    assert_close(
        "batch_norm hand saved_inv_std",
        &down(be, &inv_std)?,
        &[s],
        0.0,
        1e-6,
    )?;
    assert_close(
        "batch_norm hand running_mean",
        &down(be, &rm)?,
        &[0.25],
        0.0,
        1e-6,
    )?;
    assert_close(
        "batch_norm hand running_var",
        &down(be, &rv)?,
        &[0.9 + 0.1 * 5.0 / 3.0],
        0.0,
        1e-6,
    )
}

fn pool_shapes() -> Vec<Pool2dDims> {
    let dims = |n, c, h, w, k, stride, pad| Pool2dDims {
        n,
        c,
        h,
        w,
        k,
        stride,
        pad,
    };
    vec![
        dims(2, 3, 6, 6, 3, 2, 1),
        dims(1, 2, 5, 5, 2, 2, 0),
        dims(2, 2, 7, 5, 3, 1, 1),
        dims(1, 1, 4, 4, 2, 1, 1),
        dims(1, 2, 9, 9, 3, 2, 1),
    ]
}

/// Max pooling is a selection, so values and argmax must match the reference exactly. Inputs drawn
/// from {-3, -2, -1, 0} exercise ties (first maximum wins) and negative windows next to the padding
/// (padding never wins); continuous negative inputs check the same without ties.
pub fn max_pool<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(8);
    for d in pool_shapes() {
        let len = d.n * d.c * d.h * d.w;
        let ties: Vec<f32> = (0..len)
            .map(|_| -(labels(&mut g, 1, 4)[0] as f32))
            .collect();
        let negative = uniform(&mut g, len, -3.0, -1.0);
        for x in [ties, negative] {
            let (y, arg) = be.max_pool_forward(&up(be, &x)?, d)?;
            let (y_ref, arg_ref) = r::max_pool(&f64s(&x), d);
            assert_exact(&format!("max_pool_forward {d:?}"), &down(be, &y)?, &y_ref)?;
            ensure!(
                be.download_index(&arg)? == arg_ref,
                "max_pool_forward {d:?}: argmax differs from the reference"
            );
        }
    }
    let bad = Pool2dDims {
        n: 1,
        c: 1,
        h: 4,
        w: 4,
        k: 2,
        stride: 1,
        pad: 2,
    };
    expect_err(
        "max_pool_forward with pad > k / 2",
        be.max_pool_forward(&be.zeros(16)?, bad),
    )?;
    Ok(())
}

/// Backward routes dy to the argmax (sums where windows overlap): exact up to the f32 additions of
/// overlapping windows (rtol 1e-6); finite differences on distinct, well-separated values.
pub fn max_pool_backward<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(9);
    for d in pool_shapes() {
        let len = d.n * d.c * d.h * d.w;
        // Distinct values 0.1 apart: no tie changes under a 1e-3 perturbation.
        let mut x: Vec<f32> = (0..len).map(|i| i as f32 * 0.1).collect();
        x.shuffle(&mut g);
        let (y, arg) = be.max_pool_forward(&up(be, &x)?, d)?;
        let dy = uniform(&mut g, be.len(&y), -1.0, 1.0);
        let dx = down(be, &be.max_pool_backward(&up(be, &dy)?, &arg, d)?)?;
        let (_, arg_ref) = r::max_pool(&f64s(&x), d);
        let mut want = vec![0.0; len];
        for (&a, &gy) in arg_ref.iter().zip(&dy) {
            want[a as usize] += gy as f64;
        }
        assert_close(&format!("max_pool_backward {d:?}"), &dx, &want, 1e-7, 1e-6)?;
        let dy64 = f64s(&dy);
        let f = |x: &[f64]| dot(&dy64, &r::max_pool(x, d).0);
        fd_check(
            &format!("max_pool_backward {d:?}"),
            &dx,
            f,
            &f64s(&x),
            &mut g,
            40,
            1e-3,
            1e-6,
            1e-6,
        )?;
    }
    Ok(())
}

/// Mean over hw (atol 1e-6 + rtol 1e-5), backward `dy / hw` and its finite differences.
pub fn global_avg_pool<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(10);
    for d in [
        ChannelDims { n: 3, c: 4, hw: 6 },
        ChannelDims { n: 1, c: 2, hw: 1 },
        ChannelDims { n: 2, c: 3, hw: 64 },
    ] {
        let x = uniform(&mut g, d.len(), -1.0, 1.0);
        let y = down(be, &be.global_avg_pool_forward(&up(be, &x)?, d)?)?;
        assert_close(
            &format!("global_avg_pool_forward {d:?}"),
            &y,
            &r::global_avg_pool(&f64s(&x), d),
            1e-6,
            1e-5,
        )?;
        let dy = uniform(&mut g, d.n * d.c, -1.0, 1.0);
        let dx = down(be, &be.global_avg_pool_backward(&up(be, &dy)?, d)?)?;
        let want: Vec<f64> = (0..d.len())
            .map(|k| dy[k / d.hw] as f64 / d.hw as f64)
            .collect();
        assert_close(
            &format!("global_avg_pool_backward {d:?}"),
            &dx,
            &want,
            1e-7,
            1e-6,
        )?;
        let dy64 = f64s(&dy);
        let f = |x: &[f64]| dot(&dy64, &r::global_avg_pool(x, d));
        fd_check(
            &format!("global_avg_pool_backward {d:?}"),
            &dx,
            f,
            &f64s(&x),
            &mut g,
            30,
            1e-2,
            1e-6,
            1e-5,
        )?;
    }
    Ok(())
}

fn shortcut_shapes() -> Vec<ShortcutDims> {
    let dims = |n, c_in, h, w, c_out, stride| ShortcutDims {
        n,
        c_in,
        h,
        w,
        c_out,
        stride,
    };
    vec![
        dims(2, 4, 6, 6, 8, 2),
        dims(1, 3, 5, 5, 5, 2),
        dims(2, 4, 5, 7, 4, 1),
        dims(1, 2, 5, 5, 6, 2),
        dims(2, 16, 8, 8, 32, 2),
    ]
}

/// The shortcut is a selection: exact forward and backward; finite differences of `<r, shortcut(x)>`.
pub fn shortcut_a<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(11);
    for d in shortcut_shapes() {
        let x = uniform(&mut g, d.n * d.c_in * d.h * d.w, -1.0, 1.0);
        let y = down(be, &be.shortcut_a_forward(&up(be, &x)?, d)?)?;
        let x64 = f64s(&x);
        assert_exact(
            &format!("shortcut_a_forward {d:?}"),
            &y,
            &r::shortcut_a(&x64, d),
        )?;
        let dy = uniform(&mut g, y.len(), -1.0, 1.0);
        let mut dxb = nan_filled(be, x.len())?;
        be.shortcut_a_backward(&up(be, &dy)?, d, &mut dxb)?;
        let dx = down(be, &dxb)?;
        let dy64 = f64s(&dy);
        let f = |x: &[f64]| dot(&dy64, &r::shortcut_a(x, d));
        // Each input element feeds at most one output: the finite difference is exact.
        fd_check(
            &format!("shortcut_a_backward {d:?}"),
            &dx,
            f,
            &x64,
            &mut g,
            10_000,
            0.5,
            1e-7,
            1e-6,
        )?;
    }
    let bad = ShortcutDims {
        n: 1,
        c_in: 4,
        h: 2,
        w: 2,
        c_out: 7,
        stride: 2,
    };
    expect_err(
        "shortcut_a_forward with an odd channel difference",
        be.shortcut_a_forward(&be.zeros(16)?, bad),
    )
}

/// `x [1, 2, 3, 3]` holding 0..18, stride 2, 4 output channels: channel 0 and 3 are zero padding,
/// channels 1 and 2 are the corners and edge midpoints `x[c, ::2, ::2]`.
pub fn shortcut_a_hand<B: UnfusedLoss>(be: &B) -> Result<()> {
    let d = ShortcutDims {
        n: 1,
        c_in: 2,
        h: 3,
        w: 3,
        c_out: 4,
        stride: 2,
    };
    let x: Vec<f32> = (0..18).map(|v| v as f32).collect();
    let y = down(be, &be.shortcut_a_forward(&up(be, &x)?, d)?)?;
    let want = [
        0., 0., 0., 0., 0., 2., 6., 8., 9., 11., 15., 17., 0., 0., 0., 0.,
    ];
    assert_exact("shortcut_a hand forward", &y, &want)?;
    let dy: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    let mut dxb = nan_filled(be, d.input_len())?;
    be.shortcut_a_backward(&up(be, &dy)?, d, &mut dxb)?;
    let dx = down(be, &dxb)?;
    let want = [
        5., 0., 6., 0., 0., 0., 7., 0., 8., 9., 0., 10., 0., 0., 0., 11., 0., 12.,
    ];
    assert_exact("shortcut_a hand backward", &dx, &want)
}

/// Linear forward/backward against the reference (atol 1e-5 + rtol 1e-4) and finite differences.
pub fn linear<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(12);
    for (n, d_in, d_out) in [(3usize, 5usize, 4usize), (1, 7, 2), (5, 1, 3), (17, 33, 10)] {
        let x = uniform(&mut g, n * d_in, -1.0, 1.0);
        let w = uniform(&mut g, d_out * d_in, -1.0, 1.0);
        let b = uniform(&mut g, d_out, -1.0, 1.0);
        let (xb, wb) = (up(be, &x)?, up(be, &w)?);
        let y = down(
            be,
            &be.linear_forward(&xb, &wb, &up(be, &b)?, LinearDims { n, d_in, d_out })?,
        )?;
        let (x64, w64, b64) = (gemm_operand(&x), gemm_operand(&w), f64s(&b));
        let what = format!("linear n {n} in {d_in} out {d_out}");
        assert_close(
            &format!("{what} forward"),
            &y,
            &r::linear(&x64, &w64, &b64, n, d_in, d_out),
            1e-5,
            1e-4,
        )?;
        let dy = uniform(&mut g, n * d_out, -1.0, 1.0);
        let dy64 = gemm_operand(&dy);
        let (mut dwb, mut dbb) = (nan_filled(be, d_out * d_in)?, nan_filled(be, d_out)?);
        let grads = ParamGrads {
            weight: &mut dwb,
            bias: &mut dbb,
        };
        let dx = be.linear_backward(
            &up(be, &dy)?,
            &xb,
            &wb,
            LinearDims { n, d_in, d_out },
            grads,
        )?;
        let (dx, dw, db) = (down(be, &dx)?, down(be, &dwb)?, down(be, &dbb)?);
        let fx = |x: &[f64]| dot(&dy64, &r::linear(x, &w64, &b64, n, d_in, d_out));
        let fw = |w: &[f64]| dot(&dy64, &r::linear(&x64, w, &b64, n, d_in, d_out));
        // The bias gradient is a plain sum of dy, no product.
        let dy_sum = f64s(&dy);
        let fb = |b: &[f64]| dot(&dy_sum, &r::linear(&x64, &w64, b, n, d_in, d_out));
        fd_check(
            &format!("{what} dx"),
            &dx,
            fx,
            &x64,
            &mut g,
            40,
            1e-2,
            1e-5,
            1e-4,
        )?;
        fd_check(
            &format!("{what} dw"),
            &dw,
            fw,
            &w64,
            &mut g,
            40,
            1e-2,
            1e-5,
            1e-4,
        )?;
        fd_check(
            &format!("{what} db"),
            &db,
            fb,
            &b64,
            &mut g,
            40,
            1e-2,
            1e-5,
            1e-4,
        )?;
    }
    expect_err(
        "linear_forward with a short bias",
        be.linear_forward(
            &be.zeros(6)?,
            &be.zeros(6)?,
            &be.zeros(1)?,
            LinearDims {
                n: 2,
                d_in: 3,
                d_out: 2,
            },
        ),
    )
}

/// Softmax/log-softmax (atol 1e-6 + rtol 1e-5, including rows around 1000 that overflow a naive exp),
/// bias, gather (exact) and row max (exact, first maximum on ties).
pub fn rows<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(13);
    for (n, c) in [(3usize, 5usize), (2, 1), (4, 10), (1, 100)] {
        let mut x = uniform(&mut g, n * c, -4.0, 4.0);
        x[0] += 1000.0; // a row with a huge entry
        let xb = up(be, &x)?;
        let logp = r::log_softmax(&f64s(&x), c);
        let p: Vec<f64> = logp.iter().map(|v| v.exp()).collect();
        assert_close(
            &format!("softmax_rows {n}x{c}"),
            &down(be, &be.softmax_rows(&xb, RowDims { n, c })?)?,
            &p,
            1e-6,
            1e-5,
        )?;
        assert_close(
            &format!("log_softmax_rows {n}x{c}"),
            &down(be, &be.log_softmax_rows(&xb, RowDims { n, c })?)?,
            &logp,
            1e-5,
            1e-5,
        )?;
        let bias = uniform(&mut g, c, -1.0, 1.0);
        let want: Vec<f64> = (0..n * c)
            .map(|k| x[k] as f64 + bias[k % c] as f64)
            .collect();
        assert_close(
            "add_row_bias",
            &down(
                be,
                &be.add_row_bias(&xb, &up(be, &bias)?, RowDims { n, c })?,
            )?,
            &want,
            0.0,
            1e-7,
        )?;
        let idx = labels(&mut g, n, c);
        let want: Vec<f64> = (0..n).map(|i| x[i * c + idx[i] as usize] as f64).collect();
        assert_exact(
            "gather_rows",
            &down(
                be,
                &be.gather_rows(&xb, &be.upload_index(&idx)?, RowDims { n, c })?,
            )?,
            &want,
        )?;
    }
    let x = up(be, &[1.0, 3.0, 3.0, -1.0, 5.0, 5.0, 5.0, 2.0])?;
    let (max, arg) = be.row_max(&x, RowDims { n: 2, c: 4 })?;
    assert_exact("row_max values", &down(be, &max)?, &[3.0, 5.0])?;
    ensure!(
        be.download_index(&arg)? == vec![1, 0],
        "row_max: ties must keep the first maximum"
    );
    expect_err(
        "gather_rows with an index out of range",
        be.gather_rows(&x, &be.upload_index(&[0, 4])?, RowDims { n: 2, c: 4 }),
    )?;
    Ok(())
}

/// Cosine in f64 reference (atol 1e-6), 0 for a zero feature or a zero classifier row; a hand value.
pub fn row_cosine<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(14);
    let (n, d, c) = (5usize, 6usize, 3usize);
    let mut z = uniform(&mut g, n * d, -1.0, 1.0);
    let mut w = uniform(&mut g, c * d, -1.0, 1.0);
    z[..d].fill(0.0); // sample 0: zero feature
    w[2 * d..].fill(0.0); // class 2: zero classifier row
    let y = [1u32, 0, 2, 1, 0];
    let cos = down(
        be,
        &be.row_cosine(
            &up(be, &z)?,
            &up(be, &w)?,
            &be.upload_index(&y)?,
            CosineDims { n, d, c },
        )?,
    )?;
    let want: Vec<f64> = (0..n)
        .map(|i| {
            let a = f64s(&z[i * d..(i + 1) * d]);
            let b = f64s(&w[y[i] as usize * d..(y[i] as usize + 1) * d]);
            let (na, nb) = (dot(&a, &a).sqrt(), dot(&b, &b).sqrt());
            if na == 0.0 || nb == 0.0 {
                0.0
            } else {
                dot(&a, &b) / (na * nb)
            }
        })
        .collect();
    ensure!(want[0] == 0.0 && want[2] == 0.0, "test setup: zero rows");
    assert_close("row_cosine", &cos, &want, 1e-6, 0.0)?;
    let hand = be.row_cosine(
        &up(be, &[1.0, 0.0])?,
        &up(be, &[1.0, 1.0])?,
        &be.upload_index(&[0])?,
        CosineDims { n: 1, d: 2, c: 1 },
    )?;
    assert_close(
        "row_cosine hand",
        &down(be, &hand)?,
        &[std::f64::consts::FRAC_1_SQRT_2],
        1e-7,
        0.0,
    )?;
    expect_err(
        "row_cosine with a label out of range",
        be.row_cosine(
            &up(be, &z)?,
            &up(be, &w)?,
            &be.upload_index(&[0, 0, 3, 0, 0])?,
            CosineDims { n, d, c },
        ),
    )
}

/// Hand-built merge: within the batch the earliest of tied samples wins; a batch maximum replaces the
/// table entry only when strictly larger (a tie with the table, or a smaller value, keeps the table).
pub fn cosmax_update_hand<B: UnfusedLoss>(be: &B) -> Result<()> {
    let (n, c) = (6usize, 3usize);
    let labels = [0u32, 0, 1, 2, 0, 1];
    // True-class logits: 1.0, 1.0 (tie, later), -5.0, 2.0 (ties the table), 0.7, -6.0.
    let true_logit = [1.0f32, 1.0, -5.0, 2.0, 0.7, -6.0];
    let mut logits = vec![9.0f32; n * c]; // large off-target logits must not count
    for i in 0..n {
        logits[i * c + labels[i] as usize] = true_logit[i];
    }
    let cos = [0.11f32, 0.22, 0.33, 0.44, 0.55, 0.66];
    let mut table_logit = up(be, &[0.5, f32::NEG_INFINITY, 2.0])?;
    let mut table_cos = up(be, &[0.1, 0.2, 0.3])?;
    let (lb, cb, yb) = (up(be, &logits)?, up(be, &cos)?, be.upload_index(&labels)?);
    be.cosmax_update(
        &lb,
        &cb,
        &yb,
        RowDims { n, c },
        &mut table_logit,
        &mut table_cos,
    )?;
    assert_exact(
        "cosmax_update logits",
        &down(be, &table_logit)?,
        &[1.0, -5.0, 2.0],
    )?;
    assert_close(
        "cosmax_update cos",
        &down(be, &table_cos)?,
        &[0.11, 0.33, 0.3],
        1e-7,
        0.0,
    )?;
    // A second batch that does not beat the table changes nothing.
    be.cosmax_update(
        &lb,
        &up(be, &[0.9; 6])?,
        &yb,
        RowDims { n, c },
        &mut table_logit,
        &mut table_cos,
    )?;
    assert_exact(
        "cosmax_update logits (not beaten)",
        &down(be, &table_logit)?,
        &[1.0, -5.0, 2.0],
    )?;
    assert_close(
        "cosmax_update cos (not beaten)",
        &down(be, &table_cos)?,
        &[0.11, 0.33, 0.3],
        1e-7,
        0.0,
    )?;
    expect_err(
        "cosmax_update with a short table",
        be.cosmax_update(
            &lb,
            &cb,
            &yb,
            RowDims { n, c },
            &mut be.zeros(2)?,
            &mut table_cos,
        ),
    )
}

/// SGD against the documented formula in f64 (rtol 1e-6), with and without Nesterov and weight decay.
pub fn sgd_step<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(15);
    for nesterov in [false, true] {
        for weight_decay in [0.0f32, 5e-4] {
            let cfg = SgdConfig {
                momentum: 0.9,
                weight_decay,
                nesterov,
            };
            let lr = up(be, &[0.1])?;
            let len = 1000;
            let p0 = uniform(&mut g, len, -1.0, 1.0);
            let v0 = uniform(&mut g, len, -0.1, 0.1);
            let grad = uniform(&mut g, len, -1.0, 1.0);
            let (mut p, mut v) = (up(be, &p0)?, up(be, &v0)?);
            be.sgd_step(&mut p, &up(be, &grad)?, &mut v, &lr, cfg)?;
            let (mut want_p, mut want_v) = (Vec::new(), Vec::new());
            for k in 0..len {
                let gk = grad[k] as f64 + weight_decay as f64 * p0[k] as f64;
                let vk = 0.9 * v0[k] as f64 + gk;
                let step = if nesterov { gk + 0.9 * vk } else { vk };
                want_p.push(p0[k] as f64 - 0.1 * step);
                want_v.push(vk);
            }
            let what = format!("sgd_step nesterov {nesterov} wd {weight_decay}");
            assert_close(
                &format!("{what} param"),
                &down(be, &p)?,
                &want_p,
                1e-6,
                1e-6,
            )?;
            assert_close(
                &format!("{what} velocity"),
                &down(be, &v)?,
                &want_v,
                1e-6,
                1e-6,
            )?;
        }
    }
    let cfg = SgdConfig {
        momentum: 0.9,
        weight_decay: 0.0,
        nesterov: false,
    };
    let lr = up(be, &[0.1])?;
    expect_err(
        "sgd_step with a short velocity",
        be.sgd_step(
            &mut be.zeros(3)?,
            &be.zeros(3)?,
            &mut be.zeros(2)?,
            &lr,
            cfg,
        ),
    )?;
    expect_err(
        "sgd_step with a learning rate of no values",
        be.sgd_step(
            &mut be.zeros(3)?,
            &be.zeros(3)?,
            &mut be.zeros(3)?,
            &be.zeros(0)?,
            cfg,
        ),
    )
}

/// p = 1, grad 0.5, v = 0.2, lr 0.1, momentum 0.9, wd 0.01, Nesterov:
/// g = 0.51, v = 0.18 + 0.51 = 0.69, step = 0.51 + 0.9 * 0.69 = 1.131, p = 0.8869.
/// Second step, grad 0: g = 0.008869, v = 0.621 + 0.008869 = 0.629869,
/// step = 0.008869 + 0.5668821 = 0.5757511, p = 0.8869 - 0.05757511 = 0.82932489.
pub fn sgd_step_hand<B: UnfusedLoss>(be: &B) -> Result<()> {
    let cfg = SgdConfig {
        momentum: 0.9,
        weight_decay: 0.01,
        nesterov: true,
    };
    let lr = up(be, &[0.1])?;
    let (mut p, mut v) = (up(be, &[1.0])?, up(be, &[0.2])?);
    be.sgd_step(&mut p, &up(be, &[0.5])?, &mut v, &lr, cfg)?;
    assert_close(
        "sgd hand step 1 param",
        &down(be, &p)?,
        &[0.8869],
        1e-6,
        0.0,
    )?;
    assert_close(
        "sgd hand step 1 velocity",
        &down(be, &v)?,
        &[0.69],
        1e-6,
        0.0,
    )?;
    be.sgd_step(&mut p, &up(be, &[0.0])?, &mut v, &lr, cfg)?;
    assert_close(
        "sgd hand step 2 param",
        &down(be, &p)?,
        &[0.82932489],
        1e-6,
        0.0,
    )?;
    assert_close(
        "sgd hand step 2 velocity",
        &down(be, &v)?,
        &[0.629869],
        1e-6,
        0.0,
    )?;
    // Without Nesterov the step is the velocity: p = 1 - 0.1 * 0.69.
    let cfg = SgdConfig {
        nesterov: false,
        ..cfg
    };
    let (mut p, mut v) = (up(be, &[1.0])?, up(be, &[0.2])?);
    be.sgd_step(&mut p, &up(be, &[0.5])?, &mut v, &lr, cfg)?;
    assert_close("sgd hand plain param", &down(be, &p)?, &[0.931], 1e-6, 0.0)?;
    Ok(())
}
