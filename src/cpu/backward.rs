//! The backward half of the CPU training pass: from the gradient of the per-token log-probs that
//! [`super::forward()`] returned, the gradient of every parameter, layer by layer (the head's
//! log-softmax, RMSNorm, SwiGLU, grouped-query attention, rotary embeddings). The tape's buffers are
//! reused for the gradients.

use rayon::prelude::*;

use super::attention::attention_back;
use super::forward::{layer_forward, rope};
use super::gemm::{KBlocks, MatRef, gemm, gemm_blocked, gemm_new_blocked};
use super::head::{head_exps, keep_logits_buffer, logits_buffer};
use super::tape::{Dims, FlatGrads, Params, Tape, get};
use super::vector::{dot3, exp_shifted, for_row_pairs, for_rows};
use crate::model::config::ModelConfig;
use crate::model::error::{ModelError, Result};
use crate::model::layout::{Layout, Proj};

/// Adds `g` into the gradient `name` of `grads`, or inserts it when absent: passes over several
/// micro-batches sum their gradients in place, with no second set of them.
pub(super) fn put(grads: &mut FlatGrads, name: String, g: Vec<f32>) {
    match grads.get_mut(&name) {
        Some(acc) => acc
            .par_chunks_mut(1 << 16)
            .zip(g.par_chunks(1 << 16))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b)),
        None => {
            grads.insert(name, g);
        }
    }
}

/// Backward of `linear`: `dx (+)= dy · w`, and the weight (and bias) gradients. The weight's
/// gradient is a sum over the `rows` rows, cut into blocks where `rows_cut` says (see [`KBlocks`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_back(
    dy: &[f32],
    x: &[f32],
    rows: usize,
    w: &[f32],
    out: usize,
    dx: &mut [f32],
    dx_accumulate: bool,
    grads: &mut FlatGrads,
    weight_name: &str,
    bias_name: Option<&str>,
    rows_cut: KBlocks,
) {
    let inp = w.len() / out;
    // The two products are independent and equally large: run them side by side. The weight's
    // gradient is added in place where an earlier pass left one (a later micro-batch, or a later
    // chunk of the head's rows), so no second buffer of it is made.
    let mut dw = Vec::new();
    let acc = grads.get_mut(weight_name);
    let fresh = acc.is_none();
    rayon::join(
        || {
            gemm(
                rows,
                inp,
                out,
                MatRef::rows(dy, out),
                MatRef::rows(w, inp),
                dx,
                inp,
                dx_accumulate,
                true,
            )
        },
        || match acc {
            Some(acc) => gemm_blocked(
                out,
                inp,
                rows,
                MatRef::rows_t(dy, out),
                MatRef::rows(x, inp),
                acc,
                inp,
                true,
                true,
                rows_cut,
            ),
            None => {
                dw = gemm_new_blocked(
                    out,
                    inp,
                    rows,
                    MatRef::rows_t(dy, out),
                    MatRef::rows(x, inp),
                    true,
                    rows_cut,
                )
            }
        },
    );
    if fresh {
        grads.insert(weight_name.to_string(), dw);
    }
    if let Some(name) = bias_name {
        let mut db = vec![0f32; out];
        for r in dy.chunks(out) {
            db.iter_mut().zip(r).for_each(|(d, g)| *d += g);
        }
        put(grads, name.to_string(), db);
    }
}

/// [`linear_back`] of a layer's projection `proj`, its weight read from `p`.
#[allow(clippy::too_many_arguments)]
fn proj_back(
    dy: &[f32],
    x: &[f32],
    rows: usize,
    p: &Params,
    proj: &Proj,
    dx: &mut [f32],
    dx_accumulate: bool,
    grads: &mut FlatGrads,
    rows_cut: KBlocks,
) -> Result<()> {
    let w = get(p, &proj.weight)?;
    let bias = proj.bias.as_deref();
    linear_back(
        dy,
        x,
        rows,
        w,
        proj.out(),
        dx,
        dx_accumulate,
        grads,
        &proj.weight,
        bias,
        rows_cut,
    );
    Ok(())
}

/// Backward of `rms`: `dx += ∂/∂x`, and `dw` (the weight gradient) returned.
pub(super) fn rms_back(x: &[f32], w: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [f32]) -> Vec<f32> {
    let n = w.len();
    let mut dw = vec![0f32; n];
    for ((xr, dyr), &r) in x.chunks(n).zip(dy.chunks(n)).zip(rstd) {
        for ((d, &x), &g) in dw.iter_mut().zip(xr).zip(dyr) {
            *d += g * x * r;
        }
    }
    for_rows(dx, n, |i, dxr| {
        let (xr, dyr, r) = (&x[i * n..(i + 1) * n], &dy[i * n..(i + 1) * n], rstd[i]);
        let c = r * r * r * dot3(xr, dyr, w) / n as f32;
        for (((d, &x), &g), &w) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
            *d += r * g * w - c * x;
        }
    });
    dw
}

/// Gradients of every parameter, by published name, from the gradient of the log-probs `forward`
/// returned (same order and length), added into `grads` (an empty map gets them as they are; a map
/// holding an earlier micro-batch's gradients gets the sum, in place).
/// The tape is consumed: its buffers are reused for the gradients.
pub fn backward(
    cfg: &ModelConfig,
    layout: &Layout,
    p: &Params,
    mut tape: Tape,
    dlp: &[f32],
    grads: &mut FlatGrads,
) -> Result<()> {
    let d = Dims::of(cfg);
    let want = tape.slots.as_ref().map_or(tape.sel.len(), |s| s.1);
    if dlp.len() != want {
        return Err(ModelError::Invalid(format!(
            "fused backward: {} gradients for {want} log-probs",
            dlp.len(),
        )));
    }
    let gathered: Vec<f32>;
    let dlp = match &tape.slots {
        None => dlp,
        Some((at, _)) => {
            gathered = at.iter().map(|&i| dlp[i]).collect();
            &gathered
        }
    };
    let t_all = tape.t_all;
    let (h, nh, nkv, hd, v) = (d.h, d.nh, d.nkv, d.hd, d.vocab);
    // Head: d logit_j = dlp · scale · (δ(j = target) − softmax_j).
    let scale = tape.scale;
    let nsel = tape.sel.len();
    let head = get(p, &layout.head)?;
    let mut dhs = vec![0f32; nsel * h];
    // The head's weight gradient goes straight into its accumulated sum: the embedding's when tied.
    let head_name = if layout.tied() {
        &layout.embed
    } else {
        &layout.head
    };
    // One chunk: the stored exponentials; several: each chunk's recomputed (see `forward_core`).
    let chunked = tape.head_chunks.len() > 1;
    let mut dlogits = if chunked {
        let longest = tape.head_chunks.iter().map(|c| c.rows.len()).max();
        logits_buffer(longest.unwrap_or(0) * v)
    } else {
        std::mem::take(&mut tape.exps)
    };
    for head_chunk in &tape.head_chunks {
        let (r0, n) = (head_chunk.rows.start, head_chunk.rows.len());
        let dh = &mut dhs[r0 * h..(r0 + n) * h];
        let chunk = &mut dlogits[..n * v];
        if chunked {
            head_exps(chunk, &tape.hs[r0 * h..(r0 + n) * h], head, h, v);
            chunk.par_chunks_mut(v).for_each(|row| {
                exp_shifted(row, scale);
            });
        }
        // In place of the exponentials.
        chunk.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
            let g = dlp[r0 + i];
            let c = -g * scale * tape.inv_sums[r0 + i];
            o.iter_mut().for_each(|x| *x *= c);
            o[tape.targets[r0 + i] as usize] += g * scale;
        });
        linear_back(
            chunk,
            &tape.hs[r0 * h..(r0 + n) * h],
            n,
            head,
            v,
            dh,
            false,
            grads,
            head_name,
            None,
            head_chunk
                .cuts
                .as_deref()
                .map_or(KBlocks::Every, KBlocks::At),
        );
    }
    keep_logits_buffer(dlogits);
    let mut dxf = vec![0f32; nsel * h];
    let norm_w = get(p, &layout.norm)?;
    put(
        grads,
        layout.norm.clone(),
        rms_back(&tape.xf, norm_w, &tape.rstd_f, &dhs, &mut dxf),
    );
    let mut dx = vec![0f32; t_all * h];
    let cut = tape
        .token_cuts
        .as_deref()
        .map_or(KBlocks::Every, KBlocks::At);
    // A position scored more than once (a shared prompt's last token) sums its gradients.
    for (row, &t) in dxf.chunks(h).zip(&tape.sel) {
        dx[t * h..(t + 1) * h]
            .iter_mut()
            .zip(row)
            .for_each(|(d, g)| *d += g);
    }
    for l in (0..cfg.num_hidden_layers).rev() {
        let recomputed;
        let lt = if tape.checkpointed {
            let x = std::mem::take(&mut tape.layers[l].x);
            let (cos, sin, jobs) = (&tape.cos, &tape.sin, &tape.jobs);
            recomputed = layer_forward(&d, layout, p, l, x, t_all, cos, sin, jobs)?.0;
            &recomputed
        } else {
            &tape.layers[l]
        };
        let names = &layout.layers[l];
        // MLP: x_out = x_mid + down(silu(gate(h2)) · up(h2)).
        let mut da = vec![0f32; t_all * d.inter];
        proj_back(
            &dx,
            &lt.a,
            t_all,
            p,
            &names.down,
            &mut da,
            false,
            grads,
            cut,
        )?;
        // a = g · σ(g) · u: dg = da · u · σ(g)(1 + g(1 − σ(g))), du = da · g · σ(g) (in place of da).
        let inter = d.inter;
        let mut dg = vec![0f32; da.len()];
        let mut du = da;
        let rows_of = |r: usize| r * inter..(r + 1) * inter;
        let grad = |r: usize, dgr: &mut [f32], dur: &mut [f32]| {
            let range = rows_of(r);
            let (gr, ur, sr) = (&lt.g[range.clone()], &lt.u[range.clone()], &lt.sg[range]);
            for i in 0..inter {
                let da = dur[i];
                dgr[i] = da * ur[i] * sr[i] * (1.0 + gr[i] * (1.0 - sr[i]));
                dur[i] = da * gr[i] * sr[i];
            }
        };
        for_row_pairs(&mut dg, &mut du, inter, grad);
        let mut dh2 = vec![0f32; t_all * h];
        proj_back(
            &dg,
            &lt.h2,
            t_all,
            p,
            &names.gate,
            &mut dh2,
            false,
            grads,
            cut,
        )?;
        proj_back(&du, &lt.h2, t_all, p, &names.up, &mut dh2, true, grads, cut)?;
        drop((dg, du));
        let ln2 = get(p, &names.post_norm)?;
        put(
            grads,
            names.post_norm.clone(),
            rms_back(&lt.x_mid, ln2, &lt.rstd2, &dh2, &mut dx),
        );
        // Attention: x_mid = x + o(attention(rope(q(h1)), rope(k(h1)), v(h1))).
        let mut datt = vec![0f32; t_all * nh * hd];
        proj_back(
            &dx, &lt.att, t_all, p, &names.o, &mut datt, false, grads, cut,
        )?;
        let (mut dq, mut dk, dv) = attention_back(&d, lt, &datt, t_all, &tape.jobs, &tape.units);
        rope(&mut dq, nh, hd, &tape.cos, &tape.sin, -1.0);
        rope(&mut dk, nkv, hd, &tape.cos, &tape.sin, -1.0);
        if let (Some(q_norm), Some(k_norm)) = (&names.q_norm, &names.k_norm) {
            let (qn, kn) = (get(p, q_norm)?, get(p, k_norm)?);
            let mut dq_raw = vec![0f32; dq.len()];
            let mut dk_raw = vec![0f32; dk.len()];
            put(
                grads,
                q_norm.clone(),
                rms_back(&lt.q_raw, qn, &lt.rstd_q, &dq, &mut dq_raw),
            );
            put(
                grads,
                k_norm.clone(),
                rms_back(&lt.k_raw, kn, &lt.rstd_k, &dk, &mut dk_raw),
            );
            (dq, dk) = (dq_raw, dk_raw);
        }
        let mut dh1 = vec![0f32; t_all * h];
        for (i, (dy, proj)) in [(&dq, &names.q), (&dk, &names.k), (&dv, &names.v)]
            .into_iter()
            .enumerate()
        {
            proj_back(dy, &lt.h1, t_all, p, proj, &mut dh1, i > 0, grads, cut)?;
        }
        let ln1 = get(p, &names.input_norm)?;
        put(
            grads,
            names.input_norm.clone(),
            rms_back(&lt.x, ln1, &lt.rstd1, &dh1, &mut dx),
        );
    }
    // The embedding's rows are added in place too (a tied head's gradient is already there).
    let d_embed = grads
        .entry(layout.embed.clone())
        .or_insert_with(|| vec![0f32; v * h]);
    for (row, &id) in dx.chunks(h).zip(&tape.ids) {
        let dst = &mut d_embed[id as usize * h..(id as usize + 1) * h];
        dst.iter_mut().zip(row).for_each(|(d, g)| *d += g);
    }
    Ok(())
}
