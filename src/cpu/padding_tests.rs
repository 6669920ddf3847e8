//! A left-padded batch computed without its padding ([`forward`]) against the padded computation
//! itself (every position of every row through the layers and the head, as `forward_core` computes
//! any batch it is given): the same log-probs and the same gradients, value for value, with the
//! token sums cut into several blocks, the head in several chunks, and a checkpointed tape.

use std::path::Path;

use super::forward::forward_core;
use super::tape::AttnJob;
use super::*;
use crate::model::layout::Layout;
use crate::model::{Checkpoint, Device, ModelConfig};

/// The padded computation: every position a token, every column scored.
#[allow(clippy::too_many_arguments)]
fn padded(
    cfg: &ModelConfig,
    layout: &Layout,
    p: &Params,
    ids: &[u32],
    b: usize,
    pad: &[usize],
    from: usize,
    budget: Budget,
) -> (Vec<f32>, Tape) {
    let s = ids.len() / b;
    let positions: Vec<usize> = (0..b)
        .flat_map(|r| (0..s).map(move |t| t.saturating_sub(pad[r])))
        .collect();
    let jobs: Vec<AttnJob> = (0..b)
        .filter(|&r| pad[r] < s)
        .map(|r| AttnJob {
            q0: r * s + pad[r],
            n: s - pad[r],
            p0: 0,
            np: 0,
        })
        .collect();
    let units = (0..jobs.len()).map(|j| j..j + 1).collect();
    let (mut sel, mut targets) = (vec![], vec![]);
    for r in 0..b {
        for t in from - 1..s - 1 {
            sel.push(r * s + t);
            targets.push(ids[r * s + t + 1]);
        }
    }
    let out = forward_core(
        cfg, layout, p, ids, &positions, jobs, units, sel, targets, None, None, 0.8, budget,
    );
    out.expect("the padded forward pass runs")
}

#[test]
fn a_batch_without_its_padding_gives_the_padded_numbers() {
    let (b, s) = (5, 130);
    // A row with no padding, short and long paddings, a row of one token, a row of padding only:
    // 650 positions, three blocks of the token sums.
    let pad = [0, 7, 40, 129, 130];
    let ids: Vec<u32> = (0..b * s)
        .map(|i| {
            if i % s < pad[i / s] {
                0
            } else {
                1 + ((i * 7919 + i / s * 131) % 400) as u32
            }
        })
        .collect();
    for family in ["qwen2", "qwen3", "llama"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf-parity")
            .join(family);
        let ck = Checkpoint::load(&dir, &Device::Cpu).expect("fixture loads");
        let (cfg, layout) = (&ck.config, Layout::of(&ck.config));
        let named = ck.weights.iter().map(|(k, v)| (k.as_str(), v));
        let budgets = [
            Budget::default(),
            // Head chunks of 37 rows, and every layer recomputed in the backward pass.
            Budget {
                head_floats: 37 * cfg.vocab_size,
                tape_floats: 1,
            },
        ];
        with_params(named, |p| -> crate::model::error::Result<()> {
            for (budget, from) in budgets.into_iter().flat_map(|bu| [(bu, 1), (bu, 100)]) {
                let n = s - from;
                // A loss's gradient: uneven weights on the real columns, 0 on those predicted from
                // padding (as every masked loss gives).
                let real = |i: usize| i % n + from > pad[i / n];
                let dlp: Vec<f32> = (0..b * n)
                    .map(|i| {
                        if real(i) {
                            ((i * 5) % 7) as f32 - 2.5
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let (lp_c, tape_c) = forward(cfg, &layout, p, &ids, b, &pad, from, 0.8, budget)?;
                let (lp_p, tape_p) = padded(cfg, &layout, p, &ids, b, &pad, from, budget);
                let what = format!("{family}, from {from}, {budget:?}");
                assert_eq!(lp_c.len(), lp_p.len(), "{what}");
                for (i, (c, q)) in lp_c.iter().zip(&lp_p).enumerate() {
                    if real(i) {
                        assert_eq!(c, q, "{what}: log-prob {i}");
                    } else {
                        assert_eq!(*c, 0.0, "{what}: column {i} is predicted from padding");
                    }
                }
                let (mut g_c, mut g_p) = (FlatGrads::new(), FlatGrads::new());
                backward(cfg, &layout, p, tape_c, &dlp, &mut g_c)?;
                backward(cfg, &layout, p, tape_p, &dlp, &mut g_p)?;
                assert_eq!(
                    g_c.keys().collect::<Vec<_>>(),
                    g_p.keys().collect::<Vec<_>>()
                );
                for (name, g) in &g_c {
                    let same = g.iter().zip(&g_p[name]).all(|(x, y)| x == y);
                    assert!(same && g.len() == g_p[name].len(), "{what}: `{name}`");
                    assert!(g.iter().any(|&x| x != 0.0), "{what}: `{name}` is all zeros");
                }
            }
            Ok(())
        })
        .expect("the passes run");
    }
}
