//! `rpt`: Reinforcement Pre-Training. A plain-text corpus becomes an RL environment: every position
//! is a state, a policy thinks and then guesses the next token inside `\boxed{}`, a verifier rewards
//! the guess, and GRPO updates the policy.

pub mod config;
pub mod cpu;
pub mod env;
pub mod error;
pub mod flops;
pub mod grpo;
pub mod model;
pub mod pipeline;
pub mod plugin;
pub mod prompt;
pub mod report;
pub mod reward;
pub mod tensorboard;

pub use error::{Error, Result};
pub mod actors;
pub mod checkpoint;
pub mod learn;
pub mod rollout;
