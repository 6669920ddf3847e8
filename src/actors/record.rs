//! What the schedule follows and records: its settings ([`Plan`]), each step's record ([`StepWork`],
//! which also becomes the step's metrics line) and how a run ended ([`Summary`]).

use std::collections::BTreeMap;
use std::time::Instant;

use crate::config::Config;
use crate::env::State;
use crate::rollout::{Group, ScoredGroup};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Optimizer steps completed (the run's total, resumed steps included).
    pub steps: u64,
    /// States handed out again after a policy or verifier failed.
    pub reissued: usize,
    /// Stopped on request (Ctrl-C) before the run's last step.
    pub stopped: bool,
}

/// Everything about one step in progress.
#[derive(Default, Debug)]
pub struct StepWork {
    pub version: u64,
    pub rounds: usize,
    /// State index → (state, policy it was sent to).
    pub sampling: BTreeMap<u64, (State, usize)>,
    /// State index → (group, verifier it was sent to).
    pub scoring: BTreeMap<u64, (Group, usize)>,
    pub scored: BTreeMap<u64, ScoredGroup>,
    /// (prompt length, completion lengths) of each group dynamic sampling dropped: sampled and scored,
    /// so counted in the step's FLOPs, but never learned from.
    pub dropped_shapes: Vec<crate::flops::GroupShape>,
    pub reissued: usize,
    /// The batch went to the learner; nothing about this step changes any more.
    pub sent: bool,
    /// Data cursor after this step's states, and whether its update writes a checkpoint.
    pub cursor: u64,
    pub checkpointed: bool,
    /// States whose groups came from policy workers in other processes.
    pub remote_states: usize,
    pub rollout_s: f64,
    pub verify_s: f64,
    pub started: Option<Instant>,
}

impl StepWork {
    pub(super) fn in_flight(&self) -> bool {
        !self.sampling.is_empty() || !self.scoring.is_empty()
    }
}

/// The settings the schedule follows.
#[derive(Debug, Clone)]
pub struct Plan {
    pub states_per_step: usize,
    pub max_staleness: u64,
    pub dynamic_sampling: bool,
    pub max_gen_batches: usize,
    pub checkpoint_every: u64,
    pub verifiers: usize,
    pub start_step: u64,
    pub end_step: u64,
}

impl Plan {
    pub fn of(cfg: &Config, start_step: u64) -> Self {
        Plan {
            states_per_step: cfg.rollout.states_per_step,
            max_staleness: cfg.rollout.max_staleness,
            dynamic_sampling: cfg.grpo.dynamic_sampling,
            max_gen_batches: cfg.grpo.max_gen_batches,
            checkpoint_every: cfg.train.checkpoint_every,
            verifiers: cfg.rollout.verifiers,
            start_step,
            end_step: cfg.train.steps,
        }
    }
}
