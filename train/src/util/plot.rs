//! PNG plots (plotters, bundled DejaVu font: no system fonts needed).

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

const FONT: &str = "sans-serif";

fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Both registrations take a static, valid TTF; failure would be a packaging bug.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e}")
}

/// Draws black text items `(x, y, text)` onto an RGB image in place.
pub fn draw_texts(
    img: &mut image::RgbImage,
    items: &[(u32, u32, String)],
    size: f64,
) -> Result<()> {
    ensure_font();
    let (w, h) = img.dimensions();
    {
        let root = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
        let style = TextStyle::from((FONT, size).into_font()).color(&BLACK);
        for (x, y, text) in items {
            root.draw_text(text, &style, (*x as i32, *y as i32))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(())
}

/// One panel of a multi-panel line chart: a title and named series of (x, y) points.
pub struct Panel {
    pub title: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Draws panels in a grid (`cols` per row), x = epoch, and writes a PNG.
pub fn line_panels(path: &Path, panels: &[Panel], cols: usize) -> Result<()> {
    ensure_font();
    let rows = panels.len().div_ceil(cols.max(1));
    let (pw, ph) = (420u32, 300u32);
    let root = BitMapBackend::new(path, (pw * cols as u32, ph * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((rows, cols));
    let palette = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK];
    for (panel, area) in panels.iter().zip(areas.iter()) {
        let points: Vec<(f64, f64)> = panel
            .series
            .iter()
            .flat_map(|s| s.1.iter().copied())
            .filter(|p| p.1.is_finite())
            .collect();
        if points.is_empty() {
            continue;
        }
        let (x0, x1) = points
            .iter()
            .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
        let (y0, y1) = points
            .iter()
            .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
        let pad = ((y1 - y0) * 0.08).max(1e-6);
        let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FONT, 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(52)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            // No more labels than whole epochs (a short run got "1 1 1 2 2 2 ...").
            .x_labels(((x1 - x0).round() as usize + 1).clamp(2, 10))
            .label_style((FONT, 11))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| axis_label(*v, y1 - y0))
            .draw()
            .map_err(err)?;
        for (i, (name, pts)) in panel.series.iter().enumerate() {
            let colour = palette[i % palette.len()];
            chart
                .draw_series(LineSeries::new(
                    pts.iter().copied().filter(|p| p.1.is_finite()),
                    colour.stroke_width(2),
                ))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
        }
        if panel.series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font((FONT, 11))
                .draw()
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Tick label readable at the panel's scale: scientific notation for tiny ranges.
fn axis_label(v: f64, range: f64) -> String {
    if range > 0.0 && range < 0.01 {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// Row-normalised confusion matrix as a heat map (rows: true class, columns: predicted),
/// each cell annotated with its count.
pub fn confusion_png(
    path: &Path,
    classes: &[String],
    counts: &[Vec<u64>],
    title: &str,
) -> Result<()> {
    ensure_font();
    let c = classes.len();
    let cell = 64i32;
    let (left, top) = (110i32, 60i32);
    let size = (
        (left + cell * c as i32 + 20) as u32,
        (top + cell * c as i32 + 90) as u32,
    );
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let text = |s: i32| TextStyle::from((FONT, s).into_font()).color(&BLACK);
    root.draw_text(title, &text(16), (10, 10)).map_err(err)?;
    root.draw_text("rows: true class, columns: predicted", &text(12), (10, 32))
        .map_err(err)?;
    for (i, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (j, &n) in row.iter().enumerate() {
            let frac = if total > 0 {
                n as f64 / total as f64
            } else {
                0.0
            };
            let shade = (255.0 * (1.0 - frac)) as u8;
            let (x, y) = (left + cell * j as i32, top + cell * i as i32);
            let colour = if i == j {
                RGBColor(shade, 255, shade)
            } else {
                RGBColor(255, shade, shade)
            };
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                colour.filled(),
            ))
            .map_err(err)?;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                BLACK.mix(0.3),
            ))
            .map_err(err)?;
            root.draw_text(&format!("{n}"), &text(13), (x + 6, y + 10))
                .map_err(err)?;
            root.draw_text(&format!("{:.0}%", frac * 100.0), &text(11), (x + 6, y + 34))
                .map_err(err)?;
        }
        root.draw_text(
            &classes[i],
            &text(13),
            (8, top + cell * i as i32 + cell / 2 - 7),
        )
        .map_err(err)?;
    }
    for (j, name) in classes.iter().enumerate() {
        let style = text(12).transform(FontTransform::Rotate90);
        root.draw_text(
            name,
            &style,
            (
                left + cell * j as i32 + cell / 2 + 6,
                top + cell * c as i32 + 6,
            ),
        )
        .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Overlaid histograms of several groups on one chart (each normalised to its own count, so
/// groups of different sizes compare), with the group sizes and means in the legend.
pub fn histograms(
    path: &Path,
    title: &str,
    x_label: &str,
    groups: &[(&str, Vec<f64>)],
    range: (f64, f64),
    bins: usize,
) -> Result<()> {
    ensure_font();
    let width = (range.1 - range.0) / bins as f64;
    let shares: Vec<Vec<f64>> = groups
        .iter()
        .map(|(_, v)| {
            let mut h = vec![0.0; bins];
            for x in v {
                let b = (((x - range.0) / width).floor().max(0.0) as usize).min(bins - 1);
                h[b] += 1.0;
            }
            h.iter().map(|c| c / v.len().max(1) as f64).collect()
        })
        .collect();
    let top = shares
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    let root = BitMapBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(range.0..range.1, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("share of the group")
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    let palette = [BLUE.mix(0.45), RED.mix(0.45), GREEN.mix(0.45)];
    for (g, ((name, values), h)) in groups.iter().zip(&shares).enumerate() {
        let colour = palette[g % palette.len()];
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        chart
            .draw_series(h.iter().enumerate().map(|(b, &y)| {
                let x0 = range.0 + b as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, y)], colour.filled())
            }))
            .map_err(err)?
            .label(format!("{name}: n = {}, mean {mean:.3}", values.len()))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One confidence bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Share of the bin's images whose top class is right.
    pub accuracy: f64,
    /// Mean top-class probability in the bin.
    pub confidence: f64,
}

/// Reliability diagrams side by side (one per panel: title and bins): accuracy per confidence
/// bin as bars, the diagonal of perfect calibration, and each bin's share of images as a line.
pub fn reliability_png(path: &Path, panels: &[(String, Vec<Bin>)]) -> Result<()> {
    ensure_font();
    let root =
        BitMapBackend::new(path, (440 * panels.len().max(1) as u32, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for ((title, bins), area) in panels.iter().zip(areas.iter()) {
        let total = bins.iter().map(|b| b.count).sum::<usize>().max(1) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("confidence (top-class probability)")
            .y_desc("accuracy")
            .label_style((FONT, 11))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(
                bins.iter().filter(|b| b.count > 0).map(|b| {
                    Rectangle::new([(b.lo, 0.0), (b.hi, b.accuracy)], BLUE.mix(0.5).filled())
                }),
            )
            .map_err(err)?
            .label("accuracy in the bin")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BLUE.mix(0.5).filled()));
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(1)));
        chart
            .draw_series(LineSeries::new(
                bins.iter()
                    .map(|b| ((b.lo + b.hi) / 2.0, b.count as f64 / total)),
                RED.stroke_width(2),
            ))
            .map_err(err)?
            .label("share of images")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 11))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
