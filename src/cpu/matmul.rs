//! Inference matrix products `x · wᵀ`: the blocked GEMM for many rows, and a few-row kernel for
//! decoding that reads the weights in place (prefetching the next rows) instead of packing them. Each
//! computes a row the same way whatever the number of rows, which keeps sampling batch-invariant when
//! the kernel is chosen by the kind of step (see `sample::step`). Also the candle custom op the
//! decoder's CPU inference path calls.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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

/// Pointers to rows `first .. first + N` of a row-major matrix with `k` columns; rows at or past `end`
/// point at `zeros`.
#[cfg(target_arch = "x86_64")]
fn row_ptrs<const N: usize>(
    m: &[f32],
    first: usize,
    end: usize,
    k: usize,
    zeros: &[f32],
) -> [*const f32; N] {
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
/// 8 rows that stay in the L1 cache while every row of w passes (a tile of five or more rows goes to
/// [`eight_by_two`]). Every output is the same 16-lane
/// sum over k whatever m is, so a row's result does not depend on the other rows. Rows past the end
/// read `zeros`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn small_block_avx512(
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
    const TILE: usize = 8;
    let mut i0 = 0;
    while i0 < m {
        let i_end = (i0 + TILE).min(m);
        if i_end - i0 > 4 {
            // SAFETY: as for this function; rows i0 .. i_end of x, all rows of w.
            unsafe { eight_by_two(x, i0, i_end, k, w, rows, out, ldo, zeros) };
            i0 = i_end;
            continue;
        }
        let mut j = 0;
        while j < rows {
            let wp = row_ptrs::<4>(w, j, rows, k, zeros);
            // The next four rows of w, fetched into the cache while these are multiplied (the
            // hardware prefetcher learns each page's streams too late for rows this short).
            let next = (j + 4 < rows).then(|| w.as_ptr().wrapping_add((j + 4) * k));
            let mut i = i0;
            while i < i_end {
                let xp = row_ptrs::<4>(x, i, i_end, k, zeros);
                // SAFETY: every pointer addresses k floats; the masked loads stop at k; the
                // writes stay inside rows i .. i + 4 < m and columns j .. j + 4 < rows of out.
                unsafe {
                    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
                    let mut p = 0;
                    while p < k {
                        let mask = lanes_left(k - p);
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

/// Columns of x one pass of [`eight_by_two`] covers: eight rows of them (16 KB) stay in the L1 cache
/// while every row of w passes over them. (Eight whole rows of 1,024 or more floats fill it, and
/// would be read again from L2 for every row of w.)
#[cfg(target_arch = "x86_64")]
const K_BLOCK: usize = 512;

/// [`small_block_avx512`] for a tile of five to eight rows of x (rows `i0 .. i_end`): two rows of w
/// against all of them at a time, so each row of w is read from memory once and used eight times while
/// the next rows stream in. (Four rows of w against four of x would take two passes over the same
/// rows of w, the second from the cache with the memory idle.) k is walked in blocks of [`K_BLOCK`];
/// each pair of w rows carries its unreduced accumulators from one block to the next, so every output
/// is the same fused multiply-adds in the same order as one pass, then the same 16-lane sum and the
/// same reduction as in the four-by-four kernel: the bits do not depend on which runs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn eight_by_two(
    x: &[f32],
    i0: usize,
    i_end: usize,
    k: usize,
    w: &[f32],
    rows: usize,
    out: *mut f32,
    ldo: usize,
    zeros: &[f32],
) {
    use std::arch::x86_64::*;
    let xp = row_ptrs::<8>(x, i0, i_end, k, zeros);
    let pairs = rows.div_ceil(2);
    let mut carry = vec![[[_mm512_setzero_ps(); 8]; 2]; pairs];
    // The block of x's eight rows, interleaved: step s holds row a's 16 columns at `8 s + a`, zeros
    // past k. One pointer addresses all eight at fixed offsets, so the loop keeps its pointers in
    // registers.
    let mut packed = vec![_mm512_setzero_ps(); 8 * K_BLOCK.min(k).div_ceil(16)];
    let mut kb = 0;
    while kb < k {
        let k_end = (kb + K_BLOCK).min(k);
        let steps = (k_end - kb).div_ceil(16);
        // SAFETY: every row pointer addresses k floats; the masked loads stop at k.
        unsafe {
            for s in 0..steps {
                let mask = lanes_left(k - kb - 16 * s);
                for a in 0..8 {
                    packed[8 * s + a] = _mm512_maskz_loadu_ps(mask, xp[a].add(kb + 16 * s));
                }
            }
        }
        // Steps with 16 columns of w left; the last one may be masked.
        let full = (k_end - kb) / 16;
        for (pair, kept) in carry.iter_mut().enumerate() {
            let j = 2 * pair;
            let wp = row_ptrs::<2>(w, j, rows, k, zeros);
            // The same block of the pair after next, fetched while this one is multiplied (see
            // `small_block_avx512`).
            let next = (j + 5 < rows).then(|| w.as_ptr().wrapping_add((j + 4) * k));
            // SAFETY: every pointer addresses k floats; the masked loads stop at k; the writes stay
            // inside rows i0 .. i_end and columns j .. j + 2 < rows of out.
            unsafe {
                let mut acc = *kept;
                let step = |s: usize, wv: [__m512; 2], acc: &mut [[__m512; 8]; 2]| {
                    for a in 0..8 {
                        let xv = packed[8 * s + a];
                        for b in 0..2 {
                            acc[b][a] = _mm512_fmadd_ps(xv, wv[b], acc[b][a]);
                        }
                    }
                };
                for s in 0..full {
                    let p = kb + 16 * s;
                    if let Some(next) = next {
                        for row in 0..2 {
                            let at = next.wrapping_add(row * k + p);
                            _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
                        }
                    }
                    step(
                        s,
                        std::array::from_fn(|b| _mm512_loadu_ps(wp[b].add(p))),
                        &mut acc,
                    );
                }
                if full < steps {
                    let p = kb + 16 * full;
                    let mask = lanes_left(k - p);
                    let wv = std::array::from_fn(|b| _mm512_maskz_loadu_ps(mask, wp[b].add(p)));
                    step(full, wv, &mut acc);
                }
                if k_end < k {
                    *kept = acc;
                    continue;
                }
                // Output (a, b) as lane n = 2a + b: `reduce_16` puts the sum of its
                // acc[n % 4][n / 4] in lane n.
                let grid: [[__m512; 4]; 4] = std::array::from_fn(|bb| {
                    std::array::from_fn(|aa| acc[(4 * aa + bb) % 2][(4 * aa + bb) / 2])
                });
                let mut lanes = [0f32; 16];
                _mm512_storeu_ps(lanes.as_mut_ptr(), reduce_16(grid));
                let cols = 2.min(rows - j);
                for a in 0..i_end - i0 {
                    let dst = std::slice::from_raw_parts_mut(out.add((i0 + a) * ldo + j), cols);
                    dst.copy_from_slice(&lanes[2 * a..2 * a + cols]);
                }
            }
        }
        kb = k_end;
    }
}

/// The load mask of a 16-lane step with `left` values left in the row.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes_left(left: usize) -> std::arch::x86_64::__mmask16 {
    if left >= 16 {
        0xFFFF
    } else {
        (1u16 << left) - 1
    }
}

/// The 16 lane sums of `acc[b][a]` in one vector, lane 4a + b. Each sum is the same tree as
/// `_mm512_reduce_add_ps` (lanes i + 8, then i + 4, i + 2, i + 1 added pairwise), so every output's
/// arithmetic is the same whatever its place, but the 16 reductions share their shuffles and adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn reduce_16(acc: [[std::arch::x86_64::__m512; 4]; 4]) -> std::arch::x86_64::__m512 {
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
        let k = K_BLOCK + 100;
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

    /// A row's outputs are the same bits whatever rows share the call: one row alone (the four-row
    /// kernel) and every tile size up to sixteen rows (eight rows take `eight_by_two`, which walks k
    /// in blocks), with k spanning blocks and a masked tail.
    #[test]
    fn a_rows_outputs_do_not_depend_on_the_batch() {
        let (k, n) = (2 * K_BLOCK + 37, 70);
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
