//! The run configuration: one TOML tree, unknown keys refused, validated once at load. Knob names follow
//! TRL and verl (`group_size`/`num_generations`, `beta`, `epsilon_low`, `scale_rewards`,
//! `loss_agg_mode`, `ppo_epochs`). Every run saves its resolved config beside its output.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::grpo::{LossAgg, ScaleRewards};

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

/// Scale-out over ractor_cluster: the run listens, `rpt worker --connect` processes join it and sample
/// as extra policy actors. Local policies (`rollout.policies`) keep sampling too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `IP:PORT` the run listens on for workers, e.g. `"0.0.0.0:4870"`.
    pub listen: String,
    /// Shared secret a worker must present (`rpt worker --cookie`).
    pub cookie: String,
    /// Workers to wait for before the first step; more may join at any time.
    #[serde(default)]
    pub min_workers: usize,
    /// Seconds to wait for `min_workers`.
    #[serde(default = "default_cluster_wait")]
    pub wait_s: f64,
    /// A worker that leaves a request unanswered this long is dropped and its states re-issued.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_s: f64,
}

fn default_cluster_wait() -> f64 {
    300.0
}

fn default_request_timeout() -> f64 {
    600.0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face-layout directory of the starting policy.
    #[serde(default = "default_model_path")]
    pub path: PathBuf,
    /// Build the built-in model at `path` (with `rpt bootstrap`'s settings) when it is not there.
    #[serde(default = "yes")]
    pub bootstrap_if_missing: bool,
    /// Proxy model for the difficulty index; empty means the starting policy.
    #[serde(default)]
    pub proxy: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorpusSection {
    /// `builtin` (generated, no download) or `files` (a file or directory at `path`).
    #[serde(default = "default_corpus_kind")]
    pub kind: String,
    /// File or directory for `kind = "files"`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// JSONL fields joined into one document.
    #[serde(default = "default_fields")]
    pub fields: Vec<String>,
    /// What joins the fields.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// Documents the built-in corpus generates.
    #[serde(default = "default_documents")]
    pub documents: usize,
    /// Share of documents held out for evaluation.
    #[serde(default = "default_heldout")]
    pub heldout_fraction: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatesSection {
    /// Context cut on the left to this many tokens.
    #[serde(default = "default_context")]
    pub max_context_tokens: usize,
    /// Continuation window in bytes.
    #[serde(default = "default_target_bytes")]
    pub max_target_bytes: usize,
    /// Training draws only positions whose proxy entropy (nats) is at least this.
    #[serde(default = "default_min_entropy")]
    pub min_entropy: f32,
    /// Top-k of the renormalised entropy.
    #[serde(default = "default_top_k")]
    pub entropy_top_k: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptSection {
    /// Prompt around the context; `{context}` marks where it goes. The completion follows it.
    #[serde(default = "default_template")]
    pub template: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutSection {
    /// Completions per state (G; TRL's `num_generations`).
    #[serde(default = "default_group", alias = "num_generations")]
    pub group_size: usize,
    /// States per optimizer step.
    #[serde(default = "default_states_per_step")]
    pub states_per_step: usize,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    #[serde(default)]
    pub top_k: usize,
    /// Completion length cap (thought + answer).
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
    /// Policy actors sampling in parallel.
    #[serde(default = "one_usize")]
    pub policies: usize,
    /// Verifier actors scoring in parallel.
    #[serde(default = "one_usize")]
    pub verifiers: usize,
    /// 0: strictly on-policy. k: rollouts may come from weights up to k versions old.
    #[serde(default)]
    pub max_staleness: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewardSection {
    /// `prefix_match`, `first_token`, `dense`, `conditional_dense` or `info_gain`.
    #[serde(default = "default_variant")]
    pub variant: String,
    /// EMA rate τ of the `info_gain` baseline model.
    #[serde(default = "default_tau")]
    pub ema_tau: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrpoSection {
    /// `group`, `batch` or `none`; ignored by `advantage = "rlp"`.
    #[serde(default = "default_scale")]
    pub scale_rewards: ScaleRewards,
    /// `grpo` (scaled by `scale_rewards`) or `rlp` (`G/(G−1)·(r − mean)`).
    #[serde(default = "default_advantage")]
    pub advantage: String,
    #[serde(default = "default_eps")]
    pub epsilon_low: f64,
    #[serde(default = "default_eps")]
    pub epsilon_high: f64,
    /// KL weight against the starting weights; 0 loads no reference.
    #[serde(default)]
    pub beta: f64,
    #[serde(default = "default_agg")]
    pub loss_agg_mode: LossAgg,
    /// `completion` (RPT: thought and answer) or `thought` (RLP: thought tokens only).
    #[serde(default = "default_loss_tokens")]
    pub loss_tokens: String,
    /// Passes over each batch.
    #[serde(default = "one_usize")]
    pub ppo_epochs: usize,
    /// Slices per pass.
    #[serde(default = "one_usize")]
    pub mini_batches: usize,
    /// Drop groups whose rewards are all equal and sample more states.
    #[serde(default)]
    pub dynamic_sampling: bool,
    /// At most this many sampling rounds per step when `dynamic_sampling` is on.
    #[serde(default = "default_gen_batches")]
    pub max_gen_batches: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Gradient-norm clip; 0 disables it.
    #[serde(default = "one")]
    pub max_grad_norm: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps.
    #[serde(default = "default_steps")]
    pub steps: u64,
    /// Write a checkpoint every N steps (and always at the end).
    #[serde(default = "default_ckpt_every")]
    pub checkpoint_every: u64,
    /// Evaluate held-out accuracy before and after training.
    #[serde(default = "yes")]
    pub eval_before_after: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Held-out positions evaluated (sampled in a seeded order from the easy split).
    #[serde(default = "default_eval_positions")]
    pub positions: usize,
    /// Reasoning-mode temperature; 0 is greedy.
    #[serde(default)]
    pub temperature: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BootstrapSection {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_layers")]
    pub layers: usize,
    #[serde(default = "default_heads")]
    pub heads: usize,
    #[serde(default = "default_kv_heads")]
    pub kv_heads: usize,
    #[serde(default = "default_mlp")]
    pub intermediate_size: usize,
    /// Next-token pre-training steps.
    #[serde(default = "default_pretrain_steps")]
    pub pretrain_steps: usize,
    /// Answer-format warm-up steps.
    #[serde(default = "default_sft_steps")]
    pub sft_steps: usize,
    /// Sequences per step.
    #[serde(default = "default_boot_batch")]
    pub batch: usize,
    /// Tokens per pre-training sequence.
    #[serde(default = "default_boot_len")]
    pub seq_len: usize,
    #[serde(default = "default_boot_lr")]
    pub lr: f64,
    /// Bytes of the context's end copied into the warm-up thought (at least its last token).
    #[serde(default = "default_thought_bytes")]
    pub thought_bytes: usize,
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("runs/tiny")
}
fn default_model_path() -> PathBuf {
    PathBuf::from("models/builtin")
}
fn default_corpus_kind() -> String {
    "builtin".into()
}
fn default_fields() -> Vec<String> {
    vec!["text".into()]
}
fn default_separator() -> String {
    "\n\n".into()
}
fn default_documents() -> usize {
    600
}
fn default_heldout() -> f64 {
    0.1
}
fn default_context() -> usize {
    64
}
fn default_target_bytes() -> usize {
    64
}
fn default_min_entropy() -> f32 {
    0.5
}
fn default_top_k() -> usize {
    16
}
fn default_template() -> String {
    "{context}<think>".into()
}
fn default_group() -> usize {
    8
}
fn default_states_per_step() -> usize {
    8
}
fn default_temperature() -> f64 {
    0.8
}
fn default_new_tokens() -> usize {
    32
}
fn default_variant() -> String {
    "prefix_match".into()
}
fn default_tau() -> f64 {
    0.999
}
fn default_scale() -> ScaleRewards {
    ScaleRewards::Group
}
fn default_advantage() -> String {
    "grpo".into()
}
fn default_eps() -> f64 {
    0.2
}
fn default_agg() -> LossAgg {
    LossAgg::TokenMean
}
fn default_loss_tokens() -> String {
    "completion".into()
}
fn default_gen_batches() -> usize {
    3
}
fn default_lr() -> f64 {
    1e-6
}
fn default_wd() -> f64 {
    0.01
}
fn default_steps() -> u64 {
    100
}
fn default_ckpt_every() -> u64 {
    25
}
fn default_eval_positions() -> usize {
    200
}
fn default_vocab() -> usize {
    512
}
fn default_hidden() -> usize {
    128
}
fn default_layers() -> usize {
    4
}
fn default_heads() -> usize {
    4
}
fn default_kv_heads() -> usize {
    2
}
fn default_mlp() -> usize {
    384
}
fn default_pretrain_steps() -> usize {
    360
}
fn default_sft_steps() -> usize {
    180
}
fn default_boot_batch() -> usize {
    16
}
fn default_boot_len() -> usize {
    96
}
fn default_boot_lr() -> f64 {
    3e-3
}
fn default_thought_bytes() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
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
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks every bound; the error names the key, the bound and the value given.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: key.into(),
                reason,
            })
        };
        let r = &self.rollout;
        if r.group_size < 2 {
            return bad(
                "rollout.group_size",
                format!("must be >= 2, got {}", r.group_size),
            );
        }
        if r.states_per_step == 0 {
            return bad("rollout.states_per_step", "must be >= 1, got 0".into());
        }
        if r.temperature < 0.0 {
            return bad(
                "rollout.temperature",
                format!("must be >= 0, got {}", r.temperature),
            );
        }
        if !(r.top_p > 0.0 && r.top_p <= 1.0) {
            return bad(
                "rollout.top_p",
                format!("must be in (0, 1], got {}", r.top_p),
            );
        }
        if r.max_new_tokens == 0 {
            return bad("rollout.max_new_tokens", "must be >= 1, got 0".into());
        }
        if r.policies == 0 || r.verifiers == 0 {
            return bad(
                "rollout.policies",
                format!(
                    "policies and verifiers must be >= 1, got {} and {}",
                    r.policies, r.verifiers
                ),
            );
        }
        if let Err(e) = crate::reward::by_name(&self.reward.variant) {
            return bad("reward.variant", e.to_string());
        }
        if !(0.0..=1.0).contains(&self.reward.ema_tau) {
            return bad(
                "reward.ema_tau",
                format!("must be in [0, 1], got {}", self.reward.ema_tau),
            );
        }
        let g = &self.grpo;
        if !matches!(g.advantage.as_str(), "grpo" | "rlp") {
            return bad(
                "grpo.advantage",
                format!("must be \"grpo\" or \"rlp\", got {:?}", g.advantage),
            );
        }
        if !matches!(g.loss_tokens.as_str(), "completion" | "thought") {
            return bad(
                "grpo.loss_tokens",
                format!(
                    "must be \"completion\" or \"thought\", got {:?}",
                    g.loss_tokens
                ),
            );
        }
        if g.epsilon_low < 0.0 || g.epsilon_low >= 1.0 || g.epsilon_high < 0.0 {
            return bad(
                "grpo.epsilon_low",
                format!(
                    "need 0 <= epsilon_low < 1 and epsilon_high >= 0, got {} and {}",
                    g.epsilon_low, g.epsilon_high
                ),
            );
        }
        if g.beta < 0.0 {
            return bad("grpo.beta", format!("must be >= 0, got {}", g.beta));
        }
        if g.ppo_epochs == 0 || g.mini_batches == 0 || g.mini_batches > r.states_per_step {
            return bad(
                "grpo.mini_batches",
                format!(
                    "need ppo_epochs >= 1 and 1 <= mini_batches <= states_per_step, got {} and {}",
                    g.ppo_epochs, g.mini_batches
                ),
            );
        }
        if g.dynamic_sampling && g.max_gen_batches == 0 {
            return bad(
                "grpo.max_gen_batches",
                "must be >= 1 with dynamic_sampling".into(),
            );
        }
        if self.optim.lr <= 0.0 || !self.optim.lr.is_finite() {
            return bad("optim.lr", format!("must be > 0, got {}", self.optim.lr));
        }
        if let Some(c) = &self.cluster {
            if c.listen.parse::<std::net::SocketAddr>().is_err() {
                return bad(
                    "cluster.listen",
                    format!(
                        "expected IP:PORT such as \"0.0.0.0:4870\", got {:?}",
                        c.listen
                    ),
                );
            }
            if c.cookie.is_empty() {
                return bad("cluster.cookie", "must not be empty".into());
            }
            for (key, v) in [
                ("cluster.wait_s", c.wait_s),
                ("cluster.request_timeout_s", c.request_timeout_s),
            ] {
                if !(v > 0.0 && v.is_finite()) {
                    return bad(
                        key,
                        format!("must be a positive number of seconds, got {v}"),
                    );
                }
            }
        }
        if self.train.checkpoint_every == 0 {
            return bad("train.checkpoint_every", "must be >= 1, got 0".into());
        }
        let s = &self.states;
        if s.max_context_tokens == 0 || s.max_target_bytes == 0 || s.entropy_top_k < 2 {
            return bad(
                "states",
                format!(
                    "need max_context_tokens >= 1, max_target_bytes >= 1, entropy_top_k >= 2; got {}, {}, {}",
                    s.max_context_tokens, s.max_target_bytes, s.entropy_top_k
                ),
            );
        }
        if !self.prompt.template.contains("{context}") {
            return bad(
                "prompt.template",
                format!("must contain {{context}}, got {:?}", self.prompt.template),
            );
        }
        match self.corpus.kind.as_str() {
            "builtin" if self.corpus.documents < 2 => {
                return bad(
                    "corpus.documents",
                    format!("must be >= 2, got {}", self.corpus.documents),
                );
            }
            "builtin" => {}
            "files" => match &self.corpus.path {
                None => return bad("corpus.path", "is required with kind = \"files\"".into()),
                Some(p) if !p.exists() => {
                    return bad("corpus.path", format!("{} does not exist", p.display()));
                }
                Some(_) => {}
            },
            other => {
                return bad(
                    "corpus.kind",
                    format!("must be \"builtin\" or \"files\", got {other:?}"),
                );
            }
        }
        if !(0.0..1.0).contains(&self.corpus.heldout_fraction) {
            return bad(
                "corpus.heldout_fraction",
                format!("must be in [0, 1), got {}", self.corpus.heldout_fraction),
            );
        }
        if !self.model.bootstrap_if_missing && !self.model.path.join("config.json").exists() {
            return bad(
                "model.path",
                format!(
                    "{} has no config.json (and bootstrap_if_missing = false)",
                    self.model.path.display()
                ),
            );
        }
        let b = &self.bootstrap;
        if b.heads == 0
            || b.kv_heads == 0
            || !b.heads.is_multiple_of(b.kv_heads)
            || !b.hidden_size.is_multiple_of(b.heads)
            || !(b.hidden_size / b.heads).is_multiple_of(2)
        {
            return bad(
                "bootstrap.heads",
                format!(
                    "need heads divisible by kv_heads and an even head size; got hidden {}, heads {}, kv_heads {}",
                    b.hidden_size, b.heads, b.kv_heads
                ),
            );
        }
        if b.vocab_size < 300 {
            return bad(
                "bootstrap.vocab_size",
                format!(
                    "must be >= 300 (256 bytes + special tokens + merges), got {}",
                    b.vocab_size
                ),
            );
        }
        Ok(())
    }

    /// The GRPO loss settings.
    pub fn loss(&self) -> crate::grpo::LossConfig {
        crate::grpo::LossConfig {
            epsilon_low: self.grpo.epsilon_low,
            epsilon_high: self.grpo.epsilon_high,
            beta: self.grpo.beta,
            agg: self.grpo.loss_agg_mode,
            max_completion_tokens: self.rollout.max_new_tokens,
        }
    }

    pub fn advantage_mode(&self) -> crate::grpo::AdvantageMode {
        match self.grpo.advantage.as_str() {
            "rlp" => crate::grpo::AdvantageMode::Rlp,
            _ => crate::grpo::AdvantageMode::Grpo(self.grpo.scale_rewards),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("run.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_validate_and_round_trip() {
        let c = Config::default();
        c.validate(Path::new("x")).unwrap();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text, Path::new("x")).unwrap(), c);
    }

    #[test]
    fn bad_configs_name_the_key_and_value() {
        let e = err("[rollout]\ngroup_size = 1\n");
        assert!(
            e.contains("run.toml") && e.contains("`rollout.group_size` must be >= 2, got 1"),
            "{e}"
        );
        let e = err("[rollout]\ngroupsize = 8\n");
        assert!(
            e.contains("unknown field") && e.contains("groupsize"),
            "{e}"
        );
        let e = err("[reward]\nvariant = \"exact\"\n");
        assert!(
            e.contains("reward.variant") && e.contains("exact") && e.contains("prefix_match"),
            "{e}"
        );
        let e = err("[model]\npath = \"/no/such/model\"\nbootstrap_if_missing = false\n");
        assert!(
            e.contains("model.path") && e.contains("/no/such/model"),
            "{e}"
        );
        let e = err("[grpo]\nloss_agg_mode = \"mean\"\n");
        assert!(e.contains("loss_agg_mode") || e.contains("mean"), "{e}");
        let e = err("[corpus]\nkind = \"files\"\n");
        assert!(e.contains("corpus.path"), "{e}");
        let e = err("[prompt]\ntemplate = \"no slot\"\n");
        assert!(e.contains("{context}"), "{e}");
        let e = err("seed = \"x\"\n");
        assert!(e.contains("seed"), "{e}");
        let e = err("[cluster]\nlisten = \"myhost\"\ncookie = \"c\"\n");
        assert!(
            e.contains("cluster.listen") && e.contains("IP:PORT") && e.contains("myhost"),
            "{e}"
        );
        let e = err("[cluster]\nlisten = \"0.0.0.0:4870\"\ncookie = \"\"\n");
        assert!(e.contains("cluster.cookie"), "{e}");
        let e = err("[cluster]\nlisten = \"0.0.0.0:4870\"\ncookie = \"c\"\nwait_s = -1\n");
        assert!(e.contains("cluster.wait_s") && e.contains("-1"), "{e}");
        let e = err("[cluster]\nlisten = \"0.0.0.0:4870\"\n");
        assert!(e.contains("cookie"), "{e}");
        let ok = Config::parse(
            "[cluster]\nlisten = \"127.0.0.1:4870\"\ncookie = \"c\"\nmin_workers = 2\n",
            Path::new("x"),
        )
        .unwrap();
        let c = ok.cluster.as_ref().unwrap();
        assert_eq!(
            (c.min_workers, c.wait_s, c.request_timeout_s),
            (2, 300.0, 600.0)
        );
        let text = toml::to_string(&ok).unwrap();
        assert_eq!(Config::parse(&text, Path::new("x")).unwrap(), ok);
    }

    #[test]
    fn trl_alias_for_group_size() {
        let c = Config::parse("[rollout]\nnum_generations = 4\n", Path::new("x")).unwrap();
        assert_eq!(c.rollout.group_size, 4);
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// Every config in `configs/` parses (apart from paths that only exist on a user's machine).
    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let cfg: Config =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            match cfg.validate(&path) {
                Ok(()) => {}
                Err(ConfigError::Invalid { key, .. })
                    if key == "model.path" || key == "corpus.path" => {}
                Err(e) => panic!("{e}"),
            }
            crate::reward::by_name(&cfg.reward.variant).unwrap();
            n += 1;
        }
        assert!(n >= 6, "only {n} configs");
    }
}
