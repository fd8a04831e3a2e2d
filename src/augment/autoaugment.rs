//! AutoAugment (Cubuk et al. 2019) with torchvision's semantics: per image one sub-policy is
//! picked uniformly, each of its two ops is applied with its probability, signed ops get a random
//! sign. Magnitude index `m` in 0..=9 maps onto the ranges of `augmentation.md`:
//! shear 0..0.3, translate 0..150/331 of the image side (applied as whole pixels, truncated toward
//! zero like torchvision's `int(magnitude)`), rotate 0..30 degrees, Color/Contrast/Brightness/
//! Sharpness factor `1 ± (0..0.9)`, posterize bits `8 - round(m / 2.25)`, solarize threshold
//! `256 * (1 - m / 9)` (the reference table's 256-based values). Geometric ops use nearest
//! sampling with fill 0 (torchvision's AutoAugment defaults; see `ops`).

use super::ops::{self, Image};

/// The AutoAugment operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum AutoOpKind {
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Color,
    Posterize,
    Solarize,
    Contrast,
    Sharpness,
    Brightness,
    AutoContrast,
    Equalize,
    Invert,
}

impl AutoOpKind {
    /// Whether the magnitude takes a random sign.
    pub fn signed(self) -> bool {
        use AutoOpKind::*;
        matches!(
            self,
            ShearX
                | ShearY
                | TranslateX
                | TranslateY
                | Rotate
                | Color
                | Contrast
                | Sharpness
                | Brightness
        )
    }

    /// The unsigned magnitude for index `m` (0..=9) on an `h x w` image.
    pub fn magnitude(self, m: u8, h: usize, w: usize) -> f32 {
        use AutoOpKind::*;
        let t = m as f32 / 9.0;
        match self {
            ShearX | ShearY => 0.3 * t,
            TranslateX => 150.0 / 331.0 * w as f32 * t,
            TranslateY => 150.0 / 331.0 * h as f32 * t,
            Rotate => 30.0 * t,
            Color | Contrast | Sharpness | Brightness => 0.9 * t,
            Posterize => (8 - ((m as f32) / 2.25).round() as i32) as f32,
            Solarize => 256.0 * (1.0 - t),
            AutoContrast | Equalize | Invert => 0.0,
        }
    }
}

/// One entry of a policy: (probability, op, magnitude index; 0 for ops without magnitude).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyOp {
    pub prob: f32,
    pub kind: AutoOpKind,
    pub m: u8,
}

const fn op(prob: f32, kind: AutoOpKind, m: u8) -> PolicyOp {
    PolicyOp { prob, kind, m }
}

use AutoOpKind::*;

/// torchvision `AutoAugmentPolicy.CIFAR10` (25 sub-policies, in torchvision's order).
pub const CIFAR10_POLICY: [[PolicyOp; 2]; 25] = [
    [op(0.1, Invert, 0), op(0.2, Contrast, 6)],
    [op(0.7, Rotate, 2), op(0.3, TranslateX, 9)],
    [op(0.8, Sharpness, 1), op(0.9, Sharpness, 3)],
    [op(0.5, ShearY, 8), op(0.7, TranslateY, 9)],
    [op(0.5, AutoContrast, 0), op(0.9, Equalize, 0)],
    [op(0.2, ShearY, 7), op(0.3, Posterize, 7)],
    [op(0.4, Color, 3), op(0.6, Brightness, 7)],
    [op(0.3, Sharpness, 9), op(0.7, Brightness, 9)],
    [op(0.6, Equalize, 0), op(0.5, Equalize, 0)],
    [op(0.6, Contrast, 7), op(0.6, Sharpness, 5)],
    [op(0.7, Color, 7), op(0.5, TranslateX, 8)],
    [op(0.3, Equalize, 0), op(0.4, AutoContrast, 0)],
    [op(0.4, TranslateY, 3), op(0.2, Sharpness, 6)],
    [op(0.9, Brightness, 6), op(0.2, Color, 8)],
    [op(0.5, Solarize, 2), op(0.0, Invert, 0)],
    [op(0.2, Equalize, 0), op(0.6, AutoContrast, 0)],
    [op(0.2, Equalize, 0), op(0.6, Equalize, 0)],
    [op(0.9, Color, 9), op(0.6, Equalize, 0)],
    [op(0.8, AutoContrast, 0), op(0.2, Solarize, 8)],
    [op(0.1, Brightness, 3), op(0.7, Color, 0)],
    [op(0.4, Solarize, 5), op(0.9, AutoContrast, 0)],
    [op(0.9, TranslateY, 9), op(0.7, TranslateY, 9)],
    [op(0.9, AutoContrast, 0), op(0.8, Solarize, 3)],
    [op(0.8, Equalize, 0), op(0.1, Invert, 0)],
    [op(0.7, TranslateY, 9), op(0.9, AutoContrast, 0)],
];

/// torchvision `AutoAugmentPolicy.IMAGENET` (25 sub-policies, in torchvision's order).
pub const IMAGENET_POLICY: [[PolicyOp; 2]; 25] = [
    [op(0.4, Posterize, 8), op(0.6, Rotate, 9)],
    [op(0.6, Solarize, 5), op(0.6, AutoContrast, 0)],
    [op(0.8, Equalize, 0), op(0.6, Equalize, 0)],
    [op(0.6, Posterize, 7), op(0.6, Posterize, 6)],
    [op(0.4, Equalize, 0), op(0.2, Solarize, 4)],
    [op(0.4, Equalize, 0), op(0.8, Rotate, 8)],
    [op(0.6, Solarize, 3), op(0.6, Equalize, 0)],
    [op(0.8, Posterize, 5), op(1.0, Equalize, 0)],
    [op(0.2, Rotate, 3), op(0.6, Solarize, 8)],
    [op(0.6, Equalize, 0), op(0.4, Posterize, 6)],
    [op(0.8, Rotate, 8), op(0.4, Color, 0)],
    [op(0.4, Rotate, 9), op(0.6, Equalize, 0)],
    [op(0.0, Equalize, 0), op(0.8, Equalize, 0)],
    [op(0.6, Invert, 0), op(1.0, Equalize, 0)],
    [op(0.6, Color, 4), op(1.0, Contrast, 8)],
    [op(0.8, Rotate, 8), op(1.0, Color, 2)],
    [op(0.8, Color, 8), op(0.8, Solarize, 7)],
    [op(0.4, Sharpness, 7), op(0.6, Invert, 0)],
    [op(0.6, ShearX, 5), op(1.0, Equalize, 0)],
    [op(0.4, Color, 0), op(0.6, Equalize, 0)],
    [op(0.4, Equalize, 0), op(0.2, Solarize, 4)],
    [op(0.6, Solarize, 5), op(0.6, AutoContrast, 0)],
    [op(0.6, Invert, 0), op(1.0, Equalize, 0)],
    [op(0.6, Color, 4), op(1.0, Contrast, 8)],
    [op(0.8, Equalize, 0), op(0.6, Equalize, 0)],
];

/// A decided AutoAugment op: the kind and its signed, decoded magnitude.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct AutoOp {
    pub kind: AutoOpKind,
    pub magnitude: f32,
}

/// Apply one decided op.
pub fn apply_auto_op(img: &Image, op: AutoOp) -> Image {
    let m = op.magnitude;
    match op.kind {
        ShearX => ops::shear_x(img, m),
        ShearY => ops::shear_y(img, m),
        TranslateX => ops::translate(img, m.trunc() as i32, 0),
        TranslateY => ops::translate(img, 0, m.trunc() as i32),
        Rotate => ops::rotate(img, m),
        Color => ops::saturation(img, 1.0 + m),
        Contrast => ops::contrast(img, 1.0 + m),
        Sharpness => ops::sharpness(img, 1.0 + m),
        Brightness => ops::brightness(img, 1.0 + m),
        Posterize => ops::posterize(img, m as u32),
        Solarize => ops::solarize(img, m),
        AutoContrast => ops::autocontrast(img),
        Equalize => ops::equalize(img),
        Invert => ops::invert(img),
    }
}
