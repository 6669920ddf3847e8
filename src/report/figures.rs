//! The report's figures, each as SVG and PNG: curves of the per-step metrics against step and against
//! cumulative FLOPs, and held-out accuracy bars with standard errors.
//!
//! PNG text needs a font file: the first of `RPT_FONT` and the usual system sans-serif fonts that
//! exists is used. Without one, PNGs are skipped with a warning; the SVGs name a font family and leave
//! drawing the text to the viewer.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::plot::{self, Axes, Line, font, render};
use super::{Series, eval_score, series_points};
use crate::error::Result;

/// The curves: (file stem, title, metrics key; `a/b` reads key `b` inside object `a`).
pub const PANELS: &[(&str, &str, &str)] = &[
    (
        "reward",
        "reward (mean; band: ± std, or the seeds' range)",
        "reward_mean",
    ),
    (
        "accuracy",
        "accuracy (prefix_match) of the sampled answers",
        "accuracy",
    ),
    (
        "format_failures",
        "format failures (share of completions)",
        "format_failure_rate",
    ),
    (
        "format_no_think_end",
        "format failures: no </think>",
        "format_failures/no_think_end",
    ),
    (
        "format_no_boxed",
        "format failures: no \\boxed{}",
        "format_failures/no_boxed",
    ),
    (
        "format_unclosed",
        "format failures: unclosed \\boxed{",
        "format_failures/unclosed",
    ),
    (
        "completion_len",
        "completion length (tokens)",
        "completion_len",
    ),
    ("thought_len", "thought length (tokens)", "thought_len"),
    (
        "entropy",
        "entropy (mean −log π of sampled tokens)",
        "entropy",
    ),
    ("approx_kl", "KL to the sampler (k1)", "approx_kl"),
    ("kl_ref", "KL to the reference (k3)", "kl_ref"),
    ("clip_low", "clip fraction, low", "clip_low"),
    ("clip_high", "clip fraction, high", "clip_high"),
    ("grad_norm", "gradient norm", "grad_norm"),
    ("lr", "learning rate", "lr"),
    (
        "mismatch",
        "trainer/sampler mismatch, max |Δ log π|",
        "logprob_mismatch_max",
    ),
    ("rollout_s", "time: sampling (s)", "rollout_s"),
    ("verify_s", "time: verifying (s)", "verify_s"),
    ("learn_s", "time: update (s)", "learn_s"),
    ("tokens_per_s", "sampled tokens per second", "tokens_per_s"),
];

/// The x axes of the curves: (file suffix, metrics key, axis label).
pub const AXES: &[(&str, &str, &str)] = &[
    ("step", "step", "step"),
    ("flops", "flops_cumulative", "model FLOPs (cumulative)"),
];

/// The held-out splits drawn as bars, where a run has them.
pub const SPLITS: &[&str] = &["all", "easy", "medium", "hard"];

/// What was drawn: per figure its title and file stem (the files are `stem.svg`, `stem.png`).
#[derive(Debug, Default)]
pub struct Drawn {
    pub curves: Vec<(String, String)>,
    pub bars: Vec<(String, String)>,
    /// Held-out accuracy against training FLOPs, per split (runs with `accuracy_vs_compute.json`).
    pub compute: Vec<(String, String)>,
    pub png: bool,
    pub dir: PathBuf,
    pub warnings: Vec<String>,
}

impl Drawn {
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = vec![];
        for (_, stem) in self.curves.iter().chain(&self.bars).chain(&self.compute) {
            out.push(self.dir.join(format!("{stem}.svg")));
            if self.png {
                out.push(self.dir.join(format!("{stem}.png")));
            }
        }
        out
    }
}

/// Draws every figure of `series` into `dir`.
pub fn draw_all(series: &[Series], dir: &Path) -> Result<Drawn> {
    let mut drawn = Drawn {
        png: font(),
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    if !drawn.png {
        drawn.warnings.push(
            "no font file found for PNG text (set RPT_FONT to a .ttf); PNG figures were skipped, the SVGs are complete".into(),
        );
    }
    for (suffix, x, xlabel) in AXES {
        for (stem, title, key) in PANELS {
            let raw: Vec<Curve> = series
                .iter()
                .map(|s| (s.label.clone(), curve(s, x, key)))
                .filter(|(_, p)| !p.is_empty())
                .collect();
            if raw.is_empty() {
                continue;
            }
            let w = smoothing_window(raw.iter().map(|(_, p)| p.len()).max().unwrap_or(0));
            let lines: Vec<Curve> = raw.into_iter().map(|(l, p)| (l, smooth(&p, w))).collect();
            let title = if w > 1 {
                format!("{title} · mean of {w} steps")
            } else {
                title.to_string()
            };
            let title = title.as_str();
            let file = format!("{stem}_vs_{suffix}");
            render(
                dir,
                &file,
                drawn.png,
                |r| line_chart(r, title, xlabel, &lines),
                |r| line_chart(r, title, xlabel, &lines),
            )?;
            drawn
                .curves
                .push((format!("{title} — against {xlabel}"), file));
        }
    }
    for split in SPLITS {
        let bars: Vec<Bars> = series
            .iter()
            .map(|s| {
                let at = |when, mode| eval_score(s, when, split, mode);
                let scores = [
                    at("before", "standard"),
                    at("after", "standard"),
                    at("before", "reasoning"),
                    at("after", "reasoning"),
                ];
                (s.label.clone(), scores)
            })
            .filter(|(_, v)| v.iter().any(Option::is_some))
            .collect();
        if bars.is_empty() {
            continue;
        }
        let file = format!("heldout_{split}");
        let title = format!("held-out accuracy, {split} (± standard error)");
        render(
            dir,
            &file,
            drawn.png,
            |r| bar_chart(r, &title, &bars),
            |r| bar_chart(r, &title, &bars),
        )?;
        drawn.bars.push((title.clone(), file));
    }
    for split in SPLITS {
        let curves = super::compute::curves(series, split);
        if curves.is_empty() {
            continue;
        }
        let file = format!("heldout_vs_flops_{split}");
        let title =
            format!("held-out accuracy against training compute, {split} (± SE; dashed: fit)");
        render(
            dir,
            &file,
            drawn.png,
            |r| super::compute::chart(r, &title, &curves),
            |r| super::compute::chart(r, &title, &curves),
        )?;
        drawn.compute.push((title, file));
    }
    Ok(drawn)
}

/// The window of the moving average a curve of `n` points is drawn with: a twenty-fifth of the run,
/// so that the trend of a noisy per-step metric shows; 1 (none) for short runs.
pub fn smoothing_window(n: usize) -> usize {
    (n / 25).max(1)
}

/// A centred moving average of every column but x, over `w` points.
fn smooth(p: &[(f64, f64, f64, f64)], w: usize) -> Vec<(f64, f64, f64, f64)> {
    if w <= 1 {
        return p.to_vec();
    }
    (0..p.len())
        .map(|i| {
            let lo = i.saturating_sub(w / 2);
            let hi = (i + w - w / 2).min(p.len());
            let k = (hi - lo) as f64;
            let avg =
                |f: fn(&(f64, f64, f64, f64)) -> f64| p[lo..hi].iter().map(f).sum::<f64>() / k;
            (p[i].0, avg(|q| q.1), avg(|q| q.2), avg(|q| q.3))
        })
        .collect()
}

/// A series' curve; a single run's reward gets its own ± std band.
fn curve(s: &Series, x: &str, key: &str) -> Vec<(f64, f64, f64, f64)> {
    let mut p = series_points(s, x, key);
    if s.runs.len() == 1 && key == "reward_mean" {
        let std = series_points(s, x, "reward_std");
        if std.len() == p.len() {
            for (pt, sd) in p.iter_mut().zip(&std) {
                pt.2 = pt.1 - sd.1;
                pt.3 = pt.1 + sd.1;
            }
        }
    }
    p
}

type Curve = (String, Vec<(f64, f64, f64, f64)>);

/// A figure of per-step curves, each with its band where it has one.
fn line_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    xlabel: &str,
    curves: &[Curve],
) -> std::result::Result<(), String> {
    let lines: Vec<Line> = curves
        .iter()
        .map(|(label, points)| Line {
            label: label.clone(),
            points: points.clone(),
            markers: false,
            dashed: vec![],
        })
        .collect();
    let axes = Axes {
        title,
        xlabel,
        ylabel: "",
        percent: false,
        headroom: 0.0,
        legend: SeriesLabelPosition::LowerRight,
    };
    plot::lines(root, &axes, &lines)
}

/// The four bars of a series: standard mode before and after, reasoning mode before and after.
const BAR_KINDS: [(&str, RGBColor); 4] = [
    ("standard, before", RGBColor(190, 190, 190)),
    ("standard, after", RGBColor(100, 100, 100)),
    ("reasoning, before", RGBColor(158, 202, 225)),
    ("reasoning, after", RGBColor(33, 113, 181)),
];

type Bars = (String, [Option<(f64, f64)>; 4]);

fn bar_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    bars: &[Bars],
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let top = bars
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().map(|(m, s)| m + s))
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.45;
    let width = bars.len() as f64 * 5.0;
    // Under each group of bars, the series' short names, short enough to fit.
    let names = super::short_names(&bars.iter().map(|b| b.0.clone()).collect::<Vec<_>>());
    let labels: Vec<String> = names
        .into_iter()
        .map(|v| {
            if v.chars().count() > 20 {
                format!("{}…", v.chars().take(19).collect::<String>())
            } else {
                v
            }
        })
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..width, 0.0..top * 100.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() * 5 + 1)
        .x_label_formatter(&|v| {
            let i = (*v / 5.0).floor() as usize;
            if (*v - (i as f64 * 5.0 + 2.0)).abs() < 0.51 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("accuracy (%)")
        .draw()
        .map_err(e)?;
    for (k, (kind, color)) in BAR_KINDS.iter().enumerate() {
        let color = *color;
        let rects: Vec<Rectangle<(f64, f64)>> = bars
            .iter()
            .enumerate()
            .filter_map(|(i, (_, v))| {
                let (m, _) = v[k]?;
                let x = i as f64 * 5.0 + 0.5 + k as f64;
                Some(Rectangle::new(
                    [(x, 0.0), (x + 0.9, m * 100.0)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(e)?
            .label(*kind)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let whiskers: Vec<PathElement<(f64, f64)>> = bars
            .iter()
            .enumerate()
            .filter_map(|(i, (_, v))| {
                let (m, s) = v[k]?;
                let x = i as f64 * 5.0 + 0.95 + k as f64;
                Some(PathElement::new(
                    vec![(x, (m - s) * 100.0), (x, (m + s) * 100.0)],
                    BLACK.stroke_width(1),
                ))
            })
            .collect();
        chart.draw_series(whiskers).map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}
