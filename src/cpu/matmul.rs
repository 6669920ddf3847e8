//! Inference matrix products `x · wᵀ`: the blocked GEMM for many rows, and a few-row kernel for
//! decoding that reads the weights in place (prefetching the next rows) instead of packing them. Each
//! computes a row the same way whatever the number of rows, which keeps sampling batch-invariant when
//! the kernel is chosen by the kind of step (see `sample::step`). Also the candle custom op the
//! decoder's CPU inference path calls.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::few_rows::small_block_avx512;
use super::gemm::{MatRef, gemm_new};
use super::vector::{Shared, add_bias, dot};

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

/// The largest row count the few-row kernel (`small_matmul_t_slices`) is used for.
pub const SMALL_M: usize = 16;

/// One `linear`'s (weight, bias, out).
pub(super) type LinearWeight<'a> = (&'a [f32], Option<&'a [f32]>, usize);

/// `infer_linear_with` for several weights applied to the same `x` (a layer's q, k and v, or gate
/// and up): with [`Kernel::Few`] their blocks of rows are one parallel job, so the threads are
/// started once and idle once for all of them. Each output is the one `infer_linear_with` gives, to
/// the bit.
pub(super) fn infer_linears_with(
    kernel: Kernel,
    x: &[f32],
    rows: usize,
    ws: &[LinearWeight],
) -> Vec<Vec<f32>> {
    if kernel == Kernel::Many {
        return ws
            .iter()
            .map(|&(w, bias, out)| linear(x, rows, w, bias, out))
            .collect();
    }
    let k = x.len() / rows.max(1);
    let mats: Vec<(&[f32], usize)> = ws.iter().map(|&(w, _, n)| (w, n)).collect();
    let mut ys = small_matmul_t_many(x, rows, k, &mats);
    for (y, &(_, bias, _)) in ys.iter_mut().zip(ws) {
        if let Some(b) = bias {
            add_bias(y, b);
        }
    }
    ys
}

/// `x · wᵀ` when x has few rows (decoding: one row per sequence of the batch), on row-major slices:
/// x (m, k), w (n, k); returns (m, n). General matrix-multiply kernels pack `w` on every call, which
/// dominates when m is small; here each output is a dot product of two contiguous rows, computed in
/// parallel over chunks of `w`'s rows.
pub fn small_matmul_t_slices(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    small_matmul_t_many(x, m, k, &[(w, n)]).remove(0)
}

/// [`small_matmul_t_slices`] for several weights `(w, n)` against the same x, in one parallel job
/// over all their blocks of rows.
fn small_matmul_t_many(x: &[f32], m: usize, k: usize, ws: &[(&[f32], usize)]) -> Vec<Vec<f32>> {
    // Each task owns a block of one weight's rows, that is a block of its output's columns.
    let block = 64;
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|&(_, n)| vec![0f32; m * n]).collect();
    let dsts: Vec<Shared> = outs.iter_mut().map(|o| Shared(o.as_mut_ptr())).collect();
    let tasks: Vec<(usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(wi, &(_, n))| (0..n.div_ceil(block)).map(move |c| (wi, c)))
        .collect();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let zeros = vec![0f32; k];
        tasks.into_par_iter().for_each(|(wi, c)| {
            let (w, n) = ws[wi];
            let (j0, rows) = (c * block, block.min(n - c * block));
            let w = &w[j0 * k..(j0 + rows) * k];
            // SAFETY: the CPU has AVX-512F; x is (m, k), w (rows, k); this task alone writes
            // columns j0 .. j0 + rows of weight wi's (m, n) output.
            unsafe { small_block_avx512(x, m, k, w, rows, dsts[wi].at(j0), n, &zeros) };
        });
        return outs;
    }
    tasks.into_par_iter().for_each(|(wi, c)| {
        let (w, n) = ws[wi];
        let (j0, rows) = (c * block, block.min(n - c * block));
        for j in 0..rows {
            let row = &w[(j0 + j) * k..(j0 + j + 1) * k];
            for i in 0..m {
                // SAFETY: this task alone writes columns j0 .. j0 + rows of weight wi's output.
                unsafe { *dsts[wi].at(i * n + j0 + j) = dot(&x[i * k..(i + 1) * k], row) };
            }
        }
    });
    outs
}

pub(super) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("matmul_t expects f32")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("matmul_t expects contiguous inputs")
    };
    Ok(&data[a..b])
}

/// `x · wᵀ` for inference: x: (m, k), w: (n, k), contiguous f32 on the CPU; returns (m, n) without
/// gradient. Few rows take the kernel that does not pack `w`, more the crate's `gemm`.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &MatmulT)
}

pub(super) struct MatmulT;

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
        let out = infer_linear(x, m, w, None, n);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
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

    /// Several weights in one parallel job give each weight's own outputs, bias included, to the bit.
    #[test]
    fn several_weights_in_one_job_equal_one_call_each() {
        let k = 612;
        let t = |r: usize, c: usize| -> Vec<f32> {
            let t = Tensor::randn(0f32, 1.0, (r, c), &Device::Cpu).unwrap();
            t.flatten_all().unwrap().to_vec1().unwrap()
        };
        let (w1, w2, w3, b2) = (t(70, k), t(130, k), t(5, k), t(1, 130));
        let ws: Vec<LinearWeight> = vec![(&w1, None, 70), (&w2, Some(&b2), 130), (&w3, None, 5)];
        for (kernel, m) in [(Kernel::Few, 3), (Kernel::Few, 8), (Kernel::Many, 8)] {
            let x = t(m, k);
            let together = infer_linears_with(kernel, &x, m, &ws);
            assert_eq!(together.len(), 3);
            for (y, &(w, bias, n)) in together.iter().zip(&ws) {
                let alone = infer_linear_with(kernel, &x, m, w, bias, n);
                let same = y
                    .iter()
                    .zip(&alone)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same && y.len() == alone.len(),
                    "{kernel:?}, {m} rows, {n} outputs"
                );
            }
        }
    }

    /// A row's outputs are the same bits whatever rows share the call: one row alone and every count
    /// up to sixteen rows (one or two tiles of x, each of one or two passes of four rows), with a
    /// masked tail of k and a last group of w's rows cut short.
    #[test]
    fn a_rows_outputs_do_not_depend_on_the_batch() {
        let (k, n) = (1061, 70);
        let x = Tensor::randn(0f32, 1.0, (16, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let ws: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let alone: Vec<Vec<f32>> = (0..16)
            .map(|i| small_matmul_t_slices(&xs[i * k..(i + 1) * k], 1, k, &ws, n))
            .collect();
        for m in 2..=16 {
            let out = small_matmul_t_slices(&xs[..m * k], m, k, &ws, n);
            for (i, row) in out.chunks(n).enumerate() {
                let same = row
                    .iter()
                    .zip(&alone[i])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "row {i} of {m} differs from the row alone");
            }
        }
    }
}
