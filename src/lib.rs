//! `rpt`: Reinforcement Pre-Training. A plain-text corpus becomes an RL environment: every position
//! is a state, a policy thinks and then guesses the next token inside `\boxed{}`, a verifier rewards
//! the guess, and GRPO updates the policy.

pub mod model;
pub mod grpo;
pub mod reward;
pub mod env;
pub mod config;
pub mod prompt;
pub mod error;
pub mod pipeline;

pub use error::{Error, Result};
pub mod learn;
pub mod rollout;
pub mod actors;
pub mod checkpoint;
