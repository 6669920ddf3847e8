//! The decoder's training pass written by hand for the CPU: a forward pass that keeps the activations
//! the backward pass needs, and a backward pass that turns the gradient of the per-token log-probs into
//! the gradient of every parameter.
//!
//! The composed-op path (`Decoder::forward` in `Mode::Train` with candle's autograd) computes the same
//! numbers and stays the reference and the path for other devices; here there is no graph, no
//! gradient accumulation into freshly zeroed tensors, and every matrix product goes through the strided
//! `gemm`, which reads transposes and attention heads in place. The results agree with the autograd
//! path to float rounding (tested).
//!
//! Padding: a left-padded row's padding positions attend to nothing and get no gradient; real
//! positions never see them, as on the autograd path.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::gemm::{MatRef, gemm, gemm_into, gemm_new};
use super::ops::{SMALL_M, dot, dot3, max_scaled, small_matmul_t_slices, sum};

/// Parameters as flat row-major f32 buffers (borrowed), by published name.
pub type Params<'a> = BTreeMap<&'a str, &'a [f32]>;

/// Gradients as flat row-major f32 buffers, by published name.
pub type FlatGrads = BTreeMap<String, Vec<f32>>;

pub(super) fn get<'a>(p: &Params<'a>, name: &str) -> Result<&'a [f32]> {
    p.get(name)
        .copied()
        .ok_or_else(|| ModelError::Invalid(format!("weights lack tensor `{name}`")))
}

/// Raw pointer into a buffer that parallel tasks fill in disjoint parts.
#[derive(Clone, Copy)]
pub(super) struct Shared(pub(super) *mut f32);
// SAFETY: every user writes a disjoint region (one attention head or key/value group of one row).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

/// Activations of one layer kept for the backward pass.
struct LayerTape {
    x: Vec<f32>,
    rstd1: Vec<f32>,
    h1: Vec<f32>,
    /// Pre-norm q and k and their per-head inverse RMS (models with q/k norms only).
    q_raw: Vec<f32>,
    k_raw: Vec<f32>,
    rstd_q: Vec<f32>,
    rstd_k: Vec<f32>,
    /// Post-rotary q and k, and v.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities per (row, head): (real × real), causal.
    probs: Vec<Vec<f32>>,
    att: Vec<f32>,
    x_mid: Vec<f32>,
    rstd2: Vec<f32>,
    h2: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    /// sigmoid(g)
    sg: Vec<f32>,
    a: Vec<f32>,
}

/// Everything the backward pass needs from one forward pass.
pub struct Tape {
    /// Tokens in the buffer, and its attention problems grouped by the tokens they own.
    t_all: usize,
    jobs: Vec<AttnJob>,
    units: Vec<std::ops::Range<usize>>,
    /// Where each scored position's log-prob goes in the caller's output, and that output's length;
    /// `None`: the output is the scored positions in order.
    slots: Option<(Vec<usize>, usize)>,
    ids: Vec<u32>,
    scale: f32,
    cos: Vec<f32>,
    sin: Vec<f32>,
    layers: Vec<LayerTape>,
    /// Token index of each scored position, its target, and the final residual there.
    sel: Vec<usize>,
    targets: Vec<u32>,
    xf: Vec<f32>,
    rstd_f: Vec<f32>,
    hs: Vec<f32>,
    /// exp(scale · logit − max) of each scored row, and 1 / its sum (softmax = product of both).
    exps: Vec<f32>,
    inv_sums: Vec<f32>,
}

/// One attention problem: the `n` query tokens from token `q0` see, causally, themselves, and all `np`
/// tokens from `p0` before them (a prompt shared by several completions; `np = 0` for none).
#[derive(Debug, Clone, Copy)]
struct AttnJob {
    q0: usize,
    n: usize,
    p0: usize,
    np: usize,
}

impl AttnJob {
    /// The job's keys, in column order of its score rows: (first key token, keys, first column) for
    /// the prompt (when there is one) and for the job's own tokens.
    fn segments(&self) -> impl Iterator<Item = (usize, usize, usize)> {
        [(self.p0, self.np, 0), (self.q0, self.n, self.np)]
            .into_iter()
            .filter(|s| s.1 > 0)
    }
}

/// Softmax of `scale · row[..seen]`, in place, and zeros after it (keys a causal query does not see).
pub(super) fn softmax_prefix(row: &mut [f32], seen: usize, scale: f32) {
    let (_, total) = exp_shifted(&mut row[..seen], scale);
    let inv: f32 = 1.0 / total;
    row[..seen].iter_mut().for_each(|x| *x *= inv);
    row[seen..].fill(0.0);
}

/// Replaces `row` by exp(scale · x − max), max taken of scale · x; returns (max, Σ of the result):
/// a softmax before its normalization.
fn exp_shifted(row: &mut [f32], scale: f32) -> (f32, f32) {
    let max = max_scaled(row, scale);
    row.iter_mut().for_each(|x| *x = *x * scale - max);
    exp_in_place(row);
    (max, sum(row))
}

/// A prompt and the completions sampled from it, for [`forward_shared`].
pub struct SharedGroup<'a> {
    pub prompt: &'a [u32],
    pub completions: Vec<&'a [u32]>,
}

struct Dims {
    h: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    inter: usize,
    vocab: usize,
    eps: f32,
}

impl Dims {
    fn of(cfg: &ModelConfig) -> Self {
        Dims {
            h: cfg.hidden_size,
            nh: cfg.num_attention_heads,
            nkv: cfg.num_key_value_heads,
            hd: cfg.head_dim,
            inter: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            eps: cfg.rms_norm_eps as f32,
        }
    }
}

/// e^x of every element, in place: the Cephes polynomial on a range reduction to [−ln2/2, ln2/2],
/// about 2 ulp from `f32::exp`, inputs clamped to [−87, 88]. Written so that it vectorizes.
pub fn exp_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the function is compiled for.
        unsafe { exp_avx512(x) };
        return;
    }
    x.iter_mut().for_each(|v| *v = exp_one(*v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_avx512(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = exp_one(*v));
}

#[inline(always)]
fn exp_one(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round x·log2(e) to the nearest integer n by the 1.5·2^23 trick: t's low mantissa bits hold
    // n, so 2^n is built from t's bits with integer arithmetic (which vectorizes, where a float to
    // integer conversion would not).
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let ni = t.to_bits() as i32 - 0x4B40_0000;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 0.166_666_65)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    p * f32::from_bits(((ni + 127) << 23) as u32)
}

/// 1 / (1 + e^−x) of every element of `x`, into `out`.
pub(super) fn sigmoid(x: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = -v);
    exp_in_place(out);
    out.iter_mut().for_each(|o| *o = 1.0 / (1.0 + *o));
}

/// Rows of `len` above which elementwise work is spread over the rayon pool.
pub(super) const PAR_MIN: usize = 1 << 15;

pub(super) fn for_rows(out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each(|(r, o)| f(r, o));
    } else {
        out.chunks_mut(len).enumerate().for_each(|(r, o)| f(r, o));
    }
}

/// As `for_rows`, over the rows of two outputs side by side.
fn for_row_pairs(
    x: &mut [f32],
    y: &mut [f32],
    len: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) {
    if x.len() >= PAR_MIN {
        (x.par_chunks_mut(len).zip(y.par_chunks_mut(len)))
            .enumerate()
            .for_each(|(r, (a, b))| f(r, a, b));
    } else {
        (x.chunks_mut(len).zip(y.chunks_mut(len)))
            .enumerate()
            .for_each(|(r, (a, b))| f(r, a, b));
    }
}

/// `y += x`, rows of `len` in parallel when large.
fn add_into(y: &mut [f32], x: &[f32], len: usize) {
    for_rows(y, len, |r, yr| {
        yr.iter_mut()
            .zip(&x[r * len..(r + 1) * len])
            .for_each(|(y, x)| *y += x);
    });
}

/// `y = x · wᵀ (+ bias)`, x: (rows, in), w: (out, in).
pub(super) fn linear(
    x: &[f32],
    rows: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    out: usize,
) -> Vec<f32> {
    let inp = w.len() / out;
    let mut y = gemm_new(
        rows,
        out,
        inp,
        MatRef::rows(x, inp),
        MatRef::rows_t(w, inp),
        true,
    );
    if let Some(b) = bias {
        add_bias(&mut y, b);
    }
    y
}

/// The matrix kernel of an inference `linear`. Each computes every row of its output with the same
/// arithmetic whatever the number of rows, so a sequence's numbers do not depend on the batch it is
/// sampled in, provided the kernel is chosen without looking at the row count (see `host::step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Streams the weights once for all rows, without packing them: one new token per sequence.
    Few,
    /// The blocked GEMM: prompts.
    Many,
}

/// `linear` for inference, choosing the kernel by the row count (rows up to `SMALL_M` take `Few`).
pub(super) fn infer_linear(
    x: &[f32],
    rows: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    out: usize,
) -> Vec<f32> {
    let kernel = if rows > SMALL_M {
        Kernel::Many
    } else {
        Kernel::Few
    };
    infer_linear_with(kernel, x, rows, w, bias, out)
}

/// `linear` for inference with the given kernel.
pub(super) fn infer_linear_with(
    kernel: Kernel,
    x: &[f32],
    rows: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    out: usize,
) -> Vec<f32> {
    if kernel == Kernel::Many {
        return linear(x, rows, w, bias, out);
    }
    let mut y = small_matmul_t_slices(x, rows, w.len() / out, w, out);
    if let Some(b) = bias {
        add_bias(&mut y, b);
    }
    y
}

/// Adds `b` to every row of `y`.
fn add_bias(y: &mut [f32], b: &[f32]) {
    for_rows(y, b.len(), |_, r| {
        r.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    });
}

/// Backward of `linear`: `dx (+)= dy · w`, and the weight (and bias) gradients.
#[allow(clippy::too_many_arguments)]
fn linear_back(
    dy: &[f32],
    x: &[f32],
    rows: usize,
    w: &[f32],
    out: usize,
    dx: &mut [f32],
    dx_accumulate: bool,
    bias: bool,
    grads: &mut FlatGrads,
    name: &str,
) {
    let inp = w.len() / out;
    // The two products are independent and equally large: run them side by side.
    let mut dw = Vec::new();
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
        || {
            dw = gemm_new(
                out,
                inp,
                rows,
                MatRef::rows_t(dy, out),
                MatRef::rows(x, inp),
                true,
            )
        },
    );
    grads.insert(format!("{name}.weight"), dw);
    if bias {
        let mut db = vec![0f32; out];
        for r in dy.chunks(out) {
            db.iter_mut().zip(r).for_each(|(d, g)| *d += g);
        }
        grads.insert(format!("{name}.bias"), db);
    }
}

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

/// Backward of `rms`: `dx += ∂/∂x`, and `dw` (the weight gradient) returned.
fn rms_back(x: &[f32], w: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [f32]) -> Vec<f32> {
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

/// cos and sin of each position's rotary angles, one row of head_dim / 2 per position, computed as the
/// composed-op path computes them.
pub(super) fn rope_tables(
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

/// Runs `f` with the elements of `tensors` borrowed in place, by name (read-locked for the call).
/// Fails when one is not a contiguous f32 CPU tensor.
pub fn with_params<'t, R, E: From<ModelError>>(
    tensors: impl IntoIterator<Item = (&'t str, &'t candle_core::Tensor)>,
    f: impl FnOnce(&Params) -> std::result::Result<R, E>,
) -> std::result::Result<R, E> {
    let guards: Vec<_> = tensors
        .into_iter()
        .map(|(name, t)| (name, t.storage_and_layout()))
        .collect();
    let mut params = Params::new();
    for (name, (storage, layout)) in &guards {
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &**storage else {
            return Err(ModelError::Invalid(format!(
                "the CPU kernels need f32 CPU tensors; `{name}` is not"
            ))
            .into());
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            return Err(ModelError::Invalid(format!("`{name}` is not contiguous")).into());
        };
        params.insert(name, &data[a..b]);
    }
    f(&params)
}

/// Teacher-forced log-probs of tokens `from..s` of each row of a left-padded (b, s) batch under
/// `softmax(scale · logits)`, as (b · (s − from)) values in row order, with the tape for `backward`.
pub fn forward(
    cfg: &ModelConfig,
    p: &Params,
    ids: &[u32],
    b: usize,
    pad: &[usize],
    from: usize,
    scale: f32,
) -> Result<(Vec<f32>, Tape)> {
    let s = ids.len() / b.max(1);
    if from == 0 || from >= s || pad.len() != b || ids.len() != b * s || pad.iter().any(|&p| p > s)
    {
        return Err(ModelError::Invalid(format!(
            "fused forward: {b} rows of {s} tokens, {} pads, from {from}",
            pad.len()
        )));
    }
    // Positions are counted from each row's first real token.
    let positions: Vec<usize> = (0..b)
        .flat_map(|r| (0..s).map(move |t| t.saturating_sub(pad[r])))
        .collect();
    let jobs: Vec<AttnJob> = (0..b)
        .filter(|&r| pad[r] < s)
        .map(|r| AttnJob {
            q0: r * s + pad[r],
            n: s - pad[r],
            p0: 0,
            np: 0,
        })
        .collect();
    let units = (0..jobs.len()).map(|j| j..j + 1).collect();
    let n = s - from;
    let mut sel = Vec::with_capacity(b * n);
    let mut targets = Vec::with_capacity(b * n);
    for r in 0..b {
        for t in from - 1..s - 1 {
            sel.push(r * s + t);
            targets.push(ids[r * s + t + 1]);
        }
    }
    forward_core(
        cfg, p, ids, &positions, jobs, units, sel, targets, None, scale,
    )
}

/// Like [`forward`] for GRPO groups, with each prompt computed once and attended to by all of its
/// completions (instead of once per completion in a padded batch): the same numbers with far fewer
/// tokens when prompts are long. The log-probs come back as (completions × `c`), each completion's
/// right-aligned in its row (columns before it are 0), in the groups' order: the layout `forward`
/// gives for the left-padded rows prompt ++ completion with `from = width − c`.
pub fn forward_shared(
    cfg: &ModelConfig,
    p: &Params,
    groups: &[SharedGroup],
    c: usize,
    scale: f32,
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
        p,
        &ids,
        &positions,
        jobs,
        units,
        sel,
        targets,
        Some((slots, row * c)),
        scale,
    )
}

#[allow(clippy::too_many_arguments)]
fn forward_core(
    cfg: &ModelConfig,
    p: &Params,
    ids: &[u32],
    positions: &[usize],
    jobs: Vec<AttnJob>,
    units: Vec<std::ops::Range<usize>>,
    sel: Vec<usize>,
    targets: Vec<u32>,
    slots: Option<(Vec<usize>, usize)>,
    scale: f32,
) -> Result<(Vec<f32>, Tape)> {
    let d = Dims::of(cfg);
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= d.vocab) {
        return Err(ModelError::Invalid(format!(
            "token id {bad} is outside the vocabulary of {}",
            d.vocab
        )));
    }
    let t_all = ids.len();
    let (h, nh, nkv, hd) = (d.h, d.nh, d.nkv, d.hd);
    let (cos, sin) = rope_tables(cfg, positions.iter().copied());
    let embed = get(p, "model.embed_tokens.weight")?;
    let mut x = vec![0f32; t_all * h];
    for (row, &id) in x.chunks_mut(h).zip(ids) {
        row.copy_from_slice(&embed[id as usize * h..(id as usize + 1) * h]);
    }
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let name = |n: &str| format!("model.layers.{l}.{n}");
        let w = |n: &str| get(p, &name(n));
        // The projection `name` (its weight, and its bias when `biased`) of every token of `x`.
        let proj = |x: &[f32], name: &str, biased: bool, out: usize| -> Result<Vec<f32>> {
            let bias = if biased {
                Some(w(&format!("{name}.bias"))?)
            } else {
                None
            };
            Ok(linear(x, t_all, w(&format!("{name}.weight"))?, bias, out))
        };
        let (h1, rstd1) = rms(&x, w("input_layernorm.weight")?, d.eps);
        let mut q = proj(&h1, "self_attn.q_proj", cfg.qkv_bias, nh * hd)?;
        let mut k = proj(&h1, "self_attn.k_proj", cfg.qkv_bias, nkv * hd)?;
        let v = proj(&h1, "self_attn.v_proj", cfg.qkv_bias, nkv * hd)?;
        let (mut q_raw, mut k_raw, mut rstd_q, mut rstd_k) = (vec![], vec![], vec![], vec![]);
        if cfg.qk_norm {
            let (qn, rq) = rms(&q, w("self_attn.q_norm.weight")?, d.eps);
            let (kn, rk) = rms(&k, w("self_attn.k_norm.weight")?, d.eps);
            q_raw = std::mem::replace(&mut q, qn);
            k_raw = std::mem::replace(&mut k, kn);
            (rstd_q, rstd_k) = (rq, rk);
        }
        rope(&mut q, nh, hd, &cos, &sin, 1.0);
        rope(&mut k, nkv, hd, &cos, &sin, 1.0);
        let (probs, att) = attention(&d, &q, &k, &v, t_all, &jobs);
        let mut x_mid = proj(&att, "self_attn.o_proj", cfg.o_bias, h)?;
        add_into(&mut x_mid, &x, h);
        let (h2, rstd2) = rms(&x_mid, w("post_attention_layernorm.weight")?, d.eps);
        let g = proj(&h2, "mlp.gate_proj", cfg.mlp_bias, d.inter)?;
        let u = proj(&h2, "mlp.up_proj", cfg.mlp_bias, d.inter)?;
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
        let mut x_out = proj(&a, "mlp.down_proj", cfg.mlp_bias, h)?;
        add_into(&mut x_out, &x_mid, h);
        let x_in = std::mem::replace(&mut x, x_out);
        layers.push(LayerTape {
            x: x_in,
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
        });
    }
    // Only the scored positions go through the final norm and the head.
    let mut xf = vec![0f32; sel.len() * h];
    for (row, &t) in xf.chunks_mut(h).zip(&sel) {
        row.copy_from_slice(&x[t * h..(t + 1) * h]);
    }
    let (hs, rstd_f) = rms(&xf, get(p, "model.norm.weight")?, d.eps);
    let head = lm_head(cfg, p)?;
    // The logits are overwritten by exp(scale · logit − max), which the backward pass reuses.
    let mut exps = logits_buffer(sel.len() * d.vocab);
    gemm(
        sel.len(),
        d.vocab,
        h,
        MatRef::rows(&hs, h),
        MatRef::rows_t(head, h),
        &mut exps,
        d.vocab,
        false,
        true,
    );
    let rows: Vec<(f32, f32)> = exps
        .par_chunks_mut(d.vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            let target = row[t as usize];
            let (max, total) = exp_shifted(row, scale);
            (target * scale - max - total.ln(), 1.0 / total)
        })
        .collect();
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
            sel,
            targets,
            xf,
            rstd_f,
            hs,
            exps,
            inv_sums,
        },
    ))
}

/// The head's logits (positions × vocabulary), the largest buffer of a step, is kept from one
/// step's backward pass to the next step's forward pass, so that its pages are not handed back to
/// the system and faulted in (zeroed) again every step.
static LOGITS: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

/// A buffer of `len` values for the logits, with unspecified contents (the head's product
/// overwrites them).
fn logits_buffer(len: usize) -> Vec<f32> {
    let mut buf = std::mem::take(&mut *LOGITS.lock().unwrap_or_else(|e| e.into_inner()));
    buf.resize(len, 0.0);
    buf
}

/// Keeps `buf` for the next step's logits (the larger one, when two passes run at once).
fn keep_logits_buffer(buf: Vec<f32>) {
    let mut kept = LOGITS.lock().unwrap_or_else(|e| e.into_inner());
    if buf.capacity() > kept.capacity() {
        *kept = buf;
    }
}

pub(super) fn lm_head<'a>(cfg: &ModelConfig, p: &Params<'a>) -> Result<&'a [f32]> {
    if cfg.tie_word_embeddings {
        get(p, "model.embed_tokens.weight")
    } else {
        get(p, "lm_head.weight")
    }
}

/// Attention with grouped-query heads for each job: its queries see the job's prompt (if any) and,
/// causally, themselves. Returns the probabilities per (job, head), (n × (np + n)), and the output
/// (tokens, heads · head_dim), zero at tokens no job queries from (padding).
fn attention(
    d: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t_all: usize,
    jobs: &[AttnJob],
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let (nh, nkv, hd) = (d.nh, d.nkv, d.hd);
    let (qw, kw) = (nh * hd, nkv * hd);
    let n_rep = nh / nkv;
    let inv_sqrt = 1.0 / (hd as f32).sqrt();
    let mut att = vec![0f32; t_all * qw];
    let out = Shared(att.as_mut_ptr());
    let probs = (0..jobs.len() * nh)
        .into_par_iter()
        .map(|jh| {
            let (job, head) = (jobs[jh / nh], jh % nh);
            let g = head / n_rep;
            let (n, np) = (job.n, job.np);
            let w = np + n;
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
            let dst = out.at(job.q0 * qw + head * hd);
            for (i, (t0, len, col)) in job.segments().enumerate() {
                let values = MatRef::rows(&v[t0 * kw + g * hd..], kw);
                // SAFETY: this job alone writes head `head` of its query tokens.
                unsafe {
                    let probs = MatRef::rows(&sc[col..], w);
                    gemm_into(n, hd, len, probs, values, dst, qw, i > 0, false)
                };
            }
            sc
        })
        .collect();
    (probs, att)
}

/// Gradients of every parameter, by published name, from the gradient of the log-probs `forward`
/// returned (same order and length).
/// The tape is consumed: its buffers are reused for the gradients.
pub fn backward(cfg: &ModelConfig, p: &Params, mut tape: Tape, dlp: &[f32]) -> Result<FlatGrads> {
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
    let mut grads = FlatGrads::new();
    // Head: d logit_j = dlp · scale · (δ(j = target) − softmax_j).
    let scale = tape.scale;
    // Computed in place of the stored exponentials.
    let mut dlogits = std::mem::take(&mut tape.exps);
    dlogits.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
        let g = dlp[i];
        let c = -g * scale * tape.inv_sums[i];
        o.iter_mut().for_each(|x| *x *= c);
        o[tape.targets[i] as usize] += g * scale;
    });
    let nsel = tape.sel.len();
    let head = lm_head(cfg, p)?;
    let mut dhs = vec![0f32; nsel * h];
    let mut head_grads = FlatGrads::new();
    linear_back(
        &dlogits,
        &tape.hs,
        nsel,
        head,
        v,
        &mut dhs,
        false,
        false,
        &mut head_grads,
        "head",
    );
    keep_logits_buffer(dlogits);
    let d_head = head_grads.remove("head.weight").expect("weight gradient");
    let mut dxf = vec![0f32; nsel * h];
    let norm_w = get(p, "model.norm.weight")?;
    grads.insert(
        "model.norm.weight".into(),
        rms_back(&tape.xf, norm_w, &tape.rstd_f, &dhs, &mut dxf),
    );
    let mut dx = vec![0f32; t_all * h];
    // A position scored more than once (a shared prompt's last token) sums its gradients.
    for (row, &t) in dxf.chunks(h).zip(&tape.sel) {
        dx[t * h..(t + 1) * h]
            .iter_mut()
            .zip(row)
            .for_each(|(d, g)| *d += g);
    }
    for l in (0..cfg.num_hidden_layers).rev() {
        let lt = &tape.layers[l];
        let prefix = format!("model.layers.{l}");
        let w = |n: &str| get(p, &format!("{prefix}.{n}"));
        // MLP: x_out = x_mid + down(silu(gate(h2)) · up(h2)).
        let mut da = vec![0f32; t_all * d.inter];
        linear_back(
            &dx,
            &lt.a,
            t_all,
            w("mlp.down_proj.weight")?,
            h,
            &mut da,
            false,
            cfg.mlp_bias,
            &mut grads,
            &format!("{prefix}.mlp.down_proj"),
        );
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
        linear_back(
            &dg,
            &lt.h2,
            t_all,
            w("mlp.gate_proj.weight")?,
            inter,
            &mut dh2,
            false,
            cfg.mlp_bias,
            &mut grads,
            &format!("{prefix}.mlp.gate_proj"),
        );
        linear_back(
            &du,
            &lt.h2,
            t_all,
            w("mlp.up_proj.weight")?,
            inter,
            &mut dh2,
            true,
            cfg.mlp_bias,
            &mut grads,
            &format!("{prefix}.mlp.up_proj"),
        );
        drop((dg, du));
        let ln2 = w("post_attention_layernorm.weight")?;
        grads.insert(
            format!("{prefix}.post_attention_layernorm.weight"),
            rms_back(&lt.x_mid, ln2, &lt.rstd2, &dh2, &mut dx),
        );
        // Attention: x_mid = x + o(attention(rope(q(h1)), rope(k(h1)), v(h1))).
        let mut datt = vec![0f32; t_all * nh * hd];
        linear_back(
            &dx,
            &lt.att,
            t_all,
            w("self_attn.o_proj.weight")?,
            h,
            &mut datt,
            false,
            cfg.o_bias,
            &mut grads,
            &format!("{prefix}.self_attn.o_proj"),
        );
        let (mut dq, mut dk, dv) = attention_back(&d, lt, &datt, t_all, &tape.jobs, &tape.units);
        rope(&mut dq, nh, hd, &tape.cos, &tape.sin, -1.0);
        rope(&mut dk, nkv, hd, &tape.cos, &tape.sin, -1.0);
        if cfg.qk_norm {
            let (qn, kn) = (w("self_attn.q_norm.weight")?, w("self_attn.k_norm.weight")?);
            let mut dq_raw = vec![0f32; dq.len()];
            let mut dk_raw = vec![0f32; dk.len()];
            grads.insert(
                format!("{prefix}.self_attn.q_norm.weight"),
                rms_back(&lt.q_raw, qn, &lt.rstd_q, &dq, &mut dq_raw),
            );
            grads.insert(
                format!("{prefix}.self_attn.k_norm.weight"),
                rms_back(&lt.k_raw, kn, &lt.rstd_k, &dk, &mut dk_raw),
            );
            (dq, dk) = (dq_raw, dk_raw);
        }
        let mut dh1 = vec![0f32; t_all * h];
        for (i, (dy, proj, out)) in [
            (&dq, "q_proj", nh * hd),
            (&dk, "k_proj", nkv * hd),
            (&dv, "v_proj", nkv * hd),
        ]
        .into_iter()
        .enumerate()
        {
            linear_back(
                dy,
                &lt.h1,
                t_all,
                w(&format!("self_attn.{proj}.weight"))?,
                out,
                &mut dh1,
                i > 0,
                cfg.qkv_bias,
                &mut grads,
                &format!("{prefix}.self_attn.{proj}"),
            );
        }
        let ln1 = w("input_layernorm.weight")?;
        grads.insert(
            format!("{prefix}.input_layernorm.weight"),
            rms_back(&lt.x, ln1, &lt.rstd1, &dh1, &mut dx),
        );
    }
    // A tied head's gradient is the embedding's starting point (no separate zeroed table to add).
    let mut d_embed = if cfg.tie_word_embeddings {
        d_head
    } else {
        grads.insert("lm_head.weight".into(), d_head);
        vec![0f32; v * h]
    };
    for (row, &id) in dx.chunks(h).zip(&tape.ids) {
        let dst = &mut d_embed[id as usize * h..(id as usize + 1) * h];
        dst.iter_mut().zip(row).for_each(|(d, g)| *d += g);
    }
    grads.insert("model.embed_tokens.weight".into(), d_embed);
    Ok(grads)
}

/// Backward of `attention`: gradients of the post-rotary q and k and of v.
fn attention_back(
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
                let probs = &lt.probs[j * nh + head];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_agrees_with_the_standard_library() {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.043).collect();
        xs.extend([0.0, -0.0, 1e-8, -1e-8, 88.0, -87.0, -200.0]);
        let mut got = xs.clone();
        exp_in_place(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = x.clamp(-87.0, 88.0).exp();
            assert!(
                (g - want).abs() <= 4.0 * f32::EPSILON * want,
                "exp({x}) = {g}, want {want}"
            );
        }
    }
}
