//! Single-precision matrix multiply on the CPU for the hand-written paths (`forward.rs`,
//! `backward.rs`, `sample.rs`), with its operands packed by `pack.rs`.
//!
//! `C (+)= A · B` with A and B given by strides, so transposed operands (`x · Wᵀ`, `dyᵀ · x`) and
//! per-head views of a `(tokens, heads · head_dim)` activation need no copies. For each block of KC
//! along k, B is packed into `NR`-column panels; A's rows are read in place where they are contiguous
//! (and not a multiple of 4 KiB apart), and are packed into `MR`-row panels otherwise. A register-tiled
//! micro-kernel multiplies MR rows of A by one B panel, the A panel staying in L1 while B's panels
//! stream past. With AVX-512 the micro-kernel is written with intrinsics (the `gemm` crate's AVX-512
//! kernels need a nightly compiler); elsewhere the `gemm` crate does the work.

use rayon::prelude::*;

pub use super::pack::MatRef;
use super::pack::{pack_panel, pack_panels};
use super::vector::has_avx512;

const MR: usize = 12;
const NR: usize = 32;
const KC: usize = 256;
const MC: usize = 96;
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
    gemm_blocked(m, n, k, a, b, c, ldc, accumulate, parallel, KBlocks::Every)
}

/// [`gemm()`] with the sums over k cut where `blocks` says.
#[allow(clippy::too_many_arguments)]
pub fn gemm_blocked(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
    blocks: KBlocks,
) {
    check_operands(m, n, k, a, b);
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
            blocks,
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
    check_operands(m, n, k, a, b);
    let kernel = Kernel::detect();
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            a,
            b,
            Out(c),
            ldc,
            accumulate,
            parallel,
            kernel,
            KBlocks::Every,
        )
    }
}

/// `A · B` into a new row-major (m, n) matrix, written once (not cleared first).
pub fn gemm_new(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, parallel: bool) -> Vec<f32> {
    gemm_new_blocked(m, n, k, a, b, parallel, KBlocks::Every)
}

/// [`gemm_new`] with the sums over k cut where `blocks` says.
pub fn gemm_new_blocked(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    parallel: bool,
    blocks: KBlocks,
) -> Vec<f32> {
    check_operands(m, n, k, a, b);
    let mut c = Vec::with_capacity(m * n);
    // SAFETY: the capacity holds the (m, n) tile with leading dimension n, no one else sees it, and
    // a multiply without `accumulate` writes every element of its tile (zeros when k = 0) before
    // `set_len`.
    unsafe {
        let out = Out(c.as_mut_ptr());
        gemm_raw(
            m,
            n,
            k,
            a,
            b,
            out,
            n,
            false,
            parallel,
            Kernel::detect(),
            blocks,
        );
        c.set_len(m * n);
    }
    c
}

/// Where a multiply cuts its sums over k. The values of each block of k (at most KC of them) are
/// summed from zero in the micro-kernel's registers, and each block's sum is then added to C, so the
/// cuts decide the bits of the result.
#[derive(Clone, Copy, Debug)]
pub enum KBlocks<'a> {
    /// At every multiple of KC.
    Every,
    /// At these offsets into k: the first 0, increasing, each block at most KC long
    /// ([`k_block_starts`]). A sum over the real tokens of a left-padded batch cut where the same
    /// sum over the padded batch would be cut has the same bits, the padding's zero terms aside.
    At(&'a [usize]),
}

/// The cuts of a sum over some of the values of a longer one: `at` gives, in increasing order, each
/// value's index in the longer sum, which [`KBlocks::Every`] cuts at every multiple of KC. The result
/// starts a block wherever that multiple changes (for [`KBlocks::At`]).
pub fn k_block_starts(at: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut starts = vec![];
    let mut block = None;
    for (i, x) in at.into_iter().enumerate() {
        if block != Some(x / KC) {
            starts.push(i);
            block = Some(x / KC);
        }
    }
    starts
}

/// Panics unless A is an (m, k) view and B a (k, n) view inside their data.
fn check_operands(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) {
    assert!(a.extent(m, k) <= a.data.len(), "gemm: A out of bounds");
    assert!(b.extent(k, n) <= b.data.len(), "gemm: B out of bounds");
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

thread_local! {
    /// Packing space kept between the multiplies of one thread (a training step makes thousands).
    static PACKING: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// This thread's packing space, at least `len` values long; given back on drop. Packing writes
/// every value it later reads, so the space is not cleared. A multiply nested inside another on
/// the same thread finds the space taken and allocates its own.
struct Scratch(Vec<f32>);

impl Scratch {
    fn take(len: usize) -> Self {
        let mut v = PACKING.take();
        if v.len() < len {
            v.resize(len, 0.0);
        }
        Scratch(v)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        PACKING.with(|cell| {
            // Keep the larger of this space and whatever a nested multiply left.
            let other = cell.take();
            cell.set(if other.len() > v.len() { other } else { v });
        });
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
    blocks: KBlocks,
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
        // The crate cuts k its own way: `blocks` is not followed (nor are the AVX-512 path's bits
        // promised there).
        unsafe { gemm_crate(m, n, k, a, b, c, ldc, accumulate, parallel) };
        return;
    }
    if let KBlocks::At(starts) = blocks {
        let ends = starts.iter().skip(1).chain(std::iter::once(&k));
        assert!(
            starts.first() == Some(&0)
                && starts.iter().zip(ends).all(|(&s, &e)| s < e && e - s <= KC),
            "gemm: k blocks {starts:?} do not cover {k} values in blocks of 1 to {KC}"
        );
    }
    let np = n.div_ceil(NR);
    // Rows of A that are contiguous are read in place (the panel of MR rows stays in L1 while B's
    // panels stream past it); only a last partial panel is packed, zero-padded. Otherwise every
    // panel of A is packed: also where rows lie a multiple of 4 KiB apart, as all MR of them would
    // then compete for one set of the L1 cache.
    let in_place = a.cs == 1 && !a.rs.is_multiple_of(1024);
    let full = m / MR;
    let a_panels = if in_place {
        m.div_ceil(MR) - full
    } else {
        m.div_ceil(MR)
    };
    let (a_len, b_len) = (a_panels * MR * KC.min(k), np * NR * KC.min(k));
    let mut scratch = Scratch::take(a_len + b_len);
    let (pa, pb) = scratch.0.split_at_mut(a_len);
    let (mc, nc) = tiling(m, n, parallel);
    let (tiles_m, tiles_n) = (m.div_ceil(mc), n.div_ceil(nc));
    let (mut k0, mut block) = (0, 0);
    while k0 < k {
        block += 1;
        let kc = match blocks {
            KBlocks::Every => KC.min(k - k0),
            KBlocks::At(starts) => starts.get(block).copied().unwrap_or(k) - k0,
        };
        pack_b(b, n, k0, kc, &mut pb[..np * NR * kc], parallel);
        let pa = &mut pa[..a_panels * MR * kc];
        if in_place {
            if a_panels > 0 {
                pack_panel::<MR>(a, full * MR, m - full * MR, k0, kc, pa);
            }
        } else {
            pack_a(a, m, k0, kc, pa, parallel);
        }
        let acc = accumulate || k0 > 0;
        let (pa, pb) = (&*pa, &pb[..np * NR * kc]);
        let tile = |t: usize| {
            let (tm, tn) = (t % tiles_m, t / tiles_m);
            let (i0, j0) = (tm * mc, tn * nc);
            let (i1, j1) = ((i0 + mc).min(m), (j0 + nc).min(n));
            // One panel of A (MR·kc values) stays in L1 while the tile's panels of B stream from L2.
            let mut ir = i0;
            while ir < i1 {
                let mr = MR.min(i1 - ir);
                let ap = if !in_place {
                    APanel::Packed(&pa[ir / MR * MR * kc..][..MR * kc])
                } else if ir / MR < full {
                    APanel::Rows(&a.data[ir * a.rs + k0..], a.rs)
                } else {
                    APanel::Packed(&pa[..MR * kc])
                };
                let mut jr = j0;
                while jr < j1 {
                    let nr = NR.min(j1 - jr);
                    let bp = &pb[(jr / NR) * NR * kc..(jr / NR + 1) * NR * kc];
                    // SAFETY: the tile (ir.., jr..) of size (mr, nr) lies inside C and belongs to
                    // this task alone; the panels hold MR·kc and NR·kc values (MR rows of kc
                    // values in place: A was bounds-checked for its (m, k) view).
                    unsafe { micro(kc, ap, bp, c.ptr().add(ir * ldc + jr), ldc, mr, nr, acc) };
                    jr += NR;
                }
                ir += MR;
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

/// The tile of C that one task computes, (rows, columns): at most MC × NC, rows a multiple of MR
/// and columns a multiple of NR (the packed panels are indexed by them), of near-equal sizes, and for
/// a parallel multiply at least two tiles per thread where C has that many panels, so that no thread
/// waits long for another at the end of a block along k. A weight's gradient of 128 rows cut into
/// tiles of 96 and 32 rows was one tile per thread, one three times the other. Which thread computes
/// a tile changes no value of it.
fn tiling(m: usize, n: usize, parallel: bool) -> (usize, usize) {
    let tiles_m = m.div_ceil(MC);
    let mc = m.div_ceil(tiles_m).next_multiple_of(MR);
    let mut tiles_n = n.div_ceil(NC);
    if parallel {
        let want = 2 * rayon::current_num_threads();
        tiles_n = tiles_n.max(want.div_ceil(tiles_m)).min(n.div_ceil(NR));
    }
    (mc, n.div_ceil(tiles_n).next_multiple_of(NR))
}

/// Packs rows 0..m, columns k0..k0+kc of A into MR-row panels: panel p holds, for each kk, the MR
/// values A[p·MR + r, k0 + kk] (zero past row m).
fn pack_a(a: MatRef, m: usize, k0: usize, kc: usize, out: &mut [f32], parallel: bool) {
    pack_panels::<MR>(a, m, k0, kc, out, parallel)
}

/// Packs rows k0..k0+kc, columns 0..n of B into NR-column panels: panel p holds, for each kk, the NR
/// values B[k0 + kk, p·NR + c] (zero past column n).
fn pack_b(b: MatRef, n: usize, k0: usize, kc: usize, out: &mut [f32], parallel: bool) {
    // B's panels are panels of Bᵀ's rows.
    let bt = MatRef {
        data: b.data,
        rs: b.cs,
        cs: b.rs,
    };
    pack_panels::<NR>(bt, n, k0, kc, out, parallel)
}

#[path = "gemm_kernel.rs"]
mod kernel;
use kernel::{APanel, gemm_crate, micro};

#[cfg(test)]
#[path = "gemm_tests.rs"]
mod tests;
