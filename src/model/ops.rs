//! Fused CPU kernels with hand-written backward passes, for the hot spots of training.
//!
//! `log_softmax(scale · logits)[target]` over a large vocabulary is the costliest part of a training
//! step when written with composed ops (max, sub, exp, sum, log, gather and their backward each make a
//! vocabulary-sized pass and allocation). Fused, the forward is one pass per row and the backward one
//! more. On devices other than the CPU the composed ops are used.

use candle_core::{CpuStorage, CustomOp1, D, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// log p(target_i) under `softmax(scale · logits_i)` for each row i.
///
/// logits: (n, vocab); targets: n ids; returns (n,), differentiable with respect to `logits`.
pub fn target_log_softmax(logits: &Tensor, targets: &[u32], scale: f64) -> Result<Tensor> {
    let (n, _v) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!(
            "target_log_softmax: {} rows but {} targets",
            n,
            targets.len()
        );
    }
    if !logits.device().is_cpu() {
        let scaled = if scale != 1.0 {
            (logits * scale)?
        } else {
            logits.clone()
        };
        let lp = candle_nn::ops::log_softmax(&scaled, D::Minus1)?;
        let idx = Tensor::from_slice(targets, (n, 1), logits.device())?;
        return lp.gather(&idx, 1)?.squeeze(1);
    }
    logits.contiguous()?.apply_op1(TargetLogSoftmax {
        targets: targets.to_vec(),
        scale: scale as f32,
    })
}

struct TargetLogSoftmax {
    targets: Vec<u32>,
    scale: f32,
}

fn rows<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<(&'a [f32], usize)> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("target_log_softmax expects f32 logits");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("target_log_softmax expects contiguous logits");
    };
    let v = *layout.dims().last().unwrap_or(&1);
    Ok((&data[start..end], v))
}

/// (max, log Σ exp(scale·x − max)) of one row, max taken of scale·x.
fn log_norm(row: &[f32], scale: f32) -> (f32, f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
    let sum: f32 = row.iter().map(|&x| (x * scale - max).exp()).sum();
    (max, sum.ln())
}

impl CustomOp1 for TargetLogSoftmax {
    fn name(&self) -> &'static str {
        "target-log-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (data, v) = rows(storage, layout)?;
        let out: Vec<f32> = data
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| {
                let (max, lse) = log_norm(row, self.scale);
                row[t as usize] * self.scale - max - lse
            })
            .collect();
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    /// d logp_i / d x_ij = scale · (δ(j = t_i) − softmax(scale · x_i)_j)
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g: Vec<f32> = grad_res.to_vec1()?;
        let grad = arg.apply_op1_no_bwd(&TargetLogSoftmaxGrad {
            targets: &self.targets,
            grad: &g,
            scale: self.scale,
        })?;
        Ok(Some(grad))
    }
}

struct TargetLogSoftmaxGrad<'a> {
    targets: &'a [u32],
    grad: &'a [f32],
    scale: f32,
}

impl CustomOp1 for TargetLogSoftmaxGrad<'_> {
    fn name(&self) -> &'static str {
        "target-log-softmax-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (data, v) = rows(storage, layout)?;
        let mut out = vec![0f32; data.len()];
        out.par_chunks_mut(v)
            .zip(data.par_chunks(v))
            .zip(self.targets.par_iter().zip(self.grad.par_iter()))
            .for_each(|((o, row), (&t, &g))| {
                if g == 0.0 {
                    return;
                }
                let (max, lse) = log_norm(row, self.scale);
                let k = -g * self.scale;
                for (o, &x) in o.iter_mut().zip(row) {
                    *o = k * (x * self.scale - max - lse).exp();
                }
                o[t as usize] += g * self.scale;
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_composed_ops_in_value_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (5, 33), &dev).unwrap()).unwrap();
        let targets = [0u32, 7, 32, 3, 3];
        let upstream = Tensor::new(&[1.0f32, -0.5, 2.0, 0.0, 0.3], &dev).unwrap();
        for scale in [1.0, 1.25] {
            let fused = target_log_softmax(x.as_tensor(), &targets, scale).unwrap();
            let lp =
                candle_nn::ops::log_softmax(&(x.as_tensor() * scale).unwrap(), D::Minus1).unwrap();
            let idx = Tensor::new(&targets, &dev).unwrap().unsqueeze(1).unwrap();
            let composed = lp.gather(&idx, 1).unwrap().squeeze(1).unwrap();
            let a: Vec<f32> = fused.to_vec1().unwrap();
            let b: Vec<f32> = composed.to_vec1().unwrap();
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() < 1e-5, "{p} vs {q}");
            }
            let ga = (fused * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gb = (composed * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let ga: Vec<Vec<f32>> = ga.get(x.as_tensor()).unwrap().to_vec2().unwrap();
            let gb: Vec<Vec<f32>> = gb.get(x.as_tensor()).unwrap().to_vec2().unwrap();
            for (r, s) in ga.iter().zip(&gb) {
                for (p, q) in r.iter().zip(s) {
                    assert!((p - q).abs() < 1e-5, "{p} vs {q}");
                }
            }
        }
    }
}

/// The largest row count the few-row kernel (`small_matmul_t_slices`) is used for.
pub const SMALL_M: usize = 16;

/// `x · wᵀ` when x has few rows (decoding: one row per sequence of the batch), on row-major slices:
/// x (m, k), w (n, k); returns (m, n). General matrix-multiply kernels pack `w` on every call, which
/// dominates when m is small; here each output is a dot product of two contiguous rows, computed in
/// parallel over chunks of `w`'s rows.
pub fn small_matmul_t_slices(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    // Each task owns a block of `w`'s rows, that is a block of output columns in every row.
    let block = 64;
    let mut out = vec![0f32; m * n];
    let dst = super::fused::Shared(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let zeros = vec![0f32; k];
        (0..n.div_ceil(block)).into_par_iter().for_each(|c| {
            let (j0, rows) = (c * block, block.min(n - c * block));
            let w = &w[j0 * k..(j0 + rows) * k];
            // SAFETY: the CPU has AVX-512F; x is (m, k), w (rows, k); this task alone writes
            // columns j0 .. j0 + rows of the (m, n) output.
            unsafe { small_block_avx512(x, m, k, w, rows, dst.at(j0), n, &zeros) };
        });
        return out;
    }
    (0..n.div_ceil(block)).into_par_iter().for_each(|c| {
        let (j0, rows) = (c * block, block.min(n - c * block));
        for j in 0..rows {
            let row = &w[(j0 + j) * k..(j0 + j + 1) * k];
            for i in 0..m {
                // SAFETY: this task alone writes columns j0 .. j0 + rows.
                unsafe { *dst.at(i * n + j0 + j) = dot(&x[i * k..(i + 1) * k], row) };
            }
        }
    });
    out
}

/// Pointers to rows `first .. first + 4` of a row-major matrix with `k` columns; rows at or past `end`
/// point at `zeros`.
#[cfg(target_arch = "x86_64")]
fn four_rows(m: &[f32], first: usize, end: usize, k: usize, zeros: &[f32]) -> [*const f32; 4] {
    std::array::from_fn(|r| {
        if first + r < end {
            m[(first + r) * k..].as_ptr()
        } else {
            zeros.as_ptr()
        }
    })
}

/// `out[i, j] = x[i] · w[j]` (out has row stride `ldo`) for `rows` rows of w, four rows of w against
/// four rows of x at a time, so each loaded vector feeds four multiply-adds; x is walked in tiles of
/// 16 rows that stay in the L1 cache while every row of w passes. Every output is the same 16-lane
/// sum over k whatever m is, so a row's result does not depend on the other rows. Rows past the end
/// read `zeros`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_block_avx512(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    rows: usize,
    out: *mut f32,
    ldo: usize,
    zeros: &[f32],
) {
    use std::arch::x86_64::*;
    const TILE: usize = 16;
    let mut i0 = 0;
    while i0 < m {
        let i_end = (i0 + TILE).min(m);
        let mut j = 0;
        while j < rows {
            let wp = four_rows(w, j, rows, k, zeros);
            // The next four rows of w, fetched into the cache while these are multiplied (the
            // hardware prefetcher learns each page's streams too late for rows this short).
            let next = (j + 4 < rows).then(|| w.as_ptr().wrapping_add((j + 4) * k));
            let mut i = i0;
            while i < i_end {
                let xp = four_rows(x, i, i_end, k, zeros);
                // SAFETY: every pointer addresses k floats; the masked loads stop at k; the
                // writes stay inside rows i .. i + 4 < m and columns j .. j + 4 < rows of out.
                unsafe {
                    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
                    let mut p = 0;
                    while p < k {
                        let mask: __mmask16 = if k - p >= 16 {
                            0xFFFF
                        } else {
                            (1u16 << (k - p)) - 1
                        };
                        if let (Some(next), true) = (next, i == i0) {
                            // Four cache lines of the next rows per 16 columns of these.
                            for line in 0..4 {
                                let at = next.wrapping_add(4 * p + 16 * line);
                                _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
                            }
                        }
                        let xv: [__m512; 4] =
                            std::array::from_fn(|a| _mm512_maskz_loadu_ps(mask, xp[a].add(p)));
                        for b in 0..4 {
                            let wv = _mm512_maskz_loadu_ps(mask, wp[b].add(p));
                            for a in 0..4 {
                                acc[b][a] = _mm512_fmadd_ps(xv[a], wv, acc[b][a]);
                            }
                        }
                        p += 16;
                    }
                    // Lane 4a + b of `sums` is out[i + a, j + b]: four contiguous outputs per row.
                    let sums = reduce_16(acc);
                    let mut lanes = [0f32; 16];
                    _mm512_storeu_ps(lanes.as_mut_ptr(), sums);
                    let cols = 4.min(rows - j);
                    for a in 0..4.min(i_end - i) {
                        let dst = std::slice::from_raw_parts_mut(out.add((i + a) * ldo + j), cols);
                        dst.copy_from_slice(&lanes[4 * a..4 * a + cols]);
                    }
                }
                i += 4;
            }
            j += 4;
        }
        i0 = i_end;
    }
}

/// The 16 lane sums of `acc[b][a]` in one vector, lane 4a + b. Each sum is the same tree as
/// `_mm512_reduce_add_ps` (lanes i + 8, then i + 4, i + 2, i + 1 added pairwise), so every output's
/// arithmetic is the same whatever its place, but the 16 reductions share their shuffles and adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn reduce_16(acc: [[std::arch::x86_64::__m512; 4]; 4]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let v: [__m512; 16] = std::array::from_fn(|n| acc[n / 4][n % 4]);
    // Pairs of vectors → one, halving the lanes per sum: 128-bit quarters first, then within them.
    let l1: [__m512; 8] = std::array::from_fn(|n| {
        let (x, y) = (v[2 * n], v[2 * n + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y),
        )
    });
    let l2: [__m512; 4] = std::array::from_fn(|n| {
        let (x, y) = (l1[2 * n], l1[2 * n + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
        )
    });
    let l3: [__m512; 2] = std::array::from_fn(|n| {
        let (x, y) = (l2[2 * n], l2[2 * n + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(x, y),
            _mm512_shuffle_ps::<0b11_10_11_10>(x, y),
        )
    });
    _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(l3[0], l3[1]),
        _mm512_shuffle_ps::<0b11_01_11_01>(l3[0], l3[1]),
    )
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("matmul_t expects f32")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("matmul_t expects contiguous inputs")
    };
    Ok(&data[a..b])
}

#[inline]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i < n − 15 (or n − 7), inside both slices.
    unsafe {
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        while i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut s: f32 = lanes.iter().sum();
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }
}

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

/// Σ x, kept in 16 running partial sums: one running sum is a chain of dependent additions, which
/// neither vectorizes nor overlaps.
pub(super) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    fold16(acc, |a, b| a + b) + tail
}

/// Σ a·b·c over three slices of one length, in 16 partial sums (see `sum`).
pub(super) fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb, cc) = (a.chunks_exact(16), b.chunks_exact(16), c.chunks_exact(16));
    let tail: f32 = (ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder()))
    .map(|((x, y), z)| x * y * z)
    .sum();
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i] * z[i];
        }
    }
    fold16(acc, |a, b| a + b) + tail
}

/// max of scale·x (−∞ for an empty slice), in 16 partial maxima (see `sum`).
pub(super) fn max_scaled(x: &[f32], scale: f32) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = (chunks.remainder().iter()).fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.max(v * scale);
        }
    }
    fold16(acc, f32::max).max(tail)
}

/// Combines 16 partial results pairwise.
fn fold16(mut acc: [f32; 16], f: impl Fn(f32, f32) -> f32) -> f32 {
    for w in [8, 4, 2, 1] {
        for i in 0..w {
            acc[i] = f(acc[i], acc[i + w]);
        }
    }
    acc[0]
}

#[cfg(test)]
mod small_tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn small_matmul_matches_matmul() {
        for (m, k, n) in [(1, 7, 3), (8, 128, 384), (5, 33, 130)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let (xs, ws): (Vec<f32>, Vec<f32>) = (
                x.flatten_all().unwrap().to_vec1().unwrap(),
                w.flatten_all().unwrap().to_vec1().unwrap(),
            );
            let flat = small_matmul_t_slices(&xs, m, k, &ws, n);
            let a: Vec<&[f32]> = flat.chunks(n).collect();
            let b: Vec<Vec<f32>> = x.matmul(&w.t().unwrap()).unwrap().to_vec2().unwrap();
            for (r, s) in a.iter().zip(&b) {
                for (p, q) in r.iter().zip(s) {
                    assert!((p - q).abs() < 1e-4 * (1.0 + q.abs()), "{p} vs {q}");
                }
            }
        }
    }
}

/// `x · wᵀ` for inference: x: (m, k), w: (n, k), contiguous f32 on the CPU; returns (m, n) without
/// gradient. Few rows take the kernel that does not pack `w`, more the crate's `gemm`.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &MatmulT)
}

struct MatmulT;

impl candle_core::CustomOp2 for MatmulT {
    fn name(&self) -> &'static str {
        "matmul-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("matmul_t: x is ({m}, {k}) but w is ({n}, {k2})");
        }
        let (x, w) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let out = super::fused::infer_linear(x, m, w, None, n);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}
