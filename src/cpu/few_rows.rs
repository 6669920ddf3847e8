//! The few-row kernels of `matmul.rs`'s decoding path, for AVX-512: `x · wᵀ` with x of a few
//! rows (one per sequence of a batch) and w read in place, prefetching the next rows, each output the
//! same 16-lane sum whatever the number of rows (so a sequence's numbers do not depend on its batch).
//! Four rows of w against four of x at a time, or, for five to eight rows of x, two rows of w against
//! all of them over blocks of columns kept in L1.

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
                    store_lanes::<4>(
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

/// Columns of x one pass of [`eight_by_two`] covers: eight rows of them (16 KB) stay in the L1 cache
/// while every row of w passes over them. (Eight whole rows of 1,024 or more floats fill it, and
/// would be read again from L2 for every row of w.)
#[cfg(target_arch = "x86_64")]
pub(super) const K_BLOCK: usize = 512;

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
    // Each pair's unreduced sums between blocks of k; none when k is one block.
    let blocks = k.div_ceil(K_BLOCK);
    let mut carry = vec![[[_mm512_setzero_ps(); 8]; 2]; if blocks > 1 { pairs } else { 0 }];
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
        for pair in 0..pairs {
            let j = 2 * pair;
            let wp = row_ptrs::<2>(w, j, rows, k, zeros);
            // The same block of the pair after next, fetched while this one is multiplied (see
            // `small_block_avx512`).
            let next = (j + 5 < rows).then(|| w.as_ptr().wrapping_add((j + 4) * k));
            // SAFETY: every pointer addresses k floats; the masked loads stop at k; the writes stay
            // inside rows i0 .. i_end and columns j .. j + 2 < rows of out.
            unsafe {
                let kept = carry.get_mut(pair);
                let mut acc = match &kept {
                    Some(sums) if kb > 0 => **sums,
                    _ => [[_mm512_setzero_ps(); 8]; 2],
                };
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
                    if let Some(sums) = kept {
                        *sums = acc;
                    }
                    continue;
                }
                // Output (a, b) as lane n = 2a + b: `reduce_16` puts the sum of its
                // acc[n % 4][n / 4] in lane n.
                let grid: [[__m512; 4]; 4] = std::array::from_fn(|bb| {
                    std::array::from_fn(|aa| acc[(4 * aa + bb) % 2][(4 * aa + bb) / 2])
                });
                let (n_rows, cols) = (i_end - i0, 2.min(rows - j));
                store_lanes::<2>(reduce_16(grid), n_rows, cols, out.add(i0 * ldo + j), ldo);
            }
        }
        kb = k_end;
    }
}

/// Writes lane `C a + c` of `sums` to `out[a ldo + c]` for `a < n_rows`, `c < cols`: the outputs of
/// `n_rows` rows of x against `C` rows of w. Plain stores of single floats: a copy of a slice this short
/// had compiled to a call of `memcpy` per row, which took as long as the multiply-adds of a short row.
///
/// # Safety
/// `out[a ldo + c]` must be writable for every `a < n_rows`, `c < cols`, and `C · n_rows ≤ 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_lanes<const C: usize>(
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
            for c in 0..C {
                if c < cols {
                    *out.add(a * ldo + c) = lanes[C * a + c];
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
