//! The pipelines end to end on a tiny built-in model: bootstrap (deterministic files), the difficulty
//! index (against entropies computed by hand, stale indexes refused), and training with the actor system
//! (every reward variant, determinism, resume, a failing policy, bad configs).

mod common;

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{D, Tensor};
use common::{learned_states, metrics, run, run_config, shared, without_placement, without_timing};
use rpt::config::{Advantage, Config, LossTokens};
use rpt::env::Split;
use rpt::model::{Checkpoint, Device, Mode, attention_mask, positions};
use rpt::pipeline::train::TrainOptions;
use rpt::pipeline::{bootstrap::bootstrap, load_texts, prepare, tokenize_splits};

#[test]
fn bootstrap_is_deterministic_and_loadable() -> Result<()> {
    let (root, cfg) = shared();
    let again = root.join("model-again");
    let report = bootstrap(cfg, &again, &Device::Cpu)?;
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(cfg.model.path.join(f))?,
            std::fs::read(again.join(f))?,
            "{f} differs between two runs"
        );
    }
    let ck = Checkpoint::load(&again, &Device::Cpu)?;
    assert_eq!(ck.config.vocab_size, ck.tokenizer.vocab_size());
    assert_eq!(ck.tokenizer.token_id("</think>"), Some(2));
    assert!(report.train_loss.is_finite() && report.heldout_loss.is_finite());
    assert!((0.0..=1.0).contains(&report.format_rate));
    Ok(())
}

#[test]
fn index_matches_entropies_computed_by_hand() -> Result<()> {
    let (_, cfg) = shared();
    let texts = load_texts(cfg)?;
    let index = prepare::load_index(cfg, Split::Heldout, &texts)?;
    let ck = Checkpoint::load(&cfg.model.path, &Device::Cpu)?;
    let model = ck.decoder()?;
    let splits = tokenize_splits(cfg, &texts, &ck.tokenizer)?;
    let doc = &splits.heldout[0];
    assert_eq!(index.docs[0].doc, doc.doc);
    assert_eq!(index.docs[0].entropy.len(), doc.len());
    // By hand: the whole document in one pass, softmax over the 16 largest logits, −Σ p ln p.
    let n = doc.len().min(200);
    let ids = Tensor::from_vec(doc.ids[..n].to_vec(), (1, n), &Device::Cpu)?;
    let hidden = model.forward(
        &ids,
        &positions(&[0], 0, n, &Device::Cpu)?,
        &attention_mask(&[0], 0, n, &Device::Cpu)?,
        None,
        Mode::Infer,
    )?;
    let logits = model.logits(&hidden, Mode::Infer)?.squeeze(0)?;
    let top = logits.sort_last_dim(false)?.0.narrow(D::Minus1, 0, 16)?;
    let p = candle_nn::ops::softmax(&top, D::Minus1)?;
    let h: Vec<f32> = (p.clone() * p.log()?)?.sum(D::Minus1)?.neg()?.to_vec1()?;
    for t in 1..n {
        let want = h[t - 1];
        let got = index.docs[0].entropy[t];
        assert!(
            (want - got).abs() < 1e-3,
            "position {t}: index {got}, by hand {want}"
        );
    }
    let (all, [easy, medium, hard]) = index.counts();
    assert!(all >= easy && easy >= medium && medium >= hard);

    // A different corpus makes the index stale.
    let mut other = cfg.clone();
    other.corpus.documents += 1;
    let e = prepare::load_index(&other, Split::Heldout, &load_texts(&other)?)
        .unwrap_err()
        .to_string();
    assert!(e.contains("stale") && e.contains("rpt prepare"), "{e}");
    Ok(())
}

#[test]
fn every_reward_variant_trains_with_finite_metrics() -> Result<()> {
    for variant in [
        "prefix_match",
        "first_token",
        "dense",
        "conditional_dense",
        "info_gain",
    ] {
        let mut cfg = run_config(&format!("variant-{variant}"));
        cfg.reward.variant = variant.into();
        cfg.grpo.advantage = Advantage::Grpo;
        cfg.train.steps = 2;
        if variant == "info_gain" {
            cfg.grpo.advantage = Advantage::Rlp;
            cfg.grpo.loss_tokens = LossTokens::Thought;
        }
        if variant == "dense" {
            cfg.grpo.beta = 0.05;
            cfg.grpo.loss_agg_mode = rpt::grpo::LossAgg::SeqMeanTokenSumNorm;
        }
        let summary = run(&cfg, TrainOptions::default())?;
        assert_eq!(summary.steps, 2, "{variant}");
        let m = metrics(&cfg);
        assert_eq!(m.len(), 2, "{variant}");
        for line in &m {
            for key in [
                "reward_mean",
                "loss",
                "grad_norm",
                "entropy",
                "approx_kl",
                "tokens_per_s",
            ] {
                let v = line[key].as_f64().unwrap_or(f64::NAN);
                assert!(v.is_finite(), "{variant}: {key} = {v}");
            }
            assert_eq!(line["reward_variant"], variant);
        }
        assert!(rpt::checkpoint::latest(&cfg.run_dir)?.is_some());
    }
    Ok(())
}

#[test]
fn every_loss_type_and_correction_trains_with_finite_metrics() -> Result<()> {
    use rpt::grpo::{LossType, OffPolicy};
    let cases = [
        (LossType::DrGrpo, OffPolicy::None, 0),
        (LossType::Dapo, OffPolicy::Tis, 0),
        (LossType::Gspo, OffPolicy::SequenceMask, 1),
        (LossType::Cispo, OffPolicy::TokenMask, 1),
        (LossType::Grpo, OffPolicy::Tis, 1),
        (LossType::Sapo, OffPolicy::Tis, 1),
        (LossType::Bnpo, OffPolicy::None, 0),
    ];
    for (loss_type, off, staleness) in cases {
        let name = format!("loss-{loss_type:?}-{off:?}-{staleness}");
        let mut cfg = run_config(&name);
        let p = loss_type.preset();
        cfg.grpo.loss_type = loss_type;
        cfg.grpo.scale_rewards = p.scale_rewards;
        cfg.grpo.loss_agg_mode = p.agg;
        cfg.grpo.epsilon_low = p.epsilon_low;
        cfg.grpo.epsilon_high = p.epsilon_high;
        if p.overlong {
            cfg.grpo.overlong_buffer = cfg.rollout.max_new_tokens / 5;
        }
        cfg.grpo.off_policy = off;
        cfg.rollout.max_staleness = staleness;
        cfg.train.steps = 3;
        run(&cfg, TrainOptions::default())?;
        let m = metrics(&cfg);
        assert_eq!(m.len(), 3, "{name}");
        for line in &m {
            for key in [
                "loss",
                "grad_norm",
                "off_policy_share",
                "is_weight_mean",
                "overlong_penalty",
            ] {
                let v = line[key].as_f64().unwrap_or(f64::NAN);
                assert!(v.is_finite(), "{name}: {key} = {v}");
            }
            let w = line["is_weight_mean"].as_f64().unwrap();
            if staleness == 0 || off == OffPolicy::None {
                // The learner's log-probs before the update are the sampler's, to float rounding.
                assert!((w - 1.0).abs() < 1e-3, "{name}: is_weight_mean {w}");
            }
        }
        if p.overlong {
            // Completions that run into the buffer are shaped (the tiny model often runs long).
            assert!(
                m.iter()
                    .any(|l| l["overlong_penalty"].as_f64().unwrap() < 0.0),
                "{name}"
            );
        }
        if staleness == 1 && off != OffPolicy::None {
            // A step sampled by the previous version: the weights differ from the learner's.
            let lagged: Vec<f64> = m
                .iter()
                .filter(|l| l["weight_version_lag"].as_u64() == Some(1))
                .map(|l| l["is_weight_mean"].as_f64().unwrap())
                .collect();
            assert!(!lagged.is_empty(), "{name}: no step ran one version behind");
            assert!(
                lagged.iter().any(|w| (w - 1.0).abs() > 1e-4),
                "{name}: {lagged:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn same_seed_same_metrics_and_resume_matches_an_uninterrupted_run() -> Result<()> {
    let a = run_config("det-a");
    run(&a, TrainOptions::default())?;
    let b = run_config("det-b");
    run(&b, TrainOptions::default())?;
    let (ma, mb) = (without_timing(metrics(&a)), without_timing(metrics(&b)));
    assert_eq!(ma.len(), 4);
    assert_eq!(ma, mb, "two runs with the same seed differ");
    assert!(
        ma.iter().all(|m| m["grad_norm"].as_f64().unwrap() > 0.0),
        "a step had no learning signal"
    );
    // Model FLOPs: each step's phases add up, and the cumulative count is their running sum (and
    // continues across the resume below, since the resumed metrics must equal these).
    let mut sum = 0;
    for m in &ma {
        let f = |k: &str| m[k].as_u64().unwrap();
        assert!(f("flops_sampling") > 0 && f("flops_scoring") > 0 && f("flops_update") > 0);
        assert_eq!(
            f("flops"),
            f("flops_sampling") + f("flops_scoring") + f("flops_update")
        );
        sum += f("flops");
        assert_eq!(f("flops_cumulative"), sum);
    }

    // Stopped after step 2 (its checkpoint), then resumed to 4.
    let mut c = run_config("resume");
    c.train.steps = 2;
    run(&c, TrainOptions::default())?;
    c.train.steps = 4;
    let e = run(&c, TrainOptions::default()).unwrap_err().to_string();
    assert!(e.contains("--resume"), "{e}");
    run(
        &c,
        TrainOptions {
            resume: true,
            ..Default::default()
        },
    )?;
    assert_eq!(
        without_timing(metrics(&c)),
        ma,
        "resumed run differs from the uninterrupted one"
    );
    Ok(())
}

#[test]
fn a_failed_policy_is_restarted_and_every_state_is_learned_once() -> Result<()> {
    let mut cfg = run_config("fault");
    cfg.rollout.policies = 2;
    cfg.rollout.verifiers = 2;
    let summary = run(
        &cfg,
        TrainOptions {
            fail_policy_at_step: Some(1),
            ..Default::default()
        },
    )?;
    assert_eq!(summary.steps, 4);
    assert!(summary.reissued > 0, "nothing was re-issued");
    let m = metrics(&cfg);
    assert_eq!(
        m[1]["states_reissued"].as_u64(),
        Some(summary.reissued as u64)
    );
    let seen = learned_states(&m);
    let expected: Vec<u64> = (0..4 * cfg.rollout.states_per_step as u64).collect();
    assert_eq!(seen, expected, "a state was lost or learned twice");
    // The failure does not change what is learned: same metrics as a run without it.
    let clean = run_config("fault-clean");
    let mut clean = clean;
    clean.rollout.policies = 2;
    clean.rollout.verifiers = 2;
    run(&clean, TrainOptions::default())?;
    assert!(
        metrics(&clean)
            .iter()
            .all(|m| m["grad_norm"].as_f64().unwrap() > 0.0)
    );
    assert_eq!(
        without_placement(metrics(&cfg)),
        without_placement(metrics(&clean))
    );
    Ok(())
}

#[test]
fn stale_rollouts_overlap_the_update_and_are_learned_from() -> Result<()> {
    let mut cfg = run_config("stale");
    cfg.rollout.max_staleness = 1;
    run(&cfg, TrainOptions::default())?;
    let m = metrics(&cfg);
    let lags: Vec<u64> = m
        .iter()
        .map(|l| l["weight_version_lag"].as_u64().unwrap())
        .collect();
    // Step 1 samples from the starting weights; every later step from the weights one update behind.
    assert_eq!(lags, vec![0, 1, 1, 1]);
    assert!(m.iter().all(|l| l["grad_norm"].as_f64().unwrap() > 0.0));
    // Deterministic too.
    let mut again = run_config("stale-again");
    again.rollout.max_staleness = 1;
    run(&again, TrainOptions::default())?;
    assert_eq!(without_timing(metrics(&again)), without_timing(m));
    Ok(())
}

#[test]
fn a_stop_mid_update_writes_a_checkpoint_and_resume_continues_exactly() -> Result<()> {
    let mut whole = run_config("stop-whole");
    whole.train.checkpoint_every = 100;
    run(&whole, TrainOptions::default())?;

    let mut c = run_config("stop");
    c.train.checkpoint_every = 100;
    let summary = run(
        &c,
        TrainOptions {
            stop_while_learning: Some(1),
            ..Default::default()
        },
    )?;
    assert_eq!(
        summary.steps, 2,
        "the step being learned finishes, nothing after it"
    );
    let latest = rpt::checkpoint::latest(&c.run_dir)?.expect("a checkpoint was written on stop");
    let state = rpt::checkpoint::read_state(&latest)?;
    assert_eq!(
        (state.step, state.cursor),
        (2, 2 * c.rollout.states_per_step as u64)
    );
    run(
        &c,
        TrainOptions {
            resume: true,
            ..Default::default()
        },
    )?;
    assert_eq!(without_timing(metrics(&c)), without_timing(metrics(&whole)));

    let fresh = run_config("no-checkpoint");
    let e = run(
        &fresh,
        TrainOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no checkpoint to resume"), "{e}");
    Ok(())
}

#[test]
fn bad_configs_are_refused_before_anything_starts() -> Result<()> {
    let mut cfg = run_config("bad");
    cfg.model.path = PathBuf::from("/no/such/model");
    let e = run(&cfg, TrainOptions::default()).unwrap_err().to_string();
    assert!(e.contains("/no/such/model"), "{e}");
    assert!(!cfg.run_dir.join("metrics.jsonl").exists());
    let e = Config::parse("[rollout]\ngroup_size = 1\n", Path::new("bad.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`rollout.group_size` must be >= 2, got 1"),
        "{e}"
    );
    let e = Config::parse(
        "[grpo]\nscale_rewards = \"sometimes\"\n",
        Path::new("bad.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("scale_rewards") || e.contains("sometimes"),
        "{e}"
    );
    Ok(())
}

#[test]
fn lengths_past_the_models_positions_are_refused_at_set_up() -> Result<()> {
    for (ctx, new) in [(24, 600), (24, usize::MAX), (1000, 10)] {
        let mut cfg = run_config(&format!("too-long-{ctx}-{new}"));
        cfg.states.max_context_tokens = ctx;
        cfg.rollout.max_new_tokens = new;
        let e = run(&cfg, TrainOptions::default()).unwrap_err().to_string();
        assert!(
            e.contains("states.max_context_tokens")
                && e.contains("rollout.max_new_tokens")
                && e.contains("max_position_embeddings = 512"),
            "{e}"
        );
        assert!(!cfg.run_dir.join("metrics.jsonl").exists());
        assert!(!cfg.run_dir.join("config.toml").exists());
    }
    Ok(())
}

#[test]
fn a_fault_that_repeats_stops_the_run_with_its_first_error() -> Result<()> {
    let cfg = run_config("repeating-fault");
    // Every sampling job panics from step 3 on: restarted once, the same states fail again.
    let e = run(
        &cfg,
        TrainOptions {
            policies_panic_from_step: Some(2),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("failed twice") && e.contains("injected panic sampling step 2"),
        "{e}"
    );
    assert!(e.contains("step-000002") && e.contains("--resume"), "{e}");
    let latest = rpt::checkpoint::latest(&cfg.run_dir)?.unwrap();
    assert_eq!(rpt::checkpoint::read_state(&latest)?.step, 2);
    Checkpoint::load(&latest, &Device::Cpu)?;
    assert_eq!(metrics(&cfg).len(), 2);
    Ok(())
}

#[test]
fn a_non_finite_update_is_never_applied_or_saved() -> Result<()> {
    let mut cfg = run_config("non-finite");
    cfg.train.steps = 2;
    run(&cfg, TrainOptions::default())?;
    let good = rpt::checkpoint::latest(&cfg.run_dir)?.unwrap();
    let weights_before = std::fs::read(good.join("model.safetensors"))?;
    // Values the config check refuses, set behind its back: the learner's own guard must hold.
    cfg.train.steps = 4;
    cfg.optim.weight_decay = f64::NAN;
    let e = run(
        &cfg,
        TrainOptions {
            resume: true,
            allow_config_change: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("step 3") && e.contains("NaN or infinite") && e.contains("step-000002"),
        "{e}"
    );
    assert_eq!(rpt::checkpoint::latest(&cfg.run_dir)?.unwrap(), good);
    assert_eq!(
        std::fs::read(good.join("model.safetensors"))?,
        weights_before
    );
    assert!(!cfg.run_dir.join("checkpoints/step-000003").exists());
    assert_eq!(metrics(&cfg).len(), 2);
    // A rate that overflows f32 on the first step: nothing is saved at all.
    let mut cfg = run_config("non-finite-lr");
    cfg.optim.lr = 1e308;
    cfg.train.checkpoint_every = 1;
    let e = run(&cfg, TrainOptions::default()).unwrap_err().to_string();
    assert!(e.contains("step 1") && e.contains("no checkpoint"), "{e}");
    assert!(rpt::checkpoint::latest(&cfg.run_dir)?.is_none());
    Ok(())
}

#[test]
fn resume_with_a_changed_meaning_is_refused_unless_asked_for() -> Result<()> {
    let mut cfg = run_config("changed");
    cfg.train.steps = 2;
    run(&cfg, TrainOptions::default())?;
    let saved = std::fs::read(cfg.run_dir.join("config.toml"))?;
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    let mut changed = cfg.clone();
    changed.train.steps = 3;
    changed.rollout.group_size = 2;
    changed.rollout.states_per_step = 2;
    let e = run(&changed, resume.clone()).unwrap_err().to_string();
    assert!(
        e.contains("rollout.group_size: 4 -> 2")
            && e.contains("rollout.states_per_step: 3 -> 2")
            && e.contains("--allow-config-change"),
        "{e}"
    );
    assert!(!e.contains("train.steps"), "{e}");
    assert_eq!(std::fs::read(cfg.run_dir.join("config.toml"))?, saved);
    assert_eq!(metrics(&cfg).len(), 2);
    // Longer, with more actors: same meaning, resumed without a flag.
    let mut longer = cfg.clone();
    longer.train.steps = 3;
    longer.rollout.policies = 2;
    run(&longer, resume.clone())?;
    // Forced: the old config is kept and the step of the change recorded.
    changed.train.steps = 4;
    run(
        &changed,
        TrainOptions {
            allow_config_change: true,
            ..resume
        },
    )?;
    let kept = cfg.run_dir.join("config.before-step-000003.toml");
    let old: Config = toml::from_str(&std::fs::read_to_string(&kept)?)?;
    assert_eq!(old.rollout.group_size, 4);
    let note: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(cfg.run_dir.join("config_changes.jsonl"))?
            .lines()
            .next()
            .unwrap(),
    )?;
    assert_eq!(note["step"], 3);
    assert_eq!(metrics(&cfg).len(), 4);
    Ok(())
}

#[test]
fn a_damaged_optimizer_state_is_named_and_nothing_is_rewritten() -> Result<()> {
    let mut cfg = run_config("damaged");
    cfg.train.steps = 2;
    run(&cfg, TrainOptions::default())?;
    let latest = rpt::checkpoint::latest(&cfg.run_dir)?.unwrap();
    let opt = latest.join("optimizer.safetensors");
    let bytes = std::fs::read(&opt)?;
    std::fs::write(&opt, &bytes[..bytes.len() / 3])?;
    let saved = std::fs::read(cfg.run_dir.join("config.toml"))?;
    let lines = std::fs::read(cfg.run_dir.join("metrics.jsonl"))?;
    cfg.train.steps = 4;
    let e = run(
        &cfg,
        TrainOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("optimizer.safetensors"), "{e}");
    assert_eq!(std::fs::read(cfg.run_dir.join("config.toml"))?, saved);
    assert_eq!(std::fs::read(cfg.run_dir.join("metrics.jsonl"))?, lines);
    Ok(())
}

/// The next-token baseline: its training loss falls, each step's FLOPs are the formula's for the
/// windows it trained on (replayed here from the same environment), and it stops at its budget.
#[test]
fn the_next_token_baseline_lowers_its_loss_and_counts_flops_by_the_formula() -> Result<()> {
    use rpt::env::{CorpusEnvironment, Environment};
    let mut cfg = run_config("next-token");
    cfg.train.objective = rpt::config::Objective::NextToken;
    cfg.train.steps = 24;
    cfg.train.checkpoint_every = 10;
    cfg.optim.lr = 3e-3;
    let s = rpt::pipeline::next_token::train_next_token(&cfg, &Device::Cpu)?;
    assert_eq!(s.steps, 24);
    let m = metrics(&cfg);
    assert_eq!(m.len(), 24);
    let loss = |r: std::ops::Range<usize>| {
        r.clone()
            .map(|i| m[i]["loss"].as_f64().unwrap())
            .sum::<f64>()
            / r.len() as f64
    };
    assert!(
        loss(18..24) < loss(0..6) - 0.05,
        "{} -> {}",
        loss(0..6),
        loss(18..24)
    );
    // The same windows, from the same environment.
    let ck = Checkpoint::load(&cfg.model.path, &Device::Cpu)?;
    let texts = load_texts(&cfg)?;
    let index = prepare::load_index(&cfg, Split::Train, &texts)?;
    let splits = tokenize_splits(&cfg, &texts, &ck.tokenizer)?;
    let mut env = CorpusEnvironment::new(
        splits.train,
        index.positions_at_least(cfg.states.min_entropy),
        ck.tokenizer.clone(),
        cfg.states.max_context_tokens,
        cfg.states.max_target_bytes,
        cfg.seed,
    );
    let rows = cfg.rollout.states_per_step * cfg.rollout.group_size;
    let mut sum = 0;
    for line in &m {
        let lens: Vec<usize> = (0..rows)
            .map(|_| env.next_state().unwrap().context.len() + 1)
            .collect();
        let want = rpt::flops::next_token_step(&ck.config, &lens);
        assert_eq!(line["flops"].as_u64().unwrap(), want);
        assert_eq!(
            line["tokens"].as_u64().unwrap() as usize,
            lens.iter().sum::<usize>()
        );
        sum += want;
        assert_eq!(line["flops_cumulative"].as_u64().unwrap(), sum);
    }
    assert_eq!(s.flops, sum);
    assert!(
        rpt::checkpoint::latest(&cfg.run_dir)?
            .unwrap()
            .ends_with("step-000024")
    );

    // A budget: the run stops at the first step that reaches it.
    let mut b = run_config("next-token-budget");
    b.train.objective = rpt::config::Objective::NextToken;
    b.train.steps = 24;
    b.train.flop_budget = sum / 3;
    let t = rpt::pipeline::next_token::train_next_token(&b, &Device::Cpu)?;
    let mb = metrics(&b);
    assert!(t.steps < 24 && t.flops >= sum / 3, "{t:?}");
    assert!(mb[mb.len() - 2]["flops_cumulative"].as_u64().unwrap() < sum / 3);
    assert!(
        rpt::checkpoint::latest(&b.run_dir)?
            .unwrap()
            .ends_with(format!("step-{:06}", t.steps))
    );
    // It does not write over a run.
    let e = rpt::pipeline::next_token::train_next_token(&b, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("already holds checkpoints"), "{e}");
    Ok(())
}

/// `rpt eval --run`: the starting model and every checkpoint, against cumulative FLOPs from the
/// run's metrics, written to the run directory; a run without FLOPs is named before any evaluation.
#[test]
fn eval_over_a_runs_checkpoints_against_compute() -> Result<()> {
    let mut cfg = run_config("eval-run");
    cfg.train.steps = 4;
    cfg.train.checkpoint_every = 2;
    run(&cfg, TrainOptions::default())?;
    let dir = cfg.run_dir.display().to_string();
    let (ok, out, err) = common::rpt_cli(&["eval", "--run", &dir, "--json"], &[])?;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        cfg.run_dir.join("accuracy_vs_compute.json"),
    )?)?;
    assert_eq!(v, saved);
    let points = v["points"].as_array().unwrap();
    let steps: Vec<u64> = points.iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 2, 4]);
    let m = metrics(&cfg);
    assert_eq!(points[0]["flops"], 0);
    assert_eq!(points[1]["flops"], m[1]["flops_cumulative"]);
    assert_eq!(points[2]["flops"], m[3]["flops_cumulative"]);
    assert!(
        points
            .iter()
            .all(|p| p["splits"]["all"]["positions"].as_u64() == Some(12))
    );
    assert!(!v["samples_after"].as_array().unwrap().is_empty());

    // `--positions FILE`: every evaluated position written out, adding up to the report's counts,
    // while the report itself still writes out only the first few.
    let file = cfg.run_dir.join("positions.jsonl");
    let ckpt = cfg.run_dir.join("checkpoints/step-000004");
    let run_cfg = cfg.run_dir.join("config.toml");
    let args = [
        "eval",
        "--config",
        run_cfg.to_str().unwrap(),
        "--model",
        ckpt.to_str().unwrap(),
        "--positions",
        file.to_str().unwrap(),
        "--json",
    ];
    let (ok, out, err) = common::rpt_cli(&args, &[])?;
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim())?;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let all = &report["splits"]["all"];
    assert_eq!(lines.len() as u64, all["positions"].as_u64().unwrap());
    let count = |key: &str| lines.iter().filter(|l| l[key] == true).count() as u64;
    assert_eq!(
        count("standard_correct"),
        all["standard_correct"].as_u64().unwrap()
    );
    assert_eq!(
        count("reasoning_correct"),
        all["reasoning_correct"].as_u64().unwrap()
    );
    assert_eq!(count("unboxable"), all["unboxable"].as_u64().unwrap());
    assert_eq!(
        count("taught"),
        report["splits"]["taught"]["positions"]
            .as_u64()
            .unwrap_or(0)
    );
    assert!(
        lines
            .iter()
            .all(|l| l["entropy"].is_number() && l["completion"].is_string())
    );
    assert!(report["samples"].as_array().unwrap().len() <= 6);
    assert_eq!(report["samples"][0], lines[0]);

    // Metrics without FLOPs (an earlier version's run): named, nothing evaluated.
    let text = std::fs::read_to_string(cfg.run_dir.join("metrics.jsonl"))?;
    let stripped: String = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("flops_cumulative");
            format!("{v}\n")
        })
        .collect();
    std::fs::write(cfg.run_dir.join("metrics.jsonl"), stripped)?;
    let (ok, _, err) = common::rpt_cli(&["eval", "--run", &dir], &[])?;
    assert!(
        !ok && err.contains("no `flops_cumulative` for step 2"),
        "{err}"
    );
    assert!(!err.contains("split"), "it stops before evaluating: {err}");
    Ok(())
}
