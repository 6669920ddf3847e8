//! Every loss type (`LossType::ALL`) and correction (TIS, masks, truncation, overlong shaping) against
//! a direct scalar computation of its value and gradient, token by token.

use super::tests::{cfg, t2};
use super::*;
use candle_core::{Device, Var};

/// A direct scalar computation of a loss type's value and gradient d loss / d logp, token by
/// token, for `logp`, `old` (rows of equal width), the advantages and a 0/1 mask; optionally
/// corrected by per-token weights `w` (TIS) or a reduced mask `active`.
fn by_hand(
    cfg: &LossConfig,
    logp: &[Vec<f64>],
    old: &[Vec<f64>],
    adv: &[f64],
    mask: &[Vec<f64>],
    w: Option<&[Vec<f64>]>,
    active: Option<&[Vec<f64>]>,
) -> (f64, Vec<Vec<f64>>) {
    let (n, t) = (logp.len(), logp[0].len());
    let lens: Vec<f64> = mask.iter().map(|r| r.iter().sum()).collect();
    let total: f64 = lens.iter().sum();
    let seqs = lens.iter().filter(|&&l| l > 0.0).count() as f64;
    let weight = |i: usize| match cfg.agg {
        LossAgg::TokenMean => 1.0 / total,
        LossAgg::SeqMeanTokenMean => 1.0 / (seqs * lens[i]),
        LossAgg::SeqMeanTokenSumNorm => 1.0 / (n * cfg.max_completion_tokens) as f64,
    };
    let clip = |r: f64| r.clamp(1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high);
    let (mut loss, mut grad) = (0.0, vec![vec![0.0; t]; n]);
    for i in 0..n {
        if lens[i] == 0.0 {
            continue;
        }
        let a = adv[i];
        let seq_ratio = ((0..t)
            .map(|j| mask[i][j] * (logp[i][j] - old[i][j]))
            .sum::<f64>()
            / lens[i])
            .exp();
        for j in 0..t {
            let on = active.map_or(mask[i][j], |m| m[i][j]);
            if mask[i][j] == 0.0 {
                continue;
            }
            let wt = w.map_or(1.0, |w| w[i][j]) * on * weight(i);
            let rho = (logp[i][j] - old[i][j]).exp();
            let (value, d) = match cfg.loss_type {
                LossType::Grpo | LossType::DrGrpo | LossType::Dapo | LossType::Bnpo => {
                    let unclipped_active = rho * a <= clip(rho) * a;
                    let d = if unclipped_active { -rho * a } else { 0.0 };
                    (-(rho * a).min(clip(rho) * a), d)
                }
                LossType::Gspo => {
                    let s = seq_ratio;
                    let unclipped_active = s * a <= clip(s) * a;
                    let d = if unclipped_active {
                        -a * s / lens[i]
                    } else {
                        0.0
                    };
                    // Each token of the sequence carries the sequence's loss; its gradient
                    // reaches every token through s.
                    (-(s * a).min(clip(s) * a), d)
                }
                LossType::Cispo => {
                    let c = rho.min(1.0 + cfg.epsilon_high);
                    (-c * a * logp[i][j], -c * a)
                }
                LossType::Sapo => {
                    let tau = if a > 0.0 {
                        cfg.sapo_tau_pos
                    } else {
                        cfg.sapo_tau_neg
                    };
                    let sig = 1.0 / (1.0 + (-tau * (rho - 1.0)).exp());
                    // d/d logp of σ(τ(ρ − 1))·4/τ is 4 σ (1 − σ) ρ.
                    (-sig * 4.0 / tau * a, -a * 4.0 * sig * (1.0 - sig) * rho)
                }
            };
            loss += wt * value;
            if cfg.loss_type == LossType::Gspo {
                // d/d logp_{i,k} of Σ_j wt_j ℓ_i: ℓ_i depends on every token k of row i.
                for k in 0..t {
                    grad[i][k] += wt * d * mask[i][k];
                }
            } else {
                grad[i][j] += wt * d;
            }
        }
    }
    (loss, grad)
}

/// The loss inputs with the ratio against the sampler's log-probs and no reference.
fn plain<'a>(logp: &'a Var, old: &'a Tensor, adv: &'a Tensor, mask: &'a Tensor) -> LossInputs<'a> {
    LossInputs {
        logp: logp.as_tensor(),
        old_logp: old,
        sampler_logp: None,
        ref_logp: None,
        advantages: adv,
        mask,
    }
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let v: Vec<Vec<f32>> = t.to_vec2().unwrap();
    v.into_iter()
        .map(|r| r.into_iter().map(|x| x as f64).collect())
        .collect()
}

fn check(
    cfg: &LossConfig,
    x: &LossInputs<'_>,
    w: Option<&[Vec<f64>]>,
    active: Option<&[Vec<f64>]>,
) {
    let (loss, _) = policy_loss(x, cfg).unwrap();
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    let adv: Vec<f64> = x
        .advantages
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|a| a as f64)
        .collect();
    let (want, want_grad) = by_hand(
        cfg,
        &rows(x.logp),
        &rows(x.old_logp),
        &adv,
        &rows(x.mask),
        w,
        active,
    );
    let tag = format!("{:?} {:?} {:?}", cfg.loss_type, cfg.agg, cfg.off_policy);
    assert!((got - want).abs() < 1e-5, "{tag}: loss {got} vs {want}");
    let g = rows(loss.backward().unwrap().get(x.logp).unwrap());
    for (i, (gr, wr)) in g.iter().zip(&want_grad).enumerate() {
        for (j, (a, b)) in gr.iter().zip(wr).enumerate() {
            assert!((a - b).abs() < 1e-5, "{tag}: grad [{i},{j}] {a} vs {b}");
        }
    }
}

/// Three rows with ratios inside and outside the trust region, both signs of A, and padding.
fn off_ratio_batch() -> (Var, Tensor, Tensor, Tensor) {
    let logp = Var::from_tensor(&t2(&[
        &[-1.0, -0.4, -2.0, -0.7],
        &[-0.2, -1.5, -0.9, 0.0],
        &[-0.6, -0.3, 0.0, 0.0],
    ]))
    .unwrap();
    // log ρ: row 0: 0.5 (clipped for A > 0), −0.1, 0.05, masked; row 1: −0.6 (clipped for A < 0),
    // 0.3, 0.02, padding; row 2: 0.1, −0.02, padding.
    let old = t2(&[
        &[-1.5, -0.3, -2.05, -0.2],
        &[0.4, -1.8, -0.92, 0.0],
        &[-0.7, -0.28, 0.0, 0.0],
    ]);
    let adv = Tensor::new(&[1.0f32, -0.8, 0.5], &Device::Cpu).unwrap();
    let mask = t2(&[&[1., 1., 1., 0.], &[1., 1., 1., 0.], &[1., 1., 0., 0.]]);
    (logp, old, adv, mask)
}

#[test]
fn every_loss_type_matches_a_direct_computation_with_clipped_and_masked_tokens() {
    let (logp, old, adv, mask) = off_ratio_batch();
    for loss_type in LossType::ALL {
        let p = loss_type.preset();
        for agg in [p.agg, LossAgg::TokenMean, LossAgg::SeqMeanTokenSumNorm] {
            let cfg = LossConfig {
                loss_type,
                epsilon_low: 0.2,
                // cispo's cap is set low enough that row 0's first token is truncated.
                epsilon_high: if loss_type == LossType::Cispo {
                    0.4
                } else {
                    0.25
                },
                agg,
                ..cfg(agg)
            };
            let x = plain(&logp, &old, &adv, &mask);
            check(&cfg, &x, None, None);
        }
    }
}

#[test]
fn clip_statistics_follow_each_type() {
    let (logp, old, adv, mask) = off_ratio_batch();
    let x = plain(&logp, &old, &adv, &mask);
    let c = |loss_type| LossConfig {
        loss_type,
        epsilon_high: 0.25,
        ..cfg(LossAgg::TokenMean)
    };
    // Token level: ρ = e^0.5 with A > 0 (high), ρ = e^−0.6 with A < 0 (low), of 8 tokens.
    let (_, s) = policy_loss(&x, &c(LossType::Grpo)).unwrap();
    assert_eq!(
        (s.clip_high, s.clip_low, s.tokens),
        (1.0 / 8.0, 1.0 / 8.0, 8)
    );
    // cispo truncates the weight of every token with ρ > 1.25 whatever A's sign: e^0.5, e^0.3.
    let (_, s) = policy_loss(&x, &c(LossType::Cispo)).unwrap();
    assert_eq!((s.clip_high, s.clip_low), (2.0 / 8.0, 0.0));
}

#[test]
fn gspo_on_one_token_sequences_is_grpo_token_level() {
    let logp = Var::from_tensor(&t2(&[&[-1.0], &[-0.2], &[-0.6], &[-2.0]])).unwrap();
    let old = t2(&[&[-1.5], &[0.4], &[-0.7], &[-1.95]]);
    let adv = Tensor::new(&[1.0f32, -0.8, 0.5, -0.3], &Device::Cpu).unwrap();
    let mask = t2(&[&[1.0], &[1.0], &[1.0], &[1.0]]);
    let x = plain(&logp, &old, &adv, &mask);
    let of = |loss_type| {
        let (l, s) = policy_loss(
            &x,
            &LossConfig {
                loss_type,
                ..cfg(LossAgg::SeqMeanTokenMean)
            },
        )
        .unwrap();
        let g = rows(l.backward().unwrap().get(logp.as_tensor()).unwrap());
        (l.to_scalar::<f32>().unwrap(), g, s.clip_high, s.clip_low)
    };
    let (gspo, grpo) = (of(LossType::Gspo), of(LossType::Grpo));
    assert!((gspo.0 - grpo.0).abs() < 1e-6, "{} vs {}", gspo.0, grpo.0);
    assert_eq!((gspo.2, gspo.3), (grpo.2, grpo.3));
    for (a, b) in gspo.1.iter().flatten().zip(grpo.1.iter().flatten()) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
fn tis_with_an_infinite_cap_is_no_correction() {
    let (logp, old, adv, mask) = off_ratio_batch();
    let mut c = LossConfig {
        off_policy: OffPolicy::Tis,
        is_cap: f64::INFINITY,
        ..cfg(LossAgg::TokenMean)
    };
    let value_and_grad = |x: &LossInputs<'_>, c: &LossConfig| {
        let (l, s) = policy_loss(x, c).unwrap();
        let g = rows(l.backward().unwrap().get(logp.as_tensor()).unwrap());
        (l.to_scalar::<f32>().unwrap() as f64, g, s)
    };
    let plain = plain(&logp, &old, &adv, &mask);
    // The sampler agreeing with the learner: every weight is 1, the same loss to the bit.
    let same = LossInputs {
        sampler_logp: Some(&old),
        ..plain
    };
    let (a, ga, _) = value_and_grad(&plain, &cfg(LossAgg::TokenMean));
    let (b, gb, s) = value_and_grad(&same, &c);
    assert_eq!((a, &ga), (b, &gb));
    assert_eq!((s.off_policy_share, s.is_weight_mean), (0.0, 1.0));
    // A sampler that differs, with every ratio inside the trust region: π_old/π_samp · ρ is the
    // ratio against the sampler, so an untruncated TIS equals the loss taken against it.
    c.epsilon_low = 0.99;
    c.epsilon_high = 1e3;
    let sampler = (&old - 0.3).unwrap();
    let untruncated = LossInputs {
        sampler_logp: Some(&sampler),
        ..plain
    };
    let against_sampler = LossInputs {
        old_logp: &sampler,
        ..plain
    };
    let none = LossConfig {
        off_policy: OffPolicy::None,
        ..c.clone()
    };
    let (a, ga, _) = value_and_grad(&untruncated, &c);
    let (b, gb, _) = value_and_grad(&against_sampler, &none);
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    for (x, y) in ga.iter().flatten().zip(gb.iter().flatten()) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}

#[test]
fn truncation_and_masks_by_hand() {
    let (logp, old, adv, mask) = off_ratio_batch();
    // log w = old − sampler: row 0: 1.0, 0.2, −1.0; row 1: 0.1, −0.1, 0.0; row 2: 0.5, 0.6.
    let lw = [
        vec![1.0, 0.2, -1.0, 0.0],
        vec![0.1, -0.1, 0.0, 0.0],
        vec![0.5, 0.6, 0.0, 0.0],
    ];
    let sampler = (&old
        - &t2(&[
            &[1.0, 0.2, -1.0, 0.0],
            &[0.1, -0.1, 0.0, 0.0],
            &[0.5, 0.6, 0.0, 0.0],
        ]))
        .unwrap();
    let x = LossInputs {
        logp: logp.as_tensor(),
        old_logp: &old,
        sampler_logp: Some(&sampler),
        ref_logp: None,
        advantages: &adv,
        mask: &mask,
    };
    let cap = 1.5f64; // ln 1.5 ≈ 0.405
    let m = rows(&mask);
    for (off, share) in [
        (OffPolicy::Tis, 3.0 / 8.0),
        (OffPolicy::TokenMask, 4.0 / 8.0),
        (OffPolicy::SequenceMask, 2.0 / 8.0),
    ] {
        let c = LossConfig {
            off_policy: off,
            is_cap: cap,
            epsilon_high: 0.25,
            ..cfg(LossAgg::TokenMean)
        };
        let w: Vec<Vec<f64>> = lw
            .iter()
            .map(|r| r.iter().map(|&l| f64::exp(l).min(cap)).collect())
            .collect();
        let active: Vec<Vec<f64>> = match off {
            OffPolicy::TokenMask => lw
                .iter()
                .zip(&m)
                .map(|(r, mr)| {
                    r.iter()
                        .zip(mr)
                        .map(|(&l, &k)| k * (l.abs() <= cap.ln()) as u8 as f64)
                        .collect()
                })
                .collect(),
            // Row means of log w: 0.0667, 0.0, 0.55 (masked).
            _ => vec![m[0].clone(), m[1].clone(), vec![0.0; 4]],
        };
        match off {
            OffPolicy::Tis => check(&c, &x, Some(&w), None),
            _ => check(&c, &x, None, Some(&active)),
        }
        let (_, s) = policy_loss(&x, &c).unwrap();
        assert!((s.off_policy_share - share).abs() < 1e-9, "{off:?}: {s:?}");
    }
}

#[test]
fn overlong_shaping_by_hand() {
    // 20 new tokens at most, a buffer of 4: free up to 16, then −1/4 a token, −1 at 20.
    let p = |len| overlong_penalty(len, 20, 4, 1.0);
    assert_eq!(
        (p(0), p(16), p(17), p(19), p(20), p(25)),
        (0.0, 0.0, -0.25, -0.75, -1.0, -1.0)
    );
    assert_eq!(overlong_penalty(20, 20, 0, 1.0), 0.0);
    assert_eq!(overlong_penalty(18, 20, 4, 0.5), -0.25);
}

#[test]
fn sapo_is_the_policy_gradient_on_policy_and_fades_off_it() {
    // On policy (ρ = 1) the gate's gradient is grpo's, −A per token, whatever τ.
    let logp = Var::from_tensor(&t2(&[&[-1.0, -0.5], &[-0.2, -2.0]])).unwrap();
    let old = logp.as_tensor().detach();
    let adv = Tensor::new(&[1.0f32, -0.5], &Device::Cpu).unwrap();
    let mask = t2(&[&[1.0, 1.0], &[1.0, 1.0]]);
    let grad = |loss_type| {
        let c = LossConfig {
            loss_type,
            sapo_tau_pos: 3.0,
            ..cfg(LossAgg::TokenMean)
        };
        let (l, s) = policy_loss(&plain(&logp, &old, &adv, &mask), &c).unwrap();
        (
            rows(l.backward().unwrap().get(logp.as_tensor()).unwrap()),
            s,
        )
    };
    let ((sapo, s), (grpo, _)) = (grad(LossType::Sapo), grad(LossType::Grpo));
    for (a, b) in sapo.iter().flatten().zip(grpo.iter().flatten()) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    assert_eq!((s.clip_low, s.clip_high), (0.0, 0.0));
    // Far off policy the gradient fades instead of stopping at a bound: with A = 1 and ρ = e^2, at
    // τ = 1 the token's weight is 4 σ (1 − σ) ρ ≈ 0.05 of the on-policy one (a quarter of it in the
    // mean over four tokens), where grpo's clip would give 0.
    let far = (logp.as_tensor().detach() - 2.0).unwrap();
    let c = LossConfig {
        loss_type: LossType::Sapo,
        ..cfg(LossAgg::TokenMean)
    };
    let (l, _) = policy_loss(&plain(&logp, &far, &adv, &mask), &c).unwrap();
    let g = rows(l.backward().unwrap().get(logp.as_tensor()).unwrap());
    let sig = 1.0 / (1.0 + (-(2f64.exp() - 1.0)).exp());
    // A = 1: −4 σ (1 − σ) ρ, over the mean's four tokens.
    let want = -4.0 * sig * (1.0 - sig) * 2f64.exp() / 4.0;
    assert!(
        (g[0][0] - want).abs() < 1e-6 && g[0][0] < 0.0,
        "{} vs {want}",
        g[0][0]
    );
}

#[test]
fn bnpo_is_grpo_with_its_token_mean() {
    let (logp, old, adv, mask) = off_ratio_batch();
    let x = plain(&logp, &old, &adv, &mask);
    let of = |loss_type: LossType| {
        let c = LossConfig {
            loss_type,
            agg: loss_type.preset().agg,
            ..cfg(LossAgg::TokenMean)
        };
        let (l, _) = policy_loss(&x, &c).unwrap();
        let g = rows(l.backward().unwrap().get(logp.as_tensor()).unwrap());
        (l.to_scalar::<f32>().unwrap(), g)
    };
    assert_eq!(LossType::Bnpo.preset(), LossType::Grpo.preset());
    assert_eq!(of(LossType::Bnpo), of(LossType::Grpo));
}
