//! KV-cached inference on the CPU, written by hand over the weights' memory: no tensor graph, no
//! per-op allocations of the framework, a cache preallocated for the whole generation.
//!
//! Sampling is a loop of small steps (one token per row), where the per-op overhead of a tensor
//! framework outweighs the arithmetic; this path does the same computation as `Decoder::forward` in
//! `Mode::Infer` (tested: the parity fixtures' greedy tokens, and equal samples on both paths).

use rayon::prelude::*;

use super::forward::{rms, rope};
use super::gemm::{MatRef, gemm, gemm_into};
use super::matmul::{Kernel, infer_linear_with, infer_linears_with};
use super::tape::{Params, get};
use super::vector::{Shared, dots, sigmoid, softmax_prefix};
use crate::model::config::ModelConfig;
use crate::model::error::{ModelError, Result};
use crate::model::layout::{Layout, Proj};
use crate::model::rope::rope_tables;

/// Keys and values of every layer for a batch of `b` rows of up to `cap` tokens:
/// (b, cap, kv_heads · head_dim) per layer.
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
                let dst = (r * cache.cap + past + i) * kw;
                kc[dst..dst + kw].copy_from_slice(&k[(r * s + i) * kw..(r * s + i + 1) * kw]);
                vc[dst..dst + kw].copy_from_slice(&v[(r * s + i) * kw..(r * s + i + 1) * kw]);
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

/// Causal attention of the new queries over each row's cached real tokens; padding queries get 0.
#[allow(clippy::too_many_arguments)]
fn attend(
    cfg: &ModelConfig,
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    cap: usize,
    b: usize,
    s: usize,
    past: usize,
    pad: &[usize],
) -> Vec<f32> {
    let (nh, nkv, hd) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let (qw, kw) = (nh * hd, nkv * hd);
    let n_rep = nh / nkv;
    let inv_sqrt = 1.0 / (hd as f32).sqrt();
    let total = past + s;
    let mut att = vec![0f32; b * s * qw];
    let out = Shared(att.as_mut_ptr());
    (0..b * nh).into_par_iter().for_each(|job| {
        let (r, head) = (job / nh, job % nh);
        let g = head / n_rep;
        let p0 = pad[r].min(total);
        // New queries at absolute positions past + i; those before p0 are padding.
        let i0 = p0.saturating_sub(past);
        if i0 >= s {
            return;
        }
        let (nq, nk) = (s - i0, total - p0);
        let kv_off = (r * cap + p0) * kw + g * hd;
        if nq <= 2 {
            // Decoding: dot products straight off the cache, no packing.
            let mut sc = vec![0f32; nk];
            let mut o = vec![0f32; hd];
            for qi in 0..nq {
                let at = (r * s + i0 + qi) * qw + head * hd;
                let seen = past + i0 + qi - p0 + 1;
                let kv = (&kc[kv_off..], &vc[kv_off..]);
                attend_query(&q[at..at + hd], kv, kw, seen, inv_sqrt, &mut sc, &mut o);
                // SAFETY: this job alone writes head `head` of row r's new tokens.
                unsafe {
                    std::ptr::copy_nonoverlapping(o.as_ptr(), out.at(at), hd);
                }
            }
            return;
        }
        let mut sc = vec![0f32; nq * nk];
        gemm(
            nq,
            nk,
            hd,
            MatRef::rows(&q[(r * s + i0) * qw + head * hd..], qw),
            MatRef {
                data: &kc[kv_off..],
                rs: 1,
                cs: kw,
            },
            &mut sc,
            nk,
            false,
            false,
        );
        for (qi, row) in sc.chunks_mut(nk).enumerate() {
            // Query at absolute position past + i0 + qi sees keys p0 ..= that position.
            softmax_prefix(row, past + i0 + qi - p0 + 1, inv_sqrt);
        }
        // SAFETY: this job alone writes head `head` of row r's real new tokens.
        unsafe {
            gemm_into(
                nq,
                hd,
                nk,
                MatRef::rows(&sc, nk),
                MatRef::rows(&vc[kv_off..], kw),
                out.at((r * s + i0) * qw + head * hd),
                qw,
                false,
                false,
            )
        };
    });
    att
}

/// One decoding query `q` of one head over the first `seen` cached keys and values (rows `stride`
/// floats apart in `kv`): `o = Σⱼ softmax(q·kⱼ / √hd)ⱼ · vⱼ`, with `scores` as work space.
fn attend_query(
    q: &[f32],
    (k, v): (&[f32], &[f32]),
    stride: usize,
    seen: usize,
    inv_sqrt: f32,
    scores: &mut [f32],
    o: &mut [f32],
) {
    dots(q, k, stride, &mut scores[..seen]);
    softmax_prefix(scores, seen, inv_sqrt);
    weighted_rows(&scores[..seen], v, stride, o);
}

/// `o = Σⱼ w[j] · v[j·stride ..][..o.len()]`. The AVX-512 and AVX2 forms keep `o` in registers across
/// the rows and do the portable form's arithmetic in its order (each element's sum over j in order, a
/// product then a sum), so all three give the same bits. The AVX-512 form holds a head of 128 floats
/// in eight registers and reads each cached row once; the AVX2 form's 32 floats at a time read a
/// head's rows four times (measured at Qwen3-0.6B's shape, batch 8, 150 new tokens: the weighted sum
/// took 4.4% of a decoding run's time that way, beside 2.6% for the dot products that read the same
/// bytes once).
fn weighted_rows(w: &[f32], v: &[f32], stride: usize, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            unsafe { weighted_rows_avx512(w, v, stride, o) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the feature the function is compiled for.
            unsafe { weighted_rows_avx2(w, v, stride, o) };
            return;
        }
    }
    weighted_rows_portable(w, v, stride, o);
}

fn weighted_rows_portable(w: &[f32], v: &[f32], stride: usize, o: &mut [f32]) {
    o.fill(0.0);
    for (j, &w) in w.iter().enumerate() {
        (o.iter_mut().zip(&v[j * stride..])).for_each(|(o, v)| *o += w * v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_rows_avx512(w: &[f32], v: &[f32], stride: usize, o: &mut [f32]) {
    let hd = o.len();
    assert!(w.is_empty() || (w.len() - 1) * stride + hd <= v.len());
    let mut c = 0;
    // SAFETY: each block reads and writes floats c .. c + 16·B ≤ hd of rows inside v (asserted
    // above) and of o; the CPU has the feature (this function's own).
    unsafe {
        while c + 128 <= hd {
            weighted_block_avx512::<8>(w, v.as_ptr().add(c), stride, o.as_mut_ptr().add(c));
            c += 128;
        }
        while c + 64 <= hd {
            weighted_block_avx512::<4>(w, v.as_ptr().add(c), stride, o.as_mut_ptr().add(c));
            c += 64;
        }
        while c + 16 <= hd {
            weighted_block_avx512::<1>(w, v.as_ptr().add(c), stride, o.as_mut_ptr().add(c));
            c += 16;
        }
    }
    weighted_rows_portable(w, &v[c.min(v.len())..], stride, &mut o[c..]);
}

/// `o[..16·B] = Σⱼ w[j] · v[j·stride ..][..16·B]`, in B registers of 16 floats.
///
/// # Safety
/// The CPU has AVX-512F; `v` and `o` are valid for the floats named above.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn weighted_block_avx512<const B: usize>(
    w: &[f32],
    v: *const f32,
    stride: usize,
    o: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); B];
    for (j, &w) in w.iter().enumerate() {
        let w = _mm512_set1_ps(w);
        for (b, a) in acc.iter_mut().enumerate() {
            // SAFETY: inside row j's block (the caller's contract).
            let x = unsafe { _mm512_loadu_ps(v.add(j * stride + 16 * b)) };
            *a = _mm512_add_ps(*a, _mm512_mul_ps(w, x));
        }
    }
    for (b, a) in acc.iter().enumerate() {
        // SAFETY: inside o's block (the caller's contract).
        unsafe { _mm512_storeu_ps(o.add(16 * b), *a) };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn weighted_rows_avx2(w: &[f32], v: &[f32], stride: usize, o: &mut [f32]) {
    let hd = o.len();
    assert!(w.is_empty() || (w.len() - 1) * stride + hd <= v.len());
    let mut c = 0;
    // SAFETY: each block reads and writes floats c .. c + 8·B ≤ hd of rows inside v (asserted above)
    // and of o; the CPU has the feature (this function's own).
    unsafe {
        while c + 32 <= hd {
            weighted_block_avx2::<4>(w, v.as_ptr().add(c), stride, o.as_mut_ptr().add(c));
            c += 32;
        }
        while c + 8 <= hd {
            weighted_block_avx2::<1>(w, v.as_ptr().add(c), stride, o.as_mut_ptr().add(c));
            c += 8;
        }
    }
    weighted_rows_portable(w, &v[c.min(v.len())..], stride, &mut o[c..]);
}

/// `o[..8·B] = Σⱼ w[j] · v[j·stride ..][..8·B]`, in B registers of 8 floats.
///
/// # Safety
/// The CPU has AVX2; `v` and `o` are valid for the floats named above.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn weighted_block_avx2<const B: usize>(
    w: &[f32],
    v: *const f32,
    stride: usize,
    o: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); B];
    for (j, &w) in w.iter().enumerate() {
        let w = _mm256_set1_ps(w);
        for (b, a) in acc.iter_mut().enumerate() {
            // SAFETY: inside row j's block (the caller's contract).
            let x = unsafe { _mm256_loadu_ps(v.add(j * stride + 8 * b)) };
            *a = _mm256_add_ps(*a, _mm256_mul_ps(w, x));
        }
    }
    for (b, a) in acc.iter().enumerate() {
        // SAFETY: inside o's block (the caller's contract).
        unsafe { _mm256_storeu_ps(o.add(8 * b), *a) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 and AVX2 forms of attention's weighted sum of values give the portable form's
    /// bits, for head sizes with and without whole blocks of 128, 64, 32, 16 and 8 floats and for
    /// cache rows wider than a head.
    #[test]
    fn decoding_attention_is_the_same_on_every_form() {
        let mut rng = crate::model::Rng::new(7);
        for (hd, stride, seen) in [
            (32, 64, 1),
            (32, 64, 37),
            (64, 128, 90),
            (40, 40, 5),
            (13, 26, 9),
            (128, 256, 200),
            (128, 1024, 33),
            (200, 200, 17),
            (80, 160, 12),
            (8, 8, 3),
        ] {
            let mut draw = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| (rng.next_f64() * 4.0 - 2.0) as f32)
                    .collect()
            };
            let (w, v) = (draw(seen), draw((seen + 2) * stride));
            let mut portable = vec![f32::NAN; hd];
            weighted_rows_portable(&w, &v, stride, &mut portable);
            assert!(portable.iter().all(|x| x.is_finite()));
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let mut forms: Vec<(&str, Vec<f32>)> = vec![];
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    let mut o = vec![f32::NAN; hd];
                    // SAFETY: the CPU has the feature.
                    unsafe { weighted_rows_avx512(&w, &v, stride, &mut o) };
                    forms.push(("AVX-512", o));
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    let mut o = vec![f32::NAN; hd];
                    // SAFETY: the CPU has the feature.
                    unsafe { weighted_rows_avx2(&w, &v, stride, &mut o) };
                    forms.push(("AVX2", o));
                }
            }
            let mut o = vec![f32::NAN; hd];
            weighted_rows(&w, &v, stride, &mut o);
            forms.push(("dispatched", o));
            for (form, o) in forms {
                assert_eq!(
                    bits(&o),
                    bits(&portable),
                    "{form}: head {hd}, stride {stride}, {seen} keys"
                );
            }
        }
    }
}
