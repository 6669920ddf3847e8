//! The learner's update (METHOD §4) as a plain struct the learner actor drives: scored groups in,
//! advantages, the clipped GRPO loss over each mini-batch for `ppo_epochs` passes, gradient-norm clip,
//! AdamW, and (for `info_gain`) the EMA teacher. Its state is saved and restored by `checkpoint.rs`.

use candle_core::Tensor;

use crate::config::Config;
use crate::error::Result;
use crate::grpo::{
    LossAgg, LossInputs, LossStats, OffPolicy, advantages, ema_update, overlong_penalty,
    policy_loss,
};
use crate::model::{
    AdamW, AdamWConfig, Decoder, GradSum, Grads, Mode, TensorMap, Trainable, left_pad,
    token_logprobs,
};
use crate::rollout::ScoredGroup;

/// What one update did, for the metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpdateStats {
    pub loss: LossStats,
    pub grad_norm: f64,
    pub lr: f64,
    pub advantage_mean: f64,
    pub advantage_std: f64,
    /// Mean of DAPO's overlong shaping added to the rewards (`grpo.overlong_buffer`; 0 when off).
    pub overlong_penalty: f64,
    pub optimizer_steps: u64,
    /// The step's model FLOPs (`crate::flops`): sampling and scoring its groups, and this update.
    pub flops: crate::flops::StepFlops,
}

pub struct Learner {
    pub params: Trainable,
    pub opt: AdamW,
    reference: Option<Decoder>,
    /// EMA teacher φ of `info_gain`.
    pub ema: Option<TensorMap>,
    /// What the configured reward reads of the model (for the step's FLOPs).
    needs: crate::reward::Needs,
    cfg: Config,
}

impl Learner {
    pub fn new(
        cfg: &Config,
        weights: &TensorMap,
        model_cfg: &crate::model::ModelConfig,
    ) -> Result<Self> {
        let params = Trainable::new(model_cfg, weights)?;
        let reference = if cfg.grpo.beta > 0.0 {
            Some(Decoder::new(model_cfg, weights)?)
        } else {
            None
        };
        let needs = crate::reward::from_config(&cfg.reward)?.needs();
        let ema = if needs.ema_teacher {
            Some(params.snapshot()?)
        } else {
            None
        };
        let mut opt = AdamW::new(AdamWConfig {
            lr: cfg.optim.lr,
            weight_decay: cfg.optim.weight_decay,
            ..Default::default()
        });
        opt.reserve(&params)?;
        Ok(Learner {
            params,
            opt,
            reference,
            ema,
            needs,
            cfg: cfg.clone(),
        })
    }

    /// Learning rate at optimizer step `t` (linear warm-up, then constant).
    fn lr(&self, t: u64) -> f64 {
        let w = self.cfg.optim.warmup_steps;
        if t < w {
            self.cfg.optim.lr * (t + 1) as f64 / w as f64
        } else {
            self.cfg.optim.lr
        }
    }

    /// The rewards the advantages are computed from: the verifier's, plus DAPO's overlong shaping
    /// where `grpo.overlong_buffer` is set. Returns them and the shaping's mean.
    fn shaped_rewards(&self, batch: &[ScoredGroup]) -> (Vec<Vec<f64>>, f64) {
        let g = &self.cfg.grpo;
        let max = self.cfg.rollout.max_new_tokens;
        let (mut sum, mut n) = (0.0, 0usize);
        let rewards = batch
            .iter()
            .map(|sg| {
                sg.rewards
                    .iter()
                    .zip(&sg.group.completions)
                    .map(|(r, c)| {
                        let p = overlong_penalty(
                            c.tokens.len(),
                            max,
                            g.overlong_buffer,
                            g.overlong_penalty,
                        );
                        sum += p;
                        n += 1;
                        r.value + p
                    })
                    .collect()
            })
            .collect();
        (rewards, sum / n.max(1) as f64)
    }

    /// One GRPO update on a batch of scored groups (in the environment's order).
    pub fn update(&mut self, batch: &[ScoredGroup]) -> Result<UpdateStats> {
        let (rewards, overlong) = self.shaped_rewards(batch);
        let adv = advantages(&rewards, self.cfg.advantage_mode());
        let correcting = self.cfg.grpo.off_policy != OffPolicy::None;
        let prox = if correcting {
            Some(self.logprobs_before(batch)?)
        } else {
            None
        };
        let flat: Vec<f64> = adv.iter().flatten().copied().collect();
        let mean = flat.iter().sum::<f64>() / flat.len().max(1) as f64;
        let std = (flat.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>()
            / flat.len().max(1) as f64)
            .sqrt();
        let shapes: Vec<(usize, Vec<usize>)> = batch
            .iter()
            .map(|g| {
                let lens = g.group.completions.iter().map(|c| c.tokens.len());
                (g.group.prompt.len(), lens.collect())
            })
            .collect();
        let mut stats = UpdateStats {
            advantage_mean: mean,
            advantage_std: std,
            flops: crate::flops::grpo_step(
                &self.params.config,
                &shapes,
                crate::flops::scoring_passes(&self.needs),
                self.cfg.grpo.ppo_epochs as u64,
                self.reference.is_some() as u64 + correcting as u64,
            ),
            overlong_penalty: overlong,
            ..Default::default()
        };
        let slices = self.cfg.grpo.mini_batches.min(batch.len()).max(1);
        let per = batch.len().div_ceil(slices);
        let mut first = true;
        for _ in 0..self.cfg.grpo.ppo_epochs {
            for (i, mb) in batch.chunks(per).enumerate() {
                let range = i * per..i * per + mb.len();
                let prox = prox.as_ref().map(|p| &p[range.clone()]);
                let (_, ls, norm, lr) = self.step_on(mb, &adv[range], prox)?;
                if first {
                    stats.loss = ls;
                    first = false;
                }
                stats.grad_norm = norm;
                stats.lr = lr;
                stats.optimizer_steps += 1;
            }
        }
        if let Some(name) = self.first_non_finite()? {
            return Err(crate::Error::Run(format!(
                "the updated weights hold NaN or infinite values (first in `{name}`); they are not \
                 used or saved"
            )));
        }
        if let Some(phi) = &mut self.ema {
            let tau = self.cfg.reward.ema_tau;
            for (name, var) in self.params.vars() {
                let old = phi.get(name).expect("ema has every tensor");
                let next = ema_update(old, var.as_tensor(), tau)?.detach();
                phi.insert(name.clone(), next);
            }
        }
        Ok(stats)
    }

    /// The first parameter (by name) holding a NaN or an infinity, if any.
    pub fn first_non_finite(&self) -> Result<Option<String>> {
        let mut names: Vec<(&String, &candle_core::Var)> = self.params.vars().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, var) in names {
            if !crate::model::all_finite(var.as_tensor())? {
                return Ok(Some(name.clone()));
            }
        }
        Ok(None)
    }

    /// Loss, backward, clip and AdamW on one mini-batch. A loss or gradient that is not finite is an
    /// error and nothing is applied.
    fn step_on(
        &mut self,
        mb: &[ScoredGroup],
        adv: &[Vec<f64>],
        prox: Option<&[Vec<Vec<f32>>]>,
    ) -> Result<(f64, LossStats, f64, f64)> {
        if mb
            .iter()
            .all(|g| g.group.completions.iter().all(|c| c.tokens.is_empty()))
        {
            return Ok((0.0, LossStats::default(), 0.0, 0.0));
        }
        let (ls, grads) = self.gradients_with(mb, adv, prox)?;
        let (norm, lr) = self.apply(&grads, ls.loss)?;
        Ok((ls.loss, ls, norm, lr))
    }

    /// One AdamW step with `grads` (of a loss worth `loss`): clipped to `optim.max_grad_norm`, at
    /// the scheduled learning rate. A loss or gradient that is not finite is an error and nothing is
    /// applied. Returns the gradient norm and the learning rate.
    pub fn apply(&mut self, grads: &Grads, loss: f64) -> Result<(f64, f64)> {
        let norm = AdamW::grad_norm(grads)?;
        if !loss.is_finite() || !norm.is_finite() {
            return Err(crate::Error::Run(format!(
                "the loss ({loss}) or the gradient norm ({norm}) is not finite; the update was not applied"
            )));
        }
        let clip = self.cfg.optim.max_grad_norm;
        let scale = if clip > 0.0 && norm > clip {
            clip / norm
        } else {
            1.0
        };
        let lr = self.lr(self.opt.step);
        self.opt.step(&self.params, grads, lr, scale)?;
        Ok((norm, lr))
    }

    /// The loss of one mini-batch and its gradient, computed over micro-batches of at most
    /// `grpo.micro_batch_tokens` tokens (each prompt once, plus its completions) and summed, so that
    /// memory is set by the budget and not by the mini-batch. Each micro-batch's loss is weighted by
    /// its share of the mini-batch's denominator (loss tokens, sequences with loss tokens, or
    /// sequences, by `loss_agg_mode`): the sum is the mini-batch's loss, and its gradient the
    /// gradient of one big batch, to float rounding.
    pub fn gradients(&self, mb: &[ScoredGroup], adv: &[Vec<f64>]) -> Result<(LossStats, Grads)> {
        self.gradients_with(mb, adv, None)
    }

    /// [`Learner::gradients`], with the ratio taken against `prox` (the learner's log-probs before
    /// the update, per group and completion) where given, and the sampler's recorded log-probs then
    /// used for the off-policy correction.
    pub fn gradients_with(
        &self,
        mb: &[ScoredGroup],
        adv: &[Vec<f64>],
        prox: Option<&[Vec<Vec<f32>>]>,
    ) -> Result<(LossStats, Grads)> {
        let thought_only = self.cfg.grpo.loss_tokens == crate::config::LossTokens::Thought;
        let counted = |c: &crate::rollout::Completion| {
            if thought_only {
                c.thought_len
            } else {
                c.tokens.len()
            }
        };
        let comps = || mb.iter().flat_map(|g| &g.group.completions);
        let denominator = |cs: &mut dyn Iterator<Item = &crate::rollout::Completion>| -> f64 {
            match self.cfg.grpo.loss_agg_mode {
                LossAgg::TokenMean => cs.map(counted).sum::<usize>() as f64,
                LossAgg::SeqMeanTokenMean => cs.filter(|c| counted(c) > 0).count() as f64,
                LossAgg::SeqMeanTokenSumNorm => cs.count() as f64,
            }
        };
        let total = denominator(&mut comps());
        let pieces = micro_batches(mb, self.cfg.grpo.micro_batch_tokens);
        let single = pieces.len() == 1;
        let mut sum = GradSum::default();
        let mut stats: Option<LossStats> = None;
        for piece in &pieces {
            let share = if single {
                1.0
            } else {
                let mut cs = piece
                    .iter()
                    .flat_map(|(g, r)| mb[*g].group.completions[r.clone()].iter());
                let d = denominator(&mut cs);
                if total > 0.0 { d / total } else { 0.0 }
            };
            let ls = self.piece_gradients(mb, adv, prox, piece, share, thought_only, &mut sum)?;
            stats = Some(match stats {
                None => ls,
                Some(prev) => combine(&prev, &ls),
            });
        }
        Ok((stats.unwrap_or_default(), self.params.finish(sum)?))
    }

    /// Loss of one micro-batch (`piece`: group index and range of its completions), weighted by
    /// `share`, its gradient added into `sum`.
    #[allow(clippy::too_many_arguments)]
    fn piece_gradients(
        &self,
        mb: &[ScoredGroup],
        adv: &[Vec<f64>],
        prox: Option<&[Vec<Vec<f32>>]>,
        piece: &[(usize, std::ops::Range<usize>)],
        share: f64,
        thought_only: bool,
        sum: &mut GradSum,
    ) -> Result<LossStats> {
        // Rows: prompt ++ completion, left-padded; the last `c` columns hold every completion.
        let mut rows: Vec<(&[u32], &crate::rollout::Completion, f64)> = vec![];
        let mut befores: Vec<&[f32]> = vec![];
        for (g, r) in piece {
            let group = &mb[*g].group;
            for (c, &ai) in group.completions[r.clone()].iter().zip(&adv[*g][r.clone()]) {
                rows.push((&group.prompt, c, ai));
            }
            if let Some(p) = prox {
                befores.extend(p[*g][r.clone()].iter().map(|v| v.as_slice()));
            }
        }
        let c = rows
            .iter()
            .map(|(_, comp, _)| comp.tokens.len())
            .max()
            .unwrap_or(0);
        if c == 0 {
            return Ok(LossStats::default());
        }
        let n = rows.len();
        let device = self.params.device()?;
        // Completions right-aligned in `c` columns, as the model's log-probs come back.
        let (mut old, mut mask, mut advs, mut before) = (vec![], vec![], vec![], vec![]);
        for (k, (_, comp, a)) in rows.iter().enumerate() {
            let lead = c - comp.tokens.len();
            let counted = if thought_only {
                comp.thought_len
            } else {
                comp.tokens.len()
            };
            old.extend(std::iter::repeat_n(0f32, lead));
            old.extend_from_slice(&comp.logprobs);
            if let Some(b) = befores.get(k) {
                before.extend(std::iter::repeat_n(0f32, lead));
                before.extend_from_slice(b);
            }
            mask.extend(std::iter::repeat_n(0f32, lead));
            mask.extend((0..comp.tokens.len()).map(|j| ((j < counted) as u8) as f32));
            advs.push(*a as f32);
        }
        let sampler = Tensor::from_vec(old, (n, c), &device)?;
        // With a correction, the ratio is against the learner's log-probs before the update and the
        // sampler's are the correction's denominator.
        let (old, sampler) = if prox.is_some() {
            (Tensor::from_vec(before, (n, c), &device)?, Some(sampler))
        } else {
            (sampler, None)
        };
        let mask = Tensor::from_vec(mask, (n, c), &device)?;
        let advs = Tensor::from_vec(advs, n, &device)?;
        let t = self.cfg.rollout.temperature;
        let reference = match &self.reference {
            Some(r) => {
                let pairs: Vec<(&[u32], &[u32])> = rows
                    .iter()
                    .map(|(p, comp, _)| (*p, comp.tokens.as_slice()))
                    .collect();
                Some(completion_logprobs(r, &pairs, c, t, &device)?)
            }
            None => None,
        };
        // Each group's prompt once, with its completions (the update attends to one shared copy).
        let groups: Vec<(&[u32], Vec<&[u32]>)> = piece
            .iter()
            .map(|(g, r)| {
                let group = &mb[*g].group;
                let comps = group.completions[r.clone()]
                    .iter()
                    .map(|c| c.tokens.as_slice());
                (group.prompt.as_slice(), comps.collect())
            })
            .collect();
        let loss_cfg = self.cfg.loss();
        let loss_fn = |logp: &Tensor| {
            let inputs = LossInputs {
                logp,
                old_logp: &old,
                sampler_logp: sampler.as_ref(),
                ref_logp: reference.as_ref(),
                advantages: &advs,
                mask: &mask,
            };
            let (loss, ls) = policy_loss(&inputs, &loss_cfg)?;
            let loss = if share == 1.0 { loss } else { (loss * share)? };
            Ok::<_, crate::Error>((loss, ls))
        };
        let ls = self.params.accumulate_groups(&groups, c, t, loss_fn, sum)?;
        Ok(LossStats {
            loss: ls.loss * share,
            ..ls
        })
    }

    /// The learner's log-probs of every completion token of `batch` under the current weights (per
    /// group and completion), before the update: `π_old` of the off-policy correction. Computed over
    /// the update's micro-batches, so memory stays bounded by `grpo.micro_batch_tokens`.
    pub fn logprobs_before(&self, batch: &[ScoredGroup]) -> Result<Vec<Vec<Vec<f32>>>> {
        let decoder = self.params.decoder()?;
        let device = self.params.device()?;
        let t = self.cfg.rollout.temperature;
        let mut out: Vec<Vec<Vec<f32>>> = batch
            .iter()
            .map(|g| vec![vec![]; g.group.completions.len()])
            .collect();
        for piece in micro_batches(batch, self.cfg.grpo.micro_batch_tokens) {
            let at: Vec<(usize, usize)> = piece
                .iter()
                .flat_map(|(g, r)| r.clone().map(move |i| (*g, i)))
                .filter(|&(g, i)| !batch[g].group.completions[i].tokens.is_empty())
                .collect();
            let pairs: Vec<(&[u32], &[u32])> = at
                .iter()
                .map(|&(g, i)| {
                    let group = &batch[g].group;
                    (
                        group.prompt.as_slice(),
                        group.completions[i].tokens.as_slice(),
                    )
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let c = pairs.iter().map(|(_, comp)| comp.len()).max().unwrap_or(0);
            let lp: Vec<Vec<f32>> =
                completion_logprobs(&decoder, &pairs, c, t, &device)?.to_vec2()?;
            for (row, (&(g, i), (_, comp))) in lp.iter().zip(at.iter().zip(&pairs)) {
                out[g][i] = row[c - comp.len()..].to_vec();
            }
        }
        Ok(out)
    }

    /// An immutable copy of the current weights for the policies.
    pub fn snapshot(&self) -> Result<TensorMap> {
        Ok(self.params.snapshot()?)
    }

    /// The weights for the policy. With `max_staleness = 0` the policy never samples while the
    /// learner updates (a step is launched only once the previous update is done), so where the
    /// policy's dtype is the learner's, the policy reads the learner's own tensors: no second copy
    /// of the weights per step ([`Trainable::shared_weights`]; each update writes them in place).
    /// Otherwise a copy in the policy's dtype ([`Trainable::policy_weights`]).
    pub fn policy_weights(&self) -> Result<TensorMap> {
        if self.cfg.rollout.max_staleness == 0
            && let Some(shared) = self.params.shared_weights()
        {
            return Ok(shared);
        }
        Ok(self.params.policy_weights()?)
    }
}

/// `model`'s log-probs of each row's completion tokens (rows: prompt and completion), left-padded and
/// right-aligned in the last `c` columns as the update reads them: (rows, c).
fn completion_logprobs(
    model: &Decoder,
    rows: &[(&[u32], &[u32])],
    c: usize,
    temperature: f64,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let full: Vec<Vec<u32>> = rows.iter().map(|(p, comp)| [*p, *comp].concat()).collect();
    let batch = left_pad(&full, device)?;
    Ok(token_logprobs(
        model,
        &batch.ids,
        &batch.pad,
        batch.width - c,
        temperature,
        Mode::Infer,
    )?)
}

/// Splits a mini-batch into micro-batches of at most `budget` tokens: pieces of groups (a group's
/// prompt once, plus a run of its completions), in order. A piece holds at least one completion, so a
/// single completion longer than the budget still makes a micro-batch.
pub fn micro_batches(
    mb: &[ScoredGroup],
    budget: usize,
) -> Vec<Vec<(usize, std::ops::Range<usize>)>> {
    let mut out: Vec<Vec<(usize, std::ops::Range<usize>)>> = vec![];
    let (mut cur, mut used) = (vec![], 0usize);
    for (g, sg) in mb.iter().enumerate() {
        let prompt = sg.group.prompt.len();
        let mut start = 0;
        for (i, c) in sg.group.completions.iter().enumerate() {
            let open = start < i;
            let cost = c.tokens.len() + if open { 0 } else { prompt };
            if used + cost > budget && (used > 0) {
                if open {
                    cur.push((g, start..i));
                    start = i;
                }
                out.push(std::mem::take(&mut cur));
                used = prompt;
            } else if !open {
                used += prompt;
            }
            used += c.tokens.len();
        }
        if start < sg.group.completions.len() {
            cur.push((g, start..sg.group.completions.len()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Loss statistics of two micro-batches together: losses add (each is already weighted by its
/// share), per-token means are weighted by token counts.
fn combine(a: &LossStats, b: &LossStats) -> LossStats {
    let n = (a.tokens + b.tokens).max(1) as f64;
    let mean = |x: f64, y: f64| (x * a.tokens as f64 + y * b.tokens as f64) / n;
    LossStats {
        loss: a.loss + b.loss,
        clip_low: mean(a.clip_low, b.clip_low),
        clip_high: mean(a.clip_high, b.clip_high),
        approx_kl: mean(a.approx_kl, b.approx_kl),
        kl_ref: mean(a.kl_ref, b.kl_ref),
        entropy: mean(a.entropy, b.entropy),
        mismatch_max: a.mismatch_max.max(b.mismatch_max),
        mismatch_mean: mean(a.mismatch_mean, b.mismatch_mean),
        mismatch_k3: mean(a.mismatch_k3, b.mismatch_k3),
        off_policy_share: mean(a.off_policy_share, b.off_policy_share),
        is_weight_mean: mean(a.is_weight_mean, b.is_weight_mean),
        tokens: a.tokens + b.tokens,
    }
}
