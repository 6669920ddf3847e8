//! The update in micro-batches: gradients accumulated over micro-batches of a token budget equal those
//! of one big batch (every family, both gradient paths, every loss aggregation), and a real-vocabulary
//! model takes a GRPO step with a small budget.

mod common;

use std::path::Path;

use anyhow::Result;
use rpt::config::Config;
use rpt::env::State;
use rpt::grpo::LossAgg;
use rpt::learn::{Learner, micro_batches};
use rpt::model::{Checkpoint, Device, GradPath, Rng};
use rpt::reward::Reward;
use rpt::rollout::{Completion, Group, ScoredGroup};

fn fixture(family: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf-parity")
        .join(family)
}

/// `groups` groups of `g` completions of varied lengths (one empty), ids below `vocab`.
fn batch(groups: usize, g: usize, vocab: u32, seed: u64) -> Vec<ScoredGroup> {
    let mut rng = Rng::new(seed);
    (0..groups)
        .map(|k| {
            let prompt: Vec<u32> = (0..5 + k * 3)
                .map(|_| 1 + rng.below(vocab as usize - 1) as u32)
                .collect();
            let completions = (0..g)
                .map(|i| {
                    let n = if i == 1 { 0 } else { 2 + (i * 3 + k) % 7 };
                    let tokens: Vec<u32> = (0..n)
                        .map(|_| 1 + rng.below(vocab as usize - 1) as u32)
                        .collect();
                    Completion {
                        logprobs: tokens
                            .iter()
                            .map(|_| -0.5 - rng.below(100) as f32 / 50.0)
                            .collect(),
                        thought_len: n.saturating_sub(2),
                        tokens,
                    }
                })
                .collect();
            let rewards = (0..g)
                .map(|i| Reward {
                    value: ((i + k) % 3) as f64 / 2.0,
                    correct: i % 2 == 0,
                    format: None,
                })
                .collect();
            ScoredGroup {
                group: Group {
                    seq: k as u64,
                    state: State {
                        doc: 0,
                        pos: k,
                        context: prompt.clone(),
                        continuation: b"x".to_vec(),
                        boundaries: vec![1],
                        next_token: 1,
                    },
                    prompt,
                    completions,
                    version: 0,
                },
                rewards,
            }
        })
        .collect()
}

fn advantages(b: &[ScoredGroup]) -> Vec<Vec<f64>> {
    let r: Vec<Vec<f64>> = b
        .iter()
        .map(|g| g.rewards.iter().map(|r| r.value).collect())
        .collect();
    rpt::grpo::advantages(
        &r,
        rpt::grpo::AdvantageMode::Grpo(rpt::grpo::ScaleRewards::Group),
    )
}

#[test]
fn micro_batches_cover_every_completion_once_within_the_budget() {
    let b = batch(4, 6, 500, 1);
    for budget in [1, 8, 20, 50, 10_000] {
        let pieces = micro_batches(&b, budget);
        let mut seen = vec![];
        for piece in &pieces {
            let mut used = 0;
            for (g, r) in piece {
                used += b[*g].group.prompt.len();
                for i in r.clone() {
                    used += b[*g].group.completions[i].tokens.len();
                    seen.push((*g, i));
                }
            }
            let single = piece.len() == 1 && piece[0].1.len() == 1;
            assert!(
                used <= budget || single,
                "budget {budget}: {used} tokens in {piece:?}"
            );
        }
        let want: Vec<(usize, usize)> = (0..4).flat_map(|g| (0..6).map(move |i| (g, i))).collect();
        assert_eq!(seen, want, "budget {budget}");
        if budget == 10_000 {
            assert_eq!(pieces.len(), 1);
        }
    }
}

#[test]
fn micro_batched_gradients_equal_one_batch() -> Result<()> {
    for family in ["qwen2", "qwen3", "llama"] {
        let ck = Checkpoint::load(&fixture(family), &Device::Cpu)?;
        let b = batch(3, 4, 500, 7);
        let adv = advantages(&b);
        for path in [GradPath::Fused, GradPath::Autograd] {
            for agg in [
                LossAgg::TokenMean,
                LossAgg::SeqMeanTokenMean,
                LossAgg::SeqMeanTokenSumNorm,
            ] {
                let mut cfg = Config::default();
                cfg.grpo.loss_agg_mode = agg;
                cfg.rollout.max_new_tokens = 10;
                let grads = |budget: usize| -> Result<_> {
                    let mut c = cfg.clone();
                    c.grpo.micro_batch_tokens = budget;
                    let mut l = Learner::new(&c, &ck.weights, &ck.config)?;
                    l.params.path = path;
                    Ok(l.gradients(&b, &adv)?)
                };
                let (one, g1) = grads(100_000)?;
                let (many, gm) = grads(12)?;
                assert!(micro_batches(&b, 12).len() > 3);
                let what = format!("{family} {path:?} {agg:?}");
                assert!(
                    (one.loss - many.loss).abs() < 1e-5,
                    "{what}: {} vs {}",
                    one.loss,
                    many.loss
                );
                assert_eq!(one.tokens, many.tokens, "{what}");
                assert!((one.clip_low - many.clip_low).abs() < 1e-9, "{what}");
                assert!((one.entropy - many.entropy).abs() < 1e-5, "{what}");
                assert_eq!(g1.len(), gm.len(), "{what}");
                for (name, a) in &g1 {
                    let a: Vec<f32> = a.flatten_all()?.to_vec1()?;
                    let b: Vec<f32> = gm[name].flatten_all()?.to_vec1()?;
                    let scale = a.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
                    for (x, y) in a.iter().zip(&b) {
                        assert!(
                            (x - y).abs() <= 1e-4 * scale,
                            "{what} {name}: {x} vs {y} (largest {scale})"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn a_real_vocabulary_model_steps_within_a_small_budget() -> Result<()> {
    let (_dir, out, r) = common::random_model(
        serde_json::json!({"model_type": "qwen3", "vocab_size": 32768, "hidden_size": 512,
            "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 8,
            "num_key_value_heads": 4, "head_dim": 64, "tie_word_embeddings": true,
            "max_position_embeddings": 512}),
        3,
    )?;
    assert!(r.parameters >= 20_000_000, "{}", r.parameters);
    let ck = Checkpoint::load(&out, &Device::Cpu)?;
    let b = batch(2, 4, 32_000, 11);
    let adv = advantages(&b);
    let mut cfg = Config::default();
    cfg.grpo.micro_batch_tokens = 16;
    cfg.optim.lr = 1e-3;
    let mut l = Learner::new(&cfg, &ck.weights, &ck.config)?;
    // The same gradients as one batch, at a real vocabulary.
    assert!(micro_batches(&b, 16).len() > 2);
    let (_, small) = l.gradients(&b, &adv)?;
    let mut whole = cfg.clone();
    whole.grpo.micro_batch_tokens = 100_000;
    let (_, one) = Learner::new(&whole, &ck.weights, &ck.config)?.gradients(&b, &adv)?;
    for (name, t) in &one {
        let d = (t - &small[name])?.abs()?.max_all()?.to_scalar::<f32>()?;
        let m = t.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
        assert!(d <= 1e-4 * m, "{name}: {d} of {m}");
    }
    // And with the head in chunks of 3 rows of the 32,768-word vocabulary.
    let mut chunked = Learner::new(&cfg, &ck.weights, &ck.config)?;
    chunked.params.head_chunk_floats = 3 * 32_768;
    let (_, in_chunks) = chunked.gradients(&b, &adv)?;
    for (name, t) in &one {
        let d = (t - &in_chunks[name])?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let m = t.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
        assert!(d <= 1e-4 * m, "{name} in head chunks: {d} of {m}");
    }
    let before = l.params.snapshot()?;
    let stats = l.update(&b)?;
    assert!(
        stats.loss.loss.is_finite() && stats.grad_norm > 0.0,
        "{stats:?}"
    );
    let after = l.params.snapshot()?;
    let moved = before.iter().any(|(k, t)| {
        (t - &after[k])
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    });
    assert!(moved, "no weight changed");
    Ok(())
}

#[test]
fn sub_batched_sampling_gives_the_same_bits_as_one_batch() -> Result<()> {
    use rpt::model::SampleParams;
    use rpt::rollout::{PolicySnapshot, sample_groups};
    for family in ["qwen2", "qwen3", "llama"] {
        let ck = Checkpoint::load(&fixture(family), &Device::Cpu)?;
        let snap = PolicySnapshot {
            version: 0,
            model: std::sync::Arc::new(ck.decoder()?),
        };
        let prompt = rpt::prompt::Prompt::new("{context}", &ck.tokenizer)?;
        let states: Vec<(u64, State)> = batch(4, 1, 500, 5)
            .into_iter()
            .map(|g| (g.group.seq, g.group.state))
            .collect();
        let params = SampleParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 12,
        };
        for until_answer in [false, true] {
            let run = |budget: usize| {
                sample_groups(
                    &snap,
                    &ck.tokenizer,
                    &prompt,
                    &states,
                    3,
                    &params,
                    9,
                    2,
                    until_answer,
                    budget,
                )
            };
            let one = run(1 << 20)?;
            // One row at a time, and sub-batches that cut through groups.
            for budget in [1, 60] {
                let sub = run(budget)?;
                assert_eq!(one, sub, "{family}, budget {budget}");
            }
            assert!(one.iter().all(|g| g.completions.len() == 3));
        }
    }
    Ok(())
}

/// The head's log-softmax and its gradient in chunks of rows (the fused path never holds a whole
/// batch's logits) equal one chunk's, on every family, through both fused entry points: the GRPO
/// update's shared-prompt pass and the padded pass.
#[test]
fn chunked_head_gradients_equal_one_chunk() -> Result<()> {
    use rpt::model::Tensor;
    let close = |what: &str, a: &rpt::model::Grads, b: &rpt::model::Grads| -> Result<()> {
        assert_eq!(a.len(), b.len(), "{what}");
        for (name, t) in a {
            let d = (t - &b[name])?.abs()?.max_all()?.to_scalar::<f32>()?;
            let m = t.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
            assert!(d <= 1e-5 * m, "{what} {name}: {d} of {m}");
        }
        Ok(())
    };
    for family in ["qwen2", "qwen3", "llama"] {
        let ck = Checkpoint::load(&fixture(family), &Device::Cpu)?;
        let vocab = ck.config.vocab_size;
        let b = batch(3, 4, 500, 5);
        let adv = advantages(&b);
        let mut cfg = Config::default();
        cfg.rollout.max_new_tokens = 10;
        let grads = |floats: usize| -> Result<_> {
            let mut l = Learner::new(&cfg, &ck.weights, &ck.config)?;
            assert_eq!(l.params.path, GradPath::Fused);
            l.params.head_chunk_floats = floats;
            Ok(l.gradients(&b, &adv)?)
        };
        let (one, g1) = grads(usize::MAX)?;
        for rows in [1, 3, 7] {
            let (many, gm) = grads(rows * vocab)?;
            assert!((one.loss - many.loss).abs() < 1e-6, "{family} {rows}");
            assert!((one.entropy - many.entropy).abs() < 1e-6, "{family} {rows}");
            close(&format!("{family} shared, {rows} rows a chunk"), &g1, &gm)?;
        }

        // The padded pass: log-probs identical, gradients equal.
        let ids: Vec<u32> = (0..3 * 12).map(|i| 1 + (i * 37 % 499) as u32).collect();
        let ids = Tensor::from_vec(ids, (3, 12), &Device::Cpu)?;
        let pad = [0, 4, 9];
        let run = |floats: usize| -> Result<(Vec<f32>, rpt::model::Grads)> {
            let mut p = rpt::model::Trainable::new(&ck.config, &ck.weights)?;
            p.head_chunk_floats = floats;
            let loss = |lp: &Tensor| -> std::result::Result<(Tensor, Vec<f32>), rpt::Error> {
                let w = Tensor::arange(0f32, lp.elem_count() as f32, &Device::Cpu)?
                    .reshape(lp.shape())?;
                Ok(((lp * w)?.sum_all()?, lp.flatten_all()?.to_vec1::<f32>()?))
            };
            Ok(p.value_and_grad(&ids, &pad, 2, 0.8, loss)?)
        };
        let (lp1, p1) = run(usize::MAX)?;
        let (lp2, p2) = run(2 * vocab)?;
        assert_eq!(
            lp1, lp2,
            "{family}: the log-probs are the same bits in chunks"
        );
        close(&format!("{family} padded"), &p1, &p2)?;
    }
    Ok(())
}

/// Activation checkpointing: with no room for the activations, each layer keeps only its input and
/// the backward pass recomputes the rest of it; log-probs and gradients are the same bits as with every
/// layer's activations kept, on all families, for GRPO groups (shared prompts, micro-batches) and for
/// a padded batch.
#[test]
fn checkpointed_layers_give_the_same_bits() -> Result<()> {
    use rpt::config::ActivationCheckpointing;
    use rpt::model::Tensor;
    let same = |what: &str, a: &rpt::model::Grads, b: &rpt::model::Grads| -> Result<()> {
        assert_eq!(a.len(), b.len(), "{what}");
        for (name, t) in a {
            let (x, y): (Vec<f32>, Vec<f32>) = (
                t.flatten_all()?.to_vec1()?,
                b[name].flatten_all()?.to_vec1()?,
            );
            assert!(
                x.iter().zip(&y).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{what} {name}"
            );
        }
        Ok(())
    };
    for family in ["qwen2", "qwen3", "llama"] {
        let ck = Checkpoint::load(&fixture(family), &Device::Cpu)?;
        let b = batch(3, 4, 500, 11);
        let adv = advantages(&b);
        let mut cfg = Config::default();
        cfg.rollout.max_new_tokens = 10;
        // Through the config key, as a run sets it.
        let grads = |mode: ActivationCheckpointing, budget: usize| -> Result<_> {
            let mut c = cfg.clone();
            c.grpo.micro_batch_tokens = budget;
            c.grpo.activation_checkpointing = mode;
            let l = Learner::new(&c, &ck.weights, &ck.config)?;
            let expected = match mode {
                ActivationCheckpointing::Always => 0,
                _ => usize::MAX,
            };
            assert_eq!(l.params.tape_floats, expected);
            Ok(l.gradients(&b, &adv)?)
        };
        for budget in [100_000, 12] {
            let (kept, gk) = grads(ActivationCheckpointing::Never, budget)?;
            let (redone, gr) = grads(ActivationCheckpointing::Always, budget)?;
            assert_eq!(
                kept.loss.to_bits(),
                redone.loss.to_bits(),
                "{family} {budget}"
            );
            same(&format!("{family} groups, budget {budget}"), &gk, &gr)?;
        }
        let ids: Vec<u32> = (0..3 * 12).map(|i| 1 + (i * 41 % 499) as u32).collect();
        let ids = Tensor::from_vec(ids, (3, 12), &Device::Cpu)?;
        let pad = [0, 4, 9];
        let run = |tape: usize| -> Result<(Vec<f32>, rpt::model::Grads)> {
            let mut p = rpt::model::Trainable::new(&ck.config, &ck.weights)?;
            p.tape_floats = tape;
            let loss = |lp: &Tensor| -> std::result::Result<(Tensor, Vec<f32>), rpt::Error> {
                let w = Tensor::arange(0f32, lp.elem_count() as f32, &Device::Cpu)?
                    .reshape(lp.shape())?;
                Ok(((lp * w)?.sum_all()?, lp.flatten_all()?.to_vec1::<f32>()?))
            };
            Ok(p.value_and_grad(&ids, &pad, 2, 0.8, loss)?)
        };
        let ((lp1, g1), (lp2, g2)) = (run(usize::MAX)?, run(0)?);
        assert_eq!(lp1, lp2, "{family} padded log-probs");
        same(&format!("{family} padded"), &g1, &g2)?;
    }
    Ok(())
}

/// The trainer/sampler mismatch on a batch's first pass: about zero where the learner scores the
/// sampler's own weights (the CPU paths compute the same numbers), and clearly not where one weight
/// of the learner is perturbed.
#[test]
fn the_mismatch_is_zero_for_the_same_weights_and_not_for_perturbed_ones() -> Result<()> {
    use rpt::model::{SampleParams, Tensor, generate};
    let ck = Checkpoint::load(&fixture("qwen2"), &Device::Cpu)?;
    let model = ck.decoder()?;
    let mut cfg = Config::default();
    cfg.rollout.max_new_tokens = 8;
    let params = SampleParams {
        temperature: cfg.rollout.temperature,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 8,
    };
    let mut b = batch(2, 4, 500, 3);
    for (k, g) in b.iter_mut().enumerate() {
        let prompts = vec![g.group.prompt.clone(); g.group.completions.len()];
        let seeds: Vec<u64> = (0..prompts.len() as u64)
            .map(|i| 10 * k as u64 + i)
            .collect();
        for (c, s) in g.group.completions.iter_mut().zip(generate(
            &model,
            &prompts,
            &params,
            &seeds,
            &[],
            &|_, _| false,
        )?) {
            c.tokens = s.tokens;
            c.logprobs = s.logprobs;
            c.thought_len = c.tokens.len() - 2;
        }
    }
    let adv = advantages(&b);
    let (same, _) = Learner::new(&cfg, &ck.weights, &ck.config)?.gradients(&b, &adv)?;
    assert!(same.tokens > 0);
    assert!(same.mismatch_max < 1e-4, "{same:?}");
    assert!(same.mismatch_k3.abs() < 1e-8, "{same:?}");

    let mut perturbed = ck.weights.clone();
    let name = "model.layers.0.mlp.down_proj.weight";
    let w: &Tensor = &perturbed[name];
    perturbed.insert(name.into(), (w * 1.5)?);
    let (off, _) = Learner::new(&cfg, &perturbed, &ck.config)?.gradients(&b, &adv)?;
    assert!(
        off.mismatch_max > 1e-3 && off.mismatch_mean > 1e-4,
        "{off:?}"
    );
    assert!(
        off.mismatch_k3 > 0.0 && off.mismatch_max >= off.mismatch_mean,
        "{off:?}"
    );
    Ok(())
}
