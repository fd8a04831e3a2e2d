//! Augmentation: the Philox generator against Random123's known answers, every pixel op against
//! hand-computed results, the AutoAugment tables, and the properties of the levels
//! (range, determinism, thread-count independence, flip rate).

use ltrain::augment::autoaugment::{self, AutoOp, AutoOpKind, CIFAR10_POLICY, IMAGENET_POLICY};
use ltrain::augment::ops::{self, Image};
use ltrain::augment::rng::{philox4x32_10, PhiloxStream};
use ltrain::augment::{self, Geometry, Level, Recipe};

#[test]
fn philox_matches_random123_known_answers() {
    assert_eq!(
        philox4x32_10([0, 0, 0, 0], [0, 0]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
    assert_eq!(
        philox4x32_10([0xffffffff; 4], [0xffffffff, 0xffffffff]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
    assert_eq!(
        philox4x32_10(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

#[test]
fn philox_stream_reads_blocks_in_counter_order() {
    let seed = 0x0000_0002_0000_0001u64;
    let mut stream = PhiloxStream::new(seed, 7, 11, 13);
    let block0 = philox4x32_10([0, 11, 13, 7], [1, 2]);
    let block1 = philox4x32_10([1, 11, 13, 7], [1, 2]);
    let words: Vec<u32> = (0..8).map(|_| stream.next_u32()).collect();
    assert_eq!(&words[..4], &block0);
    assert_eq!(&words[4..], &block1);
}

/// A 3-channel image whose value encodes (channel, y, x): `100 c + 10 y + x`.
fn coded(h: usize, w: usize) -> Image {
    let mut img = Image::zeros(3, h, w);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                img.set(c, y, x, (100 * c + 10 * y + x) as u8);
            }
        }
    }
    img
}

#[test]
fn hflip_mirrors_rows() {
    let img = coded(2, 3);
    let out = ops::hflip(&img);
    assert_eq!(out.plane(0), &[2, 1, 0, 12, 11, 10]);
    assert_eq!(out.plane(2), &[202, 201, 200, 212, 211, 210]);
}

#[test]
fn pad_crop_offsets_shift_with_zero_fill() {
    let img = coded(3, 3);
    // identity at (pad, pad)
    assert_eq!(ops::pad_crop(&img, 2, 2, 2), img);
    // top-left window of the padded image: content moves down-right by 2, zeros enter
    let out = ops::pad_crop(&img, 2, 0, 0);
    assert_eq!(out.plane(0), &[0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let out = ops::pad_crop(&img, 2, 1, 3);
    // row y samples source row y - 1, column x samples x + 1
    assert_eq!(out.plane(1), &[0, 0, 0, 101, 102, 0, 111, 112, 0]);
}

#[test]
fn posterize_solarize_invert_by_hand() {
    let img = Image::from_data(3, 1, 2, vec![0, 255, 130, 127, 77, 200]);
    assert_eq!(
        ops::posterize(&img, 4).data,
        vec![0, 240, 128, 112, 64, 192]
    );
    assert_eq!(ops::posterize(&img, 1).data, vec![0, 128, 128, 0, 0, 128]);
    assert_eq!(ops::posterize(&img, 8).data, img.data);
    assert_eq!(
        ops::solarize(&img, 128.0).data,
        vec![0, 0, 125, 127, 77, 55]
    );
    assert_eq!(ops::solarize(&img, 256.0).data, img.data);
    assert_eq!(
        ops::solarize(&img, 0.0).data,
        vec![255, 0, 125, 128, 178, 55]
    );
    assert_eq!(ops::invert(&img).data, vec![255, 0, 125, 128, 178, 55]);
}

#[test]
fn autocontrast_stretches_each_channel() {
    // channel 0: 10..=20 → (v - 10) * 255 / 10; channel 1 constant stays; channel 2 full range
    let img = Image::from_data(3, 1, 3, vec![10, 15, 20, 7, 7, 7, 0, 100, 255]);
    let out = ops::autocontrast(&img);
    assert_eq!(out.data, vec![0, 127, 255, 7, 7, 7, 0, 100, 255]);
}

#[test]
fn equalize_follows_pil_lut() {
    // one channel of 4 x 128 px: values 0 (x128), 1 (x128), 2 (x128), 3 (x128) → histogram
    // [128, 128, 128, 128]; step = (512 - 128) / 255 = 1; lut[i] = (0 + cumsum[i-1]) / 1
    // → lut = [0, 128, 256→255, 384→255]
    let mut data = Vec::new();
    for v in 0..4u8 {
        data.extend(std::iter::repeat_n(v, 128));
    }
    let plane = data.clone();
    let img = Image::from_data(3, 4, 128, [plane.clone(), plane.clone(), plane].concat());
    let out = ops::equalize(&img);
    let expect: Vec<u8> = [0u8, 128, 255, 255]
        .iter()
        .flat_map(|&v| std::iter::repeat_n(v, 128))
        .collect();
    assert_eq!(out.plane(0), &expect[..]);
    // too few pixels (step 0): unchanged
    let small = Image::from_data(3, 1, 2, vec![3, 9, 3, 9, 3, 9]);
    assert_eq!(ops::equalize(&small), small);
}

#[test]
fn equalize_uses_half_step_rounding() {
    // 600 px: 300 x 10, 300 x 50 → step = (600 - 300) / 255 = 1 (integer), lut[10] = 0,
    // lut[50] = (0 + 300) / 1 = 300 → 255. With 3 levels: 255 x 0, 255 x 1, 90 x 2 (600 px):
    // step = (600 - 90) / 255 = 2; lut[0] = 1 / 2 = 0, lut[1] = (1 + 255) / 2 = 128,
    // lut[2] = (1 + 510) / 2 = 255
    let mut plane = vec![0u8; 255];
    plane.extend(std::iter::repeat_n(1u8, 255));
    plane.extend(std::iter::repeat_n(2u8, 90));
    let img = Image::from_data(3, 1, 600, [plane.clone(), plane.clone(), plane].concat());
    let out = ops::equalize(&img);
    assert_eq!(out.at(0, 0, 0), 0);
    assert_eq!(out.at(0, 0, 300), 128);
    assert_eq!(out.at(0, 0, 599), 255);
}

#[test]
fn rotations_by_multiples_of_90_degrees_permute_pixels() {
    let img = coded(4, 4);
    let r90 = ops::rotate(&img, 90.0);
    let r180 = ops::rotate(&img, 180.0);
    let r270 = ops::rotate(&img, -90.0);
    for c in 0..3 {
        for y in 0..4 {
            for x in 0..4 {
                // counter-clockwise: out[y][x] = src[x][w - 1 - y]
                assert_eq!(r90.at(c, y, x), img.at(c, x, 3 - y));
                assert_eq!(r180.at(c, y, x), img.at(c, 3 - y, 3 - x));
                assert_eq!(r270.at(c, y, x), img.at(c, 3 - x, y));
            }
        }
    }
    assert_eq!(ops::rotate(&img, 0.0), img);
    assert_eq!(ops::rotate(&img, 360.0), img);
}

#[test]
fn integer_translations_shift_with_zero_fill() {
    let img = coded(3, 4);
    let right = ops::translate(&img, 1, 0);
    assert_eq!(right.plane(0), &[0, 0, 1, 2, 0, 10, 11, 12, 0, 20, 21, 22]);
    let up = ops::translate(&img, 0, -2);
    assert_eq!(up.plane(0), &[20, 21, 22, 23, 0, 0, 0, 0, 0, 0, 0, 0]);
    // AutoAugment truncates the magnitude toward zero (torchvision's int())
    let auto = autoaugment::apply_auto_op(
        &img,
        AutoOp {
            kind: AutoOpKind::TranslateX,
            magnitude: -1.9,
        },
    );
    assert_eq!(auto, ops::translate(&img, -1, 0));
}

#[test]
fn shear_about_top_left_corner() {
    let img = coded(3, 3);
    // ShearX(0.5): output (x, y) samples floor(x + 0.5 + 0.5 * (y + 0.5)) = floor(x + 0.75 + y / 2)
    // (PIL's pixel-centre convention) → rows shift left by 0, 1, 1
    let out = ops::shear_x(&img, 0.5);
    assert_eq!(out.plane(0), &[0, 1, 2, 11, 12, 0, 21, 22, 0]);
    // ShearY(0.5): columns shift up by 0, 1, 1
    let out = ops::shear_y(&img, 0.5);
    assert_eq!(out.plane(0), &[0, 11, 12, 10, 21, 22, 20, 0, 0]);
    assert_eq!(ops::shear_x(&img, 0.0), img);
}

#[test]
fn grayscale_uses_itu_601_weights() {
    // (255, 0, 0) → 0.299 * 255 = 76.245 → 76; (0, 255, 0) → 149.685 → 150;
    // (0, 0, 255) → 29.07 → 29; (100, 100, 100) → 100; (10, 20, 30) → 2.99 + 11.74 + 3.42 = 18.15 → 18
    let img = Image::from_data(
        3,
        1,
        5,
        vec![255, 0, 0, 100, 10, 0, 255, 0, 100, 20, 0, 0, 255, 100, 30],
    );
    let out = ops::grayscale(&img);
    assert_eq!(out.plane(0), &[76, 150, 29, 100, 18]);
    assert_eq!(out.plane(1), out.plane(0));
    assert_eq!(out.plane(2), out.plane(0));
}

#[test]
fn blends_truncate_like_torchvision() {
    let img = Image::from_data(3, 1, 2, vec![100, 200, 50, 60, 10, 250]);
    // brightness 1.5: 150, 300 → 255, 75, 90, 15, 375 → 255
    assert_eq!(
        ops::brightness(&img, 1.5).data,
        vec![150, 255, 75, 90, 15, 255]
    );
    assert_eq!(ops::brightness(&img, 1.0), img);
    // saturation 0 = grayscale
    assert_eq!(ops::saturation(&img, 0.0), ops::grayscale(&img));
    // contrast 0: every pixel becomes the mean luma (as float, truncated)
    let gray = ops::grayscale(&img);
    let mean = (gray.at(0, 0, 0) as f32 + gray.at(0, 0, 1) as f32) / 2.0;
    assert!(ops::contrast(&img, 0.0)
        .data
        .iter()
        .all(|&v| v == mean as u8));
}

#[test]
fn hue_shift_of_a_full_turn_keeps_colours_and_half_turn_swaps_complements() {
    let img = Image::from_data(3, 1, 3, vec![255, 0, 30, 0, 255, 60, 0, 0, 90]);
    assert_eq!(ops::hue(&img, 0.0), img);
    // pure red shifted by 1/3 turn becomes pure green; green → blue
    let out = ops::hue(&img, 1.0 / 3.0);
    assert_eq!(
        (out.at(0, 0, 0), out.at(1, 0, 0), out.at(2, 0, 0)),
        (0, 255, 0)
    );
    assert_eq!(
        (out.at(0, 0, 1), out.at(1, 0, 1), out.at(2, 0, 1)),
        (0, 0, 255)
    );
    // a half turn of (30, 60, 90) gives (90, 60, 30)
    let out = ops::hue(&img, 0.5);
    assert_eq!(
        (out.at(0, 0, 2), out.at(1, 0, 2), out.at(2, 0, 2)),
        (90, 60, 30)
    );
}

#[test]
fn gaussian_blur_kernel_and_constant_images() {
    let k = ops::gaussian_kernel(3, 1.0);
    let e = (-0.5f32).exp();
    let expect = [
        e / (1.0 + 2.0 * e),
        1.0 / (1.0 + 2.0 * e),
        e / (1.0 + 2.0 * e),
    ];
    for (a, b) in k.iter().zip(expect) {
        assert!((a - b).abs() < 1e-6);
    }
    let flat = Image::from_data(3, 4, 4, vec![77; 48]);
    assert_eq!(ops::gaussian_blur(&flat, 3, 1.5), flat);
    // an impulse in the middle of 5x5 spreads as the outer product of the kernel
    let mut impulse = Image::zeros(3, 5, 5);
    impulse.set(0, 2, 2, 200);
    let out = ops::gaussian_blur(&impulse, 3, 1.0);
    assert_eq!(
        out.at(0, 2, 2),
        (200.0 * expect[1] * expect[1]).round() as u8
    );
    assert_eq!(
        out.at(0, 1, 2),
        (200.0 * expect[0] * expect[1]).round() as u8
    );
    assert_eq!(
        out.at(0, 1, 1),
        (200.0 * expect[0] * expect[0]).round() as u8
    );
    assert_eq!(out.at(0, 0, 0), 0);
}

/// Against a direct 2-D sum with torch's reflect padding (`dcb|abcd|cba`), kernels wider than the
/// image included; f64 reference, so a pixel may differ by one at a rounding boundary.
#[test]
fn gaussian_blur_matches_a_direct_reflect_padded_sum() {
    fn reflect(i: isize, len: usize) -> usize {
        let mut i = i;
        let n = len as isize;
        while i < 0 || i >= n {
            i = if i < 0 { -i } else { 2 * (n - 1) - i };
        }
        i as usize
    }
    for (h, w, size, sigma) in [
        (7, 5, 3, 0.8),
        (6, 9, 5, 1.3),
        (4, 5, 9, 2.0),
        (12, 10, 23, 1.7),
    ] {
        let data: Vec<u8> = (0..3 * h * w)
            .map(|i| ((i * 97 + i / 7 * 31) % 256) as u8)
            .collect();
        let img = Image::from_data(3, h, w, data);
        let k = ops::gaussian_kernel(size, sigma);
        let half = (size / 2) as isize;
        let out = ops::gaussian_blur(&img, size, sigma);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let mut want = 0f64;
                    for (ky, &a) in k.iter().enumerate() {
                        for (kx, &b) in k.iter().enumerate() {
                            let yy = reflect(y as isize + ky as isize - half, h);
                            let xx = reflect(x as isize + kx as isize - half, w);
                            want += a as f64 * b as f64 * img.at(c, yy, xx) as f64;
                        }
                    }
                    let got = out.at(c, y, x) as f64;
                    assert!(
                        (got - want.round()).abs() <= 1.0,
                        "{h}x{w} kernel {size}: ({c},{y},{x}) = {got}, direct sum {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn sharpness_blends_with_the_smoothed_interior() {
    // 3x3 with a bright centre: smoothed centre = (8 * 0 + 5 * 130) / 13 = 50; borders unchanged
    let mut img = Image::zeros(3, 3, 3);
    img.set(0, 1, 1, 130);
    assert_eq!(ops::sharpness(&img, 0.0).at(0, 1, 1), 50);
    assert_eq!(ops::sharpness(&img, 1.0), img);
    // factor 2: 2 * 130 - 50 = 210
    assert_eq!(ops::sharpness(&img, 2.0).at(0, 1, 1), 210);
}

#[test]
fn resize_identity_and_upsampling_by_two() {
    let img = coded(2, 2);
    assert_eq!(ops::resize_bilinear(&img, 2, 2), img);
    // 1-D check along x: [0, 1] → 4 samples at centres 0.25, 0.75, 1.25, 1.75 (source coords):
    // with half-pixel centres: 0, 0.25, 0.75, 1 → scaled by 100 for visibility
    let row = Image::from_data(3, 1, 2, vec![0, 100, 0, 100, 0, 100]);
    let out = ops::resize_bilinear(&row, 1, 4);
    assert_eq!(out.plane(0), &[0, 25, 75, 100]);
    // downsampling a 4-px ramp by 2 averages pairs (antialiased triangle of support 2)
    let ramp = Image::from_data(3, 1, 4, [[0u8, 40, 80, 120]; 3].concat());
    let out = ops::resize_bilinear(&ramp, 1, 2);
    // centre 1.0: taps j=0 (w .75), j=1 (w .75), j=2 (w .25) … normalised: (0*.75+40*.75+80*.25)/1.75
    assert_eq!(
        out.at(0, 0, 0),
        ((40.0 * 0.75 + 80.0 * 0.25) / 1.75f32).round() as u8
    );
}

#[test]
fn cifar10_policy_table_decodes_to_the_reference_magnitudes() {
    assert_eq!(CIFAR10_POLICY.len(), 25);
    assert_eq!(IMAGENET_POLICY.len(), 25);
    let decode = |i: usize, k: usize| {
        let e = CIFAR10_POLICY[i][k];
        (e.prob, e.kind, e.kind.magnitude(e.m, 32, 32))
    };
    let close = |a: f32, b: f32, tol: f32| (a - b).abs() < tol;
    let (p, kind, m) = decode(0, 1);
    assert!(p == 0.2 && kind == AutoOpKind::Contrast && close(m, 0.6, 1e-6));
    let (p, kind, m) = decode(1, 0);
    assert!(p == 0.7 && kind == AutoOpKind::Rotate && close(m, 6.67, 0.01));
    let (_, kind, m) = decode(1, 1);
    assert!(kind == AutoOpKind::TranslateX && close(m, 14.5, 0.01));
    let (_, kind, m) = decode(3, 0);
    assert!(kind == AutoOpKind::ShearY && close(m, 0.267, 0.001));
    let (_, kind, m) = decode(5, 1);
    assert!(kind == AutoOpKind::Posterize && m == 5.0);
    let (_, kind, m) = decode(10, 1);
    assert!(kind == AutoOpKind::TranslateX && close(m, 12.9, 0.05));
    let (_, kind, m) = decode(12, 0);
    assert!(kind == AutoOpKind::TranslateY && close(m, 4.8, 0.05));
    let (p, kind, m) = decode(14, 0);
    assert!(p == 0.5 && kind == AutoOpKind::Solarize && close(m, 199.1, 0.05));
    assert!(close(decode(18, 1).2, 28.4, 0.05));
    assert!(close(decode(20, 0).2, 113.8, 0.05));
    assert!(close(decode(22, 1).2, 170.7, 0.05));
    assert!(close(decode(19, 1).2, 0.0, 1e-6));
    assert!(close(decode(7, 0).2, 0.9, 1e-6));
    let posterize: Vec<f32> = (0..10)
        .map(|m| AutoOpKind::Posterize.magnitude(m, 32, 32))
        .collect();
    assert_eq!(posterize, vec![8., 8., 7., 7., 6., 6., 5., 5., 4., 4.]);
    // the op sequence of the reference table
    use AutoOpKind::*;
    let kinds: Vec<(AutoOpKind, AutoOpKind)> = CIFAR10_POLICY
        .iter()
        .map(|p| (p[0].kind, p[1].kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Invert, Contrast),
            (Rotate, TranslateX),
            (Sharpness, Sharpness),
            (ShearY, TranslateY),
            (AutoContrast, Equalize),
            (ShearY, Posterize),
            (Color, Brightness),
            (Sharpness, Brightness),
            (Equalize, Equalize),
            (Contrast, Sharpness),
            (Color, TranslateX),
            (Equalize, AutoContrast),
            (TranslateY, Sharpness),
            (Brightness, Color),
            (Solarize, Invert),
            (Equalize, AutoContrast),
            (Equalize, Equalize),
            (Color, Equalize),
            (AutoContrast, Solarize),
            (Brightness, Color),
            (Solarize, AutoContrast),
            (TranslateY, TranslateY),
            (AutoContrast, Solarize),
            (Equalize, Invert),
            (TranslateY, AutoContrast),
        ]
    );
    let probs: Vec<(f32, f32)> = CIFAR10_POLICY
        .iter()
        .map(|p| (p[0].prob, p[1].prob))
        .collect();
    assert_eq!(probs[14], (0.5, 0.0));
    assert_eq!(probs[21], (0.9, 0.7));
}

fn random_image(seed: u64, h: usize, w: usize) -> Image {
    let mut rng = PhiloxStream::new(seed, 99, 0, 0);
    Image::from_data(
        3,
        h,
        w,
        (0..3 * h * w).map(|_| rng.next_u32() as u8).collect(),
    )
}

#[test]
fn levels_are_deterministic_per_seed_and_vary_across_samples() {
    let recipe = Recipe::cifar(32, 32);
    let img = random_image(1, 32, 32);
    for level in Level::AUGMENTED {
        let run = |seed: u64, epoch: u32, sample: u32| {
            let mut rng = augment::level_rng(seed, epoch, sample, level);
            let p = augment::sample_params(&recipe, level, 32, 32, &mut rng);
            (p, augment::apply(&recipe, &p, &img))
        };
        assert_eq!(run(5, 2, 7), run(5, 2, 7));
        let distinct = (0..20)
            .filter(|&s| run(5, 2, s).1 != run(5, 2, 0).1)
            .count();
        assert!(
            distinct >= 15,
            "{level:?}: only {distinct} of 19 samples differ"
        );
        assert_ne!(run(5, 2, 3).0, run(6, 2, 3).0);
        assert_ne!(run(5, 2, 3).0, run(5, 3, 3).0);
    }
}

#[test]
fn flip_rate_is_near_one_half() {
    let recipe = Recipe::cifar(32, 32);
    let draws = 4000;
    let flips = (0..draws)
        .filter(|&s| {
            let mut rng = augment::level_rng(0, 0, s, Level::Weak);
            augment::sample_params(&recipe, Level::Weak, 32, 32, &mut rng).flip
        })
        .count();
    // binomial sd = sqrt(4000 / 4) ≈ 31.6; 5 sd
    assert!(
        (flips as i64 - 2000).abs() < 160,
        "{flips} flips of {draws}"
    );
}

#[test]
fn weak_crop_offsets_cover_the_padding_range() {
    let recipe = Recipe::cifar(32, 32);
    let mut seen = [[false; 9]; 2];
    for s in 0..500 {
        let mut rng = augment::level_rng(3, 1, s, Level::Weak);
        match augment::sample_params(&recipe, Level::Weak, 32, 32, &mut rng).geometry {
            Geometry::PadCrop { pad: 4, top, left } => {
                seen[0][top] = true;
                seen[1][left] = true;
            }
            other => panic!("weak level drew {other:?}"),
        }
    }
    assert!(seen.iter().flatten().all(|&b| b));
}

#[test]
fn medium_crops_respect_scale_and_ratio() {
    let recipe = Recipe::cifar(32, 32);
    for s in 0..300 {
        let mut rng = augment::level_rng(0, 0, s, Level::Medium);
        let p = augment::sample_params(&recipe, Level::Medium, 32, 32, &mut rng);
        let Geometry::ResizedCrop { top, left, h, w } = p.geometry else {
            panic!("medium level drew {:?}", p.geometry);
        };
        assert!(top + h <= 32 && left + w <= 32);
        let area = (h * w) as f64 / 1024.0;
        // rounding of h and w widens the bounds slightly at 32 px
        assert!((0.15..=1.0).contains(&area), "area {area}");
        let ratio = w as f64 / h as f64;
        assert!((0.6..=1.5).contains(&ratio), "ratio {ratio}");
        if let Some((k, sigma)) = p.blur {
            assert_eq!(k, 3);
            assert!((0.1..2.0).contains(&sigma));
        }
    }
}

#[test]
fn resized_crop_falls_back_to_the_centre_crop() {
    // a 10 x 100 strip: ratio 10 > 4/3 and no attempt fits at scale 1 → centre crop h = 10,
    // w = round(10 * 4/3) = 13
    let mut rng = PhiloxStream::new(0, 1, 0, 0);
    let g = augment::sample_resized_crop(10, 100, (1.0, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng);
    assert_eq!(
        g,
        Geometry::ResizedCrop {
            top: 0,
            left: 43,
            h: 10,
            w: 13
        }
    );
}

#[test]
fn batches_are_independent_of_the_thread_count() {
    use ltrain::data::ImageSet;
    let mut set = ImageSet::empty(32, 32, 2);
    for i in 0..12 {
        set.push(&random_image(i, 32, 32).data, (i % 2) as u32);
    }
    let indices: Vec<usize> = (0..12).rev().collect();
    let run = |threads: usize, level: Level| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| set.batch(&indices, level, 9, 4))
    };
    for level in Level::AUGMENTED {
        let one = run(1, level);
        assert_eq!(one, run(2, level));
        assert_eq!(one, run(3, level));
        // normalised range: (0 - mean) / std .. (1 - mean) / std
        assert!(one.iter().all(|v| (-2.5..=2.8).contains(v)));
        // a sample's augmentation does not depend on its batch position
        let single = set.batch(&indices[3..4], level, 9, 4);
        assert_eq!(&one[3 * 3072..4 * 3072], &single[..]);
    }
}

#[test]
fn normalisation_uses_the_cifar_constants() {
    let img = Image::from_data(3, 1, 1, vec![0, 255, 128]);
    let mut out = [0f32; 3];
    augment::normalize_into(&img, &augment::CIFAR_NORMALIZATION, &mut out);
    assert!((out[0] - (0.0 - 0.4914) / 0.2023).abs() < 1e-5);
    assert!((out[1] - (1.0 - 0.4822) / 0.1994).abs() < 1e-5);
    assert!((out[2] - (128.0 / 255.0 - 0.4465) / 0.2010).abs() < 1e-5);
}

#[test]
fn mixup_draws_are_deterministic_permutations() {
    let (l1, p1) = augment::draw_mixup(3, 2, 5, 64, 1.0);
    let (l2, p2) = augment::draw_mixup(3, 2, 5, 64, 1.0);
    assert_eq!((l1, &p1), (l2, &p2));
    assert!((0.0..=1.0).contains(&l1));
    let mut sorted = p1.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..64).collect::<Vec<u32>>());
    assert_ne!(p1, (0..64).collect::<Vec<u32>>());
    assert_ne!(augment::draw_mixup(3, 2, 6, 64, 1.0).1, p1);
    // alpha 0 disables mixup
    assert_eq!(
        augment::draw_mixup(3, 2, 5, 4, 0.0),
        (1.0, vec![0, 1, 2, 3])
    );
    // Beta(alpha, alpha) is symmetric with mean 1/2; Beta(1, 1) has variance 1/12
    let lambdas: Vec<f64> = (0..2000)
        .map(|s| augment::draw_mixup(0, 0, s, 2, 1.0).0 as f64)
        .collect();
    let mean = lambdas.iter().sum::<f64>() / 2000.0;
    let var = lambdas.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / 2000.0;
    assert!((mean - 0.5).abs() < 0.03, "mean {mean}");
    assert!((var - 1.0 / 12.0).abs() < 0.01, "variance {var}");
}

#[test]
fn auto_augment_enhance_ops_use_one_plus_magnitude() {
    let img = random_image(4, 8, 8);
    let op = |kind, magnitude| autoaugment::apply_auto_op(&img, AutoOp { kind, magnitude });
    assert_eq!(op(AutoOpKind::Brightness, 0.5), ops::brightness(&img, 1.5));
    assert_eq!(op(AutoOpKind::Color, -0.25), ops::saturation(&img, 0.75));
    assert_eq!(op(AutoOpKind::Contrast, 0.75), ops::contrast(&img, 1.75));
    assert_eq!(
        op(AutoOpKind::Sharpness, -0.875),
        ops::sharpness(&img, 0.125)
    );
    assert_eq!(op(AutoOpKind::Posterize, 5.0), ops::posterize(&img, 5));
    assert_eq!(op(AutoOpKind::Solarize, 113.8), ops::solarize(&img, 113.8));
    assert_eq!(op(AutoOpKind::Rotate, 90.0), ops::rotate(&img, 90.0));
}

#[test]
fn strong_level_fires_ops_at_the_policy_rates() {
    let recipe = Recipe::cifar(32, 32);
    let draws = 5000;
    let expected: f32 = CIFAR10_POLICY
        .iter()
        .map(|p| p[0].prob + p[1].prob)
        .sum::<f32>()
        / 25.0;
    let (mut fired, mut negative, mut signed) = (0usize, 0usize, 0usize);
    for s in 0..draws {
        let mut rng = augment::level_rng(2, 0, s, Level::Strong);
        let p = augment::sample_params(&recipe, Level::Strong, 32, 32, &mut rng);
        for op in p.auto_ops.iter().flatten() {
            fired += 1;
            if op.kind.signed() && op.magnitude != 0.0 {
                signed += 1;
                negative += (op.magnitude < 0.0) as usize;
            }
        }
    }
    let rate = fired as f32 / draws as f32;
    // sd of the per-image count < 0.7, so 5000 draws give sd < 0.01
    assert!(
        (rate - expected).abs() < 0.05,
        "rate {rate}, expected {expected}"
    );
    let negative_share = negative as f32 / signed as f32;
    assert!(
        (negative_share - 0.5).abs() < 0.05,
        "negative share {negative_share}"
    );
}
