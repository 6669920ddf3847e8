//! `rpt bench`: the model layer's speed on the peer's shapes (`small`, `big`), so that figures can be put
//! beside `trl_peer.py generate` / `train` measured in the same sitting. Prints one JSON line per figure
//! (median of `--repeat` runs after a warm-up; for `--work grpo`, `--repeat 0` times one step, the first).
//!
//! `--work decode` (`decode.rs`) puts decoding speed beside the memory-bandwidth bound.

use std::time::Instant;

use anyhow::Result;
use rpt::model::{
    AdamW, AdamWConfig, Family, GradPath, ModelConfig, Rng, SampleParams, Tensor, Trainable,
    generate, init_weights,
};

mod decode;

use decode::decode;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// `small`, `big` or `all`.
    #[arg(long, default_value = "all")]
    pub shape: String,
    /// `generate`, `train`, `all` (both), `grpo` (needs `--model`), or `decode` (decoding beside
    /// the memory-bandwidth bound; on `--model`, or on `--shape`).
    #[arg(long, default_value = "all")]
    pub work: String,
    /// Timed rounds, after one untimed warm-up; `--work grpo --repeat 0` times a single step, the
    /// first (for a step too long to run twice).
    #[arg(long, default_value_t = 7)]
    pub repeat: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub prompt: usize,
    #[arg(long, default_value_t = 48)]
    pub new: usize,
    #[arg(long, default_value_t = 112)]
    pub len: usize,
    /// Checkpoint for `--work grpo` (the peer's `trl_peer.py grpo --model`) or `--work decode`.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Completions per prompt for `--work grpo`.
    #[arg(long, default_value_t = 8)]
    pub group: usize,
    /// Prompts per GRPO step.
    #[arg(long, default_value_t = 1)]
    pub prompts_per_step: usize,
    /// `grpo.micro_batch_tokens` of the GRPO update (default: the config's default).
    #[arg(long)]
    pub micro_batch_tokens: Option<usize>,
    /// `rollout.kv_cache_tokens` of the sampling (default: the config's default).
    #[arg(long)]
    pub kv_cache_tokens: Option<usize>,
    /// `grpo.activation_checkpointing` of the GRPO update: auto, always or never (default: the
    /// config's default).
    #[arg(long)]
    pub activation_checkpointing: Option<String>,
    /// Gradient path for `train`: `auto` (the device's route: `fused` on the CPU, `autograd`
    /// elsewhere), `fused` (the hand-written CPU pass) or `autograd` (candle's).
    #[arg(long, default_value = "auto")]
    pub grad_path: String,
}

fn grad_path(name: &str) -> Result<Option<GradPath>> {
    match name {
        "auto" => Ok(None),
        "fused" => Ok(Some(GradPath::Fused)),
        "autograd" => Ok(Some(GradPath::Autograd)),
        other => anyhow::bail!("--grad-path must be auto, fused or autograd, got {other:?}"),
    }
}

/// The peer's shapes: Qwen2, tied embeddings, f32.
pub fn shape(name: &str) -> Result<ModelConfig> {
    let (h, l, nh, nkv, i, v) = match name {
        "small" => (128, 4, 4, 2, 512, 2048),
        "big" => (256, 6, 8, 4, 1024, 8192),
        other => anyhow::bail!("--shape must be small, big or all, got {other:?}"),
    };
    Ok(ModelConfig {
        family: Family::Qwen2,
        vocab_size: v,
        hidden_size: h,
        intermediate_size: i,
        num_hidden_layers: l,
        num_attention_heads: nh,
        num_key_value_heads: nkv,
        head_dim: h / nh,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 1024,
        tie_word_embeddings: true,
        qkv_bias: true,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        eos_token_ids: vec![],
        bos_token_id: None,
        pad_token_id: Some(0),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| 1 + r.below(vocab - 1) as u32).collect()
}

/// One GRPO step as `rpt train` runs it (sample G × prompts, score, update), timed per step, on the
/// peer's workload: random prompts of `--prompt` tokens, `--new` tokens per completion, T = 0.8, β = 0.
fn grpo(a: &BenchArgs) -> Result<()> {
    use rpt::env::State;
    use rpt::rollout::{PolicySnapshot, ScoredGroup, sample_groups, score_group};
    let dir = a
        .model
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--work grpo needs --model DIR"))?;
    let mut ck = super::load_checkpoint(dir)?;
    let mut cfg = rpt::config::Config::default();
    cfg.rollout.group_size = a.group;
    cfg.rollout.states_per_step = a.prompts_per_step;
    cfg.rollout.max_new_tokens = a.new;
    cfg.optim.lr = 1e-6;
    if let Some(t) = a.micro_batch_tokens {
        anyhow::ensure!(t >= 1, "--micro-batch-tokens must be >= 1, got 0");
        cfg.grpo.micro_batch_tokens = t;
    }
    if let Some(t) = a.kv_cache_tokens {
        anyhow::ensure!(t >= 1, "--kv-cache-tokens must be >= 1, got 0");
        cfg.rollout.kv_cache_tokens = t;
    }
    if let Some(mode) = &a.activation_checkpointing {
        use rpt::config::ActivationCheckpointing as A;
        cfg.grpo.activation_checkpointing = match mode.as_str() {
            "auto" => A::Auto,
            "always" => A::Always,
            "never" => A::Never,
            other => anyhow::bail!(
                "--activation-checkpointing must be auto, always or never, got {other:?}"
            ),
        };
    }
    let mut learner = rpt::learn::Learner::new(&cfg, &ck.weights, &ck.config)?;
    // The learner holds the weights from here on, as in a run.
    ck.weights.clear();
    let prompt = rpt::prompt::Prompt::new("{context}", &ck.tokenizer)?;
    let reward = rpt::reward::by_name("prefix_match")?;
    let params = SampleParams {
        temperature: 0.8,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: a.new,
    };
    // (whole step, sampling, learner update) seconds. `--repeat 0` times one step, the first: its
    // one-time costs included, for a step too long to run twice.
    let mut times = vec![];
    let warm_up = (a.repeat > 0) as u64;
    for step in 0..a.repeat.max(1) as u64 + warm_up {
        let states: Vec<(u64, State)> = (0..a.prompts_per_step as u64)
            .map(|i| {
                let ids = random_ids(
                    a.prompt + 1,
                    ck.config.vocab_size.min(ck.tokenizer.vocab_size()),
                    100 + step * 1000 + i,
                );
                let (continuation, boundaries) =
                    rpt::env::continuation_window(&ck.tokenizer, &ids[a.prompt..], 64);
                (
                    i,
                    State {
                        doc: 0,
                        pos: a.prompt,
                        context: ids[..a.prompt].to_vec(),
                        continuation,
                        boundaries,
                        next_token: ids[a.prompt],
                    },
                )
            })
            .collect();
        let t0 = Instant::now();
        let snap = PolicySnapshot {
            version: step,
            model: std::sync::Arc::new(rpt::model::Decoder::new(
                &ck.config,
                &learner.policy_weights()?,
            )?),
        };
        // Fixed-length completions, as the peer's (no EOS, no stop rule).
        let groups = sample_groups(
            &snap,
            &ck.tokenizer,
            &prompt,
            &states,
            a.group,
            &params,
            0,
            step,
            false,
            cfg.rollout.kv_cache_tokens,
        )?;
        let scored: Vec<ScoredGroup> = groups
            .into_iter()
            .map(|g| {
                Ok(ScoredGroup {
                    rewards: score_group(reward.as_ref(), &g, &snap.model, None, &ck.tokenizer)?,
                    group: g,
                })
            })
            .collect::<Result<_>>()?;
        let t1 = Instant::now();
        eprintln!(
            "step {step}: sampled and scored in {:.1} s",
            (t1 - t0).as_secs_f64()
        );
        learner.update(&scored)?;
        let t2 = Instant::now();
        eprintln!("step {step}: updated in {:.1} s", (t2 - t1).as_secs_f64());
        if step >= warm_up {
            times.push([
                (t2 - t0).as_secs_f64(),
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
            ]);
        }
    }
    let part = |i: usize| median(times.iter().map(|t| t[i]).collect());
    println!(
        "{}",
        serde_json::json!({"rpt": "grpo step", "model": dir, "group": a.group, "new": a.new,
            "prompts_per_step": a.prompts_per_step, "s_per_step_median": part(0),
            "sample_and_score_s": part(1), "update_s": part(2), "steps": times.len(),
            "first_step_only": a.repeat == 0})
    );
    Ok(())
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let path = grad_path(&a.grad_path)?;
    if !["generate", "train", "all", "grpo", "decode"].contains(&a.work.as_str()) {
        anyhow::bail!(
            "--work must be generate, train, all, grpo or decode, got {:?}",
            a.work
        );
    }
    if a.work == "grpo" {
        return grpo(a);
    }
    anyhow::ensure!(
        a.repeat >= 1,
        "--repeat must be >= 1 for --work {} (only --work grpo times a single first step with 0)",
        a.work
    );
    if a.work == "decode" {
        return decode(a);
    }
    let shapes: Vec<&str> = if a.shape == "all" {
        vec!["small", "big"]
    } else {
        vec![a.shape.as_str()]
    };
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    for name in shapes {
        let cfg = shape(name)?;
        let device = super::device()?;
        let weights = init_weights(&cfg, 0, 0.02, &device)?;
        if a.work == "all" || a.work == "generate" {
            // The policy's dtype on this device (bf16 on CUDA), as a run samples.
            let dtype = rpt::model::Route::for_device(&device).policy_dtype;
            let policy = weights
                .iter()
                .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?)))
                .collect::<Result<rpt::model::TensorMap>>()?;
            let model = rpt::model::Decoder::new(&cfg, &policy)?;
            let prompts: Vec<Vec<u32>> = (0..a.batch)
                .map(|i| random_ids(a.prompt, cfg.vocab_size, i as u64))
                .collect();
            let seeds: Vec<u64> = (0..a.batch as u64).collect();
            let params = SampleParams {
                temperature: 0.8,
                top_k: 0,
                top_p: 1.0,
                max_new_tokens: a.new,
            };
            let run = || generate(&model, &prompts, &params, &seeds, &[], &|_, _| false);
            run()?;
            let mut times = vec![];
            for _ in 0..a.repeat {
                let t0 = Instant::now();
                let out = run()?;
                times.push(t0.elapsed().as_secs_f64());
                anyhow::ensure!(out.iter().all(|s| s.tokens.len() == a.new));
            }
            let tps = (a.batch * a.new) as f64 / median(times);
            println!(
                "{}",
                serde_json::json!({"rpt": "generate", "shape": name, "batch": a.batch, "prompt": a.prompt,
                    "new": a.new, "tokens_per_s": tps, "threads": threads, "samples": a.repeat,
                    "device": format!("{device:?}"), "dtype": format!("{dtype:?}")})
            );
        }
        if a.work == "all" || a.work == "train" {
            let mut params = Trainable::new(&cfg, &weights)?;
            if let Some(path) = path {
                if path == GradPath::Fused && !device.is_cpu() {
                    anyhow::bail!(
                        "--grad-path fused runs on the CPU only; this device is {device:?}"
                    );
                }
                params.path = path;
            }
            let mut opt = AdamW::new(AdamWConfig {
                lr: 1e-4,
                ..Default::default()
            });
            let ids = Tensor::from_vec(
                random_ids(a.batch * a.len, cfg.vocab_size, 99),
                (a.batch, a.len),
                &device,
            )?;
            let pad = vec![0; a.batch];
            // (forward and backward, optimizer) seconds of one step.
            let mut step = || -> Result<[f64; 2]> {
                let t0 = Instant::now();
                let ((), grads) = params.value_and_grad(&ids, &pad, 1, 1.0, |lp| {
                    Ok::<_, rpt::Error>((lp.mean_all()?.neg()?, ()))
                })?;
                let t1 = Instant::now();
                opt.step(&params, &grads, 1e-4, 1.0)?;
                Ok([t1 - t0, t1.elapsed()].map(|d| d.as_secs_f64()))
            };
            for _ in 0..2 {
                step()?;
            }
            let mut parts = vec![];
            for _ in 0..a.repeat {
                parts.push(step()?);
            }
            let phase = |i: usize| 1000.0 * median(parts.iter().map(|p| p[i]).collect());
            let times: Vec<f64> = parts.iter().map(|p| p.iter().sum()).collect();
            println!(
                "{}",
                serde_json::json!({"rpt": "train step", "shape": name, "batch": a.batch, "len": a.len,
                    "ms_per_step": 1000.0 * median(times), "forward_backward_ms": phase(0),
                    "optimizer_ms": phase(1), "grad_path": format!("{:?}", params.path), "threads": threads, "samples": a.repeat})
            );
        }
    }
    Ok(())
}
