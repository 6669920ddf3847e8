//! Single-precision matrix multiply on the CPU for the hand-written paths (`fused.rs`, `host.rs`).
//!
//! `C (+)= A · B` with A and B given by strides, so transposed operands (`x · Wᵀ`, `dyᵀ · x`) and
//! per-head views of a `(tokens, heads · head_dim)` activation are read in place, without copies. A
//! block of B is packed into `NR`-column panels; rows of A are read in place when contiguous and packed
//! into `MR`-row panels per tile otherwise; a register-tiled micro-kernel multiplies MR rows of A by one
//! B panel. With
//! AVX-512 the micro-kernel is written with intrinsics (the `gemm` crate's AVX-512 kernels need a
//! nightly compiler); elsewhere the `gemm` crate does the work.

use rayon::prelude::*;

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

    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }

    /// Largest index touched by an (m, n) view, for the bounds check.
    fn extent(&self, m: usize, n: usize) -> usize {
        if m == 0 || n == 0 {
            0
        } else {
            (m - 1) * self.rs + (n - 1) * self.cs + 1
        }
    }
}

const MR: usize = 8;
const NR: usize = 32;
const KC: usize = 256;
const MC: usize = 64;
const NC: usize = 512;

/// Raw output pointer shared by the tasks of one multiply; each task writes a disjoint tile.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint elements (disjoint tiles of C), and the borrow of C outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so that closures capture the whole `Out`, which is `Sync`).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `C = A · B` (or `C += A · B` with `accumulate`), A: (m, k), B: (k, n), C row-major with leading
/// dimension `ldc`. `parallel` spreads the work over the rayon pool; callers that already run many
/// multiplies in parallel (attention heads) pass `false`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
) {
    assert!(a.extent(m, k) <= a.data.len(), "gemm: A out of bounds");
    assert!(b.extent(k, n) <= b.data.len(), "gemm: B out of bounds");
    assert!(
        m == 0 || n == 0 || (m - 1) * ldc + n <= c.len(),
        "gemm: C out of bounds"
    );
    let kernel = Kernel::detect();
    // SAFETY: the bounds were checked above and `c` is borrowed mutably for the whole call.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            a,
            b,
            Out(c.as_mut_ptr()),
            ldc,
            accumulate,
            parallel,
            kernel,
        )
    }
}

/// As `gemm`, writing through a raw pointer so that parallel callers can fill disjoint parts of one
/// buffer (attention heads interleaved in a `(tokens, heads · head_dim)` layout).
///
/// # Safety
/// `c` must be valid for writes of the (m, n) tile with leading dimension `ldc`, and no other thread
/// may touch that tile during the call. A and B must be in bounds (checked).
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    parallel: bool,
) {
    assert!(a.extent(m, k) <= a.data.len(), "gemm: A out of bounds");
    assert!(b.extent(k, n) <= b.data.len(), "gemm: B out of bounds");
    let kernel = Kernel::detect();
    unsafe { gemm_raw(m, n, k, a, b, Out(c), ldc, accumulate, parallel, kernel) }
}

/// Which micro-kernel runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    Avx512,
    /// The `gemm` crate.
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        if has_avx512() {
            Kernel::Avx512
        } else {
            Kernel::Portable
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: Out,
    ldc: usize,
    accumulate: bool,
    parallel: bool,
    kernel: Kernel,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    unsafe { *c.0.add(i * ldc + j) = 0.0 };
                }
            }
        }
        return;
    }
    if kernel == Kernel::Portable {
        unsafe { gemm_crate(m, n, k, a, b, c, ldc, accumulate, parallel) };
        return;
    }
    let np = n.div_ceil(NR);
    let mut pb = vec![0f32; np * NR * KC.min(k)];
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        pack_b(b, n, k0, kc, &mut pb[..np * NR * kc], parallel);
        let acc = accumulate || k0 > 0;
        let pb = &pb[..np * NR * kc];
        let tiles_m = m.div_ceil(MC);
        let tiles_n = n.div_ceil(NC);
        let tile = |t: usize| {
            let (tm, tn) = (t % tiles_m, t / tiles_m);
            let (i0, j0) = (tm * MC, tn * NC);
            let (i1, j1) = ((i0 + MC).min(m), (j0 + NC).min(n));
            // Rows of A that are contiguous (cs = 1) are read in place, and only a last partial
            // panel is copied (zero-padded); otherwise the tile's rows are packed into MR-row
            // panels once, for all its columns.
            let packed: Vec<f32> = if a.cs != 1 {
                let mut buf = vec![0f32; (i1 - i0).div_ceil(MR) * MR * kc];
                for (pi, panel) in buf.chunks_mut(MR * kc).enumerate() {
                    let r0 = i0 + pi * MR;
                    let rows = MR.min(i1 - r0);
                    for kk in 0..kc {
                        let dst = &mut panel[kk * MR..kk * MR + rows];
                        if a.rs == 1 {
                            let at = (k0 + kk) * a.cs + r0;
                            if rows == MR {
                                // A fixed-size copy: inlined, no call per row of the panel.
                                let src: &[f32; MR] =
                                    a.data[at..at + MR].try_into().expect("MR values");
                                dst.copy_from_slice(src);
                            } else {
                                dst.copy_from_slice(&a.data[at..at + rows]);
                            }
                        } else {
                            for (r, d) in dst.iter_mut().enumerate() {
                                *d = a.at(r0 + r, k0 + kk);
                            }
                        }
                    }
                }
                buf
            } else {
                vec![]
            };
            // The last, partial panel of A's rows (zero-padded), built only when there is one.
            let mut edge: Vec<f32> = Vec::new();
            let mut jr = j0;
            while jr < j1 {
                let nr = NR.min(j1 - jr);
                let bp = &pb[(jr / NR) * NR * kc..(jr / NR + 1) * NR * kc];
                let mut ir = i0;
                while ir < i1 {
                    let mr = MR.min(i1 - ir);
                    let ap = if a.cs != 1 {
                        Panel {
                            ptr: packed[(ir - i0) / MR * MR * kc..].as_ptr(),
                            rs: 1,
                            cs: MR,
                        }
                    } else if mr == MR {
                        Panel {
                            ptr: a.data[ir * a.rs + k0 * a.cs..].as_ptr(),
                            rs: a.rs,
                            cs: a.cs,
                        }
                    } else {
                        if jr == j0 {
                            edge.clear();
                            edge.resize(MR * kc, 0.0);
                            for r in 0..mr {
                                for kk in 0..kc {
                                    edge[kk * MR + r] = a.at(ir + r, k0 + kk);
                                }
                            }
                        }
                        Panel {
                            ptr: edge.as_ptr(),
                            rs: 1,
                            cs: MR,
                        }
                    };
                    // SAFETY: the tile (ir.., jr..) of size (mr, nr) lies inside C and belongs to
                    // this task alone; the A panel holds MR rows of kc values.
                    unsafe { micro(kc, ap, bp, c.ptr().add(ir * ldc + jr), ldc, mr, nr, acc) };
                    ir += MR;
                }
                jr += NR;
            }
        };
        let tiles = tiles_m * tiles_n;
        if parallel && tiles > 1 {
            (0..tiles).into_par_iter().for_each(tile);
        } else {
            (0..tiles).for_each(tile);
        }
        k0 += kc;
    }
}

/// MR rows of A read in place: element (r, kk) at `ptr[r * rs + kk * cs]`.
#[derive(Clone, Copy)]
struct Panel {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

/// Packs rows k0..k0+kc, columns 0..n of B into NR-column panels: panel p holds, for each kk, the NR
/// values B[k0 + kk, p·NR + c] (zero past column n).
fn pack_b(b: MatRef, n: usize, k0: usize, kc: usize, out: &mut [f32], parallel: bool) {
    let fill = |(p, panel): (usize, &mut [f32])| {
        let j0 = p * NR;
        let cols = NR.min(n - j0);
        if b.cs == 1 && cols == NR {
            // Full panels: fixed-size copies, inlined.
            for kk in 0..kc {
                let at = (k0 + kk) * b.rs + j0;
                let src: &[f32; NR] = b.data[at..at + NR].try_into().expect("NR values");
                let dst: &mut [f32; NR] = (&mut panel[kk * NR..(kk + 1) * NR])
                    .try_into()
                    .expect("NR values");
                *dst = *src;
            }
        } else if b.cs == 1 {
            for kk in 0..kc {
                let src = &b.data[(k0 + kk) * b.rs + j0..(k0 + kk) * b.rs + j0 + cols];
                panel[kk * NR..kk * NR + cols].copy_from_slice(src);
                panel[kk * NR + cols..(kk + 1) * NR].fill(0.0);
            }
        } else {
            for cc in 0..cols {
                let col = &b.data[(j0 + cc) * b.cs + k0 * b.rs..];
                for kk in 0..kc {
                    panel[kk * NR + cc] = col[kk * b.rs];
                }
            }
            if cols < NR {
                for kk in 0..kc {
                    panel[kk * NR + cols..(kk + 1) * NR].fill(0.0);
                }
            }
        }
    };
    if parallel && out.len() > 64 * 1024 {
        out.par_chunks_mut(NR * kc).enumerate().for_each(fill);
    } else {
        out.chunks_mut(NR * kc).enumerate().for_each(fill);
    }
}

/// One (mr ≤ MR, nr ≤ NR) tile of C from packed panels. Partial tiles go through a local buffer.
#[allow(clippy::too_many_arguments)]
unsafe fn micro(
    kc: usize,
    a: Panel,
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    acc: bool,
) {
    if mr == MR && nr == NR {
        unsafe { kernel_avx512(kc, a, b.as_ptr(), c, ldc, acc) };
        return;
    }
    let mut tmp = [0f32; MR * NR];
    unsafe { kernel_avx512(kc, a, b.as_ptr(), tmp.as_mut_ptr(), NR, false) };
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(kc: usize, a: Panel, b: *const f32, c: *mut f32, ldc: usize, acc: bool) {
    use std::arch::x86_64::*;
    // SAFETY: a addresses MR rows of kc values, b holds kc·NR floats (a packed panel); c is valid for an MR×NR tile with
    // leading dimension ldc. The caller checked that the CPU has AVX-512F.
    unsafe {
        let mut c0 = [_mm512_setzero_ps(); MR];
        let mut c1 = [_mm512_setzero_ps(); MR];
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            let ap = a.ptr.add(p * a.cs);
            for r in 0..MR {
                let av = _mm512_set1_ps(*ap.add(r * a.rs));
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
unsafe fn kernel_avx512(_: usize, _: Panel, _: *const f32, _: *mut f32, _: usize, _: bool) {
    unreachable!("the AVX-512 kernel is only called where the CPU has AVX-512")
}

/// The portable path: the `gemm` crate (AVX2 or NEON kernels, chosen at run time).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_crate(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a.at(i, p) * b.at(p, j)).sum();
            }
        }
        c
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_naive_for_every_layout_and_edge() {
        // Sizes straddle MR, NR, KC, MC and NC boundaries.
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 33, 5),
            (9, 31, 300),
            (70, 530, 257),
            (130, 64, 512),
        ] {
            let a_rm = data(m * k, 1);
            let b_rm = data(k * n, 2);
            // A as itself or as the transpose of a (k, m) matrix; same for B.
            let a_t: Vec<f32> = (0..k * m).map(|x| a_rm[(x % m) * k + x / m]).collect();
            let b_t: Vec<f32> = (0..n * k).map(|x| b_rm[(x % k) * n + x / k]).collect();
            for (a, b) in [
                (MatRef::rows(&a_rm, k), MatRef::rows(&b_rm, n)),
                (MatRef::rows_t(&a_t, m), MatRef::rows_t(&b_t, k)),
            ] {
                let want = naive(m, n, k, a, b);
                let mut kernels = vec![Kernel::Portable];
                if has_avx512() {
                    kernels.push(Kernel::Avx512);
                }
                for (parallel, kernel) in [false, true]
                    .into_iter()
                    .flat_map(|p| kernels.iter().map(move |&k| (p, k)))
                {
                    let mut c = vec![f32::NAN; m * n];
                    let run = |c: &mut Vec<f32>, acc: bool| unsafe {
                        gemm_raw(m, n, k, a, b, Out(c.as_mut_ptr()), n, acc, parallel, kernel)
                    };
                    run(&mut c, false);
                    for (x, y) in c.iter().zip(&want) {
                        assert!(
                            (x - y).abs() < 1e-3 * (1.0 + y.abs()),
                            "{kernel:?}: {x} vs {y}"
                        );
                    }
                    run(&mut c, true);
                    for (x, y) in c.iter().zip(&want) {
                        assert!((x - 2.0 * y).abs() < 2e-3 * (1.0 + y.abs()), "{x} vs 2·{y}");
                    }
                }
            }
        }
    }

    #[test]
    fn writes_only_its_tile_of_a_wider_output() {
        let (m, n, k, ldc) = (10, 20, 16, 50);
        let (a, b) = (data(m * k, 3), data(k * n, 4));
        let mut c = vec![7f32; m * ldc];
        gemm(
            m,
            n,
            k,
            MatRef::rows(&a, k),
            MatRef::rows(&b, n),
            &mut c,
            ldc,
            false,
            true,
        );
        let want = naive(m, n, k, MatRef::rows(&a, k), MatRef::rows(&b, n));
        for i in 0..m {
            for j in 0..ldc {
                let got = c[i * ldc + j];
                if j < n {
                    assert!((got - want[i * n + j]).abs() < 1e-3);
                } else {
                    assert_eq!(got, 7.0, "wrote outside the tile at ({i}, {j})");
                }
            }
        }
    }
}
