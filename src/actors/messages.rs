//! What the actors of a run send each other, in one place, and the read-only context they share. Every
//! actor imports its messages from here, so no actor imports the supervisor that spawns it.

use std::sync::Arc;

use ractor::RpcReplyPort;

use super::schedule::Summary;
use crate::config::Config;
use crate::env::State;
use crate::learn::UpdateStats;
use crate::model::{Decoder, SampleParams, Tokenizer};
use crate::prompt::Prompt;
use crate::reward::RewardFn;
use crate::rollout::{Group, PolicySnapshot, ScoredGroup};

/// Read-only context every actor of a run shares.
pub struct RunShared {
    pub cfg: Config,
    pub tokenizer: Arc<Tokenizer>,
    pub prompt: Prompt,
    pub reward: Arc<dyn RewardFn>,
    pub sample_params: SampleParams,
    /// The policy's shape, for counting the FLOPs of work no update sees (groups dropped by dynamic
    /// sampling).
    pub model: crate::model::ModelConfig,
}

/// A finished piece of work coming back to the supervisor.
pub struct Work<T> {
    pub worker: usize,
    pub step: u64,
    pub seconds: f64,
    pub items: Vec<T>,
}

/// To the supervisor.
pub enum SupMsg {
    /// Run until the last step; answers with the summary.
    Run(RpcReplyPort<Result<Summary, String>>),
    Sampled(Work<Group>),
    Scored(Work<ScoredGroup>),
    Updated(Box<Updated>),
    /// The checkpoint asked for at the end of a stopped run is written.
    Checkpointed,
    /// Finish the step in progress, checkpoint, and stop (Ctrl-C).
    Stop,
}

/// To a policy (local, or the proxy of a worker in another process).
pub enum PolicyMsg {
    /// Sample `group_size` completions for each state with `snapshot`, for optimizer step `step`.
    Sample {
        step: u64,
        snapshot: PolicySnapshot,
        states: Vec<(u64, State)>,
    },
    /// A sampling job failed on its thread: fail this actor so the supervisor restarts it.
    Failed(String),
}

/// To a verifier.
pub enum VerifierMsg {
    /// Score `group` with the policy version that sampled it (and that version's EMA teacher).
    Score {
        step: u64,
        group: Group,
        policy: Arc<Decoder>,
        ema: Option<Arc<Decoder>>,
    },
    /// A scoring job failed on its thread.
    Failed(String),
}

/// To the learner.
pub enum LearnerMsg {
    /// Update on `batch` (in the environment's order); checkpoint afterwards when `checkpoint`.
    Update {
        step: u64,
        batch: Vec<ScoredGroup>,
        cursor: u64,
        checkpoint: bool,
    },
    /// Write a checkpoint of the current weights: `steps` updates done, data `cursor`.
    Checkpoint { steps: u64, cursor: u64 },
}

/// The result of one update, from the learner.
pub struct Updated {
    pub step: u64,
    pub stats: UpdateStats,
    pub weights: Arc<Decoder>,
    pub ema: Option<Arc<Decoder>>,
    pub seconds: f64,
}

/// To the environment.
pub enum EnvMsg {
    /// The next `n` states (fewer when the environment runs out), as (index, state).
    Take(usize, RpcReplyPort<Vec<(u64, State)>>),
    /// How many states have been handed out.
    Cursor(RpcReplyPort<u64>),
}

/// To the metrics actor.
pub enum MetricsMsg {
    /// One step's metrics (a JSON object with at least `step`, `reward_mean`, `accuracy`, `tokens_per_s`),
    /// and a few of its completions for `samples.jsonl`.
    Step {
        line: serde_json::Value,
        samples: Vec<serde_json::Value>,
    },
}

impl ractor::Message for SupMsg {}
impl ractor::Message for PolicyMsg {}
impl ractor::Message for VerifierMsg {}
impl ractor::Message for LearnerMsg {}
impl ractor::Message for EnvMsg {}
impl ractor::Message for MetricsMsg {}
