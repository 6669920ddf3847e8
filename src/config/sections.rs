//! The sections of a run's config (`[model]`, `[corpus]`, … `[bootstrap]`, `[cluster]`): each key, its
//! meaning and its default. `Config` in `mod.rs` gathers them and validates the whole.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::defaults::*;
use super::{ActivationCheckpointing, Advantage, CorpusKind, LossTokens, Objective, TeacherKind};
use crate::grpo::{LossAgg, LossType, OffPolicy, ScaleRewards};

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
    pub kind: CorpusKind,
    /// File or directory for `kind = "files"`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The environment plug-in's program and arguments, for `kind = "command"` (no shell).
    #[serde(default)]
    pub command: Vec<String>,
    /// Seconds the environment plug-in may take to answer one request before it is restarted.
    #[serde(default = "default_plugin_timeout")]
    pub timeout_s: f64,
    /// JSONL fields joined into one document.
    #[serde(default = "default_fields")]
    pub fields: Vec<String>,
    /// What joins the fields.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// Documents the built-in corpus generates.
    #[serde(default = "default_documents")]
    pub documents: usize,
    /// Plain-text files are cut into documents of whole paragraphs of at most this many bytes (a
    /// longer paragraph at whitespace), so that the held-out share is a share of documents; 0 keeps
    /// one document per file. JSONL lines are one document each.
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: usize,
    /// Share of documents held out for evaluation.
    #[serde(default = "default_heldout")]
    pub heldout_fraction: f64,
    /// The solver whose worked thoughts the warm-up teaches where it offers one.
    #[serde(default = "default_teacher")]
    pub teacher: TeacherKind,
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
    /// KV-cache budget of a policy, in tokens: rows are sampled in sub-batches of at most this many
    /// rows × (longest prompt + `max_new_tokens`), so cache memory is set here and not by
    /// `states_per_step × group_size`. Sampling is batch-invariant on the CPU: the same bits in any
    /// sub-batch.
    #[serde(default = "default_kv_cache_tokens")]
    pub kv_cache_tokens: usize,
    /// 0: strictly on-policy. k: rollouts may come from weights up to k versions old.
    #[serde(default)]
    pub max_staleness: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewardSection {
    /// `prefix_match`, `first_token`, `dense`, `conditional_dense`, `info_gain`, or `command` (a
    /// process of the user's, `command`, scores each group over a pipe).
    #[serde(default = "default_variant")]
    pub variant: String,
    /// The reward plug-in's program and arguments, for `variant = "command"`, e.g.
    /// `["python3", "my_reward.py"]` (no shell; relative paths from where `rpt` runs).
    #[serde(default)]
    pub command: Vec<String>,
    /// Seconds a plug-in may take to answer one group before it is restarted.
    #[serde(default = "default_plugin_timeout")]
    pub timeout_s: f64,
    /// EMA rate τ of the `info_gain` baseline model.
    #[serde(default = "default_tau")]
    pub ema_tau: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrpoSection {
    /// The policy loss: `grpo` (default), `dr_grpo`, `dapo`, `gspo`, `cispo`, `sapo` or `bnpo`
    /// (`crate::grpo`'s module docs give each one's equation). Each type sets `scale_rewards`,
    /// `loss_agg_mode`, `epsilon_low`, `epsilon_high` and `overlong_buffer` where the config leaves
    /// them out ([`LossType::preset`]); a key the config sets wins.
    #[serde(default = "default_loss_type")]
    pub loss_type: LossType,
    /// `group`, `batch` or `none`; ignored by `advantage = "rlp"`.
    #[serde(default = "default_scale")]
    pub scale_rewards: ScaleRewards,
    /// `grpo` (scaled by `scale_rewards`) or `rlp` (`G/(G−1)·(r − mean)`).
    #[serde(default = "default_advantage")]
    pub advantage: Advantage,
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
    pub loss_tokens: LossTokens,
    /// Passes over each batch.
    #[serde(default = "one_usize")]
    pub ppo_epochs: usize,
    /// Slices per pass.
    #[serde(default = "one_usize")]
    pub mini_batches: usize,
    /// Tokens per micro-batch of the update (each prompt counted once, plus its completions): the
    /// gradient of a mini-batch is accumulated over micro-batches of at most this many tokens, so the
    /// update's memory is set by it and not by `states_per_step`, `group_size` or the completion
    /// length. The result equals one big batch to float rounding.
    #[serde(default = "default_micro_batch_tokens")]
    pub micro_batch_tokens: usize,
    /// `auto` (default), `always` or `never`: whether the CPU training pass recomputes each layer's
    /// activations in the backward pass instead of keeping them (one more forward pass, the same
    /// numbers to the bit). `auto` does so for every micro-batch of a run whose largest one would
    /// keep over 2 GiB, and for no other but one past that by itself; `always` bounds the
    /// activations the update keeps by `micro_batch_tokens` alone. candle's autograd (the GPU's
    /// path) keeps every activation whatever this says.
    #[serde(default = "default_activation_checkpointing")]
    pub activation_checkpointing: ActivationCheckpointing,
    /// Drop groups whose rewards are all equal and sample more states.
    #[serde(default)]
    pub dynamic_sampling: bool,
    /// At most this many sampling rounds per step when `dynamic_sampling` is on.
    #[serde(default = "default_gen_batches")]
    pub max_gen_batches: usize,
    /// DAPO's soft overlong buffer in tokens: a completion longer than `max_new_tokens −
    /// overlong_buffer` has its reward lowered linearly, by up to `overlong_penalty` at
    /// `max_new_tokens`. 0 is off; `dapo` sets a fifth of `max_new_tokens`.
    #[serde(default)]
    pub overlong_buffer: usize,
    #[serde(default = "default_overlong_penalty")]
    pub overlong_penalty: f64,
    /// The correction for a sampler whose log-probs differ from the learner's (a stale policy with
    /// `rollout.max_staleness ≥ 1`, or bf16 sampling): `none`, `tis` (truncated importance sampling),
    /// `token_mask` or `sequence_mask`. Any but `none` recomputes the learner's log-probs before the
    /// update.
    #[serde(default = "default_off_policy")]
    pub off_policy: OffPolicy,
    /// The cap C of `off_policy`: weights truncated at C, or masked outside [1/C, C]; `inf` allowed.
    #[serde(default = "default_is_cap")]
    pub is_cap: f64,
    /// `sapo`'s gate temperature for positive advantages (SAPO's τ_pos).
    #[serde(default = "one")]
    pub sapo_tau_pos: f64,
    /// `sapo`'s gate temperature for negative advantages (SAPO's τ_neg); above τ_pos, so that a
    /// negative token's gradient fades sooner off policy.
    #[serde(default = "default_sapo_tau_neg")]
    pub sapo_tau_neg: f64,
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
    /// `rpt` (the RPT loop) or `next_token` (the baseline: plain next-token training on the same
    /// positions; see `pipeline::next_token`).
    #[serde(default = "default_objective")]
    pub objective: Objective,
    /// Model FLOPs a `next_token` run may spend (0: no limit but `steps`); `rpt train --flops-of
    /// RUN_DIR` sets it to what that run spent.
    #[serde(default)]
    pub flop_budget: u64,
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
    /// Bytes of the context's end copied into the generic warm-up thought (at least its last token).
    #[serde(default = "default_thought_bytes")]
    pub thought_bytes: usize,
    /// Share of answer-format warm-up rows drawn from positions with a teacher thought (when the
    /// corpus offers any), each teaching that thought; the rest are uniform positions with the
    /// generic thought. A corpus that offers none (plain text, JSONL) gets the generic thought in
    /// every row, whatever the share. 0 teaches no teacher thought (README, The built-in model and
    /// its thought).
    #[serde(default = "default_teacher_share")]
    pub teacher_share: f64,
    /// Share of next-token pre-training windows (and of the warm-up's next-token batches) into which
    /// a generic thought is inserted at a random place (`… a b<think>b c …`, `<think>` unscored), so
    /// that the model learns from whole documents to continue a text through the re-read token. 0
    /// inserts none (README, The built-in model and its thought).
    #[serde(default = "default_pretrain_thought_share")]
    pub pretrain_thought_share: f64,
    /// Whether the trained tokenizer writes every digit as its own token (a space before the first
    /// one kept with it: ` 162` is ` 1`, `6`, `2`), as Qwen's and Llama's tokenizers do, so that a
    /// number's digits can be read and written one at a time. `false` lets BPE merge digits.
    #[serde(default = "default_split_digits")]
    pub split_digits: bool,
}
