//! The run configuration: one TOML tree, unknown keys refused, validated once at load. Knob names follow
//! TRL and verl (`group_size`/`num_generations`, `beta`, `epsilon_low`, `scale_rewards`,
//! `loss_agg_mode`, `ppo_epochs`). Every run saves its resolved config beside its output.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod defaults;
mod flat;
mod sections;
mod validate;

use defaults::*;
pub use sections::*;

pub use flat::flat_keys;
pub use validate::limits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}` {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// `grpo.advantage`: how rewards become advantages.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Advantage {
    /// Group-normalised, scaled by `grpo.scale_rewards`.
    Grpo,
    /// RLP's `G/(G−1)·(r − mean)`.
    Rlp,
}

/// `grpo.loss_tokens`: which completion tokens the loss is taken over.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LossTokens {
    /// Thought and answer (RPT).
    Completion,
    /// The thought only (RLP).
    Thought,
}

/// `corpus.kind`: where the documents come from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CorpusKind {
    /// Generated here (math worksheets), nothing downloaded.
    Builtin,
    /// A text or JSONL file, or a directory of them, at `corpus.path`.
    Files,
    /// An environment plug-in: a process of the user's (`corpus.command`) hands out document k for
    /// each request `{"document": k}` over a pipe (`env::command`).
    Command,
}

/// `corpus.teacher`: which solver offers teacher thoughts for the warm-up (see `env::teacher`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TeacherKind {
    /// Column arithmetic for every number a document computes that the built-in solver reads:
    /// `X + Y = Z`, `X - Y = Z`, `X \times Y = Z`, progressions, subtracting from both sides, fraction
    /// sums (`env::teacher::solver_thoughts`; the built-in corpus is full of them, ordinary prose has
    /// none).
    Arithmetic,
    /// No teacher thoughts: every warm-up position gets the generic thought.
    None,
}

/// `grpo.activation_checkpointing`: whether the CPU training pass keeps every layer's activations
/// for the backward pass or only each layer's input, recomputing the rest of a layer just before its
/// backward step (one more forward pass; the same numbers to the bit).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActivationCheckpointing {
    /// For every micro-batch of a run whose largest micro-batch's activations would pass
    /// `cpu::TAPE_FLOATS` (2 GiB), for no other but one past it by itself (a completion longer than
    /// `grpo.micro_batch_tokens`; `learn::tape_budget`): fastest, but a run whose
    /// micro-batches stay just under that keeps up to 2 GiB.
    Auto,
    /// For every micro-batch: the activations the update keeps are then the least a micro-batch
    /// allows, and grow with `grpo.micro_batch_tokens`, never past what a full micro-batch needs.
    Always,
    /// Never: every layer's activations kept, however many.
    Never,
}

impl ActivationCheckpointing {
    /// The name a config gives it.
    pub fn name(self) -> &'static str {
        match self {
            ActivationCheckpointing::Auto => "auto",
            ActivationCheckpointing::Always => "always",
            ActivationCheckpointing::Never => "never",
        }
    }
}

/// `train.objective`: what a run optimises.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Reinforcement pre-training (the actor system: sample, verify, GRPO).
    Rpt,
    /// Next-token prediction on the same training positions: the baseline at equal compute.
    NextToken,
}

/// The whole configuration of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Seed of every random choice: split, state order, sampling, initialisation.
    #[serde(default)]
    pub seed: u64,
    /// Where the run writes its config, metrics and checkpoints.
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub corpus: CorpusSection,
    #[serde(default)]
    pub states: StatesSection,
    #[serde(default)]
    pub prompt: PromptSection,
    #[serde(default)]
    pub rollout: RolloutSection,
    #[serde(default)]
    pub reward: RewardSection,
    #[serde(default)]
    pub grpo: GrpoSection,
    #[serde(default)]
    pub optim: OptimSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub eval: EvalSection,
    #[serde(default)]
    pub bootstrap: BootstrapSection,
    /// Policy workers in other processes or machines (`rpt worker`); absent: everything runs here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect("every field has a default")
            }
        }
    )*};
}
default_from_serde!(
    Config,
    ModelSection,
    CorpusSection,
    StatesSection,
    PromptSection,
    RolloutSection,
    RewardSection,
    GrpoSection,
    OptimSection,
    TrainSection,
    EvalSection,
    BootstrapSection
);

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let raw: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.apply_loss_preset(raw.get("grpo").and_then(|g| g.as_table()));
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Fills the keys of `[grpo]` that the text left out (`given`: the table as written) with
    /// `grpo.loss_type`'s preset, so that the saved config states what ran.
    fn apply_loss_preset(&mut self, given: Option<&toml::Table>) {
        let absent = |key: &str| given.is_none_or(|t| !t.contains_key(key));
        let p = self.grpo.loss_type.preset();
        let g = &mut self.grpo;
        if absent("scale_rewards") {
            g.scale_rewards = p.scale_rewards;
        }
        if absent("loss_agg_mode") {
            g.loss_agg_mode = p.agg;
        }
        if absent("epsilon_low") {
            g.epsilon_low = p.epsilon_low;
        }
        if absent("epsilon_high") {
            g.epsilon_high = p.epsilon_high;
        }
        if absent("overlong_buffer") && p.overlong {
            g.overlong_buffer = self.rollout.max_new_tokens / 5;
        }
    }

    /// The policy-loss settings.
    pub fn loss(&self) -> crate::grpo::LossConfig {
        crate::grpo::LossConfig {
            loss_type: self.grpo.loss_type,
            epsilon_low: self.grpo.epsilon_low,
            epsilon_high: self.grpo.epsilon_high,
            beta: self.grpo.beta,
            agg: self.grpo.loss_agg_mode,
            max_completion_tokens: self.rollout.max_new_tokens,
            off_policy: self.grpo.off_policy,
            is_cap: self.grpo.is_cap,
            sapo_tau_pos: self.grpo.sapo_tau_pos,
            sapo_tau_neg: self.grpo.sapo_tau_neg,
        }
    }

    pub fn advantage_mode(&self) -> crate::grpo::AdvantageMode {
        match self.grpo.advantage {
            Advantage::Rlp => crate::grpo::AdvantageMode::Rlp,
            Advantage::Grpo => crate::grpo::AdvantageMode::Grpo(self.grpo.scale_rewards),
        }
    }
}

#[cfg(test)]
mod tests;
