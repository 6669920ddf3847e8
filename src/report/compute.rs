//! The report's accuracy-against-compute figures, from what `rpt eval --run` wrote into a run
//! (`accuracy_vs_compute.json`): held-out accuracy of every checkpoint against cumulative training
//! FLOPs, one figure per split, standard and reasoning mode each ± one standard error, and the fitted
//! `a − b·C^(−α)` drawn dashed over the checkpoints it was fitted to.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::plot::{self, Axes, Line};
use super::{Series, short_names};

/// One mode of one run: its checkpoints as (FLOPs, accuracy, accuracy − SE, accuracy + SE), and the
/// fit over them where `rpt eval --run` made one.
#[derive(Debug, Clone)]
pub struct ComputeCurve {
    pub label: String,
    pub points: Vec<(f64, f64, f64, f64)>,
    pub fit: Option<Fit>,
}

/// `accuracy = a − b·C^(−α)` and its R².
#[derive(Debug, Clone, Copy)]
pub struct Fit {
    pub a: f64,
    pub b: f64,
    pub alpha: f64,
    pub r2: f64,
    pub alpha_at_bound: bool,
}

impl Fit {
    pub fn at(&self, flops: f64) -> f64 {
        self.a - self.b * flops.powf(-self.alpha)
    }
}

/// The curves of `split` of every run that has `accuracy_vs_compute.json`, two per run (standard,
/// then reasoning mode). A run is named by its series' short name, and by its directory too where the
/// series has several runs (seeds are drawn each, not averaged: their checkpoints need not share FLOPs).
pub fn curves(series: &[Series], split: &str) -> Vec<ComputeCurve> {
    let mut out = vec![];
    let labels: Vec<String> = series.iter().map(|s| s.label.clone()).collect();
    for (s, short) in series.iter().zip(short_names(&labels)) {
        for r in &s.runs {
            let Some(c) = &r.compute else { continue };
            let name = if s.runs.len() > 1 {
                format!("{short} ({})", r.dir.display())
            } else {
                short.clone()
            };
            for mode in ["standard", "reasoning"] {
                let points: Vec<(f64, f64, f64, f64)> = c["points"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        let sp = p.get("splits")?.get(split)?;
                        let acc = sp.get(format!("{mode}_accuracy"))?.as_f64()?;
                        let se = sp.get(format!("{mode}_se"))?.as_f64()?;
                        Some((p.get("flops")?.as_f64()?, acc, acc - se, acc + se))
                    })
                    .collect();
                if points.is_empty() {
                    continue;
                }
                let fit = c["fits"].get(format!("{split}/{mode}")).and_then(|f| {
                    Some(Fit {
                        a: f.get("a")?.as_f64()?,
                        b: f.get("b")?.as_f64()?,
                        alpha: f.get("alpha")?.as_f64()?,
                        r2: f.get("r2")?.as_f64()?,
                        alpha_at_bound: f.get("alpha_at_bound")?.as_bool()?,
                    })
                });
                out.push(ComputeCurve {
                    label: format!("{name}: {mode}"),
                    points,
                    fit,
                });
            }
        }
    }
    out
}

/// The fitted curve at 48 points between the smallest and the largest positive FLOPs of `points`
/// (the starting model, at 0 FLOPs, is not fitted).
fn fit_line(fit: &Fit, points: &[(f64, f64, f64, f64)]) -> Vec<(f64, f64)> {
    let xs: Vec<f64> = points.iter().map(|p| p.0).filter(|&x| x > 0.0).collect();
    let (lo, hi) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(0.0, f64::max),
    );
    if !(lo.is_finite() && hi > lo) {
        return vec![];
    }
    (0..48)
        .map(|i| lo + (hi - lo) * i as f64 / 47.0)
        .map(|x| (x, fit.at(x)))
        .filter(|p| p.1.is_finite())
        .collect()
}

/// One split's figure: every curve's checkpoints as points joined by a line with an error band, its
/// fit dashed in the same colour. The y axis spans the measurements (a fit that leaves them is cut
/// at the frame), with room above them for the legend.
pub fn chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    curves: &[ComputeCurve],
) -> std::result::Result<(), String> {
    let lines: Vec<Line> = curves
        .iter()
        .map(|c| Line {
            label: match &c.fit {
                Some(f) => format!(
                    "{}, fit R² {:.2}{}",
                    c.label,
                    f.r2,
                    if f.alpha_at_bound {
                        ", α at a bound"
                    } else {
                        ""
                    }
                ),
                None => c.label.clone(),
            },
            points: c.points.clone(),
            markers: true,
            dashed: c.fit.map(|f| fit_line(&f, &c.points)).unwrap_or_default(),
        })
        .collect();
    let axes = Axes {
        title,
        xlabel: "model FLOPs of training (cumulative)",
        ylabel: "held-out accuracy",
        percent: true,
        // A line of legend per curve.
        headroom: (0.1 * curves.len() as f64).clamp(0.2, 0.8),
        legend: SeriesLabelPosition::UpperLeft,
    };
    plot::lines(root, &axes, &lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::RunData;

    fn run(dir: &str, compute: serde_json::Value) -> RunData {
        RunData {
            dir: dir.into(),
            config: Default::default(),
            metrics: vec![],
            eval: None,
            samples: vec![],
            compute: Some(compute),
        }
    }

    #[test]
    fn a_runs_checkpoints_become_one_curve_per_mode_with_its_fit() {
        let split = |acc: f64| {
            serde_json::json!({"hard": {"standard_accuracy": acc, "standard_se": 0.01,
            "reasoning_accuracy": acc / 2.0, "reasoning_se": 0.02}})
        };
        let compute = serde_json::json!({
            "points": [{"flops": 0, "splits": split(0.2)}, {"flops": 1e12, "splits": split(0.3)},
                       {"flops": 2e12, "splits": {"easy": {}}}, {"flops": 3e12, "splits": split(0.4)}],
            "fits": {"hard/reasoning": {"a": 0.5, "b": 2.0, "alpha": 0.1, "r2": 0.9, "alpha_at_bound": false}}
        });
        let series = vec![Series {
            label: "rpt".into(),
            runs: vec![run("r", compute)],
        }];
        let c = curves(&series, "hard");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].label, "rpt: standard");
        // A checkpoint without the split is left out; SE becomes the band.
        let hard: Vec<(f64, f64)> = c[0].points.iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(hard, vec![(0.0, 0.2), (1e12, 0.3), (3e12, 0.4)]);
        assert!((c[0].points[1].2 - 0.29).abs() < 1e-12 && (c[0].points[1].3 - 0.31).abs() < 1e-12);
        assert!(c[0].fit.is_none());
        let f = c[1].fit.expect("the reasoning fit");
        assert!((f.at(1e10) - (0.5 - 2.0 * 1e10f64.powf(-0.1))).abs() < 1e-12);
        // The fit is drawn over the fitted checkpoints only (FLOPs > 0).
        let line = fit_line(&f, &c[1].points);
        assert_eq!(line.len(), 48);
        assert_eq!((line[0].0, line[47].0), (1e12, 3e12));
        assert!(curves(&series, "medium").is_empty());
    }

    #[test]
    fn series_are_named_by_the_key_with_the_shortest_distinct_values() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let two = l(&[
            "train.flop_budget=0, train.objective=rpt",
            "train.flop_budget=27895753484288, train.objective=next_token",
        ]);
        assert_eq!(short_names(&two), l(&["rpt", "next_token"]));
        // Words before numbers, even shorter ones.
        let steps = l(&[
            "train.objective=rpt, train.steps=600",
            "train.objective=next_token, train.steps=1200",
        ]);
        assert_eq!(short_names(&steps), l(&["rpt", "next_token"]));
        // Words before booleans, which need their key to mean anything.
        let flags = l(&[
            "grpo.dynamic_sampling=true, train.objective=rpt",
            "grpo.dynamic_sampling=false, train.objective=next_token",
        ]);
        assert_eq!(short_names(&flags), l(&["rpt", "next_token"]));
        let flag = l(&["grpo.dynamic_sampling=true", "grpo.dynamic_sampling=false"]);
        assert_eq!(short_names(&flag), l(&["true", "false"]));
        let numbers = l(&["lr=0.001, seed=0", "lr=0.0001, seed=1"]);
        assert_eq!(short_names(&numbers), l(&["0", "1"]));
        assert_eq!(short_names(&l(&["tiny"])), l(&["tiny"]));
        // No one key tells them apart: all the values.
        let pairs = l(&["a=1, b=x", "a=1, b=y", "a=2, b=x"]);
        assert_eq!(short_names(&pairs), l(&["1, x", "1, y", "2, x"]));
    }
}
