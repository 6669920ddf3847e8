//! The GEMM's register tile (`gemm.rs`): MR rows of A times one packed NR-column panel of B, written
//! with AVX-512 intrinsics, and the `gemm` crate's multiply for CPUs without AVX-512.

use super::{MR, MatRef, NR, Out};

/// MR rows of A for the micro-kernel: packed (`kk · MR + r`), or read in place, rows `rs` apart.
#[derive(Clone, Copy)]
pub(super) enum APanel<'a> {
    Packed(&'a [f32]),
    Rows(&'a [f32], usize),
}

/// One (mr ≤ MR, nr ≤ NR) tile of C from packed panels. Partial tiles go through a local buffer.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn micro(
    kc: usize,
    a: APanel,
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    acc: bool,
) {
    let run = |c: *mut f32, ldc: usize, acc: bool| match a {
        // SAFETY: as for `micro`.
        APanel::Packed(p) => unsafe {
            kernel_avx512::<false>(kc, p.as_ptr(), 0, b.as_ptr(), c, ldc, acc)
        },
        APanel::Rows(p, rs) => unsafe {
            kernel_avx512::<true>(kc, p.as_ptr(), rs, b.as_ptr(), c, ldc, acc)
        },
    };
    if mr == MR && nr == NR {
        run(c, ldc, acc);
        return;
    }
    let mut tmp = [0f32; MR * NR];
    run(tmp.as_mut_ptr(), NR, false);
    for r in 0..mr {
        for j in 0..nr {
            // SAFETY: (r, j) is inside the caller's tile.
            unsafe {
                let dst = c.add(r * ldc + j);
                *dst = if acc {
                    *dst + tmp[r * NR + j]
                } else {
                    tmp[r * NR + j]
                };
            }
        }
    }
}

/// The register tile: MR rows of A times one packed NR-column panel of B, over kc. A is packed
/// (`a[kk · MR + r]`) or, with `ROWS`, read in place (`a[r · rs + kk]`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512<const ROWS: bool>(
    kc: usize,
    a: *const f32,
    rs: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY: a holds MR rows of kc values in the stated layout, b a packed panel of kc·NR floats;
    // c is valid for an MR×NR tile with leading dimension ldc. The caller checked that the CPU has
    // AVX-512F.
    unsafe {
        let mut c0 = [_mm512_setzero_ps(); MR];
        let mut c1 = [_mm512_setzero_ps(); MR];
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            for r in 0..MR {
                let at = if ROWS { r * rs + p } else { p * MR + r };
                let av = _mm512_set1_ps(*a.add(at));
                c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
                c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
            }
        }
        for r in 0..MR {
            let dst = c.add(r * ldc);
            if acc {
                c0[r] = _mm512_add_ps(c0[r], _mm512_loadu_ps(dst));
                c1[r] = _mm512_add_ps(c1[r], _mm512_loadu_ps(dst.add(16)));
            }
            _mm512_storeu_ps(dst, c0[r]);
            _mm512_storeu_ps(dst.add(16), c1[r]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_avx512<const ROWS: bool>(
    _: usize,
    _: *const f32,
    _: usize,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: bool,
) {
    unreachable!("the AVX-512 kernel is only called where the CPU has AVX-512")
}

/// The portable path: the `gemm` crate (AVX2 or NEON kernels, chosen at run time).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_crate(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: Out,
    ldc: usize,
    accumulate: bool,
    parallel: bool,
) {
    let par = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the views were bounds-checked by the caller; strides fit in isize.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.0,
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}
