//! The policy losses of `grpo.loss_type` and the off-policy corrections of `grpo.off_policy`, as pure
//! functions of per-token log-probs (METHOD §4). Notation: for completion i of a group and its loss
//! token t, `ρ_{i,t} = π_θ(o_{i,t}) / π_old(o_{i,t})`, `A_i` the group advantage, `m_{i,t}` the loss mask.
//!
//! - `grpo` (DeepSeekMath, Shao et al. 2024, arXiv:2402.03300, Eq. 3):
//!   `ℓ_{i,t} = −min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A)`.
//! - `dr_grpo` (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
//!   arXiv:2503.20783, the Dr. GRPO objective): the same token loss, with advantages not divided by the
//!   group's std (`scale_rewards = "none"`) and the sum over tokens divided by a constant,
//!   `G × max_new_tokens` (`seq-mean-token-sum-norm`), so that neither long nor short answers are
//!   favoured.
//! - `dapo` (Yu et al. 2025, arXiv:2503.14476, the DAPO objective of §3 and overlong reward shaping of
//!   §3.4): the same token loss with clip-higher (`ε_high = 0.28`), averaged over every loss token of the
//!   batch (`token-mean`), plus a soft overlong penalty on the reward ([`overlong_penalty`]).
//! - `gspo` (Zheng et al. 2025, arXiv:2507.18071, Eq. 5 and its `s_i(θ)`): one ratio per sequence, the
//!   geometric mean `s_i = exp(Σ_t m_{i,t} log ρ_{i,t} / Σ_t m_{i,t})`, clipped at the sequence level:
//!   `ℓ_i = −min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i)`, averaged over sequences
//!   (`seq-mean-token-mean`). Its small default ε are the paper's, 3e-4 and 4e-4.
//! - `cispo` (MiniMax-M1, arXiv:2506.13585, the CISPO objective of §3.1): REINFORCE with a clipped,
//!   stop-gradient importance weight, `ℓ_{i,t} = −sg(min(ρ, 1 + ε_high)) A_i log π_θ(o_{i,t})`, averaged
//!   over tokens. No token loses its gradient to the clip. As in the paper's runs there is no lower
//!   bound (`ε_low` is not used); the default cap `1 + ε_high = 5` is this crate's choice.
//!
//! With `β > 0` every type adds `β · k3` per token against the reference (METHOD §4).
//!
//! **Off-policy corrections** (`grpo.off_policy`). When the learner's log-probs before the update
//! (`π_old`, recomputed by the learner) differ from the sampler's (`π_samp`, recorded at sampling: a
//! stale version with `rollout.max_staleness ≥ 1`, or another numeric path such as bf16 sampling), the
//! ratio above is taken against `π_old` and each token is corrected by `w_{i,t} = π_old / π_samp`:
//! - `tis` (truncated importance sampling; Yao et al. 2025, "Your efficient RL framework secretly brings
//!   you off-policy RL training"): `ℓ_{i,t} ← min(w_{i,t}, C) · ℓ_{i,t}`;
//! - `token_mask`: a token with `w ∉ [1/C, C]` carries no loss;
//! - `sequence_mask`: a sequence whose geometric-mean weight `exp(mean_t log w)` is outside `[1/C, C]`
//!   carries no loss.
//!
//! A masked token still counts in the aggregation's denominator, so the loss's scale does not depend
//! on how many were masked, and micro-batches stay exact. `C = grpo.is_cap`. With `C = ∞` TIS never
//! truncates: where the sampler is the learner it changes nothing, and inside the trust region it
//! equals the loss taken against the sampler's log-probs (both tested).

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

/// `grpo.loss_type`: the policy loss (TRL's names). See the module docs for each one's equation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    Grpo,
    DrGrpo,
    Dapo,
    Gspo,
    Cispo,
}

impl LossType {
    pub const ALL: [LossType; 5] = [
        LossType::Grpo,
        LossType::DrGrpo,
        LossType::Dapo,
        LossType::Gspo,
        LossType::Cispo,
    ];

    /// The settings that define the type, for the config keys a user leaves out: (advantage
    /// scaling, aggregation, ε_low, ε_high, whether overlong shaping is on).
    pub fn preset(self) -> Preset {
        use super::ScaleRewards::{Group, None};
        let (scale, agg, lo, hi, overlong) = match self {
            LossType::Grpo => (Group, LossAgg::TokenMean, 0.2, 0.2, false),
            LossType::DrGrpo => (None, LossAgg::SeqMeanTokenSumNorm, 0.2, 0.2, false),
            LossType::Dapo => (Group, LossAgg::TokenMean, 0.2, 0.28, true),
            LossType::Gspo => (Group, LossAgg::SeqMeanTokenMean, 3e-4, 4e-4, false),
            LossType::Cispo => (Group, LossAgg::TokenMean, 0.2, 4.0, false),
        };
        Preset {
            scale_rewards: scale,
            agg,
            epsilon_low: lo,
            epsilon_high: hi,
            overlong,
        }
    }
}

/// What a loss type sets when the config leaves a key out ([`LossType::preset`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    pub scale_rewards: super::ScaleRewards,
    pub agg: LossAgg,
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    /// DAPO's overlong shaping, with a buffer of a fifth of `max_new_tokens` (DAPO: 4,096 of 20,480).
    pub overlong: bool,
}

/// `grpo.off_policy`: the correction for a sampler whose log-probs differ from the learner's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffPolicy {
    /// The ratio is taken against the sampler's log-probs; nothing is recomputed.
    None,
    Tis,
    TokenMask,
    SequenceMask,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LossConfig {
    pub loss_type: LossType,
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    /// KL weight; 0 computes no KL and needs no reference.
    pub beta: f64,
    pub agg: LossAgg,
    pub max_completion_tokens: usize,
    pub off_policy: OffPolicy,
    /// The cap C of the off-policy correction (`f64::INFINITY` allowed).
    pub is_cap: f64,
}

/// Numbers the learner logs about one loss evaluation, over loss tokens only.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LossStats {
    pub loss: f64,
    /// Share of tokens where the lower clip bound is the active branch (ρ < 1 − ε_low, A < 0; for
    /// `gspo` the sequence's ratio, for `cispo` never).
    pub clip_low: f64,
    /// Share of tokens where the upper clip bound is the active branch (ρ > 1 + ε_high, A > 0; for
    /// `cispo`, ρ > 1 + ε_high whatever the sign of A: the weight is truncated).
    pub clip_high: f64,
    /// Mean of `log π_old − log π_θ` (k1 estimate of KL(old ‖ θ)).
    pub approx_kl: f64,
    /// Mean k3 against the reference (0 when β = 0).
    pub kl_ref: f64,
    /// Mean `−log π_samp` of the sampled tokens (an estimate of the policy's entropy).
    pub entropy: f64,
    /// Trainer/sampler mismatch over the loss tokens, |log π_θ − log π_samp|: its largest and mean
    /// value, and the k3 estimate of KL(π_samp ‖ π_θ), (ρ − 1) − log ρ. On a batch's first pass (the
    /// learner's weights are the sampler's) it is the disagreement of the two implementations.
    pub mismatch_max: f64,
    pub mismatch_mean: f64,
    pub mismatch_k3: f64,
    /// Share of loss tokens whose importance weight was truncated (`tis`) or that were masked
    /// (`token_mask`, `sequence_mask`); 0 without a correction.
    pub off_policy_share: f64,
    /// Mean importance weight π_old / π_samp over the loss tokens, before truncation (1 without a
    /// correction).
    pub is_weight_mean: f64,
    pub tokens: usize,
}

/// The tensors one loss evaluation reads, all (n, T) but `advantages` (n,).
pub struct LossInputs<'a> {
    /// Log-probs of the completion tokens under the current policy, with gradient.
    pub logp: &'a Tensor,
    /// The log-probs the ratio is taken against: the learner's before the update where a correction
    /// recomputed them, else the sampler's.
    pub old_logp: &'a Tensor,
    /// The sampler's, where they differ from `old_logp` (a correction is on).
    pub sampler_logp: Option<&'a Tensor>,
    /// The frozen reference's, needed iff β > 0.
    pub ref_logp: Option<&'a Tensor>,
    pub advantages: &'a Tensor,
    /// 1 where a token carries loss (padding and prompt are 0).
    pub mask: &'a Tensor,
}

/// The loss of `cfg.loss_type`, with its statistics.
pub fn policy_loss(x: &LossInputs<'_>, cfg: &LossConfig) -> Result<(Tensor, LossStats)> {
    let adv = x.advantages.unsqueeze(1)?;
    let log_ratio = (x.logp - x.old_logp)?;
    let (weight, active) = correction(x, cfg)?;
    // `ratio`: the ratio each token's clip looks at (the sequence's, broadcast, for gspo).
    let (mut per_token, ratio) = match cfg.loss_type {
        LossType::Grpo | LossType::DrGrpo | LossType::Dapo => {
            let ratio = log_ratio.exp()?;
            (clipped_surrogate(&ratio, &adv, cfg)?, ratio)
        }
        LossType::Gspo => {
            let per_seq = (log_ratio.broadcast_mul(x.mask)?.sum_keepdim(D::Minus1)?
                / x.mask.sum_keepdim(D::Minus1)?.maximum(1f32)?)?;
            let ratio = per_seq.exp()?.broadcast_as(log_ratio.shape())?;
            (clipped_surrogate(&ratio, &adv, cfg)?, ratio)
        }
        LossType::Cispo => {
            let ratio = log_ratio.exp()?;
            let w = ratio.detach().minimum(1.0 + cfg.epsilon_high)?;
            let per = (w.broadcast_mul(&adv)? * x.logp)?.neg()?;
            (per, ratio)
        }
    };
    if let Some(w) = &weight {
        per_token = (per_token * w)?;
    }
    let mut kl_ref = None;
    if cfg.beta > 0.0 {
        let reference = x
            .ref_logp
            .ok_or_else(|| candle_core::Error::Msg("beta > 0 needs reference log-probs".into()))?;
        let d = (reference - x.logp)?;
        let k3 = ((d.exp()? - &d)? - 1.0)?;
        per_token = (per_token + (&k3 * cfg.beta)?)?;
        kl_ref = Some(k3);
    }
    let masked = (&per_token * active.as_ref().unwrap_or(x.mask))?;
    let loss = aggregate(&masked, x.mask, cfg)?;
    let stats = stats(
        &ratio,
        x,
        kl_ref.as_ref(),
        active.as_ref(),
        cfg,
        loss.to_scalar::<f32>()? as f64,
    )?;
    Ok((loss, stats))
}

/// `−min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A)`, per token.
fn clipped_surrogate(ratio: &Tensor, adv: &Tensor, cfg: &LossConfig) -> Result<Tensor> {
    let unclipped = ratio.broadcast_mul(adv)?;
    let clipped = ratio
        .clamp(1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)?
        .broadcast_mul(adv)?;
    unclipped.minimum(&clipped)?.neg()
}

/// The off-policy correction: a detached per-token weight (`tis`) or a reduced loss mask (the two
/// masks); `(None, None)` without a correction.
fn correction(x: &LossInputs<'_>, cfg: &LossConfig) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let Some(sampler) = x.sampler_logp else {
        return Ok((None, None));
    };
    let log_w = (x.old_logp - sampler)?.detach();
    let c = cfg.is_cap;
    match cfg.off_policy {
        OffPolicy::None => Ok((None, None)),
        OffPolicy::Tis => Ok((Some(log_w.exp()?.minimum(c)?), None)),
        OffPolicy::TokenMask => {
            let inside = log_w.abs()?.le(c.ln())?.to_dtype(x.mask.dtype())?;
            Ok((None, Some((x.mask * inside)?)))
        }
        OffPolicy::SequenceMask => {
            let mean = ((&log_w * x.mask)?.sum_keepdim(D::Minus1)?
                / x.mask.sum_keepdim(D::Minus1)?.maximum(1f32)?)?;
            let inside = mean.abs()?.le(c.ln())?.to_dtype(x.mask.dtype())?;
            Ok((None, Some(x.mask.broadcast_mul(&inside)?)))
        }
    }
}

/// Aggregates masked per-token losses by `cfg.agg`; `mask` (the full loss mask) sets the denominator.
fn aggregate(masked: &Tensor, mask: &Tensor, cfg: &LossConfig) -> Result<Tensor> {
    let n_seq = mask.dim(0)?;
    match cfg.agg {
        LossAgg::TokenMean => {
            masked.sum_all()? / mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64
        }
        LossAgg::SeqMeanTokenMean => {
            let per_seq_tokens = mask.sum(D::Minus1)?;
            let has = per_seq_tokens.gt(0f32)?.to_dtype(candle_core::DType::F32)?;
            let seq = (masked.sum(D::Minus1)? / per_seq_tokens.maximum(1f32)?)?;
            let count = has.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
            (seq * has)?.sum_all()? / count
        }
        LossAgg::SeqMeanTokenSumNorm => {
            masked.sum_all()? / (n_seq.max(1) * cfg.max_completion_tokens.max(1)) as f64
        }
    }
}

/// DAPO's overlong reward shaping (DAPO §3.4): 0 up to `max_len − buffer` tokens, then falling
/// linearly to −1 at `max_len` (and −1 beyond), times `factor`. `buffer = 0` is no shaping.
pub fn overlong_penalty(len: usize, max_len: usize, buffer: usize, factor: f64) -> f64 {
    if buffer == 0 {
        return 0.0;
    }
    let free = max_len.saturating_sub(buffer);
    if len <= free {
        0.0
    } else if len >= max_len {
        -factor
    } else {
        -factor * (len - free) as f64 / buffer as f64
    }
}

fn stats(
    ratio: &Tensor,
    x: &LossInputs<'_>,
    k3: Option<&Tensor>,
    active: Option<&Tensor>,
    cfg: &LossConfig,
    loss: f64,
) -> Result<LossStats> {
    let rows = |t: &Tensor| -> Result<Vec<Vec<f32>>> { t.detach().to_vec2() };
    let ratio = rows(ratio)?;
    let logp = rows(x.logp)?;
    let old = rows(x.old_logp)?;
    let sampler = x.sampler_logp.map(rows).transpose()?;
    let samp = sampler.as_ref().unwrap_or(&old);
    let k3 = k3.map(rows).transpose()?;
    let active = active.map(rows).transpose()?;
    let adv: Vec<f32> = x.advantages.to_vec1()?;
    let mask = rows(x.mask)?;
    let mut s = LossStats {
        loss,
        ..LossStats::default()
    };
    let (mut low, mut high, mut kl, mut klr, mut ent) = (0usize, 0usize, 0f64, 0f64, 0f64);
    let (mut mis_max, mut mis, mut mis_k3) = (0f64, 0f64, 0f64);
    let (mut off, mut w_sum) = (0usize, 0f64);
    let cispo = cfg.loss_type == LossType::Cispo;
    for i in 0..mask.len() {
        for j in 0..mask[i].len() {
            if mask[i][j] == 0.0 {
                continue;
            }
            s.tokens += 1;
            let r = ratio[i][j] as f64;
            if cispo {
                high += (r > 1.0 + cfg.epsilon_high) as usize;
            } else {
                low += (r < 1.0 - cfg.epsilon_low && adv[i] < 0.0) as usize;
                high += (r > 1.0 + cfg.epsilon_high && adv[i] > 0.0) as usize;
            }
            kl += (old[i][j] - logp[i][j]) as f64;
            ent -= samp[i][j] as f64;
            let d = (logp[i][j] - samp[i][j]) as f64;
            mis_max = mis_max.max(d.abs());
            mis += d.abs();
            mis_k3 += d.exp_m1() - d;
            if let Some(k) = &k3 {
                klr += k[i][j] as f64;
            }
            let w = ((old[i][j] - samp[i][j]) as f64).exp();
            w_sum += w;
            off += match (&active, cfg.off_policy, x.sampler_logp.is_some()) {
                (Some(a), _, _) => (a[i][j] == 0.0) as usize,
                (None, OffPolicy::Tis, true) => (w > cfg.is_cap) as usize,
                _ => 0,
            };
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
    s.off_policy_share = off as f64 / n;
    s.is_weight_mean = if s.tokens == 0 { 1.0 } else { w_sum / n };
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
            loss_type: LossType::Grpo,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta: 0.0,
            agg,
            max_completion_tokens: 4,
            off_policy: OffPolicy::None,
            is_cap: 2.0,
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
                    LossType::Grpo | LossType::DrGrpo | LossType::Dapo => {
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
    fn plain<'a>(
        logp: &'a Var,
        old: &'a Tensor,
        adv: &'a Tensor,
        mask: &'a Tensor,
    ) -> LossInputs<'a> {
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
}
