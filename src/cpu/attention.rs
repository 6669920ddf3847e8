//! Grouped-query causal attention for the CPU training pass, both directions: the probabilities of a
//! job's queries over its prompt's keys (if any) and, causally, its own ([`job_probs`]); the output
//! ([`attention`]), keeping the probabilities for the backward pass while a layer's fit
//! [`KEEP_PROBS_FLOATS`]; and the gradients of q, k and v ([`attention_back`]), which recompute the
//! probabilities with the same function where they were not kept.

use rayon::prelude::*;

use super::gemm::{MatRef, gemm, gemm_into};
use super::tape::{AttnJob, Dims, LayerTape};
use super::vector::{Shared, dot, softmax_prefix};

/// The attention probabilities a layer keeps for the backward pass, in floats; past it they are
/// recomputed there instead (the same arithmetic, so the same bits), which bounds a long sequence's
/// memory by its activations rather than by heads × tokens².
pub const KEEP_PROBS_FLOATS: usize = 1 << 22;

/// Whether a layer's attention probabilities for `jobs` fit [`KEEP_PROBS_FLOATS`].
pub(super) fn keep_probs(jobs: &[AttnJob], nh: usize) -> bool {
    let floats: usize = jobs.iter().map(|j| nh * j.n * (j.np + j.n)).sum();
    floats <= KEEP_PROBS_FLOATS
}

/// The attention probabilities of `head` for `job`, (n × (np + n)): its queries against the job's
/// prompt (if any) and, causally, itself. The forward and the backward pass both call this.
pub(super) fn job_probs(d: &Dims, q: &[f32], k: &[f32], job: AttnJob, head: usize) -> Vec<f32> {
    let (nh, nkv, hd) = (d.nh, d.nkv, d.hd);
    let (qw, kw) = (nh * hd, nkv * hd);
    let g = head / (nh / nkv);
    let (n, np) = (job.n, job.np);
    let w = np + n;
    let inv_sqrt = 1.0 / (hd as f32).sqrt();
    let qv = MatRef::rows(&q[job.q0 * qw + head * hd..], qw);
    let keys = |t0: usize| MatRef {
        data: &k[t0 * kw + g * hd..],
        rs: 1,
        cs: kw,
    };
    let mut sc = vec![0f32; n * w];
    for (t0, len, col) in job.segments() {
        gemm(n, len, hd, qv, keys(t0), &mut sc[col..], w, false, false);
    }
    for (i, row) in sc.chunks_mut(w).enumerate() {
        softmax_prefix(row, np + i + 1, inv_sqrt);
    }
    sc
}

/// Attention with grouped-query heads for each job: its queries see the job's prompt (if any) and,
/// causally, themselves. Returns the probabilities per (job, head), (n × (np + n)), each empty unless
/// `keep`, and the output (tokens, heads · head_dim), zero at tokens no job queries from (padding).
pub(super) fn attention(
    d: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t_all: usize,
    jobs: &[AttnJob],
    keep: bool,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let (nh, nkv, hd) = (d.nh, d.nkv, d.hd);
    let (qw, kw) = (nh * hd, nkv * hd);
    let n_rep = nh / nkv;
    let mut att = vec![0f32; t_all * qw];
    let out = Shared(att.as_mut_ptr());
    let probs = (0..jobs.len() * nh)
        .into_par_iter()
        .map(|jh| {
            let (job, head) = (jobs[jh / nh], jh % nh);
            let g = head / n_rep;
            let w = job.np + job.n;
            let n = job.n;
            let sc = job_probs(d, q, k, job, head);
            let dst = out.at(job.q0 * qw + head * hd);
            for (i, (t0, len, col)) in job.segments().enumerate() {
                let values = MatRef::rows(&v[t0 * kw + g * hd..], kw);
                // SAFETY: this job alone writes head `head` of its query tokens.
                unsafe {
                    let probs = MatRef::rows(&sc[col..], w);
                    gemm_into(n, hd, len, probs, values, dst, qw, i > 0, false)
                };
            }
            if keep { sc } else { Vec::new() }
        })
        .collect();
    (probs, att)
}

/// Backward of `attention`: gradients of the post-rotary q and k and of v.
pub(super) fn attention_back(
    d: &Dims,
    lt: &LayerTape,
    datt: &[f32],
    t_all: usize,
    jobs: &[AttnJob],
    units: &[std::ops::Range<usize>],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (nh, nkv, hd) = (d.nh, d.nkv, d.hd);
    let (qw, kw) = (nh * hd, nkv * hd);
    let n_rep = nh / nkv;
    let inv_sqrt = 1.0 / (hd as f32).sqrt();
    let mut dq = vec![0f32; t_all * qw];
    let mut dk = vec![0f32; t_all * kw];
    let mut dv = vec![0f32; t_all * kw];
    let (pq, pk, pv) = (
        Shared(dq.as_mut_ptr()),
        Shared(dk.as_mut_ptr()),
        Shared(dv.as_mut_ptr()),
    );
    // One task per (unit, key/value group): the jobs of a unit (a prompt and its completions) share
    // the prompt's keys and values, so their gradients there are summed by one task, in job order.
    (0..units.len() * nkv).into_par_iter().for_each(|task| {
        let (unit, g) = (&units[task / nkv], task % nkv);
        for j in unit.clone() {
            let job = jobs[j];
            let (n, np) = (job.n, job.np);
            let w = np + n;
            let kv = |t0: usize| t0 * kw + g * hd;
            let v_t = |t0: usize| MatRef {
                data: &lt.v[kv(t0)..],
                rs: 1,
                cs: kw,
            };
            let mut dp = vec![0f32; n * w];
            for head in g * n_rep..(g + 1) * n_rep {
                let q_off = job.q0 * qw + head * hd;
                let dout = MatRef::rows(&datt[q_off..], qw);
                let q_rows = MatRef::rows(&lt.q[q_off..], qw);
                // Kept by the forward pass, or recomputed here when a layer's were too large.
                let recomputed;
                let probs = match &lt.probs[j * nh + head] {
                    p if p.is_empty() && n > 0 => {
                        recomputed = job_probs(d, &lt.q, &lt.k, job, head);
                        &recomputed
                    }
                    p => p,
                };
                // dP = dO · Vᵀ, over the prompt's and the job's own values.
                for (t0, len, col) in job.segments() {
                    gemm(n, len, hd, dout, v_t(t0), &mut dp[col..], w, false, false);
                }
                // SAFETY (every product below): this task alone owns key/value group g of the unit's
                // tokens and the query heads of that group.
                for (t0, len, col) in job.segments() {
                    // dV += Pᵀ · dO
                    let p_t = MatRef::rows_t(&probs[col..], w);
                    unsafe { gemm_into(len, hd, n, p_t, dout, pv.at(kv(t0)), kw, true, false) };
                }
                // dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √hd, in place in dp.
                for (i, (dr, pr)) in dp.chunks_mut(w).zip(probs.chunks(w)).enumerate() {
                    let seen = np + i + 1;
                    let dot = dot(&dr[..seen], &pr[..seen]);
                    for (x, &pv) in dr[..seen].iter_mut().zip(&pr[..seen]) {
                        *x = pv * (*x - dot) * inv_sqrt;
                    }
                    dr[seen..].fill(0.0);
                }
                for (i, (t0, len, col)) in job.segments().enumerate() {
                    // dQ = dS · K
                    let (ds, keys) = (
                        MatRef::rows(&dp[col..], w),
                        MatRef::rows(&lt.k[kv(t0)..], kw),
                    );
                    unsafe { gemm_into(n, hd, len, ds, keys, pq.at(q_off), qw, i > 0, false) };
                }
                for (t0, len, col) in job.segments() {
                    // dK += dSᵀ · Q
                    let ds_t = MatRef::rows_t(&dp[col..], w);
                    unsafe { gemm_into(len, hd, n, ds_t, q_rows, pk.at(kv(t0)), kw, true, false) };
                }
            }
        }
    });
    (dq, dk, dv)
}
