//! The few-row kernels of `matmul.rs`'s decoding path, for AVX-512: `x · wᵀ` with x of a few
//! rows (one per sequence of a batch) and w read in place, prefetching the next rows, each output the
//! same 16-lane sum whatever the number of rows (so a sequence's numbers do not depend on its batch).
//! Four rows of w against four of x at a time.

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
/// four rows of x at a time, so each loaded vector feeds four multiply-adds. x is walked in tiles of
/// up to eight rows: every four rows of w are read from memory by the tile's first four rows of x and
/// from the cache by its next four, while the next four rows of w are fetched into L2. Every output is
/// the same 16-lane sum over k whatever m is, so a row's result does not depend on the other rows.
/// Rows past the end read `zeros`.
///
/// The weights are read as four streams of whole rows, prefetched into L2 (not L1), half a group of
/// rows in each of the tile's two passes. Measured on the products of a decoding step at Qwen3-0.6B's
/// shape (2.38 GB of weights, two threads): eight rows of x took 67–80 ms this way, against 100–110
/// ms for two rows of w against all eight rows of x over blocks of 512 columns kept in L1 and
/// prefetched into L1, whose reads cut every row of w into pieces that the hardware prefetcher
/// followed at about half the speed of one plain stream; four rows of x took 70–73 ms, against 89–94
/// ms with the prefetch into L1.
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
        let mut j = 0;
        while j < rows {
            let wp = row_ptrs::<4>(w, j, rows, k, zeros);
            // The next four rows of w, fetched into L2 while these are multiplied (the hardware
            // prefetcher learns each page's streams too late for rows this short): one cache line
            // of each per 16 columns of these, the first two rows' lines in the tile's first pass of
            // four rows of x and the last two in its second, or all four in a tile's only pass.
            let next = (j + 4 < rows).then(|| w.as_ptr().wrapping_add((j + 4) * k));
            let mut i = i0;
            while i < i_end {
                let xp = row_ptrs::<4>(x, i, i_end, k, zeros);
                let lines = match (i_end - i0 > 4, i == i0) {
                    (false, _) => 0..4,
                    (true, true) => 0..2,
                    (true, false) => 2..4,
                };
                // SAFETY: every pointer addresses k floats; the masked loads stop at k; the
                // writes stay inside rows i .. i + 4 < m and columns j .. j + 4 < rows of out; a
                // prefetch reads nothing and faults on no address.
                unsafe {
                    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
                    let mut p = 0;
                    while p < k {
                        let mask = lanes_left(k - p);
                        if let Some(next) = next {
                            for line in lines.clone() {
                                let at = next.wrapping_add(line * k + p);
                                _mm_prefetch::<_MM_HINT_T1>(at as *const i8);
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
                    store_lanes(
                        sums,
                        4.min(i_end - i),
                        4.min(rows - j),
                        out.add(i * ldo + j),
                        ldo,
                    );
                }
                i += 4;
            }
            j += 4;
        }
        i0 = i_end;
    }
}

/// Writes lane `4a + c` of `sums` to `out[a ldo + c]` for `a < n_rows`, `c < cols`: the outputs of
/// `n_rows` rows of x against four rows of w. Plain stores of single floats: a copy of a slice this short
/// had compiled to a call of `memcpy` per row, which took as long as the multiply-adds of a short row.
///
/// # Safety
/// `out[a ldo + c]` must be writable for every `a < n_rows`, `c < cols`, and `n_rows ≤ 4`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_lanes(
    sums: std::arch::x86_64::__m512,
    n_rows: usize,
    cols: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 floats; the caller vouches for every write to `out`.
    unsafe {
        std::arch::x86_64::_mm512_storeu_ps(lanes.as_mut_ptr(), sums);
        for a in 0..n_rows {
            // A constant count, each store guarded: moves, not a call.
            for c in 0..4 {
                if c < cols {
                    *out.add(a * ldo + c) = lanes[4 * a + c];
                }
            }
        }
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
