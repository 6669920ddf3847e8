//! Batched sampling with a KV cache: prefill the left-padded prompts, then decode one token per row per
//! step. Each row draws from its own random stream, so a sample's tokens depend on its seed and prompt,
//! not on what else shares the batch.
//!
//! The recorded log-prob of each sampled token is under `softmax(logits / temperature)` (before top-k /
//! top-p truncation): the policy the learner differentiates is the same tempered distribution, so these
//! are its π_old (METHOD §4).

use candle_core::Tensor;
use rayon::prelude::*;

use super::decoder::{Cache, Decoder, Mode, attention_mask, positions};
use super::error::{ModelError, Result};
use crate::cpu::{exp_in_place, max_scaled, sum};

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleParams {
    /// 0 is greedy.
    pub temperature: f64,
    /// 0 keeps every token.
    pub top_k: usize,
    /// 1.0 keeps every token.
    pub top_p: f64,
    pub max_new_tokens: usize,
}

impl Default for SampleParams {
    fn default() -> Self {
        SampleParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 32,
        }
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Eos,
    Length,
    Stop,
}

/// One completion: sampled ids (EOS included when it stopped there) and each one's log-prob.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub finish: Finish,
}

/// A deterministic random stream (SplitMix64): small, fast and reproducible across platforms.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A seed derived from several parts, e.g. (seed, step, state, sample).
    pub fn derive(parts: &[u64]) -> u64 {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        for &p in parts {
            r.0 ^= p;
            r.next_u64();
        }
        r.next_u64()
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n.max(1)
    }

    pub fn state(&self) -> u64 {
        self.0
    }
}

/// Picks one token from one row of logits; returns (token, log-prob under the tempered softmax).
pub fn pick(logits: &[f32], p: &SampleParams, rng: &mut Rng) -> (u32, f32) {
    let t = if p.temperature > 0.0 {
        p.temperature as f32
    } else {
        1.0
    };
    let max = max_scaled(logits, 1.0);
    let mut probs: Vec<f32> = logits.iter().map(|&l| (l - max) / t).collect();
    exp_in_place(&mut probs);
    let z = sum(&probs);
    let logp = |i: usize, probs: &[f32]| (probs[i] / z).ln();
    if p.temperature <= 0.0 {
        let best = argmax(logits);
        return (best as u32, logp(best, &probs));
    }
    // Truncation only zeroes entries outside the kept set, and the token picked is always in it (the
    // most likely token is always kept), so its entry and `z` still give its log-prob under the
    // untruncated distribution.
    let truncate = p.top_k > 0 || p.top_p < 1.0;
    if truncate {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let mut keep = if p.top_k > 0 {
            p.top_k.min(order.len())
        } else {
            order.len()
        };
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (n, &i) in order.iter().enumerate().take(keep) {
                acc += probs[i] / z;
                if acc >= p.top_p as f32 {
                    keep = n + 1;
                    break;
                }
            }
        }
        for &i in &order[keep..] {
            probs[i] = 0.0;
        }
    }
    let total = if truncate { sum(&probs) } else { z };
    let mut u = rng.next_f64() as f32 * total;
    let mut chosen = argmax(&probs);
    for (i, &q) in probs.iter().enumerate() {
        if q > 0.0 {
            if u < q {
                chosen = i;
                break;
            }
            u -= q;
        }
    }
    (chosen as u32, logp(chosen, &probs))
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Which implementation runs the model while sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferPath {
    /// The hand-written CPU path (`host.rs`) for f32 CPU models, candle's ops otherwise.
    Auto,
    /// candle's ops (`Decoder::forward` in `Mode::Infer`) on any device.
    Candle,
}

/// Samples a completion for each prompt.
///
/// `seeds[r]` drives row r; `eos` ends a row (the EOS id is kept); `stop(r, generated)` is asked after
/// every token and ends row r when it says so (for RPT: the `}` closing `\boxed{` after `</think>`).
pub fn generate(
    model: &Decoder,
    prompts: &[Vec<u32>],
    params: &SampleParams,
    seeds: &[u64],
    eos: &[u32],
    stop: &(dyn Fn(usize, &[u32]) -> bool + Sync),
) -> Result<Vec<Sample>> {
    generate_on(InferPath::Auto, model, prompts, params, seeds, eos, stop)
}

/// `generate` on a chosen implementation.
pub fn generate_on(
    path: InferPath,
    model: &Decoder,
    prompts: &[Vec<u32>],
    params: &SampleParams,
    seeds: &[u64],
    eos: &[u32],
    stop: &(dyn Fn(usize, &[u32]) -> bool + Sync),
) -> Result<Vec<Sample>> {
    check_length(model, prompts, params)?;
    if path == InferPath::Auto && model.on_host() {
        return crate::cpu::with_params(model.named_tensors(), |p| {
            crate::cpu::on_pool(|| {
                let mut cache: Option<crate::cpu::HostCache> = None;
                sample_loop(model, prompts, params, seeds, eos, stop, |ids, pad, s| {
                    let cache = cache.get_or_insert_with(|| {
                        let cap = s + params.max_new_tokens;
                        crate::cpu::HostCache::new(model.config(), pad.len(), cap)
                    });
                    let logits =
                        crate::cpu::step(model.config(), model.layout(), p, cache, ids, pad)?;
                    Ok(logits
                        .chunks(model.config().vocab_size)
                        .map(<[f32]>::to_vec)
                        .collect())
                })
            })
        });
    }
    let device = model.device().clone();
    let mut cache = Cache::new(
        model.config().num_hidden_layers,
        prompts.iter().map(Vec::len).max().unwrap_or(0) + params.max_new_tokens,
    );
    let mut past = 0;
    sample_loop(model, prompts, params, seeds, eos, stop, |ids, pad, s| {
        let input = Tensor::from_slice(ids, (pad.len(), s), &device)?;
        let mask = attention_mask(pad, past, s, &device)?;
        let pos = positions(pad, past, s, &device)?;
        let hidden = model.forward(&input, &pos, &mask, Some(&mut cache), Mode::Infer)?;
        past += s;
        let last = hidden.narrow(1, s - 1, 1)?.squeeze(1)?;
        Ok(model.logits(&last, Mode::Infer)?.to_vec2()?)
    })
}

/// The longest prompt plus the new tokens must fit the model's positions (checked without overflow,
/// whatever `max_new_tokens` is).
fn check_length(model: &Decoder, prompts: &[Vec<u32>], params: &SampleParams) -> Result<()> {
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let limit = model.config().max_position_embeddings;
    if width
        .checked_add(params.max_new_tokens)
        .is_none_or(|total| total > limit)
    {
        return Err(ModelError::Invalid(format!(
            "generate: prompt of {width} tokens + {} new tokens exceeds the model's \
             max_position_embeddings = {limit}",
            params.max_new_tokens
        )));
    }
    Ok(())
}

/// The sampling loop over a model step: `step(ids, pad, s)` runs `s` new tokens per row (row-major)
/// through the model with its cache and returns the logits at each row's last one.
fn sample_loop(
    model: &Decoder,
    prompts: &[Vec<u32>],
    params: &SampleParams,
    seeds: &[u64],
    eos: &[u32],
    stop: &(dyn Fn(usize, &[u32]) -> bool + Sync),
    mut step: impl FnMut(&[u32], &[usize], usize) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Sample>> {
    if prompts.len() != seeds.len() {
        return Err(ModelError::Invalid(format!(
            "generate: {} prompts but {} seeds",
            prompts.len(),
            seeds.len()
        )));
    }
    if let Some(r) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::Invalid(format!(
            "generate: prompt {r} is empty"
        )));
    }
    let b = prompts.len();
    if b == 0 {
        return Ok(vec![]);
    }
    check_length(model, prompts, params)?;
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pad: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    let mut input: Vec<u32> = Vec::with_capacity(b * width);
    for (p, &n) in prompts.iter().zip(&pad) {
        input.extend(std::iter::repeat_n(0u32, n));
        input.extend_from_slice(p);
    }
    let mut s = width;
    let mut rngs: Vec<Rng> = seeds.iter().map(|&s| Rng::new(s)).collect();
    let mut out: Vec<Sample> = (0..b)
        .map(|_| Sample {
            tokens: vec![],
            logprobs: vec![],
            finish: Finish::Length,
        })
        .collect();
    let mut done = vec![false; b];
    for _ in 0..params.max_new_tokens {
        let logits = step(&input, &pad, s)?;
        // Each row draws from its own stream, so the rows may pick in parallel: the same tokens in any
        // order. Worth a parallel job only for a large vocabulary: a real checkpoint's row is a few
        // passes over 0.6 MB of logits, the built-in model's 2 KB.
        let pick_row =
            |((l, rng), &d): ((&Vec<f32>, &mut Rng), &bool)| (!d).then(|| pick(l, params, rng));
        let rows = logits.iter().zip(rngs.iter_mut()).zip(&done);
        let picks: Vec<Option<(u32, f32)>> = if b > 1 && model.config().vocab_size >= 1 << 15 {
            rows.collect::<Vec<_>>()
                .into_par_iter()
                .map(pick_row)
                .collect()
        } else {
            rows.map(pick_row).collect()
        };
        let mut next = Vec::with_capacity(b);
        for (r, picked) in picks.into_iter().enumerate() {
            let Some((tok, lp)) = picked else {
                next.push(0);
                continue;
            };
            out[r].tokens.push(tok);
            out[r].logprobs.push(lp);
            if eos.contains(&tok) {
                done[r] = true;
                out[r].finish = Finish::Eos;
            } else if stop(r, &out[r].tokens) {
                done[r] = true;
                out[r].finish = Finish::Stop;
            }
            next.push(tok);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        input = next;
        s = 1;
    }
    Ok(out)
}

/// Log-prob of each next token of a left-padded batch, at target positions `from..s`.
///
/// ids: (b, s) u32; `pad[r]` padding tokens at the left of row r. Returns (b, s - from) with entry
/// `[r, j]` = log p(ids[r, from + j] | ids[r, .. from + j]) under `softmax(logits / temperature)`.
/// With `Mode::Train` the result carries gradients to every parameter.
pub fn token_logprobs(
    model: &Decoder,
    ids: &Tensor,
    pad: &[usize],
    from: usize,
    temperature: f64,
    mode: Mode,
) -> Result<Tensor> {
    let (b, s) = ids.dims2()?;
    if from == 0 || from >= s {
        return Err(ModelError::Invalid(format!(
            "token_logprobs: `from` must be in 1..{s}, got {from}"
        )));
    }
    let limit = model.config().max_position_embeddings;
    if s > limit {
        return Err(ModelError::Invalid(format!(
            "{s} tokens exceed the model's max_position_embeddings = {limit}"
        )));
    }
    let device = model.device();
    let mask = attention_mask(pad, 0, s, device)?;
    let pos = positions(pad, 0, s, device)?;
    let hidden = model.forward(ids, &pos, &mask, None, mode)?;
    let n = s - from;
    let logits = model
        .logits(&hidden.narrow(1, from - 1, n)?, mode)?
        .reshape((b * n, ()))?;
    let targets: Vec<u32> = ids.narrow(1, from, n)?.flatten_all()?.to_vec1()?;
    let scale = logit_scale(temperature);
    Ok(crate::cpu::target_log_softmax(&logits, &targets, scale)?.reshape((b, n))?)
}

/// The factor on the logits of a softmax at `temperature` (0, greedy, scores at temperature 1).
pub(super) fn logit_scale(temperature: f64) -> f64 {
    if temperature > 0.0 {
        1.0 / temperature
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_reports_its_logprob() {
        let p = SampleParams {
            temperature: 0.0,
            ..Default::default()
        };
        let (t, lp) = pick(&[0.0, 2.0, 1.0], &p, &mut Rng::new(1));
        assert_eq!(t, 1);
        let z = (0f32).exp() + 2f32.exp() + 1f32.exp();
        assert!((lp - (2f32.exp() / z).ln()).abs() < 1e-6);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_truncates() {
        let p = SampleParams {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        for s in 0..20 {
            assert_eq!(pick(&[0.0, 3.0, 1.0], &p, &mut Rng::new(s)).0, 1);
        }
        // p = [0.84, 0.11, 0.04, ...]: top_p 0.5 keeps only the first.
        let p = SampleParams {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let full = [3.0f32, 1.0, 0.0, -1.0];
        let z: f32 = full.iter().map(|l| (l - 3.0).exp()).sum();
        for s in 0..20 {
            let (t, lp) = pick(&full, &p, &mut Rng::new(s));
            assert_eq!(t, 0);
            // The log-prob is under the untruncated distribution, not the kept token's 0.
            assert!((lp - (1.0 / z).ln()).abs() < 1e-6, "{lp}");
        }
        // Top-k 2: either kept token, each with its untruncated log-prob.
        let p = SampleParams {
            temperature: 1.0,
            top_k: 2,
            ..Default::default()
        };
        for s in 0..20 {
            let (t, lp) = pick(&full, &p, &mut Rng::new(s));
            assert!(t < 2, "{t}");
            let want = (full[t as usize] - 3.0) - z.ln();
            assert!((lp - want).abs() < 1e-6, "{lp} vs {want}");
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_tempered_distribution() {
        let p = SampleParams {
            temperature: 1.0,
            ..Default::default()
        };
        let mut rng = Rng::new(7);
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| pick(&logits, &p, &mut rng).0 == 1)
            .count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }

    #[test]
    fn derived_seeds_differ_per_part() {
        assert_ne!(Rng::derive(&[1, 2, 3]), Rng::derive(&[1, 3, 2]));
        assert_eq!(Rng::derive(&[1, 2, 3]), Rng::derive(&[1, 2, 3]));
    }
}
