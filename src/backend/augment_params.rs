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
//! device reproduces the host's rotation bit for bit. The word offsets and codes are the shared
//! constants of [`super::abi`] (the kernel reads the same ones).

use anyhow::{bail, Result};

use super::abi::{self, *};
use crate::augment::autoaugment::{AutoOp, AutoOpKind};
use crate::augment::{self, Geometry, JitterParams, Level, LevelParams, Recipe};

pub use super::abi::{MAX_BLUR_TAPS, PARAM_WORDS};

const AUTO_OPS: [usize; 2] = [P_AUTO0, P_AUTO1];

/// Every AutoAugment kind with its device code (`abi::AUTO_*`).
pub const AUTO_KINDS: [(AutoOpKind, i32); 14] = [
    (AutoOpKind::ShearX, abi::AUTO_SHEAR_X),
    (AutoOpKind::ShearY, abi::AUTO_SHEAR_Y),
    (AutoOpKind::TranslateX, abi::AUTO_TRANSLATE_X),
    (AutoOpKind::TranslateY, abi::AUTO_TRANSLATE_Y),
    (AutoOpKind::Rotate, abi::AUTO_ROTATE),
    (AutoOpKind::Color, abi::AUTO_COLOR),
    (AutoOpKind::Posterize, abi::AUTO_POSTERIZE),
    (AutoOpKind::Solarize, abi::AUTO_SOLARIZE),
    (AutoOpKind::Contrast, abi::AUTO_CONTRAST),
    (AutoOpKind::Sharpness, abi::AUTO_SHARPNESS),
    (AutoOpKind::Brightness, abi::AUTO_BRIGHTNESS),
    (AutoOpKind::AutoContrast, abi::AUTO_AUTOCONTRAST),
    (AutoOpKind::Equalize, abi::AUTO_EQUALIZE),
    (AutoOpKind::Invert, abi::AUTO_INVERT),
];

/// The device code of an AutoAugment kind.
pub fn auto_kind_code(kind: AutoOpKind) -> i32 {
    AUTO_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|&(_, code)| code)
        .expect("AUTO_KINDS lists every kind")
}

/// Packs one sample's parameters into `row` (`PARAM_WORDS` words). Errors on what the device path
/// does not do (ImageNet's resize-centre-crop, blur kernels over `MAX_BLUR_TAPS`).
pub fn pack(params: &LevelParams, row: &mut [f32]) -> Result<()> {
    assert_eq!(row.len(), PARAM_WORDS, "a packed row has PARAM_WORDS words");
    row.fill(0.0);
    match params.geometry {
        Geometry::Identity => {}
        Geometry::PadCrop { pad, top, left } => {
            row[P_GEOMETRY] = GEOMETRY_PAD_CROP as f32;
            row[1..4].copy_from_slice(&[pad as f32, top as f32, left as f32]);
        }
        Geometry::ResizedCrop { top, left, h, w } => {
            row[P_GEOMETRY] = GEOMETRY_RESIZED_CROP as f32;
            row[1..5].copy_from_slice(&[top as f32, left as f32, h as f32, w as f32]);
        }
        Geometry::ResizeCenterCrop { .. } => bail!(
            "augment_batch: the resize-centre-crop geometry (ImageNet evaluation) has no device path"
        ),
    }
    row[P_FLIP] = params.flip as u8 as f32;
    if let Some(j) = &params.jitter {
        row[P_JITTER_ON] = 1.0;
        // The host's order codes are torchvision's (brightness, contrast, saturation, hue), as the
        // `JITTER_*` codes.
        for (k, &o) in j.order.iter().enumerate() {
            row[P_JITTER_ORDER + k] = o as f32;
        }
        row[P_BRIGHTNESS] = j.brightness;
        row[P_CONTRAST] = j.contrast;
        row[P_SATURATION] = j.saturation;
        if let Some(shift) = j.hue {
            row[P_HUE_ON] = 1.0;
            row[P_HUE] = shift;
        }
    }
    row[P_GRAYSCALE] = params.grayscale as u8 as f32;
    if let Some((size, sigma)) = params.blur {
        if size > MAX_BLUR_TAPS || size.is_multiple_of(2) {
            bail!("augment_batch: blur kernel {size} must be odd and at most {MAX_BLUR_TAPS}");
        }
        row[P_BLUR_SIZE] = size as f32;
        row[P_BLUR_SIGMA] = sigma;
        let taps = augment::ops::gaussian_kernel(size, sigma);
        row[P_BLUR_TAPS..P_BLUR_TAPS + size].copy_from_slice(&taps);
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

/// The first word of a packed row the device path cannot apply safely on an `h x w` image, or
/// `None`: the host twin of `malformed_word` in kernels/augment.cu (the same rule, so both backends
/// reject the same rows with the same `abi::ERR_AUGMENT_PARAMS` message).
pub fn malformed_word(row: &[f32], h: usize, w: usize) -> Option<usize> {
    let (h, w) = (h as f32, w as f32);
    let geometry = row[P_GEOMETRY] as i32;
    // (word, whether it is valid), in the kernel's order; NaN is never valid.
    let mut checks = Vec::with_capacity(8);
    if geometry == GEOMETRY_RESIZED_CROP {
        let (top, left, ch, cw) = (row[1], row[2], row[3], row[4]);
        checks.extend([
            (1, top >= 0.0),
            (2, left >= 0.0),
            (3, ch >= 1.0 && top + ch <= h),
            (4, cw >= 1.0 && left + cw <= w),
        ]);
    } else {
        checks.push((
            P_GEOMETRY,
            geometry == GEOMETRY_IDENTITY || geometry == GEOMETRY_PAD_CROP,
        ));
    }
    let blur = row[P_BLUR_SIZE];
    checks.push((P_BLUR_SIZE, blur >= 0.0 && blur <= MAX_BLUR_TAPS as f32));
    for slot in AUTO_OPS {
        checks.push((slot, row[slot] < 0.0 || row[slot] <= AUTO_INVERT as f32));
    }
    checks
        .into_iter()
        .find(|&(_, valid)| !valid)
        .map(|(word, _)| word)
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
    p.geometry = match g(P_GEOMETRY, "geometry")? as i32 {
        GEOMETRY_IDENTITY => Geometry::Identity,
        GEOMETRY_PAD_CROP => Geometry::PadCrop {
            pad: g(1, "pad")?,
            top: g(2, "top")?,
            left: g(3, "left")?,
        },
        GEOMETRY_RESIZED_CROP => Geometry::ResizedCrop {
            top: g(1, "top")?,
            left: g(2, "left")?,
            h: g(3, "crop height")?,
            w: g(4, "crop width")?,
        },
        other => bail!("augment_batch: unknown packed geometry {other}"),
    };
    p.flip = row[P_FLIP] != 0.0;
    if row[P_JITTER_ON] != 0.0 {
        let mut order = [0u8; 4];
        for (k, o) in order.iter_mut().enumerate() {
            *o = g(P_JITTER_ORDER + k, "jitter order")?.min(JITTER_HUE as usize) as u8;
        }
        p.jitter = Some(JitterParams {
            order,
            brightness: row[P_BRIGHTNESS],
            contrast: row[P_CONTRAST],
            saturation: row[P_SATURATION],
            hue: (row[P_HUE_ON] != 0.0).then_some(row[P_HUE]),
        });
    }
    p.grayscale = row[P_GRAYSCALE] != 0.0;
    let blur = g(P_BLUR_SIZE, "blur size")?;
    if blur > 0 {
        p.blur = Some((blur, row[P_BLUR_SIGMA]));
    }
    for (k, slot) in AUTO_OPS.iter().enumerate() {
        let code = row[*slot];
        if code >= 0.0 {
            let code_int = whole(code, "AutoAugment kind")?;
            let kind = AUTO_KINDS
                .iter()
                .find(|&&(_, c)| c as usize == code_int)
                .map(|&(kind, _)| kind)
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
/// CIFAR-family images: `[indices.len(), PARAM_WORDS]`, empty for `Level::Plain`. Sample `i`'s
/// row depends only on `(seed, epoch, indices[i], level)` (the host path's stream).
pub fn draw_batch(
    indices: &[usize],
    level: Level,
    h: usize,
    w: usize,
    seed: u64,
    epoch: usize,
) -> Result<Vec<f32>> {
    if level == Level::Plain {
        return Ok(Vec::new());
    }
    let recipe = Recipe::cifar(h, w);
    let mut out = vec![0f32; indices.len() * PARAM_WORDS];
    for (row, &i) in out.chunks_mut(PARAM_WORDS).zip(indices) {
        let mut rng = augment::level_rng(seed, epoch as u32, i as u32, level);
        let params = augment::sample_params(&recipe, level, h, w, &mut rng);
        pack(&params, row)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trips_every_level() {
        for level in Level::AUGMENTED {
            let indices: Vec<usize> = (0..200).collect();
            let packed = draw_batch(&indices, level, 32, 32, 7, 3).unwrap();
            for (row, &i) in packed.chunks(PARAM_WORDS).zip(&indices) {
                let mut rng = augment::level_rng(7, 3, i as u32, level);
                let expected =
                    augment::sample_params(&Recipe::cifar(32, 32), level, 32, 32, &mut rng);
                assert_eq!(unpack(row).unwrap(), expected, "{level:?} sample {i}");
            }
        }
        assert!(draw_batch(&[1, 2], Level::Plain, 32, 32, 0, 0)
            .unwrap()
            .is_empty());
    }
}
