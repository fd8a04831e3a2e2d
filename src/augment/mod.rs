//! Data augmentation: the paper's three levels (weak / medium / strong) for CIFAR-sized and
//! ImageNet-LT images, with parameter sampling kept apart from pixel work so that a CUDA kernel
//! can reproduce the same draws from the same counter-based generator.
//!
//! ```no_run
//! use ltrain::augment::{self, Level, Recipe};
//! use ltrain::augment::ops::Image;
//! # let image = Image::zeros(3, 32, 32);
//! let recipe = Recipe::cifar(32, 32);
//! // one stream per (seed, epoch, sample index, level): same image whatever the thread count
//! let mut rng = augment::level_rng(/*seed*/ 0, /*epoch*/ 3, /*sample*/ 17, Level::Strong);
//! let params = augment::sample_params(&recipe, Level::Strong, image.h, image.w, &mut rng);
//! let augmented = augment::apply(&recipe, &params, &image); // u8 [3, 32, 32]
//! let mut input = vec![0f32; 3 * 32 * 32];
//! augment::normalize_into(&augmented, &recipe.normalization, &mut input); // f32 CHW
//! let (lambda, partner) = augment::draw_mixup(0, 3, /*step*/ 5, /*batch*/ 128, /*alpha*/ 1.0);
//! ```
//!
//! Parameter draws, in order, per level (`PhiloxStream` words; every draw is always taken so
//! each level consumes a fixed number of words):
//! - CIFAR weak: crop top, crop left (`below(2 pad + 1)`), flip (`u < 0.5`);
//! - CIFAR strong: weak's three, then AutoAugment: sub-policy (`below(25)`), apply u for op 0
//!   and op 1 (`u < p`), sign for op 0 and op 1 (`u < 0.5` means negative);
//! - medium (both families): RandomResizedCrop (10 attempts x [scale u, log-ratio u, top u,
//!   left u], all 40 words drawn), flip, jitter gate (`u < 0.8`), ColorJitter order (4 words:
//!   Fisher–Yates), brightness, contrast, saturation, hue factors, grayscale gate (`u < 0.2`),
//!   blur gate (`u < 0.5`), blur sigma (`U[0.1, 2.0]`);
//! - ImageNet weak: RandomResizedCrop, flip, jitter order + 4 factors (hue disabled);
//! - ImageNet strong: RandomResizedCrop, flip, then AutoAugment as for CIFAR;
//! - the plain transform (`Level::Plain`: stage 2, evaluation): no draws (CIFAR identity, ImageNet
//!   Resize + CenterCrop).

pub mod autoaugment;
pub mod ops;
pub mod rng;

use autoaugment::{AutoOp, PolicyOp};
use ops::Image;
use rand_distr::Distribution;
use rng::PhiloxStream;

/// How a view of an image is built, from the loader to the kernels: the plain transform (stage 2,
/// evaluation, the SLA table pass: normalisation only, plus ImageNet's resize and centre crop) or one
/// of the paper's three augmentation strengths (one per expert in stage 1; which expert gets which is
/// `method::plan::expert_level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    Plain,
    Weak,
    Medium,
    Strong,
}

impl Level {
    /// The three augmentation strengths, weakest first.
    pub const AUGMENTED: [Level; 3] = [Level::Weak, Level::Medium, Level::Strong];

    /// The Philox stream tag of this level (the last counter word).
    pub fn stream_tag(self) -> u32 {
        match self {
            Level::Plain => rng::STREAM_EVAL,
            Level::Weak => 1,
            Level::Medium => 2,
            Level::Strong => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Plain => "plain",
            Level::Weak => "weak",
            Level::Medium => "medium",
            Level::Strong => "strong",
        }
    }
}

/// Per-channel normalisation `(v / 255 - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The LDAM-DRW CIFAR constants.
pub const CIFAR_NORMALIZATION: Normalization = Normalization {
    mean: [0.4914, 0.4822, 0.4465],
    std: [0.2023, 0.1994, 0.2010],
};

/// The ImageNet constants.
pub const IMAGENET_NORMALIZATION: Normalization = Normalization {
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

/// Which table of levels applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Small images kept at their size (CIFAR, the synthetic set): pad-crop based levels.
    Cifar,
    /// Large images cropped/resized to the output size (ImageNet-LT).
    ImageNet,
}

/// What a level produces: family, output size and normalisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    pub family: Family,
    pub out_h: usize,
    pub out_w: usize,
    pub normalization: Normalization,
    /// Gaussian-blur kernel size of the medium level (odd).
    pub blur_kernel: usize,
}

impl Recipe {
    /// CIFAR levels on `h x w` images (output = input size); blur kernel 3, the SimCLR-CIFAR
    /// convention (about 10% of 32 px).
    pub fn cifar(h: usize, w: usize) -> Self {
        Self {
            family: Family::Cifar,
            out_h: h,
            out_w: w,
            normalization: CIFAR_NORMALIZATION,
            blur_kernel: 3,
        }
    }

    /// ImageNet-LT levels producing `size x size` crops (224 in the paper; smaller for reduced
    /// resolution). Blur kernel: 10% of the size, made odd (23 at 224, SimCLR's choice).
    pub fn imagenet(size: usize) -> Self {
        let k = (size / 10).max(3);
        Self {
            family: Family::ImageNet,
            out_h: size,
            out_w: size,
            normalization: IMAGENET_NORMALIZATION,
            blur_kernel: if k.is_multiple_of(2) { k + 1 } else { k },
        }
    }
}

/// The geometric part of a level.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Geometry {
    /// Keep the image (CIFAR evaluation).
    Identity,
    /// Zero-pad by `pad`, take the window at `(top, left)` of the padded image.
    PadCrop { pad: usize, top: usize, left: usize },
    /// Crop `[top, top + h) x [left, left + w)` and resize it bilinearly to the output size.
    ResizedCrop {
        top: usize,
        left: usize,
        h: usize,
        w: usize,
    },
    /// Resize the shorter side to `short_side` (bilinear), then take the centred output-size crop.
    ResizeCenterCrop { short_side: usize },
}

/// ColorJitter draws: the order of the four adjustments (0 brightness, 1 contrast, 2 saturation,
/// 3 hue) and their factors; `hue = None` when the hue range is 0 (then it is skipped).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct JitterParams {
    pub order: [u8; 4],
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: Option<f32>,
}

/// Everything random about one augmented sample, as plain data.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LevelParams {
    pub geometry: Geometry,
    pub flip: bool,
    pub jitter: Option<JitterParams>,
    pub grayscale: bool,
    /// Gaussian blur `(kernel size, sigma)`.
    pub blur: Option<(usize, f32)>,
    /// The AutoAugment ops that fire, in order.
    pub auto_ops: [Option<AutoOp>; 2],
}

impl LevelParams {
    pub fn identity() -> Self {
        Self {
            geometry: Geometry::Identity,
            flip: false,
            jitter: None,
            grayscale: false,
            blur: None,
            auto_ops: [None, None],
        }
    }
}

/// The Philox stream of one sample under one level in one epoch.
pub fn level_rng(seed: u64, epoch: u32, sample: u32, level: Level) -> PhiloxStream {
    PhiloxStream::new(seed, level.stream_tag(), sample, epoch)
}

/// CIFAR RandomCrop padding.
pub const CIFAR_CROP_PADDING: usize = 4;

/// torchvision `RandomResizedCrop.get_params` on an `h x w` image. Always draws 40 words (10
/// attempts x 4) so the stream position after it is fixed; the first accepted attempt wins,
/// otherwise the centred crop clamped to the ratio range.
pub fn sample_resized_crop(
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut PhiloxStream,
) -> Geometry {
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    let mut chosen = None;
    for _ in 0..10 {
        let u_scale = rng.uniform() as f64;
        let u_ratio = rng.uniform() as f64;
        let u_top = rng.uniform() as f64;
        let u_left = rng.uniform() as f64;
        if chosen.is_some() {
            continue;
        }
        let target_area = area * (scale.0 + (scale.1 - scale.0) * u_scale);
        let aspect = (log_lo + (log_hi - log_lo) * u_ratio).exp();
        let cw = (target_area * aspect).sqrt().round_ties_even() as usize;
        let ch = (target_area / aspect).sqrt().round_ties_even() as usize;
        if cw > 0 && cw <= w && ch > 0 && ch <= h {
            let top = ((h - ch + 1) as f64 * u_top) as usize;
            let left = ((w - cw + 1) as f64 * u_left) as usize;
            chosen = Some(Geometry::ResizedCrop {
                top: top.min(h - ch),
                left: left.min(w - cw),
                h: ch,
                w: cw,
            });
        }
    }
    chosen.unwrap_or_else(|| {
        let in_ratio = w as f64 / h as f64;
        let (ch, cw) = if in_ratio < ratio.0 {
            ((w as f64 / ratio.0).round_ties_even() as usize, w)
        } else if in_ratio > ratio.1 {
            (h, (h as f64 * ratio.1).round_ties_even() as usize)
        } else {
            (h, w)
        };
        Geometry::ResizedCrop {
            top: (h - ch) / 2,
            left: (w - cw) / 2,
            h: ch,
            w: cw,
        }
    })
}

/// torchvision `ColorJitter.get_params`: a random order (Fisher–Yates over 4 words), then factors
/// uniform in `[max(0, 1 - x), 1 + x]` (hue in `[-hue, hue]`).
fn sample_jitter(b: f32, c: f32, s: f32, hue: f32, rng: &mut PhiloxStream) -> JitterParams {
    let mut order = [0u8, 1, 2, 3];
    for i in (1..4).rev() {
        let j = rng.below(i as u32 + 1) as usize;
        order.swap(i, j);
    }
    let _ = rng.next_u32(); // keeps the order block at 4 words (CUDA-friendly fixed layout)
    let brightness = rng.uniform_range((1.0 - b).max(0.0), 1.0 + b);
    let contrast = rng.uniform_range((1.0 - c).max(0.0), 1.0 + c);
    let saturation = rng.uniform_range((1.0 - s).max(0.0), 1.0 + s);
    let hue_draw = rng.uniform_range(-hue, hue);
    JitterParams {
        order,
        brightness,
        contrast,
        saturation,
        hue: (hue > 0.0).then_some(hue_draw),
    }
}

/// AutoAugment draws: sub-policy, apply gates, signs; returns the ops that fire, decoded.
fn sample_auto_augment(
    policy: &[[PolicyOp; 2]; 25],
    h: usize,
    w: usize,
    rng: &mut PhiloxStream,
) -> [Option<AutoOp>; 2] {
    let index = rng.below(25) as usize;
    let gates = [rng.uniform(), rng.uniform()];
    let negative = [rng.uniform() < 0.5, rng.uniform() < 0.5];
    let mut out = [None, None];
    for (k, entry) in policy[index].iter().enumerate() {
        if gates[k] < entry.prob {
            let mut magnitude = entry.kind.magnitude(entry.m, h, w);
            if entry.kind.signed() && negative[k] {
                magnitude = -magnitude;
            }
            out[k] = Some(AutoOp {
                kind: entry.kind,
                magnitude,
            });
        }
    }
    out
}

/// The SimCLR photometric part shared by the medium levels.
fn sample_simclr_photometric(recipe: &Recipe, params: &mut LevelParams, rng: &mut PhiloxStream) {
    let jitter_on = rng.uniform() < 0.8;
    let jitter = sample_jitter(0.4, 0.4, 0.4, 0.1, rng);
    params.jitter = jitter_on.then_some(jitter);
    params.grayscale = rng.uniform() < 0.2;
    let blur_on = rng.uniform() < 0.5;
    let sigma = rng.uniform_range(0.1, 2.0);
    params.blur = blur_on.then_some((recipe.blur_kernel, sigma));
}

/// Draw the parameters of `level` for one `in_h x in_w` image.
pub fn sample_params(
    recipe: &Recipe,
    level: Level,
    in_h: usize,
    in_w: usize,
    rng: &mut PhiloxStream,
) -> LevelParams {
    let mut params = LevelParams::identity();
    if level == Level::Plain {
        if recipe.family == Family::ImageNet {
            // Resize(256) + CenterCrop(224), scaled to the output size
            let short_side =
                (recipe.out_h.max(recipe.out_w) as f64 * 256.0 / 224.0).round() as usize;
            params.geometry = Geometry::ResizeCenterCrop { short_side };
        }
        return params;
    }
    match recipe.family {
        Family::Cifar => {
            if level == Level::Medium {
                params.geometry =
                    sample_resized_crop(in_h, in_w, (0.2, 1.0), (3.0 / 4.0, 4.0 / 3.0), rng);
                params.flip = rng.uniform() < 0.5;
                sample_simclr_photometric(recipe, &mut params, rng);
            } else {
                let span = 2 * CIFAR_CROP_PADDING as u32 + 1;
                let top = rng.below(span) as usize;
                let left = rng.below(span) as usize;
                params.geometry = Geometry::PadCrop {
                    pad: CIFAR_CROP_PADDING,
                    top,
                    left,
                };
                params.flip = rng.uniform() < 0.5;
                if level == Level::Strong {
                    params.auto_ops =
                        sample_auto_augment(&autoaugment::CIFAR10_POLICY, in_h, in_w, rng);
                }
            }
        }
        Family::ImageNet => {
            params.geometry =
                sample_resized_crop(in_h, in_w, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0), rng);
            params.flip = rng.uniform() < 0.5;
            match level {
                Level::Weak => params.jitter = Some(sample_jitter(0.4, 0.4, 0.4, 0.0, rng)),
                Level::Medium => sample_simclr_photometric(recipe, &mut params, rng),
                Level::Strong => {
                    params.auto_ops = sample_auto_augment(
                        &autoaugment::IMAGENET_POLICY,
                        recipe.out_h,
                        recipe.out_w,
                        rng,
                    )
                }
                Level::Plain => {} // no draws (above)
            }
        }
    }
    params
}

/// Apply ColorJitter's adjustments in the drawn order.
pub fn apply_jitter(img: &Image, jitter: &JitterParams) -> Image {
    let mut out = img.clone();
    for &which in &jitter.order {
        out = match which {
            0 => ops::brightness(&out, jitter.brightness),
            1 => ops::contrast(&out, jitter.contrast),
            2 => ops::saturation(&out, jitter.saturation),
            _ => match jitter.hue {
                Some(shift) => ops::hue(&out, shift),
                None => out,
            },
        };
    }
    out
}

/// Apply drawn parameters: geometry, flip, jitter, grayscale, blur, AutoAugment (in that order,
/// the order of every level's table). The result has the recipe's output size for ImageNet and
/// the input size for CIFAR.
pub fn apply(recipe: &Recipe, params: &LevelParams, img: &Image) -> Image {
    let (out_h, out_w) = match recipe.family {
        Family::Cifar => (img.h, img.w),
        Family::ImageNet => (recipe.out_h, recipe.out_w),
    };
    let mut out = match params.geometry {
        Geometry::Identity => img.clone(),
        Geometry::PadCrop { pad, top, left } => ops::pad_crop(img, pad, top, left),
        Geometry::ResizedCrop { top, left, h, w } => {
            ops::resized_crop(img, top, left, h, w, out_h, out_w)
        }
        Geometry::ResizeCenterCrop { short_side } => {
            let (rh, rw) = if img.h <= img.w {
                (short_side, (short_side * img.w) / img.h)
            } else {
                ((short_side * img.h) / img.w, short_side)
            };
            let resized = ops::resize_bilinear(img, rh, rw);
            let (ch, cw) = (out_h.min(rh), out_w.min(rw));
            let top = ((rh - ch) as f64 / 2.0).round_ties_even() as usize;
            let left = ((rw - cw) as f64 / 2.0).round_ties_even() as usize;
            let cropped = ops::crop(&resized, top, left, ch, cw);
            if (ch, cw) == (out_h, out_w) {
                cropped
            } else {
                ops::resize_bilinear(&cropped, out_h, out_w)
            }
        }
    };
    if params.flip {
        out = ops::hflip(&out);
    }
    if let Some(jitter) = &params.jitter {
        out = apply_jitter(&out, jitter);
    }
    if params.grayscale {
        out = ops::grayscale(&out);
    }
    if let Some((kernel, sigma)) = params.blur {
        out = ops::gaussian_blur(&out, kernel, sigma);
    }
    for op in params.auto_ops.iter().flatten() {
        out = autoaugment::apply_auto_op(&out, *op);
    }
    out
}

/// Write `img` as normalised f32 CHW into `out` (`len = 3 * h * w`).
pub fn normalize_into(img: &Image, norm: &Normalization, out: &mut [f32]) {
    assert_eq!(img.c, 3, "normalisation expects 3 channels");
    assert_eq!(
        out.len(),
        img.data.len(),
        "output slice must hold [3, h, w]"
    );
    let hw = img.h * img.w;
    for ch in 0..3 {
        let scale = 1.0 / (255.0 * norm.std[ch]);
        let shift = norm.mean[ch] / norm.std[ch];
        for (o, &v) in out[ch * hw..(ch + 1) * hw]
            .iter_mut()
            .zip(&img.data[ch * hw..(ch + 1) * hw])
        {
            *o = v as f32 * scale - shift;
        }
    }
}

/// Mixup draws for one batch (paper Eq. 14): `lambda ~ Beta(alpha, alpha)` (alpha <= 0 disables
/// mixup: lambda 1, identity permutation) and the partner permutation of `0..batch`. A pure
/// function of (seed, epoch, step).
pub fn draw_mixup(seed: u64, epoch: u32, step: u32, batch: usize, alpha: f32) -> (f32, Vec<u32>) {
    let mut rng = PhiloxStream::new(seed, rng::STREAM_MIXUP, step, epoch);
    let mut perm: Vec<u32> = (0..batch as u32).collect();
    if alpha <= 0.0 {
        return (1.0, perm);
    }
    let lambda = match rand_distr::Beta::new(alpha as f64, alpha as f64) {
        Ok(beta) => beta.sample(&mut rng) as f32,
        Err(_) => 1.0,
    };
    // the permutation comes from its own sub-stream so it does not depend on how many words the
    // Beta sampler consumed
    let mut perm_rng = PhiloxStream::new(seed, rng::STREAM_MIXUP + 1, step, epoch);
    perm_rng.shuffle(&mut perm);
    (lambda, perm)
}
