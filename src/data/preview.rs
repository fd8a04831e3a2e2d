//! `ltrain data preview`: a PNG grid showing a few samples under each augmentation level. Row =
//! sample; columns = the plain (evaluation) image, then `draws` augmented versions (epochs 0, 1,
//! ...) under weak, medium and strong, each group separated by a wider gap.

use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};

use super::ImageSet;
use crate::augment::{ops::Image, Level};

const GAP: usize = 2;
const GROUP_GAP: usize = 6;
const BACKGROUND: u8 = 255;

/// Lay out `rows x cols` cells of equal size (each `[3, h, w]`) with gaps, upscaled by `scale`
/// (nearest). `group` columns form a group (a wider gap after each group).
pub fn grid(cells: &[Vec<Image>], group: usize, scale: usize) -> Image {
    let rows = cells.len();
    let cols = cells.first().map_or(0, Vec::len);
    let (ch, cw) = cells
        .first()
        .and_then(|r| r.first())
        .map_or((0, 0), |c| (c.h * scale, c.w * scale));
    let col_x = |c: usize| GAP + c * (cw + GAP) + col_groups_before(c, group) * (GROUP_GAP - GAP);
    let width = if cols == 0 {
        GAP
    } else {
        col_x(cols - 1) + cw + GAP
    };
    let height = GAP + rows * (ch + GAP);
    let mut out = Image::from_data(3, height, width, vec![BACKGROUND; 3 * height * width]);
    for (r, row) in cells.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let (y0, x0) = (GAP + r * (ch + GAP), col_x(c));
            for k in 0..3 {
                for y in 0..ch {
                    for x in 0..cw {
                        out.set(k, y0 + y, x0 + x, cell.at(k, y / scale, x / scale));
                    }
                }
            }
        }
    }
    out
}

/// Column 0 is the plain image; columns 1.. come in groups of `group`. Group boundaries passed
/// before column `c`.
fn col_groups_before(c: usize, group: usize) -> usize {
    if c == 0 {
        0
    } else {
        1 + (c - 1) / group.max(1)
    }
}

/// Write an RGB image as an 8-bit PNG.
pub fn write_png(img: &Image, path: &Path) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), img.w as u32, img.h as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let hw = img.h * img.w;
    let mut interleaved = Vec::with_capacity(3 * hw);
    for i in 0..hw {
        interleaved.extend_from_slice(&[img.data[i], img.data[hw + i], img.data[2 * hw + i]]);
    }
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("cannot write PNG header to {}", path.display()))?;
    writer
        .write_image_data(&interleaved)
        .with_context(|| format!("cannot write PNG data to {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("cannot finish PNG {}", path.display()))
}

fn preview_cells(
    indices: &[usize],
    draws: usize,
    mut cell: impl FnMut(usize, Level, usize) -> Result<Image>,
) -> Result<Vec<Vec<Image>>> {
    indices
        .iter()
        .map(|&i| {
            let mut row = vec![cell(i, Level::Plain, 0)?];
            for level in Level::AUGMENTED {
                for epoch in 0..draws {
                    row.push(cell(i, level, epoch)?);
                }
            }
            Ok(row)
        })
        .collect()
}

/// Preview grid of CIFAR-like samples `indices` (`draws` per level), 3x upscaled, as a PNG.
pub fn preview_set(
    set: &ImageSet,
    indices: &[usize],
    draws: usize,
    seed: u64,
    path: &Path,
) -> Result<()> {
    let cells = preview_cells(indices, draws, |i, level, epoch| {
        Ok(set.augmented(i, level, seed, epoch))
    })?;
    write_png(&grid(&cells, draws, 3), path)
}
