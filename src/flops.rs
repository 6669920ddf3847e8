//! Model FLOPs, counted analytically, so that objectives can be compared at the same compute (the RPT
//! and RLP papers plot accuracy against training FLOPs).
//!
//! The convention is the usual one: a token's forward pass costs 2 FLOPs per weight it multiplies
//! (every layer's projections and the head; the embedding lookup is free) plus attention, 4 · layers ·
//! heads · head_dim per key it attends to (scores and the weighted sum); a trained token costs 3
//! forward passes (forward, and backward through activations and weights). Norms, rotary, softmax and
//! the optimizer are left out, as they are in the papers' counts.
//!
//! - **Sampling** a completion of `g` tokens after a prompt of `p`: the prompt once, then each new
//!   token but the last is fed back: `p + g − 1` tokens at positions `0..`.
//! - **Scoring** for rewards that read the model: one pass over prompt and completion for `dense` and
//!   `conditional_dense`; for `info_gain` that and a pass over the context and the true next token.
//! - **The update** (GRPO): each prompt once and each completion attending to it, three times over,
//!   for every epoch; one more forward pass per row for each of the reference (β > 0) and the
//!   learner's own log-probs before the update (`grpo.off_policy`).
//! - **Next-token training**: three forward passes over each window.

use crate::model::ModelConfig;

/// Weights a token multiplies on its way through the model: every layer's projections and the head.
pub fn matmul_params(cfg: &ModelConfig) -> u64 {
    let h = cfg.hidden_size as u64;
    let q = (cfg.num_attention_heads * cfg.head_dim) as u64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as u64;
    let i = cfg.intermediate_size as u64;
    let layer = h * q + 2 * h * kv + q * h + 3 * h * i;
    cfg.num_hidden_layers as u64 * layer + h * cfg.vocab_size as u64
}

/// FLOPs of a forward pass over `n` tokens at positions `past..past + n`, each attending to itself
/// and every token before it.
pub fn forward(cfg: &ModelConfig, n: u64, past: u64) -> u64 {
    // Σ_{t=past}^{past+n−1} (t + 1) keys.
    let keys = n * (2 * past + n + 1) / 2;
    let attn = 4 * (cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim) as u64;
    2 * matmul_params(cfg) * n + attn * keys
}

/// A group's shape as the counter needs it: (prompt length, each completion's length).
pub type GroupShape = (usize, Vec<usize>);

/// FLOPs of one step, by phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StepFlops {
    pub sampling: u64,
    pub scoring: u64,
    pub update: u64,
}

impl StepFlops {
    pub fn total(&self) -> u64 {
        self.sampling + self.scoring + self.update
    }

    /// Adds groups that were sampled and scored but not learned from (dropped by dynamic sampling):
    /// their sampling and scoring, no update.
    pub fn add_unlearned(&mut self, cfg: &ModelConfig, groups: &[GroupShape], scoring: (u64, u64)) {
        let f = grpo_step(cfg, groups, scoring, 0, 0);
        self.sampling += f.sampling;
        self.scoring += f.scoring;
    }
}

/// How many model passes a reward makes per completion: (over prompt and completion, over the
/// context and one token).
pub fn scoring_passes(needs: &crate::reward::Needs) -> (u64, u64) {
    if needs.info_gain {
        (1, 1)
    } else if needs.guess_prob {
        (1, 0)
    } else {
        (0, 0)
    }
}

/// A GRPO step over `groups` (each: prompt length, completion lengths).
pub fn grpo_step(
    cfg: &ModelConfig,
    groups: &[GroupShape],
    scoring: (u64, u64),
    epochs: u64,
    extra_forwards: u64,
) -> StepFlops {
    let mut f = StepFlops::default();
    for (p, comps) in groups {
        let p = *p as u64;
        let mut update = forward(cfg, p, 0);
        for &g in comps {
            let g = g as u64;
            f.sampling += forward(cfg, p + g.saturating_sub(1), 0);
            f.scoring += scoring.0 * forward(cfg, p + g, 0) + scoring.1 * forward(cfg, p + 1, 0);
            update += forward(cfg, g, p);
            f.update += extra_forwards * forward(cfg, p + g, 0);
        }
        f.update += 3 * epochs * update;
    }
    f
}

/// Next-token training on windows of these lengths.
pub fn next_token_step(cfg: &ModelConfig, windows: &[usize]) -> u64 {
    windows.iter().map(|&n| 3 * forward(cfg, n as u64, 0)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;

    fn tiny() -> ModelConfig {
        ModelConfig {
            family: Family::Qwen2,
            vocab_size: 10,
            hidden_size: 4,
            intermediate_size: 6,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 2,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            eos_token_ids: vec![0],
            bos_token_id: None,
            pad_token_id: Some(0),
        }
    }

    #[test]
    fn counts_match_a_hand_computation() {
        let c = tiny();
        // Per layer: q 4·4, k and v 4·2 each, o 4·4, MLP 3·4·6 = 16 + 16 + 16 + 72 = 120; two layers
        // and the head 4·10.
        assert_eq!(matmul_params(&c), 2 * 120 + 40);
        // 3 tokens from position 0 see 1 + 2 + 3 keys; attention costs 4 · 2 · 2 · 2 = 32 a key.
        assert_eq!(forward(&c, 3, 0), 2 * 280 * 3 + 32 * 6);
        // 2 tokens after 3: 4 + 5 keys.
        assert_eq!(forward(&c, 2, 3), 2 * 280 * 2 + 32 * 9);
        // A prompt of 3 with completions of 2 and 0 tokens, no scoring, one epoch.
        let f = grpo_step(&c, &[(3, vec![2, 0])], (0, 0), 1, 0);
        assert_eq!(f.sampling, forward(&c, 4, 0) + forward(&c, 3, 0));
        assert_eq!(f.update, 3 * (forward(&c, 3, 0) + forward(&c, 2, 3)));
        assert_eq!(f.scoring, 0);
        // info_gain reads the model twice per completion; two epochs double the update.
        let g = grpo_step(&c, &[(3, vec![2])], (1, 1), 2, 0);
        assert_eq!(g.scoring, forward(&c, 5, 0) + forward(&c, 4, 0));
        assert_eq!(g.update, 6 * (forward(&c, 3, 0) + forward(&c, 2, 3)));
        assert_eq!(next_token_step(&c, &[3, 3]), 6 * forward(&c, 3, 0));
        // Groups dropped before the update: sampled and scored like the rest, never updated on.
        let (kept, dropped) = ((3, vec![2, 1]), (5, vec![4, 0]));
        let mut f = grpo_step(&c, std::slice::from_ref(&kept), (1, 1), 1, 0);
        f.add_unlearned(&c, std::slice::from_ref(&dropped), (1, 1));
        let all = grpo_step(&c, &[kept.clone(), dropped], (1, 1), 1, 0);
        assert_eq!((f.sampling, f.scoring), (all.sampling, all.scoring));
        assert_eq!(f.update, grpo_step(&c, &[kept], (1, 1), 1, 0).update);
    }

    #[test]
    fn a_real_shape_is_about_two_flops_a_parameter() {
        // Qwen3-0.6B's shape: 0.60 G multiplied weights a token (0.44 G in the layers, 0.16 G in the
        // tied head).
        let mut c = tiny();
        c.vocab_size = 151_936;
        c.hidden_size = 1024;
        c.intermediate_size = 3072;
        c.num_hidden_layers = 28;
        c.num_attention_heads = 16;
        c.num_key_value_heads = 8;
        c.head_dim = 128;
        let m = matmul_params(&c);
        assert_eq!(
            m,
            28 * (1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 3 * 1024 * 3072) + 1024 * 151_936
        );
        // The 64th token of a context: 64 keys of attention, about 1.2% on top of 2 FLOPs a weight.
        let one = forward(&c, 1, 63);
        assert_eq!(one, 2 * m + 64 * 4 * 28 * 16 * 128);
        assert!(one < 2 * m + 2 * m / 50);
    }
}
