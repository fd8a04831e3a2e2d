//! Multi-expert models and their layers on the CPU backend: parameter counts against hand-derived
//! formulas and torchvision's published totals, output shapes, finite-difference gradient checks
//! of whole blocks and whole networks, invariants of the shared trunk, a tiny-batch overfit, the
//! evaluation-time softmax average, and SGD over the flat parameter store.

use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::Buffers;
use ltrain::backend::{Backend, LossArgs, LossReduction, LossTargets, LossWeighting, SgdConfig};
use ltrain::model::MultiExpertNet;
use ltrain::nn::{BasicBlock, Bottleneck, Module, Nchw, ResBlock, StateMut, StateRef};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

type Be = CpuBackend;
type Buf = <CpuBackend as Buffers>::Buf;

fn backend() -> Be {
    CpuBackend::new(Some(2)).expect("cpu backend")
}

fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn axpy(x: &[f32], alpha: f32, v: &[f32]) -> Vec<f32> {
    x.iter().zip(v).map(|(a, b)| a + alpha * b).collect()
}

/// Central difference `(f(eps) - f(-eps)) / 2 eps` of `f(t) = loss(point + t * direction)`.
fn central_difference(f: &mut dyn FnMut(f32) -> f64, eps: f32) -> f64 {
    (f(eps) - f(-eps)) / (2.0 * eps as f64)
}

/// The views stacked into one `[views * n, 3, h, w]` input, as `forward_train` takes them.
fn stack(be: &Be, views: &[&Buf]) -> Buf {
    let host: Vec<f32> = views.iter().flat_map(|v| be.download(v).unwrap()).collect();
    be.upload(&host).unwrap()
}

fn relative_error(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-12)
}

/// `grad` scaled to RMS `scale`, plus `noise` times a random normal direction of RMS `scale`.
fn direction(rng: &mut StdRng, grad: &[f32], scale: f32, noise: f32) -> Vec<f32> {
    let rms = (grad.iter().map(|g| (*g as f64).powi(2)).sum::<f64>() / grad.len() as f64).sqrt();
    assert!(rms > 1e-8, "zero gradient");
    let gradient_weight = if noise > 0.0 { 0.0 } else { 1.0 };
    randn(rng, grad.len())
        .iter()
        .zip(grad)
        .map(|(r, g)| scale * (gradient_weight * g / rms as f32 + noise * r))
        .collect()
}

/// Block-level check of one tensor's gradient `grad`, with `loss(v, t)` the loss at
/// `point + t * v`, along the gradient (a large directional derivative: checks the magnitude)
/// and along random directions (checks the orientation).
///
/// A ReLU network is only piecewise smooth, and with BN coupling every unit of a channel, a
/// ReLU input within `eps` of zero is common. At `t = 0` the analytic gradient is the
/// derivative of the smooth piece the point lies in, which extends to at least one side; so
/// the gradient must match the one-sided differences of one side at two step sizes (`eps`,
/// `eps / 2`), and a side with a kink shows up as differences that disagree with it.
/// `loss_noise` is the f32 rounding noise of the loss value, which bounds how well a difference
/// at step `h` can resolve a small derivative (`loss_noise / h`). The tolerance is far below the
/// error of a formula mistake (a missing term or factor).
fn assert_block_gradient(
    what: &str,
    rng: &mut StdRng,
    grad: &[f32],
    loss_noise: f64,
    loss: &mut dyn FnMut(&[f32], f32) -> f64,
) {
    let (eps, tol) = (2e-4f32, 1.5e-2);
    let directions = [
        ("the gradient", direction(rng, grad, 1.0, 0.0)),
        ("a random direction", direction(rng, grad, 1.0, 1.0)),
        ("another random direction", direction(rng, grad, 1.0, 1.0)),
    ];
    for (kind, v) in &directions {
        let analytic = dot(grad, v);
        let l0 = loss(v, 0.0);
        let one_sided = |side: f32, loss: &mut dyn FnMut(&[f32], f32) -> f64| -> [f64; 2] {
            [eps, eps / 2.0].map(|h| (loss(v, side * h) - l0) / (side * h) as f64)
        };
        let right = one_sided(1.0, loss);
        let left = one_sided(-1.0, loss);
        let matches = |d: &[f64; 2]| {
            d.iter()
                .zip([eps, eps / 2.0])
                .all(|(d, h)| (analytic - d).abs() < tol * analytic.abs() + loss_noise / h as f64)
        };
        assert!(
            matches(&right) || matches(&left),
            "{what}: directional derivative along {kind} {analytic:.6}, one-sided finite \
             differences right {right:.6?}, left {left:.6?}"
        );
        // A direction the loss does not depend on would pass trivially.
        assert!(
            analytic.abs() > 1e-2,
            "{what}: degenerate direction ({analytic})"
        );
    }
}

/// Whole-network check of one tensor's gradient along the gradient direction. Tens of thousands of ReLUs put kinks within any usable `eps` on both sides,
/// shifting the difference by a few percent; along the gradient the directional derivative is
/// large enough for a 5% tolerance, which still catches wiring mistakes (a lost expert, a
/// wrong split offset, a missing sum: tens of percent). The layers' formulas are checked
/// tightly by the block tests.
fn assert_network_gradient(
    what: &str,
    rng: &mut StdRng,
    grad: &[f32],
    loss: &mut dyn FnMut(&[f32], f32) -> f64,
) {
    let eps = 1e-4;
    let v = direction(rng, grad, 1.0, 0.0);
    let analytic = dot(grad, &v);
    let numeric = central_difference(&mut |t| loss(&v, t), eps);
    assert!(
        relative_error(analytic, numeric) < 5e-2,
        "{what}: directional derivative along the gradient {analytic:.6}, finite difference \
         {numeric:.6}"
    );
}

// ---------------------------------------------------------------- parameter counts

/// Parameters of a CIFAR basic block: two 3x3 convolutions without bias and two BNs.
fn basic_block_params(c_in: usize, c_out: usize) -> usize {
    9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out
}

fn resnet32_expert_params(w2: usize, w3: usize, classes: usize) -> usize {
    basic_block_params(16, w2)
        + 4 * basic_block_params(w2, w2)
        + basic_block_params(w2, w3)
        + 4 * basic_block_params(w3, w3)
        + w3 * classes
        + classes
}

fn count_prefix(model: &MultiExpertNet<Be>, prefix: &str) -> usize {
    model
        .params()
        .iter()
        .filter(|p| p.name.starts_with(prefix))
        .map(|p| p.numel())
        .sum()
}

#[test]
fn resnet32_parameter_counts_match_the_pytorch_peer() {
    let be = backend();
    let model = MultiExpertNet::resnet32(&be, 10, 3, (32, 64), 0).unwrap();
    // Printed by shared/peers/torch_resnet32_3e.py.
    assert_eq!(model.num_parameters(), 1_344_814);
    assert_eq!(count_prefix(&model, "shared."), 23_824);
    for k in 0..3 {
        assert_eq!(count_prefix(&model, &format!("experts.{k}.")), 440_330);
    }
    assert_eq!(resnet32_expert_params(32, 64, 10), 440_330);
    assert_eq!(model.feature_dim(), 64);
    assert_eq!((model.experts(), model.num_classes()), (3, 10));
}

#[test]
fn resnet32_reduced_widths_parameter_counts() {
    let be = backend();
    let model = MultiExpertNet::resnet32(&be, 100, 3, (24, 48), 0).unwrap();
    let expert = resnet32_expert_params(24, 48, 100);
    assert_eq!(count_prefix(&model, "shared."), 23_824);
    assert_eq!(count_prefix(&model, "experts.1."), expert);
    assert_eq!(model.num_parameters(), 23_824 + 3 * expert);
    assert_eq!(model.feature_dim(), 48);
}

#[test]
fn resnet50_and_resnext50_match_torchvision_parameter_counts() {
    let be = backend();
    // torchvision.models.resnet50() / resnext50_32x4d(): 25,557,032 and 25,028,904 parameters.
    let r50 = MultiExpertNet::resnet50(&be, 1000, 1, 0).unwrap();
    assert_eq!(r50.num_parameters(), 25_557_032);
    assert_eq!(r50.feature_dim(), 2048);
    let rx50 = MultiExpertNet::resnext50_32x4d(&be, 1000, 1, 0).unwrap();
    assert_eq!(rx50.num_parameters(), 25_028_904);
    // Two experts share the stem, layer1 and layer2.
    let shared = count_prefix(&r50, "shared.");
    let two = MultiExpertNet::resnet50(&be, 1000, 2, 0).unwrap();
    assert_eq!(two.num_parameters(), 2 * 25_557_032 - shared);
    assert_eq!(count_prefix(&two, "experts.1."), 25_557_032 - shared);
}

fn host_state(be: &Be, model: &MultiExpertNet<Be>) -> Vec<(String, Vec<f32>)> {
    model
        .state_dict(be)
        .unwrap()
        .into_iter()
        .filter_map(|t| match t.data {
            ltrain::nn::TensorData::F32(v) => Some((t.name, v)),
            ltrain::nn::TensorData::I64(_) => None,
        })
        .collect()
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n;
    let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn initialisation_follows_pytorch_defaults_and_the_seed() {
    let be = backend();
    let model = MultiExpertNet::resnet32(&be, 10, 3, (32, 64), 5).unwrap();
    let state = host_state(&be, &model);
    let get = |name: &str| &state.iter().find(|(n, _)| n == name).unwrap().1;
    // kaiming_normal_(w): N(0, 2 / fan_in), fan_in = c_in * k * k.
    let (mean, std) = mean_std(get("experts.0.layer3.1.conv1.weight"));
    let expected = (2.0f64 / (64.0 * 9.0)).sqrt();
    assert!(
        mean.abs() < 0.05 * expected && (std / expected - 1.0).abs() < 0.03,
        "{mean} {std}"
    );
    let (_, std) = mean_std(get("shared.conv1.weight"));
    assert!((std / (2.0f64 / 27.0).sqrt() - 1.0).abs() < 0.1, "{std}");
    let (_, std) = mean_std(get("experts.2.fc.weight"));
    assert!((std / (2.0f64 / 64.0).sqrt() - 1.0).abs() < 0.1, "{std}");
    // Linear bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    let bias = get("experts.1.fc.bias");
    assert!(bias.iter().all(|b| b.abs() <= 0.125) && bias.iter().any(|b| *b != 0.0));
    for (name, value) in &state {
        let constant = |c: f32| value.iter().all(|v| *v == c);
        if name.ends_with("bn1.weight")
            || name.ends_with("bn2.weight")
            || name.ends_with("running_var")
        {
            assert!(constant(1.0), "{name}");
        } else if name.ends_with(".bias") && !name.contains("fc") || name.ends_with("running_mean")
        {
            assert!(constant(0.0), "{name}");
        }
    }
    // Experts start from different weights; the same seed gives the same model.
    assert_ne!(
        get("experts.0.layer2.0.conv1.weight"),
        get("experts.1.layer2.0.conv1.weight")
    );
    let again = MultiExpertNet::resnet32(&be, 10, 3, (32, 64), 5).unwrap();
    assert_eq!(host_state(&be, &again), state);
    let other = MultiExpertNet::resnet32(&be, 10, 3, (32, 64), 6).unwrap();
    assert_ne!(host_state(&be, &other), state);
}

// ---------------------------------------------------------------- shapes

fn shapes_of(
    be: &Be,
    model: &mut MultiExpertNet<Be>,
    views: usize,
    batch: usize,
    hw: usize,
) -> Vec<(usize, usize)> {
    let mut rng = StdRng::seed_from_u64(1);
    let xs: Vec<Buf> = (0..views)
        .map(|_| be.upload(&randn(&mut rng, batch * 3 * hw * hw)).unwrap())
        .collect();
    let refs: Vec<&Buf> = xs.iter().collect();
    let outs = model
        .forward_train(be, stack(be, &refs), views, batch, hw, hw)
        .unwrap();
    outs.iter()
        .map(|o| (be.len(&o.logits), be.len(&o.features)))
        .collect()
}

#[test]
fn output_shapes_of_every_architecture() {
    let be = backend();
    let (batch, classes) = (2, 7);
    let mut r32 = MultiExpertNet::resnet32(&be, classes, 3, (32, 64), 0).unwrap();
    assert_eq!(
        shapes_of(&be, &mut r32, 3, batch, 16),
        vec![(batch * classes, batch * 64); 3]
    );
    assert_eq!(
        shapes_of(&be, &mut r32, 1, batch, 16),
        vec![(batch * classes, batch * 64); 3]
    );
    let mut reduced = MultiExpertNet::resnet32(&be, classes, 2, (24, 48), 0).unwrap();
    assert_eq!(
        shapes_of(&be, &mut reduced, 2, batch, 8),
        vec![(batch * classes, batch * 48); 2]
    );
    let mut r50 = MultiExpertNet::resnet50(&be, classes, 2, 0).unwrap();
    assert_eq!(
        shapes_of(&be, &mut r50, 2, batch, 32),
        vec![(batch * classes, batch * 2048); 2]
    );
    let mut rx50 = MultiExpertNet::resnext50_32x4d(&be, classes, 1, 0).unwrap();
    assert_eq!(
        shapes_of(&be, &mut rx50, 1, batch, 32),
        vec![(batch * classes, batch * 2048)]
    );

    let x = be.upload(&vec![0.5; batch * 3 * 32 * 32]).unwrap();
    let eval = r50.forward_eval(&be, &x, batch, 32, 32).unwrap();
    assert_eq!(eval.logits.len(), 2);
    assert_eq!(be.len(&eval.probs), batch * classes);

    // Wrong inputs are refused with a message, not a panic.
    let err = r32
        .forward_train(&be, stack(&be, &[&x, &x]), 2, batch, 32, 32)
        .err()
        .expect("three experts need three views or one");
    assert!(
        err.to_string().contains("2 input views for 3 experts"),
        "{err}"
    );
    let err = r32
        .forward_eval(&be, &x, batch, 16, 16)
        .err()
        .expect("a 32x32 input is not 16x16");
    assert!(err.to_string().contains("needs"), "{err}");
    let mut fresh = MultiExpertNet::resnet32(&be, classes, 1, (32, 64), 0).unwrap();
    assert!(fresh.backward(&be, &[x]).is_err());
}

/// The returned features are the classifier's input: `logits = features · Wᵀ + b`.
#[test]
fn features_are_the_classifier_input() {
    let be = backend();
    let (n, c, hw) = (3, 4, 8);
    let mut model = MultiExpertNet::resnet32(&be, c, 2, (24, 48), 3).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let views: Vec<Buf> = (0..2)
        .map(|_| be.upload(&randn(&mut rng, n * 3 * hw * hw)).unwrap())
        .collect();
    let outs = model
        .forward_train(&be, stack(&be, &[&views[0], &views[1]]), 2, n, hw, hw)
        .unwrap();
    let d = model.feature_dim();
    let state = host_state(&be, &model);
    for (k, o) in outs.iter().enumerate() {
        let z = be.download(&o.features).unwrap();
        let logits = be.download(&o.logits).unwrap();
        assert_eq!(
            be.download(model.classifier_weight(k)).unwrap().len(),
            c * d
        );
        let w = &state
            .iter()
            .find(|(m, _)| *m == format!("experts.{k}.fc.weight"))
            .unwrap()
            .1;
        let b = &state
            .iter()
            .find(|(m, _)| *m == format!("experts.{k}.fc.bias"))
            .unwrap()
            .1;
        assert_eq!(be.download(model.classifier_weight(k)).unwrap(), *w);
        // Features are averages of ReLU outputs.
        assert!(z.iter().all(|v| *v >= 0.0));
        for i in 0..n {
            for j in 0..c {
                let expected = b[j] + dot(&z[i * d..(i + 1) * d], &w[j * d..(j + 1) * d]) as f32;
                assert!(
                    (logits[i * c + j] - expected).abs() < 1e-4,
                    "expert {k} ({i}, {j})"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- block gradient checks

fn block_params(block: &ResBlock<Be>, be: &Be) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    let mut out = Vec::new();
    block.visit(&mut |s| {
        if let StateRef::Param(p) = s {
            let grad = p.grad.as_ref().expect("backward filled every gradient");
            out.push((
                p.name.clone(),
                be.download(&p.value).unwrap(),
                be.download(grad).unwrap(),
            ));
        }
    });
    out
}

fn set_block_param(block: &mut ResBlock<Be>, be: &Be, index: usize, values: &[f32]) {
    let mut params = Vec::new();
    block.visit_mut(&mut |s| {
        if let StateMut::Param(p) = s {
            params.push(p)
        }
    });
    params[index].value = be.upload(values).unwrap();
}

/// `sum(block(x) * r)` with batch norm in training mode.
fn block_loss(block: &mut ResBlock<Be>, be: &Be, x: &[f32], s: Nchw, r: &[f32]) -> f64 {
    let (y, _) = block.forward_train(be, &be.upload(x).unwrap(), s).unwrap();
    dot(&be.download(&y).unwrap(), r)
}

/// Checks `dx` and every parameter gradient of `block` (batch norm in training mode, loss
/// `sum(y * r)` with a fixed random `r`) against central differences.
fn check_block(mut block: ResBlock<Be>, s: Nchw, expected_out: Nchw) {
    let be = backend();
    let mut rng = StdRng::seed_from_u64(7);
    let x = randn(&mut rng, s.len());
    let xb = be.upload(&x).unwrap();
    let (y, out) = block.forward_train(&be, &xb, s).unwrap();
    assert_eq!(out, expected_out);
    let r = randn(&mut rng, out.len());
    let mut dx = be.empty(s.len()).unwrap();
    block
        .backward_into(&be, &xb, &y, &be.upload(&r).unwrap(), &mut dx)
        .unwrap();
    let dx = be.download(&dx).unwrap();
    let params = block_params(&block, &be);
    // Rounding errors of the outputs (~1e-7 relative, amplified a few times by the convolutions
    // and BN) add up like a random walk over the terms of the loss.
    let y = be.download(&y).unwrap();
    let loss_noise = 1e-6
        * y.iter()
            .zip(&r)
            .map(|(y, r)| ((y * r) as f64).powi(2))
            .sum::<f64>()
            .sqrt();

    assert_block_gradient("input", &mut rng, &dx, loss_noise, &mut |v, t| {
        block_loss(&mut block, &be, &axpy(&x, t, v), s, &r)
    });
    for (i, (name, value, grad)) in params.iter().enumerate() {
        assert_block_gradient(name, &mut rng, grad, loss_noise, &mut |v, t| {
            set_block_param(&mut block, &be, i, &axpy(value, t, v));
            let l = block_loss(&mut block, &be, &x, s, &r);
            set_block_param(&mut block, &be, i, value);
            l
        });
    }
}

#[test]
fn basic_block_identity_shortcut_gradients() {
    let be = backend();
    let mut rng = StdRng::seed_from_u64(1);
    let block = BasicBlock::new(&be, &mut rng, "b", 4, 4, 1).unwrap();
    check_block(
        ResBlock::Basic(block),
        Nchw::new(2, 4, 6, 6),
        Nchw::new(2, 4, 6, 6),
    );
}

#[test]
fn basic_block_option_a_shortcut_gradients() {
    let be = backend();
    let mut rng = StdRng::seed_from_u64(2);
    let block = BasicBlock::new(&be, &mut rng, "b", 4, 8, 2).unwrap();
    check_block(
        ResBlock::Basic(block),
        Nchw::new(2, 4, 7, 7),
        Nchw::new(2, 8, 4, 4),
    );
}

#[test]
fn bottleneck_with_downsample_gradients() {
    let be = backend();
    let mut rng = StdRng::seed_from_u64(3);
    // planes 4 → 16 output channels; groups 2 of width 4 each (ResNeXt-style grouped 3x3).
    let block = Bottleneck::new(&be, &mut rng, "b", 8, 4, 2, 2, 64).unwrap();
    assert!(block.downsample.is_some());
    check_block(
        ResBlock::Bottleneck(block),
        Nchw::new(2, 8, 6, 6),
        Nchw::new(2, 16, 3, 3),
    );
}

#[test]
fn bottleneck_identity_gradients() {
    let be = backend();
    let mut rng = StdRng::seed_from_u64(4);
    let block = Bottleneck::new(&be, &mut rng, "b", 16, 4, 1, 1, 64).unwrap();
    assert!(block.downsample.is_none());
    check_block(
        ResBlock::Bottleneck(block),
        Nchw::new(2, 16, 5, 5),
        Nchw::new(2, 16, 5, 5),
    );
}

// ---------------------------------------------------------------- whole-network checks

/// `sum_k sum(logits_k * r_k)` of a training forward.
fn net_loss(
    model: &mut MultiExpertNet<Be>,
    be: &Be,
    views: &[Buf],
    s: Nchw,
    r: &[Vec<f32>],
) -> f64 {
    let refs: Vec<&Buf> = views.iter().collect();
    let outs = model
        .forward_train(be, stack(be, &refs), refs.len(), s.n, s.h, s.w)
        .unwrap();
    outs.iter()
        .zip(r)
        .map(|(o, r)| dot(&be.download(&o.logits).unwrap(), r))
        .sum()
}

/// Runs forward + backward with `dlogits_k = r_k`; returns every parameter's gradient.
fn net_gradients(
    model: &mut MultiExpertNet<Be>,
    be: &Be,
    views: &[Buf],
    s: Nchw,
    r: &[Vec<f32>],
) -> Vec<Vec<f32>> {
    let refs: Vec<&Buf> = views.iter().collect();
    model
        .forward_train(be, stack(be, &refs), refs.len(), s.n, s.h, s.w)
        .unwrap();
    let dlogits: Vec<Buf> = r.iter().map(|r| be.upload(r).unwrap()).collect();
    model.backward(be, &dlogits).unwrap();
    model
        .params()
        .iter()
        .map(|p| {
            be.download(p.grad.as_ref().expect("every parameter has a gradient"))
                .unwrap()
        })
        .collect()
}

/// Whole-network check of the gradients of `tensors` (loss `sum_k sum(logits_k * r_k)`).
/// Tens of thousands of ReLUs make kink crossings unavoidable at any usable `eps`, each
/// shifting a difference by a few percent; so the tolerance is loose (10%, on the median of
/// three directions) and aimed at wiring mistakes (a lost expert, a wrong split offset, a
/// missing sum), which are off by tens of percent. The layers themselves are checked
/// tightly by the block tests.
fn check_network(mut model: MultiExpertNet<Be>, views: usize, s: Nchw, tensors: &[&str]) {
    let be = backend();
    let mut rng = StdRng::seed_from_u64(11);
    let xs: Vec<Buf> = (0..views)
        .map(|_| be.upload(&randn(&mut rng, s.len())).unwrap())
        .collect();
    let c = model.num_classes();
    let r: Vec<Vec<f32>> = (0..model.experts())
        .map(|_| randn(&mut rng, s.n * c))
        .collect();
    let grads = net_gradients(&mut model, &be, &xs, s, &r);
    let names: Vec<String> = model.params().iter().map(|p| p.name.clone()).collect();
    for name in tensors {
        let i = names.iter().position(|n| n == name).expect("tensor exists");
        let value = be.download(&model.params()[i].value).unwrap();
        assert_network_gradient(name, &mut rng, &grads[i], &mut |v, t| {
            model.params_mut()[i].value = be.upload(&axpy(&value, t, v)).unwrap();
            let l = net_loss(&mut model, &be, &xs, s, &r);
            model.params_mut()[i].value = be.upload(&value).unwrap();
            l
        });
    }
}

/// Parameters whose gradients cross every part of the wiring: the first trunk convolution (all
/// experts' gradients flow into it), a trunk BN, both experts' first and last layers.
const WIRING: [&str; 6] = [
    "shared.conv1.weight",
    "shared.layer1.2.bn1.bias",
    "experts.0.layer2.0.conv1.weight",
    "experts.1.layer2.0.conv2.weight",
    "experts.1.layer3.4.bn2.weight",
    "experts.0.fc.weight",
];

#[test]
fn resnet32_two_experts_split_views_gradient_check() {
    let be = backend();
    let model = MultiExpertNet::resnet32(&be, 5, 2, (20, 24), 3).unwrap();
    check_network(model, 2, Nchw::new(3, 3, 8, 8), &WIRING);
}

#[test]
fn resnet32_two_experts_shared_view_gradient_check() {
    let be = backend();
    let model = MultiExpertNet::resnet32(&be, 5, 2, (20, 24), 4).unwrap();
    check_network(model, 1, Nchw::new(3, 3, 8, 8), &WIRING);
}

/// One view shared by all experts must give the same gradients as that view replicated per
/// expert: the trunk's batch statistics and the summed gradient are identical either way.
fn assert_single_view_matches_replicated(
    mut single: MultiExpertNet<Be>,
    mut replicated: MultiExpertNet<Be>,
    s: Nchw,
) {
    let be = backend();
    let mut rng = StdRng::seed_from_u64(5);
    let experts = single.experts();
    let x = randn(&mut rng, s.len());
    let r: Vec<Vec<f32>> = (0..experts)
        .map(|_| randn(&mut rng, s.n * single.num_classes()))
        .collect();
    let one = vec![be.upload(&x).unwrap()];
    let copies: Vec<Buf> = (0..experts).map(|_| be.upload(&x).unwrap()).collect();
    let g1 = net_gradients(&mut single, &be, &one, s, &r);
    let g3 = net_gradients(&mut replicated, &be, &copies, s, &r);
    let names: Vec<String> = single.params().iter().map(|p| p.name.clone()).collect();
    for ((a, b), name) in g1.iter().zip(&g3).zip(&names) {
        let scale = a.iter().map(|v| v.abs()).fold(0.0f32, f32::max).max(1e-6);
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= 1e-3 * scale,
            "{name}: max difference {diff} (scale {scale})"
        );
        assert!(
            a.iter().all(|v| v.is_finite()),
            "{name}: non-finite gradient"
        );
    }
}

#[test]
fn resnet32_single_view_equals_replicated_views() {
    let be = backend();
    let model = || MultiExpertNet::resnet32(&be, 6, 3, (24, 48), 9).unwrap();
    assert_single_view_matches_replicated(model(), model(), Nchw::new(4, 3, 8, 8));
}

#[test]
fn resnet50_single_view_equals_replicated_views() {
    let be = backend();
    let model = || MultiExpertNet::resnet50(&be, 3, 2, 9).unwrap();
    // 64x64 keeps layer4 at 2x2, so its batch norm sees more than one value per sample.
    assert_single_view_matches_replicated(model(), model(), Nchw::new(2, 3, 64, 64));
}

/// Expert `k` must see view `k`. With views `[a, P a]` (`P` reverses the batch) the trunk's
/// batch statistics equal those of `a` alone, so against a single-view forward of `a`, expert 0
/// must give the same logits and expert 1 the same logits reversed.
#[test]
fn each_expert_reads_its_own_view() {
    let be = backend();
    let (s, c) = (Nchw::new(4, 3, 8, 8), 5);
    let mut rng = StdRng::seed_from_u64(6);
    let mut model = MultiExpertNet::resnet32(&be, c, 2, (24, 48), 1).unwrap();
    let a = randn(&mut rng, s.len());
    let reversed: Vec<f32> = a
        .chunks(s.per_sample())
        .rev()
        .flat_map(|x| x.iter().copied())
        .collect();
    let (a, pa) = (be.upload(&a).unwrap(), be.upload(&reversed).unwrap());
    let logits = |outs: Vec<ltrain::model::ExpertOut<Be>>| -> Vec<Vec<f32>> {
        outs.iter()
            .map(|o| be.download(&o.logits).unwrap())
            .collect()
    };
    let single = logits(
        model
            .forward_train(&be, stack(&be, &[&a]), 1, s.n, s.h, s.w)
            .unwrap(),
    );
    let split = logits(
        model
            .forward_train(&be, stack(&be, &[&a, &pa]), 2, s.n, s.h, s.w)
            .unwrap(),
    );
    let reverse_rows =
        |l: &[f32]| -> Vec<f32> { l.chunks(c).rev().flat_map(|x| x.iter().copied()).collect() };
    let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-4);
    assert!(close(&split[0], &single[0]), "expert 0 did not see view 0");
    assert!(
        close(&split[1], &reverse_rows(&single[1])),
        "expert 1 did not see view 1"
    );
    assert!(
        !close(&split[1], &single[1]),
        "reversing the batch must change expert 1's rows"
    );
}

// ---------------------------------------------------------------- training and evaluation

fn accuracy(logits: &[f32], labels: &[u32], c: usize) -> f32 {
    let correct = labels
        .iter()
        .enumerate()
        .filter(|(i, &y)| {
            let row = &logits[i * c..(i + 1) * c];
            let best = (0..c).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            best == y as usize
        })
        .count();
    correct as f32 / labels.len() as f32
}

/// Trains on 8 random 16x16 images of 4 classes with plain softmax cross-entropy (the
/// backend's fused loss) and SGD; returns the step at which every expert classifies every image
/// correctly with a mean loss below 0.05 (train-mode forward), if it comes within `max_steps`.
fn steps_to_overfit(experts: usize, max_steps: usize) -> Option<usize> {
    let be = backend();
    let (n, c, hw) = (8, 4, 16);
    let mut rng = StdRng::seed_from_u64(21);
    let x = be.upload(&randn(&mut rng, n * 3 * hw * hw)).unwrap();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % c as u32).collect();
    let labels_dev = be.upload_index(&labels).unwrap();
    let mut model = MultiExpertNet::resnet32(&be, c, experts, (32, 64), 0).unwrap();
    let sgd = SgdConfig {
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
    };
    let lr = be.upload(&[0.05]).unwrap();
    for step in 0..max_steps {
        let views: Vec<&Buf> = vec![&x; experts];
        let outs = model
            .forward_train(&be, stack(&be, &views), experts, n, hw, hw)
            .unwrap();
        let mut fitted = true;
        let mut dlogits = Vec::with_capacity(experts);
        for o in &outs {
            let loss = be
                .fused_loss(LossArgs {
                    logits: &o.logits,
                    n,
                    c,
                    targets: LossTargets::Single(&labels_dev),
                    adjustment: None,
                    weighting: LossWeighting::Unit,
                    reduction: LossReduction::Mean,
                })
                .unwrap();
            let mean_loss = be.download(&loss.loss).unwrap().iter().sum::<f32>() / n as f32;
            if step == 0 {
                // Chance level: about ln 4.
                assert!(mean_loss > 0.7, "initial loss {mean_loss} is already low");
            }
            let acc = accuracy(&be.download(&o.logits).unwrap(), &labels, c);
            fitted &= acc == 1.0 && mean_loss < 0.05;
            dlogits.push(loss.dlogits);
        }
        if fitted {
            return Some(step);
        }
        model.backward(&be, &dlogits).unwrap();
        for p in model.params_mut() {
            if p.velocity.is_none() {
                p.velocity = Some(be.zeros(p.numel()).unwrap());
            }
            let grad = p.grad.as_ref().unwrap();
            be.sgd_step(&mut p.value, grad, p.velocity.as_mut().unwrap(), &lr, sgd)
                .unwrap();
        }
    }
    None
}

#[test]
fn resnet32_one_expert_overfits_a_tiny_batch() {
    let steps =
        steps_to_overfit(1, 60).expect("no 100% train accuracy (loss < 0.05) within 60 steps");
    println!("1 expert: 100% train accuracy, loss < 0.05 after {steps} steps");
}

#[test]
fn resnet32_three_experts_overfit_a_tiny_batch() {
    let steps =
        steps_to_overfit(3, 60).expect("no 100% train accuracy (loss < 0.05) within 60 steps");
    println!("3 experts: 100% train accuracy, loss < 0.05 after {steps} steps");
}

#[test]
fn eval_probabilities_are_the_mean_of_expert_softmaxes() {
    let be = backend();
    let (n, c, hw) = (5, 6, 8);
    let mut rng = StdRng::seed_from_u64(8);
    let mut model = MultiExpertNet::resnet32(&be, c, 3, (24, 48), 2).unwrap();
    // A few training forwards move the running statistics away from their initial values.
    for _ in 0..3 {
        let x = be.upload(&randn(&mut rng, n * 3 * hw * hw)).unwrap();
        model.forward_train(&be, x, 1, n, hw, hw).unwrap();
    }
    let x = be.upload(&randn(&mut rng, n * 3 * hw * hw)).unwrap();
    let out = model.forward_eval(&be, &x, n, hw, hw).unwrap();
    let probs = be.download(&out.probs).unwrap();
    let logits: Vec<Vec<f32>> = out.logits.iter().map(|l| be.download(l).unwrap()).collect();
    for i in 0..n {
        let row = &probs[i * c..(i + 1) * c];
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "row {i} sums to {sum}");
        for j in 0..c {
            let mean: f64 = logits
                .iter()
                .map(|l| {
                    let r = &l[i * c..(i + 1) * c];
                    let m = r.iter().cloned().fold(f32::MIN, f32::max) as f64;
                    let z: f64 = r.iter().map(|&v| (v as f64 - m).exp()).sum();
                    (r[j] as f64 - m).exp() / z
                })
                .sum::<f64>()
                / logits.len() as f64;
            assert!(
                (row[j] as f64 - mean).abs() < 1e-6,
                "({i}, {j}): {} vs {mean}",
                row[j]
            );
        }
    }
    // Evaluation is deterministic and leaves the model untouched.
    let again = model.forward_eval(&be, &x, n, hw, hw).unwrap();
    assert_eq!(be.download(&again.probs).unwrap(), probs);
}

/// `steps` SGD steps on a three-expert ResNet-32 after a forward and backward each: with the
/// flat store's single launch (`flat`) or one `sgd_step` per parameter on its own momentum buffer.
fn sgd_steps(flat: bool, spare_vectors: bool, steps: usize) -> Vec<Vec<f32>> {
    let be = backend();
    let (n, c, hw) = (4, 3, 8);
    let mut model = MultiExpertNet::resnet32(&be, c, 3, (24, 48), 5).unwrap();
    if spare_vectors {
        // No decay for the 1-D parameters (batch norms, biases): several runs of one flag.
        for p in model.params_mut() {
            p.decay = p.shape.len() > 1;
        }
    }
    let sgd = SgdConfig {
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: true,
    };
    let lr = be.upload(&[0.1]).unwrap();
    let mut rng = StdRng::seed_from_u64(6);
    let mut own_velocity: Vec<Buf> = Vec::new();
    for _ in 0..steps {
        let x = be.upload(&randn(&mut rng, 3 * n * 3 * hw * hw)).unwrap();
        model.forward_train(&be, x, 3, n, hw, hw).unwrap();
        let dlogits: Vec<Buf> = (0..3)
            .map(|_| be.upload(&randn(&mut rng, n * c)).unwrap())
            .collect();
        model.backward(&be, &dlogits).unwrap();
        if flat {
            ltrain::train::optimizer::sgd_update(&be, &mut model, &lr, sgd).unwrap();
        } else {
            let params = model.params_mut();
            if own_velocity.is_empty() {
                own_velocity = params
                    .iter()
                    .map(|p| be.zeros(p.numel()).unwrap())
                    .collect();
            }
            for (p, v) in params.into_iter().zip(&mut own_velocity) {
                let step = SgdConfig {
                    weight_decay: if p.decay { sgd.weight_decay } else { 0.0 },
                    ..sgd
                };
                let grad = p.grad.as_ref().unwrap();
                be.sgd_step(&mut p.value, grad, v, &lr, step).unwrap();
            }
        }
    }
    model
        .params()
        .iter()
        .map(|p| be.download(&p.value).unwrap())
        .collect()
}

#[test]
fn one_sgd_launch_over_the_flat_store_equals_a_step_per_parameter() {
    for spare_vectors in [false, true] {
        let flat = sgd_steps(true, spare_vectors, 2);
        let each = sgd_steps(false, spare_vectors, 2);
        assert_eq!(
            flat, each,
            "weight decay on 1-D parameters spared: {spare_vectors}"
        );
    }
    // And the steps do move the weights (the comparison is not between two untouched models).
    assert_ne!(sgd_steps(true, false, 1), sgd_steps(true, false, 0));
}

#[test]
fn an_optimizer_step_without_a_backward_names_the_parameter() {
    let be = backend();
    let mut model = MultiExpertNet::resnet32(&be, 3, 3, (24, 48), 5).unwrap();
    let sgd = SgdConfig {
        momentum: 0.9,
        weight_decay: 0.0,
        nesterov: false,
    };
    let lr = be.upload(&[0.1]).unwrap();
    let err = ltrain::train::optimizer::sgd_update(&be, &mut model, &lr, sgd)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shared.conv1.weight has no gradient"), "{err}");
}
