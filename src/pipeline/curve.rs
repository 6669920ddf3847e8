//! Accuracy against compute: the fit `accuracy = a − b · C^(−α)` that the RPT paper draws through its
//! accuracy-against-training-FLOPs points (Fig. 5), with its R².
//!
//! For a fixed α the model is linear in (a, b), so (a, b) come from least squares and α from a search:
//! a log-spaced scan over [0.01, 3] and golden-section refinement around the best point. C is scaled by
//! its smallest value first, so that C^(−α) stays in a sane range; `b` is reported for C in FLOPs.
//! Points at zero compute cannot enter (C^(−α) is infinite there) and are left out.

/// A fitted `a − b · C^(−α)`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PowerLaw {
    pub a: f64,
    pub b: f64,
    pub alpha: f64,
    pub r2: f64,
    pub points: usize,
    /// α ended at an end of the searched range [0.01, 3]: the points do not pin the curve down.
    pub alpha_at_bound: bool,
}

impl PowerLaw {
    pub fn at(&self, c: f64) -> f64 {
        self.a - self.b * c.powf(-self.alpha)
    }
}

/// (a, b, residual sum of squares) of the least-squares fit for one α, on C scaled by `c0`.
fn solve(points: &[(f64, f64)], c0: f64, alpha: f64) -> (f64, f64, f64) {
    let n = points.len() as f64;
    let xs: Vec<f64> = points.iter().map(|(c, _)| (c / c0).powf(-alpha)).collect();
    let mx = xs.iter().sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, (_, y)) in xs.iter().zip(points) {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    // y = a + k·x with k = −b (scaled).
    let k = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let a = my - k * mx;
    let rss = xs
        .iter()
        .zip(points)
        .map(|(x, (_, y))| (y - a - k * x).powi(2))
        .sum();
    (a, -k, rss)
}

/// Fits `a − b · C^(−α)` to (compute, accuracy) points; `None` with fewer than 3 points of positive
/// compute.
pub fn fit_power_law(points: &[(f64, f64)]) -> Option<PowerLaw> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(c, y)| *c > 0.0 && c.is_finite() && y.is_finite())
        .collect();
    if pts.len() < 3 {
        return None;
    }
    let c0 = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let rss = |alpha: f64| solve(&pts, c0, alpha).2;
    let (lo, hi) = (0.01f64.ln(), 3f64.ln());
    let grid: Vec<f64> = (0..=200)
        .map(|i| (lo + (hi - lo) * i as f64 / 200.0).exp())
        .collect();
    let best = (0..grid.len())
        .min_by(|&i, &j| rss(grid[i]).total_cmp(&rss(grid[j])))
        .expect("non-empty grid");
    let (mut x0, mut x1) = (grid[best.saturating_sub(1)], grid[(best + 1).min(200)]);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..100 {
        let (m1, m2) = (x1 - g * (x1 - x0), x0 + g * (x1 - x0));
        if rss(m1) < rss(m2) {
            x1 = m2;
        } else {
            x0 = m1;
        }
    }
    let alpha = (x0 + x1) / 2.0;
    let (a, b_scaled, res) = solve(&pts, c0, alpha);
    let my = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
    let tot: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    Some(PowerLaw {
        a,
        // b · (C/c0)^(−α) = (b · c0^α) · C^(−α).
        b: b_scaled * c0.powf(alpha),
        alpha,
        r2: if tot > 0.0 { 1.0 - res / tot } else { 1.0 },
        points: pts.len(),
        alpha_at_bound: !(0.0101..=2.99).contains(&alpha),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_known_parameters_from_synthetic_points() {
        let truth = PowerLaw {
            a: 0.45,
            b: 30.0,
            alpha: 0.25,
            r2: 1.0,
            points: 0,
            alpha_at_bound: false,
        };
        let pts: Vec<(f64, f64)> = (0..12)
            .map(|i| {
                let c = 1e9 * 2f64.powi(i);
                (c, truth.at(c))
            })
            .collect();
        let f = fit_power_law(&pts).unwrap();
        assert!((f.a - 0.45).abs() < 1e-4, "{f:?}");
        assert!((f.alpha - 0.25).abs() < 1e-3, "{f:?}");
        assert!((f.b / 30.0 - 1.0).abs() < 1e-2, "{f:?}");
        assert!(f.r2 > 0.999_999 && !f.alpha_at_bound, "{f:?}");

        // With noise, R² drops below 1 and the fit stays close.
        let noisy: Vec<(f64, f64)> = pts
            .iter()
            .enumerate()
            .map(|(i, &(c, y))| (c, y + if i % 2 == 0 { 0.002 } else { -0.002 }))
            .collect();
        let g = fit_power_law(&noisy).unwrap();
        assert!(g.r2 < 1.0 && g.r2 > 0.95, "{g:?}");
        assert!((g.a - 0.45).abs() < 0.02, "{g:?}");
    }

    #[test]
    fn too_few_points_or_zero_compute_give_no_fit() {
        assert!(fit_power_law(&[(1.0, 0.1), (2.0, 0.2)]).is_none());
        assert!(fit_power_law(&[(0.0, 0.1), (1.0, 0.2), (2.0, 0.3)]).is_none());
        let f = fit_power_law(&[(0.0, 0.0), (1.0, 0.1), (2.0, 0.2), (4.0, 0.25)]).unwrap();
        assert_eq!(f.points, 3);
    }
}
