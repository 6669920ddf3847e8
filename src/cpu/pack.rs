//! The GEMM's operands (`gemm.rs`): a strided view of a matrix ([`MatRef`]), and their packing into
//! panels for the micro-kernel: A into `MR`-row panels,
//! B into `NR`-column panels, each a run of `W` values per step along k so that the micro-kernel's
//! loads are contiguous. Where a panel's values are a row-major operand's columns, 8 × 8 blocks are
//! transposed with AVX.

use rayon::prelude::*;

use super::vector::has_avx512;

/// A read-only strided matrix: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns (leading dimension `cols`).
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn rows_t(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            rs: 1,
            cs: cols,
        }
    }

    #[cfg(test)]
    pub(super) fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }

    /// Largest index touched by an (m, n) view, for the bounds check.
    pub(super) fn extent(&self, m: usize, n: usize) -> usize {
        if m == 0 || n == 0 {
            0
        } else {
            (m - 1) * self.rs + (n - 1) * self.cs + 1
        }
    }
}

/// Packs rows 0..rows, columns c0..c0+cols of `mat` into W-row panels (see `pack_panel`), in
/// groups of `GROUP` panels: where a column's values are contiguous, a group reads them as one run
/// instead of one short piece per panel (a transposed operand has a long stride between columns).
pub(super) fn pack_panels<const W: usize>(
    mat: MatRef,
    rows: usize,
    c0: usize,
    cols: usize,
    out: &mut [f32],
    parallel: bool,
) {
    const GROUP: usize = 8;
    let fill = |(g, group): (usize, &mut [f32])| {
        let r0 = g * GROUP * W;
        let n = rows - r0;
        if mat.rs == 1 && n >= GROUP * W {
            for c in 0..cols {
                let at = (c0 + c) * mat.cs + r0;
                let src = &mat.data[at..at + GROUP * W];
                for (p, piece) in src.chunks_exact(W).enumerate() {
                    group[(p * cols + c) * W..(p * cols + c + 1) * W].copy_from_slice(piece);
                }
            }
        } else {
            for (p, panel) in group.chunks_mut(W * cols).enumerate() {
                pack_panel::<W>(mat, r0 + p * W, W.min(n - p * W), c0, cols, panel);
            }
        }
    };
    if parallel && out.len() > 64 * 1024 {
        out.par_chunks_mut(GROUP * W * cols)
            .enumerate()
            .for_each(fill);
    } else {
        out.chunks_mut(GROUP * W * cols).enumerate().for_each(fill);
    }
}

/// One panel of W rows: `out[c·W + r] = M[r0 + r, c0 + c]` for r < rows, c < cols, and zero for
/// rows ≤ r < W.
pub(super) fn pack_panel<const W: usize>(
    mat: MatRef,
    r0: usize,
    rows: usize,
    c0: usize,
    cols: usize,
    out: &mut [f32],
) {
    let out = &mut out[..cols * W];
    if mat.rs == 1 {
        // The panel's W values of one column are contiguous: one copy each.
        for (c, dst) in out.chunks_exact_mut(W).enumerate() {
            let at = (c0 + c) * mat.cs + r0;
            if rows == W {
                let src: &[f32; W] = mat.data[at..at + W].try_into().expect("W values");
                let dst: &mut [f32; W] = dst.try_into().expect("W values");
                *dst = *src;
            } else {
                dst[..rows].copy_from_slice(&mat.data[at..at + rows]);
                dst[rows..].fill(0.0);
            }
        }
        return;
    }
    // Rows are contiguous: transpose 8×8 blocks, the last block of a dimension that is not a
    // multiple of 8 overlapping the one before it (rewriting a few values with themselves).
    if mat.cs == 1 && rows >= 8 && cols >= 8 && has_avx512() {
        let starts = |len: usize| {
            (0..len / 8)
                .map(|b| b * 8)
                .chain((!len.is_multiple_of(8)).then(|| len - 8))
        };
        for r in starts(rows) {
            for c in starts(cols) {
                let src: [&[f32]; 8] = std::array::from_fn(|q| {
                    let at = (r0 + r + q) * mat.rs + c0 + c;
                    &mat.data[at..at + 8]
                });
                transpose8(src, &mut out[c * W + r..], W);
            }
        }
    } else {
        for r in 0..rows {
            let row = &mat.data[(r0 + r) * mat.rs..];
            for c in 0..cols {
                out[c * W + r] = row[(c0 + c) * mat.cs];
            }
        }
    }
    for r in rows..W {
        for c in 0..cols {
            out[c * W + r] = 0.0;
        }
    }
}

/// Writes the transpose of the 8×8 block whose rows are `src` to `dst`: column t of the block goes
/// to `dst[t · ld .. t · ld + 8]`.
fn transpose8(src: [&[f32]; 8], dst: &mut [f32], ld: usize) {
    assert!(dst.len() >= 7 * ld + 8, "transpose8: destination too short");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: each source row holds at least 8 values (sliced by the caller) and the destination
    // was checked above; callers reach here only where the CPU has AVX-512 (so AVX).
    unsafe {
        transpose8_avx(src, dst.as_mut_ptr(), ld)
    }
    #[cfg(not(target_arch = "x86_64"))]
    for t in 0..8 {
        for q in 0..8 {
            dst[t * ld + q] = src[q][t];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8_avx(src: [&[f32]; 8], dst: *mut f32, ld: usize) {
    use std::arch::x86_64::*;
    // SAFETY: see `transpose8`.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|q| _mm256_loadu_ps(src[q][..8].as_ptr()));
        // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves.
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let cols = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (t, v) in cols.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(t * ld), v);
        }
    }
}
