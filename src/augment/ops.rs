//! Pixel operations on u8 CHW images, one function per op. Semantics follow torchvision's
//! tensor functional ops (`torchvision.transforms.functional` on uint8 tensors) with these
//! documented choices:
//! - blends (brightness, contrast, saturation, sharpness, AutoAugment Color/Contrast/Brightness/
//!   Sharpness) compute `factor * a + (1 - factor) * b` in f32, clamp to [0, 255] and truncate, as
//!   torchvision's `_blend` and PIL's `Image.blend` both do;
//! - grayscale is ITU-R 601-2 `0.299 R + 0.587 G + 0.114 B` in exact integer arithmetic rounded to
//!   nearest (PIL's `convert("L")`: `(19595 R + 38470 G + 7471 B + 2^15) >> 16`), so a gray pixel
//!   stays itself (torchvision's tensor path uses 0.2989 and truncates, which darkens gray by one);
//! - hue, resampling and blur results are rounded to nearest;
//! - autocontrast uses exact integer arithmetic `(v - min) * 255 / (max - min)` (truncating, as the
//!   float formula of torchvision/PIL does wherever float rounding does not flip it);
//! - geometric AutoAugment ops use nearest sampling with fill 0 (torchvision's AutoAugment
//!   defaults); a pixel's continuous centre is `(x + 0.5, y + 0.5)` and the source pixel is the
//!   floor of the mapped point (PIL's convention). Shears are about the top-left corner (PIL's
//!   original AutoAugment, torchvision's `center=[0, 0]`), rotations about the image centre,
//!   positive angles counter-clockwise.

/// A u8 image `[c, h, w]`, planes row-major (the CIFAR record layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<u8>, // [c, h, w]
}

impl Image {
    pub fn zeros(c: usize, h: usize, w: usize) -> Self {
        Self {
            c,
            h,
            w,
            data: vec![0; c * h * w],
        }
    }

    pub fn from_data(c: usize, h: usize, w: usize, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), c * h * w, "image data length must be c * h * w");
        Self { c, h, w, data }
    }

    #[inline]
    pub fn at(&self, ch: usize, y: usize, x: usize) -> u8 {
        self.data[(ch * self.h + y) * self.w + x]
    }

    #[inline]
    pub fn set(&mut self, ch: usize, y: usize, x: usize, v: u8) {
        self.data[(ch * self.h + y) * self.w + x] = v;
    }

    pub fn plane(&self, ch: usize) -> &[u8] {
        &self.data[ch * self.h * self.w..(ch + 1) * self.h * self.w]
    }

    fn plane_mut(&mut self, ch: usize) -> &mut [u8] {
        let hw = self.h * self.w;
        &mut self.data[ch * hw..(ch + 1) * hw]
    }

    fn map(&self, f: impl Fn(u8) -> u8) -> Image {
        Image {
            data: self.data.iter().map(|&v| f(v)).collect(),
            ..*self
        }
    }
}

#[inline]
/// `x.floor()` for `|x| < 2^31`, without a libm call on baseline x86-64 (no SSE4.1 rounding).
fn floor(x: f32) -> f32 {
    let t = x as i32 as f32;
    if x < t {
        t - 1.0
    } else {
        t
    }
}

/// `x.rem_euclid(1.0)` for `|x| < 2^31`: the same single rounding of the exact `x - floor(x)`
/// (up to the sign of a zero), without libm's `fmodf`.
fn fract_euclid(x: f32) -> f32 {
    x - floor(x)
}

fn truncate_u8(v: f32) -> u8 {
    v.clamp(0.0, 255.0) as u8
}

#[inline]
fn round_u8(v: f32) -> u8 {
    // Half up: `as` truncates, which is the floor once the value is clamped to [0, 255] (and avoids
    // a libm `floorf` call per pixel on baseline x86-64).
    (v + 0.5).clamp(0.0, 255.0) as u8
}

// ---------------------------------------------------------------- geometry

/// Zero-pad by `pad` on every side, then take the `h x w` window whose top-left corner is at
/// `(top, left)` of the padded image (`0..=2 * pad`). `top = left = pad` is the identity.
pub fn pad_crop(img: &Image, pad: usize, top: usize, left: usize) -> Image {
    let mut out = Image::zeros(img.c, img.h, img.w);
    for ch in 0..img.c {
        for y in 0..img.h {
            let sy = (y + top) as isize - pad as isize;
            if sy < 0 || sy >= img.h as isize {
                continue;
            }
            for x in 0..img.w {
                let sx = (x + left) as isize - pad as isize;
                if sx >= 0 && sx < img.w as isize {
                    out.set(ch, y, x, img.at(ch, sy as usize, sx as usize));
                }
            }
        }
    }
    out
}

/// Mirror left-right.
pub fn hflip(img: &Image) -> Image {
    let mut out = Image::zeros(img.c, img.h, img.w);
    for ch in 0..img.c {
        for y in 0..img.h {
            for x in 0..img.w {
                out.set(ch, y, x, img.at(ch, y, img.w - 1 - x));
            }
        }
    }
    out
}

/// Crop `[top, top + h) x [left, left + w)` (must lie inside the image).
pub fn crop(img: &Image, top: usize, left: usize, h: usize, w: usize) -> Image {
    assert!(
        top + h <= img.h && left + w <= img.w,
        "crop outside the image"
    );
    let mut out = Image::zeros(img.c, h, w);
    for ch in 0..img.c {
        for y in 0..h {
            let src = (ch * img.h + top + y) * img.w + left;
            let dst = (ch * h + y) * w;
            out.data[dst..dst + w].copy_from_slice(&img.data[src..src + w]);
        }
    }
    out
}

/// Taps of a 1-D bilinear (triangle) resampling from `in_len` to `out_len` samples, antialiased
/// when shrinking (the support widens by the scale, as PIL and torchvision's `antialias=True`):
/// per output sample the first input index and the normalised weights.
fn bilinear_taps(in_len: usize, out_len: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_len as f64 / out_len as f64;
    let support_scale = scale.max(1.0);
    (0..out_len)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let lo = ((center - support_scale + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support_scale + 0.5).floor() as usize).min(in_len);
            let mut weights: Vec<f64> = (lo..hi)
                .map(|j| (1.0 - ((j as f64 + 0.5 - center) / support_scale).abs()).max(0.0))
                .collect();
            let total: f64 = weights.iter().sum();
            for wgt in &mut weights {
                *wgt /= total;
            }
            (lo, weights.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Bilinear resize to `out_h x out_w` (half-pixel centres, edge samples clamped, antialiased
/// when shrinking; float between the two passes, rounded once at the end).
pub fn resize_bilinear(img: &Image, out_h: usize, out_w: usize) -> Image {
    if out_h == img.h && out_w == img.w {
        return img.clone();
    }
    let taps_x = bilinear_taps(img.w, out_w);
    let taps_y = bilinear_taps(img.h, out_h);
    let mut out = Image::zeros(img.c, out_h, out_w);
    let mut rows = vec![0f32; img.h * out_w]; // [h, out_w] of one channel
    let mut acc = vec![0f32; out_w]; // one output row
    let mut row = vec![0f32; img.w]; // one input row as f32, converted once (taps overlap)
    for ch in 0..img.c {
        let plane = img.plane(ch);
        for y in 0..img.h {
            for (r, &v) in row.iter_mut().zip(&plane[y * img.w..(y + 1) * img.w]) {
                *r = v as f32;
            }
            for (x, (lo, weights)) in taps_x.iter().enumerate() {
                rows[y * out_w + x] = weights
                    .iter()
                    .zip(&row[*lo..])
                    .map(|(&wgt, &v)| wgt * v)
                    .sum();
            }
        }
        // Tap by tap over whole rows (vectorisable); each pixel sums its taps in order as before.
        let out_plane = out.plane_mut(ch);
        for (y, (lo, weights)) in taps_y.iter().enumerate() {
            acc.fill(0.0);
            for (k, &wgt) in weights.iter().enumerate() {
                let src = &rows[(lo + k) * out_w..(lo + k + 1) * out_w];
                for (a, &v) in acc.iter_mut().zip(src) {
                    *a += wgt * v;
                }
            }
            for (o, &a) in out_plane[y * out_w..(y + 1) * out_w].iter_mut().zip(&acc) {
                *o = round_u8(a);
            }
        }
    }
    out
}

/// torchvision `resized_crop`: crop the window, then bilinear-resize it to `out_h x out_w`.
pub fn resized_crop(
    img: &Image,
    top: usize,
    left: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Image {
    resize_bilinear(&crop(img, top, left, h, w), out_h, out_w)
}

/// Nearest-neighbour affine warp with fill 0. `inverse` maps an output point (relative to
/// `origin`) to its source point (relative to `origin`): `src = [a b; d e] * p + [c; f]`.
fn affine_nearest(img: &Image, inverse: [f32; 6], origin: (f32, f32)) -> Image {
    let [a, b, c, d, e, f] = inverse;
    let (ox, oy) = origin;
    let mut out = Image::zeros(img.c, img.h, img.w);
    for y in 0..img.h {
        for x in 0..img.w {
            let px = x as f32 + 0.5 - ox;
            let py = y as f32 + 0.5 - oy;
            let sx = (a * px + b * py + c + ox).floor();
            let sy = (d * px + e * py + f + oy).floor();
            if sx < 0.0 || sy < 0.0 || sx >= img.w as f32 || sy >= img.h as f32 {
                continue;
            }
            for ch in 0..img.c {
                out.set(ch, y, x, img.at(ch, sy as usize, sx as usize));
            }
        }
    }
    out
}

/// Horizontal shear about the top-left corner: output `(x, y)` samples `(x + s * y, y)`.
pub fn shear_x(img: &Image, s: f32) -> Image {
    affine_nearest(img, [1.0, s, 0.0, 0.0, 1.0, 0.0], (0.0, 0.0))
}

/// Vertical shear about the top-left corner: output `(x, y)` samples `(x, y + s * x)`.
pub fn shear_y(img: &Image, s: f32) -> Image {
    affine_nearest(img, [1.0, 0.0, 0.0, s, 1.0, 0.0], (0.0, 0.0))
}

/// Shift by whole pixels (positive `dx` moves content right, `dy` down), fill 0.
pub fn translate(img: &Image, dx: i32, dy: i32) -> Image {
    affine_nearest(
        img,
        [1.0, 0.0, -dx as f32, 0.0, 1.0, -dy as f32],
        (0.0, 0.0),
    )
}

/// Rotate counter-clockwise by `degrees` about the image centre, nearest, fill 0.
pub fn rotate(img: &Image, degrees: f32) -> Image {
    let theta = degrees.to_radians();
    let (sin, cos) = theta.sin_cos();
    // y points down, so a visual counter-clockwise rotation maps v to [cos sin; -sin cos] v;
    // its inverse samples the source.
    affine_nearest(
        img,
        [cos, -sin, 0.0, sin, cos, 0.0],
        (img.w as f32 * 0.5, img.h as f32 * 0.5),
    )
}

// ---------------------------------------------------------------- colour

/// ITU-R 601-2 luma of one RGB pixel, exact integer rounding (PIL `convert("L")`).
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// The luma plane `[h, w]` of a 3-channel image.
fn luma_plane(img: &Image) -> Vec<u8> {
    assert_eq!(img.c, 3, "colour ops need 3 channels");
    let (r, g, b) = (img.plane(0), img.plane(1), img.plane(2));
    (0..img.h * img.w).map(|i| luma(r[i], g[i], b[i])).collect()
}

/// Grayscale with 3 identical output channels (torchvision RandomGrayscale keeps 3 channels).
pub fn grayscale(img: &Image) -> Image {
    let gray = luma_plane(img);
    let mut data = Vec::with_capacity(img.data.len());
    for _ in 0..3 {
        data.extend_from_slice(&gray);
    }
    Image::from_data(3, img.h, img.w, data)
}

/// `factor * img + (1 - factor) * other(channel, pixel)`, clamped and truncated.
fn blend(img: &Image, factor: f32, other: impl Fn(usize, usize) -> f32) -> Image {
    let hw = img.h * img.w;
    let mut out = img.clone();
    for (ch, plane) in out.data.chunks_mut(hw.max(1)).enumerate() {
        for (i, v) in plane.iter_mut().enumerate() {
            *v = truncate_u8(factor * *v as f32 + (1.0 - factor) * other(ch, i));
        }
    }
    out
}

/// torchvision `adjust_brightness`: blend with black.
pub fn brightness(img: &Image, factor: f32) -> Image {
    blend(img, factor, |_, _| 0.0)
}

/// torchvision `adjust_contrast`: blend with the mean luma of the image.
pub fn contrast(img: &Image, factor: f32) -> Image {
    let gray = luma_plane(img);
    let mean = gray.iter().map(|&v| v as f64).sum::<f64>() as f32 / gray.len() as f32;
    blend(img, factor, |_, _| mean)
}

/// torchvision `adjust_saturation` (AutoAugment "Color"): blend with the per-pixel luma.
pub fn saturation(img: &Image, factor: f32) -> Image {
    let gray = luma_plane(img);
    blend(img, factor, |_, i| gray[i] as f32)
}

/// torchvision `adjust_hue`: rotate the hue by `shift` turns (in [-0.5, 0.5]) in HSV space.
pub fn hue(img: &Image, shift: f32) -> Image {
    assert_eq!(img.c, 3, "hue needs 3 channels");
    let hw = img.h * img.w;
    let mut out = img.clone();
    for i in 0..hw {
        let r = img.data[i] as f32 / 255.0;
        let g = img.data[hw + i] as f32 / 255.0;
        let b = img.data[2 * hw + i] as f32 / 255.0;
        // _rgb2hsv
        let maxc = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let equal = maxc == minc;
        let cr = maxc - minc;
        let s = cr / if equal { 1.0 } else { maxc };
        let cr_divisor = if equal { 1.0 } else { cr };
        let rc = (maxc - r) / cr_divisor;
        let gc = (maxc - g) / cr_divisor;
        let bc = (maxc - b) / cr_divisor;
        let h6 = if maxc == r {
            bc - gc
        } else if maxc == g {
            2.0 + rc - bc
        } else {
            4.0 + gc - rc
        };
        let h = fract_euclid(h6 / 6.0 + 1.0);
        let h = fract_euclid(h + shift);
        let v = maxc;
        // _hsv2rgb
        let sector = floor(h * 6.0);
        let f = h * 6.0 - sector;
        let sector = (sector as i32).rem_euclid(6);
        let p = (v * (1.0 - s)).clamp(0.0, 1.0);
        let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
        let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
        let (r2, g2, b2) = match sector {
            0 => (v, t, p),
            1 => (q, v, p),
            2 => (p, v, t),
            3 => (p, q, v),
            4 => (t, p, v),
            _ => (v, p, q),
        };
        out.data[i] = round_u8(r2 * 255.0);
        out.data[hw + i] = round_u8(g2 * 255.0);
        out.data[2 * hw + i] = round_u8(b2 * 255.0);
    }
    out
}

/// torchvision Gaussian kernel: taps at `-(k-1)/2 ..= (k-1)/2`, `exp(-x^2 / (2 sigma^2))`, normalised.
pub fn gaussian_kernel(kernel_size: usize, sigma: f32) -> Vec<f32> {
    let half = (kernel_size as f32 - 1.0) * 0.5;
    let raw: Vec<f32> = (0..kernel_size)
        .map(|i| {
            let x = i as f32 - half;
            (-0.5 * (x / sigma) * (x / sigma)).exp()
        })
        .collect();
    let total: f32 = raw.iter().sum();
    raw.into_iter().map(|v| v / total).collect()
}

/// Reflect an index into `0..len` without repeating the edge (torch "reflect" padding).
#[inline]
fn reflect(i: isize, len: usize) -> usize {
    let len = len as isize;
    if len == 1 {
        return 0;
    }
    let period = 2 * (len - 1);
    let m = i.rem_euclid(period);
    (if m < len { m } else { period - m }) as usize
}

/// torchvision `gaussian_blur` with an odd `kernel_size`: separable, reflect padding, rounded.
pub fn gaussian_blur(img: &Image, kernel_size: usize, sigma: f32) -> Image {
    let kernel = gaussian_kernel(kernel_size, sigma);
    let half = (kernel_size / 2) as isize;
    let (h, w) = (img.h, img.w);
    // Source index of every padded position, computed once (not per tap).
    let reflected = |len: usize| -> Vec<usize> {
        (-half..len as isize + half)
            .map(|i| reflect(i, len))
            .collect()
    };
    let (cols, rows) = (reflected(w), reflected(h)); // [w + 2 half], [h + 2 half]
    let mut out = Image::zeros(img.c, h, w);
    let mut padded = vec![0f32; cols.len()]; // one reflect-padded row
    let mut tmp = vec![0f32; h * w]; // [h, w] horizontal pass of one channel
    let mut acc = vec![0f32; w]; // one output row of the vertical pass
                                 // Both passes accumulate tap by tap over whole rows (vectorisable); every pixel still sums its
                                 // taps in kernel order, as a per-pixel dot product would.
    for ch in 0..img.c {
        let plane = img.plane(ch);
        for y in 0..h {
            let row = &plane[y * w..(y + 1) * w];
            for (p, &x) in padded.iter_mut().zip(&cols) {
                *p = row[x] as f32;
            }
            let t = &mut tmp[y * w..(y + 1) * w];
            t.fill(0.0);
            for (k, &wgt) in kernel.iter().enumerate() {
                for (t, &v) in t.iter_mut().zip(&padded[k..k + w]) {
                    *t += wgt * v;
                }
            }
        }
        let out_plane = out.plane_mut(ch);
        for y in 0..h {
            acc.fill(0.0);
            for (&wgt, &r) in kernel.iter().zip(&rows[y..y + kernel.len()]) {
                for (a, &v) in acc.iter_mut().zip(&tmp[r * w..(r + 1) * w]) {
                    *a += wgt * v;
                }
            }
            for (o, &a) in out_plane[y * w..(y + 1) * w].iter_mut().zip(&acc) {
                *o = round_u8(a);
            }
        }
    }
    out
}

/// torchvision `adjust_sharpness`: blend with the image smoothed by `[1 1 1; 1 5 1; 1 1 1] / 13`
/// (rounded; border pixels keep their value).
pub fn sharpness(img: &Image, factor: f32) -> Image {
    let (h, w) = (img.h, img.w);
    let mut smooth = img.clone();
    if h > 2 && w > 2 {
        for ch in 0..img.c {
            let plane = img.plane(ch);
            let out_plane = smooth.plane_mut(ch);
            for y in 1..h - 1 {
                for x in 1..w - 1 {
                    let mut sum = 0u32;
                    for dy in 0..3 {
                        for dx in 0..3 {
                            sum += plane[(y + dy - 1) * w + x + dx - 1] as u32;
                        }
                    }
                    sum += 4 * plane[y * w + x] as u32;
                    out_plane[y * w + x] = round_u8(sum as f32 / 13.0);
                }
            }
        }
    }
    let hw = h * w;
    blend(img, factor, |ch, i| smooth.data[ch * hw + i] as f32)
}

/// Keep the top `bits` bits of every value.
pub fn posterize(img: &Image, bits: u32) -> Image {
    let mask = if bits == 0 {
        0
    } else {
        0xFFu8 << (8 - bits.min(8))
    };
    img.map(|v| v & mask)
}

/// Invert every value `>= threshold` (a threshold above 255 leaves the image unchanged).
pub fn solarize(img: &Image, threshold: f32) -> Image {
    img.map(|v| if v as f32 >= threshold { 255 - v } else { v })
}

/// `255 - v`.
pub fn invert(img: &Image) -> Image {
    img.map(|v| 255 - v)
}

/// Stretch each channel to the full range: `(v - min) * 255 / (max - min)`; constant channels
/// stay as they are.
pub fn autocontrast(img: &Image) -> Image {
    let mut out = img.clone();
    for ch in 0..img.c {
        let plane = out.plane_mut(ch);
        let lo = *plane.iter().min().unwrap_or(&0) as u32;
        let hi = *plane.iter().max().unwrap_or(&0) as u32;
        if hi == lo {
            continue;
        }
        for v in plane.iter_mut() {
            *v = ((*v as u32 - lo) * 255 / (hi - lo)) as u8;
        }
    }
    out
}

/// Histogram equalisation per channel, PIL's `ImageOps.equalize` (= torchvision's): `step =
/// (count - count of the last occupied bin) / 255`, `lut[i] = (step / 2 + cumsum[i - 1]) / step`
/// (integer division); a channel with `step == 0` is unchanged.
pub fn equalize(img: &Image) -> Image {
    let mut out = img.clone();
    for ch in 0..img.c {
        let plane = out.plane_mut(ch);
        let mut hist = [0u32; 256];
        for &v in plane.iter() {
            hist[v as usize] += 1;
        }
        let last = hist.iter().rposition(|&n| n > 0).unwrap_or(0);
        let step = (plane.len() as u32 - hist[last]) / 255;
        if step == 0 {
            continue;
        }
        let mut lut = [0u8; 256];
        let mut acc = step / 2;
        for (i, entry) in lut.iter_mut().enumerate() {
            *entry = (acc / step).min(255) as u8;
            acc += hist[i];
        }
        for v in plane.iter_mut() {
            *v = lut[*v as usize];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{floor, fract_euclid, round_u8};

    /// The libm-free helpers equal the std functions they replace (hue and rounding stay bit-exact).
    #[test]
    fn floor_and_fract_match_std() {
        let mut values = vec![
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            0.5,
            -0.5,
            1e-9,
            -1e-9,
            2.0 - f32::EPSILON,
        ];
        let mut x = 0x1234_5678u32;
        for _ in 0..200_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            values.push((x as f32 / u32::MAX as f32) * 8.0 - 4.0);
        }
        for v in values {
            assert_eq!(floor(v), v.floor(), "floor({v:e})");
            assert_eq!(fract_euclid(v), v.rem_euclid(1.0), "fract_euclid({v:e})");
            let scaled = v * 80.0;
            assert_eq!(
                round_u8(scaled),
                (scaled + 0.5).floor().clamp(0.0, 255.0) as u8,
                "round_u8({scaled:e})"
            );
        }
    }
}
