//! Group-relative advantages (GRPO, Dr. GRPO, RLP) and the helpers around them.

use candle_core::Tensor;

/// How rewards are scaled after subtracting the group mean (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's std (GRPO).
    Group,
    /// Divide by the std of the whole batch.
    Batch,
    /// No division (Dr. GRPO).
    None,
}

/// Which advantage estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvantageMode {
    Grpo(ScaleRewards),
    /// RLP: `G / (G − 1) · (r − mean)`.
    Rlp,
}

const EPS: f64 = 1e-6;

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Unbiased standard deviation (as torch's `std`, which TRL and verl use); 0 for fewer than 2 values.
fn std(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Advantages for each completion of each group. A group whose rewards are all equal gets zeros.
pub fn advantages(groups: &[Vec<f64>], mode: AdvantageMode) -> Vec<Vec<f64>> {
    let all: Vec<f64> = groups.iter().flatten().copied().collect();
    let batch_std = std(&all);
    groups
        .iter()
        .map(|g| {
            // An all-equal group carries no signal; its float mean may differ from the values by an ulp.
            if g.windows(2).all(|w| w[0] == w[1]) {
                return vec![0.0; g.len()];
            }
            let m = mean(g);
            let n = g.len() as f64;
            g.iter()
                .map(|&r| {
                    let d = r - m;
                    if d == 0.0 {
                        return 0.0;
                    }
                    match mode {
                        AdvantageMode::Grpo(ScaleRewards::Group) => d / (std(g) + EPS),
                        AdvantageMode::Grpo(ScaleRewards::Batch) => d / (batch_std + EPS),
                        AdvantageMode::Grpo(ScaleRewards::None) => d,
                        AdvantageMode::Rlp => n / (n - 1.0).max(1.0) * d,
                    }
                })
                .collect()
        })
        .collect()
}

/// Indices of groups whose rewards are all equal (no gradient signal), for dynamic sampling.
pub fn zero_variance_groups(groups: &[Vec<f64>]) -> Vec<usize> {
    groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.windows(2).all(|w| w[0] == w[1]))
        .map(|(i, _)| i)
        .collect()
}

/// RLP's EMA teacher: `φ ← τ φ + (1 − τ) θ`, tensor by tensor.
pub fn ema_update(phi: &Tensor, theta: &Tensor, tau: f64) -> candle_core::Result<Tensor> {
    (phi * tau)? + (theta * (1.0 - tau))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn group_scaling_by_hand() {
        // r = [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3).
        let a = advantages(
            &[vec![1.0, 0.0, 0.0, 1.0]],
            AdvantageMode::Grpo(ScaleRewards::Group),
        );
        let s = (1.0f64 / 3.0).sqrt();
        assert!((a[0][0] - 0.5 / (s + EPS)).abs() < 1e-12);
        assert!((a[0][1] + 0.5 / (s + EPS)).abs() < 1e-12);
    }

    #[test]
    fn batch_none_and_rlp_by_hand() {
        let g = vec![vec![1.0, 0.0], vec![0.0, 0.0]];
        let none = advantages(&g, AdvantageMode::Grpo(ScaleRewards::None));
        assert_eq!(none, vec![vec![0.5, -0.5], vec![0.0, 0.0]]);
        let batch = advantages(&g, AdvantageMode::Grpo(ScaleRewards::Batch));
        let s = std(&[1.0, 0.0, 0.0, 0.0]);
        assert!((batch[0][0] - 0.5 / (s + EPS)).abs() < 1e-12);
        let rlp = advantages(&[vec![3.0, 1.0, 2.0]], AdvantageMode::Rlp);
        assert_eq!(rlp, vec![vec![1.5, -1.5, 0.0]]);
    }

    #[test]
    fn filter_and_ema() {
        assert_eq!(
            zero_variance_groups(&[vec![1.0, 1.0], vec![0.0, 1.0], vec![0.0, 0.0]]),
            vec![0, 2]
        );
        let phi = Tensor::new(&[1.0f32, 0.0], &candle_core::Device::Cpu).unwrap();
        let theta = Tensor::new(&[0.0f32, 1.0], &candle_core::Device::Cpu).unwrap();
        let v: Vec<f32> = ema_update(&phi, &theta, 0.9).unwrap().to_vec1().unwrap();
        assert!((v[0] - 0.9).abs() < 1e-6 && (v[1] - 0.1).abs() < 1e-6);
    }

    proptest! {
        #[test]
        fn normalised_groups_are_centred_and_equal_groups_are_zero(g in proptest::collection::vec(0.0f64..1.0, 2..16)) {
            for mode in [AdvantageMode::Grpo(ScaleRewards::Group), AdvantageMode::Grpo(ScaleRewards::None), AdvantageMode::Rlp] {
                let a = &advantages(std::slice::from_ref(&g), mode)[0];
                prop_assert!(a.iter().sum::<f64>().abs() < 1e-6 * g.len() as f64 * 1e3);
                prop_assert!(a.iter().all(|x| x.is_finite()));
            }
            let a = &advantages(std::slice::from_ref(&g), AdvantageMode::Grpo(ScaleRewards::Group))[0];
            if std(&g) > 1e-3 {
                prop_assert!((std(a) - 1.0).abs() < 1e-2);
            }
            let flat = vec![g[0]; g.len()];
            prop_assert!(advantages(&[flat], AdvantageMode::Grpo(ScaleRewards::Group))[0].iter().all(|&x| x == 0.0));
        }
    }
}
