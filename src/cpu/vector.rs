//! Element-wise work and reductions over f32 rows, written for the vector units: the exponential
//! builds 2ⁿ from bits (no float-to-integer conversion, so it vectorizes); sums, dot products and maxima
//! keep 16 partial results (a single running sum is a chain of dependent additions); row loops go to
//! the rayon pool when they are large.

use rayon::prelude::*;

/// Whether the CPU has AVX-512F (never, off x86-64).
pub(super) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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

/// Softmax of `scale · row[..seen]`, in place, and zeros after it (keys a causal query does not see).
pub(super) fn softmax_prefix(row: &mut [f32], seen: usize, scale: f32) {
    let (_, total) = exp_shifted(&mut row[..seen], scale);
    let inv: f32 = 1.0 / total;
    row[..seen].iter_mut().for_each(|x| *x *= inv);
    row[seen..].fill(0.0);
}

/// Replaces `row` by exp(scale · x − max), max taken of scale · x; returns (max, Σ of the result):
/// a softmax before its normalization.
pub(super) fn exp_shifted(row: &mut [f32], scale: f32) -> (f32, f32) {
    let max = max_scaled(row, scale);
    row.iter_mut().for_each(|x| *x = *x * scale - max);
    exp_in_place(row);
    (max, sum(row))
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
pub(super) unsafe fn exp_avx512(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = exp_one(*v));
}

#[inline(always)]
pub(super) fn exp_one(x: f32) -> f32 {
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
pub(super) fn for_row_pairs(
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
pub(super) fn add_into(y: &mut [f32], x: &[f32], len: usize) {
    for_rows(y, len, |r, yr| {
        yr.iter_mut()
            .zip(&x[r * len..(r + 1) * len])
            .for_each(|(y, x)| *y += x);
    });
}

/// Adds `b` to every row of `y`.
pub(super) fn add_bias(y: &mut [f32], b: &[f32]) {
    for_rows(y, b.len(), |_, r| {
        r.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    });
}

#[inline]
pub(super) fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
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
pub(super) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
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

/// `out[j] = dot(q, k[j · stride ..][..q.len()])` for every j of `out`: one query against the keys of
/// a cache. Each score is the same bits as [`dot`]'s. The AVX2 form takes four keys at a time: each
/// key's two accumulators get [`dot_avx2`]'s multiply-adds in its order, and its final sum over the
/// eight lanes, one lane after another from the same start, is done for the four keys at once on the
/// transposed lanes, where `dot` alone spends a chain of seven dependent adds, a store and a call on
/// every key.
pub(super) fn dots(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if q.len().is_multiple_of(8)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU supports the features the function is compiled for.
        done = unsafe { dots_avx2(q, k, stride, out) };
    }
    let hd = q.len();
    for (j, x) in out.iter_mut().enumerate().skip(done) {
        *x = dot(q, &k[j * stride..j * stride + hd]);
    }
}

/// [`dots`] for a query of a multiple of 8 floats, over the keys in whole fours; returns how many
/// keys it scored (the rest are left to [`dot`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let hd = q.len();
    let n = out.len();
    assert!(
        n == 0 || (n - 1) * stride + hd <= k.len(),
        "keys past the cache"
    );
    // The start of `dot_avx2`'s sum over its lanes (the neutral element of f32's `Sum`).
    let start: f32 = std::iter::empty::<&f32>().sum();
    let mut j = 0;
    // SAFETY: key j's hd floats lie at j · stride, inside k (asserted); the loads of q stay below hd.
    unsafe {
        let (pq, pk) = (q.as_ptr(), k.as_ptr());
        while j + 4 <= n {
            let key = |b: usize, i: usize| _mm256_loadu_ps(pk.add((j + b) * stride + i));
            let mut acc0 = [_mm256_setzero_ps(); 4];
            let mut acc1 = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 16 <= hd {
                let (qa, qb) = (_mm256_loadu_ps(pq.add(i)), _mm256_loadu_ps(pq.add(i + 8)));
                for b in 0..4 {
                    acc0[b] = _mm256_fmadd_ps(qa, key(b, i), acc0[b]);
                    acc1[b] = _mm256_fmadd_ps(qb, key(b, i + 8), acc1[b]);
                }
                i += 16;
            }
            if i + 8 <= hd {
                let qa = _mm256_loadu_ps(pq.add(i));
                for (b, acc) in acc0.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(qa, key(b, i), *acc);
                }
            }
            let a: [__m256; 4] = std::array::from_fn(|b| _mm256_add_ps(acc0[b], acc1[b]));
            // Lane l of the four keys side by side: u[m] holds lane m in its low half and lane
            // m + 4 in its high half.
            let (t0, t1) = (
                _mm256_unpacklo_ps(a[0], a[1]),
                _mm256_unpackhi_ps(a[0], a[1]),
            );
            let (t2, t3) = (
                _mm256_unpacklo_ps(a[2], a[3]),
                _mm256_unpackhi_ps(a[2], a[3]),
            );
            let u = [
                _mm256_shuffle_ps::<0x44>(t0, t2),
                _mm256_shuffle_ps::<0xEE>(t0, t2),
                _mm256_shuffle_ps::<0x44>(t1, t3),
                _mm256_shuffle_ps::<0xEE>(t1, t3),
            ];
            let mut sum = _mm_set1_ps(start);
            for m in u {
                sum = _mm_add_ps(sum, _mm256_castps256_ps128(m));
            }
            for m in u {
                sum = _mm_add_ps(sum, _mm256_extractf128_ps::<1>(m));
            }
            _mm_storeu_ps(out.as_mut_ptr().add(j), sum);
            j += 4;
        }
    }
    j
}

/// Σ x, kept in 16 running partial sums: one running sum is a chain of dependent additions, which
/// neither vectorizes nor overlaps.
pub fn sum(x: &[f32]) -> f32 {
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
pub fn max_scaled(x: &[f32], scale: f32) -> f32 {
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
pub(super) fn fold16(mut acc: [f32; 16], f: impl Fn(f32, f32) -> f32) -> f32 {
    for w in [8, 4, 2, 1] {
        for i in 0..w {
            acc[i] = f(acc[i], acc[i + w]);
        }
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query's scores against a cache, four keys at a time, are `dot`'s bits for every key: heads of
    /// 8 to 128 floats (with and without a pass of 16), key counts with and without a remainder of
    /// four, rows of the cache wider than a head.
    #[test]
    fn scores_of_many_keys_are_dots_bits() {
        let mut rng = crate::model::Rng::new(7);
        let mut next = || (rng.next_f64() * 2.0 - 1.0) as f32;
        for hd in [8, 24, 32, 64, 128] {
            for n in [0, 1, 3, 4, 7, 13] {
                let stride = hd * 3 + 8;
                let q: Vec<f32> = (0..hd).map(|_| next()).collect();
                let k: Vec<f32> = (0..n * stride).map(|_| next() * 30.0).collect();
                let mut got = vec![f32::NAN; n];
                dots(&q, &k, stride, &mut got);
                for (j, g) in got.iter().enumerate() {
                    let want = dot(&q, &k[j * stride..j * stride + hd]);
                    assert_eq!(g.to_bits(), want.to_bits(), "head {hd}, key {j} of {n}");
                }
            }
        }
    }

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
