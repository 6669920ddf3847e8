//! Helpers shared by the integration tests that train: a tiny config and running it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;
use rpt::actors::{PLACEMENT_KEYS, RunSummary, TIMING_KEYS};
use rpt::config::{Advantage, Config};
use rpt::model::Device;
use rpt::pipeline::train::{TrainOptions, train};
use rpt::pipeline::{bootstrap::bootstrap, prepare};

/// A config small enough that bootstrap and a few training steps take seconds.
pub fn tiny_config(root: &Path, model: &Path) -> Config {
    let text = format!(
        r#"
seed = 3
run_dir = "{run}"
[model]
path = "{model}"
bootstrap_if_missing = false
[corpus]
documents = 24
heldout_fraction = 0.25
[states]
max_context_tokens = 24
min_entropy = 0.0
[rollout]
group_size = 4
states_per_step = 3
max_new_tokens = 10
[optim]
lr = 1e-3
[train]
steps = 4
checkpoint_every = 2
[eval]
positions = 12
[bootstrap]
vocab_size = 300
hidden_size = 32
layers = 1
heads = 2
kv_heads = 1
intermediate_size = 64
pretrain_steps = 12
sft_steps = 6
batch = 4
seq_len = 32
"#,
        run = root.join("run").display(),
        model = model.display()
    );
    toml::from_str(&text).unwrap()
}

/// Runs the built `rpt` binary with `args` (and `envs` on top of a plain environment): success, stdout,
/// stderr.
pub fn rpt_cli(args: &[&str], envs: &[(&str, &str)]) -> Result<(bool, String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rpt"))
        .args(args)
        .env("RPT_LOG", "error")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .envs(envs.iter().copied())
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

pub fn run(cfg: &Config, opts: TrainOptions) -> Result<RunSummary> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok(rt.block_on(train(cfg, &opts, &Device::Cpu))?)
}

/// Runs `first` steps, then resumes the run to `total` (a run stopped and continued).
pub fn run_then_resume(cfg: &mut Config, first: u64, total: u64) -> Result<()> {
    cfg.train.steps = first;
    run(cfg, TrainOptions::default())?;
    cfg.train.steps = total;
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    run(cfg, resume)?;
    Ok(())
}

pub fn metrics(cfg: &Config) -> Vec<serde_json::Value> {
    std::fs::read_to_string(cfg.run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn without_timing(mut v: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    for m in &mut v {
        for k in TIMING_KEYS {
            m.as_object_mut().unwrap().remove(*k);
        }
    }
    v
}

/// The metrics with the keys that say where work ran (remote workers, re-issued states) removed too.
pub fn without_placement(v: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    without_timing(v)
        .into_iter()
        .map(|mut m| {
            let o = m.as_object_mut().unwrap();
            for k in PLACEMENT_KEYS {
                o.remove(*k);
            }
            o.remove("states_reissued");
            m
        })
        .collect()
}

/// Every state index the run learned from, over all its steps, sorted.
pub fn learned_states(m: &[serde_json::Value]) -> Vec<u64> {
    let mut seen: Vec<u64> = m
        .iter()
        .flat_map(|l| {
            l["states"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_u64().unwrap())
        })
        .collect();
    seen.sort();
    seen
}

/// A scratch folder for this test binary's shared files, under cargo's `target/tmp`, emptied when it
/// is first asked for. Statics are never dropped, so a folder made per process would outlive every
/// run; this one is reused by the next run of the same binary instead. A lock held until the process
/// ends keeps two runs of one binary from sharing it at once: the second waits.
pub fn scratch(label: &str) -> PathBuf {
    let stem = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{stem}-{label}"));
    let lock = std::fs::File::create(root.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    std::mem::forget(lock);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// The tiny model and its index, built once for this test binary.
pub fn shared() -> &'static (PathBuf, Config) {
    static CELL: OnceLock<(PathBuf, Config)> = OnceLock::new();
    CELL.get_or_init(|| {
        let root = scratch("shared");
        let model = root.join("model");
        let cfg = tiny_config(&root, &model);
        bootstrap(&cfg, &model, &Device::Cpu).unwrap();
        prepare::prepare(&cfg, &Device::Cpu).unwrap();
        (root, cfg)
    })
}

/// A config for a fresh run directory that reuses the shared model and its index. Uses `info_gain`
/// (with RLP advantages): its rewards always vary within a group, so every step has a gradient, and
/// resuming must also restore the EMA teacher.
pub fn run_config(name: &str) -> Config {
    let (root, base) = shared();
    let mut cfg = base.clone();
    cfg.reward.variant = "info_gain".into();
    cfg.grpo.advantage = Advantage::Rlp;
    cfg.run_dir = root.join(name);
    std::fs::create_dir_all(cfg.run_dir.join("index")).unwrap();
    for split in ["train", "heldout"] {
        let f = format!("{split}.index.json");
        std::fs::copy(
            base.run_dir.join("index").join(&f),
            cfg.run_dir.join("index").join(&f),
        )
        .unwrap();
    }
    cfg
}

/// A checkpoint with random weights of the model `config` describes (a `config.json`'s fields), in a
/// new temporary directory: (the directory, the checkpoint's path, what `rpt init` reported).
pub fn random_model(
    config: serde_json::Value,
    seed: u64,
) -> Result<(tempfile::TempDir, PathBuf, rpt::pipeline::init::InitReport)> {
    let dir = tempfile::tempdir()?;
    let cfg_json = dir.path().join("config.json");
    std::fs::write(&cfg_json, config.to_string())?;
    let out = dir.path().join("model");
    let report = rpt::pipeline::init::random_checkpoint(&cfg_json, &out, None, seed)?;
    Ok((dir, out, report))
}
