//! GRPO (METHOD §4) as pure maths: group advantages, the policy losses of `grpo.loss_type` (grpo,
//! dr_grpo, dapo, gspo, cispo, sapo, bnpo) with the optional k3 KL, the off-policy corrections, loss aggregation,
//! DAPO's overlong shaping, the EMA teacher of RLP, and dynamic sampling's group filter. No actors, no
//! model.

mod advantage;
mod loss;

pub use advantage::{AdvantageMode, ScaleRewards, advantages, ema_update, zero_variance_groups};
pub use loss::{
    LossAgg, LossConfig, LossInputs, LossStats, LossType, OffPolicy, Preset, overlong_penalty,
    policy_loss,
};
