//! The report's PNG plots, drawn with plotters into an RGB buffer and encoded with `png`, labelled with
//! an embedded DejaVu Sans so no system font or library is needed.

use super::EpochRecord;
use crate::metrics::{ReliabilityBin, ShotGroup};
use anyhow::{ensure, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::ops::Range;
use std::sync::OnceLock;

/// The plot of a sweep's summary, drawn with the helpers below.
pub(super) mod sweep;

const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

const TITLE_SIZE: u32 = 28;
const DESC_SIZE: u32 = 20;
const LABEL_SIZE: u32 = 16;

const BLUE: RGBColor = RGBColor(49, 104, 170);
const RED_: RGBColor = RGBColor(214, 39, 40);
const GREEN_: RGBColor = RGBColor(44, 160, 44);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const GREY: RGBColor = RGBColor(110, 110, 110);

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    ensure!(
        ok,
        "the embedded plot font (assets/DejaVuSans.ttf) does not parse"
    );
    Ok(())
}

/// Draws on a white `width` x `height` canvas and returns the PNG file's bytes.
fn render_png(width: u32, height: u32, draw: impl FnOnce(&Area) -> Result<()>) -> Result<Vec<u8>> {
    register_font()?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3]; // [h, w, 3]
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("encoding a plot as PNG")?;
    writer
        .write_image_data(&rgb)
        .context("encoding a plot as PNG")?;
    writer.finish().context("encoding a plot as PNG")?;
    Ok(bytes)
}

fn font(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

/// Axis tick text: integers without a decimal point, other values with at most two decimals.
fn tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let text = format!("{v:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A legend entry: a filled box, or a line for a line series.
enum Mark {
    Fill(ShapeStyle),
    Line(RGBColor),
}

/// A legend in a row of its own (so it never hides data): a mark and a label per item.
fn legend_row(area: &Area, items: &[(String, Mark)]) -> Result<()> {
    let (_, height) = area.dim_in_pixel();
    let y = height as i32 / 2;
    let mut x = 90;
    for (label, mark) in items {
        let (half_height, style) = match mark {
            Mark::Fill(style) => (8, *style),
            Mark::Line(color) => (1, color.filled()),
        };
        area.draw(&Rectangle::new(
            [(x, y - half_height), (x + 24, y + half_height)],
            style,
        ))?;
        area.draw(&Text::new(
            label.as_str(),
            (x + 32, y - 9),
            font(LABEL_SIZE),
        ))?;
        let (text_width, _) = area.estimate_text_size(label, &font(LABEL_SIZE))?;
        x += 32 + text_width as i32 + 36;
    }
    Ok(())
}

/// Opaque light red of the reliability diagram's calibration gaps.
const GAP_FILL: RGBColor = RGBColor(240, 170, 170);

/// Reliability diagram: per-bin accuracy against the diagonal, and the share of samples per bin below.
pub(super) fn reliability_png(
    bins: &[ReliabilityBin],
    ece: f64,
    samples: usize,
) -> Result<Vec<u8>> {
    render_png(900, 960, |root| {
        let root = root.margin(10, 0, 0, 0).titled(
            &format!(
                "Reliability diagram — ECE {ece:.2}% ({} bins, {samples} test samples)",
                bins.len()
            ),
            font(TITLE_SIZE),
        )?;
        let (legend, rest) = root.split_vertically(40);
        let (top, bottom) = rest.split_vertically(640);
        legend_row(
            &legend,
            &[
                ("accuracy".to_string(), Mark::Fill(BLUE.filled())),
                (
                    "gap to mean confidence".to_string(),
                    Mark::Fill(GAP_FILL.filled()),
                ),
                ("perfect calibration".to_string(), Mark::Line(GREY)),
            ],
        )?;

        let mut chart = ChartBuilder::on(&top)
            .margin_left(16)
            .margin_right(28)
            .y_label_area_size(80)
            .x_label_area_size(8)
            .build_cartesian_2d(0f64..100f64, 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_labels(0)
            .y_labels(11)
            .y_label_formatter(&tick)
            .y_desc("accuracy (%)")
            .axis_desc_style(font(DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for bin in bins {
            let (Some(accuracy), Some(confidence)) = (bin.accuracy, bin.confidence) else {
                continue;
            };
            // The gap spans the full bin behind a narrower accuracy bar, so both stay visible
            // whichever side of the diagonal the bin falls (a translucent overlay turned purple).
            let inset = 0.15 * (bin.hi - bin.lo);
            chart.draw_series([
                Rectangle::new(
                    [(bin.lo, accuracy), (bin.hi, confidence)],
                    GAP_FILL.filled(),
                ),
                Rectangle::new(
                    [(bin.lo, accuracy), (bin.hi, confidence)],
                    RED_.stroke_width(1),
                ),
                Rectangle::new(
                    [(bin.lo + inset, 0.0), (bin.hi - inset, accuracy)],
                    BLUE.filled(),
                ),
            ])?;
        }
        chart.draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (100.0, 100.0)],
            10,
            6,
            GREY.stroke_width(2),
        ))?;

        let max_share = bins
            .iter()
            .map(|b| 100.0 * b.count as f64 / samples.max(1) as f64)
            .fold(0.0, f64::max);
        let mut hist = ChartBuilder::on(&bottom)
            .margin_left(16)
            .margin_right(28)
            .margin_bottom(10)
            .y_label_area_size(80)
            .x_label_area_size(60)
            .build_cartesian_2d(0f64..100f64, 0f64..(max_share * 1.15).max(1.0))?;
        hist.configure_mesh()
            .x_labels(11)
            .y_labels(4)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .x_desc("confidence: max of the averaged softmax (%)")
            .y_desc("samples (%)")
            .axis_desc_style(font(DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        hist.draw_series(bins.iter().map(|b| {
            let share = 100.0 * b.count as f64 / samples.max(1) as f64;
            Rectangle::new([(b.lo, 0.0), (b.hi, share)], GREY.mix(0.7).filled())
        }))?;
        Ok(())
    })
}

/// Per-class top-1 bars, classes ordered by training images (most first), shot groups shaded, the
/// training count on a log axis on the right.
pub(super) fn per_class_png(
    per_class_top1: &[Option<f64>],
    class_counts: &[usize],
) -> Result<Vec<u8>> {
    ensure!(
        per_class_top1.len() == class_counts.len(),
        "per-class plot: {} accuracies for {} class counts",
        per_class_top1.len(),
        class_counts.len()
    );
    let classes = class_counts.len();
    let mut order: Vec<usize> = (0..classes).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(class_counts[k]));
    let groups = [
        (ShotGroup::Many, "many", BLUE),
        (ShotGroup::Medium, "medium", GREEN_),
        (ShotGroup::Few, "few", ORANGE),
    ];
    // Ranks [first, last] of each group; contiguous because `order` is sorted by count.
    let regions: Vec<_> = groups
        .iter()
        .filter_map(|&(group, name, color)| {
            let ranks: Vec<usize> = (0..classes)
                .filter(|&r| ShotGroup::of(class_counts[order[r]]) == group)
                .collect();
            Some((name, color, *ranks.first()?, *ranks.last()?))
        })
        .collect();
    let max_count = class_counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let min_count = class_counts.iter().copied().min().unwrap_or(1).max(1) as f64;

    render_png(1400, 720, |root| {
        let root = root.margin(10, 0, 0, 0).titled(
            "Per-class test top-1, classes ordered by training images",
            font(TITLE_SIZE),
        )?;
        let (legend, body) = root.split_vertically(40);
        let mut items: Vec<(String, Mark)> = regions
            .iter()
            .map(|&(name, color, first, last)| {
                let label = format!("{name}: {} classes", last - first + 1);
                (label, Mark::Fill(color.mix(0.18).filled()))
            })
            .collect();
        items.push(("top-1 of a class".to_string(), Mark::Fill(BLUE.filled())));
        items.push((
            "training images (right axis)".to_string(),
            Mark::Line(BLACK),
        ));
        legend_row(&legend, &items)?;

        let x_range = -0.5..classes as f64 - 0.5;
        let mut chart = ChartBuilder::on(&body)
            .margin_left(16)
            .margin_right(16)
            .margin_bottom(10)
            .y_label_area_size(80)
            .right_y_label_area_size(90)
            .x_label_area_size(60)
            .build_cartesian_2d(x_range.clone(), 0f64..100f64)?
            .set_secondary_coord(x_range, (min_count / 1.5..max_count * 1.5).log_scale());
        // With few classes each bar is labelled with its class index; otherwise the axis counts ranks.
        let label_classes = classes <= 30;
        let x_label = |x: &f64| {
            let rank = x.round();
            if (x - rank).abs() > 1e-6 || rank < 0.0 || rank as usize >= classes {
                String::new()
            } else if label_classes {
                order[rank as usize].to_string()
            } else {
                format!("{rank}")
            }
        };
        chart
            .configure_mesh()
            .x_labels(if label_classes { classes } else { 10 })
            .x_label_formatter(&x_label)
            .y_labels(11)
            .y_label_formatter(&tick)
            .x_desc(if label_classes {
                "class index (ordered by training images, most to fewest)"
            } else {
                "class rank by training images (most to fewest)"
            })
            .y_desc("top-1 (%)")
            .axis_desc_style(font(DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .light_line_style(WHITE.mix(0.0))
            .disable_x_mesh()
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("training images")
            .y_label_formatter(&tick)
            .axis_desc_style(font(DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .draw()?;
        chart.draw_series(regions.iter().map(|&(_, color, first, last)| {
            Rectangle::new(
                [(first as f64 - 0.5, 0.0), (last as f64 + 0.5, 100.0)],
                color.mix(0.18).filled(),
            )
        }))?;
        let half_width = if classes <= 100 { 0.38 } else { 0.5 };
        chart.draw_series(order.iter().enumerate().filter_map(|(rank, &k)| {
            let top1 = per_class_top1[k]?;
            let x = rank as f64;
            Some(Rectangle::new(
                [(x - half_width, 0.0), (x + half_width, top1)],
                BLUE.filled(),
            ))
        }))?;
        chart.draw_secondary_series(LineSeries::new(
            order
                .iter()
                .enumerate()
                .map(|(rank, &k)| (rank as f64, class_counts[k].max(1) as f64)),
            BLACK.stroke_width(2),
        ))?;
        Ok(())
    })
}

/// `[lo, hi]` of the values padded by `pad` (a fraction of the span, at least `min_span`), clamped to `limits`.
fn padded_range(
    values: impl Iterator<Item = f64>,
    limits: Range<f64>,
    min_span: f64,
) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return limits.start..limits.start + min_span;
    }
    let pad = ((hi - lo) * 0.08).max(min_span / 2.0);
    (lo - pad).max(limits.start)..(hi + pad).min(limits.end)
}

/// A named, coloured line of (epochs done, value) points.
type Curve<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// One panel of the training curves: lines over epochs and the stage switch as a dashed vertical line.
fn curve_panel(
    area: &Area,
    y_desc: &str,
    lines: &[Curve],
    y_range: Range<f64>,
    epochs: f64,
    stage2_start: Option<f64>,
) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .margin_left(16)
        .margin_right(28)
        .margin_top(12)
        .y_label_area_size(80)
        .x_label_area_size(50)
        .build_cartesian_2d(0f64..epochs, y_range.clone())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .y_labels(6)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .axis_desc_style(font(DESC_SIZE))
        .label_style(font(LABEL_SIZE))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    if let Some(x) = stage2_start {
        chart.draw_series(DashedLineSeries::new(
            [(x, y_range.start), (x, y_range.end)],
            8,
            6,
            GREY.stroke_width(2),
        ))?;
        let y_text = y_range.end - 0.06 * (y_range.end - y_range.start);
        chart.draw_series([Text::new(
            " stage 2",
            (x, y_text),
            font(LABEL_SIZE).color(&GREY),
        )])?;
    }
    for (label, color, points) in lines {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 1), (x + 20, y + 1)], color.filled()));
        if points.len() <= 40 {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
    }
    if lines.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(font(LABEL_SIZE))
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .draw()?;
    }
    Ok(())
}

/// Train loss, test top-1 (overall and by group) and ECE per epoch; x is the number of epochs done.
pub(super) fn curves_png(history: &[EpochRecord], stage2_epoch: Option<usize>) -> Result<Vec<u8>> {
    let series = |get: fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|r| Some((r.epoch as f64, get(r)?)))
            .collect()
    };
    let loss = series(|r| Some(r.train_loss as f64).filter(|l| l.is_finite()));
    let top1_lines = [
        ("all", BLACK, series(|r| r.top1)),
        ("many", BLUE, series(|r| r.many)),
        ("medium", GREEN_, series(|r| r.medium)),
        ("few", ORANGE, series(|r| r.few)),
    ];
    let top1_lines: Vec<_> = top1_lines
        .into_iter()
        .filter(|(_, _, p)| !p.is_empty())
        .collect();
    let ece = series(|r| r.ece);
    let epochs = history.last().map_or(1.0, |r| r.epoch as f64);
    // Stage 2 begins once `stage2_epoch` (0-based first stage-2 epoch) epochs are done.
    let stage2_start = stage2_epoch.map(|s| s as f64);

    let loss_range = padded_range(loss.iter().map(|p| p.1), 0.0..f64::INFINITY, 0.1);
    let top1_range = padded_range(
        top1_lines
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|p| p.1)),
        0.0..100.0,
        10.0,
    );
    let ece_range = padded_range(ece.iter().map(|p| p.1), 0.0..100.0, 1.0);

    render_png(1000, 1100, |root| {
        let root = root
            .margin(10, 0, 0, 0)
            .titled("Training curves", font(TITLE_SIZE))?;
        let panels = root.split_evenly((3, 1));
        curve_panel(
            &panels[0],
            "train loss",
            &[("train loss", PURPLE, loss)],
            loss_range,
            epochs,
            stage2_start,
        )?;
        curve_panel(
            &panels[1],
            "test top-1 (%)",
            &top1_lines,
            top1_range,
            epochs,
            stage2_start,
        )?;
        curve_panel(
            &panels[2],
            "test ECE (%)",
            &[("ECE", RED_, ece)],
            ece_range,
            epochs,
            stage2_start,
        )?;
        Ok(())
    })
}
