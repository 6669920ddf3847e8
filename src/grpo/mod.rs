//! GRPO (METHOD §4) as pure maths: group advantages, the clipped surrogate with optional k3 KL, loss
//! aggregation, the EMA teacher of RLP, and dynamic sampling's group filter. No actors, no model.

mod advantage;
mod loss;

pub use advantage::{AdvantageMode, ScaleRewards, advantages, ema_update, zero_variance_groups};
pub use loss::{LossAgg, LossConfig, LossStats, grpo_loss};
