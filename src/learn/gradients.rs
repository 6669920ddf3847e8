//! The gradient of a mini-batch (METHOD §4): the clipped GRPO loss over micro-batches bounded by
//! `grpo.micro_batch_tokens`, summed in place, and the log-probs before an update for the off-policy
//! correction. `mod.rs` holds the rest of the learner: advantages, the optimizer step, the weights.

use candle_core::Tensor;

use super::Learner;
use crate::error::Result;
use crate::grpo::{LossAgg, LossInputs, LossStats, policy_loss};
use crate::model::{Decoder, GradSum, Grads, Mode, left_pad, token_logprobs};
use crate::rollout::ScoredGroup;

impl Learner {
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
