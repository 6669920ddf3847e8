//! What the report's figures share: the size, the colours, the font for PNG text, writing a figure as
//! SVG and PNG, axis bounds and tick labels, and the line chart that both the per-step curves and
//! the accuracy-against-compute figures are drawn with.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

pub const SIZE: (u32, u32) = (760, 420);

/// Series colours (Tableau 10): distinct in print and for the common colour-vision deficiencies.
pub const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A legend entry short enough to leave the curves visible; the page's table has the full name.
pub fn legend_label(label: &str) -> String {
    const MAX: usize = 64;
    if label.chars().count() <= MAX {
        label.to_string()
    } else {
        format!("{}…", label.chars().take(MAX - 1).collect::<String>())
    }
}

/// Registers a font for PNG text, once; whether one was found.
pub fn font() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("RPT_FONT")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
                "/System/Library/Fonts/Supplemental/Arial.ttf",
                "/Library/Fonts/Arial.ttf",
                "C:\\Windows\\Fonts\\arial.ttf",
            ]
            .map(PathBuf::from),
        );
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws one figure with `svg` into `file.svg` and, where a font exists, with `png` into `file.png`.
pub fn render<S, P>(dir: &Path, file: &str, png: bool, svg: S, draw_png: P) -> Result<()>
where
    S: for<'b> Fn(DrawingArea<SVGBackend<'b>, Shift>) -> std::result::Result<(), String>,
    P: for<'b> Fn(DrawingArea<BitMapBackend<'b>, Shift>) -> std::result::Result<(), String>,
{
    let fail = |e: String| Error::Run(format!("drawing {file}: {e}"));
    let svg_path = dir.join(format!("{file}.svg"));
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        svg(root).map_err(fail)?;
    }
    std::fs::write(&svg_path, text).map_err(|e| Error::io(&svg_path, e))?;
    if png {
        let png_path = dir.join(format!("{file}.png"));
        let root = BitMapBackend::new(&png_path, SIZE).into_drawing_area();
        draw_png(root).map_err(fail)?;
    }
    Ok(())
}

pub fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = lo.abs().max(1.0) * 0.05;
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// One line of a line chart: points (x, y, band low, band high), drawn with a band where high > low,
/// with point markers or not, and a dashed companion in the same colour (a fit; cut at the frame).
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64, f64, f64)>,
    pub markers: bool,
    pub dashed: Vec<(f64, f64)>,
}

/// A line chart's text and layout: `percent` writes y ticks as percentages of fractions; `headroom`
/// adds that share of the data's height above it (room for the legend).
pub struct Axes<'a> {
    pub title: &'a str,
    pub xlabel: &'a str,
    pub ylabel: &'a str,
    pub percent: bool,
    pub headroom: f64,
    pub legend: SeriesLabelPosition,
}

/// Draws `lines` on one frame whose axes span their points and bands.
pub fn lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    axes: &Axes<'_>,
    lines: &[Line],
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (x0, x1) = bounds(lines.iter().flat_map(|l| l.points.iter().map(|q| q.0)));
    let (y0, y1) = bounds(
        lines
            .iter()
            .flat_map(|l| l.points.iter().flat_map(|q| [q.1, q.2, q.3])),
    );
    let y1 = y1 + (y1 - y0) * axes.headroom;
    let mut chart = ChartBuilder::on(&root)
        .caption(axes.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    let percent = |v: &f64| format!("{:.0}%", 100.0 * v);
    let plain = |v: &f64| short(*v);
    let y_ticks: &dyn Fn(&f64) -> String = if axes.percent { &percent } else { &plain };
    let mut mesh = chart.configure_mesh();
    if !axes.ylabel.is_empty() {
        mesh.y_desc(axes.ylabel);
    }
    mesh.x_desc(axes.xlabel)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(y_ticks)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    for (i, l) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()].to_rgba();
        let pts = &l.points;
        if pts.iter().any(|p| p.3 > p.2) {
            let band: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.0, p.3))
                .chain(pts.iter().rev().map(|p| (p.0, p.2)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    color.mix(0.12).filled(),
                )))
                .map_err(e)?;
        }
        let line = LineSeries::new(pts.iter().map(|p| (p.0, p.1)), color.stroke_width(2));
        chart
            .draw_series(if l.markers { line.point_size(3) } else { line })
            .map_err(e)?
            .label(legend_label(&l.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if !l.dashed.is_empty() {
            let cut: Vec<(f64, f64)> = l
                .dashed
                .iter()
                .map(|&(x, y)| (x, y.clamp(y0, y1)))
                .collect();
            chart
                .draw_series(DashedLineSeries::new(cut, 6, 4, color.stroke_width(1)))
                .map_err(e)?;
        }
    }
    chart
        .configure_series_labels()
        .position(axes.legend.clone())
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

/// A tick label: short, in scientific notation when large or small.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a < 1e-12 {
        // Float noise around a zero tick.
        return "0".into();
    }
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}
