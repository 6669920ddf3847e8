//! KV-cached inference on the CPU, written by hand over the weights' memory: no tensor graph, no
//! per-op allocations of the framework, a cache preallocated for the whole generation.
//!
//! Sampling is a loop of small steps (one token per row), where the per-op overhead of a tensor
//! framework outweighs the arithmetic; this path does the same computation as `Decoder::forward` in
//! `Mode::Infer` (tested: the parity fixtures' greedy tokens, and equal samples on both paths).

use super::cached_attention::{attend, cache_offset};
use super::forward::{rms, rope};
use super::matmul::{Kernel, infer_linear_with, infer_linears_with};
use super::tape::{Params, get};
use super::vector::sigmoid;
use crate::model::config::ModelConfig;
use crate::model::error::{ModelError, Result};
use crate::model::layout::{Layout, Proj};
use crate::model::rope::rope_tables;

/// Keys and values of every layer for a batch of `b` rows of up to `cap` tokens:
/// (b, kv_heads, cap, head_dim) per layer, each head's tokens one after another
/// (`cached_attention.rs`).
pub struct HostCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    b: usize,
    cap: usize,
    len: usize,
}

impl HostCache {
    pub fn new(cfg: &ModelConfig, b: usize, cap: usize) -> Self {
        let per = b * cap * cfg.num_key_value_heads * cfg.head_dim;
        HostCache {
            k: (0..cfg.num_hidden_layers)
                .map(|_| vec![0f32; per])
                .collect(),
            v: (0..cfg.num_hidden_layers)
                .map(|_| vec![0f32; per])
                .collect(),
            b,
            cap,
            len: 0,
        }
    }
}

/// Runs `ids` — `s` new tokens for each of the cache's rows, row-major — through the model and appends
/// them to `cache`. `pad[r]` is the number of padding tokens at the left of row r over the whole
/// sequence (prompt and generated tokens). Returns the logits at each row's last new token
/// (rows × vocab).
pub fn step(
    cfg: &ModelConfig,
    layout: &Layout,
    p: &Params,
    cache: &mut HostCache,
    ids: &[u32],
    pad: &[usize],
) -> Result<Vec<f32>> {
    let b = cache.b;
    let s = ids.len() / b.max(1);
    let past = cache.len;
    if ids.len() != b * s || s == 0 || pad.len() != b {
        return Err(ModelError::Invalid(format!(
            "host step: {} ids for {b} rows, {} pads",
            ids.len(),
            pad.len()
        )));
    }
    if past + s > cache.cap {
        return Err(ModelError::Invalid(format!(
            "host step: {} tokens exceed the cache's {}",
            past + s,
            cache.cap
        )));
    }
    let vocab = cfg.vocab_size;
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::Invalid(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let (h, nh, nkv, hd) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let kw = nkv * hd;
    let eps = cfg.rms_norm_eps as f32;
    let rows = b * s;
    // Chosen by the kind of step, never by the number of rows: a row's numbers are then the same in
    // any batch, which is what lets a state be sampled by any policy, here or on a worker, with the
    // same result to the bit.
    let kernel = if s == 1 { Kernel::Few } else { Kernel::Many };
    let (cos, sin) = rope_tables(
        cfg,
        (0..b).flat_map(|r| (0..s).map(move |i| (past + i).saturating_sub(pad[r]))),
    );
    let embed = get(p, &layout.embed)?;
    let mut x = vec![0f32; rows * h];
    for (row, &id) in x.chunks_mut(h).zip(ids) {
        row.copy_from_slice(&embed[id as usize * h..(id as usize + 1) * h]);
    }
    for l in 0..cfg.num_hidden_layers {
        let names = &layout.layers[l];
        // The projection `pr` (its weight, and its bias when it has one) of `rows` rows of `x`.
        // Projections of the same rows (their weights, and biases where they have them), several in
        // one parallel job.
        let projs = |x: &[f32], prs: &[&Proj]| -> Result<Vec<Vec<f32>>> {
            let ws = prs
                .iter()
                .map(|pr| {
                    let bias = pr.bias.as_deref().map(|b| get(p, b)).transpose()?;
                    Ok((get(p, &pr.weight)?, bias, pr.out()))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(infer_linears_with(kernel, x, rows, &ws))
        };
        let proj = |x: &[f32], pr: &Proj| -> Result<Vec<f32>> { Ok(projs(x, &[pr])?.remove(0)) };
        let (h1, _) = rms(&x, get(p, &names.input_norm)?, eps);
        let [mut q, mut k, v]: [Vec<f32>; 3] = projs(&h1, &[&names.q, &names.k, &names.v])?
            .try_into()
            .expect("three projections");
        if let (Some(q_norm), Some(k_norm)) = (&names.q_norm, &names.k_norm) {
            q = rms(&q, get(p, q_norm)?, eps).0;
            k = rms(&k, get(p, k_norm)?, eps).0;
        }
        rope(&mut q, nh, hd, &cos, &sin, 1.0);
        rope(&mut k, nkv, hd, &cos, &sin, 1.0);
        let (kc, vc) = (&mut cache.k[l], &mut cache.v[l]);
        for r in 0..b {
            for i in 0..s {
                for g in 0..nkv {
                    let dst = cache_offset(cfg, cache.cap, r, g, past + i);
                    let src = (r * s + i) * kw + g * hd;
                    kc[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                    vc[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                }
            }
        }
        let att = attend(cfg, &q, kc, vc, cache.cap, b, s, past, pad);
        let o = proj(&att, &names.o)?;
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
        let (h2, _) = rms(&x, get(p, &names.post_norm)?, eps);
        let [g, mut a]: [Vec<f32>; 2] = projs(&h2, &[&names.gate, &names.up])?
            .try_into()
            .expect("two projections");
        let mut sg = vec![0f32; g.len()];
        sigmoid(&g, &mut sg);
        a.iter_mut()
            .zip(g.iter().zip(&sg))
            .for_each(|(u, (g, s))| *u *= g * s);
        let down = proj(&a, &names.down)?;
        x.iter_mut().zip(&down).for_each(|(x, d)| *x += d);
    }
    cache.len += s;
    let mut last = vec![0f32; b * h];
    for (r, row) in last.chunks_mut(h).enumerate() {
        row.copy_from_slice(&x[(r * s + s - 1) * h..(r * s + s) * h]);
    }
    let (hs, _) = rms(&last, get(p, &layout.norm)?, eps);
    // One row per sequence, whatever the step.
    Ok(infer_linear_with(
        Kernel::Few,
        &hs,
        b,
        get(p, &layout.head)?,
        None,
        vocab,
    ))
}
