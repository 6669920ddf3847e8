//! The packed GEMM against a naive product, for every layout and edge.

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
        // Rows of A 4 KiB apart are packed rather than read in place.
        (26, 40, 1024),
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
                    gemm_raw(
                        m,
                        n,
                        k,
                        a,
                        b,
                        Out(c.as_mut_ptr()),
                        n,
                        acc,
                        parallel,
                        kernel,
                        KBlocks::Every,
                    )
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

/// A sum over some of a longer sum's values, cut where the longer one is cut (`KBlocks::At`), gives
/// its bits when the values left out are zeros: the weights' gradients of a batch computed without
/// its padding.
#[test]
fn a_sum_cut_like_a_longer_one_gives_its_bits() {
    if !has_avx512() {
        return;
    }
    let (m, n, long) = (20, 40, 3 * KC + 70);
    // Every third index of the long sum and a run past the second cut are zeros in A's columns.
    let kept: Vec<usize> = (0..long)
        .filter(|&i| i % 3 != 0 && !(2 * KC - 50..2 * KC + 20).contains(&i))
        .collect();
    let a_long: Vec<f32> = data(m * long, 3)
        .chunks(long)
        .flat_map(|row| (0..long).map(|i| if kept.contains(&i) { row[i] } else { 0.0 }))
        .collect();
    let b_long = data(long * n, 4);
    let a_kept: Vec<f32> = a_long
        .chunks(long)
        .flat_map(|row| kept.iter().map(|&i| row[i]))
        .collect();
    let b_kept: Vec<f32> = kept
        .iter()
        .flat_map(|&i| b_long[i * n..(i + 1) * n].to_vec())
        .collect();
    let starts = k_block_starts(kept.iter().copied());
    assert_eq!(starts.len(), 4);
    for acc in [false, true] {
        let mut want = data(m * n, 5);
        let mut got = want.clone();
        gemm(
            m,
            n,
            long,
            MatRef::rows(&a_long, long),
            MatRef::rows(&b_long, n),
            &mut want,
            n,
            acc,
            true,
        );
        let (a, b) = (MatRef::rows(&a_kept, kept.len()), MatRef::rows(&b_kept, n));
        let cut = KBlocks::At(&starts);
        gemm_blocked(m, n, kept.len(), a, b, &mut got, n, acc, true, cut);
        assert!(
            want.iter().zip(&got).all(|(x, y)| x == y),
            "accumulate {acc}"
        );
        if !acc {
            assert_eq!(gemm_new_blocked(m, n, kept.len(), a, b, false, cut), got);
        }
    }
    // Cut at every KC of its own values instead, the shorter sum differs in some last bits.
    let every = gemm_new(
        m,
        n,
        kept.len(),
        MatRef::rows(&a_kept, kept.len()),
        MatRef::rows(&b_kept, n),
        false,
    );
    let mut want = vec![0f32; m * n];
    gemm(
        m,
        n,
        long,
        MatRef::rows(&a_long, long),
        MatRef::rows(&b_long, n),
        &mut want,
        n,
        false,
        true,
    );
    assert!(want.iter().zip(&every).any(|(x, y)| x != y));
}

/// Tiles fit the packed panels and the blocking, are of near-equal sizes, and a parallel multiply
/// with few rows is cut along its columns too.
#[test]
fn tiles_fit_the_panels_and_share_the_work() {
    for (m, n) in [
        (1, 1),
        (128, 128),
        (128, 384),
        (256, 768),
        (1536, 466),
        (13, 2000),
        (97, 33),
    ] {
        for parallel in [false, true] {
            let (mc, nc) = tiling(m, n, parallel);
            let (tm, tn) = (m.div_ceil(mc), n.div_ceil(nc));
            let what = format!("{m} × {n} in tiles of {mc} × {nc}");
            assert!(
                mc % MR == 0 && mc <= MC && nc % NR == 0 && nc <= NC,
                "{what}"
            );
            // The last tile short by less than a panel per tile.
            assert!(tm * mc - m < tm * MR && tn * nc - n < tn * NR, "{what}");
        }
    }
    // A weight's gradient of 128 rows: two row tiles of 72 and 56, not 96 and 32, and, in parallel,
    // its columns in two.
    assert_eq!(tiling(128, 384, false), (72, 384));
    if rayon::current_num_threads() == 2 {
        assert_eq!(tiling(128, 384, true), (72, 192));
    }
    // Many rows: the blocking's own tiles.
    assert_eq!(tiling(1536, 466, true), (96, 480));
}
