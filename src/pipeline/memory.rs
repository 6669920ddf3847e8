//! The memory a run will need, estimated before anything is loaded, so that a config that cannot fit
//! is refused with the estimate and the keys that change it, instead of failing hours in (or being
//! killed by the system). The estimate counts what the CPU path holds at its peak, the update:
//!
//! - training state: f32 weights, gradients and AdamW's two moments, 16 bytes a parameter;
//! - other copies of the weights: the policy's at `max_staleness ≥ 1` (one per version kept), the
//!   frozen reference at β > 0, the EMA teacher of `info_gain`; 4 bytes a parameter each;
//! - the KV cache of a sampling sub-batch: `rollout.kv_cache_tokens` (or the whole step's rows, if
//!   fewer) × layers × 2 × KV heads × head_dim × 4 bytes, for each of the `rollout.policies` policy
//!   actors;
//! - the update's work space per micro-batch of `grpo.micro_batch_tokens`: the activations the
//!   training pass keeps per token and layer (4·hidden + 2·q + 2·kv + 4·intermediate floats; past
//!   the budget `grpo.activation_checkpointing` sets (`learn::tape_budget`: under `auto`, none when
//!   the largest micro-batch's would pass `cpu::TAPE_FLOATS`; none under `always`), each layer's
//!   input and one layer's activations at a time), its
//!   attention probabilities (every layer's while a layer's fit `cpu::KEEP_PROBS_FLOATS`; past that
//!   the backward pass recomputes them, and one layer's is counted), the head's logits chunk (in the
//!   forward and the backward pass), and an allowance of one embedding-sized buffer for temporaries.
//!
//! A sampled row counts as `learn::row_tokens`: context and new tokens and 8 more, not the prompt
//! template's own tokens (the estimate is made before the tokenizer is read; the paper's prompt is
//! about 80 tokens of Qwen3's), which can undercount runs of short contexts.
//!
//! The cache and the update's work space are added, though at `rollout.max_staleness = 0` sampling and
//! the update take turns: the allocator keeps what each phase freed for reuse, and the larger of the
//! two alone fell more than 1 GB short of a measured peak (the paper's lengths, two rows at a time).
//!
//! On Qwen3-0.6B's shape it estimates 11.7 GB where 12.1–12.9 GB was measured (one prompt × 8 × 48,
//! `micro_batch_tokens` 448). At 512 + 1,024 tokens a row and `micro_batch_tokens` 1,536 (README,
//! Real sizes): 11.5 GB where 11.83 GB was measured with `kv_cache_tokens` 3,072 (two rows at a
//! time), 12.2 GB where 11.83 GB with 6,144 (four), 13.6 GB where 12.61 GB with 12,288 (eight). An
//! estimate, not a bound.

use crate::config::{ActivationCheckpointing, Config};
use crate::model::ModelConfig;

/// The estimate, in bytes, by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryEstimate {
    pub training_state: u64,
    pub weight_copies: u64,
    pub kv_cache: u64,
    pub update_work: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.training_state + self.weight_copies + self.kv_cache + self.update_work
    }
}

const F32: u64 = 4;

/// Parameters of a model (the embedding once when the head is tied).
pub fn parameters(m: &ModelConfig) -> u64 {
    let embed = (m.vocab_size * m.hidden_size) as u64;
    let tied = if m.tie_word_embeddings { 0 } else { embed };
    crate::flops::matmul_params(m) + tied
}

pub fn estimate(cfg: &Config, m: &ModelConfig) -> MemoryEstimate {
    let p = parameters(m);
    let copies = cfg.rollout.max_staleness
        + (cfg.grpo.beta > 0.0) as u64
        + crate::reward::from_config(&cfg.reward)
            .map(|r| r.needs().ema_teacher as u64)
            .unwrap_or(0);
    let row = crate::learn::row_tokens(cfg) as u64;
    let rows = (cfg.rollout.states_per_step * cfg.rollout.group_size) as u64;
    let kv_tokens = (cfg.rollout.kv_cache_tokens as u64).min(rows * row);
    let per_kv_token = (m.num_hidden_layers * 2 * m.num_key_value_heads * m.head_dim) as u64 * F32;
    let t = crate::learn::largest_micro_batch(cfg) as u64;
    let layers = m.num_hidden_layers as u64;
    // Every layer's activations, or past the run's budget (`learn::tape_budget`) each layer's input
    // and one layer's activations at a time.
    let all_layers = crate::learn::activation_floats_per_token(m) as u64;
    let tape = if t * all_layers <= crate::learn::tape_budget(cfg, m) as u64 {
        t * all_layers * F32
    } else {
        (t * layers * m.hidden_size as u64 + t * all_layers / layers) * F32
    };
    // Kept for every layer up to `KEEP_PROBS_FLOATS` a layer, else recomputed in the backward pass
    // (then at most about one layer's at a time).
    let probs_layer = t * row * m.num_attention_heads as u64;
    let probs = if probs_layer <= crate::cpu::KEEP_PROBS_FLOATS as u64 {
        probs_layer * layers * F32
    } else {
        probs_layer * F32
    };
    let head = 2 * crate::cpu::HEAD_CHUNK_FLOATS as u64 * F32;
    let grad_buffer = (m.vocab_size * m.hidden_size) as u64 * F32;
    MemoryEstimate {
        training_state: 16 * p,
        weight_copies: copies * p * F32,
        kv_cache: kv_tokens * per_kv_token * cfg.rollout.policies as u64,
        update_work: tape + probs + head + grad_buffer,
    }
}

/// Memory available to a run: `RPT_MEMORY_GB` when set (to plan for a smaller machine, or share
/// this one), else the system's `MemAvailable`; `None` where neither is known.
pub fn available() -> Option<u64> {
    if let Ok(v) = std::env::var("RPT_MEMORY_GB") {
        return v.trim().parse::<f64>().ok().map(|gb| (gb * 1e9) as u64);
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses a run whose estimate exceeds the memory available, with the estimate by part and the
/// keys that change it.
pub fn check_fits(cfg: &Config, m: &ModelConfig, model_dir: &std::path::Path) -> crate::Result<()> {
    let e = estimate(cfg, m);
    let Some(avail) = available() else {
        return Ok(());
    };
    if e.total() <= avail {
        return Ok(());
    }
    let gb = |b: u64| b as f64 / 1e9;
    Err(crate::Error::Run(format!(
        "{}: this run needs about {:.1} GB and {:.1} GB is available ({}): training state {:.1} GB \
         (16 bytes a parameter, {:.0} M parameters), other weight copies {:.1} GB, KV cache {:.1} GB \
         (`rollout.kv_cache_tokens` = {}), update work space {:.1} GB (`grpo.micro_batch_tokens` = \
         {}, `grpo.activation_checkpointing` = \"{}\"). Lower those two numbers{}, or use a smaller \
         model or a larger machine",
        model_dir.display(),
        gb(e.total()),
        gb(avail),
        if std::env::var_os("RPT_MEMORY_GB").is_some() {
            "RPT_MEMORY_GB"
        } else {
            "MemAvailable"
        },
        gb(e.training_state),
        parameters(m) as f64 / 1e6,
        gb(e.weight_copies),
        gb(e.kv_cache),
        cfg.rollout.kv_cache_tokens,
        gb(e.update_work),
        cfg.grpo.micro_batch_tokens,
        cfg.grpo.activation_checkpointing.name(),
        if cfg.grpo.activation_checkpointing == ActivationCheckpointing::Always {
            ""
        } else {
            " or set `grpo.activation_checkpointing = \"always\"`"
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen3_06b() -> ModelConfig {
        let text = include_str!("../../configs/shapes/qwen3-0.6b.json");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        ModelConfig::from_value(&v, std::path::Path::new("qwen3-0.6b.json")).unwrap()
    }

    #[test]
    fn the_estimate_by_part_at_qwen3_0_6b() {
        let m = qwen3_06b();
        assert_eq!(
            parameters(&m),
            596_049_920 - 28 * 2 * 1024 - 28 * 2 * 128 - 1024
        );
        let mut cfg = Config::default();
        cfg.rollout.states_per_step = 1;
        cfg.rollout.group_size = 8;
        cfg.rollout.max_new_tokens = 48;
        cfg.states.max_context_tokens = 64;
        cfg.grpo.micro_batch_tokens = 448;
        let e = estimate(&cfg, &m);
        assert_eq!(e.training_state, 16 * parameters(&m));
        assert_eq!(e.weight_copies, 0);
        // 8 rows of 64 + 48 + 8 tokens, 28 layers × 2 × 8 KV heads × 128 × 4 bytes a token.
        assert_eq!(e.kv_cache, 8 * 120 * 28 * 2 * 8 * 128 * 4);
        let gb = e.total() as f64 / 1e9;
        assert!((11.0..14.0).contains(&gb), "{gb}");
        // Each policy actor samples with a cache of its own.
        let mut two = cfg.clone();
        two.rollout.policies = 2;
        assert_eq!(estimate(&two, &m).kv_cache, 2 * e.kv_cache);
        // Staleness keeps policy copies; the update's space follows the budget.
        cfg.rollout.max_staleness = 2;
        cfg.grpo.micro_batch_tokens = 640; // still under `TAPE_FLOATS`: every layer's kept
        let f = estimate(&cfg, &m);
        assert_eq!(f.weight_copies, 2 * 4 * parameters(&m));
        assert!(f.update_work > e.update_work);
        // The paper's lengths: a 1,536-token micro-batch's attention probabilities are recomputed,
        // not kept for 28 layers.
        cfg.rollout.max_staleness = 0;
        cfg.states.max_context_tokens = 512;
        cfg.rollout.max_new_tokens = 1024;
        cfg.grpo.micro_batch_tokens = 1536;
        let g = estimate(&cfg, &m);
        let row = 512 + 1024 + 8;
        // Past `TAPE_FLOATS`: each layer's input, and one layer's activations.
        let per_token = 4 * 1024 + 2 * 2048 + 2 * 1024 + 4 * 3072;
        assert!(1536 * 28 * per_token > crate::cpu::TAPE_FLOATS as u64);
        let tape = (1536 * 28 * 1024 + 1536 * per_token) * 4;
        let head = 2 * crate::cpu::HEAD_CHUNK_FLOATS as u64 * 4;
        let probs = 1536 * row * 16 * 4;
        assert_eq!(g.update_work, tape + probs + head + 151_936 * 1024 * 4);
    }

    /// Under `auto`, a micro-batch just under `cpu::TAPE_FLOATS` keeps every layer's activations, so
    /// fewer micro-batch tokens can need more memory; under `always` the activations kept grow with
    /// the micro-batch tokens and are never more than `auto`'s.
    #[test]
    fn always_checkpointing_makes_the_work_space_grow_with_the_micro_batch() {
        let m = qwen3_06b();
        let mut cfg = Config::default();
        cfg.rollout.states_per_step = 16;
        cfg.rollout.group_size = 8;
        cfg.states.max_context_tokens = 512;
        cfg.rollout.max_new_tokens = 1024;
        let work = |cfg: &Config, t: usize, mode: ActivationCheckpointing| {
            let mut c = cfg.clone();
            c.grpo.micro_batch_tokens = t;
            c.grpo.activation_checkpointing = mode;
            estimate(&c, &m).update_work
        };
        use ActivationCheckpointing::{Always, Auto, Never};
        assert!(work(&cfg, 800, Auto) > work(&cfg, 1536, Auto));
        // From 192 tokens on: below that, rows of 1,544 tokens keep every layer's attention
        // probabilities (`cpu::KEEP_PROBS_FLOATS` a layer, 0.47 GB at most), past it one layer's.
        let mut last = 0;
        for t in (192..=4096).step_by(64) {
            let always = work(&cfg, t, Always);
            assert!(always >= last, "{t}");
            assert!(always <= work(&cfg, t, Auto), "{t}");
            assert!(work(&cfg, t, Auto) <= work(&cfg, t, Never), "{t}");
            last = always;
        }
        assert!(work(&cfg, 800, Always) < work(&cfg, 1536, Always));
        // Under `auto` the largest micro-batch decides for a whole run: a 1,536-token budget
        // checkpoints every micro-batch, the short last one too; a 448-token one none but a
        // micro-batch past `TAPE_FLOATS` (one completion longer than the budget).
        let mut c = cfg.clone();
        c.grpo.micro_batch_tokens = 1536;
        assert_eq!(crate::learn::tape_budget(&c, &m), 0);
        c.grpo.micro_batch_tokens = 448;
        assert_eq!(crate::learn::tape_budget(&c, &m), crate::cpu::TAPE_FLOATS);
        c.grpo.activation_checkpointing = Always;
        assert_eq!(crate::learn::tape_budget(&c, &m), 0);
        c.grpo.activation_checkpointing = Never;
        assert_eq!(crate::learn::tape_budget(&c, &m), usize::MAX);
    }
}
