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

/// Upper bounds of the counts: far above any run this program can do, low enough that no size
/// computed from them overflows an allocation.
pub mod limits {
    pub const GROUP: usize = 4096;
    pub const STATES: usize = 1 << 20;
    /// `states_per_step × group_size`.
    pub const ROLLOUTS: usize = 1 << 22;
    pub const TOKENS: usize = 1 << 20;
    pub const ACTORS: usize = 1024;
    pub const STALENESS: u64 = 1024;
    pub const EPOCHS: usize = 1024;
    pub const STEPS: u64 = 1 << 32;
    pub const DOCUMENTS: usize = 1 << 30;
    pub const VOCAB: usize = 1 << 22;
    pub const WIDTH: usize = 1 << 16;
    pub const LAYERS: usize = 1024;
    pub const SECONDS: f64 = 1e7;
}

/// Where a float must lie.
#[derive(Debug, Clone, Copy)]
enum Range {
    AtLeast(f64),
    Closed(f64, f64),
    OpenClosed(f64, f64),
    ClosedOpen(f64, f64),
}

impl Range {
    fn contains(self, x: f64) -> bool {
        match self {
            Range::AtLeast(lo) => x >= lo,
            Range::Closed(lo, hi) => (lo..=hi).contains(&x),
            Range::OpenClosed(lo, hi) => x > lo && x <= hi,
            Range::ClosedOpen(lo, hi) => (lo..hi).contains(&x),
        }
    }

    fn describe(self) -> String {
        match self {
            Range::AtLeast(lo) => format!(">= {lo}"),
            Range::Closed(lo, hi) => format!("in [{lo}, {hi}]"),
            Range::OpenClosed(lo, hi) => format!("in ({lo}, {hi}]"),
            Range::ClosedOpen(lo, hi) => format!("in [{lo}, {hi})"),
        }
    }
}

/// The checks of [`Config::validate`], each naming its key.
struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn bad<T>(&self, key: &str, reason: String) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            reason,
        })
    }

    /// A finite number in `range`; NaN and infinities are refused by name.
    fn float(&self, key: &str, x: f64, range: Range) -> Result<(), ConfigError> {
        if !x.is_finite() {
            return self.bad(
                key,
                format!("must be a finite number {}, got {x}", range.describe()),
            );
        }
        if !range.contains(x) {
            return self.bad(key, format!("must be {}, got {x}", range.describe()));
        }
        Ok(())
    }

    fn count(&self, key: &str, n: usize, lo: usize, hi: usize) -> Result<(), ConfigError> {
        self.count_u64(key, n as u64, lo as u64, hi as u64)
    }

    fn count_u64(&self, key: &str, n: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
        if n < lo {
            return self.bad(key, format!("must be >= {lo}, got {n}"));
        }
        if n > hi {
            return self.bad(key, format!("must be <= {hi}, got {n}"));
        }
        Ok(())
    }
}

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

    /// Checks every bound; the error names the key, the bound and the value given. Every float is
    /// checked finite (NaN and infinities are refused, never read as a default), every count has an
    /// upper bound (so that no size overflows an allocation later), and keys that depend on each
    /// other are checked together.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let v = Validator { path };
        let r = &self.rollout;
        v.count("rollout.group_size", r.group_size, 2, limits::GROUP)?;
        v.count(
            "rollout.states_per_step",
            r.states_per_step,
            1,
            limits::STATES,
        )?;
        if r.group_size.saturating_mul(r.states_per_step) > limits::ROLLOUTS {
            return v.bad(
                "rollout.states_per_step",
                format!(
                    "times rollout.group_size must be <= {}, got {} x {}",
                    limits::ROLLOUTS,
                    r.states_per_step,
                    r.group_size
                ),
            );
        }
        v.float("rollout.temperature", r.temperature, Range::AtLeast(0.0))?;
        v.float("rollout.top_p", r.top_p, Range::OpenClosed(0.0, 1.0))?;
        v.count("rollout.top_k", r.top_k, 0, limits::TOKENS)?;
        v.count(
            "rollout.max_new_tokens",
            r.max_new_tokens,
            1,
            limits::TOKENS,
        )?;
        v.count("rollout.policies", r.policies, 1, limits::ACTORS)?;
        v.count("rollout.verifiers", r.verifiers, 1, limits::ACTORS)?;
        v.count_u64(
            "rollout.max_staleness",
            r.max_staleness,
            0,
            limits::STALENESS,
        )?;
        if let Err(e) = crate::reward::by_name(&self.reward.variant) {
            return v.bad("reward.variant", e.to_string());
        }
        v.float(
            "reward.ema_tau",
            self.reward.ema_tau,
            Range::Closed(0.0, 1.0),
        )?;
        let g = &self.grpo;
        if !matches!(g.advantage.as_str(), "grpo" | "rlp") {
            return v.bad(
                "grpo.advantage",
                format!("must be \"grpo\" or \"rlp\", got {:?}", g.advantage),
            );
        }
        if !matches!(g.loss_tokens.as_str(), "completion" | "thought") {
            return v.bad(
                "grpo.loss_tokens",
                format!(
                    "must be \"completion\" or \"thought\", got {:?}",
                    g.loss_tokens
                ),
            );
        }
        v.float(
            "grpo.epsilon_low",
            g.epsilon_low,
            Range::ClosedOpen(0.0, 1.0),
        )?;
        v.float("grpo.epsilon_high", g.epsilon_high, Range::Closed(0.0, 1e3))?;
        v.float("grpo.beta", g.beta, Range::Closed(0.0, 1e6))?;
        v.count("grpo.ppo_epochs", g.ppo_epochs, 1, limits::EPOCHS)?;
        v.count("grpo.mini_batches", g.mini_batches, 1, r.states_per_step)?;
        if g.dynamic_sampling {
            v.count("grpo.max_gen_batches", g.max_gen_batches, 1, limits::EPOCHS)?;
        }
        let o = &self.optim;
        v.float("optim.lr", o.lr, Range::OpenClosed(0.0, 1.0))?;
        v.count_u64("optim.warmup_steps", o.warmup_steps, 0, limits::STEPS)?;
        v.float(
            "optim.weight_decay",
            o.weight_decay,
            Range::Closed(0.0, 1.0),
        )?;
        v.float(
            "optim.max_grad_norm",
            o.max_grad_norm,
            Range::Closed(0.0, 1e9),
        )?;
        if let Some(c) = &self.cluster {
            if c.listen.parse::<std::net::SocketAddr>().is_err() {
                return v.bad(
                    "cluster.listen",
                    format!(
                        "expected IP:PORT such as \"0.0.0.0:4870\", got {:?}",
                        c.listen
                    ),
                );
            }
            if c.cookie.is_empty() {
                return v.bad("cluster.cookie", "must not be empty".into());
            }
            v.count("cluster.min_workers", c.min_workers, 0, limits::ACTORS)?;
            for (key, s) in [
                ("cluster.wait_s", c.wait_s),
                ("cluster.request_timeout_s", c.request_timeout_s),
            ] {
                if !(s > 0.0 && s <= limits::SECONDS) {
                    return v.bad(
                        key,
                        format!(
                            "must be a positive number of seconds <= {}, got {s}",
                            limits::SECONDS
                        ),
                    );
                }
            }
        }
        let t = &self.train;
        v.count_u64("train.steps", t.steps, 0, limits::STEPS)?;
        v.count_u64(
            "train.checkpoint_every",
            t.checkpoint_every,
            1,
            limits::STEPS,
        )?;
        v.count("eval.positions", self.eval.positions, 0, limits::DOCUMENTS)?;
        if t.eval_before_after && self.eval.positions == 0 {
            return v.bad(
                "eval.positions",
                "must be >= 1 while train.eval_before_after = true (set it to false to skip evaluation)"
                    .into(),
            );
        }
        v.float(
            "eval.temperature",
            self.eval.temperature,
            Range::Closed(0.0, 1e3),
        )?;
        let s = &self.states;
        v.count(
            "states.max_context_tokens",
            s.max_context_tokens,
            1,
            limits::TOKENS,
        )?;
        v.count(
            "states.max_target_bytes",
            s.max_target_bytes,
            1,
            limits::TOKENS,
        )?;
        v.count("states.entropy_top_k", s.entropy_top_k, 2, limits::TOKENS)?;
        v.float(
            "states.min_entropy",
            f64::from(s.min_entropy),
            Range::Closed(0.0, 1e3),
        )?;
        if !self.prompt.template.contains("{context}") {
            return v.bad(
                "prompt.template",
                format!("must contain {{context}}, got {:?}", self.prompt.template),
            );
        }
        match self.corpus.kind.as_str() {
            "builtin" => {
                v.count(
                    "corpus.documents",
                    self.corpus.documents,
                    2,
                    limits::DOCUMENTS,
                )?;
            }
            "files" => match &self.corpus.path {
                None => return v.bad("corpus.path", "is required with kind = \"files\"".into()),
                Some(p) if !p.exists() => {
                    return v.bad("corpus.path", format!("{} does not exist", p.display()));
                }
                Some(_) => {}
            },
            other => {
                return v.bad(
                    "corpus.kind",
                    format!("must be \"builtin\" or \"files\", got {other:?}"),
                );
            }
        }
        v.float(
            "corpus.heldout_fraction",
            self.corpus.heldout_fraction,
            Range::ClosedOpen(0.0, 1.0),
        )?;
        if !self.model.bootstrap_if_missing && !self.model.path.join("config.json").exists() {
            return v.bad(
                "model.path",
                format!(
                    "{} has no config.json (and bootstrap_if_missing = false)",
                    self.model.path.display()
                ),
            );
        }
        let b = &self.bootstrap;
        v.count("bootstrap.vocab_size", b.vocab_size, 300, limits::VOCAB)?;
        v.count("bootstrap.hidden_size", b.hidden_size, 2, limits::WIDTH)?;
        v.count("bootstrap.layers", b.layers, 1, limits::LAYERS)?;
        v.count("bootstrap.heads", b.heads, 1, limits::LAYERS)?;
        v.count("bootstrap.kv_heads", b.kv_heads, 1, limits::LAYERS)?;
        v.count(
            "bootstrap.intermediate_size",
            b.intermediate_size,
            1,
            limits::WIDTH,
        )?;
        v.count(
            "bootstrap.pretrain_steps",
            b.pretrain_steps,
            0,
            limits::STEPS as usize,
        )?;
        v.count(
            "bootstrap.sft_steps",
            b.sft_steps,
            0,
            limits::STEPS as usize,
        )?;
        v.count("bootstrap.batch", b.batch, 1, limits::STATES)?;
        v.count("bootstrap.seq_len", b.seq_len, 2, limits::TOKENS)?;
        v.count(
            "bootstrap.thought_bytes",
            b.thought_bytes,
            0,
            limits::TOKENS,
        )?;
        v.float("bootstrap.lr", b.lr, Range::OpenClosed(0.0, 1.0))?;
        if !b.heads.is_multiple_of(b.kv_heads)
            || !b.hidden_size.is_multiple_of(b.heads)
            || !(b.hidden_size / b.heads).is_multiple_of(2)
        {
            return v.bad(
                "bootstrap.heads",
                format!(
                    "need heads divisible by kv_heads and an even head size; got hidden_size {}, heads {}, kv_heads {}",
                    b.hidden_size, b.heads, b.kv_heads
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

    /// The hostile numbers found by hand: NaN read as a default, sizes that overflowed an allocation,
    /// rates that turned every weight into NaN. Each is refused naming its key.
    #[test]
    fn hostile_numbers_are_refused_by_key() {
        let max = i64::MAX;
        for (text, key) in [
            ("[rollout]\ntemperature = nan\n", "rollout.temperature"),
            ("[rollout]\ntop_p = nan\n", "rollout.top_p"),
            ("[grpo]\nepsilon_low = nan\n", "grpo.epsilon_low"),
            ("[grpo]\nepsilon_high = nan\n", "grpo.epsilon_high"),
            ("[grpo]\nbeta = nan\n", "grpo.beta"),
            ("[grpo]\nbeta = inf\n", "grpo.beta"),
            ("[optim]\nweight_decay = nan\n", "optim.weight_decay"),
            ("[optim]\nlr = 1e308\n", "optim.lr"),
            ("[optim]\nlr = nan\n", "optim.lr"),
            ("[optim]\nmax_grad_norm = nan\n", "optim.max_grad_norm"),
            ("[reward]\nema_tau = nan\n", "reward.ema_tau"),
            ("[eval]\ntemperature = -inf\n", "eval.temperature"),
            ("[states]\nmin_entropy = nan\n", "states.min_entropy"),
            (
                "[corpus]\nheldout_fraction = nan\n",
                "corpus.heldout_fraction",
            ),
            ("[bootstrap]\nlr = nan\n", "bootstrap.lr"),
            (
                &format!("[rollout]\ngroup_size = {max}\n"),
                "rollout.group_size",
            ),
            (
                &format!("[rollout]\nstates_per_step = {max}\n"),
                "rollout.states_per_step",
            ),
            (
                &format!("[rollout]\nmax_new_tokens = {max}\n"),
                "rollout.max_new_tokens",
            ),
            (
                &format!("[corpus]\ndocuments = {max}\n"),
                "corpus.documents",
            ),
            (&format!("[grpo]\nppo_epochs = {max}\n"), "grpo.ppo_epochs"),
            (
                "[rollout]\ngroup_size = 4096\nstates_per_step = 4096\n",
                "rollout.states_per_step",
            ),
            ("[eval]\npositions = 0\n", "eval.positions"),
        ] {
            let e = err(text);
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
        let e = err("[rollout]\ntemperature = nan\n");
        assert!(e.contains("finite") && e.contains("NaN"), "{e}");
        let e = err("[eval]\npositions = 0\n");
        assert!(e.contains("eval_before_after"), "{e}");
        // Evaluation off: no positions needed.
        Config::parse(
            "[train]\neval_before_after = false\n[eval]\npositions = 0\n",
            Path::new("x"),
        )
        .unwrap();
    }

    #[test]
    fn trl_alias_for_group_size() {
        let c = Config::parse("[rollout]\nnum_generations = 4\n", Path::new("x")).unwrap();
        assert_eq!(c.rollout.group_size, 4);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Every numeric key of the config tree (cluster included), as (section, key, is_float).
    fn numeric_keys() -> Vec<(String, String, bool)> {
        let cfg = Config {
            cluster: Some(ClusterSection {
                listen: "127.0.0.1:4870".into(),
                cookie: "c".into(),
                min_workers: 0,
                wait_s: 1.0,
                request_timeout_s: 1.0,
            }),
            ..Config::default()
        };
        let v = toml::Value::try_from(&cfg).unwrap();
        let mut out = vec![];
        for (k, x) in v.as_table().unwrap() {
            match x {
                toml::Value::Integer(_) => out.push((String::new(), k.clone(), false)),
                toml::Value::Float(_) => out.push((String::new(), k.clone(), true)),
                toml::Value::Table(t) => {
                    for (k2, y) in t {
                        match y {
                            toml::Value::Integer(_) => out.push((k.clone(), k2.clone(), false)),
                            toml::Value::Float(_) => out.push((k.clone(), k2.clone(), true)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn number() -> impl Strategy<Value = toml::Value> {
        prop_oneof![
            any::<i64>().prop_map(toml::Value::Integer),
            (-3i64..70_000).prop_map(toml::Value::Integer),
            any::<f64>().prop_map(toml::Value::Float),
            prop_oneof![
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(1e308),
                Just(-0.0),
                Just(0.5),
                Just(1.0),
            ]
            .prop_map(toml::Value::Float),
        ]
    }

    fn text_with(section: &str, key: &str, value: toml::Value) -> String {
        let mut t = toml::Table::new();
        if section.is_empty() {
            t.insert(key.into(), value);
        } else {
            let mut inner = toml::Table::new();
            inner.insert(key.into(), value);
            if section == "cluster" {
                inner.insert("listen".into(), "127.0.0.1:4870".into());
                inner.insert("cookie".into(), "c".into());
            }
            t.insert(section.into(), toml::Value::Table(inner));
        }
        toml::to_string(&t).unwrap()
    }

    #[test]
    fn the_walk_finds_the_numeric_keys() {
        let keys = numeric_keys();
        for want in [
            "group_size",
            "temperature",
            "lr",
            "ema_tau",
            "beta",
            "wait_s",
            "seed",
        ] {
            assert!(
                keys.iter().any(|(_, k, _)| k == want),
                "{want} not in {keys:?}"
            );
        }
        assert!(keys.len() >= 40, "{}", keys.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Any value of any numeric key either loads and validates, or is refused naming that key.
        #[test]
        fn any_number_loads_or_names_its_key(i in 0usize..1000, value in number()) {
            let keys = numeric_keys();
            let (section, key, _) = &keys[i % keys.len()];
            let text = text_with(section, key, value.clone());
            match Config::parse(&text, Path::new("run.toml")) {
                Ok(cfg) => {
                    if let toml::Value::Float(x) = value {
                        prop_assert!(x.is_finite(), "{section}.{key} = {x} was accepted");
                    }
                    cfg.validate(Path::new("run.toml")).unwrap();
                }
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(e.contains(key.as_str()), "{section}.{key} = {value}: {e}");
                }
            }
        }

        /// Several numbers at once: never a panic, and an error always names a key that was set.
        #[test]
        fn many_numbers_never_panic(picks in proptest::collection::vec((0usize..1000, number()), 1..8)) {
            let keys = numeric_keys();
            let mut t = toml::Table::new();
            let mut set = vec![];
            for (i, value) in picks {
                let (section, key, _) = &keys[i % keys.len()];
                set.push(key.clone());
                if section.is_empty() {
                    t.insert(key.clone(), value);
                } else {
                    let inner = t
                        .entry(section.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    let inner = inner.as_table_mut().unwrap();
                    if section == "cluster" {
                        inner.insert("listen".into(), "127.0.0.1:4870".into());
                        inner.insert("cookie".into(), "c".into());
                    }
                    inner.insert(key.clone(), value);
                }
            }
            let text = toml::to_string(&t).unwrap();
            if let Err(e) = Config::parse(&text, Path::new("run.toml")) {
                let e = e.to_string();
                prop_assert!(set.iter().any(|k| e.contains(k.as_str())), "{text}: {e}");
            }
        }
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
