//! The training path and checkpoint I/O: gradients reach every parameter and agree with finite
//! differences, save → load is exact, bad checkpoints are refused by name, snapshots are immutable,
//! and a sample depends on its own seed only.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Result;
use rpt::model::{
    AdamW, AdamWConfig, Checkpoint, Decoder, Device, GradPath, Grads, Mode, SampleParams, Tensor,
    Trainable, generate, token_logprobs,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf-parity")
        .join(name)
}

/// A left-padded batch of two rows (the second padded by 5).
fn batch() -> (Tensor, Vec<usize>) {
    let rows = [
        vec![496u32, 315, 286, 263, 10, 90, 303, 201, 261, 320, 223, 61],
        vec![0, 0, 0, 0, 0, 88, 11, 350, 223, 88, 300, 223],
    ];
    (
        Tensor::from_vec(rows.concat(), (2, 12), &Device::Cpu).unwrap(),
        vec![0, 5],
    )
}

/// Mean log-prob of the real tokens of `batch()` (targets from position 6 on, all real).
fn objective(model: &Decoder) -> Result<Tensor> {
    let (ids, pad) = batch();
    Ok(token_logprobs(model, &ids, &pad, 6, 1.0, Mode::Train)?.mean_all()?)
}

/// The gradient of `objective` on `path`, through `Trainable::value_and_grad`.
fn objective_grads(params: &Trainable) -> Result<(f32, Grads)> {
    let (ids, pad) = batch();
    params.value_and_grad(&ids, &pad, 6, 1.0, |lp| {
        let m = lp.mean_all()?;
        let v = m.to_scalar::<f32>()?;
        Ok::<_, anyhow::Error>((m, v))
    })
}

#[test]
fn every_parameter_gets_a_gradient_that_matches_finite_differences() -> Result<()> {
    for (family, path) in ["qwen2", "qwen3", "llama"]
        .into_iter()
        .flat_map(|f| [(f, GradPath::Autograd), (f, GradPath::Fused)])
    {
        let ck = Checkpoint::load(&fixture(family), &Device::Cpu)?;
        let mut params = Trainable::new(&ck.config, &ck.weights)?;
        params.path = path;
        let (value, grads) = objective_grads(&params)?;
        let want = objective(&params.decoder()?)?.to_scalar::<f32>()?;
        assert!(
            (value - want).abs() < 1e-5,
            "{family} {path:?}: objective {value} vs {want}"
        );
        let mut checked = 0;
        for (name, _) in params.vars() {
            let g = grads
                .get(name)
                .unwrap_or_else(|| panic!("{family} {path:?}: `{name}` has no gradient"));
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{family}: `{name}` gradient norm {norm}"
            );
            // Directional finite difference along the gradient: (L(w + h·u) − L(w − h·u)) / 2h = |g|.
            if name.contains("layers.1.") || name.contains("embed") || name.contains("lm_head") {
                let w = ck.weights[name.as_str()].clone();
                let u = (g / norm as f64)?;
                let h = 1e-2;
                let eval = |delta: &Tensor| -> Result<f32> {
                    let mut weights = ck.weights.clone();
                    weights.insert(name.clone(), (&w + delta)?);
                    Ok(objective(&Decoder::new(&ck.config, &weights)?)?.to_scalar::<f32>()?)
                };
                let fd = (eval(&(&u * h)?)? - eval(&(&u * -h)?)?) / (2.0 * h as f32);
                let rel = (fd - norm).abs() / norm;
                assert!(
                    rel < 0.05,
                    "{family} {path:?}: `{name}` finite difference {fd} vs backward {norm}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 8, "{family}: only {checked} tensors checked");
    }
    Ok(())
}

/// Every gradient of `fused` within 1e-3 of the largest of its tensor in `autograd`.
fn assert_grads_close(family: &str, autograd: &Grads, fused: &Grads) -> Result<()> {
    for (name, a) in autograd {
        let a: Vec<f32> = a.flatten_all()?.to_vec1()?;
        let f: Vec<f32> = fused[name].flatten_all()?.to_vec1()?;
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        for (x, y) in a.iter().zip(&f) {
            assert!(
                (x - y).abs() <= 1e-3 * scale,
                "{family}: `{name}` gradient {x} (autograd) vs {y} (fused), max |g| {scale}"
            );
        }
    }
    Ok(())
}

/// The hand-written pass and candle's autograd give the same log-probs and the same gradient for
/// every parameter, on a padded batch, at a temperature, with an uneven upstream gradient.
#[test]
fn fused_and_autograd_gradients_agree() -> Result<()> {
    for family in ["qwen2", "qwen3", "llama"] {
        let ck = Checkpoint::load(&fixture(family), &Device::Cpu)?;
        let (ids, pad) = batch();
        // Row 1 is padded by 5: its columns 0 and 1 are predicted from padding positions, which
        // are masked out of every loss (the two paths leave different finite values there).
        let predicted_from_padding = |i: usize| i / 8 == 1 && i % 8 + 3 < 5;
        let weights = Tensor::from_vec(
            (0..2 * 8)
                .map(|i| {
                    if predicted_from_padding(i) {
                        0.0
                    } else {
                        ((i * 7) % 5) as f32 - 1.5
                    }
                })
                .collect(),
            (2, 8),
            &Device::Cpu,
        )?;
        let run = |path| -> Result<(Vec<Vec<f32>>, Grads)> {
            let mut params = Trainable::new(&ck.config, &ck.weights)?;
            params.path = path;
            params.value_and_grad(&ids, &pad, 4, 0.7, |lp| {
                Ok::<_, anyhow::Error>(((lp * &weights)?.sum_all()?, lp.to_vec2()?))
            })
        };
        let (lp_a, g_a) = run(GradPath::Autograd)?;
        let (lp_f, g_f) = run(GradPath::Fused)?;
        for (r, (a, f)) in lp_a.iter().zip(&lp_f).enumerate() {
            for (c, (x, y)) in a.iter().zip(f).enumerate() {
                if predicted_from_padding(r * 8 + c) {
                    continue;
                }
                assert!(
                    (x - y).abs() < 1e-4,
                    "{family}: log-prob ({r}, {c}) {x} vs {y}"
                );
            }
        }
        assert_eq!(
            g_a.keys().collect::<Vec<_>>(),
            g_f.keys().collect::<Vec<_>>(),
            "{family}: different parameters got gradients"
        );
        assert_grads_close(family, &g_a, &g_f)?;
    }
    Ok(())
}

/// Rows long enough that a layer's attention probabilities exceed what the forward pass keeps: the
/// backward pass recomputes them, and the gradients still agree with candle's autograd.
#[test]
fn long_rows_recompute_attention_and_agree_with_autograd() -> Result<()> {
    for family in ["qwen2", "qwen3", "llama"] {
        let ck = Checkpoint::load(&fixture(family), &Device::Cpu)?;
        let (rows, len, from) = (8usize, 400usize, 390usize);
        let heads = ck.config.num_attention_heads;
        assert!(heads * rows * len * len > rpt::cpu::KEEP_PROBS_FLOATS);
        let ids: Vec<u32> = (0..rows * len)
            .map(|i| 1 + ((i * 7919 + i / len * 131) % 509) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (rows, len), &Device::Cpu)?;
        let pad = vec![0; rows];
        let weights = Tensor::from_vec(
            (0..rows * (len - from))
                .map(|i| ((i * 7) % 5) as f32 - 1.5)
                .collect(),
            (rows, len - from),
            &Device::Cpu,
        )?;
        let run = |path| -> Result<Grads> {
            let mut params = Trainable::new(&ck.config, &ck.weights)?;
            params.path = path;
            Ok(params
                .value_and_grad(&ids, &pad, from, 1.0, |lp| {
                    Ok::<_, anyhow::Error>(((lp * &weights)?.sum_all()?, ()))
                })?
                .1)
        };
        let (g_a, g_f) = (run(GradPath::Autograd)?, run(GradPath::Fused)?);
        assert_eq!(g_a.len(), g_f.len(), "{family}");
        assert_grads_close(family, &g_a, &g_f)?;
    }
    Ok(())
}

/// GRPO groups with each prompt computed once and shared by its completions give the log-probs and
/// gradients of the left-padded batch of prompt ++ completion rows, on every family; candle's autograd
/// path (which pads) gives them too.
#[test]
fn shared_prompts_match_the_padded_batch() -> Result<()> {
    let p1 = vec![496u32, 315, 286, 90, 303];
    let p2 = vec![511u32, 223];
    let comps = [
        vec![40u32, 81, 81],
        vec![28u32],
        vec![201u32, 261, 320, 7],
        vec![5u32, 6],
    ];
    let groups: Vec<(&[u32], Vec<&[u32]>)> = vec![
        (&p1, vec![&comps[0], &comps[1], &comps[2]]),
        (&p2, vec![&comps[3], &comps[0]]),
    ];
    let c = 4;
    let lens: Vec<usize> = groups
        .iter()
        .flat_map(|g| g.1.iter().map(|x| x.len()))
        .collect();
    let n = lens.len();
    // Uneven weights on the completions' columns, 0 on the columns before each completion.
    let w: Vec<f32> = (0..n * c)
        .map(|i| {
            if i % c < c - lens[i / c] {
                0.0
            } else {
                ((i * 5) % 7) as f32 - 2.5
            }
        })
        .collect();
    let weights = Tensor::from_vec(w.clone(), (n, c), &Device::Cpu)?;
    let loss = |lp: &Tensor| -> Result<(Tensor, Vec<f32>)> {
        Ok(((lp * &weights)?.sum_all()?, lp.flatten_all()?.to_vec1()?))
    };
    for family in ["qwen2", "qwen3", "llama"] {
        let ck = Checkpoint::load(&fixture(family), &Device::Cpu)?;
        let mut params = Trainable::new(&ck.config, &ck.weights)?;
        let (lp_s, g_s) = params.value_and_grad_groups(&groups, c, 0.7, loss)?;
        let full: Vec<Vec<u32>> = groups
            .iter()
            .flat_map(|(p, cs)| cs.iter().map(move |x| [*p, *x].concat()))
            .collect();
        let batch = rpt::model::left_pad(&full, &Device::Cpu)?;
        let (lp_d, g_d) =
            params.value_and_grad(&batch.ids, &batch.pad, batch.width - c, 0.7, loss)?;
        params.path = GradPath::Autograd;
        let (lp_a, g_a) = params.value_and_grad_groups(&groups, c, 0.7, loss)?;
        for (i, &wi) in w.iter().enumerate() {
            if wi == 0.0 {
                assert_eq!(lp_s[i], 0.0, "{family}: column before a completion");
                continue;
            }
            for (other, name) in [(&lp_d, "padded"), (&lp_a, "autograd")] {
                assert!(
                    (lp_s[i] - other[i]).abs() < 1e-5,
                    "{family}: log-prob {i}: shared {} vs {name} {}",
                    lp_s[i],
                    other[i]
                );
            }
        }
        for (g_other, what) in [(&g_d, "padded"), (&g_a, "autograd")] {
            assert_eq!(
                g_s.keys().collect::<Vec<_>>(),
                g_other.keys().collect::<Vec<_>>()
            );
            for (name, a) in &g_s {
                let a: Vec<f32> = a.flatten_all()?.to_vec1()?;
                let b: Vec<f32> = g_other[name].flatten_all()?.to_vec1()?;
                let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                assert!(scale > 0.0, "{family}: `{name}` got no gradient");
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() <= 1e-3 * scale,
                        "{family}: `{name}` gradient {x} (shared) vs {y} ({what}), max |g| {scale}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn save_then_load_gives_identical_logits() -> Result<()> {
    for family in ["qwen2", "llama"] {
        let ck = Checkpoint::load(&fixture(family), &Device::Cpu)?;
        let dir = tempfile::tempdir()?;
        Checkpoint::save(dir.path(), &ck.config, &ck.tokenizer, &ck.weights)?;
        let again = Checkpoint::load(dir.path(), &Device::Cpu)?;
        assert_eq!(again.config, ck.config);
        let (ids, pad) = batch();
        let a: Vec<Vec<f32>> =
            token_logprobs(&ck.decoder()?, &ids, &pad, 6, 1.0, Mode::Infer)?.to_vec2()?;
        let b: Vec<Vec<f32>> =
            token_logprobs(&again.decoder()?, &ids, &pad, 6, 1.0, Mode::Infer)?.to_vec2()?;
        assert_eq!(a, b, "{family}");
        let names = safetensors_names(&dir.path().join("model.safetensors"))?;
        assert_eq!(
            names.contains(&"lm_head.weight".to_string()),
            !ck.config.tie_word_embeddings,
            "{family}"
        );
        assert!(names.contains(&"model.layers.0.self_attn.q_proj.weight".to_string()));
    }
    Ok(())
}

fn safetensors_names(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    Ok(st.names().into_iter().map(str::to_string).collect())
}

/// Copies a fixture into a temp dir so a test can break it.
fn broken_copy(family: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture(family).join(f), dir.path().join(f))?;
    }
    Ok(dir)
}

fn load_err(dir: &Path) -> String {
    match Checkpoint::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn rewrite_weights(
    dir: &Path,
    edit: impl Fn(&mut std::collections::HashMap<String, Tensor>),
) -> Result<()> {
    let path = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu)?;
    edit(&mut t);
    candle_core::safetensors::save(&t, &path)?;
    Ok(())
}

#[test]
fn broken_checkpoints_are_refused_by_name() -> Result<()> {
    let dir = broken_copy("qwen2")?;
    rewrite_weights(dir.path(), |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    })?;
    let e = load_err(dir.path());
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight")
            && e.contains("missing")
            && e.contains("[128, 64]"),
        "{e}"
    );

    let dir = broken_copy("qwen2")?;
    rewrite_weights(dir.path(), |t| {
        t.insert(
            "model.norm.weight".into(),
            Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    })?;
    let e = load_err(dir.path());
    assert!(
        e.contains("model.norm.weight") && e.contains("[32]") && e.contains("[64]"),
        "{e}"
    );

    let dir = broken_copy("qwen2")?;
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );

    let dir = broken_copy("qwen2")?;
    let cfg = std::fs::read_to_string(dir.path().join("config.json"))?
        .replace("\"vocab_size\": 512", "\"vocab_size\": 100");
    std::fs::write(dir.path().join("config.json"), cfg)?;
    let e = load_err(dir.path());
    assert!(
        e.contains("tokenizer.json") && e.contains("512") && e.contains("100"),
        "{e}"
    );

    let dir = broken_copy("qwen2")?;
    let cfg = std::fs::read_to_string(dir.path().join("config.json"))?
        .replace("\"qwen2\"", "\"mistral\"");
    std::fs::write(dir.path().join("config.json"), cfg)?;
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json") && e.contains("model_type") && e.contains("mistral"),
        "{e}"
    );

    let e = load_err(Path::new("/nonexistent/model"));
    assert!(e.contains("/nonexistent/model"), "{e}");

    // bf16 on disk loads and computes in f32.
    let dir = broken_copy("qwen2")?;
    rewrite_weights(dir.path(), |t| {
        for v in t.values_mut() {
            *v = v.to_dtype(candle_core::DType::BF16).unwrap();
        }
    })?;
    let ck = Checkpoint::load(dir.path(), &Device::Cpu)?;
    assert_eq!(
        ck.weights["model.norm.weight"].dtype(),
        candle_core::DType::F32
    );
    Ok(())
}

#[test]
fn an_optimizer_step_never_touches_a_snapshot() -> Result<()> {
    let ck = Checkpoint::load(&fixture("qwen3"), &Device::Cpu)?;
    let params = Trainable::new(&ck.config, &ck.weights)?;
    let snapshot = params.snapshot()?;
    let before: Vec<f32> = snapshot["model.embed_tokens.weight"]
        .flatten_all()?
        .to_vec1()?;
    let mut opt = AdamW::new(AdamWConfig {
        lr: 0.1,
        ..Default::default()
    });
    let (value, grads) = objective_grads(&params)?;
    // Gradient ascent on the objective: step along −grad of −objective.
    let grads: Grads = grads
        .into_iter()
        .map(|(k, g)| Ok((k, g.neg()?)))
        .collect::<Result<_>>()?;
    let loss = Tensor::new(-value, &Device::Cpu)?;
    opt.step(&params, &grads, 0.1, 1.0)?;
    let after: Vec<f32> = snapshot["model.embed_tokens.weight"]
        .flatten_all()?
        .to_vec1()?;
    assert_eq!(
        before, after,
        "the snapshot changed under an optimizer step"
    );
    let live: Vec<f32> = params.snapshot()?["model.embed_tokens.weight"]
        .flatten_all()?
        .to_vec1()?;
    assert_ne!(before, live, "the optimizer did not move the weights");
    // And the step improved the objective.
    let improved = objective(&params.decoder()?)?.to_scalar::<f32>()?;
    assert!(
        improved > -loss.to_scalar::<f32>()?,
        "AdamW step did not raise the log-likelihood"
    );
    Ok(())
}

#[test]
fn moments_made_up_front_change_no_update() -> Result<()> {
    let ck = Checkpoint::load(&fixture("qwen3"), &Device::Cpu)?;
    let cfg = AdamWConfig {
        lr: 0.1,
        ..Default::default()
    };
    let (early, lazy) = (
        Trainable::new(&ck.config, &ck.weights)?,
        Trainable::new(&ck.config, &ck.weights)?,
    );
    let (mut reserved, mut plain) = (AdamW::new(cfg.clone()), AdamW::new(cfg));
    reserved.reserve(&early)?;
    assert!(plain.state()?.is_empty());
    let state = reserved.state()?;
    assert_eq!(
        state.len(),
        2 * early.vars().count(),
        "a moment pair per parameter"
    );
    for (name, t) in &state {
        let nonzero = t.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(nonzero, 0.0, "{name} is not zero before any step");
    }
    for _ in 0..2 {
        for (params, opt) in [(&early, &mut reserved), (&lazy, &mut plain)] {
            let (_, grads) = objective_grads(params)?;
            opt.step(params, &grads, 0.1, 0.5)?;
        }
    }
    let (a, b) = (early.snapshot()?, lazy.snapshot()?);
    let (sa, sb) = (reserved.state()?, plain.state()?);
    assert_eq!(sa.len(), sb.len());
    for (x, y) in [(&a, &b), (&sa, &sb)] {
        for (name, t) in x {
            let (t, u): (Vec<f32>, Vec<f32>) = (
                t.flatten_all()?.to_vec1()?,
                y[name].flatten_all()?.to_vec1()?,
            );
            assert!(
                t.iter().zip(&u).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{name} differs"
            );
        }
    }
    Ok(())
}

#[test]
fn a_sample_depends_on_its_seed_not_on_its_batch() -> Result<()> {
    let ck = Checkpoint::load(&fixture("qwen2"), &Device::Cpu)?;
    let model = ck.decoder()?;
    let params = SampleParams {
        temperature: 0.8,
        top_p: 0.95,
        max_new_tokens: 12,
        ..Default::default()
    };
    let a = vec![496u32, 315, 286];
    let b = vec![511u32, 223, 40, 81, 81, 28, 201];
    let alone = generate(
        &model,
        std::slice::from_ref(&a),
        &params,
        &[42],
        &[],
        &|_, _| false,
    )?;
    // In a batch of 20 rows, longer and shorter prompts around it (more rows than the few-row
    // kernel's threshold): the same tokens, and the same log-probs to the bit, since each row is
    // computed the same way whatever else is in the batch.
    let mut batch = vec![b.clone(), a.clone()];
    let mut seeds = vec![1u64, 42];
    for i in 0..18u32 {
        batch.push(b[..1 + (i as usize % b.len())].to_vec());
        seeds.push(100 + i as u64);
    }
    let together = generate(&model, &batch, &params, &seeds, &[], &|_, _| false)?;
    assert_eq!(alone[0].tokens, together[1].tokens);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&alone[0].logprobs), bits(&together[1].logprobs));
    let other = generate(
        &model,
        std::slice::from_ref(&a),
        &params,
        &[43],
        &[],
        &|_, _| false,
    )?;
    assert_ne!(
        alone[0].tokens, other[0].tokens,
        "different seeds gave the same 12 tokens"
    );
    // Recorded log-probs are those of teacher-forced scoring at the same temperature.
    let full: Vec<u32> = a.iter().chain(&alone[0].tokens).copied().collect();
    let ids = Tensor::from_vec(full.clone(), (1, full.len()), &Device::Cpu)?;
    let lp: Vec<f32> = token_logprobs(&model, &ids, &[0], a.len(), 0.8, Mode::Train)?
        .squeeze(0)?
        .to_vec1()?;
    for (x, y) in lp.iter().zip(&alone[0].logprobs) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    // A stop rule ends the row; EOS ends it too.
    let stopped = generate(
        &model,
        std::slice::from_ref(&a),
        &params,
        &[42],
        &[],
        &|_, t| t.len() == 3,
    )?;
    assert_eq!(stopped[0].tokens, alone[0].tokens[..3]);
    assert_eq!(stopped[0].finish, rpt::model::Finish::Stop);
    let eos = alone[0].tokens[4];
    let ended = generate(&model, &[a], &params, &[42], &[eos], &|_, _| false)?;
    let first = alone[0].tokens.iter().position(|&t| t == eos).unwrap();
    assert_eq!(ended[0].tokens, alone[0].tokens[..=first]);
    assert_eq!(ended[0].finish, rpt::model::Finish::Eos);
    Ok(())
}

/// The hand-written CPU sampling path and candle's ops draw the same tokens with the same log-probs,
/// on every family, in a padded batch, with a stop rule.
#[test]
fn host_and_candle_sampling_agree() -> Result<()> {
    use rpt::model::{InferPath, generate_on};
    let params = SampleParams {
        temperature: 0.8,
        top_p: 0.95,
        max_new_tokens: 14,
        ..Default::default()
    };
    let prompts = vec![
        vec![496u32, 315, 286],
        vec![511u32, 223, 40, 81, 81, 28, 201],
        vec![90u32, 303, 201, 261, 320],
    ];
    for family in ["qwen2", "qwen3", "llama"] {
        let ck = Checkpoint::load(&fixture(family), &Device::Cpu)?;
        let model = ck.decoder()?;
        let stop = |r: usize, t: &[u32]| r == 2 && t.len() == 9;
        let run = |path| generate_on(path, &model, &prompts, &params, &[7, 8, 9], &[], &stop);
        let (host, candle) = (run(InferPath::Auto)?, run(InferPath::Candle)?);
        for (h, c) in host.iter().zip(&candle) {
            assert_eq!(h.tokens, c.tokens, "{family}: tokens differ");
            assert_eq!(h.finish, c.finish);
            for (x, y) in h.logprobs.iter().zip(&c.logprobs) {
                assert!((x - y).abs() < 1e-4, "{family}: log-prob {x} vs {y}");
            }
        }
        assert_eq!(
            host[2].tokens.len(),
            9,
            "{family}: the stop rule did not end row 2"
        );
    }
    Ok(())
}

/// At a real vocabulary the rows of a batch pick their tokens in parallel; each still draws from its
/// own stream, so a row's tokens and log-probs are those it gets alone, with and without top-p.
#[test]
fn a_large_vocabulary_sample_depends_on_its_seed_not_on_its_batch() -> Result<()> {
    let (_dir, out, _) = common::random_model(
        serde_json::json!({"model_type": "qwen2", "vocab_size": 40000, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 16, "tie_word_embeddings": true,
            "max_position_embeddings": 64}),
        5,
    )?;
    let model = Checkpoint::load(&out, &Device::Cpu)?.decoder()?;
    let prompts: Vec<Vec<u32>> = (0..5u32)
        .map(|i| {
            (0..2 + i)
                .map(|j| (i * 7919 + j * 104_729) % 40_000)
                .collect()
        })
        .collect();
    let seeds: Vec<u64> = (0..5).map(|i| 17 + i).collect();
    for top_p in [1.0, 0.9] {
        let params = SampleParams {
            temperature: 1.5,
            top_p,
            max_new_tokens: 6,
            ..Default::default()
        };
        let together = generate(&model, &prompts, &params, &seeds, &[], &|_, _| false)?;
        let mut seen = std::collections::HashSet::new();
        for (r, (p, &s)) in prompts.iter().zip(&seeds).enumerate() {
            let alone = generate(
                &model,
                std::slice::from_ref(p),
                &params,
                &[s],
                &[],
                &|_, _| false,
            )?;
            assert_eq!(
                alone[0].tokens, together[r].tokens,
                "row {r}, top_p {top_p}"
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&alone[0].logprobs), bits(&together[r].logprobs));
            seen.extend(alone[0].tokens.iter().copied());
        }
        // A random model at a high temperature spreads its picks over the vocabulary: the rows did
        // not all fall on one token, so the comparison above compares something.
        assert!(seen.len() > 10, "{seen:?}");
    }
    Ok(())
}
