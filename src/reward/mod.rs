//! The verifier's rewards (METHOD §3) as pure functions: no model in here. Variants that need model
//! numbers (`dense`, `info_gain`) receive them in [`Case`], computed elsewhere without gradient.
//!
//! Adding a variant: write a type implementing [`RewardFn`] (a file of its own is fine), then add one
//! line to [`REGISTRY`]. Configs then pick it by name. Without recompiling: `variant = "command"`
//! runs a process of the user's ([`CommandReward`]).

mod command;
mod parse;
mod variants;

use std::sync::Arc;

pub use command::{CommandReward, MAX_REWARD};
pub use parse::{
    BOXED, FormatFailure, THINK_END, answer_closed, boxable_answer, parse_prediction, thought,
};
pub use variants::{ConditionalDense, Dense, FirstToken, InfoGain, PrefixMatch};

/// What the verifier knows about one completion of one state.
#[derive(Debug, Clone, Default)]
pub struct Case<'a> {
    /// The state's context `x_<t` as bytes, where the variant asks for it ([`Needs::context`]).
    pub context: &'a [u8],
    /// The sampled completion, as bytes (may be invalid UTF-8).
    pub completion: &'a [u8],
    /// Bytes of the true continuation `x_≥t` (up to `max_target_bytes`).
    pub continuation: &'a [u8],
    /// Valid boundaries `L_gt`: cumulative byte lengths of the continuation's tokens.
    pub boundaries: &'a [usize],
    /// The true next token `x_t`.
    pub next_token: u32,
    /// First token of `tokenize(prediction)` (`first_token`, `dense`).
    pub guess_first_token: Option<u32>,
    /// `p_θ(first token of y | x_<t)`, the policy's standard-mode probability of its guess (`dense`).
    pub guess_prob: Option<f64>,
    /// `log p_θ(x_t | x_<t, <think> thought </think>)` (`info_gain`).
    pub logp_with_thought: Option<f64>,
    /// `log p̄_φ(x_t | x_<t)` of the EMA model without thought (`info_gain`).
    pub logp_baseline: Option<f64>,
}

/// A reward with the reason behind it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reward {
    pub value: f64,
    /// Whether the prediction is correct under the `prefix_match` rule (accuracy, whatever the variant).
    pub correct: bool,
    /// Why there is no prediction, if there is none.
    pub format: Option<FormatFailure>,
}

/// What a variant needs computed before it can score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub guess_first_token: bool,
    pub guess_prob: bool,
    /// The log-probs of the true next token with and without the thought (RLP).
    pub info_gain: bool,
    /// An EMA teacher of the policy, kept by the learner and used for the no-thought baseline.
    pub ema_teacher: bool,
    /// The context's bytes in [`Case::context`].
    pub context: bool,
}

/// A reward variant. Scores a whole group (the G completions of one state), so group-level variants
/// such as `conditional_dense` fit the same interface. Must be deterministic and never panic.
pub trait RewardFn: Send + Sync {
    fn name(&self) -> &'static str;
    fn needs(&self) -> Needs {
        Needs::default()
    }
    /// Missing inputs the variant needs are an error, naming the field.
    fn score_group(&self, group: &[Case<'_>]) -> Result<Vec<Reward>, RewardError>;
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RewardError {
    #[error("unknown reward variant {name:?}; known: {known}")]
    Unknown { name: String, known: String },
    #[error("reward `{variant}` needs `{field}`, which was not provided")]
    Missing {
        variant: &'static str,
        field: &'static str,
    },
    /// The reward plug-in failed: the message names the line and quotes its stderr.
    #[error("{0}")]
    Plugin(String),
}

/// Builds one reward variant.
pub type MakeReward = fn() -> Arc<dyn RewardFn>;

/// Every variant by name. One line per variant.
pub const REGISTRY: &[(&str, MakeReward)] = &[
    ("prefix_match", || Arc::new(PrefixMatch)),
    ("first_token", || Arc::new(FirstToken)),
    ("dense", || Arc::new(Dense)),
    ("conditional_dense", || Arc::new(ConditionalDense)),
    ("info_gain", || Arc::new(InfoGain)),
];

/// The variant called `name`, or an error listing the known ones.
pub fn by_name(name: &str) -> Result<Arc<dyn RewardFn>, RewardError> {
    REGISTRY
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, make)| make())
        .ok_or_else(|| RewardError::Unknown {
            name: name.to_string(),
            known: REGISTRY
                .iter()
                .map(|(n, _)| *n)
                .chain(["command"])
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The variant a `[reward]` section asks for: a built-in one by name, or the `command` plug-in.
pub fn from_config(r: &crate::config::RewardSection) -> Result<Arc<dyn RewardFn>, RewardError> {
    if r.variant == "command" {
        let spec = crate::plugin::PluginSpec::new(&r.command, r.timeout_s, "reward");
        return Ok(Arc::new(CommandReward::new(spec)));
    }
    by_name(&r.variant)
}

/// RPT Eq. 3: `y == c[0..l]` and `l ∈ L_gt`.
pub fn prefix_match(prediction: &[u8], continuation: &[u8], boundaries: &[usize]) -> bool {
    let l = prediction.len();
    l <= continuation.len() && &continuation[..l] == prediction && boundaries.contains(&l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_finds_every_variant_and_names_the_known_ones() {
        for (name, _) in REGISTRY {
            assert_eq!(by_name(name).unwrap().name(), *name);
        }
        let e = by_name("exact").err().unwrap().to_string();
        assert!(
            e.contains("\"exact\"") && e.contains("prefix_match") && e.contains("info_gain"),
            "{e}"
        );
    }
}
