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
