//! The clipped GRPO surrogate with the k3 KL term and the three loss aggregations of METHOD §4.

use candle_core::{D, Result, Tensor};

/// How per-token losses become one number (verl's `loss_agg_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LossAgg {
    /// Mean over every loss token of the batch.
    #[serde(rename = "token-mean")]
    TokenMean,
    /// Mean over sequences of each sequence's token mean (original GRPO).
    #[serde(rename = "seq-mean-token-mean")]
    SeqMeanTokenMean,
    /// Sum over tokens divided by (sequences × `max_completion_tokens`) (Dr. GRPO); for one group of G
    /// this is G × `max_completion_tokens`.
    #[serde(rename = "seq-mean-token-sum-norm")]
    SeqMeanTokenSumNorm,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LossConfig {
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    /// KL weight; 0 computes no KL and needs no reference.
    pub beta: f64,
    pub agg: LossAgg,
    pub max_completion_tokens: usize,
}

/// Numbers the learner logs about one loss evaluation, over loss tokens only.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LossStats {
    pub loss: f64,
    /// Share of tokens where the lower clip bound is the active branch (ρ < 1 − ε_low, A < 0).
    pub clip_low: f64,
    /// Share of tokens where the upper clip bound is the active branch (ρ > 1 + ε_high, A > 0).
    pub clip_high: f64,
    /// Mean of `log π_old − log π_θ` (k1 estimate of KL(old ‖ θ)).
    pub approx_kl: f64,
    /// Mean k3 against the reference (0 when β = 0).
    pub kl_ref: f64,
    /// Mean `−log π_old` of the sampled tokens (an estimate of the policy's entropy).
    pub entropy: f64,
    /// Trainer/sampler mismatch over the loss tokens, |log π_θ − log π_old|: its largest and mean
    /// value, and the k3 estimate of KL(π_old ‖ π_θ), (ρ − 1) − log ρ. On a batch's first pass (the
    /// learner's weights are the sampler's) it is the disagreement of the two implementations.
    pub mismatch_max: f64,
    pub mismatch_mean: f64,
    pub mismatch_k3: f64,
    pub tokens: usize,
}

/// The GRPO loss.
///
/// logp: (n, T) log-probs of the completion tokens under the current policy, with gradient;
/// old_logp: (n, T) recorded at sampling; ref_logp: (n, T) of the frozen reference, needed iff β > 0;
/// advantages: (n,); mask: (n, T) f32, 1 where a token carries loss (padding and prompt are 0).
pub fn grpo_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    advantages: &Tensor,
    mask: &Tensor,
    cfg: &LossConfig,
) -> Result<(Tensor, LossStats)> {
    let adv = advantages.unsqueeze(1)?;
    let ratio = (logp - old_logp)?.exp()?;
    let unclipped = ratio.broadcast_mul(&adv)?;
    let clipped = ratio
        .clamp(1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)?
        .broadcast_mul(&adv)?;
    let mut per_token = unclipped.minimum(&clipped)?.neg()?;
    let mut kl_ref = None;
    if cfg.beta > 0.0 {
        let reference = ref_logp
            .ok_or_else(|| candle_core::Error::Msg("beta > 0 needs reference log-probs".into()))?;
        let d = (reference - logp)?;
        let k3 = ((d.exp()? - &d)? - 1.0)?;
        per_token = (per_token + (&k3 * cfg.beta)?)?;
        kl_ref = Some(k3);
    }
    let masked = (&per_token * mask)?;
    let n_seq = mask.dim(0)?;
    let loss = match cfg.agg {
        LossAgg::TokenMean => {
            (masked.sum_all()? / mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64)?
        }
        LossAgg::SeqMeanTokenMean => {
            let per_seq_tokens = mask.sum(D::Minus1)?;
            let has = per_seq_tokens.gt(0f32)?.to_dtype(candle_core::DType::F32)?;
            let seq = (masked.sum(D::Minus1)? / per_seq_tokens.maximum(1f32)?)?;
            let count = has.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
            ((seq * has)?.sum_all()? / count)?
        }
        LossAgg::SeqMeanTokenSumNorm => {
            (masked.sum_all()? / (n_seq.max(1) * cfg.max_completion_tokens.max(1)) as f64)?
        }
    };
    let stats = stats(
        &ratio,
        logp,
        old_logp,
        kl_ref.as_ref(),
        advantages,
        mask,
        cfg,
        loss.to_scalar::<f32>()? as f64,
    )?;
    Ok((loss, stats))
}

#[allow(clippy::too_many_arguments)]
fn stats(
    ratio: &Tensor,
    logp: &Tensor,
    old: &Tensor,
    k3: Option<&Tensor>,
    adv: &Tensor,
    mask: &Tensor,
    cfg: &LossConfig,
    loss: f64,
) -> Result<LossStats> {
    let ratio: Vec<Vec<f32>> = ratio.to_vec2()?;
    let logp: Vec<Vec<f32>> = logp.detach().to_vec2()?;
    let old: Vec<Vec<f32>> = old.to_vec2()?;
    let k3: Option<Vec<Vec<f32>>> = k3.map(|k| k.detach().to_vec2()).transpose()?;
    let adv: Vec<f32> = adv.to_vec1()?;
    let mask: Vec<Vec<f32>> = mask.to_vec2()?;
    let mut s = LossStats {
        loss,
        ..LossStats::default()
    };
    let (mut low, mut high, mut kl, mut klr, mut ent) = (0usize, 0usize, 0f64, 0f64, 0f64);
    let (mut mis_max, mut mis, mut mis_k3) = (0f64, 0f64, 0f64);
    for i in 0..mask.len() {
        for j in 0..mask[i].len() {
            if mask[i][j] == 0.0 {
                continue;
            }
            s.tokens += 1;
            let r = ratio[i][j] as f64;
            low += (r < 1.0 - cfg.epsilon_low && adv[i] < 0.0) as usize;
            high += (r > 1.0 + cfg.epsilon_high && adv[i] > 0.0) as usize;
            kl += (old[i][j] - logp[i][j]) as f64;
            ent -= old[i][j] as f64;
            let d = (logp[i][j] - old[i][j]) as f64;
            mis_max = mis_max.max(d.abs());
            mis += d.abs();
            mis_k3 += d.exp_m1() - d;
            if let Some(k) = &k3 {
                klr += k[i][j] as f64;
            }
        }
    }
    let n = s.tokens.max(1) as f64;
    s.clip_low = low as f64 / n;
    s.clip_high = high as f64 / n;
    s.approx_kl = kl / n;
    s.kl_ref = klr / n;
    s.entropy = ent / n;
    s.mismatch_max = mis_max;
    s.mismatch_mean = mis / n;
    s.mismatch_k3 = mis_k3 / n;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t2(v: &[&[f32]]) -> Tensor {
        let rows = v.len();
        let cols = v[0].len();
        Tensor::from_vec(v.concat(), (rows, cols), &Device::Cpu).unwrap()
    }

    fn cfg(agg: LossAgg) -> LossConfig {
        LossConfig {
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta: 0.0,
            agg,
            max_completion_tokens: 4,
        }
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
            let (loss, stats) =
                grpo_loss(logp.as_tensor(), &old, None, &adv, &mask, &cfg(agg)).unwrap();
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
        let (loss, stats) = grpo_loss(
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
        let base = grpo_loss(
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
        let (with, stats) =
            grpo_loss(logp.as_tensor(), &old, Some(&reference), &adv, &mask, &c).unwrap();
        let k3 = (-0.1f64).exp() + 0.1 - 1.0;
        let diff = (with.to_scalar::<f32>().unwrap() - base.to_scalar::<f32>().unwrap()) as f64;
        assert!((diff - 0.5 * k3).abs() < 1e-6, "{diff} vs {}", 0.5 * k3);
        assert!((stats.kl_ref - k3).abs() < 1e-6);
        c.beta = 0.5;
        assert!(grpo_loss(logp.as_tensor(), &old, None, &adv, &mask, &c).is_err());
    }

    #[test]
    fn mismatch_statistics_by_hand() {
        // Two rows, the last column of row 1 masked: d = logp − old over the loss tokens.
        let logp = t2(&[&[-1.0, -2.0], &[-0.5, -3.0]]);
        let old = t2(&[&[-1.0, -2.5], &[-0.2, -9.0]]);
        let mask = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
        let adv = Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        let (_, s) = grpo_loss(&logp, &old, None, &adv, &mask, &cfg(LossAgg::TokenMean)).unwrap();
        let d = [0.0f64, 0.5, -0.3];
        let k3 = |x: f64| x.exp() - 1.0 - x;
        assert!((s.mismatch_max - 0.5).abs() < 1e-6, "{s:?}");
        assert!((s.mismatch_mean - 0.8 / 3.0).abs() < 1e-6, "{s:?}");
        let want = d.iter().map(|&x| k3(x)).sum::<f64>() / 3.0;
        assert!((s.mismatch_k3 - want).abs() < 1e-6, "{s:?} vs {want}");
        // The same log-probs: no mismatch at all.
        let (_, z) = grpo_loss(&old, &old, None, &adv, &mask, &cfg(LossAgg::TokenMean)).unwrap();
        assert_eq!(
            (z.mismatch_max, z.mismatch_mean, z.mismatch_k3),
            (0.0, 0.0, 0.0)
        );
    }
}
