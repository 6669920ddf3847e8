//! The loss's tests by hand values: the clip, the KL term, the mismatch statistics. Every loss type
//! against a direct scalar computation is in `loss_types_tests.rs`.

use super::*;
use candle_core::{Device, Var};

pub(super) fn t2(v: &[&[f32]]) -> Tensor {
    let rows = v.len();
    let cols = v[0].len();
    Tensor::from_vec(v.concat(), (rows, cols), &Device::Cpu).unwrap()
}

pub(super) fn cfg(agg: LossAgg) -> LossConfig {
    LossConfig {
        loss_type: LossType::Grpo,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: 0.0,
        agg,
        max_completion_tokens: 4,
        off_policy: OffPolicy::None,
        is_cap: 2.0,
        sapo_tau_pos: 1.0,
        sapo_tau_neg: 1.05,
    }
}

/// The loss with the ratio taken against the sampler's log-probs (no correction).
fn run(
    logp: &Tensor,
    old: &Tensor,
    reference: Option<&Tensor>,
    adv: &Tensor,
    mask: &Tensor,
    cfg: &LossConfig,
) -> Result<(Tensor, LossStats)> {
    policy_loss(
        &LossInputs {
            logp,
            old_logp: old,
            sampler_logp: None,
            ref_logp: reference,
            advantages: adv,
            mask,
        },
        cfg,
    )
}

/// Two groups of two; rows have 3, 1, 2 and 4 loss tokens (the rest is padding).
fn batch() -> (Var, Tensor, Tensor, Tensor) {
    let logp = Var::from_tensor(&t2(&[
        &[-1.0, -2.0, -0.5, 0.0],
        &[-1.0, 0.0, 0.0, 0.0],
        &[-0.3, -0.7, 0.0, 0.0],
        &[-1.0, -1.0, -1.0, -1.0],
    ]))
    .unwrap();
    let mask = t2(&[
        &[1., 1., 1., 0.],
        &[1., 0., 0., 0.],
        &[1., 1., 0., 0.],
        &[1., 1., 1., 1.],
    ]);
    let adv = Tensor::new(&[1.0f32, -1.0, 0.5, -0.5], &Device::Cpu).unwrap();
    let old = logp.as_tensor().detach();
    (logp, old, adv, mask)
}

#[test]
fn at_ratio_one_the_clip_is_inactive_and_loss_and_gradient_match_hand_values() {
    let (logp, old, adv, mask) = batch();
    let tokens = [3.0f64, 1.0, 2.0, 4.0];
    let a = [1.0f64, -1.0, 0.5, -0.5];
    for agg in [
        LossAgg::TokenMean,
        LossAgg::SeqMeanTokenMean,
        LossAgg::SeqMeanTokenSumNorm,
    ] {
        let (loss, stats) = run(logp.as_tensor(), &old, None, &adv, &mask, &cfg(agg)).unwrap();
        // At ρ = 1 each loss token contributes −A, and d loss / d logp = −A · weight.
        let weight = |i: usize| match agg {
            LossAgg::TokenMean => 1.0 / 10.0,
            LossAgg::SeqMeanTokenMean => 1.0 / (4.0 * tokens[i]),
            LossAgg::SeqMeanTokenSumNorm => 1.0 / (4.0 * 4.0),
        };
        let want: f64 = (0..4).map(|i| -a[i] * tokens[i] * weight(i)).sum();
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{agg:?}: {got} vs {want}");
        assert_eq!(
            (stats.clip_low, stats.clip_high, stats.tokens),
            (0.0, 0.0, 10)
        );
        let grads = loss.backward().unwrap();
        let g: Vec<Vec<f32>> = grads.get(logp.as_tensor()).unwrap().to_vec2().unwrap();
        let m: Vec<Vec<f32>> = mask.to_vec2().unwrap();
        for i in 0..4 {
            for j in 0..4 {
                let want = if m[i][j] == 1.0 {
                    -a[i] * weight(i)
                } else {
                    0.0
                };
                assert!(
                    (g[i][j] as f64 - want).abs() < 1e-6,
                    "{agg:?} grad [{i},{j}]: {} vs {want}",
                    g[i][j]
                );
            }
        }
    }
}

#[test]
fn the_clip_stops_the_gradient_beyond_the_trust_region() {
    let logp = Var::from_tensor(&t2(&[&[0.0, 0.0]])).unwrap();
    // ρ = e^0.5 ≈ 1.65 > 1.2 with A > 0: clipped, no gradient. ρ = e^-0.5 ≈ 0.61 with A > 0: active.
    let old = t2(&[&[-0.5, 0.5]]);
    let adv = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
    let mask = t2(&[&[1.0, 1.0]]);
    let (loss, stats) = run(
        logp.as_tensor(),
        &old,
        None,
        &adv,
        &mask,
        &cfg(LossAgg::TokenMean),
    )
    .unwrap();
    let want = -(1.2 + (-0.5f64).exp()) / 2.0;
    assert!((loss.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
    assert_eq!(stats.clip_high, 0.5);
    let g: Vec<Vec<f32>> = loss
        .backward()
        .unwrap()
        .get(logp.as_tensor())
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(g[0][0], 0.0);
    assert!((g[0][1] as f64 + (-0.5f64).exp() / 2.0).abs() < 1e-6);
}

#[test]
fn beta_adds_the_expected_k3() {
    let (logp, old, adv, mask) = batch();
    let reference = (logp.as_tensor() - 0.1).unwrap(); // ref − logp = −0.1 everywhere
    let base = run(
        logp.as_tensor(),
        &old,
        None,
        &adv,
        &mask,
        &cfg(LossAgg::TokenMean),
    )
    .unwrap()
    .0;
    let mut c = cfg(LossAgg::TokenMean);
    c.beta = 0.5;
    let (with, stats) = run(logp.as_tensor(), &old, Some(&reference), &adv, &mask, &c).unwrap();
    let k3 = (-0.1f64).exp() + 0.1 - 1.0;
    let diff = (with.to_scalar::<f32>().unwrap() - base.to_scalar::<f32>().unwrap()) as f64;
    assert!((diff - 0.5 * k3).abs() < 1e-6, "{diff} vs {}", 0.5 * k3);
    assert!((stats.kl_ref - k3).abs() < 1e-6);
    c.beta = 0.5;
    assert!(run(logp.as_tensor(), &old, None, &adv, &mask, &c).is_err());
}

#[test]
fn mismatch_statistics_by_hand() {
    // Two rows, the last column of row 1 masked: d = logp − old over the loss tokens.
    let logp = t2(&[&[-1.0, -2.0], &[-0.5, -3.0]]);
    let old = t2(&[&[-1.0, -2.5], &[-0.2, -9.0]]);
    let mask = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
    let adv = Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
    let (_, s) = run(&logp, &old, None, &adv, &mask, &cfg(LossAgg::TokenMean)).unwrap();
    let d = [0.0f64, 0.5, -0.3];
    let k3 = |x: f64| x.exp() - 1.0 - x;
    assert!((s.mismatch_max - 0.5).abs() < 1e-6, "{s:?}");
    assert!((s.mismatch_mean - 0.8 / 3.0).abs() < 1e-6, "{s:?}");
    let want = d.iter().map(|&x| k3(x)).sum::<f64>() / 3.0;
    assert!((s.mismatch_k3 - want).abs() < 1e-6, "{s:?} vs {want}");
    // The same log-probs: no mismatch at all.
    let (_, z) = run(&old, &old, None, &adv, &mask, &cfg(LossAgg::TokenMean)).unwrap();
    assert_eq!(
        (z.mismatch_max, z.mismatch_mean, z.mismatch_k3),
        (0.0, 0.0, 0.0)
    );
}
