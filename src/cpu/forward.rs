//! The forward half of the CPU training pass: teacher-forced log-probs of a left-padded batch
//! ([`forward`]) or of GRPO groups that share each prompt ([`forward_shared`]), keeping on a [`Tape`]
//! what the backward pass needs.
//!
//! Padding: a left-padded batch is computed without its padding. Only each row's real tokens go
//! through the layers and the head (in a batch of the warm-up's answer-format rows, of unequal
//! lengths, two positions in five are padding), a column predicted from padding gets log-prob 0,
//! and the backward pass cuts its sums over tokens (the weights' gradients) where the padded
//! batch's would be cut (`KBlocks::At`). The numbers are those of the padded computation, whose
//! padding added only zero terms to those sums (tested): real positions never see the padding and
//! it gets no gradient, as on the autograd path.

use rayon::prelude::*;

use super::attention::{attention, keep_probs};
use super::gemm::k_block_starts;
use super::head::{
    HEAD_CHUNK_FLOATS, head_chunk_rows, head_chunks, head_exps, keep_logits_buffer, logits_buffer,
};
use super::matmul::linear;
use super::tape::{AttnJob, Dims, LayerTape, Params, SharedGroup, Tape, get};
use super::vector::{add_into, dot, exp_shifted, for_row_pairs, for_rows, sigmoid};
use crate::model::config::ModelConfig;
use crate::model::error::{ModelError, Result};
use crate::model::layout::{Layout, Proj};
use crate::model::rope::rope_tables;

/// RMSNorm over rows of `w.len()`: returns the output and each row's inverse RMS.
pub(super) fn rms(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let n = w.len();
    let rows = x.len() / n;
    let mut rstd = vec![0f32; rows];
    for (r, xr) in rstd.iter_mut().zip(x.chunks(n)) {
        let ms = dot(xr, xr) / n as f32;
        *r = 1.0 / (ms + eps).sqrt();
    }
    let mut y = vec![0f32; x.len()];
    for_rows(&mut y, n, |i, yr| {
        let xr = &x[i * n..(i + 1) * n];
        for ((y, &x), &w) in yr.iter_mut().zip(xr).zip(w) {
            *y = x * rstd[i] * w;
        }
    });
    (y, rstd)
}

/// Rotates every head of every token by its position (`sign` −1 undoes it: the backward pass).
pub(super) fn rope(x: &mut [f32], heads: usize, hd: usize, cos: &[f32], sin: &[f32], sign: f32) {
    let half = hd / 2;
    for_rows(x, heads * hd, |t, row| {
        let (c, s) = (
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
        );
        for head in row.chunks_mut(hd) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b, si) = (x1[i], x2[i], sign * s[i]);
                x1[i] = a * c[i] - b * si;
                x2[i] = b * c[i] + a * si;
            }
        }
    });
}

/// Teacher-forced log-probs of tokens `from..s` of each row of a left-padded (b, s) batch under
/// `softmax(scale · logits)`, as (b · (s − from)) values in row order (0 where a token is predicted
/// from padding), with the tape for `backward`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    cfg: &ModelConfig,
    layout: &Layout,
    p: &Params,
    ids: &[u32],
    b: usize,
    pad: &[usize],
    from: usize,
    scale: f32,
    budget: Budget,
) -> Result<(Vec<f32>, Tape)> {
    let s = ids.len() / b.max(1);
    if from == 0 || from >= s || pad.len() != b || ids.len() != b * s || pad.iter().any(|&p| p > s)
    {
        return Err(ModelError::Invalid(format!(
            "fused forward: {b} rows of {s} tokens, {} pads, from {from}",
            pad.len()
        )));
    }
    // Each row's real tokens, one after another; positions counted from a row's first real token.
    let n = s - from;
    let mut real = Vec::with_capacity(ids.len());
    let (mut positions, mut jobs) = (Vec::with_capacity(ids.len()), vec![]);
    let (mut sel, mut targets, mut slots) = (vec![], vec![], vec![]);
    let mut at = Padding(Vec::with_capacity(ids.len()));
    for (r, row) in ids.chunks(s).enumerate() {
        let (q0, first) = (real.len(), pad[r]);
        real.extend_from_slice(&row[first..]);
        positions.extend(0..s - first);
        at.0.extend(r * s + first..(r + 1) * s);
        if first < s {
            jobs.push(AttnJob {
                q0,
                n: s - first,
                p0: 0,
                np: 0,
            });
        }
        // Column j of the row's output scores token from + j, predicted at token from + j − 1.
        for t in (from - 1).max(first)..s - 1 {
            sel.push(q0 + t - first);
            targets.push(row[t + 1]);
            slots.push(r * n + t + 1 - from);
        }
    }
    let units = (0..jobs.len()).map(|j| j..j + 1).collect();
    forward_core(
        cfg,
        layout,
        p,
        &real,
        &positions,
        jobs,
        units,
        sel,
        targets,
        Some((slots, b * n)),
        Some(at),
        scale,
        budget,
    )
}

/// Where each token of a batch computed without its padding sits in the left-padded batch it came
/// from. Its scored rows' places there are their slots in the output, which has the padded batch's
/// layout: the backward pass cuts its sums over tokens and over scored rows where the padded
/// batch's would be cut.
pub(super) struct Padding(Vec<usize>);

/// Like [`forward`] for GRPO groups, with each prompt computed once and attended to by all of its
/// completions (instead of once per completion in a padded batch): the same numbers with far fewer
/// tokens when prompts are long. The log-probs come back as (completions × `c`), each completion's
/// right-aligned in its row (columns before it are 0), in the groups' order: the layout `forward`
/// gives for the left-padded rows prompt ++ completion with `from = width − c`.
pub fn forward_shared(
    cfg: &ModelConfig,
    layout: &Layout,
    p: &Params,
    groups: &[SharedGroup],
    c: usize,
    scale: f32,
    budget: Budget,
) -> Result<(Vec<f32>, Tape)> {
    let mut ids = vec![];
    let mut positions = vec![];
    let (mut jobs, mut units) = (vec![], vec![]);
    let (mut sel, mut targets, mut slots) = (vec![], vec![], vec![]);
    let mut row = 0;
    for g in groups {
        let np = g.prompt.len();
        if np == 0 {
            return Err(ModelError::Invalid("fused forward: an empty prompt".into()));
        }
        let p0 = ids.len();
        let first_job = jobs.len();
        ids.extend_from_slice(g.prompt);
        positions.extend(0..np);
        jobs.push(AttnJob {
            q0: p0,
            n: np,
            p0: 0,
            np: 0,
        });
        for comp in &g.completions {
            let n = comp.len();
            if n > c {
                return Err(ModelError::Invalid(format!(
                    "fused forward: a completion of {n} tokens in {c} columns"
                )));
            }
            let q0 = ids.len();
            ids.extend_from_slice(comp);
            positions.extend(np..np + n);
            if n > 0 {
                jobs.push(AttnJob { q0, n, p0, np });
            }
            for (i, &t) in comp.iter().enumerate() {
                // Token i is predicted at the prompt's last token (i = 0) or at token i − 1.
                sel.push(if i == 0 { p0 + np - 1 } else { q0 + i - 1 });
                targets.push(t);
                slots.push(row * c + c - n + i);
            }
            row += 1;
        }
        units.push(first_job..jobs.len());
    }
    if sel.is_empty() {
        return Err(ModelError::Invalid(
            "fused forward: no completion tokens to score".into(),
        ));
    }
    forward_core(
        cfg,
        layout,
        p,
        &ids,
        &positions,
        jobs,
        units,
        sel,
        targets,
        Some((slots, row * c)),
        None,
        scale,
        budget,
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn forward_core(
    cfg: &ModelConfig,
    layout: &Layout,
    p: &Params,
    ids: &[u32],
    positions: &[usize],
    jobs: Vec<AttnJob>,
    units: Vec<std::ops::Range<usize>>,
    sel: Vec<usize>,
    targets: Vec<u32>,
    slots: Option<(Vec<usize>, usize)>,
    padding: Option<Padding>,
    scale: f32,
    budget: Budget,
) -> Result<(Vec<f32>, Tape)> {
    let d = Dims::of(cfg);
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= d.vocab) {
        return Err(ModelError::Invalid(format!(
            "token id {bad} is outside the vocabulary of {}",
            d.vocab
        )));
    }
    let t_all = ids.len();
    let h = d.h;
    let (cos, sin) = rope_tables(cfg, positions.iter().copied());
    let embed = get(p, &layout.embed)?;
    let mut x = vec![0f32; t_all * h];
    for (row, &id) in x.chunks_mut(h).zip(ids) {
        row.copy_from_slice(&embed[id as usize * h..(id as usize + 1) * h]);
    }
    // Past the budget, each layer keeps only its input, and the backward pass recomputes the rest
    // of it (with `layer_forward`, so the same numbers), a layer at a time.
    let checkpointed =
        t_all * cfg.num_hidden_layers * tape_floats_per_token(&d) > budget.tape_floats;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let (lt, x_out) = layer_forward(&d, layout, p, l, x, t_all, &cos, &sin, &jobs)?;
        x = x_out;
        layers.push(if checkpointed {
            LayerTape {
                x: lt.x,
                ..LayerTape::default()
            }
        } else {
            lt
        });
    }
    // Only the scored positions go through the final norm and the head.
    let mut xf = vec![0f32; sel.len() * h];
    for (row, &t) in xf.chunks_mut(h).zip(&sel) {
        row.copy_from_slice(&x[t * h..(t + 1) * h]);
    }
    let (hs, rstd_f) = rms(&xf, get(p, &layout.norm)?, d.eps);
    let head = get(p, &layout.head)?;
    // The head in chunks of at most `head_rows` scored rows, so that no (rows × vocabulary) matrix
    // larger than `head_floats` exists. With one chunk (every small model), the logits are overwritten
    // by exp(scale · logit − max) and kept for the backward pass; with several, only each row's
    // log-prob and 1 / sum are kept, and the backward pass recomputes each chunk's logits (the same
    // bits: the GEMM computes a row the same way in any number of rows).
    // A batch computed without its padding scores the padded batch's rows less the padding's.
    let padded_rows = match (&padding, &slots) {
        (Some(_), Some((at, len))) => Some((at.as_slice(), *len)),
        _ => None,
    };
    let scored = padded_rows.map_or(sel.len(), |(_, len)| len);
    let head_rows = head_chunk_rows(budget.head_floats, d.vocab, scored);
    let chunks = head_chunks(sel.len(), head_rows, padded_rows.map(|(at, _)| at));
    let longest = chunks.iter().map(|c| c.rows.len()).max().unwrap_or(0);
    let mut exps = logits_buffer(longest * d.vocab);
    let mut rows: Vec<(f32, f32)> = Vec::with_capacity(sel.len());
    for chunk in &chunks {
        let (c, tgt) = (
            &hs[chunk.rows.start * h..chunk.rows.end * h],
            &targets[chunk.rows.clone()],
        );
        let n = tgt.len();
        head_exps(&mut exps[..n * d.vocab], c, head, h, d.vocab);
        rows.extend(
            exps[..n * d.vocab]
                .par_chunks_mut(d.vocab)
                .zip(tgt.par_iter())
                .map(|(row, &t)| {
                    let target = row[t as usize];
                    let (max, total) = exp_shifted(row, scale);
                    (target * scale - max - total.ln(), 1.0 / total)
                })
                .collect::<Vec<_>>(),
        );
    }
    if chunks.len() > 1 {
        keep_logits_buffer(std::mem::take(&mut exps));
    }
    let lp = match &slots {
        None => rows.iter().map(|r| r.0).collect(),
        Some((at, len)) => {
            let mut out = vec![0f32; *len];
            for (&i, r) in at.iter().zip(&rows) {
                out[i] = r.0;
            }
            out
        }
    };
    let inv_sums = rows.iter().map(|r| r.1).collect();
    Ok((
        lp,
        Tape {
            t_all,
            jobs,
            units,
            slots,
            ids: ids.to_vec(),
            scale,
            cos,
            sin,
            layers,
            checkpointed,
            sel,
            targets,
            xf,
            rstd_f,
            hs,
            exps,
            inv_sums,
            head_chunks: chunks,
            token_cuts: padding.map(|p| k_block_starts(p.0)),
        },
    ))
}

/// Activation floats a layer keeps per token for the backward pass (as `pipeline::memory` counts
/// them): 4·hidden + 2·q + 2·kv + 4·intermediate.
pub(super) fn tape_floats_per_token(d: &Dims) -> usize {
    4 * d.h + 2 * d.nh * d.hd + 2 * d.nkv * d.hd + 4 * d.inter
}

/// Layer `l` of the training pass on `x` (its input, which the tape keeps): its tape, and its output.
/// The forward pass and, for a checkpointed tape, the backward pass both call this.
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_forward(
    d: &Dims,
    layout: &Layout,
    p: &Params,
    l: usize,
    x: Vec<f32>,
    t_all: usize,
    cos: &[f32],
    sin: &[f32],
    jobs: &[AttnJob],
) -> Result<(LayerTape, Vec<f32>)> {
    let (h, nh, nkv, hd) = (d.h, d.nh, d.nkv, d.hd);
    let names = &layout.layers[l];
    // The projection `pr` (its weight, and its bias when it has one) of every token of `x`.
    let proj = |x: &[f32], pr: &Proj| -> Result<Vec<f32>> {
        let bias = pr.bias.as_deref().map(|b| get(p, b)).transpose()?;
        Ok(linear(x, t_all, get(p, &pr.weight)?, bias, pr.out()))
    };
    let (h1, rstd1) = rms(&x, get(p, &names.input_norm)?, d.eps);
    let mut q = proj(&h1, &names.q)?;
    let mut k = proj(&h1, &names.k)?;
    let v = proj(&h1, &names.v)?;
    let (mut q_raw, mut k_raw, mut rstd_q, mut rstd_k) = (vec![], vec![], vec![], vec![]);
    if let (Some(q_norm), Some(k_norm)) = (&names.q_norm, &names.k_norm) {
        let (qn, rq) = rms(&q, get(p, q_norm)?, d.eps);
        let (kn, rk) = rms(&k, get(p, k_norm)?, d.eps);
        q_raw = std::mem::replace(&mut q, qn);
        k_raw = std::mem::replace(&mut k, kn);
        (rstd_q, rstd_k) = (rq, rk);
    }
    rope(&mut q, nh, hd, cos, sin, 1.0);
    rope(&mut k, nkv, hd, cos, sin, 1.0);
    let (probs, att) = attention(d, &q, &k, &v, t_all, jobs, keep_probs(jobs, nh));
    let mut x_mid = proj(&att, &names.o)?;
    add_into(&mut x_mid, &x, h);
    let (h2, rstd2) = rms(&x_mid, get(p, &names.post_norm)?, d.eps);
    let g = proj(&h2, &names.gate)?;
    let u = proj(&h2, &names.up)?;
    // σ(g) and a = g · σ(g) · u, a row at a time (the row stays in L1 between the two).
    let (mut sg, mut a) = (vec![0f32; g.len()], vec![0f32; g.len()]);
    for_row_pairs(&mut sg, &mut a, d.inter, |r, sr, ar| {
        let range = r * d.inter..(r + 1) * d.inter;
        let (gr, ur) = (&g[range.clone()], &u[range]);
        sigmoid(gr, sr);
        for (i, o) in ar.iter_mut().enumerate() {
            *o = gr[i] * sr[i] * ur[i];
        }
    });
    let mut x_out = proj(&a, &names.down)?;
    add_into(&mut x_out, &x_mid, h);
    Ok((
        LayerTape {
            x,
            rstd1,
            h1,
            q_raw,
            k_raw,
            rstd_q,
            rstd_k,
            q,
            k,
            v,
            probs,
            att,
            x_mid,
            rstd2,
            h2,
            g,
            u,
            sg,
            a,
        },
        x_out,
    ))
}

/// Activation floats the training pass keeps for the backward pass by default (2 GiB): past it, only
/// each layer's input is kept and the backward pass recomputes the rest (see [`Budget`]).
pub const TAPE_FLOATS: usize = 1 << 29;

/// What the training pass may hold at once, in floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The head's logits are computed in chunks of at most this many (rows × vocabulary), and
    /// recomputed in the backward pass when there is more than one chunk.
    pub head_floats: usize,
    /// The activations all layers keep for the backward pass. Past it, each layer keeps only its
    /// input and the backward pass recomputes the rest of that layer before its own step
    /// (activation checkpointing): one more forward pass, the same numbers to the bit.
    pub tape_floats: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            head_floats: HEAD_CHUNK_FLOATS,
            tape_floats: TAPE_FLOATS,
        }
    }
}
