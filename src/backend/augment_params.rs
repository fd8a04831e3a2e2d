//! The packed per-sample augmentation parameters of [`super::Backend::augment_batch`]: one row of
//! [`PARAM_WORDS`] `f32` per sample, drawn on the host by the very [`augment::sample_params`] of the
//! host path (so the parameter stream is identical by construction) and decoded on the device by
//! `kernels/augment.cu`. Only this small array travels to the device per step.
//!
//! Layout of a row (integers are stored exactly as `f32`; flags are 0 or 1):
//!
//! | words   | meaning |
//! |---------|---------|
//! | 0       | geometry: 0 identity, 1 pad-crop, 2 resized-crop |
//! | 1..=4   | pad-crop: `pad, top, left, 0`; resized-crop: `top, left, h, w` |
//! | 5       | horizontal flip |
//! | 6       | colour jitter on |
//! | 7..=10  | jitter order (0 brightness, 1 contrast, 2 saturation, 3 hue) |
//! | 11..=13 | brightness, contrast, saturation factors |
//! | 14, 15  | hue on, hue shift (turns) |
//! | 16      | grayscale |
//! | 17, 18  | blur kernel size (0: no blur), sigma |
//! | 19..=25 | blur taps (`ops::gaussian_kernel`, computed here so the device needs no `exp`) |
//! | 26..=29 | AutoAugment op 0: kind ([`auto_kind_code`], -1 none), signed magnitude, sin, cos |
//! | 30..=33 | AutoAugment op 1, the same four words |
//!
//! Sin and cos are those of the rotation angle (`magnitude` degrees), also computed here so that the
//! device reproduces the host's rotation bit for bit.

use anyhow::{bail, Result};

use super::AugmentLevel;
use crate::augment::autoaugment::{AutoOp, AutoOpKind};
use crate::augment::{self, Geometry, JitterParams, Level, LevelParams, Recipe};

/// `f32` words per sample.
pub const PARAM_WORDS: usize = 34;
/// Most taps of a packed Gaussian blur kernel.
pub const MAX_BLUR_TAPS: usize = 7;

const GEOMETRY: usize = 0;
const FLIP: usize = 5;
const JITTER_ON: usize = 6;
const JITTER_ORDER: usize = 7;
const BRIGHTNESS: usize = 11;
const CONTRAST: usize = 12;
const SATURATION: usize = 13;
const HUE_ON: usize = 14;
const HUE: usize = 15;
const GRAYSCALE: usize = 16;
const BLUR_SIZE: usize = 17;
const BLUR_SIGMA: usize = 18;
const BLUR_TAPS: usize = 19;
const AUTO_OPS: [usize; 2] = [26, 30];

/// The AutoAugment kinds in code order (the code is the position; kernels/augment.cu `AUTO_*`).
pub const AUTO_KINDS: [AutoOpKind; 14] = [
    AutoOpKind::ShearX,
    AutoOpKind::ShearY,
    AutoOpKind::TranslateX,
    AutoOpKind::TranslateY,
    AutoOpKind::Rotate,
    AutoOpKind::Color,
    AutoOpKind::Posterize,
    AutoOpKind::Solarize,
    AutoOpKind::Contrast,
    AutoOpKind::Sharpness,
    AutoOpKind::Brightness,
    AutoOpKind::AutoContrast,
    AutoOpKind::Equalize,
    AutoOpKind::Invert,
];

/// The device code of an AutoAugment kind.
pub fn auto_kind_code(kind: AutoOpKind) -> u32 {
    AUTO_KINDS.iter().position(|&k| k == kind).unwrap_or(0) as u32
}

impl From<Option<Level>> for AugmentLevel {
    fn from(level: Option<Level>) -> Self {
        match level {
            None => AugmentLevel::None,
            Some(Level::Weak) => AugmentLevel::Weak,
            Some(Level::Medium) => AugmentLevel::Medium,
            Some(Level::Strong) => AugmentLevel::Strong,
        }
    }
}

impl AugmentLevel {
    /// The augmentation level (`None` for the plain transform).
    pub fn level(self) -> Option<Level> {
        match self {
            AugmentLevel::None => None,
            AugmentLevel::Weak => Some(Level::Weak),
            AugmentLevel::Medium => Some(Level::Medium),
            AugmentLevel::Strong => Some(Level::Strong),
        }
    }
}

/// Packs one sample's parameters into `row` (`PARAM_WORDS` words). Errors on what the device path
/// does not do (ImageNet's resize-centre-crop, blur kernels over `MAX_BLUR_TAPS`).
pub fn pack(params: &LevelParams, row: &mut [f32]) -> Result<()> {
    assert_eq!(row.len(), PARAM_WORDS, "a packed row has PARAM_WORDS words");
    row.fill(0.0);
    match params.geometry {
        Geometry::Identity => {}
        Geometry::PadCrop { pad, top, left } => {
            row[GEOMETRY] = 1.0;
            row[1..4].copy_from_slice(&[pad as f32, top as f32, left as f32]);
        }
        Geometry::ResizedCrop { top, left, h, w } => {
            row[GEOMETRY] = 2.0;
            row[1..5].copy_from_slice(&[top as f32, left as f32, h as f32, w as f32]);
        }
        Geometry::ResizeCenterCrop { .. } => bail!(
            "augment_batch: the resize-centre-crop geometry (ImageNet evaluation) has no device path"
        ),
    }
    row[FLIP] = params.flip as u8 as f32;
    if let Some(j) = &params.jitter {
        row[JITTER_ON] = 1.0;
        for (k, &o) in j.order.iter().enumerate() {
            row[JITTER_ORDER + k] = o as f32;
        }
        row[BRIGHTNESS] = j.brightness;
        row[CONTRAST] = j.contrast;
        row[SATURATION] = j.saturation;
        if let Some(shift) = j.hue {
            row[HUE_ON] = 1.0;
            row[HUE] = shift;
        }
    }
    row[GRAYSCALE] = params.grayscale as u8 as f32;
    if let Some((size, sigma)) = params.blur {
        if size > MAX_BLUR_TAPS || size.is_multiple_of(2) {
            bail!("augment_batch: blur kernel {size} must be odd and at most {MAX_BLUR_TAPS}");
        }
        row[BLUR_SIZE] = size as f32;
        row[BLUR_SIGMA] = sigma;
        let taps = augment::ops::gaussian_kernel(size, sigma);
        row[BLUR_TAPS..BLUR_TAPS + size].copy_from_slice(&taps);
    }
    for (slot, op) in AUTO_OPS.iter().zip(&params.auto_ops) {
        match op {
            None => row[*slot] = -1.0,
            Some(op) => {
                let (sin, cos) = op.magnitude.to_radians().sin_cos();
                row[*slot..*slot + 4].copy_from_slice(&[
                    auto_kind_code(op.kind) as f32,
                    op.magnitude,
                    sin,
                    cos,
                ]);
            }
        }
    }
    Ok(())
}

fn whole(v: f32, what: &str) -> Result<usize> {
    if v < 0.0 || v.fract() != 0.0 || v > 1e7 {
        bail!("augment_batch: packed {what} = {v} is not a small whole number");
    }
    Ok(v as usize)
}

/// Decodes a packed row back into [`LevelParams`] (the CPU backend's `augment_batch`).
pub fn unpack(row: &[f32]) -> Result<LevelParams> {
    if row.len() != PARAM_WORDS {
        bail!(
            "augment_batch: a packed row has {} words, expected {PARAM_WORDS}",
            row.len()
        );
    }
    let mut p = LevelParams::identity();
    let g = |k: usize, what: &str| whole(row[k], what);
    p.geometry = match g(GEOMETRY, "geometry")? {
        0 => Geometry::Identity,
        1 => Geometry::PadCrop {
            pad: g(1, "pad")?,
            top: g(2, "top")?,
            left: g(3, "left")?,
        },
        2 => Geometry::ResizedCrop {
            top: g(1, "top")?,
            left: g(2, "left")?,
            h: g(3, "crop height")?,
            w: g(4, "crop width")?,
        },
        other => bail!("augment_batch: unknown packed geometry {other}"),
    };
    p.flip = row[FLIP] != 0.0;
    if row[JITTER_ON] != 0.0 {
        let mut order = [0u8; 4];
        for (k, o) in order.iter_mut().enumerate() {
            *o = g(JITTER_ORDER + k, "jitter order")?.min(3) as u8;
        }
        p.jitter = Some(JitterParams {
            order,
            brightness: row[BRIGHTNESS],
            contrast: row[CONTRAST],
            saturation: row[SATURATION],
            hue: (row[HUE_ON] != 0.0).then_some(row[HUE]),
        });
    }
    p.grayscale = row[GRAYSCALE] != 0.0;
    let blur = g(BLUR_SIZE, "blur size")?;
    if blur > 0 {
        p.blur = Some((blur, row[BLUR_SIGMA]));
    }
    for (k, slot) in AUTO_OPS.iter().enumerate() {
        let code = row[*slot];
        if code >= 0.0 {
            let kind = *AUTO_KINDS
                .get(whole(code, "AutoAugment kind")?)
                .ok_or_else(|| anyhow::anyhow!("augment_batch: unknown AutoAugment kind {code}"))?;
            p.auto_ops[k] = Some(AutoOp {
                kind,
                magnitude: row[slot + 1],
            });
        }
    }
    Ok(p)
}

/// Draws and packs the parameters of `indices` under `level` at `(seed, epoch)` for `h x w`
/// CIFAR-family images: `[indices.len(), PARAM_WORDS]`, empty for `AugmentLevel::None`. Sample
/// `i`'s row depends only on `(seed, epoch, indices[i], level)` (the host path's stream).
pub fn draw_batch(
    indices: &[usize],
    level: AugmentLevel,
    h: usize,
    w: usize,
    seed: u64,
    epoch: usize,
) -> Result<Vec<f32>> {
    let Some(level) = level.level() else {
        return Ok(Vec::new());
    };
    let recipe = Recipe::cifar(h, w);
    let mut out = vec![0f32; indices.len() * PARAM_WORDS];
    for (row, &i) in out.chunks_mut(PARAM_WORDS).zip(indices) {
        let mut rng = augment::level_rng(seed, epoch as u32, i as u32, Some(level));
        let params = augment::sample_params(&recipe, Some(level), h, w, &mut rng);
        pack(&params, row)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trips_every_level() {
        for level in [
            AugmentLevel::Weak,
            AugmentLevel::Medium,
            AugmentLevel::Strong,
        ] {
            let indices: Vec<usize> = (0..200).collect();
            let packed = draw_batch(&indices, level, 32, 32, 7, 3).unwrap();
            for (row, &i) in packed.chunks(PARAM_WORDS).zip(&indices) {
                let mut rng = augment::level_rng(7, 3, i as u32, level.level());
                let expected =
                    augment::sample_params(&Recipe::cifar(32, 32), level.level(), 32, 32, &mut rng);
                assert_eq!(unpack(row).unwrap(), expected, "{level:?} sample {i}");
            }
        }
        assert!(draw_batch(&[1, 2], AugmentLevel::None, 32, 32, 0, 0)
            .unwrap()
            .is_empty());
    }
}
