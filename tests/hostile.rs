//! Hostile and careless inputs, as a new user gives them: each is refused with a message that names the
//! file, field or value and what was expected, and nothing a user already has is touched. The cases
//! that need a training run are in `tests/pipeline.rs`; the config's own checks are unit tests in
//! `src/config.rs`.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Result;
use rpt::model::{Checkpoint, Device, ModelConfig, Tokenizer, load_weights, save_weights};
use serde_json::{Value, json};

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf-parity")
        .join(family)
}

use common::rpt_cli as rpt;

/// A copy of a fixture checkpoint with its `config.json` edited.
fn with_config(family: &str, edit: impl FnOnce(&mut Value)) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture(family).join(f), dir.path().join(f))?;
    }
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(
        fixture(family).join("config.json"),
    )?)?;
    edit(&mut cfg);
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&cfg)?)?;
    Ok(dir)
}

fn load_err(dir: &Path) -> String {
    match Checkpoint::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn weights_that_do_not_match_their_config_are_refused_by_tensor() -> Result<()> {
    // Qwen2 weights described as Llama: the attention biases would be dropped silently.
    let d = with_config("qwen2", |c| c["model_type"] = json!("llama"))?;
    let e = load_err(d.path());
    assert!(
        e.contains("self_attn") && e.contains(".bias") && e.contains("qwen2"),
        "{e}"
    );
    // Fewer layers in the config than in the weights: the last layer would be ignored.
    let d = with_config("qwen2", |c| c["num_hidden_layers"] = json!(1))?;
    let e = load_err(d.path());
    assert!(
        e.contains("model.layers.1.") && e.contains("num_hidden_layers = 1"),
        "{e}"
    );
    // More layers than the weights: the missing tensor is named.
    let d = with_config("qwen2", |c| c["num_hidden_layers"] = json!(3))?;
    let e = load_err(d.path());
    assert!(
        e.contains("model.layers.2.") && e.contains("missing"),
        "{e}"
    );
    // Qwen3 weights (q/k norms) described as Qwen2.
    let d = with_config("qwen3", |c| c["model_type"] = json!("qwen2"))?;
    assert!(load_err(d.path()).contains("model.layers.0."));
    // Every fixture still loads.
    for f in ["qwen2", "qwen3", "llama"] {
        Checkpoint::load(&fixture(f), &Device::Cpu)?;
    }
    Ok(())
}

#[test]
fn non_finite_weights_are_refused_by_tensor() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = ModelConfig::from_file(&fixture("llama").join("config.json"))?;
    let mut w = load_weights(&fixture("llama"), &cfg, &Device::Cpu)?;
    let name = "model.layers.1.mlp.up_proj.weight";
    let t = &w[name];
    let mut v = t.flatten_all()?.to_vec1::<f32>()?;
    v[7] = f32::NAN;
    w.insert(
        name.into(),
        candle_core::Tensor::from_vec(v, t.dims(), &Device::Cpu)?,
    );
    save_weights(dir.path(), &cfg, &w)?;
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("llama").join(f), dir.path().join(f))?;
    }
    let e = load_err(dir.path());
    assert!(e.contains(name) && e.contains("NaN"), "{e}");
    Ok(())
}

#[test]
fn config_json_numbers_are_bounded_and_finite() {
    let base = json!({"model_type": "qwen2", "vocab_size": 16, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2});
    for (field, value) in [
        ("vocab_size", json!(u64::MAX)),
        ("hidden_size", json!(1u64 << 40)),
        ("num_hidden_layers", json!(-1)),
        ("max_position_embeddings", json!(0)),
        ("rms_norm_eps", json!(-1.0)),
        ("rope_theta", json!("big")),
        ("num_attention_heads", json!(2.5)),
        ("num_experts", json!(8)),
        ("num_local_experts", json!(4)),
        ("eos_token_id", json!("end")),
    ] {
        let mut v = base.clone();
        v[field] = value.clone();
        let e = ModelConfig::from_value(&v, Path::new("config.json"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{field} = {value}: {e}");
    }
}

#[test]
fn a_tokenizer_of_the_wrong_shape_is_told_from_broken_json() -> Result<()> {
    let p = Path::new("tokenizer.json");
    let e = Tokenizer::from_json("{\"version\": \"1.0\", \"added_tokens\": []}", p)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a Hugging Face tokenizer")
            && e.contains("added_tokens")
            && e.contains("model"),
        "{e}"
    );
    let e = Tokenizer::from_json("[1, 2]", p)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("a JSON array"), "{e}");
    let e = Tokenizer::from_json("{\"model\": {\"type\": \"Nonsense\"}}", p)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read"), "{e}");
    let e = Tokenizer::from_json("{\"model\": ", p)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid JSON"), "{e}");
    let text = std::fs::read_to_string(fixture("qwen2").join("tokenizer.json"))?;
    Tokenizer::from_json(&text, p)?;
    // Found by fuzzing: a merge whose result is longer than every vocabulary token made the
    // `tokenizers` library panic. It is an error naming the merge now.
    let mut v: Value = serde_json::from_str(&text)?;
    let merges = v["model"]["merges"].as_array().unwrap().clone();
    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
    let (i, joined) = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (
                i,
                format!("{}{}", m[0].as_str().unwrap(), m[1].as_str().unwrap()),
            )
        })
        .max_by_key(|(_, j)| j.len())
        .unwrap();
    vocab.remove(&joined);
    let e = Tokenizer::from_json(&v.to_string(), p)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("model.merges[{i}]")) && e.contains("not in model.vocab"),
        "{e}"
    );
    Ok(())
}

#[test]
fn bootstrap_never_writes_over_a_users_model() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let user = dir.path().join("my-model");
    std::fs::create_dir(&user)?;
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("qwen2").join(f), user.join(f))?;
    }
    let before: Vec<Vec<u8>> = ["model.safetensors", "tokenizer.json"]
        .iter()
        .map(|f| std::fs::read(user.join(f)).unwrap())
        .collect();
    let e = rpt::pipeline::model_dir::check_target(&user)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors")
            && e.contains("tokenizer.json")
            && e.contains("config.json"),
        "{e}"
    );
    // Through the binary: `rpt bootstrap --out` and `rpt train` with `model.path` there.
    let out = user.display().to_string();
    let (ok, _, err) = rpt(&["bootstrap", "--out", &out], &[])?;
    assert!(!ok && err.contains("model.safetensors"), "{err}");
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "run_dir = {:?}\n[model]\npath = {:?}\n",
            dir.path().join("run"),
            user
        ),
    )?;
    let (ok, _, err) = rpt(&["train", "--config", &cfg.display().to_string()], &[])?;
    assert!(!ok && err.contains("model.safetensors"), "{err}");
    let after: Vec<Vec<u8>> = ["model.safetensors", "tokenizer.json"]
        .iter()
        .map(|f| std::fs::read(user.join(f)).unwrap())
        .collect();
    assert_eq!(before, after, "the user's files were changed");
    assert!(!user.join("config.json").exists());
    // A directory with a config.json that `rpt bootstrap` did not make is refused too.
    std::fs::copy(
        fixture("qwen2").join("config.json"),
        user.join("config.json"),
    )?;
    let (ok, _, err) = rpt(&["bootstrap", "--out", &out], &[])?;
    assert!(!ok && err.contains("bootstrap.json"), "{err}");
    // New and empty directories are fine.
    rpt::pipeline::model_dir::check_target(&dir.path().join("new"))?;
    std::fs::create_dir(dir.path().join("empty"))?;
    rpt::pipeline::model_dir::check_target(&dir.path().join("empty"))?;
    Ok(())
}

#[test]
fn lengths_past_the_models_positions_are_refused_up_front() -> Result<()> {
    let model = fixture("qwen2").display().to_string();
    let ids: Vec<String> = (0..600).map(|i| (i % 500 + 1).to_string()).collect();
    let (ok, _, err) = rpt(
        &["logprobs", "--model", &model, "--ids", &ids.join(",")],
        &[],
    )?;
    assert!(
        !ok && err.contains("600 tokens") && err.contains("max_position_embeddings = 512"),
        "{err}"
    );
    let (ok, _, err) = rpt(
        &[
            "generate",
            "--model",
            &model,
            "--ids",
            "1,2,3",
            "--max-new-tokens",
            &u64::MAX.to_string(),
        ],
        &[],
    )?;
    assert!(
        !ok && err.contains(&u64::MAX.to_string()) && err.contains("max_position_embeddings = 512"),
        "{err}"
    );
    Ok(())
}

#[test]
fn reward_inputs_say_what_to_change() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = fixture("qwen2").display().to_string();
    let d = dir.path().display().to_string();
    let (ok, _, err) = rpt(&["reward", "--model", &model, "--input", &d], &[])?;
    assert!(
        !ok && err.contains("is a directory") && err.contains("JSONL"),
        "{err}"
    );
    let cases = dir.path().join("cases.jsonl");
    std::fs::write(
        &cases,
        "{\"completion\": \"t</think>\\\\boxed{ 4}\", \"continuation\": \" 4\", \"guess_prob\": \"0.5\"}\n",
    )?;
    let c = cases.display().to_string();
    let (ok, _, err) = rpt(
        &[
            "reward",
            "--model",
            &model,
            "--variant",
            "dense",
            "--input",
            &c,
        ],
        &[],
    )?;
    assert!(
        !ok && err.contains("cases.jsonl:1") && err.contains("`guess_prob` must be a number"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_worker_address_that_cannot_parse_fails_at_once() -> Result<()> {
    for bad in ["notanaddress", "host:", ":4870", "host:99999", "a b:1"] {
        assert!(rpt::actors::check_address(bad).is_err(), "{bad}");
    }
    for good in [
        "127.0.0.1:4870",
        "[::1]:4870",
        "run-host:4870",
        "node.example:1",
    ] {
        rpt::actors::check_address(good).map_err(anyhow::Error::msg)?;
    }
    let t0 = std::time::Instant::now();
    let (ok, _, err) = rpt(
        &[
            "worker",
            "--connect",
            "notanaddress",
            "--cookie",
            "c",
            "--wait",
            "300",
        ],
        &[],
    )?;
    assert!(
        !ok && err.contains("HOST:PORT") && err.contains("notanaddress"),
        "{err}"
    );
    // Not retried for the wait: refused before any connection attempt.
    assert!(t0.elapsed().as_secs() < 60, "took {:?}", t0.elapsed());
    Ok(())
}

#[test]
fn errors_read_the_same_whatever_rust_backtrace_says() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[rollout]\ntemperature = nan\n")?;
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken)?;
    std::fs::copy(
        fixture("qwen2").join("config.json"),
        broken.join("config.json"),
    )?;
    std::fs::copy(
        fixture("qwen2").join("tokenizer.json"),
        broken.join("tokenizer.json"),
    )?;
    let full = std::fs::read(fixture("qwen2").join("model.safetensors"))?;
    std::fs::write(broken.join("model.safetensors"), &full[..full.len() / 2])?;
    let cases: [Vec<String>; 3] = [
        vec!["train".into(), "--config".into(), bad.display().to_string()],
        vec![
            "generate".into(),
            "--model".into(),
            broken.display().to_string(),
            "--prompt".into(),
            "x".into(),
        ],
        vec![
            "logprobs".into(),
            "--model".into(),
            fixture("qwen2").display().to_string(),
            "--ids".into(),
            (0..600)
                .map(|i| (i % 500 + 1).to_string())
                .collect::<Vec<_>>()
                .join(","),
        ],
    ];
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, plain) = rpt(&args, &[])?;
        let (ok2, _, with) = rpt(&args, &[("RUST_BACKTRACE", "1")])?;
        assert!(!ok && !ok2);
        assert_eq!(plain, with, "{args:?}");
        assert!(!with.to_lowercase().contains("backtrace"), "{with}");
    }
    Ok(())
}
