//! Rotary position embeddings' tables: the cos and sin of each position's angles, computed once here
//! for the candle decoder and the CPU backend alike.

use super::config::ModelConfig;

/// cos and sin of each position's rotary angles, one row of head_dim / 2 per position, computed as the
/// composed-op path computes them.
pub fn rope_tables(
    cfg: &ModelConfig,
    positions: impl Iterator<Item = usize>,
) -> (Vec<f32>, Vec<f32>) {
    let hd = cfg.head_dim;
    let half = hd / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / (cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
        .collect();
    let (mut cos, mut sin) = (vec![], vec![]);
    for pos in positions {
        for &f in &inv {
            let a = pos as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}
