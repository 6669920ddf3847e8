//! Seeded random initialisation of a fresh model (the built-in model, benchmark shapes): normal(0, σ)
//! matrices, unit norms, zero biases, as transformers initialises Qwen2. Independent of candle's RNG so
//! that the same seed gives the same weights everywhere.

use candle_core::{Device, Tensor};

use super::config::ModelConfig;
use super::error::Result;
use super::sample::Rng;
use super::weights::TensorMap;

/// Fresh weights for `cfg`; `std` is the initializer range (0.02 in transformers).
pub fn init_weights(cfg: &ModelConfig, seed: u64, std: f64, device: &Device) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (i, (name, shape)) in super::layout::Layout::of(cfg)
        .tensors()
        .into_iter()
        .enumerate()
    {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let mut rng = Rng::new(Rng::derive(&[seed, i as u64]));
            (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
        };
        out.insert(name, Tensor::from_vec(data, shape, device)?);
    }
    Ok(out)
}

/// Standard normal by Box–Muller.
fn normal(rng: &mut Rng) -> f64 {
    let u1 = rng.next_f64().max(1e-300);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
