//! The plot of a sweep (`summary.png`): per configuration, bars of the mean test top-1 and
//! many/medium/few accuracy over the seeds with ±std whiskers, and the paper's top-1 as a dashed
//! line for a preset. Drawn with the report's own helpers and colours.

use super::{
    font, legend_row, render_png, tick, Mark, BLUE, DESC_SIZE, GREEN_, LABEL_SIZE, ORANGE, RED_,
    TITLE_SIZE,
};
use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Dark grey of the overall top-1 bars (the curves plot draws "all" in black).
const ALL: RGBColor = RGBColor(70, 70, 70);

/// One configuration's bars: top-1, many, medium, few as (mean, std), `None` where it has no value.
pub struct ConfigBars {
    pub label: String,
    /// Seeds the means are over.
    pub seeds: usize,
    pub values: [Option<(f64, f64)>; 4],
}

/// The sweep's bar chart as PNG bytes.
pub fn summary_png(configs: &[ConfigBars], paper_top1: Option<f64>) -> Result<Vec<u8>> {
    let series = [
        ("top-1", ALL),
        ("many", BLUE),
        ("medium", GREEN_),
        ("few", ORANGE),
    ];
    // Only the series some configuration has (a group with no classes has no bar anywhere).
    let shown: Vec<usize> = (0..series.len())
        .filter(|&s| configs.iter().any(|c| c.values[s].is_some()))
        .collect();
    let n = configs.len().max(1);
    let slot = 0.8 / shown.len().max(1) as f64;
    let width = (160 + n * (50 * shown.len().max(1) + 60)).clamp(900, 4000) as u32;

    render_png(width, 720, |root| {
        let root = root.margin(10, 0, 0, 0).titled(
            "Sweep: test accuracy per configuration, mean ± std over seeds",
            font(TITLE_SIZE),
        )?;
        let (legend, body) = root.split_vertically(40);
        let mut items: Vec<(String, Mark)> = shown
            .iter()
            .map(|&s| (series[s].0.to_string(), Mark::Fill(series[s].1.filled())))
            .collect();
        items.push(("± std over seeds".to_string(), Mark::Line(BLACK)));
        if let Some(p) = paper_top1 {
            items.push((format!("paper top-1 ({p:.1})"), Mark::Line(RED_)));
        }
        legend_row(&legend, &items)?;

        let x_label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() > 1e-6 || i < 0.0 || i as usize >= configs.len() {
                return String::new();
            }
            let c = &configs[i as usize];
            format!(
                "{} ({} seed{})",
                c.label,
                c.seeds,
                if c.seeds == 1 { "" } else { "s" }
            )
        };
        let mut chart = ChartBuilder::on(&body)
            .margin_left(16)
            .margin_right(28)
            .margin_bottom(10)
            .y_label_area_size(80)
            .x_label_area_size(60)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&x_label)
            .y_labels(11)
            .y_label_formatter(&tick)
            .x_desc("configuration")
            .y_desc("test accuracy (%)")
            .axis_desc_style(font(DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .light_line_style(WHITE.mix(0.0))
            .disable_x_mesh()
            .draw()?;
        for (i, c) in configs.iter().enumerate() {
            for (k, &s) in shown.iter().enumerate() {
                let Some((mean, std)) = c.values[s] else {
                    continue;
                };
                let left = i as f64 - 0.4 + k as f64 * slot;
                let mid = left + slot / 2.0;
                chart.draw_series([Rectangle::new(
                    [(left + 0.1 * slot, 0.0), (left + 0.9 * slot, mean)],
                    series[s].1.filled(),
                )])?;
                // The mean above the bar (and its whisker).
                let above = (mean + std).min(100.0) + 1.0;
                chart.draw_series([Text::new(
                    format!("{mean:.1}"),
                    (mid, above),
                    font(LABEL_SIZE - 2).pos(Pos::new(HPos::Center, VPos::Bottom)),
                )])?;
                if std > 0.0 {
                    let (lo, hi) = ((mean - std).max(0.0), (mean + std).min(100.0));
                    let cap = 0.25 * slot;
                    for segment in [
                        [(mid, lo), (mid, hi)],
                        [(mid - cap, lo), (mid + cap, lo)],
                        [(mid - cap, hi), (mid + cap, hi)],
                    ] {
                        chart.draw_series(LineSeries::new(segment, BLACK.stroke_width(2)))?;
                    }
                }
            }
        }
        if let Some(p) = paper_top1 {
            chart.draw_series(DashedLineSeries::new(
                [(-0.5, p), (n as f64 - 0.5, p)],
                10,
                6,
                RED_.stroke_width(2),
            ))?;
        }
        Ok(())
    })
}
