//! The commands a user runs to check a checkpoint and a reward: `rpt generate`, `rpt logprobs` and
//! `rpt reward`, through the built binary, on the qwen2 fixture.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-parity/qwen2")
}

fn rpt(args: &[&str]) -> Result<(bool, String, String)> {
    common::rpt_cli(args, &[])
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn generate_and_logprobs_reproduce_the_reference() -> Result<()> {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json"))?)?;
    let model = fixture().display().to_string();
    let prompt: Vec<String> = ids(&reference["greedy_prompt"])
        .iter()
        .map(u64::to_string)
        .collect();
    let (ok, out, err) = rpt(&[
        "generate",
        "--model",
        &model,
        "--ids",
        &prompt.join(","),
        "--max-new-tokens",
        "16",
        "--temperature",
        "0",
        "--json",
    ])?;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(ids(&v["ids"]), ids(&reference["greedy_continuation"]));

    let input: Vec<String> = ids(&reference["input_ids"])
        .iter()
        .map(u64::to_string)
        .collect();
    let (ok, out, err) = rpt(&[
        "logprobs",
        "--model",
        &model,
        "--ids",
        &input.join(","),
        "--json",
    ])?;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    for (a, b) in v["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference["logprob_of_inputs"].as_array().unwrap())
    {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4);
    }

    let (ok, _, err) = rpt(&["generate", "--model", &model, "--ids", "1,99999"])?;
    assert!(
        !ok && err.contains("99999") && err.contains("vocab_size"),
        "{err}"
    );
    let (ok, _, err) = rpt(&["generate", "--model", "/no/such/dir", "--prompt", "x"])?;
    assert!(!ok && err.contains("/no/such/dir"), "{err}");
    Ok(())
}

#[test]
fn reward_scores_lines_with_reasons() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cases = dir.path().join("cases.jsonl");
    std::fs::write(
        &cases,
        concat!(
            "{\"completion\": \"t</think>\\\\boxed{ 42}\", \"continuation\": \" 42 is the answer\"}\n",
            "{\"completion\": \"t</think>\\\\boxed{ 4}\", \"continuation\": \"x\"}\n",
            "{\"completion\": \"no think\", \"continuation\": \" 42\"}\n",
        ),
    )?;
    let model = fixture().display().to_string();
    let input = cases.display().to_string();
    let (ok, out, err) = rpt(&[
        "reward",
        "--model",
        &model,
        "--variant",
        "prefix_match",
        "--input",
        &input,
        "--json",
    ])?;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    let r = v["results"].as_array().unwrap();
    assert_eq!(r[0]["reason"], "correct", "{out}");
    assert_eq!(r[0]["reward"], 1.0);
    assert_eq!(r[1]["reason"], "wrong");
    assert_eq!(r[2]["reason"], "no_think_end");

    let (ok, _, err) = rpt(&[
        "reward",
        "--model",
        &model,
        "--variant",
        "exact",
        "--input",
        &input,
    ])?;
    assert!(
        !ok && err.contains("exact") && err.contains("prefix_match"),
        "{err}"
    );
    let (ok, _, err) = rpt(&[
        "reward",
        "--model",
        &model,
        "--variant",
        "dense",
        "--input",
        &input,
    ])?;
    assert!(!ok && err.contains("guess_prob"), "{err}");
    std::fs::write(&cases, "{\"completion\": 5, \"continuation\": \"x\"}\n")?;
    let (ok, _, err) = rpt(&["reward", "--model", &model, "--input", &input])?;
    assert!(
        !ok && err.contains("cases.jsonl:1") && err.contains("completion"),
        "{err}"
    );
    Ok(())
}

#[test]
fn init_writes_a_loadable_random_checkpoint_of_any_shape() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for family in ["qwen2", "qwen3", "llama"] {
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf-parity")
            .join(family)
            .join("config.json");
        let out = dir.path().join(family);
        let (ok, stdout, err) = rpt(&[
            "init",
            "--config-json",
            &cfg.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--json",
        ])?;
        assert!(ok, "{err}");
        let r: Value = serde_json::from_str(&stdout)?;
        let ck = rpt::model::Checkpoint::load(&out, &rpt::model::Device::Cpu)?;
        let want: usize = ck.weights.values().map(|t| t.elem_count()).sum();
        assert_eq!(r["parameters"].as_u64(), Some(want as u64));
        assert_eq!(ck.config, rpt::model::ModelConfig::from_file(&cfg)?);
        // Never over an existing checkpoint.
        let (ok, _, err) = rpt(&[
            "init",
            "--config-json",
            &cfg.display().to_string(),
            "--out",
            &out.display().to_string(),
        ])?;
        assert!(!ok && err.contains("config.json"), "{err}");
    }
    // With a given tokenizer, and the same seed: the same weights.
    let cfg = fixture().join("config.json").display().to_string();
    let tok = fixture().join("tokenizer.json").display().to_string();
    for name in ["a", "b"] {
        let out = dir.path().join(name).display().to_string();
        let (ok, _, err) = rpt(&[
            "init",
            "--config-json",
            &cfg,
            "--out",
            &out,
            "--tokenizer",
            &tok,
            "--seed",
            "7",
        ])?;
        assert!(ok, "{err}");
    }
    assert_eq!(
        std::fs::read(dir.path().join("a/model.safetensors"))?,
        std::fs::read(dir.path().join("b/model.safetensors"))?
    );
    let given = rpt::model::Tokenizer::from_file(&fixture().join("tokenizer.json"))?;
    let shipped = rpt::model::Tokenizer::from_file(&dir.path().join("a/tokenizer.json"))?;
    let text = "def f(x):\n    return x + 12";
    assert_eq!(given.encode(text)?, shipped.encode(text)?);
    assert_eq!(given.vocab_size(), shipped.vocab_size());
    Ok(())
}

/// A GPU asked for by name and absent is an error that says why, never a silent CPU run; `cpu` and
/// `auto` run; a misspelt device is named.
#[test]
fn rpt_device_chooses_the_device_or_says_why_not() -> Result<()> {
    let model = fixture().display().to_string();
    let args = [
        "generate",
        "--model",
        &model,
        "--ids",
        "1,2,3",
        "--max-new-tokens",
        "2",
    ];
    for ok_device in ["cpu", "auto"] {
        let (ok, _, err) = common::rpt_cli(&args, &[("RPT_DEVICE", ok_device)])?;
        assert!(ok, "RPT_DEVICE={ok_device}: {err}");
    }
    let (ok, _, err) = common::rpt_cli(&args, &[("RPT_DEVICE", "gpu")])?;
    assert!(
        !ok && err.contains("RPT_DEVICE=\"gpu\"") && err.contains("cuda:N"),
        "{err}"
    );
    if !cfg!(feature = "cuda") {
        let (ok, _, err) = common::rpt_cli(&args, &[("RPT_DEVICE", "cuda")])?;
        assert!(
            !ok && err.contains("RPT_DEVICE=cuda:0") && err.contains("--features cuda"),
            "{err}"
        );
    }
    Ok(())
}

/// `scripts/gpu-check` stops at once with a clear message where no CUDA device answers, before
/// building or writing anything: here an `nvidia-smi` that cannot reach a driver, as on a machine
/// with the tools but no GPU.
#[test]
fn gpu_check_fails_fast_without_a_device() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = tempfile::tempdir()?;
    let smi = bin.path().join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\nexit 9\n",
    )?;
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755))?;
    let out_dir = bin.path().join("out");
    let out = std::process::Command::new("/bin/bash")
        .arg(root.join("scripts/gpu-check"))
        .arg(&out_dir)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no CUDA device: nvidia-smi failed") && err.contains("NVIDIA driver"),
        "{err}"
    );
    assert!(!out_dir.exists(), "nothing is written without a device");
    Ok(())
}

/// A run that cannot fit the memory available is refused before anything is loaded or written, with
/// the estimate and the keys that change it.
#[test]
fn a_run_that_cannot_fit_is_refused_with_the_estimate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "run_dir = \"{}\"\n[model]\npath = \"{}\"\n",
            run.display(),
            fixture().display()
        ),
    )?;
    let cfg = cfg.display().to_string();
    let (ok, _, err) =
        common::rpt_cli(&["train", "--config", &cfg], &[("RPT_MEMORY_GB", "0.001")])?;
    assert!(!ok, "{err}");
    for want in [
        "needs about",
        "RPT_MEMORY_GB",
        "grpo.micro_batch_tokens",
        "rollout.kv_cache_tokens",
        "grpo.activation_checkpointing = \"always\"",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!run.exists(), "nothing is written");
    Ok(())
}

/// `rpt bench --work decode`: the bytes a decode step reads are every weight, but an untied embedding
/// table (read only at the batch's rows); the bound is batch × bandwidth ÷ those bytes, and the
/// multiply-add bound two operations per weight read and row over the measured peak rate.
#[test]
fn decode_bench_counts_the_weights_a_step_reads() -> Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-parity");
    for (family, tied) in [("qwen2", true), ("llama", false)] {
        let dir = fixtures.join(family);
        let ck = rpt::model::Checkpoint::load(&dir, &rpt::model::Device::Cpu)?;
        assert_eq!(ck.config.tie_word_embeddings, tied);
        let all: usize = ck.weights.values().map(|t| t.elem_count()).sum();
        let embed = ck.weights["model.embed_tokens.weight"].elem_count();
        let want = 4 * if tied { all } else { all - embed };
        let (ok, stdout, err) = rpt(&[
            "bench",
            "--work",
            "decode",
            "--model",
            &dir.display().to_string(),
            "--repeat",
            "1",
            "--batch",
            "2",
            "--prompt",
            "4",
            "--new",
            "16",
        ])?;
        assert!(ok, "{err}");
        let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))?;
        assert_eq!(
            r["weight_bytes_per_step"].as_u64(),
            Some(want as u64),
            "{family}"
        );
        let (tps, bw, bound) = (
            r["tokens_per_s"].as_f64().unwrap(),
            r["read_bandwidth_gb_s"].as_f64().unwrap(),
            r["bound_tokens_per_s"].as_f64().unwrap(),
        );
        assert!(tps > 0.0 && bw > 0.0, "{r}");
        assert!(
            (bound - 2.0 * bw * 1e9 / want as f64).abs() <= 1e-6 * bound,
            "{r}"
        );
        assert!(
            (r["bound_over_measured"].as_f64().unwrap() - bound / tps).abs() <= 1e-6 * bound / tps
        );
        // Each round's step against its own bandwidth: never above the strictest bound's ratio.
        let paired = r["bound_over_measured_paired"].as_f64().unwrap();
        assert!(paired > 0.0 && paired <= bound / tps * (1.0 + 1e-9), "{r}");
        // The multiply-add bound: two operations per weight read and row, over the measured peak.
        let (gflop, peak, fma_ms, bw_ms) = (
            r["gflop_per_step"].as_f64().unwrap(),
            r["peak_gflop_s"].as_f64().unwrap(),
            r["multiply_add_bound_ms"].as_f64().unwrap(),
            r["bandwidth_bound_ms"].as_f64().unwrap(),
        );
        let elements = (want / 4) as f64;
        assert!(
            (gflop - 2.0 * 2.0 * elements / 1e9).abs() <= 1e-9 * gflop,
            "{r}"
        );
        assert!(
            peak > 0.0 && (fma_ms - 1e3 * gflop / peak).abs() <= 1e-6 * fma_ms,
            "{r}"
        );
        assert!(
            (bw_ms - 1e3 * want as f64 / (bw * 1e9)).abs() <= 1e-6 * bw_ms,
            "{r}"
        );
    }
    let (ok, _, err) = rpt(&[
        "bench", "--work", "decode", "--shape", "small", "--new", "1",
    ])?;
    assert!(!ok && err.contains("--new"), "{err}");
    Ok(())
}

/// `rpt bench --work grpo`: the median of `--repeat` steps after an untimed one, or with `--repeat 0`
/// the first step alone; the parts add up to the step. Other work refuses `--repeat 0`.
#[test]
fn grpo_bench_times_the_first_step_alone_with_repeat_zero() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-parity/qwen2");
    for (repeat, steps) in [("0", 1), ("2", 2)] {
        let (ok, stdout, err) = rpt(&[
            "bench",
            "--work",
            "grpo",
            "--model",
            &dir.display().to_string(),
            "--group",
            "2",
            "--prompt",
            "4",
            "--new",
            "3",
            "--repeat",
            repeat,
        ])?;
        assert!(ok, "{err}");
        let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))?;
        assert_eq!(r["steps"].as_u64(), Some(steps), "{r}");
        assert_eq!(r["first_step_only"].as_bool(), Some(repeat == "0"), "{r}");
        let (step, sample, update) = (
            r["s_per_step_median"].as_f64().unwrap(),
            r["sample_and_score_s"].as_f64().unwrap(),
            r["update_s"].as_f64().unwrap(),
        );
        assert!(sample > 0.0 && update > 0.0, "{r}");
        if steps == 1 {
            assert!((step - sample - update).abs() <= 1e-6 * step, "{r}");
        }
        assert!(err.contains("step 0: sampled and scored in"), "{err}");
    }
    let (ok, _, err) = rpt(&[
        "bench", "--work", "decode", "--shape", "small", "--repeat", "0",
    ])?;
    assert!(!ok && err.contains("--repeat"), "{err}");
    Ok(())
}
