//! The built-in synthetic long-tailed dataset: procedurally generated 32x32 RGB images whose
//! class is a (shape, texture) pair with a class-typical hue, drawn at a random position, size and
//! rotation over a noisy gradient background with random line distractors. The hue alone is
//! ambiguous (neighbouring classes' hue ranges overlap), so a model has to see shape and texture.
//!
//! Classes: shape `c % 6` (disc, square, triangle, ring, cross, diamond), texture `(c / 6) % 4`
//! (solid, horizontal stripes, vertical stripes, checker), hue centre `frac(0.618 c)` ± 0.12.
//! Training counts follow the exponential profile `n_c = int(n_max * (1/rho)^(c/(C-1)))`; the
//! test split is balanced. Every image is a pure function of (seed, split, index), generated in
//! parallel.

use rayon::prelude::*;

use super::longtail::lt_counts;
use super::ImageSet;
use crate::augment::rng::{PhiloxStream, STREAM_SYNTHETIC};

/// Size and seed of the synthetic set. The default (10 classes, n_max 500, rho 100, 100 test
/// images per class) gives 1,236 training and 1,000 test images.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SyntheticConfig {
    pub classes: usize,
    pub n_max: usize,
    pub rho: f64,
    pub test_per_class: usize,
    pub size: usize,
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            classes: 10,
            n_max: 500,
            rho: 100.0,
            test_per_class: 100,
            size: 32,
            seed: 0,
        }
    }
}

/// The generated splits.
#[derive(Clone, Debug)]
pub struct SyntheticData {
    pub train: ImageSet,
    pub test: ImageSet,
}

const SHAPES: usize = 6;
const TEXTURES: usize = 4;

/// Generate both splits (train grouped by class, long-tailed; test balanced).
pub fn generate(cfg: &SyntheticConfig) -> SyntheticData {
    let train_counts = lt_counts(cfg.n_max, cfg.rho, cfg.classes);
    let test_counts = vec![cfg.test_per_class; cfg.classes];
    SyntheticData {
        train: generate_split(cfg, &train_counts, 0),
        test: generate_split(cfg, &test_counts, 1),
    }
}

fn generate_split(cfg: &SyntheticConfig, counts: &[usize], split: u32) -> ImageSet {
    let labels: Vec<u32> = counts
        .iter()
        .enumerate()
        .flat_map(|(c, &k)| std::iter::repeat_n(c as u32, k))
        .collect();
    let side = cfg.size;
    let len = 3 * side * side;
    let mut images = vec![0u8; labels.len() * len];
    images
        .par_chunks_mut(len)
        .zip(labels.par_iter())
        .enumerate()
        .for_each(|(i, (slot, &label))| {
            let mut rng = PhiloxStream::new(cfg.seed, STREAM_SYNTHETIC, i as u32, split);
            draw_sample(label as usize, side, &mut rng, slot);
        });
    ImageSet {
        n: labels.len(),
        images,
        labels,
        h: side,
        w: side,
        classes: cfg.classes,
    }
}

/// HSV (all in [0, 1]) to RGB in [0, 1].
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let sector = h6.floor() as i32 % 6;
    let f = h6 - h6.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match sector {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Whether the object-space point `(p, q)` (radius 1) lies inside `shape`.
fn inside(shape: usize, p: f32, q: f32) -> bool {
    let r2 = p * p + q * q;
    match shape {
        0 => r2 <= 1.0,
        1 => p.abs().max(q.abs()) <= 0.8,
        2 => (-0.9..=0.75).contains(&q) && p.abs() <= (q + 0.9) * 0.62,
        3 => (0.36..=1.0).contains(&r2),
        4 => (p.abs() <= 0.32 && q.abs() <= 1.0) || (q.abs() <= 0.32 && p.abs() <= 1.0),
        _ => p.abs() + q.abs() <= 1.0,
    }
}

/// Whether the texture is "on" at object-space pixel offset `(u, v)` (pixels, rotated).
fn texture_on(texture: usize, u: f32, v: f32) -> bool {
    let band = |t: f32| (t / 2.5).floor().rem_euclid(2.0) == 0.0;
    match texture {
        0 => true,
        1 => band(v),
        2 => band(u),
        _ => band(u) == band(v),
    }
}

fn draw_sample(class: usize, side: usize, rng: &mut PhiloxStream, out: &mut [u8]) {
    let plane = side * side;
    let s = side as f32;
    let shape = class % SHAPES;
    let texture = (class / SHAPES) % TEXTURES;
    // background: random colour, a linear gradient, per-pixel noise
    let base = [rng.uniform(), rng.uniform(), rng.uniform()].map(|v| 40.0 + 175.0 * v);
    let gradient = [rng.uniform_range(-1.0, 1.0), rng.uniform_range(-1.0, 1.0)];
    let mut canvas = vec![0f32; 3 * plane]; // [3, side, side]
    for y in 0..side {
        for x in 0..side {
            let shade =
                30.0 * (gradient[0] * (x as f32 / s - 0.5) + gradient[1] * (y as f32 / s - 0.5));
            for ch in 0..3 {
                canvas[ch * plane + y * side + x] = base[ch] + shade;
            }
        }
    }
    // distractors: short random line segments of random colours
    let lines = 1 + rng.below(3) as usize;
    for _ in 0..lines {
        let colour = [rng.uniform(), rng.uniform(), rng.uniform()].map(|v| 255.0 * v);
        let (x0, y0) = (rng.uniform() * s, rng.uniform() * s);
        let angle = rng.uniform() * std::f32::consts::TAU;
        let length = s * rng.uniform_range(0.15, 0.4);
        let steps = (length * 2.0) as usize;
        for k in 0..steps {
            let t = k as f32 * 0.5;
            let (x, y) = (x0 + t * angle.cos(), y0 + t * angle.sin());
            if x >= 0.0 && y >= 0.0 && x < s && y < s {
                let idx = y as usize * side + x as usize;
                for ch in 0..3 {
                    canvas[ch * plane + idx] = colour[ch];
                }
            }
        }
    }
    // the object
    let hue_centre = (class as f32 * 0.618_034).fract();
    let hue = hue_centre + rng.uniform_range(-0.04, 0.04);
    let colour = hsv_to_rgb(
        hue,
        rng.uniform_range(0.45, 1.0),
        rng.uniform_range(0.55, 1.0),
    )
    .map(|v| 255.0 * v);
    let dark = colour.map(|v| 0.3 * v);
    let radius = s * rng.uniform_range(0.2, 0.36);
    let cx = s * rng.uniform_range(0.3, 0.7);
    let cy = s * rng.uniform_range(0.3, 0.7);
    let angle = rng.uniform_range(-0.35, 0.35);
    let (sin, cos) = angle.sin_cos();
    for y in 0..side {
        for x in 0..side {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
            if inside(shape, u / radius, v / radius) {
                let paint = if texture_on(texture, u, v) {
                    colour
                } else {
                    dark
                };
                for ch in 0..3 {
                    canvas[ch * plane + y * side + x] = paint[ch];
                }
            }
        }
    }
    for (o, v) in out.iter_mut().zip(&canvas) {
        let noise = 22.0 * (rng.uniform() - 0.5) * 2.0;
        *o = (v + noise).round().clamp(0.0, 255.0) as u8;
    }
}
