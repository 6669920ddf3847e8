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
//! - `sapo` (Gao et al. 2025, "Soft Adaptive Policy Optimization", arXiv:2511.20347): a soft gate in
//!   place of the clip, `ℓ_{i,t} = −f_τ(ρ_{i,t}) A_i` with `f_τ(ρ) = σ(τ (ρ − 1)) · 4/τ`, τ =
//!   `sapo_tau_pos` (1.0) where A > 0 and `sapo_tau_neg` (1.05) where A < 0, averaged over sequences
//!   (`seq-mean-token-mean`). Its gradient is the policy gradient's at ρ = 1 and fades smoothly as ρ
//!   leaves 1, sooner for negative advantages; no token is cut off at a fixed bound.
//! - `bnpo` (TRL's name): `grpo`'s token loss averaged over every loss token of the batch. TRL takes
//!   that mean over each process's local batch; here micro-batches are exact, so the batch is the
//!   mini-batch, and `bnpo` is `grpo` with its default `token-mean` (the same numbers, tested).
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
    Sapo,
    Bnpo,
}

impl LossType {
    pub const ALL: [LossType; 7] = [
        LossType::Grpo,
        LossType::DrGrpo,
        LossType::Dapo,
        LossType::Gspo,
        LossType::Cispo,
        LossType::Sapo,
        LossType::Bnpo,
    ];

    /// The settings that define the type, for the config keys a user leaves out: (advantage
    /// scaling, aggregation, ε_low, ε_high, whether overlong shaping is on).
    pub fn preset(self) -> Preset {
        use super::ScaleRewards::{Group, None};
        let (scale, agg, lo, hi, overlong) = match self {
            LossType::Grpo | LossType::Bnpo => (Group, LossAgg::TokenMean, 0.2, 0.2, false),
            LossType::DrGrpo => (None, LossAgg::SeqMeanTokenSumNorm, 0.2, 0.2, false),
            LossType::Dapo => (Group, LossAgg::TokenMean, 0.2, 0.28, true),
            LossType::Gspo => (Group, LossAgg::SeqMeanTokenMean, 3e-4, 4e-4, false),
            LossType::Cispo => (Group, LossAgg::TokenMean, 0.2, 4.0, false),
            // ε is not used by the soft gate.
            LossType::Sapo => (Group, LossAgg::SeqMeanTokenMean, 0.2, 0.2, false),
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
    /// `sapo`'s gate temperatures τ for positive and for negative advantages.
    pub sapo_tau_pos: f64,
    pub sapo_tau_neg: f64,
}

/// Numbers the learner logs about one loss evaluation, over loss tokens only.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LossStats {
    pub loss: f64,
    /// Share of tokens where the lower clip bound is the active branch (ρ < 1 − ε_low, A < 0; for
    /// `gspo` the sequence's ratio, for `cispo` and `sapo` never).
    pub clip_low: f64,
    /// Share of tokens where the upper clip bound is the active branch (ρ > 1 + ε_high, A > 0; for
    /// `cispo`, ρ > 1 + ε_high whatever the sign of A: the weight is truncated; for `sapo` never).
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
        LossType::Grpo | LossType::DrGrpo | LossType::Dapo | LossType::Bnpo => {
            let ratio = log_ratio.exp()?;
            (clipped_surrogate(&ratio, &adv, cfg)?, ratio)
        }
        LossType::Sapo => {
            let ratio = log_ratio.exp()?;
            (soft_gate(&ratio, x.advantages, cfg)?, ratio)
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

/// SAPO's `−σ(τ (ρ − 1)) · 4/τ · A`, per token, τ by the sign of each row's advantage. The sigmoid is
/// written with differentiable ops (`1 / (1 + e^(−x))`); x ≥ −τ since ρ ≥ 0, so e^(−x) stays finite
/// for the temperatures validation allows.
fn soft_gate(ratio: &Tensor, advantages: &Tensor, cfg: &LossConfig) -> Result<Tensor> {
    let taus: Vec<f32> = advantages
        .to_vec1::<f32>()?
        .iter()
        .map(|&a| {
            if a > 0.0 {
                cfg.sapo_tau_pos as f32
            } else {
                cfg.sapo_tau_neg as f32
            }
        })
        .collect();
    let n = taus.len();
    let tau = Tensor::from_vec(taus, (n, 1), ratio.device())?;
    let x = (ratio - 1.0)?.broadcast_mul(&tau)?;
    let gate = (x.neg()?.exp()? + 1.0)?.recip()?;
    let scale = (tau.recip()? * 4.0)?.broadcast_mul(&advantages.unsqueeze(1)?)?;
    gate.broadcast_mul(&scale)?.neg()
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
    let gated = cfg.loss_type == LossType::Sapo;
    for i in 0..mask.len() {
        for j in 0..mask[i].len() {
            if mask[i][j] == 0.0 {
                continue;
            }
            s.tokens += 1;
            let r = ratio[i][j] as f64;
            if gated {
                // No clip: the soft gate never cuts a token off.
            } else if cispo {
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
#[path = "loss_tests.rs"]
mod tests;
#[cfg(test)]
#[path = "loss_types_tests.rs"]
mod types_tests;
