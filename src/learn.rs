//! The learner's update (METHOD §4) as a plain struct the learner actor drives: scored groups in,
//! advantages, the clipped GRPO loss over each mini-batch for `ppo_epochs` passes, gradient-norm clip,
//! AdamW, and (for `info_gain`) the EMA teacher. Its state is saved and restored by `checkpoint.rs`.

use candle_core::Tensor;

use crate::config::Config;
use crate::error::Result;
use crate::grpo::{LossStats, advantages, ema_update, grpo_loss};
use crate::model::{
    AdamW, AdamWConfig, Decoder, Mode, TensorMap, Trainable, left_pad, token_logprobs,
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
    pub optimizer_steps: u64,
}

pub struct Learner {
    pub params: Trainable,
    pub opt: AdamW,
    reference: Option<Decoder>,
    /// EMA teacher φ of `info_gain`.
    pub ema: Option<TensorMap>,
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
        let ema = if crate::reward::by_name(&cfg.reward.variant)?
            .needs()
            .ema_teacher
        {
            Some(params.snapshot()?)
        } else {
            None
        };
        let opt = AdamW::new(AdamWConfig {
            lr: cfg.optim.lr,
            weight_decay: cfg.optim.weight_decay,
            ..Default::default()
        });
        Ok(Learner {
            params,
            opt,
            reference,
            ema,
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

    /// One GRPO update on a batch of scored groups (in the environment's order).
    pub fn update(&mut self, batch: &[ScoredGroup]) -> Result<UpdateStats> {
        let rewards: Vec<Vec<f64>> = batch
            .iter()
            .map(|g| g.rewards.iter().map(|r| r.value).collect())
            .collect();
        let adv = advantages(&rewards, self.cfg.advantage_mode());
        let flat: Vec<f64> = adv.iter().flatten().copied().collect();
        let mean = flat.iter().sum::<f64>() / flat.len().max(1) as f64;
        let std = (flat.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>()
            / flat.len().max(1) as f64)
            .sqrt();
        let mut stats = UpdateStats {
            advantage_mean: mean,
            advantage_std: std,
            ..Default::default()
        };
        let slices = self.cfg.grpo.mini_batches.min(batch.len()).max(1);
        let per = batch.len().div_ceil(slices);
        let mut first = true;
        for _ in 0..self.cfg.grpo.ppo_epochs {
            for (i, mb) in batch.chunks(per).enumerate() {
                let (_, ls, norm, lr) = self.step_on(mb, &adv[i * per..i * per + mb.len()])?;
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
    ) -> Result<(f64, LossStats, f64, f64)> {
        let thought_only = self.cfg.grpo.loss_tokens == crate::config::LossTokens::Thought;
        // Rows: prompt ++ completion, left-padded; the last `c` columns hold every completion.
        let mut rows: Vec<(&[u32], &crate::rollout::Completion, f64)> = vec![];
        for (g, a) in mb.iter().zip(adv) {
            for (c, &ai) in g.group.completions.iter().zip(a) {
                rows.push((&g.group.prompt, c, ai));
            }
        }
        let c = rows
            .iter()
            .map(|(_, comp, _)| comp.tokens.len())
            .max()
            .unwrap_or(0);
        if c == 0 {
            return Ok((0.0, LossStats::default(), 0.0, 0.0));
        }
        let n = rows.len();
        let device = self.params.device()?;
        // Completions right-aligned in `c` columns, as the model's log-probs come back.
        let (mut old, mut mask, mut advs) = (vec![], vec![], vec![]);
        for (_, comp, a) in &rows {
            let lead = c - comp.tokens.len();
            let counted = if thought_only {
                comp.thought_len
            } else {
                comp.tokens.len()
            };
            old.extend(std::iter::repeat_n(0f32, lead));
            old.extend_from_slice(&comp.logprobs);
            mask.extend(std::iter::repeat_n(0f32, lead));
            mask.extend((0..comp.tokens.len()).map(|j| ((j < counted) as u8) as f32));
            advs.push(*a as f32);
        }
        let old = Tensor::from_vec(old, (n, c), &device)?;
        let mask = Tensor::from_vec(mask, (n, c), &device)?;
        let advs = Tensor::from_vec(advs, n, &device)?;
        let t = self.cfg.rollout.temperature;
        let reference = match &self.reference {
            Some(r) => {
                let full: Vec<Vec<u32>> = rows
                    .iter()
                    .map(|(p, comp, _)| [*p, comp.tokens.as_slice()].concat())
                    .collect();
                let batch = left_pad(&full, &device)?;
                Some(token_logprobs(
                    r,
                    &batch.ids,
                    &batch.pad,
                    batch.width - c,
                    t,
                    Mode::Infer,
                )?)
            }
            None => None,
        };
        // Each group's prompt once, with its completions (the update attends to one shared copy).
        let groups: Vec<(&[u32], Vec<&[u32]>)> = mb
            .iter()
            .map(|g| {
                let comps = g.group.completions.iter().map(|c| c.tokens.as_slice());
                (g.group.prompt.as_slice(), comps.collect())
            })
            .collect();
        let loss_cfg = self.cfg.loss();
        let (ls, grads) = self.params.value_and_grad_groups(&groups, c, t, |logp| {
            Ok::<_, crate::Error>(grpo_loss(
                logp,
                &old,
                reference.as_ref(),
                &advs,
                &mask,
                &loss_cfg,
            )?)
        })?;
        let norm = AdamW::grad_norm(&grads)?;
        if !ls.loss.is_finite() || !norm.is_finite() {
            return Err(crate::Error::Run(format!(
                "the loss ({}) or the gradient norm ({norm}) is not finite; the update was not applied",
                ls.loss
            )));
        }
        let clip = self.cfg.optim.max_grad_norm;
        let scale = if clip > 0.0 && norm > clip {
            clip / norm
        } else {
            1.0
        };
        let lr = self.lr(self.opt.step);
        self.opt.step(&self.params, &grads, lr, scale)?;
        Ok((ls.loss, ls, norm, lr))
    }

    /// An immutable copy of the current weights for the policies.
    pub fn snapshot(&self) -> Result<TensorMap> {
        Ok(self.params.snapshot()?)
    }
}
