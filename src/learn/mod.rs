//! The learner's update (METHOD §4) as a plain struct the learner actor drives: scored groups in,
//! advantages, the clipped GRPO loss over each mini-batch for `ppo_epochs` passes, gradient-norm clip,
//! AdamW, and (for `info_gain`) the EMA teacher. Its state is saved and restored by `checkpoint.rs`.
//! A mini-batch's loss and gradient, over micro-batches, are computed in `gradients.rs`.

use crate::config::Config;
use crate::error::Result;
use crate::grpo::{LossStats, OffPolicy, advantages, ema_update, overlong_penalty};
use crate::model::{AdamW, AdamWConfig, Decoder, Grads, TensorMap, Trainable};
use crate::rollout::ScoredGroup;

mod gradients;

pub use gradients::micro_batches;

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

/// Tokens a sampled row is counted as, for the memory a run needs: `states.max_context_tokens` +
/// `rollout.max_new_tokens` + 8 (the prompt template's tokens are not counted).
pub fn row_tokens(cfg: &Config) -> usize {
    cfg.states.max_context_tokens + cfg.rollout.max_new_tokens + 8
}

/// Tokens in the update's largest micro-batch: `grpo.micro_batch_tokens`, or a whole step's rows
/// ([`row_tokens`] each) where they are fewer, plus one more row.
pub fn largest_micro_batch(cfg: &Config) -> usize {
    let row = row_tokens(cfg);
    let rows = cfg.rollout.states_per_step * cfg.rollout.group_size;
    cfg.grpo.micro_batch_tokens.min(rows * row + row)
}

/// Activation floats the training pass keeps per token, in all layers (as the pass counts them:
/// 4·hidden + 2·q + 2·kv + 4·intermediate a layer).
pub fn activation_floats_per_token(m: &crate::model::ModelConfig) -> usize {
    let (q, kv) = (
        m.num_attention_heads * m.head_dim,
        m.num_key_value_heads * m.head_dim,
    );
    m.num_hidden_layers * (4 * m.hidden_size + 2 * q + 2 * kv + 4 * m.intermediate_size)
}

/// The training pass's activation budget for a run, in floats (`cpu::Budget::tape_floats`: a
/// micro-batch whose activations would pass it keeps each layer's input only), as
/// `grpo.activation_checkpointing` sets it:
/// - `always`: 0, every micro-batch checkpointed;
/// - `never`: no limit;
/// - `auto`: the run's largest micro-batch decides for all of them. Every micro-batch is
///   checkpointed if that one's activations would pass `cpu::TAPE_FLOATS`, so a short last
///   micro-batch never keeps more than a full one needs and the memory estimate holds for every
///   micro-batch. Otherwise the budget stays `cpu::TAPE_FLOATS`: a micro-batch of a single
///   completion longer than `grpo.micro_batch_tokens` is still checkpointed past it.
pub fn tape_budget(cfg: &Config, m: &crate::model::ModelConfig) -> usize {
    use crate::config::ActivationCheckpointing;
    match cfg.grpo.activation_checkpointing {
        ActivationCheckpointing::Always => 0,
        ActivationCheckpointing::Never => usize::MAX,
        ActivationCheckpointing::Auto => {
            let floats = largest_micro_batch(cfg).saturating_mul(activation_floats_per_token(m));
            if floats > crate::cpu::TAPE_FLOATS {
                0
            } else {
                crate::cpu::TAPE_FLOATS
            }
        }
    }
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
        let mut params = Trainable::new(model_cfg, weights)?;
        params.tape_floats = tape_budget(cfg, model_cfg);
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
