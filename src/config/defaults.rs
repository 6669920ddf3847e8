//! The default of every config key that has one, named so that `#[serde(default = "...")]` can point
//! at it.

use std::path::PathBuf;

use super::{Advantage, CorpusKind, LossTokens, Objective, TeacherKind};
use crate::grpo::{LossAgg, LossType, OffPolicy, ScaleRewards};

pub(super) fn default_run_dir() -> PathBuf {
    PathBuf::from("runs/tiny")
}
pub(super) fn default_model_path() -> PathBuf {
    PathBuf::from("models/builtin")
}
pub(super) fn default_corpus_kind() -> CorpusKind {
    CorpusKind::Builtin
}
pub(super) fn default_fields() -> Vec<String> {
    vec!["text".into()]
}
pub(super) fn default_separator() -> String {
    "\n\n".into()
}
pub(super) fn default_documents() -> usize {
    600
}
pub(super) fn default_heldout() -> f64 {
    0.1
}
pub(super) fn default_context() -> usize {
    64
}
pub(super) fn default_target_bytes() -> usize {
    64
}
pub(super) fn default_min_entropy() -> f32 {
    0.5
}
pub(super) fn default_top_k() -> usize {
    16
}
pub(super) fn default_template() -> String {
    "{context}<think>".into()
}
pub(super) fn default_group() -> usize {
    8
}
pub(super) fn default_states_per_step() -> usize {
    8
}
pub(super) fn default_temperature() -> f64 {
    0.8
}
pub(super) fn default_new_tokens() -> usize {
    32
}
pub(super) fn default_variant() -> String {
    "prefix_match".into()
}
pub(super) fn default_tau() -> f64 {
    0.999
}
pub(super) fn default_scale() -> ScaleRewards {
    ScaleRewards::Group
}
pub(super) fn default_advantage() -> Advantage {
    Advantage::Grpo
}
pub(super) fn default_eps() -> f64 {
    0.2
}
pub(super) fn default_agg() -> LossAgg {
    LossAgg::TokenMean
}
pub(super) fn default_loss_tokens() -> LossTokens {
    LossTokens::Completion
}
pub(super) fn default_gen_batches() -> usize {
    3
}
pub(super) fn default_lr() -> f64 {
    1e-6
}
pub(super) fn default_wd() -> f64 {
    0.01
}
pub(super) fn default_steps() -> u64 {
    100
}
pub(super) fn default_ckpt_every() -> u64 {
    25
}
pub(super) fn default_eval_positions() -> usize {
    200
}
pub(super) fn default_vocab() -> usize {
    512
}
pub(super) fn default_hidden() -> usize {
    128
}
pub(super) fn default_layers() -> usize {
    4
}
pub(super) fn default_heads() -> usize {
    4
}
pub(super) fn default_kv_heads() -> usize {
    2
}
pub(super) fn default_mlp() -> usize {
    384
}
pub(super) fn default_pretrain_steps() -> usize {
    1200
}
pub(super) fn default_sft_steps() -> usize {
    2700
}
pub(super) fn default_boot_batch() -> usize {
    16
}
pub(super) fn default_boot_len() -> usize {
    96
}
pub(super) fn default_boot_lr() -> f64 {
    3e-3
}
pub(super) fn default_thought_bytes() -> usize {
    1
}
pub(super) fn default_pretrain_thought_share() -> f64 {
    0.5
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn one() -> f64 {
    1.0
}
pub(super) fn one_usize() -> usize {
    1
}
pub(super) fn default_micro_batch_tokens() -> usize {
    8192
}
pub(super) fn default_kv_cache_tokens() -> usize {
    16_384
}
pub(super) fn default_chunk_bytes() -> usize {
    2048
}
pub(super) fn default_teacher() -> TeacherKind {
    TeacherKind::Arithmetic
}
pub(super) fn default_teacher_share() -> f64 {
    0.5
}
pub(super) fn default_split_digits() -> bool {
    true
}
pub(super) fn default_objective() -> Objective {
    Objective::Rpt
}
pub(super) fn default_loss_type() -> LossType {
    LossType::Grpo
}
pub(super) fn default_overlong_penalty() -> f64 {
    1.0
}
pub(super) fn default_off_policy() -> OffPolicy {
    OffPolicy::None
}

pub(super) fn default_sapo_tau_neg() -> f64 {
    1.05
}

pub(super) fn default_is_cap() -> f64 {
    2.0
}
pub(super) fn default_plugin_timeout() -> f64 {
    30.0
}

pub(super) fn default_activation_checkpointing() -> super::ActivationCheckpointing {
    super::ActivationCheckpointing::Auto
}
